"""The detail-tie summary: per-run AUC from the saved weights, one JSON per run, the table and verdict."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from experiments import detail_tie, long_range_data, long_range_model, long_range_probe
from gan.synthetic import CoherenceDataset


def test_summary_recomputes_each_runs_auc_from_its_weights(tmp_path, capsys):
    tiny = ["--arms", "conv", "--depths", "0", "--resolution", "32", "--steps", "3", "--batch", "4", "--width", "8",
            "--train-pairs", "4", "--test-pairs", "6", "--log-every", "2"]  # fmt: skip
    for variant in ("objects", "detail"):
        long_range_probe.main(
            ["run", "--variant", variant, "--seeds", "0", "1", "--out", str(tmp_path / variant), *tiny]
        )
    detail_tie.main(["--runs", str(tmp_path), "--summaries", str(tmp_path / "summaries")])
    printed = capsys.readouterr().out
    assert "| `objects` | `conv` | 3 | 2 |" in printed and "| `detail` | `conv` | 3 | 2 |" in printed
    assert "conv, detail vs objects at 3 steps" in printed

    summary = json.loads((tmp_path / "summaries" / "detail_conv_depth0_steps3_seed1.json").read_text())
    assert summary["settings"]["variant"] == "detail" and summary["seed"] == 1
    # independent reference: the saved probe's logits on freshly rendered test pairs, Mann-Whitney by a double loop
    model = long_range_model.Probe(0, 8)
    (weights,) = (tmp_path / "detail").glob("r32*/conv/depth0/seed1.safetensors")  # the cell folder: r32-detail-b4
    model.load_state_dict(load_file(str(weights)))
    model.eval()
    data = CoherenceDataset(6, 32, seed=long_range_data.TEST_SEED, variant="detail")
    with torch.no_grad():
        pos = model(torch.stack([data[i][0] for i in range(6)])).double().tolist()
        neg = model(torch.stack([data.incoherent(i)[0] for i in range(6)])).double().tolist()
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    assert abs(summary["test_auc"] - wins / 36) < 1e-9
    correct = sum(p > 0 for p in pos) + sum(n <= 0 for n in neg)
    assert summary["test_acc_eval"] == correct / 12


def test_attention_arms_are_compared_with_conv_and_the_report_needs_only_the_summaries(tmp_path, capsys):
    tiny = ["--depths", "0", "--resolution", "32", "--steps", "2", "--batch", "4", "--width", "8",
            "--train-pairs", "4", "--test-pairs", "6", "--log-every", "1", "--variant", "detail", "--seeds", "0"]  # fmt: skip
    long_range_probe.main(
        ["run", "--arms", "conv", "attn_zero_init", "--out", str(tmp_path / "runs" / "detail"), *tiny]
    )
    capsys.readouterr()
    summaries = tmp_path / "summaries"
    detail_tie.main(["--runs", str(tmp_path / "runs"), "--summaries", str(summaries)])
    first = capsys.readouterr().out
    assert "| `detail` | `attn_zero_init` | 2 | 1 |" in first and "`attn_zero_init` vs conv on `detail`" in first
    # the weights and run records gone, the summaries alone give the same report
    for path in (tmp_path / "runs").rglob("*.*"):
        path.unlink()
    detail_tie.main(["--runs", str(tmp_path / "runs"), "--summaries", str(summaries)])
    assert capsys.readouterr().out == first
