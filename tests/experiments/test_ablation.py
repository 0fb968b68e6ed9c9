"""experiments/ablation.py: the arm parser, the verdict rule on hand-made numbers, the report tables, and one
end-to-end `run` + `report` through the real CLIs on a tiny model (2 arms x 1 seed x 2 steps).

The statistics are checked against Python's `statistics` module (an independent implementation).
"""

import json
import math
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import ablation, experiment, local_d
from experiments.ablation import Arm, parse_arm, parse_arms
from experiments.experiment import ExperimentError, compare, parse_seeds

from shared import ROOT

# ----------------------------------------------------------------------------------------------
# Arms


@pytest.mark.parametrize(
    "name, g, d",
    [
        ("none", (), ()),
        ("g16", (16,), ()),
        ("d8", (), (8,)),
        ("gd16", (16,), (16,)),
        ("g16d8", (16,), (8,)),
        ("g32", (32,), ()),
    ],
)
def test_parse_arm(name, g, d):
    arm = parse_arm(name)
    assert (arm.name, arm.g, arm.d) == (name, g, d)
    assert arm.has_attention == bool(g or d)


def test_arm_overrides_are_valid_config_overrides():
    from gan.config import load_config

    cfg = load_config("configs/ablation_coherence.yaml", parse_arm("g16d8").overrides())
    assert (cfg.model.g_attention, cfg.model.d_attention) == ([16], [8])
    cfg = load_config("configs/ablation_fashion.yaml", parse_arm("none").overrides())
    assert (cfg.model.g_attention, cfg.model.d_attention) == ([], [])


def test_zero_suffix_selects_the_zero_initialised_gate():
    from gan.config import load_config

    arm = parse_arm("gd32-zero")
    assert (arm.g, arm.d, arm.gate, arm.has_attention) == ((32,), (32,), "zero_init", True)
    assert (parse_arm("d8-zero").d, parse_arm("g16d8-zero").g) == ((8,), (16,))
    cfg = load_config("configs/ablation_coherence.yaml", ["model.resolution=64", *arm.overrides()])
    assert (cfg.model.g_attention, cfg.model.d_attention, cfg.model.attn_gate) == ([32], [32], "zero_init")
    assert "model.attn_gate" not in " ".join(parse_arm("gd32").overrides())  # the config's own gate
    fast = parse_arm("gd32-lr10")
    assert (fast.gate, fast.lr_mult, fast.overrides()[-1]) == ("gamma", 10.0, "optim.attn_lr_mult=10")
    both = parse_arm("d32-zero-lr2.5")
    assert (both.d, both.gate, both.lr_mult) == ((32,), "zero_init", 2.5)
    cfg = load_config("configs/ablation_coherence.yaml", both.overrides())
    assert (cfg.model.attn_gate, cfg.optim.attn_lr_mult) == ("zero_init", 2.5)
    assert "attn_lr_mult" not in " ".join(parse_arm("gd32").overrides())


def test_logit_suffixes_give_the_uniform_control_and_the_cosine_design():
    from gan.config import load_config

    base = load_config("configs/ablation_coherence.yaml", parse_arm("d16").overrides()).model.attn_lab
    uniform = load_config("configs/ablation_coherence.yaml", parse_arm("d16-uniform").overrides()).model.attn_lab
    cosine = load_config("configs/ablation_coherence.yaml", parse_arm("d16-cosine-lr10").overrides()).model
    assert base.pairwise == "embedded_gaussian"
    assert (uniform.pairwise, uniform.temperature) == ("cosine", 1e-6)  # every weight 1/N to within 1e-6
    assert (cosine.attn_lab.pairwise, cosine.attn_lab.temperature, cosine.d_attention) == ("cosine", None, [16])
    assert (parse_arm("d16-cosine").logits, parse_arm("gd32-zero-uniform").gate) == ("cosine", "zero_init")


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "d32-uniform-cosine",
        "d32-cosine-zero",
        "none-cosine",
        "x16",
        "gd",
        "g",
        "16",
        "dg16",
        "none16",
        "g16g8",
        "none-zero",
        "-zero",
        "gd32zero",
        "-lr10",
        "none-lr10",
        "gd32-lr",
        "gd32-lr0",
        "gd32-lr10-zero",
    ],
)
def test_parse_arm_rejects(bad):
    with pytest.raises(ExperimentError, match="is not none"):
        parse_arm(bad)


