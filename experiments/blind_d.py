"""The blind-D cell of issue 33 (docs/blind_d.md): does one block in the ladder's blind 16-px D lift G's
coherence over 8 paired seeds at 1,000 and 2,000 steps, and is it attention or a global-context path?

    python -m experiments.blind_d summarise --runs OUT/blind16_2k --summaries docs/blind_d/runs \
        [--cpu-seconds FILE] [--partial] [--cell blind16_2k|full_2k|fieldw2_2k|cosine_1k]
    python -m experiments.blind_d report --summaries docs/blind_d/runs --report docs/blind_d.md --figures docs/blind_d

`summarise`: every finished run of the grid (`experiments.ablation run --arms none,d32,d32-uniform` with
train.checkpoint_every=1000; finished: the runner's evaluation is written) gets one JSON under --summaries,
unless it has one: the GAN ladder's summary (experiments.local_d.run_summary) plus `scores_by_step`, the
scores of the checkpoint at each step in STEPS. Each checkpoint's EMA generator and D are scored exactly as
the runner scores a finished run (`experiments.experiment.evaluate_run` on a run-directory view that holds
that checkpoint); the final step reuses the runner's own evaluation when the run's generator export is that
checkpoint's EMA generator. --partial: runs still training are scored at their checkpoints so far, in a
summary marked `partial` that the finished run's replaces. --cpu-seconds: a JSON {run_dir: {"train": s, "evaluate": s}} recorded beside the
grid (the runner records wall seconds only). Runs are summarised one at a time, in seed order. --cell: which
cell's arms to look for under --runs and how to name the summaries (`<cell>_<arm>_seed<k>.json`); the full D
and the full-field D at width 2 (`full_2k`, `fieldw2_2k`, arm `none` only) are reported by
experiments/blind_d_field.py.

`report`: the tables (one per step count), the paired analysis, the verdicts of the rule fixed in
docs/blind_d.md and two figures, from the summaries alone, written between the report's markers; the same
summaries give the same bytes.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments.blind_d_runs import (
    ARMS,
    BLOCK,
    CELL,
    CELLS,
    CONTROL,
    STEPS,
    UNIFORM,
    BlindDError,
    load_summaries,
    summarise,
    value,
    write_between,
)
from experiments.experiment import SPREAD_FACTOR, Comparison, compare, mean_std
from gan.cli import fail_cleanly  # (light: no torch)

PAIRS = ((BLOCK, CONTROL), (UNIFORM, CONTROL), (BLOCK, UNIFORM))  # (a, b): the rule asks whether a > b
SEEDS_PLANNED = 8
ALPHA = 0.05  # the one-sided exact sign test's level: 7 of 8 seeds (p = 9/256) passes, 6 of 8 (37/256) does not
LABELS = {"coherence": "coherence", "valid": "valid", "shape_iou": "shape IoU", "colour_agreement": "grey agreement",
          "fcd": "FCD", "d_auc": "D's AUC", "entropy_fraction": "entropy / log N", "look_share": "look share"}  # fmt: skip
PAIRED_SCORES = ("coherence", "d_auc")  # the rule's score (coherence) and D's view of the tie
BEGIN, END = "<!-- blind_d:begin -->", "<!-- blind_d:end -->"


# ----------------------------------------------------------------------------------------------
# Statistics and the rule


def sign_test_p(k: int, n: int) -> float:
    """The exact one-sided sign test: P(X >= k) for X ~ Binomial(n, 1/2)."""
    return sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n


@dataclasses.dataclass(frozen=True)
class Paired:
    """Per-seed differences a_k - b_k of two arms trained with the same seeds."""

    seeds: tuple[int, ...]
    diffs: tuple[float, ...]
    mean: float
    std: float  # sample std of the differences (0 for one seed)
    higher: int  # seeds with a_k > b_k
    lower: int  # seeds with a_k < b_k
    t: float  # mean / (std / sqrt(n)), n - 1 degrees of freedom; nan with fewer than 2 seeds or no spread

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def p_higher(self) -> float:
        return sign_test_p(self.higher, self.n)

    @property
    def p_lower(self) -> float:
        return sign_test_p(self.lower, self.n)


def paired(a: dict[int, float], b: dict[int, float]) -> Paired:
    """The paired differences over the seeds both arms have."""
    seeds = tuple(sorted(set(a) & set(b)))
    if not seeds:
        raise BlindDError("the two arms share no seed; a paired comparison needs runs of both arms with one seed")
    diffs = tuple(a[s] - b[s] for s in seeds)
    mean, std = mean_std(diffs)
    t = mean / (std / math.sqrt(len(diffs))) if len(diffs) > 1 and std > 0 else float("nan")
    return Paired(seeds, diffs, mean, std, sum(d > 0 for d in diffs), sum(d < 0 for d in diffs), t)


def pair_verdict(spread: Comparison, p: Paired, planned: int = SEEDS_PLANNED) -> str:
    """The rule of docs/blind_d.md: "higher" / "lower" when the difference is beyond the spread AND the sign
    test in its direction passes (p < ALPHA, i.e. at least 7 of 8 seeds) with all `planned` seeds done;
    "not shown" otherwise. Before that: "no verdict yet" while the outcome is open, "cannot be shown" once too
    many seeds went the other way for the sign test to pass in either direction."""
    left = planned - p.n
    if left > 0:
        open_ways = [w for w, k in (("higher", p.higher), ("lower", p.lower)) if sign_test_p(k + left, planned) < ALPHA]
        if not open_ways:
            return f"cannot be shown ({p.n} of {planned} seeds done; neither sign can reach the 7 of 8 the rule needs)"
        return f"no verdict yet ({p.n} of {planned} seeds; still possible: {' or '.join(open_ways)})"
    if spread.exceeds and p.mean > 0 and p.p_higher < ALPHA:
        return "higher"
    if spread.exceeds and p.mean < 0 and p.p_lower < ALPHA:
        return "lower"
    return "not shown"


def finding(verdicts: dict[tuple[str, str], str]) -> str:
    """The cell's answer from the coherence verdicts of PAIRS (docs/blind_d.md, "The finding")."""
    block, uniform, versus = (verdicts[pair] for pair in PAIRS)
    if block.startswith("no verdict yet"):
        return "no finding yet: the block against no block is still open"
    if block != "higher":
        return "no lift shown: the block does not beat no block by the rule"
    if versus == "higher":
        return "content-based attention in D lifts G's coherence: the block beats no block and the uniform control"
    if versus.startswith("no verdict yet") or uniform.startswith("no verdict yet"):
        return "the block lifts G's coherence; attention against a global-context path is still open"
    if uniform == "higher":
        return "a global-context path in D lifts G's coherence: the uniform control matches the block"
    return "the block lifts G's coherence; the cell does not separate attention from a global-context path"


