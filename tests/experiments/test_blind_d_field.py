"""Field against capacity in the blind-D cell (experiments.blind_d_field, and `summarise --cell` in
experiments.blind_d / blind_d_runs): the section's numbers from hand-made summaries against hand-computed values,
its rule and finding, the cells' file names, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from experiments import blind_d, blind_d_field, blind_d_runs, experiment

from shared import ROOT

# G's coherence at 2,000 steps on seeds 0, 1, 2 (the 1,000-step values are these minus 0.05)
COHERENCE = {
    ("blind16_2k", "none"): (0.10, 0.08, 0.09),
    ("blind16_2k", "d32"): (0.30, 0.20, 0.25),
    ("blind16_2k", "d32-uniform"): (0.10, 0.10, 0.10),
    ("full_2k", "none"): (0.50, 0.60, 0.40),
    ("fieldw2_2k", "none"): (0.20, 0.15, 0.22),
}
PARAMS = {"blind16_2k": {"none": 19409, "d32": 19730, "d32-uniform": 19730}, "full_2k": {"none": 1223089},
          "fieldw2_2k": {"none": 19355}}  # fmt: skip


def _summary(cell: str, arm: str, seed: int, coherence: float) -> dict:
    def at(c: float) -> dict:
        return {"source": "test", "coherence": c, "valid": 0.7, "shape_iou": 0.2, "colour_agreement": 0.6,
                "fcd": 10.0 + seed, "d_auc": 0.5 + c / 2, "d_paired": 0.5, "d_look_share": {}, "blocks": {}}  # fmt: skip

    return {"setting": cell, "arm": arm, "seed": seed, "params": {"D": PARAMS[cell][arm], "G": 733473},
            "d_receptive_field": 16 if cell == "blind16_2k" else 140,
            "scores_by_step": {"1000": at(coherence - 0.05), "2000": at(coherence)},
            "cpu_seconds": {"train": 1500.0, "evaluate": 30.0, "score_step_1000": 30.0},
            "finished": "2026-12-07T06:00:00+00:00", "machine": "test machine"}  # fmt: skip


def _write(folder, summaries: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for s in summaries:
        (folder / f"{s['setting']}_{s['arm']}_seed{s['seed']}.json").write_text(json.dumps(s))


def _all() -> list[dict]:
    return [_summary(cell, arm, k, c) for (cell, arm), cs in COHERENCE.items() for k, c in enumerate(cs)]


def test_field_section_by_hand(tmp_path) -> None:
    extra = _summary("blind16_2k", "none", 3, 0.9)  # the blind cell's seed 3: outside seeds 0-2, left out
    _write(tmp_path, [*_all(), extra])
    runs = blind_d_field.runs_by_d(tmp_path)
    assert {d: [s["seed"] for s in rs] for d, rs in runs.items()} == {d: [0, 1, 2] for d in blind_d_field.DS}
    body = blind_d_field.field_text(runs)
    # fieldw2: mean 0.19, deviations 0.01, -0.04, 0.03: std sqrt(0.0026 / 2) = 0.036; D's AUC 0.5 + c / 2
    assert ("| `fieldw2` | `fieldw2_2k`, `none` | 19,355 | 140 | 0, 1, 2 | 0.190 +/- 0.036 | 0.200, 0.150, 0.220 "
            "| 0.595 +/- 0.018 | 0.600, 0.575, 0.610 | 11.00 +/- 1.00 |") in body  # fmt: skip
    assert "| `full` | `full_2k`, `none` | 1,223,089 | 140 | 0, 1, 2 | 0.500 +/- 0.100 |" in body
    assert "| `blind d32` | `blind16_2k`, `d32` | 19,730 | 16 | 0, 1, 2 | 0.250 +/- 0.050 |" in body
    # fieldw2 - blind none: differences +0.10, +0.07, +0.13 (mean 0.10, std 0.03); blind none's std is 0.01, so
    # pooled std sqrt((0.0013 + 0.0001) / 2) = 0.026 and 0.10 > 2 x 0.026: higher, 3 of 3
    assert ("| `fieldw2` - `blind none` | coherence | 3 | +0.100 | 0.026 | yes | +0.100, +0.070, +0.130 | "
            "+0.100 +/- 0.030 | 3 of 3 | higher (beyond the spread, consistent in 3 of 3) |") in body  # fmt: skip
    # blind d32 - fieldw2: +0.10, +0.05, +0.03, mean 0.06; pooled sqrt((0.0025 + 0.0013) / 2) = 0.0436, 2 x 0.0436
    # = 0.087 > 0.06: within the spread although 3 of 3 are higher
    assert ("| `blind d32` - `fieldw2` | coherence | 3 | +0.060 | 0.044 | no | +0.100, +0.050, +0.030 | "
            "+0.060 +/- 0.036 | 3 of 3 | not separated |") in body  # fmt: skip
    # full - blind d32: +0.20, +0.40, +0.15, mean 0.25; pooled sqrt((0.01 + 0.0025) / 2) = 0.079
    assert "| `full` - `blind d32` | coherence | 3 | +0.250 | 0.079 | yes | +0.200, +0.400, +0.150 |" in body
    # full - fieldw2: +0.30, +0.45, +0.18, mean 0.31; pooled sqrt((0.01 + 0.0013) / 2) = 0.075
    assert "| `full` - `fieldw2` | coherence | 3 | +0.310 | 0.075 | yes | +0.300, +0.450, +0.180 |" in body
    # D's AUC is 0.5 + c / 2: every difference halves, the pooled std too
    assert "| `fieldw2` - `blind none` | D's AUC | 3 | +0.050 | 0.013 | yes | +0.050, +0.035, +0.065 |" in body
    # the gap closed: (0.30 - 0.10) / (0.50 - 0.10) = 0.50, 0.12 / 0.52 = 0.23, 0.16 / 0.31 = 0.52; means
    # (0.25 - 0.09) / (0.50 - 0.09) = 0.39; at 1,000 steps every value is 0.05 lower: the same shares
    gap = "Gap to the ceiling closed by the block (coherence): seed 0: 0.50, seed 1: 0.23, seed 2: 0.52; with the "
    assert body.count(gap + "means of seeds 0, 1, 2: 0.39.") == 2
    assert body.count("**Field against capacity at 2,000 steps:** the field binds at the same capacity: a whole "
                      "field at the blind D's size lifts G's coherence; the full D's capacity adds more; the block "
                      "and a whole field at the same size are not separated.") == 1  # fmt: skip
    assert "The 6 runs of `full` and `fieldw2`: 2.6 CPU hours" in body  # 6 x (1500 + 30 + 30) s


def test_field_report_between_its_markers(tmp_path) -> None:
    _write(tmp_path / "runs", _all())
    report = tmp_path / "blind_d.md"
    head = f"# fixed\n\n{blind_d.BEGIN}\nblind section\n{blind_d.END}\n\n"
    report.write_text(f"{head}{blind_d_field.FIELD_BEGIN}\nold\n{blind_d_field.FIELD_END}\n\n## Limits\n")
    body = blind_d_field.write_field_report(tmp_path / "runs", report)
    text = report.read_text()
    assert text.startswith(head) and text.endswith("\n\n## Limits\n") and "\nold\n" not in text and body in text
    first = report.read_bytes()
    blind_d_field.write_field_report(tmp_path / "runs", report)
    assert report.read_bytes() == first  # the same summaries give the same bytes
    (tmp_path / "no_markers.md").write_text(head)
    with pytest.raises(blind_d_runs.BlindDError, match="lacks the markers <!-- blind_d_field:begin -->"):
        blind_d_field.write_field_report(tmp_path / "runs", tmp_path / "no_markers.md")


def _verdicts(field: str, block: str, capacity: str) -> dict:
    return dict(zip(blind_d_field.PAIRS, (field, block, "not separated", capacity)))


HIGHER = "higher (beyond the spread, consistent in 3 of 3)"
LOWER = "lower (beyond the spread, consistent in 3 of 3)"


@pytest.mark.parametrize(
    "field,block,capacity,expected",
    [
        (HIGHER, HIGHER, "not separated", "the field binds at the same capacity: a whole field at the blind D's "
         "size lifts G's coherence; the block gives more than a whole field at the same size"),
        ("not separated", LOWER, HIGHER, "capacity binds: a whole field at the blind D's size does not lift G's "
         "coherence, the full D does; the block gives less than a whole field at the same size"),
        (LOWER, "not separated", "not separated", "capacity binds"),
        ("not separated", "not separated", "not separated", "field and capacity not separated"),
        ("no verdict yet (2 of 3 seeds)", HIGHER, HIGHER, "no finding yet"),
    ],
)  # fmt: skip
def test_field_finding(field, block, capacity, expected) -> None:
    assert blind_d_field.field_finding(_verdicts(field, block, capacity)).startswith(expected)


def test_field_verdict_needs_the_spread_and_three_of_three() -> None:
    def verdict(a: list[float], b: list[float]) -> tuple[bool, str]:
        c, p = blind_d.spread_and_paired("a", dict(enumerate(a)), dict(enumerate(b)))
        return c.exceeds, blind_d_field.field_verdict(c, p.diffs)

    assert verdict([0.3, 0.3, 0.3], [0.1, 0.1, 0.11]) == (True, HIGHER)
    assert verdict([0.1, 0.1, 0.11], [0.3, 0.3, 0.3]) == (True, LOWER)
    # diff 0.433 - 0.170 = 0.263 beyond 2 x pooled std sqrt((0.0133 + 0.0147) / 2) = 0.237, but one seed lower
    assert verdict([0.5, 0.5, 0.3], [0.1, 0.1, 0.31]) == (True, "not separated")
    # 3 of 3 higher, within the spread: 0.02 against 2 x 0.0707
    assert verdict([0.21, 0.11, 0.31], [0.2, 0.1, 0.28]) == (False, "not separated")
    assert verdict([0.3, 0.3], [0.1, 0.1]) == (True, "no verdict yet (2 of 3 seeds)")


def test_a_run_still_training_counts_at_its_checkpoints_only(tmp_path) -> None:
    partial = _summary("fieldw2_2k", "none", 2, 0.22)
    partial.update(partial=True, finished=None, scores_by_step={"1000": partial["scores_by_step"]["1000"]})
    del partial["params"]
    _write(tmp_path, [s for s in _all() if (s["setting"], s["seed"]) != ("fieldw2_2k", 2)] + [partial])
    body = blind_d_field.field_text(blind_d_field.runs_by_d(tmp_path))
    assert "`fieldw2`: 0, 1; still training, scored at their checkpoints so far: `fieldw2` seed 2." in body
    # at 2,000 steps fieldw2 has seeds 0 and 1 (+0.10, +0.07 over blind none): no verdict on its pairs, no finding
    assert (
        "| `fieldw2` - `blind none` | coherence | 2 | +0.085 | " in body and "no verdict yet (2 of 3 seeds) |" in body
    )
    assert "**Field against capacity at 2,000 steps:** no finding yet" in body
    assert "**Field against capacity at 1,000 steps:** the field binds at the same capacity" in body
    assert "The 5 runs of `full` and `fieldw2`" in body


def test_summarise_names_each_cells_summaries(tmp_path, monkeypatch) -> None:
    # a grid folder holding the full cell's run and a stray d32 run: only the cell's arm is summarised
    for arm in ("none", "d32"):
        (tmp_path / "runs" / arm / "seed1").mkdir(parents=True)
        (tmp_path / "runs" / arm / "seed1" / "eval.json").write_text("{}")
    monkeypatch.setattr(blind_d_runs, "summarise_run", lambda rd, arm, seed, cpu, steps, cell: {"setting": cell})
    written = blind_d_runs.summarise(tmp_path / "runs", tmp_path / "out", cell="full_2k")
    assert [p.name for p in written] == ["full_2k_none_seed1.json"]
    assert json.loads(written[0].read_text()) == {"setting": "full_2k"}
    with pytest.raises(blind_d_runs.BlindDError, match="unknown cell 'full'; the cells are blind16_2k, full_2k"):
        blind_d_runs.load_summaries(tmp_path / "out", "full")


def test_summarise_with_an_unknown_cell_fails_in_one_line(tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-m", "experiments.blind_d", "summarise", "--runs", str(tmp_path),
                           "--summaries", str(tmp_path / "out"), "--cell", "fieldw4_2k"], cwd=ROOT,
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert proc.returncode == 2 and not (tmp_path / "out").exists()
    assert proc.stderr.strip().splitlines() == [
        "error: unknown cell 'fieldw4_2k'; the cells are blind16_2k, full_2k, fieldw2_2k, cosine_1k, cosine_2k"
    ]


@pytest.mark.slow
def test_summarise_a_real_run_under_a_cell_name(tmp_path, tiny_ablation) -> None:
    # the shared tiny grid (arms none, gd16, gd16-zero; seed 0; 2 steps): the full cell takes its `none` run only
    assert tiny_ablation.returncode == 0, tiny_ablation.stderr[-2000:]
    written = blind_d_runs.summarise(tiny_ablation.runs, tmp_path, steps=(2,), cell="fieldw2_2k")
    assert [p.name for p in written] == ["fieldw2_2k_none_seed0.json"]
    (s,) = blind_d_runs.load_summaries(tmp_path, "fieldw2_2k")
    runner = json.loads((tiny_ablation.runs / "none" / "seed0" / experiment.EVAL_SUMMARY).read_text())
    assert s["setting"] == "fieldw2_2k" and s["arm"] == "none" and s["seed"] == 0 and s["steps"] == 2
    assert (
        s["scores_by_step"]["2"]["coherence"] == runner["coherence"] and "runner" in s["scores_by_step"]["2"]["source"]
    )
    assert blind_d_runs.load_summaries(tmp_path) == []  # the blind cell's summaries are not these
