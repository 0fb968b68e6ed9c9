"""The attention ablation: the same configuration with non-local blocks off, and on in G, in D or in both.

    python -m experiments.ablation run --config configs/ablation_coherence.yaml --arms none,g16,d16,gd16 \
        --seeds 0,1,2 --jobs 2 --out runs/ablation_coherence
    python -m experiments.ablation report runs/ablation_coherence runs/ablation_fashion \
        --report docs/ablation.md --figures docs/ablation

`run` is experiments/experiment.py's runner over the attention arms: every (arm, seed) trained through the
real `train.py` and evaluated (the coherence score and its components on the built-in dataset, the Frechet
*classifier* distance FCD, not FID; a sample grid and the attention maps of G and D), cached per run
directory. `report` reads any number of OUT directories and writes one Markdown report with a mean +/- std
table, per-seed values, parameter counts, a plot and a verdict computed from the numbers (experiment.verdict).

Arms: `none`, `g<S>` (G only), `d<S>` (D only), `gd<S>` (both at S), or `g<S>d<T>`; S, T are feature-map
sides (32x32 models: G has 8, 16, 32; D has 16, 8; 64x64 models add 32 and 64). A `-zero` suffix (`gd32-zero`)
gives the arm's blocks the non-local paper's zero-initialised output conv instead of SAGAN's gamma gate, and
`-lr<M>` (`gd32-lr10`) trains the blocks' parameters at M x the networks' learning rate (optim.attn_lr_mult).
A `-uniform` suffix (`d32-uniform`) is the uniform-attention control: the same block, parameters and value path,
but every query averages all keys (cosine logits at temperature 1e-6, so the softmax is uniform to 1e-6): a
global-context path (the image mean of g(x) added at every position) in place of content-based attention.
A `-cosine` suffix (`d32-cosine`) gives the blocks cosine logits at the default temperature (t cos(theta_i,
phi_j), t = 8; issue 34's cosine design, docs/gan_designs.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments import experiment
from experiments.experiment import (
    SPREAD_FACTOR,
    ExperimentError,
    compare,
    mean_std,
    parse_seeds,
    verdict,
    verdict_sentence,
)
from experiments.gates import final_gates, gates_table, plot_gates
from gan.cli import fail_cleanly  # (light: no torch)
from gan.registry import higher_is_better

MANIFEST = "ablation.json"
EVAL_HOOK = "experiments.ablation:d_scores"  # the ablation's own evaluation of every run (see `d_scores`)
# The uniform-attention control: cosine logits t cos(theta_i, phi_j) lie in [-t, t], so at t = 1e-6 every
# attention weight is 1/N to within 1e-6 and each query averages g over all keys.
UNIFORM_OVERRIDES = ("model.attn_lab.pairwise=cosine", "model.attn_lab.temperature=1e-6")
COSINE_OVERRIDES = ("model.attn_lab.pairwise=cosine",)  # the cosine design at its default temperature
_ARM = re.compile(
    r"^(?:none|(?:gd(?P<both>\d+)|(?:g(?P<g>\d+))?(?:d(?P<d>\d+))?)(?P<zero>-zero)?(?P<logits>-uniform|-cosine)?"
    r"(?:-lr(?P<lr>\d+(?:\.\d+)?))?)$"
)
LOGITS = {"uniform": UNIFORM_OVERRIDES, "cosine": COSINE_OVERRIDES}  # an arm's suffix -> its blocks' logits


# ----------------------------------------------------------------------------------------------
# Arms and seeds


@dataclasses.dataclass(frozen=True)
class Arm:
    """One ablation arm: the feature-map sides with a non-local block in G and in D, and the blocks' gate."""

    name: str
    g: tuple[int, ...]
    d: tuple[int, ...]
    gate: str = "gamma"
    lr_mult: float = 1.0  # of the blocks' parameters
    logits: str = ""  # "" (the config's), "uniform" (the uniform-attention control) or "cosine" (LOGITS)

    def overrides(self) -> list[str]:
        gate = [f"model.attn_gate={self.gate}"] if self.gate != "gamma" else []  # gamma: the config's own value
        lr = [f"optim.attn_lr_mult={self.lr_mult:g}"] if self.lr_mult != 1.0 else []  # likewise
        return [
            f"model.g_attention=[{','.join(map(str, self.g))}]",
            f"model.d_attention=[{','.join(map(str, self.d))}]",
            *gate,
            *lr,
            *LOGITS.get(self.logits, ()),
        ]

    @property
    def has_attention(self) -> bool:
        return bool(self.g or self.d)