# ----------------------------------------------------------------------------------------------
# Tables, verdicts and figures from the summaries alone


def by_seed(summaries: list[dict[str, Any]], arm: str, step: int, key: str) -> dict[int, float]:
    return {s["seed"]: value(s, step, key) for s in summaries if s["arm"] == arm and str(step) in s["scores_by_step"]}


def mean_std_text(xs: Sequence[float], digits: int) -> str:
    """'m +/- s' over the values that are not nan, 'm (1 seed)' for one, '-' for none."""
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return "-"
    m, s = mean_std(xs)
    return f"{m:.{digits}f}" + (f" +/- {s:.{digits}f}" if len(xs) > 1 else " (1 seed)")


def arm_table(summaries: list[dict[str, Any]], step: int) -> list[str]:
    keys = ("coherence", "valid", "shape_iou", "colour_agreement", "fcd", "d_auc", "entropy_fraction", "look_share")
    lines = ["| arm | seeds | " + " | ".join(LABELS[k] for k in keys) + " |", "|---|---|" + "---|" * len(keys)]
    for arm in ARMS:
        cols = [mean_std_text(list(by_seed(summaries, arm, step, k).values()), 2 if k == "fcd" else 3) for k in keys]
        n = len(by_seed(summaries, arm, step, "coherence"))
        lines.append(f"| `{arm}` | {n} | " + " | ".join(cols) + " |")
    return lines