def test_parse_arms_and_seeds():
    assert [a.name for a in parse_arms("none,g16,d16,gd16")] == ["none", "g16", "d16", "gd16"]
    with pytest.raises(ExperimentError, match="include 'none'"):
        parse_arms("g16,gd16")
    with pytest.raises(ExperimentError, match="twice"):
        parse_arms("none,g16,g16")
    assert parse_seeds("0,1,2") == [0, 1, 2]
    for bad in ("0,0", "a", "-1"):
        with pytest.raises(ExperimentError):
            parse_seeds(bad)


# ----------------------------------------------------------------------------------------------
# Statistics and the verdict


def test_mean_std_matches_statistics():
    values = [0.31, 0.12, 0.47, 0.05]
    m, s = experiment.mean_std(values)
    assert m == pytest.approx(statistics.mean(values), abs=1e-15)
    assert s == pytest.approx(statistics.stdev(values), abs=1e-15)
    assert experiment.mean_std([2.5]) == (2.5, 0.0)


def test_verdict_rule_on_hand_made_numbers():
    control = [1.0, 2.0, 3.0]  # mean 2, std 1
    # diff 4 > 2 x pooled std 1: exceeds; higher is better -> better
    c = compare("gd16", [5.0, 6.0, 7.0], control, higher_is_better=True)
    assert (c.diff, c.pooled_std, c.exceeds, c.better, c.seeds) == (4.0, 1.0, True, True, 3)
    assert c.welch_t == pytest.approx(4.0 / math.sqrt(1 / 3 + 1 / 3))
    assert "helped" in experiment.verdict_sentence("coherence score", c, 2.0, True)
    # the same numbers for a lower-is-better metric: beyond the spread, the wrong way
    c = compare("gd16", [5.0, 6.0, 7.0], control, higher_is_better=False)
    assert c.exceeds and not c.better
    assert "attention hurt" in experiment.verdict_sentence("FCD", c, 2.0, False)
    # diff 1.5 <= 2 x pooled std: within the spread
    c = compare("g16", [2.5, 3.5, 4.5], control, higher_is_better=True)
    assert c.diff == 1.5 and not c.exceeds
    assert "no measurable difference" in experiment.verdict_sentence("coherence score", c, 2.0, True)
    # unequal spreads: pooled std = sqrt((s1^2 + s2^2) / 2)
    arm = [10.0, 14.0, 18.0]  # std 4
    c = compare("d16", arm, control, higher_is_better=True)
    assert c.pooled_std == pytest.approx(math.sqrt((statistics.stdev(arm) ** 2 + 1.0) / 2))
    assert c.exceeds == (abs(14.0 - 2.0) > 2 * c.pooled_std)
    # one seed: no spread, no verdict
    c = compare("gd16", [5.0], [1.0], higher_is_better=True)
    assert not c.exceeds and "no verdict" in experiment.verdict_sentence("coherence score", c, 1.0, True)


def _fake_runs() -> dict:
    params = {"G": 126593, "D": 66337, "G_attention": 0, "D_attention": 0}
    return {
        "none": {s: {"coherence": v, "fcd": f, "params": params, "train_seconds": 100.0, "eval_seconds": 9.6} for s, v, f in
                 [(0, 0.10, 30.0), (1, 0.20, 32.0), (2, 0.30, 34.0)]},
        "gd16": {s: {"coherence": v, "fcd": f, "params": {**params, "G": 127874}, "train_seconds": 120.0, "eval_seconds": 10.2} for s, v, f in
                 [(0, 0.50, 20.0), (1, 0.60, 21.0), (2, 0.70, 22.0)]},
    }  # fmt: skip


