"""experiments/experiment.py, the runner itself: what it caches and reruns, the order it runs in, the manifest's
chain of calls, the study's evaluation hook, and run directories written under the earlier names.

The runner's bookkeeping is checked with its two subprocesses (train.py, the evaluation) replaced by a stand-in
that writes what they would leave behind; the hook is checked for real on the session's tiny ablation run
(tests/conftest.py).
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from experiments import experiment
from experiments.experiment import Arm, ExperimentError

from shared import ROOT

CONFIG = "configs/ablation_coherence.yaml"
EXTRA = ["data.builtin_size=64"]


class Launched(list):
    """What the runner launched, in order; `where` says for each evaluation where it ran ("here": in the
    runner's process, or "subprocess")."""

    def __init__(self) -> None:
        super().__init__()
        self.where: list[str] = []

    def evaluated(self, run_dir: Path, num: int, metrics: list[str], hook: str | None, where: str) -> None:
        self.append(("evaluate", f"{run_dir.parent.name}/{run_dir.name}", num, metrics, hook))
        self.where.append(where)
        summary = {"num_samples": num, "metrics": metrics, "hook": hook, "fcd": float(num)}
        (run_dir / experiment.EVAL_SUMMARY).write_text(json.dumps(summary))


@pytest.fixture
def launched(monkeypatch) -> Launched:
    """Replaces the runner's subprocesses and its own evaluation; returns the list of what was launched, in
    order: ("train", arm, seed, overrides) or ("evaluate", run_dir name, num_samples, metrics, hook)."""
    calls = Launched()

    def stand_in(cmd: list[str], log_path: Path, what: str) -> float:  # noqa: ARG001 (the runner's signature)
        if cmd[1].endswith("train.py"):
            run_dir = Path(cmd[cmd.index("--run-dir") + 1])
            overrides = cmd[cmd.index("--run-dir") + 2 :]
            calls.append(("train", run_dir.parent.name, int(run_dir.name.removeprefix("seed")), overrides))
            (run_dir / "generator").mkdir(parents=True)
            (run_dir / "generator" / "config.json").write_text("{}")  # what a finished train.py leaves
            return 1.5
        num = int(cmd[cmd.index("--num-samples") + 1])
        metrics = cmd[cmd.index("--metrics") + 1].split(",") if "--metrics" in cmd else []
        hook = cmd[cmd.index("--hook") + 1] if "--hook" in cmd else None
        calls.evaluated(Path(cmd[4]), num, metrics, hook, "subprocess")
        return 0.5

    def evaluate_here(run_dir: Path, num: int, metrics=(), hook=None) -> dict:
        calls.evaluated(run_dir, num, list(metrics), hook, "here")
        return {}

    monkeypatch.setattr(experiment, "run_logged", stand_in)
    monkeypatch.setattr(experiment, "evaluate_run", evaluate_here)
    return calls


def run_all(out: Path, arms, seeds, extra=EXTRA, num_samples=16, jobs=1, hook=None, metrics=()):
    arms = [Arm(name, (f"optim.lr_g={lr}",)) for name, lr in arms]
    return experiment.run_all(CONFIG, arms, seeds, out, jobs, list(extra), num_samples, "study.json", "python -m x",
                              metrics=metrics, hook=hook)  # fmt: skip


ARMS = [("a", 0.001), ("b", 0.002)]


def test_runs_are_cached_and_only_what_changed_runs_again(tmp_path, launched):
    run_all(tmp_path, ARMS, [0])
    assert [c[:3] for c in launched] == [("train", "a", 0), ("evaluate", "a/seed0", 16),
                                         ("train", "b", 0), ("evaluate", "b/seed0", 16)]  # fmt: skip
    assert launched[0][3] == ["optim.lr_g=0.001", "train.seed=0", *EXTRA]
    run = json.loads((tmp_path / "a" / "seed0" / "run.json").read_text())
    assert (run["arm"], run["seed"], run["train_seconds"]) == ("a", 0, 1.5)
    del launched[:]
    run_all(tmp_path, ARMS, [0])
    assert launched == []  # everything cached
    run_all(tmp_path, ARMS, [0], num_samples=32)
    assert launched == [("evaluate", "a/seed0", 32, [], None), ("evaluate", "b/seed0", 32, [], None)]
    del launched[:]
    run_all(tmp_path, ARMS, [0], extra=[*EXTRA, "train.steps=3"])  # changed overrides: trained and scored again
    assert [c[:3] for c in launched] == [("train", "a", 0), ("evaluate", "a/seed0", 16),
                                         ("train", "b", 0), ("evaluate", "b/seed0", 16)]  # fmt: skip
    del launched[:]
    (tmp_path / "a" / "seed0" / "generator" / "config.json").unlink()  # an unfinished run starts afresh
    run_all(tmp_path, ARMS, [0], extra=[*EXTRA, "train.steps=3"])
    assert [c[:3] for c in launched] == [("train", "a", 0), ("evaluate", "a/seed0", 16)]


def test_one_job_evaluates_in_the_runners_process_and_more_in_subprocesses(tmp_path, launched):
    run_all(tmp_path / "one", ARMS, [0])
    assert launched.where == ["here", "here"]
    run_all(tmp_path / "two", ARMS, [0], jobs=2)  # the same runs, two at a time
    assert launched.where == ["here", "here", "subprocess", "subprocess"]
    assert sorted(c[:3] for c in launched[4:]) == sorted(c[:3] for c in launched[:4])


def test_seeds_are_the_outer_loop(tmp_path, launched):
    """If the budget runs out, every arm has the same seeds done."""
    run_all(tmp_path, ARMS, [0, 1])
    assert [c[1:3] for c in launched if c[0] == "train"] == [("a", 0), ("b", 0), ("a", 1), ("b", 1)]


def test_the_manifest_keeps_every_call_and_collect_reads_them_all(tmp_path, launched):
    run_all(tmp_path, [("a", 0.001)], [0])
    run_all(tmp_path, ARMS, [1])
    manifest = json.loads((tmp_path / "study.json").read_text())
    assert (manifest["arms"], manifest["seeds"]) == (["a", "b"], [1])
    assert (manifest["previous"]["arms"], manifest["previous"]["seeds"]) == (["a"], [0])
    assert "previous" not in manifest["previous"]
    found = experiment.collect(tmp_path, "study.json", "a", "python -m x run")
    assert found["seeds"] == [0, 1] and len(found["calls"]) == 2 and found["manifest"] == manifest
    assert {arm: sorted(by_seed) for arm, by_seed in found["runs"].items()} == {"a": [0, 1], "b": [1]}
    assert found["runs"]["b"][1]["train_seconds"] == 1.5 and found["runs"]["b"][1]["fcd"] == 16.0
    assert found["runs"]["b"][1]["figures"] == str(tmp_path / "b" / "seed1" / "figures")
    with pytest.raises(ExperimentError, match="no evaluated 'c' run"):
        experiment.collect(tmp_path, "study.json", "c", "python -m x run")


def test_the_hook_is_passed_to_the_evaluation_and_is_part_of_its_cache(tmp_path, launched):
    run_all(tmp_path, [("a", 0.001)], [0], hook="study:scores", metrics=("prc",))
    assert launched[1] == ("evaluate", "a/seed0", 16, ["prc"], "study:scores")
    del launched[:]
    run_all(tmp_path, [("a", 0.001)], [0], hook="study:scores", metrics=("prc",))
    assert launched == []
    run_all(tmp_path, [("a", 0.001)], [0], hook="other:scores", metrics=("prc",))
    assert launched == [("evaluate", "a/seed0", 16, ["prc"], "other:scores")]  # another study's scores: again


def test_run_directories_written_under_the_earlier_names_still_read(tmp_path, launched):
    """ablation_run.json, ablation_eval.json and ablation/ (before the runner was generic): found cached, read
    back, and left as they are (a grid may still be writing them)."""
    rd = tmp_path / "a" / "seed0"
    (rd / "generator").mkdir(parents=True)
    (rd / "generator" / "config.json").write_text("{}")
    (rd / "ablation").mkdir()
    record = {"config": CONFIG, "arm": "a", "seed": 0, "overrides": ["optim.lr_g=0.001", "train.seed=0", *EXTRA]}
    (rd / "ablation_run.json").write_text(json.dumps({**record, "train_seconds": 7.0}))
    (rd / "ablation_eval.json").write_text(json.dumps({"num_samples": 16, "metrics": [], "d_auc": 0.75}))  # no hook
    run_all(tmp_path, [("a", 0.001)], [0], hook="study:scores")
    assert launched == []  # trained and evaluated already (a summary from before hooks counts as any hook's)
    assert sorted(p.name for p in rd.iterdir()) == ["ablation", "ablation_eval.json", "ablation_run.json", "generator"]
    result = experiment.collect(tmp_path, "study.json", "a", "python -m x run")["runs"]["a"][0]
    assert (result["d_auc"], result["train_seconds"], result["figures"]) == (0.75, 7.0, str(rd / "ablation"))
    # where both names exist (a run re-evaluated by this runner), the current one is read
    (rd / "eval.json").write_text(json.dumps({"num_samples": 32, "metrics": [], "hook": None}))
    assert experiment.run_path(rd, experiment.EVAL_SUMMARY) == rd / "eval.json"
    assert experiment.run_path(rd, experiment.RUN_SUMMARY) == rd / "ablation_run.json"
    assert experiment.run_path(tmp_path / "new", experiment.FIGURES) == tmp_path / "new" / "figures"


HOOK_MODULE = '''
def scores(G, D, cfg, num_samples):
    """Stands in for a study's evaluation: what it was given, as numbers."""
    return {"hook_num_samples": num_samples, "hook_dataset": cfg.data.dataset,
            "hook_g_params": sum(p.numel() for p in G.parameters()),
            "hook_d_params": sum(p.numel() for p in D.parameters())}
'''


@pytest.mark.slow
def test_evaluate_run_calls_the_studys_hook_on_the_run(tmp_path, monkeypatch, tiny_ablation):
    """On a copy of the session's tiny gd16 run: the hook gets the run's G and D and its config, its scores join
    the summary, and no other study's scores are there (the runner computes no D score of its own)."""
    assert tiny_ablation.returncode == 0, tiny_ablation.stderr[-2000:]
    rd = tmp_path / "gd16"
    shutil.copytree(tiny_ablation.runs / "gd16" / "seed0", rd)
    (tmp_path / "hooks").mkdir()
    (tmp_path / "hooks" / "study_hook.py").write_text(HOOK_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path / "hooks"))
    threads = torch.get_num_threads()
    try:
        result = experiment.evaluate_run(rd, 16, (), "study_hook:scores")
    finally:
        torch.set_num_threads(threads)  # evaluate_run takes one thread, as its own process would
    written = json.loads((rd / "eval.json").read_text())
    assert written["hook"] == "study_hook:scores" and written["hook_num_samples"] == 16
    assert written["hook_dataset"] == "builtin"
    assert (written["hook_g_params"], written["hook_d_params"]) == (written["params"]["G"], written["params"]["D"])
    assert written["params"]["G_attention"] > 0 and "d_auc" not in written and result["hook_num_samples"] == 16
    assert (rd / "figures" / "samples.png").is_file() and (rd / "figures" / "attention_D.png").is_file()


def test_a_hook_that_does_not_exist_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "experiments.experiment", "evaluate", str(tmp_path), "--num-samples",
                           "4", "--hook", "no_such_module:scores"], cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --hook no_such_module:scores: no function 'scores' in module 'no_such_module'"
