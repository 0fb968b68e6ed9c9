"""The GAN ladder's summaries, report and figure (experiments.local_d ladder): hand-made summaries against
hand-computed means, spreads and verdicts. The summaries of real runs are tested with the ablation runner's
end-to-end test (tests/experiments/test_ablation.py), which already trains them."""

from __future__ import annotations

from experiments import local_d


def _summary(setting: str, field: int, arm: str, seed: int, coherence: float, d_auc: float) -> dict:
    scores = {"coherence": coherence, "valid": 0.5, "shape_iou": 0.4, "colour_agreement": 0.6, "fcd": 20.0,
              "d_auc": d_auc, "d_paired": d_auc}  # fmt: skip
    gates = {"out_norm/D.blocks.attn32": [[50, 0.1], [100, 0.25]], "attn_entropy/D.blocks.attn32": [[100, 2.0]]}
    return {"setting": setting, "arm": arm, "seed": seed, "steps": 100, "d_receptive_field": field,
            "scores": scores, "d_look_share": {"blocks.attn32": [0.3, 0.1]} if arm != "none" else {},
            "gates": gates if arm != "none" else {}, "train_wall_s": 60.0, "eval_wall_s": 0.0,
            "machine": "test machine"}  # fmt: skip


def test_report_and_figure_from_hand_made_summaries(tmp_path) -> None:
    runs = [
        _summary("blind16", 16, "none", 0, 0.10, 0.50),
        _summary("blind16", 16, "none", 1, 0.30, 0.52),
        _summary("blind16", 16, "d32-zero", 0, 0.60, 0.90),
        _summary("blind16", 16, "d32-zero", 1, 0.80, 0.94),
        _summary("full", 140, "none", 0, 0.50, 0.98),
    ]
    text = local_d.ladder_report(runs)
    # coherence of blind16/none: mean 0.2, sample std sqrt(((0.1)^2 + (0.1)^2) / 1) = 0.1414
    assert "| `blind16` | 16 | `none` | 100 | 2 | 0.200 +/- 0.141 |" in text
    assert "| `blind16` | 16 | `d32-zero` | 100 | 2 | 0.700 +/- 0.141 |" in text
    assert "| `full` | 140 | `none` | 100 | 1 | 0.500 (1 seed) |" in text
    # diff 0.5 against 2 x pooled std 0.283: beyond the spread (0.5 / 0.1414 = 3.54 pooled stds), and higher in
    # both seeds (0.6 vs 0.1, 0.8 vs 0.3); the full D's single seed: no verdict, its one seed paired with seed 0
    assert (
        "- `d32-zero` vs `none` in `blind16`, coherence: diff +0.500, pooled std 0.141 (3.54 pooled stds), "
        "higher in 2 of 2 paired seeds: helped" in text
    )
    assert (
        "- `full` vs `blind16` (no attention), coherence: diff +0.300, pooled std 0.100 (3.00 pooled stds), "
        "higher in 1 of 1 paired seeds: no verdict (one seed)" in text
    )
    runs.append(_summary("full", 140, "none", 1, 0.52, 0.99))  # two seeds: the field's difference gets a verdict
    # D's AUC: full 0.98, 0.99 (std 0.00707) vs 0.50, 0.52 (std 0.01414): pooled sqrt(0.000125) = 0.01118
    assert (
        "- `full` vs `blind16` (no attention), D's AUC: diff +0.475, pooled std 0.011 (42.49 pooled stds), "
        "higher in 2 of 2 paired seeds: beyond the seed spread" in local_d.ladder_report(runs)
    )
    # two gates in one setting are compared with each other by the same rule
    gates = [*runs, _summary("blind16", 16, "d32", 0, 0.20, 0.90), _summary("blind16", 16, "d32", 1, 0.40, 0.94)]
    assert (
        "- `d32-zero` vs `d32` in `blind16` (between gates), coherence: diff +0.400, pooled std 0.141 "
        "(2.83 pooled stds), higher in 2 of 2 paired seeds: beyond the seed spread" in local_d.ladder_report(gates)
    )
    # the block's last gate, its entropy over log 256 (keys of a 32x32 map, 2x2-pooled), where it looks
    assert (
        "| `blind16` | `d32-zero` | 0 | 0.600 | 0.500 | 0.900 | 20.00 | out_norm 0.250 | 0.361 | 0.300 (0.100) |"
        in text
    )
    assert "5 runs, 5 wall-minutes" in text
    local_d.ladder_figure(runs, tmp_path / "ladder.png")
    assert (tmp_path / "ladder.png").stat().st_size > 10_000


def test_block_trajectories_read_each_quarter_of_the_run(tmp_path) -> None:
    import math

    a = _summary("blind16", 16, "d32-zero", 0, 0.6, 0.9)
    a["gates"] = {"out_norm/D.blocks.attn32": [[25, 0.1], [50, 0.2], [75, 0.4], [100, 0.8]],
                  "attn_entropy/D.blocks.attn32": [[25, 5.0], [50, 4.0], [75, 3.0], [100, 2.0]]}  # fmt: skip
    b = _summary("blind16", 16, "d32-zero", 1, 0.6, 0.9)  # logged every 50 steps: the quarter reads the step before
    b["gates"] = {"gamma/D.blocks.attn32": [[50, -0.3], [100, 0.5]], "attn_entropy/D.blocks.attn32": [[50, 4.0]]}
    runs = [a, b, _summary("blind16", 16, "none", 0, 0.1, 0.5)]
    t = local_d.block_trajectories(runs)
    assert list(t) == [("blind16", "d32-zero")]  # the arm without a block has no trajectory
    assert t[("blind16", "d32-zero")]["gate"][0] == [0.1, 0.2, 0.4, 0.8]
    gate_b = t[("blind16", "d32-zero")]["gate"][1]
    assert math.isnan(gate_b[0]) and gate_b[1:] == [0.3, 0.3, 0.5]  # |gamma|
    log_n = math.log(16 * 16)  # keys of a 32x32 map, 2x2-pooled
    assert t[("blind16", "d32-zero")]["entropy"][0] == [5.0 / log_n, 4.0 / log_n, 3.0 / log_n, 2.0 / log_n]
    # the report's row: the mean over seeds at each quarter, "-" where a seed had logged nothing yet
    text = local_d.ladder_report(runs)
    assert f"| `blind16` | `d32-zero` | 2 | - / 0.250 / 0.350 / 0.650 | - / {4 / log_n:.3f} / " in text
    local_d.gates_figure(runs, tmp_path / "gates.png")
    assert (tmp_path / "gates.png").stat().st_size > 10_000


def test_the_report_reads_the_gate_key_of_new_runs() -> None:
    """Runs logged after the gate had its own key (gate/<kind>/<block>) read as the old ones did."""
    old = _summary("blind16", 16, "d32-zero", 0, 0.6, 0.9)
    new = {**old, "gates": {"gate/zero_init/D.blocks.attn32": [[50, 0.1], [100, 0.25]],
                            "attn_entropy/D.blocks.attn32": [[100, 2.0]]}}  # fmt: skip
    old_row, new_row = (
        next(
            line for line in local_d.ladder_report([s]).splitlines() if line.startswith("| `blind16` | `d32-zero` | 0")
        )
        for s in (old, new)
    )
    assert new_row == old_row.replace("out_norm 0.250", "zero_init 0.250")
    assert str(local_d.block_trajectories([new])) == str(local_d.block_trajectories([old]))  # NaN before the log