def test_results_table_formatting():
    lines = ablation.results_table(_fake_runs(), ["coherence", "fcd"])
    assert (
        lines[0]
        == "| arm | G attn | D attn | seeds | G params | D params | coherence score | FCD (Frechet classifier distance) |"
    )
    assert lines[1] == "|---|---|---|---|---|---|---|---|"
    assert lines[2] == "| `none` | - | - | 3 | 126,593 | 66,337 | 0.2000 +/- 0.1000 | 32.00 +/- 2.00 |"
    assert lines[3] == "| `gd16` | 16 | 16 | 3 | 127,874 | 66,337 | 0.6000 +/- 0.1000 | 21.00 +/- 1.00 |"
    seeds = ablation.per_seed_table(_fake_runs(), ["coherence"])
    assert seeds[2] == "| `none` | 0 | 0.1000 | 100 | 10 |" and len(seeds) == 2 + 6
    verdict = ablation.verdicts(_fake_runs(), ["coherence", "fcd"])
    assert len(verdict) == 2
    assert verdict[0].startswith("- `gd16` vs `none` on coherence score (higher is better): better by +0.4 (+200% ")
    assert "exceeds the seed spread" in verdict[0] and "attention helped" in verdict[1]


# ----------------------------------------------------------------------------------------------
# End to end: the real CLI