def spread_and_paired(name: str, a: dict[int, float], b: dict[int, float]) -> tuple[Comparison, Paired]:
    """The spread rule's Comparison (named `name`) and the paired differences of a - b, both over the seeds
    the two have."""
    p = paired(a, b)
    return compare(name, [a[s] for s in p.seeds], [b[s] for s in p.seeds], True), p


def compare_pair(summaries: list[dict[str, Any]], pair: tuple[str, str], step: int, key: str):
    """(spread-rule Comparison, Paired, verdict) of pair (a, b) on `key`, over the seeds both arms have."""
    c, p = spread_and_paired(pair[0], *(by_seed(summaries, arm, step, key) for arm in pair))
    return c, p, pair_verdict(c, p)


def pair_table(summaries: list[dict[str, Any]], step: int) -> tuple[list[str], dict[tuple[str, str], str]]:
    """The spread rule and the paired statistics of every pair on PAIRED_SCORES; the coherence verdicts."""
    lines = [f"| pair | score | seeds | diff of means | pooled std | beyond {SPREAD_FACTOR:g} x pooled std | "
             "per-seed differences | mean +/- std of differences | a > b in | paired t (df) | sign test p "
             "(one-sided) | verdict |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    verdicts = {}
    for key in PAIRED_SCORES:
        for pair in PAIRS:
            if not all(by_seed(summaries, arm, step, key) for arm in pair):
                continue
            c, p, v = compare_pair(summaries, pair, step, key)
            if key == "coherence":
                verdicts[pair] = v
            t = "-" if math.isnan(p.t) else f"{p.t:+.2f} ({p.n - 1})"
            spread = f"{c.pooled_std:.3f} | {'yes' if c.exceeds else 'no'}" if p.n > 1 else "- | - (one seed)"
            lines.append(
                f"| `{pair[0]}` - `{pair[1]}` | {LABELS[key]} | {p.n} | {c.diff:+.3f} | {spread} | "
                f"{', '.join(f'{d:+.3f}' for d in p.diffs)} | "
                f"{p.mean:+.3f} +/- {p.std:.3f} | {p.higher} of {p.n} | {t} | {p.p_higher:.3f} | {v} |"
            )
    return lines, verdicts


def seed_table(summaries: list[dict[str, Any]]) -> list[str]:
    head = ["arm", "seed", *(f"coherence {s}" for s in STEPS), *(f"D's AUC {s}" for s in STEPS),
            f"FCD {STEPS[-1]}", f"valid {STEPS[-1]}", f"gate {STEPS[-1]}", f"entropy / log N {STEPS[-1]}",
            f"look share {STEPS[-1]} (uniform)"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        final = s["scores_by_step"].get(str(STEPS[-1]), {})
        look = next(iter(final.get("d_look_share", {}).values()), None)
        cells = [f"`{s['arm']}`", str(s["seed"]) + (" (training)" if s.get("partial") else ""),
                 *(_fmt(value(s, t, "coherence")) for t in STEPS), *(_fmt(value(s, t, "d_auc")) for t in STEPS),
                 _fmt(value(s, STEPS[-1], "fcd"), 2), _fmt(value(s, STEPS[-1], "valid")),
                 *(_fmt(value(s, STEPS[-1], k)) for k in ("gate", "entropy_fraction")),
                 f"{look[0]:.3f} ({look[1]:.3f})" if look else "-"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _fmt(x: float, digits: int = 3) -> str:
    return "-" if math.isnan(x) else f"{x:.{digits}f}"


def report_text(summaries: list[dict[str, Any]], figures_rel: str) -> str:
    """The generated part of docs/blind_d.md (between its markers)."""
    if not summaries:
        return "(no run of the cell has been summarised yet)"
    done = [s for s in summaries if not s.get("partial")]
    training = [s for s in summaries if s.get("partial")]
    seeds = {arm: sorted(s["seed"] for s in done if s["arm"] == arm) for arm in ARMS}
    complete = sorted(set.intersection(*(set(v) for v in seeds.values())))
    still = ", ".join(f"`{s['arm']}` seed {s['seed']}" for s in training)
    lines = [
        "Generated by `python -m experiments.blind_d report --summaries docs/blind_d/runs --report docs/blind_d.md "
        "--figures docs/blind_d` from the per-run summaries in [blind_d/runs/](blind_d/runs/).",
        "",
        f"Runs finished and summarised: {len(done)} of {len(ARMS) * SEEDS_PLANNED} ("
        + "; ".join(f"`{arm}`: seeds {', '.join(map(str, v)) or 'none'}" for arm, v in seeds.items())
        + ")"
        + (f"; still training, scored at their checkpoints so far: {still}" if still else "")
        + f". Seeds done in all three arms: {len(complete)} of {SEEDS_PLANNED}"
        + (" (the rule needs all 8; until then a pair gets a verdict only where the counts already decide it)."
           if len(complete) < SEEDS_PLANNED else "."),
        "",
        f"![G's coherence at 1,000 and 2,000 steps, one line per arm, seeds as dots]({figures_rel}/coherence_by_step.png)"
        f" ![each block run's coherence gain over its paired no-block run against its block's final attention "
        f"entropy]({figures_rel}/gain_vs_entropy.png)",
    ]  # fmt: skip
    findings = []
    for step in STEPS:
        table, verdicts = pair_table(summaries, step)
        found = finding(verdicts) if len(verdicts) == len(PAIRS) else "no finding yet: a pair has no paired seed"
        findings.append((step, found))
        lines += ["", f"### At {step:,} steps", "",
                  "Mean +/- sample std over the seeds each arm has (1,000 EMA samples; D's AUC on 1,000 unseen "
                  "coherent images against their redrawn versions; entropy of D's block over log N, 1.0 = "
                  "uniform; look share: the left object's queries' attention on the right object):", "",
                  *arm_table(summaries, step), "",
                  "Pairs (a - b, over the seeds both arms have; the rule: beyond the spread AND a sign test below "
                  f"{ALPHA:g} with all {SEEDS_PLANNED} seeds; the sign test's p is for a > b):", "",
                  *table, "", f"**Finding at {step:,} steps:** {found}."]  # fmt: skip
    for step in STEPS:  # the control works only if its attention stays uniform and its gate opens
        ent, gate = (list(by_seed(summaries, UNIFORM, step, k).values()) for k in ("entropy_fraction", "gate"))
        if ent:
            lines += ["", f"The uniform control at {step:,} steps ({len(ent)} runs): entropy over log N "
                      f"{min(ent):.4f}-{max(ent):.4f}, |gamma| {min(gate):.3f}-{max(gate):.3f}."]  # fmt: skip
    cpu = [sum(v for v in s["cpu_seconds"].values() if v) for s in summaries]
    ends = sorted(s["finished"] for s in done)
    lines += ["", "Per run:", "", *seed_table(summaries), "",
              f"{len(summaries)} runs, {sum(cpu) / 3600:.1f} CPU hours of training (so far, for runs still training), "
              "evaluation and checkpoint scoring (one thread each)"
              + (f"; runs finished {ends[0]} to {ends[-1]}" if ends else "")
              + f"; machine: {summaries[0]['machine']}"]  # fmt: skip
    return "\n".join(lines)


def write_report(summaries: list[dict[str, Any]], report: Path, figures: Path) -> str:
    """Replace the text between the report's markers with `report_text`; draw both figures."""
    body = report_text(summaries, os.path.relpath(figures, report.parent))
    write_between(report, BEGIN, END, body, "the generated tables")
    if summaries:
        coherence_figure(summaries, figures / "coherence_by_step.png")
        gain_figure(summaries, figures / "gain_vs_entropy.png")
    return body


ARM_STYLES = {CONTROL: ("C0", "o", "no block in D"), BLOCK: ("C2", "^", "SAGAN's block in D (gamma gate)"),
              UNIFORM: ("C3", "s", "the same block, attention held uniform")}  # fmt: skip


def coherence_figure(summaries: list[dict[str, Any]], path: Path) -> None:
    """G's coherence against training steps: one line per arm (mean over seeds), every seed as a dot."""
    from tools.report import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 3.6))
    for i, arm in enumerate(ARMS):
        colour, marker, label = ARM_STYLES[arm]
        xs, means = [], []
        for step in STEPS:
            v = list(by_seed(summaries, arm, step, "coherence").values())
            if v:
                x = step * (1 + 0.03 * (i - 1))
                ax.plot([x] * len(v), v, ".", color=colour, alpha=0.5)
                xs.append(x)
                means.append(statistics.mean(v))
        ax.plot(xs, means, marker + "-", color=colour, label=label)
    ax.set_xticks(list(STEPS), [f"{s:,}" for s in STEPS])
    _save(plt, fig, ax, path, "training step", "G's coherence (1,000 EMA samples)",
          "The blind 16-px D: G's coherence by arm")  # fmt: skip


def _save(plt: Any, fig: Any, ax: Any, path: Path, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})  # no version stamp: the same summaries, the same bytes
    plt.close(fig)


