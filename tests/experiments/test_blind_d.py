"""The blind-D cell (experiments.blind_d): the paired statistics and the rule against hand-computed values,
the report from hand-made summaries, and (slow) the summaries of two-step runs of the real grid's arms, whose
re-scored checkpoints must equal the runner's own evaluation."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import pytest

from experiments import blind_d, blind_d_runs, experiment
from experiments.experiment import compare

from shared import ROOT


def test_sign_test_p_by_hand() -> None:
    # P(X >= k), X ~ Binomial(n, 1/2): sums of binomial coefficients over 2^n
    assert blind_d.sign_test_p(8, 8) == 1 / 256
    assert blind_d.sign_test_p(7, 8) == (8 + 1) / 256  # 0.035: passes the rule
    assert blind_d.sign_test_p(6, 8) == (28 + 8 + 1) / 256  # 0.145: does not
    assert blind_d.sign_test_p(3, 4) == (4 + 1) / 16
    assert blind_d.sign_test_p(0, 3) == 1.0


def test_paired_differences_by_hand() -> None:
    a = {0: 0.30, 1: 0.25, 2: 0.20, 3: 0.10, 9: 0.5}  # seed 9 has no partner: left out
    b = {0: 0.10, 1: 0.15, 2: 0.15, 3: 0.12}
    p = blind_d.paired(a, b)
    # differences 0.20, 0.10, 0.05, -0.02: mean 0.33 / 4 = 0.0825; squared deviations 0.01380625, 0.00030625,
    # 0.00105625, 0.01050625 sum to 0.025675, so std = sqrt(0.025675 / 3) = 0.0925113; t = 0.0825 / (std / 2)
    assert p.seeds == (0, 1, 2, 3) and p.n == 4
    assert p.diffs == pytest.approx((0.20, 0.10, 0.05, -0.02), abs=1e-12)
    assert p.mean == pytest.approx(0.0825, abs=1e-12)
    assert p.std == pytest.approx(math.sqrt(0.025675 / 3), abs=1e-12)
    assert p.t == pytest.approx(1.783566, abs=1e-5)
    assert (p.higher, p.lower) == (3, 1)
    assert p.p_higher == 5 / 16 and p.p_lower == 15 / 16  # P(X >= 3 | 4) and P(X >= 1 | 4)
    assert math.isnan(blind_d.paired({0: 1.0}, {0: 0.5}).t)  # one seed: no t
    with pytest.raises(blind_d_runs.BlindDError, match="share no seed"):
        blind_d.paired({0: 1.0}, {1: 0.5})


def _verdict(a: list[float], b: list[float]) -> str:
    c = compare("a", a, b, True)
    return blind_d.pair_verdict(c, blind_d.paired(dict(enumerate(a)), dict(enumerate(b))))


def test_the_rule_needs_the_spread_and_seven_of_eight() -> None:
    control = [0.10, 0.11, 0.09, 0.10, 0.12, 0.08, 0.10, 0.10]  # mean 0.10, std 0.0120
    # 7 of 8 higher and far beyond the spread
    assert _verdict([0.30, 0.31, 0.29, 0.30, 0.32, 0.28, 0.30, 0.05], control) == "higher"
    assert _verdict(control, [0.30, 0.31, 0.29, 0.30, 0.32, 0.28, 0.30, 0.05]) == "lower"
    # 6 of 8 higher: beyond the spread, but the sign test gives 37/256
    assert _verdict([0.30, 0.31, 0.29, 0.30, 0.32, 0.28, 0.05, 0.05], control) == "not shown"
    # 8 of 8 higher by a hair: the sign test passes, the spread rule does not
    assert _verdict([v + 0.001 for v in control], control) == "not shown"


def test_the_rule_before_all_seeds_are_done() -> None:
    # 4 of 8 seeds, 3 higher: 3 + 4 = 7 is still reachable upwards, 1 + 4 = 5 is not downwards
    v = _verdict([0.3, 0.3, 0.3, 0.1], [0.1, 0.1, 0.1, 0.2])
    assert v == "no verdict yet (4 of 8 seeds; still possible: higher)"
    # 5 seeds, 3 higher and 2 lower: at most 6 of 8 either way
    assert _verdict([0.3, 0.3, 0.3, 0.1, 0.1], [0.1, 0.1, 0.1, 0.2, 0.2]).startswith("cannot be shown (5 of 8")


@pytest.mark.parametrize(
    "block,uniform,versus,expected",
    [
        ("higher", "higher", "higher", "content-based attention in D lifts"),
        ("higher", "not shown", "higher", "content-based attention in D lifts"),
        ("higher", "higher", "not shown", "a global-context path in D lifts G's coherence"),
        ("higher", "not shown", "not shown", "the block lifts G's coherence; the cell does not separate"),
        ("higher", "no verdict yet (4 of 8 seeds; still possible: higher)", "not shown", "the block lifts G's"),
        ("not shown", "higher", "lower", "no lift shown"),
        ("no verdict yet (3 of 8 seeds; still possible: higher)", "-", "-", "no finding yet"),
    ],
)
def test_finding(block, uniform, versus, expected) -> None:
    assert blind_d.finding(dict(zip(blind_d.PAIRS, (block, uniform, versus)))).startswith(expected)


def _summary(arm: str, seed: int, coherence: tuple[float, float], entropy: float = 1.0) -> dict:
    def at(c: float) -> dict:
        blocks = {} if arm == "none" else {"D.blocks.attn32": {"gate": 0.2, "entropy_fraction": entropy}}
        look = {} if arm == "none" else {"blocks.attn32": [0.1, 0.07]}
        return {"source": "test", "coherence": c, "valid": 0.7, "shape_iou": 0.2, "colour_agreement": 0.6,
                "fcd": 20.0, "d_auc": 0.5 + c, "d_paired": 0.5, "d_look_share": look, "blocks": blocks}  # fmt: skip

    return {"arm": arm, "seed": seed, "scores_by_step": {"1000": at(coherence[0]), "2000": at(coherence[1])},
            "cpu_seconds": {"train": 1800.0, "evaluate": 90.0, "score_step_1000": 90.0},
            "finished": f"2026-12-07T01:0{seed}:00+00:00", "machine": "test machine"}  # fmt: skip


def test_report_from_hand_made_summaries(tmp_path) -> None:
    summaries = [
        _summary("none", 0, (0.10, 0.12)), _summary("none", 1, (0.08, 0.10)),
        _summary("d32", 0, (0.20, 0.30), 0.5), _summary("d32", 1, (0.18, 0.22), 0.9),
        _summary("d32-uniform", 0, (0.10, 0.14)),
    ]  # fmt: skip
    report = tmp_path / "blind_d.md"
    report.write_text(f"# fixed text\n\n{blind_d.BEGIN}\nold\n{blind_d.END}\n\n## Limits\n")
    body = blind_d.write_report(summaries, report, tmp_path / "figs")
    text = report.read_text()
    assert text.startswith("# fixed text\n\n") and text.endswith("\n\n## Limits\n") and "old" not in text
    assert "Seeds done in all three arms: 1 of 8 (the rule needs all 8" in body
    # 2,000 steps, none: mean 0.11, std sqrt(2 * 0.01^2) = 0.0141; d32: 0.26 +/- sqrt(2 * 0.04^2) = 0.0566
    assert "| `none` | 2 | 0.110 +/- 0.014 |" in body and "| `d32` | 2 | 0.260 +/- 0.057 |" in body
    assert "| `d32-uniform` | 1 | 0.140 (1 seed) |" in body
    # d32 - none at 2,000 steps: differences +0.18, +0.12, mean 0.15 +/- 0.0424, t = 0.15 / (0.0424 / sqrt 2) = 5.00;
    # pooled std sqrt((0.0566^2 + 0.0141^2) / 2) = 0.041; both higher: p = 1/4
    row = ("| `d32` - `none` | coherence | 2 | +0.150 | 0.041 | yes | +0.180, +0.120 | +0.150 +/- 0.042 | 2 of 2 "
           "| +5.00 (1) | 0.250 | no verdict yet (2 of 8 seeds; still possible: higher) |")  # fmt: skip
    assert row in body
    assert "**Finding at 2,000 steps:** no finding yet" in body
    assert "entropy over log N 1.0000-1.0000, |gamma| 0.200-0.200" in body
    assert "5 runs, 2.8 CPU hours" in body  # 5 x (1800 + 90 + 90) s
    for name in ("coherence_by_step.png", "gain_vs_entropy.png"):
        assert (tmp_path / "figs" / name).is_file() and f"(figs/{name})" in body
    first = report.read_bytes()
    blind_d.write_report(summaries, report, tmp_path / "figs")
    assert report.read_bytes() == first  # the same summaries give the same bytes


def test_report_needs_its_markers(tmp_path) -> None:
    (tmp_path / "r.md").write_text("no markers\n")
    proc = subprocess.run([sys.executable, "-m", "experiments.blind_d", "report", "--summaries", str(tmp_path),
                           "--report", str(tmp_path / "r.md"), "--figures", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert proc.returncode != 0 and "lacks the markers" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_summaries_of_two_step_runs_rescore_as_the_runner_scores(tmp_path) -> None:
    out, cache = tmp_path / "grid", tmp_path / "cache"
    cmd = [sys.executable, "-m", "experiments.ablation", "run", "--config", "configs/ablation_coherence.yaml",
           "--arms", "none,d32,d32-uniform", "--seeds", "0", "--jobs", "1", "--out", str(out), "--num-samples", "16",
           "model.resolution=64", "model.num_classes=0", "model.g_width=8", "model.d_width=16",
           "model.d_output=patch", "model.d_coords=true", "model.d_depth=1", "model.d_extra_blocks=1",
           "model.d_extra_kernel=1", "train.steps=2", "train.batch_size=4", "data.builtin_size=64",
           "train.log_every=1", "train.checkpoint_every=1", "train.summary_samples=16", f"eval.cache_dir={cache}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rd = out / "d32" / "seed0"
    cpu = tmp_path / "cpu.json"
    cpu.write_text(json.dumps({str(rd): {"train": 12.0, "evaluate": 3.0}}))
    written = blind_d_runs.summarise(out, tmp_path / "runs", cpu, steps=(1, 2))
    assert [p.name for p in written] == [f"blind16_2k_{a}_seed0.json" for a in blind_d.ARMS]
    s = json.loads((tmp_path / "runs" / "blind16_2k_d32_seed0.json").read_text())
    runner = json.loads((rd / experiment.EVAL_SUMMARY).read_text())
    assert (
        s["scores_by_step"]["2"]["coherence"] == runner["coherence"] and "runner" in s["scores_by_step"]["2"]["source"]
    )
    assert s["scores_by_step"]["1"]["source"] == "this checkpoint, re-scored"
    assert (
        s["cpu_seconds"]["train"] == 12.0 and s["cpu_seconds"]["evaluate"] == 3.0 and "score_step_1" in s["cpu_seconds"]
    )
    assert s["steps"] == 2 and s["d_receptive_field"] == 16 and "train.py" in s["command"]
    assert set(s["scores_by_step"]["1"]["blocks"]) == {"D.blocks.attn32"}
    # the uniform control's attention is uniform: its logged entropy is log N
    u = json.loads((tmp_path / "runs" / "blind16_2k_d32-uniform_seed0.json").read_text())
    assert u["scores_by_step"]["2"]["blocks"]["D.blocks.attn32"]["entropy_fraction"] == pytest.approx(1.0, abs=1e-5)
    # re-scoring the final checkpoint through the view gives the runner's numbers exactly
    again = blind_d_runs.score_checkpoint(rd, 2, 16)
    for key in ("coherence", "valid", "shape_iou", "fcd", "d_auc", "d_paired", "d_look_share"):
        assert again[key] == runner[key], key
    assert blind_d_runs.summarise(out, tmp_path / "runs", cpu, steps=(1, 2)) == []  # once per run
    # a run still training (no runner's records yet) is scored at its checkpoints before the last, marked partial
    training = tmp_path / "training"
    shutil.copytree(rd, training / "d32" / "seed0")
    for name in (experiment.RUN_SUMMARY, experiment.EVAL_SUMMARY):
        (training / "d32" / "seed0" / name).unlink()
    (partial,) = blind_d_runs.summarise(training, tmp_path / "partial", cpu, steps=(1, 2), partial=True, num_samples=16)
    p = json.loads(partial.read_text())
    assert p["partial"] and list(p["scores_by_step"]) == ["1"] and p["finished"] is None
    assert p["scores_by_step"]["1"]["coherence"] == s["scores_by_step"]["1"]["coherence"]  # the same checkpoint
    assert blind_d_runs.summarise(training, tmp_path / "partial", cpu, steps=(1, 2), partial=True) == []
    with pytest.raises(blind_d_runs.BlindDError, match="no checkpoint at step 3"):
        blind_d_runs.checkpoint_dir(rd, 3)


def test_block_state_reads_both_gate_spellings() -> None:
    gates = {
        "gamma/D.blocks.attn32": [[1000, 0.2], [2000, -0.3]],  # logged before gate/<kind>/
        "attn_entropy/D.blocks.attn32": [[1000, math.log(256) / 2], [2000, math.log(256)]],  # keys 2x2-pooled
        "gate/zero_init/D.blocks.attn16": [[2000, 0.5]],
        "gate/gamma/G.blocks.attn16": [[2000, 1.0]],  # G's block: not D's
    }
    assert blind_d_runs.block_state(gates, 1500) == {"D.blocks.attn32": {"gate": 0.2, "entropy_fraction": 0.5},
                                                 "D.blocks.attn16": {"gate": pytest.approx(float("nan"), nan_ok=True)}}  # fmt: skip
    assert blind_d_runs.block_state(gates, 2000) == {"D.blocks.attn32": {"gate": 0.3, "entropy_fraction": 1.0},
                                                 "D.blocks.attn16": {"gate": 0.5}}  # fmt: skip


def test_a_run_still_training_counts_at_its_checkpoints_only(tmp_path) -> None:
    partial = _summary("d32-uniform", 1, (0.12, 0.0))
    partial.update(partial=True, finished=None, scores_by_step={"1000": partial["scores_by_step"]["1000"]})
    summaries = [_summary("none", 0, (0.10, 0.12)), _summary("d32-uniform", 0, (0.10, 0.14)), partial]
    body = blind_d.report_text(summaries, "figs")
    assert "Runs finished and summarised: 2 of 24" in body
    assert "still training, scored at their checkpoints so far: `d32-uniform` seed 1" in body
    # at 1,000 steps the uniform arm has seeds 0 and 1 (mean 0.11, std 0.0141); at 2,000 steps seed 0 only
    assert "| `d32-uniform` | 2 | 0.110 +/- 0.014 |" in body and "| `d32-uniform` | 1 | 0.140 (1 seed) |" in body
    assert "| `d32-uniform` | 1 (training) | 0.120 | - | 0.620 | - | - | - | - | - | - |" in body
    assert "runs finished 2026-12-07T01:00:00+00:00 to 2026-12-07T01:00:00+00:00" in body
    blind_d.gain_figure(summaries, tmp_path / "gain.png")  # the partial run has no final step to draw
    assert (tmp_path / "gain.png").is_file()