@pytest.mark.slow
def test_run_and_report_end_to_end(tmp_path, tiny_ablation):
    """On the session's tiny ablation (tests/conftest.py: arms none, gd16, gd16-zero, seed 0, 2 steps), copied
    here so that the second call and the reports write nothing into the shared runs."""
    assert tiny_ablation.returncode == 0, tiny_ablation.stderr[-2000:]
    out, cmd = tmp_path / "runs", tiny_ablation.cmd
    shutil.copytree(tiny_ablation.runs, out)
    cmd = [*cmd[: cmd.index("--out") + 1], str(out), *cmd[cmd.index("--out") + 2 :]]  # the same runs, copied
    for arm in ("none", "gd16", "gd16-zero"):
        rd = out / arm / "seed0"
        ev = json.loads((rd / "eval.json").read_text())
        assert ev["step"] == 2 and ev["num_samples"] == 16 and ev["dataset"] == "builtin"
        assert 0.0 <= ev["coherence"] <= 1.0 and ev["fcd"] >= 0.0
        assert set(ev) >= {"valid", "shape_iou", "colour_agreement", "fcd_seconds", "eval_seconds"}
        assert 0.0 <= ev["d_auc"] <= 1.0 and 0.0 <= ev["d_paired"] <= 1.0  # D on 16 unseen coherent/incoherent pairs
        assert {"d_coherent", "d_incoherent"} <= set(ev) and ev["hook"] == ablation.EVAL_HOOK  # the study's scores
        assert (rd / "figures" / "samples.png").is_file()
        assert (rd / "figures" / "attention_G.png").is_file() == (arm != "none")
        assert (rd / "figures" / "attention_D.png").is_file() == (arm != "none")
        run = json.loads((rd / "run.json").read_text())
        expected = [*parse_arm(arm).overrides(), "train.seed=0"]
        assert run["overrides"][: len(expected)] == expected
    # parameter counts: the attention arm has exactly its blocks' parameters more, in G and in D
    none, gd = (json.loads((out / a / "seed0" / "eval.json").read_text())["params"] for a in ("none", "gd16"))
    assert none["G_attention"] == none["D_attention"] == 0
    assert gd["G"] - none["G"] == gd["G_attention"] > 0 and gd["D"] - none["D"] == gd["D_attention"] > 0

    # the GAN ladder's summaries (experiments.local_d ladder) read the same runs, once, and report from the files
    summaries = tmp_path / "summaries"
    found = local_d.summarise_ladder(tmp_path, summaries)
    s = json.loads((summaries / "runs_gd16-zero_seed0.json").read_text())
    assert s["setting"] == "runs" and s["steps"] == 2 and s["d_receptive_field"] == 48  # SAGAN's D at 32x32
    assert "model.d_width=16" in s["overrides"] and [e["step"] for e in s["losses"]] == [1, 2]
    assert s["scores"]["d_auc"] == json.loads((out / "gd16-zero" / "seed0" / "eval.json").read_text())["d_auc"]
    assert list(s["d_look_share"]) == ["blocks.attn16"] and "gate/zero_init/D.blocks.attn16" in s["gates"]
    (summaries / "runs_none_seed0.json").write_text("{}")  # written once: a second pass keeps what is there
    assert {} in local_d.summarise_ladder(tmp_path, summaries) and len(found) == 3
    (summaries / "runs_none_seed0.json").unlink()
    assert local_d.ladder_report(local_d.summarise_ladder(tmp_path, summaries)) == local_d.ladder_report(found)

    # a second call finds everything cached and trains nothing
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    assert again.returncode == 0 and "trained 0 s, evaluated 0 s" in again.stdout

    report, figures = tmp_path / "docs" / "ablation.md", tmp_path / "docs" / "ablation"
    report.parent.mkdir()
    report.write_text(f"old generated part\n{ablation.KEEP_MARKER}\n## Design\n\nwritten by hand\n")
    # the report in this process (the session's run and the second call are the script end to end)
    assert ablation.main(["report", str(out), "--report", str(report), "--figures", str(figures)]) == 0
    text = report.read_text()
    assert "| `none` | - | - | 1 |" in text and "| `gd16` | 16 | 16 | 1 |" in text
    assert "| `gd16-zero` | 16 | 16 | 1 |" in text and "D's AUC, coherent vs incoherent" in text
    assert "one seed has no spread to compare with, so no verdict" in text
    assert "coherence score (none: " in text and "no verdict (one seed): `gd16`" in text
    assert "FID" not in text  # the classifier distance is never called FID
    # the gates table: one row per block of the attention arm, none for `none`
    assert "| `gd16` | G.blocks.attn16 | gamma " in text and "| `gd16` | D.blocks.attn16 | gamma " in text
    assert "| `gd16-zero` | G.blocks.attn16 | norm(out) " in text  # the zero-initialised gate's own measure
    assert "| `none` | G.blocks" not in text
    assert "(ablation/coherence_gates.png)" in text and (figures / "coherence_gates.png").is_file()
    assert "old generated part" not in text and text.endswith(f"{ablation.KEEP_MARKER}\n## Design\n\nwritten by hand\n")
    for name in ("ablation_plot.png", "coherence_none_samples.png", "coherence_gd16_samples.png",
                 "coherence_gd16_attention_G.png", "coherence_gd16_attention_D.png"):  # fmt: skip
        assert (figures / name).is_file() and f"(ablation/{name})" in text

    # one dataset ablated twice (e.g. short and long runs): titles and figure names carry the steps
    twice = ablation.report([out, out], tmp_path / "twice.md", tmp_path / "twice")
    assert twice.count("## Coherence benchmark (built-in dataset), 2 steps") == 2
    assert (tmp_path / "twice" / "coherence_2steps_gd16_samples.png").is_file()


def test_the_ablations_hook_scores_d_on_the_built_in_data_only():
    from gan.config import load_config

    assert ablation.d_scores(None, None, load_config("configs/ablation_fashion.yaml"), 16) == {}  # no tie to break


def test_user_errors_are_one_line():
    proc = subprocess.run([sys.executable, "-m", "experiments.ablation", "run", "--config", "configs/ablation_coherence.yaml",
                           "--arms", "g16", "--out", "/nonexistent/x"], cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "error: --arms must include 'none', the control every attention arm is compared with"
    )
    with pytest.raises(ExperimentError, match="no ablation.json"):
        ablation.collect(Path("/nonexistent/ablation"))
    assert Arm("none", (), ()).overrides() == ["model.g_attention=[]", "model.d_attention=[]"]