def gain_figure(summaries: list[dict[str, Any]], path: Path) -> None:
    """Each block run's coherence gain over its paired no-block run (final step) against its block's final
    attention entropy over log N: does the gain come with selective attention?"""
    from tools.report import pyplot

    plt = pyplot()
    final = STEPS[-1]
    control = by_seed(summaries, CONTROL, final, "coherence")
    fig, ax = plt.subplots(figsize=(4.8, 3.6))
    for arm in (BLOCK, UNIFORM):
        colour, marker, label = ARM_STYLES[arm]
        runs = [s for s in summaries if s["arm"] == arm and s["seed"] in control and str(final) in s["scores_by_step"]]
        xs = [value(s, final, "entropy_fraction") for s in runs]
        ys = [value(s, final, "coherence") - control[s["seed"]] for s in runs]
        ax.plot(xs, ys, marker, color=colour, label=label, linestyle="none")
        for s, x, y in zip(runs, xs, ys):
            ax.annotate(str(s["seed"]), (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points")
    ax.axhline(0.0, color="grey", ls=":", lw=0.8)
    ax.set_xlim(0.0, 1.05)  # the whole scale, from one key per query to uniform
    _save(plt, fig, ax, path, f"D block's entropy / log N at step {final:,} (1: uniform)",
          "coherence gain over the paired no-block run", "Does the gain come with selective attention? (labels: seeds)")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_sum = sub.add_parser("summarise", help="one summary JSON per finished run not yet summarised")
    p_sum.add_argument("--runs", required=True, help="the grid's --out folder (OUT/<arm>/seed<k>/)")
    p_sum.add_argument("--summaries", default="docs/blind_d/runs")
    p_sum.add_argument("--cpu-seconds", default=None, help='JSON {run_dir: {"train": s, "evaluate": s}} (optional)')
    p_sum.add_argument("--partial", action="store_true", help="also score the checkpoints of runs still training")
    p_sum.add_argument("--num-samples", type=int, default=1000, help="samples per score of a run still training")
    p_sum.add_argument("--cell", default=CELL, help=f"the cell whose runs --runs holds: {', '.join(CELLS)}")
    p_rep = sub.add_parser("report", help="tables, verdicts and figures from the summaries alone")
    p_rep.add_argument("--summaries", default="docs/blind_d/runs")
    p_rep.add_argument("--report", default="docs/blind_d.md")
    p_rep.add_argument("--figures", default="docs/blind_d")
    args = parser.parse_args(argv)
    with fail_cleanly():
        if args.command == "summarise":
            cpu = Path(args.cpu_seconds) if args.cpu_seconds else None
            runs, out = Path(args.runs), Path(args.summaries)
            written = summarise(runs, out, cpu, None, args.partial, args.num_samples, args.cell)
            print(f"{len(written)} new summaries in {args.summaries}")
        else:
            write_report(load_summaries(Path(args.summaries)), Path(args.report), Path(args.figures))
            print(f"wrote {args.report}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
