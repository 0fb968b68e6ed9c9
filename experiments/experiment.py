"""The one experiment runner: arms x seeds -> cached runs -> metric table -> verdict.

An experiment script (experiments/ablation.py, experiments/fast_mode_quality.py) is a list of arms (each a
name plus the config overrides that make it) and the metrics it reports; this module does the rest:

- `run_all` trains every (arm, seed) through the real `train.py` in its own subprocess (OMP_NUM_THREADS=1,
  `jobs` at a time) into `OUT/<arm>/seed<k>/`, then evaluates its final EMA generator (`evaluate_run`), which
  also calls the study's own evaluation when it passes one (`hook`: "module:function", e.g. the ablation's D
  scores). With `jobs` > 1 each evaluation runs in a subprocess of its own (`python -m experiments.experiment
  evaluate`), in parallel with the other runs; with `jobs` = 1 the runner evaluates each run itself, one
  after another, in its own process (torch is loaded there already: no second process start). Both steps are
  cached per run directory (`run.json`, `eval.json`; figures in `figures/`): a second call only does what is
  missing or was asked differently. Run directories written before these names (`ablation_run.json`,
  `ablation_eval.json`, `ablation/`) still read, through `run_path`.
- `collect` reads the cached results back as {arm: {seed: result}}.
- `compare` and `verdict` are the rule every report applies, written once: an arm "helped" or "hurt" when
  |mean(arm) - mean(control)| > SPREAD_FACTOR x pooled std over seeds, otherwise it is "within the seed spread".
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import fcntl
import importlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from gan.cli import fail_cleanly  # (light: no torch)
from gan.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_SEED = 2026  # z and labels of the evaluation samples, the same for every arm
GRID_IMAGES = 32  # images in each run's sample grid
SPREAD_FACTOR = 2.0  # a difference "exceeds the seed spread" when |diff| > SPREAD_FACTOR * pooled std
RUN_SUMMARY = "run.json"  # what was trained: config, arm, seed, overrides, command, seconds
EVAL_SUMMARY = "eval.json"  # the scores of `evaluate_run`
FIGURES = "figures"  # each run's sample grid, attention figures and closest pairs
# The names the runner wrote before it was generic (it was the ablation's): read, never written.
EARLIER_NAMES = {RUN_SUMMARY: "ablation_run.json", EVAL_SUMMARY: "ablation_eval.json", FIGURES: "ablation"}


class ExperimentError(UserError, ValueError):
    """A user-caused problem with an experiment's arguments or run directories; one line that says what to do."""


class ArmLike(Protocol):
    name: str

    def overrides(self) -> list[str]: ...


@dataclasses.dataclass(frozen=True)
class Arm:
    """One arm: a name and the config overrides that make it (on top of the experiment's config)."""

    name: str
    settings: tuple[str, ...] = ()

    def overrides(self) -> list[str]:
        return list(self.settings)


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise ExperimentError(f"--seeds must be comma-separated integers, got '{text}'") from None
    if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise ExperimentError(f"--seeds must be distinct non-negative integers, got '{text}'")
    return seeds


def add_run_arguments(parser: argparse.ArgumentParser, out: str, num_samples: int, what: str) -> None:
    """The `run` arguments every experiment script shares: --seeds, --jobs, --num-samples, --out, overrides."""
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--num-samples", type=int, default=num_samples, help="generated images per evaluation")
    parser.add_argument("--out", type=Path, default=Path(out))
    parser.add_argument(
        "overrides", nargs="*", help=f"config overrides for every {what} (e.g. train.steps=2 for a smoke test)"
    )


def command_line(module: str) -> str:
    """How this process was started, as a command to paste: `python -m module args...`."""
    return " ".join(["python", "-m", module, *sys.argv[1:]])


# ----------------------------------------------------------------------------------------------
# Statistics and the verdict


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


