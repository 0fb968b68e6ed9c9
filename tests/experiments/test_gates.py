"""experiments/gates.py: the blocks' gates and attention entropy read back from train.py's metrics.jsonl."""

from __future__ import annotations

import json
import math
import statistics

import pytest

from experiments import gates


def test_final_gates_and_uniform_entropy(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 50, "gamma/G.blocks.attn16": 0.5, "attn_entropy/G.blocks.attn16": 3.0}\n'
        '{"step": 60, "eval/fid": 12.0}\n'
        '{"step": 100, "gamma/G.blocks.attn16": -0.25, "attn_entropy/G.blocks.attn16": 2.0, "loss_d": 1.0}\n'
        '{"step": 110, "loss_d": 0.5}\n'
    )
    assert gates.final_gates(tmp_path) == {"gamma/G.blocks.attn16": -0.25, "attn_entropy/G.blocks.attn16": 2.0}
    assert gates.final_gates(tmp_path / "missing") == {}
    assert gates.gate_history(tmp_path) == {
        "gamma/G.blocks.attn16": [(50, 0.5), (100, -0.25)],
        "attn_entropy/G.blocks.attn16": [(50, 3.0), (100, 2.0)],
    }
    (tmp_path / "metrics.jsonl").write_text('{"step": 10, "out_norm/D.blocks.attn8": 0.125, "loss_g": 1.0}\n')
    assert gates.final_gates(tmp_path) == {"out_norm/D.blocks.attn8": 0.125}
    assert gates.gate_history(tmp_path) == {"out_norm/D.blocks.attn8": [(10, 0.125)]}
    assert gates.uniform_entropy(16, subsample=True) == pytest.approx(math.log(64))  # 8 x 8 pooled keys
    assert gates.uniform_entropy(7, subsample=True) == pytest.approx(math.log(16))  # ceil: 4 x 4 keys
    assert gates.uniform_entropy(8, subsample=False) == pytest.approx(math.log(64))