def parse_arm(name: str) -> Arm:
    """ "none" -> no blocks; "g16" -> G at 16; "d8" -> D at 8; "gd16" -> both at 16; "g16d8" -> G 16, D 8;
    "gd32-zero" -> both at 32 with the zero-initialised output gate; "gd32-lr10" -> both at 32, the blocks
    learning 10x faster; "d32-uniform" -> D at 32 with its attention held uniform (the global-context control);
    "d32-cosine" -> D at 32 with cosine logits."""
    match = _ARM.match(name.strip())
    lr = float(match["lr"]) if match and match["lr"] else 1.0
    if not match or not (match["both"] or match["g"] or match["d"] or name.strip() == "none") or lr <= 0:
        raise ExperimentError(
            f"arm '{name}' is not none, g<side>, d<side>, gd<side> or g<side>d<side>, optionally followed by "
            "-zero, -uniform or -cosine, and/or -lr<multiplier> (e.g. gd16, gd32-zero, d32-uniform, d32-cosine, gd32-lr10)"
        )
    gate = "zero_init" if match["zero"] else "gamma"
    logits = (match["logits"] or "").lstrip("-")
    if match["both"]:
        side = int(match["both"])
        return Arm(name.strip(), (side,), (side,), gate, lr, logits)
    g = (int(match["g"]),) if match["g"] else ()
    d = (int(match["d"]),) if match["d"] else ()
    return Arm(name.strip(), g, d, gate, lr, logits)


def parse_arms(text: str) -> list[Arm]:
    """A comma-separated list of arm names, each at most once; "none" (the control) is required."""
    arms = [parse_arm(word) for word in text.split(",")]
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise ExperimentError(f"--arms lists an arm twice: {text}")
    if "none" not in names:
        raise ExperimentError("--arms must include 'none', the control every attention arm is compared with")
    return arms


def run(
    config: str, arms: list[Arm], seeds: list[int], out: Path, jobs: int, extra: list[str], num_samples: int | None
) -> None:
    experiment.run_all(
        config, arms, seeds, out, jobs, extra, num_samples, MANIFEST, experiment.command_line("experiments.ablation"),
        hook=EVAL_HOOK,
    )  # fmt: skip


def d_scores(G: Any, D: Any, cfg: Any, num_samples: int) -> dict[str, Any]:  # noqa: ARG001 (the hook's signature)
    """The runner's hook for the ablation: on the built-in dataset, does the trained D notice a broken
    long-range tie (`d_auc` of its outputs on `num_samples` unseen coherent images against their incoherent
    versions, 0.5: it cannot), and where D's blocks look (`d_look_share`, per block)."""
    if cfg.data.dataset != "builtin":
        return {}
    from experiments.mismatch import d_look_share, mismatch_auc

    scores = mismatch_auc(D, cfg.model, num=num_samples, variant=cfg.data.builtin_variant)
    scores["d_look_share"] = d_look_share(D, cfg.model, variant=cfg.data.builtin_variant)
    return scores


# ----------------------------------------------------------------------------------------------
# Report

