"""experiments/data_efficient.py: one real `run` + `report` on tiny idx files (no augmentation vs DiffAugment +
LeCam, 2 seeds, 2 steps) and its one-line errors."""

import json
import subprocess
import sys

import pytest
import torch

from experiments import data_efficient
from experiments.data_efficient import discriminator_gap
from experiments.experiment import mean_std

from shared import ROOT

TINY = ["train.steps=2", "train.batch_size=4", "model.g_width=8", "model.d_width=8"]


@pytest.mark.slow
def test_run_and_report_end_to_end(tmp_path, dataset_on_disk, capsys):
    out, report = tmp_path / "runs", tmp_path / "data_efficient.md"
    dataset_on_disk("fashion_mnist", tmp_path / "data")
    every = [*TINY, f"data.root={tmp_path / 'data'}", f"eval.cache_dir={tmp_path / 'cache'}"]
    cmd = [sys.executable, "-m", "experiments.data_efficient", "run", "--sizes", "0", "--methods", "none,diffaug_lecam",
           "--seeds", "0", "--jobs", "1", "--out", str(out), "--num-samples", "16", *every]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    scores = {}
    for arm in ("full-none", "full-diffaug_lecam"):
        for seed in (0,):  # one seed: seed aggregation is the shared runner's, tested with 2 in test_ablation
            rd = out / arm / f"seed{seed}"
            resolved = (rd / "config.yaml").read_text()
            assert ("augment: color,translation,cutout" in resolved) == ("diffaug" in arm)
            assert ("lecam: 0.3" in resolved) == ("lecam" in arm)
            result = json.loads((rd / "eval.json").read_text())
            assert result["metrics"] == ["prc", "copy"] and 0 <= result["copy_fraction"] <= 1
            assert (rd / "figures" / "closest_pairs.png").is_file()
            scores.setdefault(arm, []).append(result["fcd"])
    # report and overfit in this process (the run above is the script end to end): no second torch import
    assert data_efficient.main(["report", str(out), "--report", str(report)]) is None
    text = report.read_text()
    m, s = mean_std(scores["full-diffaug_lecam"])
    assert "| 60000 | " in text and f"{m:.3g} +/- {s:.2g} (" in text and "## copy fraction (lower is better)" in text
    assert (report.parent / "data_efficient" / "full-none-pairs.png").is_file()
    # D's training-vs-held-out gap at each checkpoint of a run (12 training / 3 test images on disk)
    capsys.readouterr()
    assert data_efficient.main(["overfit", str(out / "full-none" / "seed0")]) is None
    stdout = capsys.readouterr().out
    rows = [line for line in stdout.splitlines() if line.startswith("| 2 |")]  # the one checkpoint, step 2
    assert "(12 training / 3 held-out images)" in stdout and len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert float(cells[3]) == pytest.approx(float(cells[1]) - float(cells[2]), abs=2e-3)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--methods", "diffaug"], "error: --methods must include 'none', the control of every size"),
        (["--sizes", "300"], "error: --sizes: choose from 1000, 5000, 0; got '300'"),
        (
            ["--methods", "none,mixup"],
            "error: --methods: choose from none, diffaug, diffaug_lecam, ada; got 'none,mixup'",
        ),
    ],
)
def test_user_errors_are_one_line(args, message, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "experiments.data_efficient", "run", "--out", str(tmp_path), *args],
                          cwd=ROOT, capture_output=True, text=True, check=False)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.strip() == message


class _MeanPlusLabel(torch.nn.Module):
    """A stand-in D with a hand-computable output: mean pixel value plus 0.5 per label unit."""

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return x.mean(dim=(1, 2, 3)) + (0 if y is None else 0.5 * y.float())


def test_discriminator_gap_matches_hand_computed_means() -> None:
    train = torch.stack([torch.full((1, 4, 4), v) for v in (0.2, 0.4, -0.1)]), torch.tensor([0, 1, 2])
    heldout = torch.stack([torch.full((1, 4, 4), v) for v in (-0.3, -0.5)]), None
    # outputs: train 0.2, 0.9, 0.9 (mean 2/3, signs +1 +1 +1); held-out -0.3, -0.5 (mean -0.4, signs -1 -1)
    g = discriminator_gap(_MeanPlusLabel(), train, heldout, batch_size=2)  # batches of 2 split the 3 images
    assert g["train"] == pytest.approx(2 / 3) and g["heldout"] == pytest.approx(-0.4)
    assert g["gap"] == pytest.approx(2 / 3 + 0.4) and g["train_sign"] == 1.0 and g["heldout_sign"] == -1.0
