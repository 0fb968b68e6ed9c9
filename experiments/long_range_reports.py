"""The long-range probe's reports: the tables and plots of docs/long_range/log.md (`report`) and the cells of
docs/attention_opens.md (`cells_report`), each arm held against its control by the repository's rule."""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from experiments import long_range_plots
from experiments.experiment import compare, verdict
from experiments.gates import GATE_LABELS
from experiments.long_range_data import TEST_SEED, pairs
from experiments.long_range_model import ARMS, DESIGN_ARMS, probe_rf
from experiments.long_range_training import CELL_DEFAULTS, cell_tag
from experiments.probe_apart import learn_threshold, learns_count
from gan.grids import save_image_grid


def mean_std_text(xs: list[float]) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.3f} (1 seed)"
    return f"{statistics.mean(xs):.3f} +/- {statistics.stdev(xs):.3f}"


def object_gap(resolution: int) -> int:
    """About the smallest distance between the two objects' facing edges: 16 px at 64x64, scaling with R."""
    return resolution // 4


def mass_beyond(result: dict, distance: float) -> float | None:
    """The fraction of a run's recorded ERF gradient mass farther than `distance` px (None without an ERF)."""
    if result["erf_profile"] is None:
        return None
    return sum(m for d, m in result["erf_profile"] if d > distance)