COHERENCE_UP = higher_is_better("coherence")  # the registry's direction (the components share it)
METRICS = {  # key -> (label, higher is better, datasets it is reported for)
    "coherence": ("coherence score", COHERENCE_UP, ("builtin",)),
    "valid": ("valid", COHERENCE_UP, ("builtin",)),
    "shape_iou": ("shape IoU", COHERENCE_UP, ("builtin",)),
    "colour_agreement": ("grey/colour agreement", COHERENCE_UP, ("builtin",)),
    "detail_agreement": ("detail agreement", COHERENCE_UP, ("builtin",)),  # data.builtin_variant=detail only
    "fcd": ("FCD (Frechet classifier distance)", higher_is_better("fid"), ("builtin", "fashion_mnist")),
    "d_auc": ("D's AUC, coherent vs incoherent", True, ("builtin",)),  # 0.5: D cannot see the mismatch
}
VERDICT_METRICS = ("coherence", "detail_agreement", "fcd", "d_auc")
KEEP_MARKER = "<!-- written by hand below this line; `ablation.py report` keeps it -->"
DATASET_TITLES = {"builtin": "Coherence benchmark (built-in dataset)", "fashion_mnist": "Fashion-MNIST"}


def _arm_order(name: str) -> tuple:
    """none first, then G only, D only, both; smaller sides first within each."""
    arm = parse_arm(name)
    kind = 0 if not arm.has_attention else 1 if not arm.d else 2 if not arm.g else 3
    return (kind, arm.g, arm.d, arm.gate != "gamma", arm.lr_mult)


def collect(out: Path) -> dict[str, Any]:
    """Every evaluated run under `out` ({arm: {seed: result}}, arms in `_arm_order`) with its final gates."""
    found = experiment.collect(out, MANIFEST, "none", "python -m experiments.ablation run")
    runs = {name: found["runs"][name] for name in sorted(found["runs"], key=_arm_order)}
    for by_seed in runs.values():
        for result in by_seed.values():
            result["gates"] = final_gates(Path(result["run_dir"]))
    calls = found["calls"]
    commands = [call.get("command", "") for call in reversed(calls)]
    wall = sum(call.get("wall_seconds_this_call", 0.0) for call in calls)
    return {
        "out": out,
        "manifest": found["manifest"],
        "runs": runs,
        "commands": commands,
        "seeds": found["seeds"],
        "wall": wall,
    }


