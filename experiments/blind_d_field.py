"""Field against capacity in the blind-D cell (docs/blind_d.md, "Field against capacity"): the full D without a
block (the ceiling) and a full-field D at the blind D's size (width 2: 19,355 parameters against the blind D's
19,409, 19,730 with its block), each 3 seeds at 2,000 steps, held against the blind cell's arms on the same
seeds 0-2, paired by seed (train.seed fixes G's initialisation, the data order and the latents in every run).

    python -m experiments.blind_d_field report --summaries docs/blind_d/runs --report docs/blind_d.md

From the summaries alone (`experiments.blind_d summarise --cell full_2k` / `--cell fieldw2_2k` writes them):
the scores by D, the pairs by the rule fixed in docs/blind_d.md (the spread rule and the same direction in 3 of 3
paired seeds) and the share of the gap to the ceiling that the block closes, written between the report's
markers FIELD_BEGIN and FIELD_END; the same summaries give the same bytes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from experiments.blind_d import LABELS, PAIRED_SCORES, by_seed, mean_std_text, spread_and_paired
from experiments.blind_d_runs import (
    BLOCK,
    CELL,
    CONTROL,
    FIELD_W2,
    FULL,
    STEPS,
    UNIFORM,
    load_summaries,
    write_between,
)
from experiments.experiment import SPREAD_FACTOR, Comparison
from gan.cli import fail_cleanly  # (light: no torch)

SEEDS = (0, 1, 2)  # the seeds every D of the section has (the blind cell has more: they are left out here)
BLIND_NONE, BLIND_D32, BLIND_UNIFORM = "blind none", "blind d32", "blind d32-uniform"  # the blind cell's arms
FULL_D, FIELD_D = "full", "fieldw2"  # the full D (width 16) and the full-field D of width 2, neither with a block
DS = {BLIND_NONE: (CELL, CONTROL), BLIND_D32: (CELL, BLOCK), BLIND_UNIFORM: (CELL, UNIFORM), FULL_D: (FULL, CONTROL),
      FIELD_D: (FIELD_W2, CONTROL)}  # fmt: skip
PAIRS = ((FIELD_D, BLIND_NONE), (BLIND_D32, FIELD_D), (FULL_D, BLIND_D32), (FULL_D, FIELD_D))  # (a, b): a - b
FIELD_BEGIN, FIELD_END = "<!-- blind_d_field:begin -->", "<!-- blind_d_field:end -->"


def runs_by_d(summaries: Path) -> dict[str, list[dict[str, Any]]]:
    """Each D's summaries on SEEDS (finished or still training), from the summaries folder."""
    cells = {cell: load_summaries(summaries, cell) for cell in {cell for cell, _ in DS.values()}}
    return {d: [s for s in cells[cell] if s["arm"] == arm and s["seed"] in SEEDS] for d, (cell, arm) in DS.items()}


def field_verdict(c: Comparison, diffs: tuple[float, ...], planned: int = len(SEEDS)) -> str:
    """The section's rule: "higher" / "lower" when |diff| > 2 x pooled std AND a - b has that sign in every one
    of the `planned` seeds; "not separated" otherwise; "no verdict yet" with fewer seeds paired."""
    if len(diffs) < planned:
        return f"no verdict yet ({len(diffs)} of {planned} seeds)"
    if c.exceeds and all(d > 0 for d in diffs):
        return f"higher (beyond the spread, consistent in {len(diffs)} of {len(diffs)})"
    if c.exceeds and all(d < 0 for d in diffs):
        return f"lower (beyond the spread, consistent in {len(diffs)} of {len(diffs)})"
    return "not separated"