def report(args: argparse.Namespace) -> None:
    gap = object_gap(args.resolution)
    results = [json.loads(p.read_text()) for p in sorted(Path(args.out).glob(f"{cell_tag(args)}/*/depth*/seed*.json"))]
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in results:
        groups.setdefault((r["arm"], r["depth"]), []).append(r)
    print(
        f"| arm | depth | params | theoretical RF (px) | ERF r90 (px) | ERF mass beyond {gap} px | test accuracy (mean +/- std) | seeds: accuracy | CPU s per run |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for (arm, depth), rs in sorted(groups.items(), key=lambda kv: (list(ARMS).index(kv[0][0]), kv[0][1])):
        rs.sort(key=lambda r: r["seed"])
        erf = [r["erf_r90"] for r in rs if r["erf_r90"] is not None]
        beyond = [b for b in (mass_beyond(r, gap) for r in rs) if b is not None]
        print(
            f"| `{arm}` | {depth} | {rs[0]['params']:,} | {rs[0]['theoretical_rf']} | "
            f"{mean_std_text(erf) if erf else '-'} | {mean_std_text(beyond) if beyond else '-'} | "
            f"{mean_std_text([r['test_acc'] for r in rs])} | {', '.join('{:.3f}'.format(r['test_acc']) for r in rs)} | "
            f"{statistics.mean(r['cpu_s'] for r in rs):.0f} |"
        )
    print("\nThe attention block at the end of training (last logged step; mean over seeds):\n")
    keys = ("gamma", "entropy_ratio", "logit_std", "grad_theta", "grad_phi", "grad_g", "grad_out")
    print("| arm | depth | " + " | ".join(keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for (arm, depth), rs in sorted(groups.items(), key=lambda kv: (list(ARMS).index(kv[0][0]), kv[0][1])):
        if ARMS[arm]["attention"] is None:
            continue
        last = [r["log"][-1] for r in rs]
        print(f"| `{arm}` | {depth} | " + " | ".join(f"{statistics.mean(e[k] for e in last):.3g}" for k in keys) + " |")
    print("\nPer run of the attention arms (the block at the last logged step):\n")
    print(
        f"| arm | depth | seed | test accuracy | gate | entropy / log N | grad theta / grad g | ERF mass beyond {gap} px | CPU s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for (arm, depth), rs in sorted(groups.items(), key=lambda kv: (list(ARMS).index(kv[0][0]), kv[0][1])):
        for r in rs if ARMS[arm]["attention"] is not None else []:
            e = r["log"][-1]
            gate = gate_label(e)
            print(
                f"| `{arm}` | {depth} | {r['seed']} | {r['test_acc']:.3f} | {gate} | {e['entropy_ratio']:.4f} | "
                f"{e['grad_theta'] / max(e['grad_g'], 1e-12):.3g} | {mass_beyond(r, gap):.4f} | {r['cpu_s']:.0f} |"
            )
    print_verdicts(groups)
    if results:
        print(f"\nSettings: {results[0]['settings']}; machine: {results[0]['machine']}")
    plot = Path(args.plot)
    long_range_plots.accuracy_vs_depth(groups, plot, probe_rf)
    long_range_plots.erf_profiles(groups, plot.with_name("erf_profile.png"), probe_rf)
    has_block = {arm for arm, spec in ARMS.items() if spec["attention"] is not None}
    long_range_plots.block_opening(groups, plot.with_name("block_opening.png"), has_block)
    x, _ = pairs(args.resolution, TEST_SEED, 6, data=args.data, variant=args.variant)
    save_image_grid(x, Path(args.plot).with_name(f"pairs_{args.resolution}.png"), nrow=6)  # top: coherent


OPENED_MASS = 0.01  # a block counts as open when > 1% of the ERF's gradient mass lies beyond the object gap
DEAD = 0.01  # a trunk counts as dead when at most 1% of its outputs pass the final ReLU (no gradient anywhere)


def cells_report(args: argparse.Namespace) -> None:
    """The tables of docs/attention_opens.md: every (cell, arm) under --out at depth --depths[0], the
    attention runs one by one, and each attention arm against the conv arm of its cell, else of `conv_cell`:
    the same data and every other setting a conv arm has (an attention cell with no such conv run gets no
    verdict, never another data's control)."""
    gap = object_gap(args.resolution)
    groups: dict[tuple[str, str], list[dict]] = {}
    for path in sorted(Path(args.out).glob(f"r{args.resolution}*/*/depth{args.depths[0]}/seed*.json")):
        r = json.loads(path.read_text())
        groups.setdefault((path.parts[-4], r["arm"]), []).append(r)
    order = sorted(groups, key=lambda k: (len(k[0]), k[0], list(ARMS).index(k[1])))
    print(
        "| cell | arm | seeds | test accuracy (mean +/- std) | seeds: accuracy | opened | dead trunk | CPU s / step |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for cell, arm in order:
        rs = sorted(groups[(cell, arm)], key=lambda r: r["seed"])
        accs = [r["test_acc"] for r in rs]
        has_block = ARMS[arm]["attention"] is not None
        opened = f"{sum(_opened(r, gap) for r in rs)} of {len(rs)}" if has_block else "-"
        dead = f"{sum(_dead(r) for r in rs)} of {len(rs)}" if has_block else "-"
        per_step = statistics.mean(r["cpu_s"] / r["settings"]["steps"] for r in rs)
        print(
            f"| `{cell}` | `{arm}` | {len(rs)} | {mean_std_text(accs)} | {', '.join(f'{a:.3f}' for a in accs)} | "
            f"{opened} | {dead} | {per_step:.3f} |"
        )
    print(
        f"\nPer attention run, at the last logged step (opened: ERF mass beyond {gap} px > {OPENED_MASS} in a live "
        f"trunk; dead: at most {DEAD} of the trunk's outputs above 0 on 64 test images):\n"
    )
    print(
        f"| cell | arm | seed | test accuracy | gate | residual | entropy / log N | grad theta / grad g | "
        f"left object's queries on the right object (uniform) | ERF mass beyond {gap} px | trunk alive |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for cell, arm in order:
        for r in sorted(groups[(cell, arm)], key=lambda r: r["seed"]) if ARMS[arm]["attention"] is not None else []:
            e = r["log"][-1]
            look = f"{r['look_share']:.3f} ({r['look_uniform']:.3f})" if r.get("look_share") is not None else "-"
            residual = f"{e['residual']:.3f}" if "residual" in e else "-"  # runs before it was logged: none
            alive_ = f"{r['alive']:.3f}" if r.get("alive") is not None else "-"
            print(
                f"| `{cell}` | `{arm}` | {r['seed']} | {r['test_acc']:.3f} | {gate_label(e)} | "
                f"{residual} | {e['entropy_ratio']:.4f} | "
                f"{e['grad_theta'] / max(e['grad_g'], 1e-12):.3g} | {look} | {mass_beyond(r, gap):.4f} | {alive_} |"
            )
    print("\nTest accuracy against the conv arm (rule: the difference counts when |diff| > 2 x pooled std):\n")
    print("| cell | arm | control | diff of means | pooled std | Welch t | verdict |")
    print("|---|---|---|---|---|---|---|")
    for cell, arm in order:
        if ARMS[arm]["attention"] is None:
            continue
        control = next(
            ((c, "conv") for c in (cell, conv_cell(groups[(cell, arm)][0]["settings"])) if (c, "conv") in groups), None
        )
        if control is None:  # no conv arm was run on this cell's data and settings: no verdict, said so
            print(
                f"| `{cell}` | `{arm}` | none: no `conv` run at `{conv_cell(groups[(cell, arm)][0]['settings'])}` | - | - | - | no control |"
            )
            continue
        c = compare(arm, [r["test_acc"] for r in groups[(cell, arm)]], [r["test_acc"] for r in groups[control]], True)
        print(
            f"| `{cell}` | `{arm}` | `{control[0]}` `conv` | {c.diff:+.3f} | {c.pooled_std:.3f} | "
            f"{'-' if math.isnan(c.welch_t) else f'{c.welch_t:+.2f}'} | {verdict(c)} |"
        )
    runs = [r for rs in groups.values() for r in rs]
    if runs:
        print(
            f"\n{len(runs)} runs, {sum(r['cpu_s'] for r in runs):.0f} CPU s of training in all; "
            f"settings of the first: {runs[0]['settings']}; machine: {runs[0]['machine']}"
        )


def conv_cell(settings: dict) -> str:
    """The folder of the conv arm a run with these `settings` is held against: the same data, variant, width,
    batch, read-out, image stream and resolution; a conv arm has no block, so the block's stage and stream are
    at their defaults (runs from before a setting existed lack it: its default)."""
    return cell_tag(argparse.Namespace(**{**CELL_DEFAULTS, **settings, "stage": 0, "block_init": "own"}))


def _opened(result: dict, gap: int) -> bool:
    """Whether the block opened: the conv path of the depth-1 probe has no gradient mass beyond the object gap,
    so mass there came through the block; in a dead trunk that mass reaches nothing, so it does not count."""
    return mass_beyond(result, gap) > OPENED_MASS and not _dead(result)


def _dead(result: dict) -> bool:
    """Whether the trunk died: (almost) nothing passes the final ReLU, so the read-out is constant."""
    return result.get("alive") is not None and result["alive"] <= DEAD


def gate_label(entry: dict) -> str:
    """A logged block state's gate for the reports, by its kind (gan.attention.gate_of); states logged before the
    kind was: gamma where it is not NaN, else the channel gate where its value is not the norm of `out`'s weight."""
    kind = entry.get("gate_kind")
    if kind is not None:
        value = entry["gate_value"]
        return f"gamma {value:+.4f}" if kind == "gamma" else f"{GATE_LABELS[kind]} {value:.3f}"
    if entry["gamma"] == entry["gamma"]:
        return f"gamma {entry['gamma']:+.4f}"
    if "gate_value" in entry and abs(entry["gate_value"] - entry["out_weight_norm"]) > 1e-9:
        return f"rms tanh(a) {entry['gate_value']:.3f}"  # gate "channel"
    return f"norm(out) {entry['out_weight_norm']:.3f}"


def print_verdicts(groups: dict[tuple[str, int], list[dict]], arms: dict[str, dict] = ARMS) -> None:
    """Test accuracy against a control, by the repository's rule (|diff| > 2 x pooled std): each conv depth
    against the shallowest, each attention arm against `conv` and each lever against its reference at the
    same depth."""
    base = min((d for a, d in groups if a == "conv"), default=0)
    pairs_ = [(("conv", d), ("conv", base)) for a, d in sorted(groups) if a == "conv" and d > base]
    for arm, depth in sorted(groups, key=lambda k: (list(arms).index(k[0]), k[1])):
        if arms[arm]["attention"] is not None:
            controls = ("conv", arms[arm].get("reference", "attn"))
            pairs_ += [((arm, depth), (control, depth)) for control in controls if control != arm]
    print("\nTest accuracy against a control (rule: the difference counts when |diff| > 2 x pooled std):\n")
    print("| arm | control | diff of means | pooled std | Welch t | verdict |")
    print("|---|---|---|---|---|---|")
    for (arm, depth), control in pairs_:
        if control not in groups:
            continue
        c = compare(arm, [r["test_acc"] for r in groups[(arm, depth)]], [r["test_acc"] for r in groups[control]], True)
        print(
            f"| `{arm}` depth {depth} | `{control[0]}` depth {control[1]} | {c.diff:+.3f} | {c.pooled_std:.3f} | "
            f"{'-' if math.isnan(c.welch_t) else f'{c.welch_t:+.2f}'} | {verdict(c)} |"
        )


# Issue 34's three configurations of docs/attention_opens.md (its part 3): name -> (cell folder, arm suffix). Each
# design runs as DESIGN_ARMS[design] + suffix, against the conv arm of the cell; attn_heads4 has 4 query/key
# channels already (one per head), so the 4-channel configuration's heads4 runs ARE the 1-channel one's.
DESIGN_CONFIGURATIONS = {"r64": ("r64", ""), "r64-qk4": ("r64", "_qk4"), "r64-black": ("r64-black", "")}


def design_arm(design: str, suffix: str) -> str:
    """The long-range arm of an issue-34 design in a configuration whose arms end in `suffix`."""
    arm = DESIGN_ARMS[design] + suffix
    return arm if arm in ARMS else DESIGN_ARMS[design]


def designs_report(args: argparse.Namespace) -> None:
    """Issue 34's comparison in the three configurations (the rule of docs/probes_apart.md, section 3): per
    design and configuration, the seeds' accuracies and how many learn (above the cell's conv mean + 2 x
    max(conv seed std, binomial SE)), the counts over configurations, and per run where the left object's queries
    look, with and without the position term."""
    runs: dict[tuple[str, str], dict[int, dict]] = {}
    for path in sorted(Path(args.out).glob(f"*/*/depth{args.depths[0]}/seed*.json")):
        r = json.loads(path.read_text())
        if r["seed"] in args.seeds:
            runs.setdefault((path.parts[-4], r["arm"]), {})[r["seed"]] = r
    print("| configuration | design | arm | seeds | test accuracy per seed | learns (rule) |")
    print("|---|---|---|---|---|---|")
    counts: dict[str, list[int]] = {d: [0, 0] for d in DESIGN_ARMS}
    rows = []
    for name, (cell, suffix) in DESIGN_CONFIGURATIONS.items():
        conv = [r["test_acc"] for r in runs.get((cell, "conv"), {}).values()]
        threshold = learn_threshold(conv, 2 * args.test_pairs) if conv else math.nan
        print(
            f"| `{name}` | conv | `conv` | {len(conv)} | {', '.join(f'{a:.3f}' for a in conv)} | threshold {threshold:.3f} |"
        )
        for design in DESIGN_ARMS:
            arm = design_arm(design, suffix)
            rs = [r for _, r in sorted(runs.get((cell, arm), {}).items())]
            k, n = learns_count([r["test_acc"] for r in rs], threshold)
            counts[design][0] += k
            counts[design][1] += n
            accs = ", ".join(f"{r['test_acc']:.3f}" for r in rs) or "-"
            print(f"| `{name}` | {design} | `{arm}` | {len(rs)} | {accs} | {k} of {n} |")
            rows += [(name, design, r, r["test_acc"] > threshold) for r in rs]
    print("\nEach design over the configurations (reliable only if every run of every configuration learns):\n")
    for design, (k, n) in counts.items():
        print(f"- {design}: {k} of {n} runs learn" + (" (every run here)" if n and k == n else ""))
    print(
        "\n| configuration | design | seed | test accuracy | learns | gate | left object's queries on the right "
        "object (uniform) | without the position term: share; accuracy |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, design, r, learnt in rows:
        look = f"{r['look_share']:.3f} ({r['look_uniform']:.3f})" if r.get("look_share") is not None else "-"
        no_pos = (
            f"{r['look_share_no_position']:.3f}; {r['test_acc_no_position']:.3f}"
            if "look_share_no_position" in r
            else "-"
        )
        print(
            f"| `{name}` | {design} | {r['seed']} | {r['test_acc']:.3f} | {'yes' if learnt else 'no'} | "
            f"{gate_label(r['log'][-1])} | {look} | {no_pos} |"
        )


def print_learns(groups: dict[tuple[str, int], list[dict]], arms: dict[str, dict] = ARMS) -> None:
    """How many runs of each arm learn by the rule of docs/probes_apart.md (above the control's mean + 2 x max(its
    seed std, the binomial SE at chance of one run's test set)): each attention arm against the conv arm at its
    depth, each deeper conv arm (the full-field control) against the shallowest."""
    base = min((d for a, d in groups if a == "conv"), default=None)
    print("\nRuns that learn (rule: above the control's mean + 2 x max(its seed std, binomial SE at chance)):\n")
    print("| arm | control | threshold | learns |")
    print("|---|---|---|---|")
    for arm, depth in sorted(groups, key=lambda k: (list(arms).index(k[0]), k[1])):
        control = ("conv", base if arm == "conv" else depth)
        if (arm, depth) == control or control not in groups:
            continue
        settings = groups[control][0]["settings"]
        threshold = learn_threshold([r["test_acc"] for r in groups[control]], 2 * settings["test_pairs"])
        k, n = learns_count([r["test_acc"] for r in groups[(arm, depth)]], threshold)
        print(f"| `{arm}` depth {depth} | `conv` depth {control[1]} | {threshold:.3f} | {k} of {n} |")