@dataclasses.dataclass
class Comparison:
    arm: str
    diff: float  # mean(arm) - mean(control)
    pooled_std: float  # sqrt((s_arm^2 + s_control^2) / 2)
    exceeds: bool  # |diff| > SPREAD_FACTOR * pooled_std (False with fewer than 2 seeds in either arm)
    better: bool  # diff points the metric's good way
    seeds: int  # the smaller number of seeds of the two arms
    welch_t: float  # diff / sqrt(s_arm^2 / n_arm + s_ctl^2 / n_ctl), shown for reference (nan without spread)


def compare(arm: str, values: Sequence[float], control: Sequence[float], higher_is_better: bool) -> Comparison:
    """The rule: an arm changed the metric beyond the seed spread iff |diff of means| > 2 x pooled std.

    With n = 3 seeds per arm and equal spreads s, a two-sided Welch t-test at 5% needs
    |t| = |diff| / (s sqrt(2/3)) > 2.78 (4 degrees of freedom), i.e. |diff| > 2.27 s: this rule is slightly
    more lenient. It is a rule of thumb over few seeds, not a significance test.
    """
    m_arm, s_arm = mean_std(values)
    m_ctl, s_ctl = mean_std(control)
    diff = m_arm - m_ctl
    pooled = math.sqrt((s_arm**2 + s_ctl**2) / 2)
    n = min(len(values), len(control))
    exceeds = n >= 2 and abs(diff) > SPREAD_FACTOR * pooled
    se = math.sqrt(s_arm**2 / len(values) + s_ctl**2 / len(control))
    welch_t = diff / se if n >= 2 and se > 0 else float("nan")
    return Comparison(arm, diff, pooled, exceeds, (diff > 0) == higher_is_better and diff != 0, n, welch_t)


def verdict(c: Comparison) -> str:
    """One of "helped", "hurt", "within the seed spread", "no verdict (one seed)"."""
    if c.seeds < 2:
        return "no verdict (one seed)"
    if not c.exceeds:
        return "within the seed spread"
    return "helped" if c.better else "hurt"


def spread_clause(c: Comparison, digits: str = ".4g") -> str:
    """'exceeds the seed spread (|diff| a > 2 x pooled std b)' or its negation."""
    sign, word = (">", "exceeds") if c.exceeds else ("<=", "does not exceed")
    return f"{word} the seed spread (|diff| {abs(c.diff):{digits}} {sign} {SPREAD_FACTOR:g} x pooled std {c.pooled_std:{digits}})"


def verdict_sentence(metric: str, c: Comparison, control_mean: float, higher_is_better: bool,
                     control: str = "none", subject: str = "attention", control_label: str = "no-attention") -> str:  # fmt: skip
    """One plain sentence about an arm against the control, generated from the numbers."""
    direction = "better" if c.better else ("worse" if c.diff != 0 else "no different")
    relative = f" ({100 * c.diff / abs(control_mean):+.0f}% of the {control_label} mean)" if control_mean else ""
    head = f"`{c.arm}` vs `{control}` on {metric} ({'higher' if higher_is_better else 'lower'} is better): {direction} by {c.diff:+.4g}{relative}"
    outcome = verdict(c)
    if outcome.startswith("no verdict"):
        return f"{head}; one seed has no spread to compare with, so no verdict."
    effect = outcome if outcome != "within the seed spread" else "made no measurable difference"
    return f"{head}; this {spread_clause(c)}, so {subject} {effect} here (Welch t = {c.welch_t:+.2f})."


# ----------------------------------------------------------------------------------------------
# Running (train, then evaluate; both cached per run directory)


def run_dir_of(out: Path, arm: str, seed: int) -> Path:
    return out / arm / f"seed{seed}"


def run_path(run_dir: Path, name: str) -> Path:
    """Where a run directory holds RUN_SUMMARY, EVAL_SUMMARY or FIGURES: under that name, or, in a directory
    written before the runner was generic that holds only the earlier name, under the earlier one."""
    earlier = run_dir / EARLIER_NAMES[name]
    return earlier if not (run_dir / name).exists() and earlier.exists() else run_dir / name


