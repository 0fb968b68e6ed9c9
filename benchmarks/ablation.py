"""The attention ablation: the same configuration with non-local blocks off, and on in G, in D or in both.

    python benchmarks/ablation.py run --config configs/ablation_coherence.yaml --arms none,g16,d16,gd16 \
        --seeds 0,1,2 --jobs 2 --out runs/ablation_coherence
    python benchmarks/ablation.py report runs/ablation_coherence runs/ablation_fashion \
        --report docs/ablation.md --figures docs/ablation

`run` trains every (arm, seed) through the real `train.py` in its own subprocess (OMP_NUM_THREADS=1,
`--jobs` at a time) into `OUT/<arm>/seed<k>/`, then evaluates its final EMA generator in another subprocess
(`evaluate`): the coherence score and its components (built-in dataset only), the Frechet *classifier*
distance with the Fashion-MNIST classifier features (FCD; not FID), a seed-0-style sample grid and the
attention maps of G and D. Both steps are cached per run directory (`ablation_run.json`,
`ablation_eval.json`): a second call only fills in what is missing or what was asked differently.
`report` reads any number of OUT directories and writes one Markdown report with a mean +/- std table,
per-seed values, parameter counts, a plot and a verdict computed from the numbers (see `verdict`).

Arms: `none`, `g<S>` (G only), `d<S>` (D only), `gd<S>` (both at S), or `g<S>d<T>`; S, T are feature-map
sides (32x32 models: G has 8, 16, 32; D has 16, 8).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import fcntl
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gan.cli import fail_cleanly  # (light: no torch)
from gan.errors import UserError

ROOT = Path(__file__).resolve().parent.parent

SAMPLE_SEED = 2026  # z and labels of the evaluation samples, the same for every arm
GRID_IMAGES = 32  # images in each arm's sample grid
SPREAD_FACTOR = 2.0  # a difference "exceeds the seed spread" when |diff| > SPREAD_FACTOR * pooled std
_ARM = re.compile(r"^(?:none|gd(?P<both>\d+)|(?:g(?P<g>\d+))?(?:d(?P<d>\d+))?)$")


class AblationError(UserError, ValueError):
    """A user-caused problem with the ablation's arguments or run directories; one line that says what to do."""


# ----------------------------------------------------------------------------------------------
# Arms and seeds


@dataclasses.dataclass(frozen=True)
class Arm:
    """One ablation arm: the feature-map sides with a non-local block in G and in D."""

    name: str
    g: tuple[int, ...]
    d: tuple[int, ...]

    def overrides(self) -> list[str]:
        return [f"model.g_attention=[{','.join(map(str, self.g))}]", f"model.d_attention=[{','.join(map(str, self.d))}]"]

    @property
    def has_attention(self) -> bool:
        return bool(self.g or self.d)


def parse_arm(name: str) -> Arm:
    """"none" -> no blocks; "g16" -> G at 16; "d8" -> D at 8; "gd16" -> both at 16; "g16d8" -> G 16, D 8."""
    match = _ARM.match(name.strip())
    if not match or not name.strip():
        raise AblationError(f"arm '{name}' is not none, g<side>, d<side>, gd<side> or g<side>d<side> (e.g. gd16)")
    if match["both"]:
        side = int(match["both"])
        return Arm(name.strip(), (side,), (side,))
    g = (int(match["g"]),) if match["g"] else ()
    d = (int(match["d"]),) if match["d"] else ()
    return Arm(name.strip(), g, d)


def parse_arms(text: str) -> list[Arm]:
    """A comma-separated list of arm names, each at most once; "none" (the control) is required."""
    arms = [parse_arm(word) for word in text.split(",")]
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise AblationError(f"--arms lists an arm twice: {text}")
    if "none" not in names:
        raise AblationError("--arms must include 'none', the control every attention arm is compared with")
    return arms


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise AblationError(f"--seeds must be comma-separated integers, got '{text}'") from None
    if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise AblationError(f"--seeds must be distinct non-negative integers, got '{text}'")
    return seeds


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
    diff: float  # mean(arm) - mean(none)
    pooled_std: float  # sqrt((s_arm^2 + s_none^2) / 2)
    exceeds: bool  # |diff| > SPREAD_FACTOR * pooled_std (False with fewer than 2 seeds in either arm)
    better: bool  # diff points the metric's good way
    seeds: int  # the smaller number of seeds of the two arms
    welch_t: float  # diff / sqrt(s_arm^2 / n_arm + s_none^2 / n_none), shown for reference (nan without spread)