def metric_keys(d: dict[str, Any], candidates: Sequence[str]) -> list[str]:
    """The candidates reported for this dataset that every run has (older runs lack later metrics such as d_auc)."""
    runs = [r for by_seed in d["runs"].values() for r in by_seed.values()]
    return [k for k in candidates if d["dataset"] in METRICS[k][2] and all(k in r for r in runs)]


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
            lines.append(
                "| "
                + " | ".join(
                    [
                        f"`{name}`",
                        str(seed),
                        *(fmt(r[k], k) for k in keys),
                        f"{r['train_seconds']:.0f}",
                        f"{r['eval_seconds']:.0f}",
                    ]
                )
                + " |"
            )
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
    from tools.report import pyplot  # (late: it imports torch)

    plt = pyplot()

    panels = [(d, k) for d in datasets for k in metric_keys(d, VERDICT_METRICS)]
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
    from tools.report import machine_line

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
    # The title names what was ablated, so two reports (say 32x32 and 64x64) never share one (docs/README.md).
    sides = sorted({_config_of(d)["model"]["resolution"] for d in datasets})
    names = dict.fromkeys(DATASET_TITLES[d["dataset"]].split(" (")[0] for d in datasets)
    title = f"Attention ablation at {' and '.join(f'{r}x{r}' for r in sides)}: {', '.join(names)}"
    text = [f"# {title}", "",
            "Generated by `experiments/ablation.py report`; every number, table and verdict below comes from the run",
            "directories listed, so re-running the commands rewrites this file.", "",
            f"Machine: {machine_line().replace(', 1 threads', ', 1 thread per run')}.", "",
            f"Compute: {total_train / 60:.1f} min of training and {total_eval / 60:.1f} min of evaluation, summed over runs; "
            f"{sum(d['wall'] for d in datasets) / 60:.1f} min of wall time for the `run` calls (runs went "
            f"{max(d['manifest']['jobs'] for d in datasets)} at a time).", "",
            "![mean +/- std over seeds (dots: single seeds)](" + f"{rel}/{plot_path.name})", ""]  # fmt: skip
    text += ["## Summary (generated from the numbers below)", ""]
    for d in datasets:
        for key in metric_keys(d, VERDICT_METRICS):
            label, higher, _ = METRICS[key]
            ctl = [r[key] for r in d["runs"]["none"].values()]
            found = {"helped": [], "hurt": [], "within the seed spread": [], "no verdict (one seed)": []}
            for name, by_seed in d["runs"].items():
                if name != "none":
                    c = compare(name, [r[key] for r in by_seed.values()], ctl, higher)
                    found[verdict(c)].append(f"`{name}` ({c.diff:+.3g})")
            parts = [f"{what}: {', '.join(arms)}" for what, arms in found.items() if arms]
            text.append(
                f"- {d['title']}, {label} (none: {fmt(mean_std(ctl)[0], key)}; "
                f"difference of means per arm): {'; '.join(parts)}."
            )
    text.append("")
    for d in datasets:
        m = d["manifest"]
        keys, vkeys = metric_keys(d, METRICS), metric_keys(d, VERDICT_METRICS)
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
                 *gates_table(d["runs"], d["subsample"]), ""]  # fmt: skip
        gates_png = figures / f"{d['tag']}_gates.png"
        if plot_gates(d["runs"], d["subsample"], gates_png):
            text += ["Over training (every arm in its colour, every seed its own line; from each run's metrics.jsonl):",
                     "", f"![gate and attention entropy over training]({rel}/{gates_png.name})", ""]  # fmt: skip
        text += [
                 "Samples of each arm's seed-0 EMA generator (same z and labels for every arm), then where its",
                 "non-local blocks attend (G: on generated images; D: on real images):", ""]  # fmt: skip
        tag = d["tag"]
        for name, by_seed in d["runs"].items():
            seed = min(by_seed)
            src = Path(by_seed[seed]["figures"])
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
    p_run.add_argument(
        "--arms", default="none,g16,d16,gd16", help="comma-separated arms: none, g16, d16, gd16, g16d8, ..."
    )
    p_run.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    p_run.add_argument("--jobs", type=int, default=2, help="runs at a time (each on one thread)")
    p_run.add_argument("--out", required=True, help="directory of the run directories")
    p_run.add_argument(
        "--num-samples", type=int, default=None, help="generated images per evaluation (default eval.num_samples)"
    )
    p_run.add_argument("overrides", nargs="*", help="config overrides for every arm, e.g. train.steps=600")
    p_rep = sub.add_parser("report", help="write the Markdown report from one or more --out directories")
    p_rep.add_argument("outs", nargs="+", help="the --out directories of earlier `run` calls")
    p_rep.add_argument("--report", default="docs/ablation.md", help="Markdown file to write")
    p_rep.add_argument("--figures", default="docs/ablation", help="directory for the plot and the per-arm figures")
    args = parser.parse_args(argv)
    with fail_cleanly():
        if args.command == "run":
            if args.jobs < 1:
                raise ExperimentError("--jobs must be at least 1")
            bad = [
                o for o in args.overrides if o.split("=")[0] in ("model.g_attention", "model.d_attention", "train.seed")
            ]
            if bad:
                raise ExperimentError(f"{bad[0]} is set per arm / seed by the ablation; use --arms / --seeds instead")
            run(
                args.config,
                parse_arms(args.arms),
                parse_seeds(args.seeds),
                Path(args.out),
                args.jobs,
                args.overrides,
                args.num_samples,
            )
        else:
            print(
                f"wrote {args.report}"
                if report([Path(o) for o in args.outs], Path(args.report), Path(args.figures))
                else ""
            )
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