def _child_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_logged(cmd: list[str], log_path: Path, what: str) -> float:
    """Run cmd from the repository root with its output in log_path; seconds spent. One-line error on failure."""
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, cwd=ROOT, env=_child_env(), stdout=log, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = log_path.read_text().strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"{what} failed ({proc.returncode}): {tail[0]}; see {log_path}")
    return time.perf_counter() - start


def train_one(config: str, arm: ArmLike, seed: int, run_dir: Path, extra: list[str]) -> float:
    """Train (arm, seed) through train.py unless run_dir already holds this exact finished run; seconds spent."""
    record = {
        "config": str(config),
        "arm": arm.name,
        "seed": seed,
        "overrides": [*arm.overrides(), f"train.seed={seed}", *extra],
    }
    done = run_path(run_dir, RUN_SUMMARY)
    if done.is_file() and (run_dir / "generator" / "config.json").is_file():
        old = json.loads(done.read_text())
        if {k: old.get(k) for k in record} == record:
            return 0.0
    if run_dir.exists():  # unfinished or a different run: start it again from nothing
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "--config",
        str(config),
        "--run-dir",
        str(run_dir),
        *record["overrides"],
    ]
    seconds = run_logged(cmd, run_dir / "train.log", f"training {arm.name} seed {seed}")
    (run_dir / RUN_SUMMARY).write_text(json.dumps({**record, "command": cmd, "train_seconds": seconds}, indent=1))
    return seconds


def evaluate_one(run_dir: Path, num_samples: int, metrics: Sequence[str] = (), hook: str | None = None,
                 here: bool = False) -> float:  # fmt: skip
    """Evaluate run_dir unless its EVAL_SUMMARY already holds it for num_samples, the extra feature `metrics`
    (e.g. prc, copy) and the study's `hook`; seconds spent. (Summaries from before hooks name none: the runner
    then ran the one study's scores itself, so they count as any hook's.) In a subprocess, or with `here` in
    this process (the runner with one job: no second process start)."""
    done = run_path(run_dir, EVAL_SUMMARY)
    if done.is_file():
        old = json.loads(done.read_text())
        if (old.get("num_samples"), old.get("metrics", []), old.get("hook", hook)) == (
            num_samples,
            list(metrics),
            hook,
        ):
            return 0.0
    if here:
        start = time.perf_counter()
        evaluate_run(run_dir, num_samples, metrics, hook)
        return time.perf_counter() - start
    cmd = [sys.executable, "-m", "experiments.experiment", "evaluate", str(run_dir), "--num-samples", str(num_samples)]
    if metrics:
        cmd += ["--metrics", ",".join(metrics)]
    if hook:
        cmd += ["--hook", hook]
    return run_logged(cmd, run_dir / "eval.log", f"evaluating {run_dir}")