def compare(arm: str, values: Sequence[float], control: Sequence[float], higher_is_better: bool) -> Comparison:
    """The rule: attention changed the metric beyond the seed spread iff |diff of means| > 2 x pooled std.

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


def verdict_sentence(metric: str, c: Comparison, control_mean: float, higher_is_better: bool) -> str:
    """One plain sentence about an arm against `none`, generated from the numbers."""
    direction = "better" if c.better else ("worse" if c.diff != 0 else "no different")
    relative = f" ({100 * c.diff / abs(control_mean):+.0f}% of the no-attention mean)" if control_mean else ""
    goal = "higher" if higher_is_better else "lower"
    if c.seeds < 2:
        return f"`{c.arm}` vs `none` on {metric} ({goal} is better): {direction} by {c.diff:+.4g}{relative}; one seed has no spread to compare with, so no verdict."
    spread = (
        f"exceeds the seed spread (|diff| {abs(c.diff):.4g} > {SPREAD_FACTOR:g} x pooled std {c.pooled_std:.4g})"
        if c.exceeds
        else f"does not exceed the seed spread (|diff| {abs(c.diff):.4g} <= {SPREAD_FACTOR:g} x pooled std {c.pooled_std:.4g})"
    )
    helped = "helped" if c.better and c.exceeds else ("hurt" if c.exceeds else "made no measurable difference")
    return (f"`{c.arm}` vs `none` on {metric} ({goal} is better): {direction} by {c.diff:+.4g}{relative}; this {spread}, "
            f"so attention {helped} here (Welch t = {c.welch_t:+.2f}).")


# ----------------------------------------------------------------------------------------------
# Running (train, then evaluate; both cached per run directory)


def run_dir_of(out: Path, arm: Arm, seed: int) -> Path:
    return out / arm.name / f"seed{seed}"


def _train_record(config: str, arm: Arm, seed: int, extra: list[str]) -> dict[str, Any]:
    return {"config": str(config), "arm": arm.name, "seed": seed, "overrides": [*arm.overrides(), f"train.seed={seed}", *extra]}


def _child_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def train_one(config: str, arm: Arm, seed: int, run_dir: Path, extra: list[str]) -> float:
    """Train (arm, seed) through train.py unless run_dir already holds this exact finished run; seconds spent."""
    record = _train_record(config, arm, seed, extra)
    done = run_dir / "ablation_run.json"
    if done.is_file() and (run_dir / "generator" / "config.json").is_file():
        old = json.loads(done.read_text())
        if {k: old.get(k) for k in record} == record:
            return 0.0
    if run_dir.exists():  # unfinished or a different run: start it again from nothing
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(config), "--run-dir", str(run_dir), *record["overrides"]]
    start = time.perf_counter()
    with open(run_dir / "train.log", "w") as log:
        proc = subprocess.run(cmd, cwd=ROOT, env=_child_env(), stdout=log, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (run_dir / "train.log").read_text().strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"training {arm.name} seed {seed} failed ({proc.returncode}): {tail[0]}; see {run_dir / 'train.log'}")
    done.write_text(json.dumps({**record, "command": cmd, "train_seconds": seconds}, indent=1))
    return seconds


def evaluate_one(run_dir: Path, num_samples: int) -> float:
    """Evaluate run_dir in a subprocess unless ablation_eval.json already holds it for num_samples; seconds spent."""
    done = run_dir / "ablation_eval.json"
    if done.is_file() and json.loads(done.read_text()).get("num_samples") == num_samples:
        return 0.0
    cmd = [sys.executable, "-m", "benchmarks.ablation", "evaluate", str(run_dir), "--num-samples", str(num_samples)]
    start = time.perf_counter()
    with open(run_dir / "eval.log", "w") as log:
        proc = subprocess.run(cmd, cwd=ROOT, env=_child_env(), stdout=log, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = (run_dir / "eval.log").read_text().strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"evaluating {run_dir} failed ({proc.returncode}): {tail[0]}; see {run_dir / 'eval.log'}")
    return time.perf_counter() - start


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


def evaluate_run(run_dir: Path, num_samples: int) -> dict[str, Any]:
    """Scores, parameter counts and figures of a finished run (its final EMA G and its D); writes ablation_eval.json."""
    import torch

    from gan import viz
    from gan.attention import attention_blocks
    from gan.checkpoint import latest_checkpoint, load_checkpoint, load_generator, load_into
    from gan.data import build_dataset
    from gan.metrics import cache_root, compute_metrics, metric_key
    from gan.models import Discriminator
    from gan.synthetic import coherence_components

    torch.set_num_threads(1)
    start = time.perf_counter()
    G, cfg = load_generator(run_dir / "generator")
    where = latest_checkpoint(run_dir / "checkpoints")
    if where is None:
        raise AblationError(f"{run_dir} has no checkpoint; run `ablation.py run` again to retrain it")
    state, _, step = load_checkpoint(where)
    D = Discriminator(cfg.model)
    load_into(D, state["D"], "D", where)
    D.eval()
    result: dict[str, Any] = {"num_samples": num_samples, "step": step, "dataset": cfg.data.dataset,
                              "params": parameter_counts(cfg.model)}  # fmt: skip

    gen = torch.Generator().manual_seed(SAMPLE_SEED)
    with torch.no_grad():
        images = torch.cat([G.sample(min(250, num_samples - i), generator=gen) for i in range(0, num_samples, 250)])
    if cfg.data.dataset == "builtin":
        parts = coherence_components(images)
        score = parts["valid"] * parts["shape_iou"] * parts["colour_agreement"]
        result["coherence"] = score.mean().item()
        result.update({k: v.mean().item() for k, v in parts.items()})
    cfg.eval.feature_extractor = "fashion_classifier"
    t0 = time.perf_counter()
    with _file_lock(cache_root(cfg) / "ablation.lock"):
        scores = compute_metrics(G, cfg, num_samples=num_samples, metrics=["fid"], seed=SAMPLE_SEED)
    result["fcd"] = scores[metric_key("fid", "fashion_classifier")]
    result["fcd_seconds"] = time.perf_counter() - t0

    figures = run_dir / "ablation"
    viz.save_image_grid(images[:GRID_IMAGES], figures / "samples.png", nrow=8)
    z = torch.randn(4, G.z_dim, generator=torch.Generator().manual_seed(SAMPLE_SEED))
    y = torch.arange(4) % cfg.model.num_classes if cfg.model.num_classes else None
    if attention_blocks(G):
        viz.save_attention_figure(viz.generator_attention_figure(G, z, y), figures / "attention_G.png")
    if attention_blocks(D):
        data = build_dataset(cfg.data, cfg.model)
        real = torch.stack([data[i][0] for i in range(4)])
        labels = torch.tensor([data[i][1] for i in range(4)]) if cfg.model.num_classes else None
        viz.save_attention_figure(viz.discriminator_attention_figure(D, real, labels), figures / "attention_D.png")
    result["eval_seconds"] = time.perf_counter() - start
    (run_dir / "ablation_eval.json").write_text(json.dumps(result, indent=1))
    return result


def run(config: str, arms: list[Arm], seeds: list[int], out: Path, jobs: int, extra: list[str], num_samples: int | None) -> None:
    from gan.config import load_config  # checks the config and every arm's overrides before anything runs

    cfg = None
    for arm in arms:
        cfg = load_config(config, [*arm.overrides(), *extra])
    num_samples = num_samples or cfg.eval.num_samples
    from gan.data import build_dataset

    build_dataset(cfg.data, cfg.model)  # a missing or corrupt dataset fails here, once, before any run starts
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def one(pair: tuple[Arm, int]) -> tuple[str, int, float, float]:
        arm, seed = pair
        rd = run_dir_of(out, arm, seed)
        t = train_one(config, arm, seed, rd, extra)
        e = evaluate_one(rd, num_samples)
        print(f"{arm.name} seed {seed}: trained {t:.0f} s, evaluated {e:.0f} s", flush=True)
        return arm.name, seed, t, e

    # Seeds outermost: if the budget runs out, every arm has the same seeds done.
    pairs = [(arm, seed) for seed in seeds for arm in arms]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        done = list(pool.map(one, pairs))
    manifest = {
        "config": str(config), "arms": [a.name for a in arms], "seeds": seeds, "extra_overrides": extra,
        "num_samples": num_samples, "jobs": jobs, "wall_seconds_this_call": time.perf_counter() - started,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]) if sys.argv else "",
    }  # fmt: skip
    old = out / "ablation.json"
    if old.is_file():  # keep the first call's command and add this one's
        manifest["previous"] = json.loads(old.read_text())
    old.write_text(json.dumps(manifest, indent=1))
    print(f"{len(done)} runs in {out}; wall {manifest['wall_seconds_this_call']:.0f} s", flush=True)


# ----------------------------------------------------------------------------------------------
# Report

METRICS = {  # key -> (label, higher is better, datasets it is reported for)
    "coherence": ("coherence score", True, ("builtin",)),
    "valid": ("valid", True, ("builtin",)),
    "shape_iou": ("shape IoU", True, ("builtin",)),
    "colour_agreement": ("grey/colour agreement", True, ("builtin",)),
    "fcd": ("FCD (Frechet classifier distance)", False, ("builtin", "fashion_mnist")),
}
VERDICT_METRICS = ("coherence", "fcd")
KEEP_MARKER = "<!-- written by hand below this line; `ablation.py report` keeps it -->"
DATASET_TITLES = {"builtin": "Coherence benchmark (built-in dataset)", "fashion_mnist": "Fashion-MNIST"}


def _arm_order(name: str) -> tuple:
    """none first, then G only, D only, both; smaller sides first within each."""
    arm = parse_arm(name)
    kind = 0 if not arm.has_attention else 1 if not arm.d else 2 if not arm.g else 3
    return (kind, arm.g, arm.d)


def collect(out: Path) -> dict[str, Any]:
    """Every evaluated run under `out`: {arm: {seed: {eval..., train_seconds}}}, plus the manifest."""
    manifest_path = out / "ablation.json"
    if not manifest_path.is_file():
        raise AblationError(f"{out} holds no ablation.json; run `ablation.py run --out {out}` first")
    manifest = json.loads(manifest_path.read_text())
    calls = [manifest]  # the latest `run` call first, then the earlier ones it keeps under "previous"
    while "previous" in calls[-1]:
        calls.append(calls[-1]["previous"])
    arms = sorted(dict.fromkeys(name for call in reversed(calls) for name in call["arms"]), key=_arm_order)
    seeds = sorted({seed for call in calls for seed in call["seeds"]})
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for name in arms:
        for seed in seeds:
            rd = run_dir_of(out, parse_arm(name), seed)
            if (rd / "ablation_eval.json").is_file() and (rd / "ablation_run.json").is_file():
                ev = json.loads((rd / "ablation_eval.json").read_text())
                ev["train_seconds"] = json.loads((rd / "ablation_run.json").read_text()).get("train_seconds", 0.0)
                ev["run_dir"] = str(rd)
                ev["gates"] = final_gates(rd)
                runs.setdefault(name, {})[seed] = ev
    if "none" not in runs:
        raise AblationError(f"{out} has no evaluated 'none' run; finish `ablation.py run` first")
    commands = [call.get("command", "") for call in reversed(calls)]
    wall = sum(call.get("wall_seconds_this_call", 0.0) for call in calls)
    return {"out": out, "manifest": manifest, "runs": runs, "commands": commands, "seeds": seeds, "wall": wall}


def final_gates(run_dir: Path) -> dict[str, float]:
    """The last logged gamma and attention entropy of every block (train.py's metrics.jsonl); {} if none logged."""
    path = run_dir / "metrics.jsonl"
    last: dict[str, float] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            record = json.loads(line) if line.strip() else {}
            found = {k: v for k, v in record.items() if k.startswith(("gamma/", "attn_entropy/"))}
            last = found or last
    return last


def uniform_entropy(side: int, subsample: bool) -> float:
    """log(number of keys): the entropy of uniform attention over a side x side map (keys 2x2-pooled, ceil)."""
    keys_side = -(-side // 2) if subsample else side
    return math.log(keys_side * keys_side)


def gates_table(runs: dict[str, dict[int, dict[str, Any]]], subsample: bool) -> list[str]:
    """Markdown: per attention block, the final gamma (mean +/- std and every seed) and the final mean row
    entropy of its attention as a fraction of uniform attention's (1.0 = attends everywhere equally)."""
    lines = ["| arm | block | final gamma (mean +/- std) | per seed | entropy / uniform (mean) |", "|---|---|---|---|---|"]
    for name, by_seed in runs.items():
        blocks = sorted({k.split("/", 1)[1] for r in by_seed.values() for k in r["gates"] if k.startswith("gamma/")})
        for block in blocks:
            gammas = [r["gates"][f"gamma/{block}"] for r in by_seed.values() if f"gamma/{block}" in r["gates"]]
            entropies = [r["gates"][f"attn_entropy/{block}"] for r in by_seed.values() if f"attn_entropy/{block}" in r["gates"]]
            side = int(re.search(r"attn(\d+)$", block)[1])
            m, sd = mean_std(gammas)
            rel = mean_std(entropies)[0] / uniform_entropy(side, subsample) if entropies else float("nan")
            lines.append(f"| `{name}` | {block} | {m:+.4f} +/- {sd:.4f} | {', '.join(f'{g:+.4f}' for g in gammas)} | {rel:.3f} |")
    return lines


def fmt(value: float, key: str) -> str:
    return f"{value:.2f}" if key == "fcd" else f"{value:.4f}"


def results_table(runs: dict[str, dict[int, dict[str, Any]]], keys: Sequence[str]) -> list[str]:
    """Markdown: one row per arm, mean +/- std (sample std over seeds) of each metric, then the seeds."""
    header = ["arm", "G attn", "D attn", "seeds", "G params", "D params", *(METRICS[k][0] for k in keys)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, by_seed in runs.items():
        arm = parse_arm(name)
        first = next(iter(by_seed.values()))["params"]
        cells = [f"`{name}`", ",".join(map(str, arm.g)) or "-", ",".join(map(str, arm.d)) or "-", str(len(by_seed)),
                 f"{first['G']:,}", f"{first['D']:,}"]  # fmt: skip
        for k in keys:
            m, s = mean_std([r[k] for r in by_seed.values()])
            cells.append(f"{fmt(m, k)} +/- {fmt(s, k)}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def per_seed_table(runs: dict[str, dict[int, dict[str, Any]]], keys: Sequence[str]) -> list[str]:
    header = ["arm", "seed", *(METRICS[k][0] for k in keys), "train s", "eval s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, by_seed in runs.items():
        for seed, r in sorted(by_seed.items()):
            lines.append("| " + " | ".join([f"`{name}`", str(seed), *(fmt(r[k], k) for k in keys), f"{r['train_seconds']:.0f}", f"{r['eval_seconds']:.0f}"]) + " |")
    return lines


def verdicts(runs: dict[str, dict[int, dict[str, Any]]], keys: Sequence[str]) -> list[str]:
    control = runs["none"]
    lines = []
    for key in keys:
        label, higher, _ = METRICS[key]
        ctl = [r[key] for r in control.values()]
        for name, by_seed in runs.items():
            if name == "none":
                continue
            c = compare(name, [r[key] for r in by_seed.values()], ctl, higher)
            lines.append("- " + verdict_sentence(label, c, mean_std(ctl)[0], higher))
    return lines


def plot(datasets: list[dict[str, Any]], path: Path) -> None:
    """One panel per (dataset, verdict metric): every seed as a dot, mean with +/- std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(d, k) for d in datasets for k in VERDICT_METRICS if d["dataset"] in METRICS[k][2]]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), squeeze=False)
    for ax, (d, key) in zip(axes[0], panels):
        names = list(d["runs"])
        for i, name in enumerate(names):
            values = [r[key] for r in d["runs"][name].values()]
            m, s = mean_std(values)
            ax.errorbar([i], [m], yerr=[s], fmt="o", color="C0" if name == "none" else "C1", capsize=4, markersize=7)
            ax.plot([i + 0.15] * len(values), values, ".", color="grey")
        ax.set_xticks(range(len(names)), names)
        label, higher, _ = METRICS[key]
        ax.set_title(f"{d['title'].replace(' (built-in dataset)', '')}: {label.split(' (')[0]}", fontsize=9)
        ax.set_ylabel(f"{label.split(' (')[0]} ({'higher' if higher else 'lower'} is better)", fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _config_of(d: dict[str, Any]) -> dict[str, Any]:
    """The resolved config.yaml of the `none` arm's first run (what every arm shares)."""
    import yaml

    rd = Path(next(iter(d["runs"]["none"].values()))["run_dir"])
    return yaml.safe_load((rd / "config.yaml").read_text())


def report(outs: list[Path], report_path: Path, figures: Path) -> str:
    """Write the Markdown report (and copy each arm's seed-0 figures into `figures`); returns its text."""
    from benchmarks.common import machine_line

    datasets = []
    for out in outs:
        d = collect(out)
        d["dataset"] = next(iter(d["runs"]["none"].values()))["dataset"]
        d["subsample"] = _config_of(d)["model"]["attn_subsample"]
        datasets.append(d)
    for d in datasets:  # a dataset ablated twice (say, short and long runs) gets its steps in title and file names
        steps = max(r["step"] for s in d["runs"].values() for r in s.values())
        twice = sum(e["dataset"] == d["dataset"] for e in datasets) > 1
        d["title"] = DATASET_TITLES[d["dataset"]] + (f", {steps} steps" if twice else "")
        d["tag"] = ("coherence" if d["dataset"] == "builtin" else d["dataset"]) + (f"_{steps}steps" if twice else "")
    figures.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(figures, report_path.parent)
    plot_path = figures / "ablation_plot.png"
    plot(datasets, plot_path)

    total_train = sum(r["train_seconds"] for d in datasets for s in d["runs"].values() for r in s.values())
    total_eval = sum(r["eval_seconds"] for d in datasets for s in d["runs"].values() for r in s.values())
    text = ["# Attention ablation: measured", "",
            "Generated by `benchmarks/ablation.py report`; every number, table and verdict below comes from the run",
            "directories listed, so re-running the commands rewrites this file.", "",
            f"Machine: {machine_line().replace(', 1 threads', ', 1 thread per run')}.", "",
            f"Compute: {total_train / 60:.1f} min of training and {total_eval / 60:.1f} min of evaluation, summed over runs; "
            f"{sum(d['wall'] for d in datasets) / 60:.1f} min of wall time for the `run` calls (runs went "
            f"{max(d['manifest']['jobs'] for d in datasets)} at a time).", "",
            "![mean +/- std over seeds (dots: single seeds)](" + f"{rel}/{plot_path.name})", ""]  # fmt: skip
    text += ["## Summary (generated from the numbers below)", ""]
    for d in datasets:
        for key in (k for k in VERDICT_METRICS if d["dataset"] in METRICS[k][2]):
            label, higher, _ = METRICS[key]
            ctl = [r[key] for r in d["runs"]["none"].values()]
            found = {"helped": [], "hurt": [], "within the seed spread": [], "no verdict (one seed)": []}
            for name, by_seed in d["runs"].items():
                if name != "none":
                    c = compare(name, [r[key] for r in by_seed.values()], ctl, higher)
                    verdict = ("helped" if c.better else "hurt") if c.exceeds else "within the seed spread"
                    verdict = verdict if c.seeds >= 2 else "no verdict (one seed)"
                    found[verdict].append(f"`{name}` ({c.diff:+.3g})")
            parts = [f"{what}: {', '.join(arms)}" for what, arms in found.items() if arms]
            text.append(f"- {d['title']}, {label} (none: {fmt(mean_std(ctl)[0], key)}; "
                        f"difference of means per arm): {'; '.join(parts)}.")
    text.append("")
    for d in datasets:
        m = d["manifest"]
        keys = [k for k in METRICS if d["dataset"] in METRICS[k][2]]
        vkeys = [k for k in VERDICT_METRICS if d["dataset"] in METRICS[k][2]]
        steps = sorted({r["step"] for s in d["runs"].values() for r in s.values()})
        text += [f"## {d['title']}", "",
                 f"Config `{m['config']}`, {', '.join(map(str, steps))} generator steps per run (equal for every arm), "
                 f"seeds {', '.join(map(str, d['seeds']))}, {m['num_samples']} generated images per evaluation "
                 f"(final EMA generator). Run directories: `{d['out']}`. Commands (later calls reuse the cached runs):", "",
                 "```bash", *d["commands"], "```", "",
                 "Mean +/- sample std over seeds:", "", *results_table(d["runs"], keys), "",
                 "**Verdict** (rule: a difference exceeds the seed spread when |mean(arm) - mean(none)| > "
                 f"{SPREAD_FACTOR:g} x pooled std, pooled std = sqrt((s_arm^2 + s_none^2) / 2)):", "",
                 *verdicts(d["runs"], vkeys), "",
                 "<details><summary>Per-seed values</summary>", "", *per_seed_table(d["runs"], keys), "", "</details>", "",
                 "How far the attention blocks opened by the end (gamma starts at 0, so a block only changes the",
                 "network once its gamma moves; entropy 1.000 of uniform means every query attends to every key",
                 "equally; G's blocks measured on fixed latents, D's on real images, by train.py's last log):", "",
                 *gates_table(d["runs"], d["subsample"]), "",
                 "Samples of each arm's seed-0 EMA generator (same z and labels for every arm), then where its",
                 "non-local blocks attend (G: on generated images; D: on real images):", ""]  # fmt: skip
        tag = d["tag"]
        for name, by_seed in d["runs"].items():
            seed = min(by_seed)
            src = Path(by_seed[seed]["run_dir"]) / "ablation"
            shown = []
            for kind in ("samples", "attention_G", "attention_D"):
                if (src / f"{kind}.png").is_file():
                    dst = figures / f"{tag}_{name}_{kind}.png"
                    shutil.copyfile(src / f"{kind}.png", dst)
                    shown.append(f"![{name} {kind}]({rel}/{dst.name})")
            text += [f"`{name}` (seed {seed}):", "", *shown, ""]
    report_path.parent.mkdir(parents=True, exist_ok=True)
    body = "\n".join(text).rstrip() + "\n"
    if report_path.is_file() and KEEP_MARKER in report_path.read_text():  # hand-written context is kept
        body += "\n" + KEEP_MARKER + report_path.read_text().split(KEEP_MARKER, 1)[1]
    report_path.write_text(body.rstrip() + "\n")
    return body


# ----------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="train and evaluate every (arm, seed) not already done")
    p_run.add_argument("--config", required=True, help="YAML config shared by every arm")
    p_run.add_argument("--arms", default="none,g16,d16,gd16", help="comma-separated arms: none, g16, d16, gd16, g16d8, ...")
    p_run.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    p_run.add_argument("--jobs", type=int, default=2, help="runs at a time (each on one thread)")
    p_run.add_argument("--out", required=True, help="directory of the run directories")
    p_run.add_argument("--num-samples", type=int, default=None, help="generated images per evaluation (default eval.num_samples)")
    p_run.add_argument("overrides", nargs="*", help="config overrides for every arm, e.g. train.steps=600")
    p_eval = sub.add_parser("evaluate", help="(used by run) evaluate one finished run directory")
    p_eval.add_argument("run_dir")
    p_eval.add_argument("--num-samples", type=int, required=True)
    p_rep = sub.add_parser("report", help="write the Markdown report from one or more --out directories")
    p_rep.add_argument("outs", nargs="+", help="the --out directories of earlier `run` calls")
    p_rep.add_argument("--report", default="docs/ablation.md", help="Markdown file to write")
    p_rep.add_argument("--figures", default="docs/ablation", help="directory for the plot and the per-arm figures")
    args = parser.parse_args(argv)
    with fail_cleanly():
        if args.command == "run":
            if args.jobs < 1:
                raise AblationError("--jobs must be at least 1")
            bad = [o for o in args.overrides if o.split("=")[0] in ("model.g_attention", "model.d_attention", "train.seed")]
            if bad:
                raise AblationError(f"{bad[0]} is set per arm / seed by the ablation; use --arms / --seeds instead")
            run(args.config, parse_arms(args.arms), parse_seeds(args.seeds), Path(args.out), args.jobs, args.overrides, args.num_samples)
        elif args.command == "evaluate":
            evaluate_run(Path(args.run_dir), args.num_samples)
        else:
            print(f"wrote {args.report}" if report([Path(o) for o in args.outs], Path(args.report), Path(args.figures)) else "")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