def field_finding(verdicts: dict[tuple[str, str], str]) -> str:
    """The section's answer from the coherence verdicts of PAIRS (docs/blind_d.md, "Field against capacity")."""
    field, block, _, capacity = (verdicts.get(pair, "no verdict yet") for pair in PAIRS)
    if field.startswith("no verdict yet") or capacity.startswith("no verdict yet"):
        return "no finding yet: the full D or the width-2 D lacks paired seeds"
    if field.startswith("higher"):
        head = "the field binds at the same capacity: a whole field at the blind D's size lifts G's coherence"
        head += "; the full D's capacity adds more" if capacity.startswith("higher") else ""
    elif capacity.startswith("higher") or field.startswith("lower"):
        head = "capacity binds: a whole field at the blind D's size does not lift G's coherence, the full D does"
    else:
        head = "field and capacity not separated: neither the whole field at this size nor the capacity differs"
    if block.startswith("higher"):
        return f"{head}; the block gives more than a whole field at the same size"
    if block.startswith("lower"):
        return f"{head}; the block gives less than a whole field at the same size"
    if block == "not separated":
        return f"{head}; the block and a whole field at the same size are not separated"
    return head


def d_table(runs: dict[str, list[dict[str, Any]]], step: int, ds: dict[str, tuple[str, str]] = DS) -> list[str]:
    """Per D (`ds`: name -> (cell, arm)): its size, field, seeds and the scores at `step`."""
    head = ["D", "cell, arm", "D's parameters", "D's field (px)", "seeds", *(f"{LABELS[k]}{x}" for k in PAIRED_SCORES
            for x in ("", " by seed")), "FCD"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for d, (cell, arm) in ds.items():
        params = sorted({f"{s['params']['D']:,}" for s in runs[d] if "params" in s})
        field = sorted({str(s["d_receptive_field"]) for s in runs[d] if "d_receptive_field" in s})
        cols = [f"`{d}`", f"`{cell}`, `{arm}`", ", ".join(params) or "-", ", ".join(field) or "-",
                ", ".join(str(s) for s in by_seed(runs[d], arm, step, "coherence")) or "-"]  # fmt: skip
        for key in PAIRED_SCORES:
            v = by_seed(runs[d], arm, step, key)
            cols += [mean_std_text(list(v.values()), 3), ", ".join(f"{x:.3f}" for x in v.values()) or "-"]
        cols.append(mean_std_text(list(by_seed(runs[d], arm, step, "fcd").values()), 2))
        lines.append("| " + " | ".join(cols) + " |")
    return lines


def pair_rows(
    runs: dict[str, list[dict[str, Any]]],
    step: int,
    ds: dict[str, tuple[str, str]] = DS,
    pairs: tuple[tuple[str, str], ...] = PAIRS,
    planned: int = len(SEEDS),
) -> tuple[list[str], dict[tuple[str, str], str]]:
    """The spread rule and the paired differences of every pair (a, b) of `pairs` (names of `ds`) on
    PAIRED_SCORES, each judged by `field_verdict` over `planned` seeds; the coherence verdicts."""
    lines = [f"| pair (a - b) | score | seeds | diff of means | pooled std | beyond {SPREAD_FACTOR:g} x pooled std | "
             "per-seed differences | mean +/- std of differences | a > b in | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    verdicts = {}
    for key in PAIRED_SCORES:
        for pair in pairs:
            a, b = (by_seed(runs[d], ds[d][1], step, key) for d in pair)
            if not set(a) & set(b):
                verdicts.setdefault(pair, f"no verdict yet (0 of {planned} seeds)")
                continue
            c, p = spread_and_paired(pair[0], a, b)
            v = field_verdict(c, p.diffs, planned)
            if key == "coherence":
                verdicts[pair] = v
            spread = f"{c.pooled_std:.3f} | {'yes' if c.exceeds else 'no'}" if p.n > 1 else "- | - (one seed)"
            lines.append(f"| `{pair[0]}` - `{pair[1]}` | {LABELS[key]} | {p.n} | {c.diff:+.3f} | {spread} | "
                         f"{', '.join(f'{d:+.3f}' for d in p.diffs)} | {p.mean:+.3f} +/- {p.std:.3f} | "
                         f"{p.higher} of {p.n} | {v} |")  # fmt: skip
    return lines, verdicts


def gap_closed(runs: dict[str, list[dict[str, Any]]], step: int) -> str:
    """The share of the gap from the blind D without a block to the full D that the block closes, on coherence:
    per seed (d32_k - none_k) / (full_k - none_k), and the same with the means of the seeds all three have."""
    none, d32, full = (by_seed(runs[d], DS[d][1], step, "coherence") for d in (BLIND_NONE, BLIND_D32, FULL_D))
    seeds = sorted(set(none) & set(d32) & set(full))
    if not seeds:
        return "no seed has all three of blind `none`, blind `d32` and `full` yet"

    def share(k: list[int]) -> str:
        gap = sum(full[s] - none[s] for s in k)
        return f"{sum(d32[s] - none[s] for s in k) / gap:.2f}" if gap > 0 else "- (full not above none)"

    per_seed = ", ".join(f"seed {s}: {share([s])}" for s in seeds)
    return f"{per_seed}; with the means of seeds {', '.join(map(str, seeds))}: {share(seeds)}"


def field_text(runs: dict[str, list[dict[str, Any]]]) -> str:
    """The generated part of docs/blind_d.md between FIELD_BEGIN and FIELD_END."""
    done = {d: [s["seed"] for s in rs if not s.get("partial")] for d, rs in runs.items()}
    training = [f"`{d}` seed {s['seed']}" for d, rs in runs.items() for s in rs if s.get("partial")]
    lines = ["Generated by `python -m experiments.blind_d_field report --summaries docs/blind_d/runs --report "
             "docs/blind_d.md` from the per-run summaries in [blind_d/runs/](blind_d/runs/).", "",
             f"Runs finished on seeds {', '.join(map(str, SEEDS))}: "
             + "; ".join(f"`{d}`: {', '.join(map(str, v)) or 'none'}" for d, v in done.items())
             + (f"; still training, scored at their checkpoints so far: {', '.join(training)}" if training else "")
             + "."]  # fmt: skip
    for step in STEPS:
        table, verdicts = pair_rows(runs, step)
        lines += ["", f"### Field against capacity at {step:,} steps", "",
                  "Mean +/- sample std over seeds 0-2 and each seed's value (1,000 EMA samples, scored as in the "
                  "tables above):", "", *d_table(runs, step), "",
                  f"Pairs (the rule: beyond {SPREAD_FACTOR:g} x pooled std AND a - b of the same sign in 3 of 3 "
                  "paired seeds):", "", *(table if len(table) > 2 else ["(no pair has a paired seed yet)"]), "",
                  f"Gap to the ceiling closed by the block (coherence): {gap_closed(runs, step)}.", "",
                  f"**Field against capacity at {step:,} steps:** {field_finding(verdicts)}."]  # fmt: skip
    new = [s for d in (FULL_D, FIELD_D) for s in runs[d] if not s.get("partial")]
    if new:
        cpu = sum(v for s in new for v in s["cpu_seconds"].values() if v)
        lines += ["", f"The {len(new)} runs of `full` and `fieldw2`: {cpu / 3600:.1f} CPU hours of training, "
                  f"evaluation and checkpoint scoring (one thread each); machine: {new[0]['machine']}."]  # fmt: skip
    return "\n".join(lines)


def write_field_report(summaries: Path, report: Path) -> str:
    """Replace the text between the report's field markers with `field_text`."""
    body = field_text(runs_by_d(summaries))
    write_between(report, FIELD_BEGIN, FIELD_END, body, "the field section's tables")
    return body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_rep = sub.add_parser("report", help="the field-against-capacity section from the summaries alone")
    p_rep.add_argument("--summaries", default="docs/blind_d/runs")
    p_rep.add_argument("--report", default="docs/blind_d.md")
    args = parser.parse_args(argv)
    with fail_cleanly():
        write_field_report(Path(args.summaries), Path(args.report))
        print(f"wrote {args.report}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