def run_all(config: str, arms: Sequence[ArmLike], seeds: list[int], out: Path, jobs: int, extra: list[str],
            num_samples: int | None, manifest: str, command: str, metrics: Sequence[str] = (),
            hook: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Train and evaluate every (arm, seed) not already done; write OUT/<manifest> (keeping earlier calls').

    `metrics`: registry metrics scored in the classifier features besides FCD (e.g. prc, copy); `hook`: the
    study's own evaluation, "module:function" (see `evaluate_run`)."""
    from gan.config import load_config  # checks the config and every arm's overrides before anything runs
    from gan.data import build_dataset

    if jobs < 1:
        raise ExperimentError("--jobs must be at least 1")
    cfg = None
    for arm in arms:
        cfg = load_config(config, [*arm.overrides(), *extra])
    num_samples = num_samples or cfg.eval.num_samples
    # A missing or corrupt dataset fails here, once, before any run starts (and Fashion-MNIST is unpacked once).
    build_dataset(cfg.data, cfg.model)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def one(pair: tuple[ArmLike, int]) -> None:
        arm, seed = pair
        rd = run_dir_of(out, arm.name, seed)
        t = train_one(config, arm, seed, rd, extra)
        e = evaluate_one(rd, num_samples, metrics, hook, here=jobs == 1)
        print(f"{arm.name} seed {seed}: trained {t:.0f} s, evaluated {e:.0f} s", flush=True)

    # Seeds outermost: if the budget runs out, every arm has the same seeds done.
    pairs = [(arm, seed) for seed in seeds for arm in arms]
    if jobs == 1:  # in turn, in this thread (the evaluations run here, figures included)
        for pair in pairs:
            one(pair)
    else:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(one, pairs))
    record = {
        "config": str(config), "arms": [a.name for a in arms], "seeds": seeds, "extra_overrides": extra,
        "num_samples": num_samples, "jobs": jobs, "wall_seconds_this_call": time.perf_counter() - started,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "command": command,
    }  # fmt: skip
    path = out / manifest
    if path.is_file():  # keep the earlier calls' commands and add this one's
        record["previous"] = json.loads(path.read_text())
    path.write_text(json.dumps(record, indent=1))
    print(f"{len(arms) * len(seeds)} runs in {out}; wall {record['wall_seconds_this_call']:.0f} s", flush=True)
    return record


def collect(out: Path, manifest: str, control: str, how: str) -> dict[str, Any]:
    """Every evaluated run under `out`: {"runs": {arm: {seed: result}}, "manifest", "calls", "seeds"}.

    Arms are in first-run order; `how` is the command to name in the one-line errors."""
    path = out / manifest
    if not path.is_file():
        raise ExperimentError(f"{out} holds no {manifest}; run `{how} --out {out}` first")
    calls = [json.loads(path.read_text())]  # the latest call first, then the earlier ones it keeps
    while "previous" in calls[-1]:
        calls.append(calls[-1]["previous"])
    arms = list(dict.fromkeys(name for call in reversed(calls) for name in call["arms"]))
    seeds = sorted({seed for call in calls for seed in call["seeds"]})
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for name in arms:
        for seed in seeds:
            rd = run_dir_of(out, name, seed)
            evaluated, trained = run_path(rd, EVAL_SUMMARY), run_path(rd, RUN_SUMMARY)
            if evaluated.is_file() and trained.is_file():
                result = json.loads(evaluated.read_text())
                result["train_seconds"] = json.loads(trained.read_text()).get("train_seconds", 0.0)
                result["run_dir"] = str(rd)
                result["figures"] = str(run_path(rd, FIGURES))
                runs.setdefault(name, {})[seed] = result
    if control not in runs:
        raise ExperimentError(f"{out} has no evaluated '{control}' run; finish `{how}` first")
    return {"runs": runs, "manifest": calls[0], "calls": calls, "seeds": seeds}


# ----------------------------------------------------------------------------------------------
# Evaluating one run (in a process of its own, or in the runner's with one job)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """One process at a time (several evaluations may build the same cached reference statistics)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def parameter_counts(model_cfg: Any) -> dict[str, int]:
    from gan.attention import attention_blocks
    from gan.models import Discriminator, Generator

    counts = {}
    for key, net in (("G", Generator(model_cfg)), ("D", Discriminator(model_cfg))):
        counts[key] = sum(p.numel() for p in net.parameters())
        counts[f"{key}_attention"] = sum(p.numel() for _, b in attention_blocks(net) for p in b.parameters())
    return counts


def load_hook(spec: str) -> Callable[..., dict[str, Any]]:
    """A study's evaluation from its name, "package.module:function"."""
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise ExperimentError(f"--hook {spec}: no function {name!r} in module {module!r}") from None


def evaluate_run(
    run_dir: Path, num_samples: int, metrics: Sequence[str] = (), hook: str | None = None
) -> dict[str, Any]:
    """Scores, parameter counts and figures of a finished run (its final EMA G and its D); writes EVAL_SUMMARY.

    Scores: every registered metric defined on the run's dataset without a feature network (the coherence
    score on the built-in dataset), and the Frechet classifier distance `fcd` (registry `fid` under the
    Fashion-MNIST classifier features; not FID), plus the registry `metrics` asked for (same features, same samples).
    Then the study's own scores: `hook(G, D, cfg, num_samples)` returns a dict merged into the result (the
    ablation's: D's AUC on incoherent images and where D's blocks look)."""
    study_scores = load_hook(hook) if hook else None  # a wrong name fails here, before any work
    import torch

    from gan import registry
    from gan.attention_maps import attention_figures, save_attention_figure
    from gan.data import build_dataset
    from gan.grids import save_image_grid
    from gan.metrics import cache_root, evaluate
    from gan.models import load_discriminator, load_generator
    from gan.sampling import sample_images

    torch.set_num_threads(1)
    start = time.perf_counter()
    G, cfg = load_generator(run_dir / "generator")
    D, _, step = load_discriminator(run_dir)
    result: dict[str, Any] = {"num_samples": num_samples, "step": step, "dataset": cfg.data.dataset,
                              "params": parameter_counts(cfg.model), "metrics": list(metrics), "hook": hook}  # fmt: skip
    own = [
        n for n, m in registry.METRICS.items() if "features" not in m.needs and cfg.data.dataset in (m.datasets or ())
    ]
    if own:
        result.update(evaluate(G, cfg, own, num_samples=num_samples, seed=SAMPLE_SEED))
    cfg.eval.feature_extractor = "fashion_classifier"
    t0 = time.perf_counter()
    with _file_lock(cache_root(cfg) / "evaluate.lock"):
        scores = evaluate(G, cfg, ["fid"], num_samples=num_samples, seed=SAMPLE_SEED)
        if metrics:
            result.update(evaluate(G, cfg, list(metrics), num_samples=num_samples, seed=SAMPLE_SEED,
                                            pairs_grid=run_dir / FIGURES / "closest_pairs.png"))  # fmt: skip
    result["fcd"] = scores[registry.result_key("fid", "fashion_classifier")]
    result["fcd_seconds"] = time.perf_counter() - t0
    if study_scores is not None:
        result.update(study_scores(G, D, cfg, num_samples))

    figures = run_dir / FIGURES
    images = sample_images(G, min(GRID_IMAGES, num_samples), SAMPLE_SEED)  # the first images the scores saw
    save_image_grid(images[:GRID_IMAGES], figures / "samples.png", nrow=8)
    z = torch.randn(4, G.z_dim, generator=torch.Generator().manual_seed(SAMPLE_SEED))
    y = torch.arange(4) % cfg.model.num_classes if cfg.model.num_classes else None
    data = build_dataset(cfg.data, cfg.model)
    real = torch.stack([data[i][0] for i in range(4)])
    labels = torch.tensor([data[i][1] for i in range(4)]) if cfg.model.num_classes else None
    for net, figure in attention_figures(G, D, z, y, real, labels).items():
        save_attention_figure(figure, figures / f"attention_{net}.png")
    result["eval_seconds"] = time.perf_counter() - start
    (run_dir / EVAL_SUMMARY).write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="(used by the experiment scripts) evaluate one finished run directory")
    sub = parser.add_subparsers(dest="command", required=True)
    p_eval = sub.add_parser("evaluate", help="scores and figures of one finished run directory")
    p_eval.add_argument("run_dir")
    p_eval.add_argument("--num-samples", type=int, required=True)
    p_eval.add_argument("--metrics", default="", help="comma-separated registry metrics besides FCD (e.g. prc,copy)")
    p_eval.add_argument("--hook", help="the study's own evaluation, module:function(G, D, cfg, num_samples) -> dict")
    args = parser.parse_args(argv)
    with fail_cleanly():
        evaluate_run(Path(args.run_dir), args.num_samples, [m for m in args.metrics.split(",") if m], args.hook)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