def test_gates_over_training_against_statistics(tmp_path):
    logs = {  # seed -> [(step, G gamma, D gamma)]
        0: [(10, 0.01, -0.02), (20, 0.03, -0.05), (30, 0.07, -0.04)],
        1: [(10, 0.02, -0.01), (20, 0.05, -0.02), (30, 0.02, -0.09)],
    }
    for seed, rows in logs.items():
        rd = tmp_path / "gd32" / f"seed{seed}"
        rd.mkdir(parents=True)
        lines = [{"step": s, "loss_d": 1.0, "gamma/G.blocks.attn32": g, "gamma/D.blocks.attn32": d} for s, g, d in rows]
        (rd / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (tmp_path / "none" / "seed0").mkdir(parents=True)
    (tmp_path / "none" / "seed0" / "metrics.jsonl").write_text(json.dumps({"step": 10, "loss_d": 1.0}) + "\n")
    table = gates.over_training_table(tmp_path, points=2)  # the first and the last logged step
    assert table[0] == "| arm | block | step 10 | step 30 |"
    g30 = [0.07, 0.02]
    expected = f"{statistics.mean(g30):+.4f} +/- {statistics.stdev(g30):.4f} (2)"
    assert table[3] == f"| `gd32` | G.blocks.attn32 | +0.0150 +/- 0.0071 (2) | {expected} |"
    assert table[2].startswith("| `gd32` | D.blocks.attn32 | -0.0150 +/- 0.0071 (2) | -0.0650 +/- 0.0354 (2)")
    assert len(table) == 4  # `none` has no blocks, so no rows


def test_gates_table_both_gates_by_hand(tmp_path):
    runs = {
        "none": {0: {"gates": {}}},
        "gd16": {s: {"gates": {"gamma/D.blocks.attn16": g, "attn_entropy/D.blocks.attn16": e}} for s, g, e in
                 ((0, 0.1, math.log(64)), (1, 0.3, math.log(64) / 2))},
        "gd16-zero": {0: {"gates": {"out_norm/D.blocks.attn16": 0.5, "attn_entropy/D.blocks.attn16": math.log(16)}}},
    }  # fmt: skip
    table = gates.gates_table(runs, subsample=True)  # 16x16 map, keys pooled to 8x8: uniform entropy log 64
    sd = statistics.stdev([0.1, 0.3])
    assert table[2] == f"| `gd16` | D.blocks.attn16 | gamma +0.2000 +/- {sd:.4f} | +0.1000, +0.3000 | 0.750 |"
    assert table[3] == "| `gd16-zero` | D.blocks.attn16 | norm(out) +0.5000 +/- 0.0000 | +0.5000 | 0.667 |"
    assert len(table) == 4  # `none` has no blocks


def test_plot_gates_draws_only_what_was_logged(tmp_path):
    rd = tmp_path / "gd16" / "seed0"
    rd.mkdir(parents=True)
    (rd / "metrics.jsonl").write_text(
        '{"step": 1, "gamma/G.blocks.attn16": 0.0, "attn_entropy/G.blocks.attn16": 4.0}\n'
        '{"step": 2, "gamma/G.blocks.attn16": 0.1, "attn_entropy/G.blocks.attn16": 3.5}\n'
    )
    (tmp_path / "none").mkdir()
    runs = {"none": {0: {"run_dir": str(tmp_path / "none")}}, "gd16": {0: {"run_dir": str(rd)}}}
    assert gates.plot_gates(runs, True, tmp_path / "gates.png") and (tmp_path / "gates.png").stat().st_size > 0
    assert not gates.plot_gates({"none": runs["none"]}, True, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_gate_keys_read_in_both_spellings(tmp_path):
    """train.py logs gate/<kind>/<block> (gan.attention.gate_of); runs logged before wrote gamma/ and out_norm/."""
    assert gates.gate_key("gate/channel/D.blocks.attn16") == ("channel", "D.blocks.attn16")
    assert gates.gate_key("gate/gamma/G.blocks.attn8") == ("gamma", "G.blocks.attn8")
    assert gates.gate_key("gamma/G.blocks.attn8") == ("gamma", "G.blocks.attn8")
    assert gates.gate_key("out_norm/D.blocks.attn8") == ("out_norm", "D.blocks.attn8")
    assert gates.gate_key("attn_entropy/D.blocks.attn8") is None and gates.gate_key("loss_d") is None
    runs = {
        "new": {0: {"gates": {"gate/channel/D.blocks.attn16": 0.25, "attn_entropy/D.blocks.attn16": math.log(64)}}},
        "old": {0: {"gates": {"gamma/D.blocks.attn16": 0.5, "attn_entropy/D.blocks.attn16": math.log(64)}}},
        "zero": {0: {"gates": {"gate/zero_init/D.blocks.attn16": 0.75}}},
    }
    table = gates.gates_table(runs, subsample=True)
    assert table[2] == "| `new` | D.blocks.attn16 | rms tanh(a) +0.2500 +/- 0.0000 | +0.2500 | 1.000 |"
    assert table[3] == "| `old` | D.blocks.attn16 | gamma +0.5000 +/- 0.0000 | +0.5000 | 1.000 |"
    assert table[4].startswith("| `zero` | D.blocks.attn16 | norm(out) +0.7500 +/- 0.0000 | +0.7500 | nan")
    for arm, key in (("a", "gate/channel/D.blocks.attn8"), ("b", "out_norm/D.blocks.attn8")):
        (tmp_path / arm / "seed0").mkdir(parents=True)
        (tmp_path / arm / "seed0" / "metrics.jsonl").write_text(json.dumps({"step": 10, key: 0.5}) + "\n")
    rows = gates.over_training_table(tmp_path, points=1)
    assert rows[2:] == [
        "| `a` | D.blocks.attn8 (rms tanh(a)) | +0.5000 +/- 0.0000 (1) |",
        "| `b` | D.blocks.attn8 (norm(out)) | +0.5000 +/- 0.0000 (1) |",
    ]


def test_the_probe_labels_a_gate_by_its_logged_kind():
    from experiments.long_range_reports import gate_label

    old = {"gamma": float("nan"), "gate_value": 0.5, "out_weight_norm": 0.5}  # logged before gate_kind
    assert gate_label(old) == "norm(out) 0.500"
    assert gate_label({**old, "gate_kind": "zero_init"}) == "norm(out) 0.500"
    assert gate_label({**old, "gate_kind": "channel"}) == "rms tanh(a) 0.500"  # equal floats: no guessing
    assert gate_label({**old, "gate_kind": "gamma", "gate_value": -0.25}) == "gamma -0.2500"
