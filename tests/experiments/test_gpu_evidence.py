"""experiments/gpu_evidence.py: the stage plan for a GPU, the budget rule (skip, stop at a limit), the gamma
table against `statistics`, and one tiny end-to-end run on the CPU through the real CLIs.

Nothing here times anything; the budget tests only check which stages ran and that a stopped stage's
processes are gone.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments import gpu_evidence
from experiments.gpu_evidence import Command, Stage, run_stages, skipped_line

from shared import ROOT


def _option(argv, name):
    return argv[argv.index(name) + 1]


def test_gpu_plan_is_the_issues_experiment():
    from benchmarks.train_throughput import VARIANTS
    from experiments.ablation import parse_arms
    from gan.config import load_config
    from gan.models import Discriminator, Generator

    stages = gpu_evidence.build_stages(Path("/x"), "cuda", tiny=False, steps=gpu_evidence.GPU_STEPS)
    assert [s.name for s in stages] == ["ablation", "throughput", "attention", "throughput_compile"]
    assert sum(s.share for s in stages) == pytest.approx(1.0)
    run = list(stages[0].commands[0].argv)
    assert run[1:4] == ["-m", "experiments.ablation", "run"]
    assert (_option(run, "--arms"), _option(run, "--seeds"), _option(run, "--jobs")) == (
        "none,gd32,gd32-lr10",
        "0,1,2",
        "9",
    )
    overrides = run[run.index("--num-samples") + 2 :]
    for arm in parse_arms(_option(run, "--arms")):  # every arm is a valid 64x64 model with blocks where it says
        cfg = load_config(ROOT / _option(run, "--config"), [*arm.overrides(), *overrides])
        assert (cfg.model.resolution, cfg.train.steps, cfg.model.g_width) == (64, 2500, 16)
        assert cfg.train.log_every == 125  # 20 gate readings over the run
        assert cfg.optim.attn_lr_mult == (10.0 if arm.name == "gd32-lr10" else 1.0)
        for net in (Generator(cfg.model), Discriminator(cfg.model)):
            assert sorted(n for n in net.blocks if n.startswith("attn")) == (["attn32"] if arm.has_attention else [])
    throughput = list(stages[1].commands[0].argv)
    rows = throughput[throughput.index("--variants") + 1 :]
    assert set(rows) <= set(VARIANTS) and {"baseline", "channels_last", "bf16"} <= set(rows)
    assert _option(throughput, "--device") == "cuda" and "compile" in stages[3].commands[0].argv
    attention = list(stages[2].commands[0].argv)
    assert attention[attention.index("--sizes") + 1 : attention.index("--repeats")] == ["32", "64", "128"]


def test_a_tiny_budget_starts_nothing_and_says_so(tmp_path):
    stages = gpu_evidence.build_stages(tmp_path, "cpu", tiny=True, steps=4)
    outcomes = run_stages(stages, 0.0, tmp_path)
    assert [(o.name, o.status) for o in outcomes] == [(s.name, "skipped") for s in stages]
    assert skipped_line(outcomes, 0.0) == "Skipped (the 0 s budget was spent): ablation, throughput, attention."
    assert not (tmp_path / "ablation").exists() and not (tmp_path / "throughput.md").exists()
    summary = gpu_evidence.write_summary(tmp_path, stages, outcomes, 0.0, "cpu", "python -m x", "2026-01-01")
    text = summary.read_text()
    assert "| ablation | skipped | 0 |" in text and skipped_line(outcomes, 0.0) in text


def test_no_stage_starts_after_one_was_skipped(tmp_path, monkeypatch):
    # budget 10 s: the first stage's share gives it 1 s (< the 5 s minimum); the second would get 9 s
    monkeypatch.setattr(gpu_evidence, "MIN_STAGE_SECONDS", 5.0)
    monkeypatch.setattr(gpu_evidence, "GRACE_S", 0.0)
    marker = tmp_path / "ran"
    stages = [
        Stage("small", (Command((sys.executable, "-c", f"open({str(marker)!r}, 'w')"), "a.txt"),), 0.1, "a.txt"),
        Stage("large", (Command((sys.executable, "-c", f"open({str(marker)!r}, 'w')"), "b.txt"),), 0.9, "b.txt"),
    ]
    outcomes = run_stages(stages, 10.0, tmp_path)
    assert [o.status for o in outcomes] == ["skipped", "skipped"] and not marker.exists()
    assert outcomes[0].limit == pytest.approx(1.0, abs=0.1)


def test_a_stage_is_stopped_at_its_limit_with_its_children(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_evidence, "MIN_STAGE_SECONDS", 0.2)
    monkeypatch.setattr(gpu_evidence, "GRACE_S", 1.0)
    pid_file = tmp_path / "child.pid"
    # the stage's process starts a grandchild (as the ablation starts train.py) and both would sleep a minute
    sleeper = (
        "import subprocess, sys, time; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"open({str(pid_file)!r}, 'w').write(str(p.pid)); print('started', flush=True); time.sleep(60)"
    )
    stages = [
        Stage("slow", (Command((sys.executable, "-c", sleeper), "slow.txt"),), 1.0, "slow.txt"),
        Stage("quick", (Command((sys.executable, "-c", "print('fine')"), "quick.txt"),), 1.0, "quick.txt"),
    ]
    start = time.monotonic()
    # 7 s less the 1 s grace: the first stage may run 3 s, the second then gets what is left
    outcomes = run_stages(stages, 7.0, tmp_path)
    assert [(o.name, o.status) for o in outcomes] == [("slow", "stopped at its time limit"), ("quick", "done")]
    assert outcomes[0].limit == pytest.approx(3.0, abs=0.2)
    assert outcomes[0].limit <= outcomes[0].seconds < outcomes[0].limit + 1.0 + 0.5  # SIGTERM sufficed
    assert outcomes[1].limit == pytest.approx(6.0 - outcomes[0].seconds, abs=0.3)
    assert time.monotonic() - start < 20
    assert (tmp_path / "slow.txt").read_text() == "started\n" and (tmp_path / "quick.txt").read_text() == "fine\n"
    grandchild = int(pid_file.read_text())
    for _ in range(50):  # killed with its group; wait for it to be reaped
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the stage's grandchild {grandchild} survived the stage's limit")


@pytest.mark.slow
def test_tiny_run_end_to_end(tmp_path):
    out = tmp_path / "evidence"
    cmd = [sys.executable, "-m", "experiments.gpu_evidence", "--tiny", "--device", "cpu", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = (out / "summary.md").read_text()
    cpu = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)[1].strip()
    import torch

    assert summary.startswith("# Evidence from one device: cpu\n") and f"host {cpu}" in summary
    assert f"- torch {torch.__version__}\n" in summary
    assert f"- Command: `python -m experiments.gpu_evidence --tiny --device cpu --out {out}`" in summary
    for name in ("ablation", "throughput", "attention"):
        assert re.search(rf"^\| {name} \| done \| \d+ \| \d+ \|", summary, re.M), name
    assert "Every stage was started." in summary and "throughput_compile" not in summary

    # the ablation: the three arms, seed 0, 4 steps each, evaluated; its report; gamma over training
    for arm in ("none", "gd32", "gd32-lr10"):
        ev = json.loads((out / "ablation" / "runs" / arm / "seed0" / "eval.json").read_text())
        assert (ev["step"], ev["num_samples"], ev["dataset"]) == (4, 16, "builtin")
        assert (ev["params"]["G_attention"] > 0) == (arm != "none") and 0.0 <= ev["d_auc"] <= 1.0
    report = (out / "ablation" / "report.md").read_text()
    assert "| `none` | - | - | 1 |" in report and "| `gd32` | 32 | 32 | 1 |" in report
    assert "| `gd32` | G.blocks.attn32 | " in report and "| `gd32` | D.blocks.attn32 | " in report
    assert "| `gd32-lr10` | 32 | 32 | 1 |" in report and "D's AUC, coherent vs incoherent" in report
    assert (out / "ablation" / "figures" / "ablation_plot.png").is_file()
    records = [json.loads(x) for x in (out / "ablation/runs/gd32/seed0/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    last = records[-1]["gate/gamma/G.blocks.attn32"]
    assert f"| `gd32` | G.blocks.attn32 | {records[0]['gate/gamma/G.blocks.attn32']:+.4f} +/- 0.0000 (1) |" in summary
    assert f" {last:+.4f} +/- 0.0000 (1) |\n" in summary

    # the throughput table: one row per variant, finite losses, on the CPU
    throughput = (out / "throughput.md").read_text()
    assert "device (training table): cpu" in throughput
    for label in ("baseline: fp32, eager, explicit attention", "+ channels_last", "+ bf16 autocast"):
        assert re.search(rf"^\| {re.escape(label)} \| [\d.]+ \| .* \| yes \|$", throughput, re.M), label
    # the attention table: the one 8x8 row with both paths timed and measured
    attention = (out / "attention.md").read_text()
    assert re.search(
        r"^\| 8x8 \| yes \| 16 \| 16 \| [\d.,]+ \| [\d.,]+ \| [\d.]+ \| [\d,]+ \| [\d,]+ \|", attention, re.M
    )
    assert throughput.strip() in summary and attention.strip() in summary
