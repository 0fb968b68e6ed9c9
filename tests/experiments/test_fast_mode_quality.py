"""experiments/fast_mode_quality.py: one real `run` + `report` on a tiny model (fp32 and bf16, 2 seeds, 2 steps)
and its one-line errors. The compiled mode's agreement with eager is checked in test_perf_paths. The run reads
small Fashion-MNIST-format files written here, so it needs no installed dataset."""

import json
import subprocess
import sys

import pytest

from experiments import fast_mode_quality
from experiments.experiment import ExperimentError, mean_std
from experiments.fast_mode_quality import collect, parse_modes

from shared import ROOT

TINY = ["train.steps=2", "train.batch_size=4", "model.g_width=8", "model.d_width=8"]


@pytest.mark.slow
def test_run_and_report_end_to_end(tmp_path, dataset_on_disk):
    out, report = tmp_path / "runs", tmp_path / "fast_mode_quality.md"
    dataset_on_disk("fashion_mnist", tmp_path / "data")  # small idx files: Debian's package may be absent
    every = [*TINY, f"data.root={tmp_path / 'data'}", f"eval.cache_dir={tmp_path / 'cache'}"]
    cmd = [sys.executable, "-m", "experiments.fast_mode_quality", "run", "--modes", "fp32,bf16", "--seeds", "0,1",
           "--jobs", "1", "--out", str(out), "--num-samples", "16", *every]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for mode, extra in (
        ("fp32", ["model.attn_fused=false"]),
        ("bf16", ["model.attn_fused=true", "train.channels_last=true", "train.mixed_precision=bf16"]),
    ):
        for seed in (0, 1):
            rd = out / mode / f"seed{seed}"
            run = json.loads((rd / "run.json").read_text())
            assert run["overrides"] == [*extra, f"train.seed={seed}", *every]
            resolved = (rd / "config.yaml").read_text()
            assert ("mixed_precision: bf16" in resolved) == (mode == "bf16")
            assert ("attn_fused: false" in resolved) == (mode == "fp32")
            assert json.loads((rd / "eval.json").read_text())["step"] == 2

    # the report in this process (the run above is the script end to end): no second torch import
    assert fast_mode_quality.main(["report", str(out), "--report", str(report)]) is None
    text = report.read_text()
    _, runs = collect(out)
    for mode in ("fp32", "bf16"):
        fcd = [runs[mode][s]["fcd"] for s in (0, 1)]
        m, s = mean_std(fcd)
        assert f"| `{mode}` | " in text and f"| 2 | {m:.1f} +/- {s:.1f} | {fcd[0]:.1f}, {fcd[1]:.1f} |" in text
    assert "- `bf16`: FCD " in text and ("trains as well as float32" in text or "than float32" in text)
    assert "FID mean" not in text and "FCD mean +/- std" in text and "steps, batch 4)" in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["--modes", "fp32,fp8"], "error: --modes: unknown mode 'fp8'; choose from fp32, fast, bf16"),
        (["--modes", "fast"], "error: --modes must include 'fp32', the reference every mode is compared with"),
        (
            ["train.compile=true"],
            "error: train.compile=true is set per mode / seed here; use --modes / --seeds instead",
        ),
    ],
)
def test_user_errors_are_one_line(args, message, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "experiments.fast_mode_quality", "run", "--out", str(tmp_path), *args],
                          cwd=ROOT, capture_output=True, text=True, check=False)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.strip() == message
    with pytest.raises(ExperimentError, match="no fast_mode_quality.json"):
        collect(tmp_path / "nothing")
    assert parse_modes("fp32,fast,fp32") == ["fp32", "fast"]
