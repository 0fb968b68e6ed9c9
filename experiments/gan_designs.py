"""Issue 34, part 4 (docs/gan_designs.md): the best block design of the probes (cosine logits) against SAGAN's
block in the GAN ladder's blind-16 D, 5 paired seeds at 1,000 steps, and whether a block in that D finds the
other object by what it shows (content) or by where the query sits (position).

    python -m experiments.gan_designs run --seeds 0,1,2,3,4 --jobs 1 --out OUT/cosine_1k $COMMON $BLIND
    python -m experiments.gan_designs look --runs OUT/blind16_2k OUT/cosine_1k --step 1000 --out docs/gan_designs/look
    python -m experiments.gan_designs report --summaries docs/blind_d/runs --looks docs/gan_designs/look \
        --report docs/gan_designs.md

`run`: the experiment runner over the one new arm, `d32-cosine` (experiments/ablation.py's arm grammar, the
ablation's evaluation hook); its controls are the blind-D grid's runs of the same seeds (docs/blind_d.md), so
no `none` arm is trained again. `experiments.blind_d summarise --cell cosine_1k` writes its summaries.

`look`: for every run `<runs>/<arm>/seed<k>` with a checkpoint at --step, where its D's block looks on LOOK_IMAGES
unseen images (seed 1): the left object's queries' share of attention on the right object in coherent images
(`experiments.mismatch.d_look_share`), and in their incoherent versions on the right object and on the left
object's mirror image, apart (`experiments.mismatch.d_mirror_look`); one JSON per run.

`report`: the arms at 1,000 steps, the pairs by the rule fixed in docs/gan_designs.md and the per-run looks, from
the summaries and the look files alone, written between the report's markers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

from experiments.blind_d_field import d_table, pair_rows
from experiments.blind_d_runs import (
    BLOCK,
    CELL,
    CONTROL,
    COSINE,
    COSINE_2K,
    COSINE_CELL,
    UNIFORM,
    BlindDError,
    load_summaries,
    write_between,
)
from experiments.experiment import SPREAD_FACTOR
from gan.cli import fail_cleanly  # (light: no torch)

STEP = 1000
SEEDS = (0, 1, 2, 3, 4)
LOOK_IMAGES = 256
DS = {"none": (CELL, CONTROL), "sagan": (CELL, BLOCK), "uniform": (CELL, UNIFORM), "cosine": (COSINE_CELL, COSINE)}
STEP_2K = 2000  # the later look: the cosine arm trained to 2,000 steps (cell cosine_2k) against the blind cell's runs
DS_2K = {**DS, "cosine": (COSINE_2K, COSINE)}
PAIRS = (("cosine", "sagan"), ("cosine", "none"), ("cosine", "uniform"), ("sagan", "none"))  # (a, b): a - b
LOOK_RATIO = 1.25  # a block "looks" at a key set when its share there is at least 1.25 x uniform's
BEGIN, END = "<!-- gan_designs:begin -->", "<!-- gan_designs:end -->"


def run(seeds: list[int], out: Path, jobs: int, extra: list[str], num_samples: int | None, config: str) -> None:
    from experiments import experiment
    from experiments.ablation import EVAL_HOOK, MANIFEST, parse_arm

    experiment.run_all(config, [parse_arm(COSINE)], seeds, out, jobs, extra, num_samples, MANIFEST,
                       experiment.command_line("experiments.gan_designs"), hook=EVAL_HOOK)  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Where the block looks


def look_of(run_dir: Path, step: int, num: int = LOOK_IMAGES) -> dict[str, Any] | None:
    """Where the D of `run_dir`'s checkpoint at `step` looks (see the module's docstring); None without a block."""
    import torch

    from experiments.blind_d_runs import checkpoint_dir
    from experiments.mismatch import d_look_share, d_mirror_look
    from gan.models import load_discriminator

    torch.set_num_threads(1)
    D, cfg, _ = load_discriminator(checkpoint_dir(run_dir, step))
    variant = cfg.data.builtin_variant
    coherent = d_look_share(D, cfg.model, num=num, variant=variant)
    if not coherent:
        return None
    (block, share), *rest = coherent.items()
    if rest:
        raise BlindDError(f"{run_dir}'s D has {1 + len(rest)} blocks; the look analysis reads one")
    mirror = d_mirror_look(D, cfg.model, num=num, variant=variant)[block]
    return {"block": block, "coherent": share, **mirror, "num_images": num}


def look(runs: list[Path], step: int, out: Path) -> list[Path]:
    """One look file per run with a block and a checkpoint at `step` under each of `runs` (<arm>/seed<k>/),
    unless it has one: <out>/<arm>_seed<k>_step<step>.json."""
    from gan.checkpoint import list_checkpoints, step_of
    from tools.report import machine_line

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for root in runs:
        if not root.is_dir():
            raise BlindDError(f"--runs {root} is not a directory; pass a grid's --out folder")
        for rd in sorted(p for p in root.glob("*/seed*") if p.is_dir()):
            arm, seed = rd.parent.name, int(rd.name.removeprefix("seed"))
            path = out / f"{arm}_seed{seed}_step{step}.json"
            if path.exists() or step not in {step_of(p) for p in list_checkpoints(rd / "checkpoints")}:
                continue
            t0 = time.process_time()
            found = look_of(rd, step)
            if found is None:
                continue
            record = {"arm": arm, "seed": seed, "step": step, **found, "run_dir": str(rd),
                      "cpu_seconds": round(time.process_time() - t0, 1), "machine": machine_line(),
                      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                      "command": " ".join(["python -m experiments.gan_designs", *sys.argv[1:]])}  # fmt: skip
            path.write_text(json.dumps(record, indent=1) + "\n")
            print(f"looked at {rd} step {step} -> {path}", flush=True)
            written.append(path)
    return written


def look_kind(record: dict[str, Any]) -> str:
    """The rule fixed in docs/gan_designs.md: "content" when the share on the right object in incoherent images
    is at least LOOK_RATIO x uniform's and its ratio exceeds the mirror's; "position" the other way round;
    "neither" otherwise."""
    obj, mirror = (record[k][0] / record[k][1] if record[k][1] > 0 else float("nan") for k in ("object", "mirror"))
    if obj >= LOOK_RATIO and obj > mirror:
        return "content"
    if mirror >= LOOK_RATIO and mirror > obj:
        return "position"
    return "neither"


# ----------------------------------------------------------------------------------------------
# Report


def load_looks(looks: Path, step: int = STEP) -> list[dict[str, Any]]:
    return sorted((json.loads(p.read_text()) for p in looks.glob(f"*_step{step}.json")),
                  key=lambda r: (r["arm"], r["seed"]))  # fmt: skip


def look_table(records: list[dict[str, Any]]) -> list[str]:
    lines = ["| arm | seed | coherent: on the right object (uniform) | incoherent: on the right object (uniform) | "
             "incoherent: on the left object's mirror image (uniform) | looks by |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in records:
        cells = [f"{r[k][0]:.3f} ({r[k][1]:.3f})" for k in ("coherent", "object", "mirror")]
        lines.append(f"| `{r['arm']}` | {r['seed']} | " + " | ".join(cells) + f" | {look_kind(r)} |")
    return lines


def look_counts(records: list[dict[str, Any]]) -> str:
    arms = sorted({r["arm"] for r in records})
    parts = []
    for arm in arms:
        kinds = [look_kind(r) for r in records if r["arm"] == arm]
        parts.append(f"`{arm}`: " + ", ".join(f"{k} {kinds.count(k)} of {len(kinds)}"
                                              for k in ("content", "position", "neither") if kinds.count(k)))  # fmt: skip
    return "; ".join(parts)


def gate_table(runs: dict[str, list[dict[str, Any]]], step: int) -> list[str]:
    """The gate and the entropy fraction of D's one block in every run of SAGAN's block and of cosine at `step`."""
    lines = ["| arm | seed | gate | entropy / log N |", "|---|---|---|---|"]
    for d in ("sagan", "cosine"):
        for s in runs[d]:
            (b,) = s["scores_by_step"][str(step)]["blocks"].values()
            lines.append(f"| `{d}` | {s['seed']} | {b.get('gate', float('nan')):.3f} | "
                         f"{b.get('entropy_fraction', float('nan')):.3f} |")  # fmt: skip
    return lines


def report_text(summaries: Path, looks: Path) -> str:
    cells = {cell: load_summaries(summaries, cell) for cell in {cell for cell, _ in DS.values()}}
    runs = {d: [s for s in cells[cell] if s["arm"] == arm and s["seed"] in SEEDS and not s.get("partial")]
            for d, (cell, arm) in DS.items()}  # fmt: skip
    table, verdicts = pair_rows(runs, STEP, DS, PAIRS, len(SEEDS))
    records = load_looks(looks)
    cosine = runs["cosine"]
    lines = ["Generated by `python -m experiments.gan_designs report --summaries docs/blind_d/runs --looks "
             "docs/gan_designs/look --report docs/gan_designs.md` from the run summaries in "
             "[blind_d/runs/](blind_d/runs/) and the look files in [gan_designs/look/](gan_designs/look/).", "",
             f"Cosine runs finished: {len(cosine)} of {len(SEEDS)} (seeds "
             f"{', '.join(str(s['seed']) for s in cosine) or 'none'}).", "",
             f"Arms at {STEP:,} steps, mean +/- sample std over seeds {', '.join(map(str, SEEDS))} and each seed's "
             "value (1,000 EMA samples; D's AUC on 1,000 unseen coherent images against their redrawn versions):",
             "", *d_table(runs, STEP, DS), "",
             f"Pairs (the rule: beyond {SPREAD_FACTOR:g} x pooled std AND a - b of the same sign in {len(SEEDS)} of "
             f"{len(SEEDS)} paired seeds, a one-sided sign test of p = 1/32):", "",
             *(table if len(table) > 2 else ["(no pair has a paired seed yet)"]), ""]  # fmt: skip
    lines += ["**Coherence verdicts:** " + "; ".join(f"`{a}` - `{b}`: {v}" for (a, b), v in verdicts.items()) + "."]
    if runs["sagan"] or cosine:
        lines += ["", "Gate |gamma| and attention entropy over log N of D's block at 1,000 steps:", "",
                  *gate_table(runs, STEP)]  # fmt: skip
    lines += ["", f"Where D's block looks at {STEP:,} steps ({LOOK_IMAGES} unseen images and their incoherent "
              f"versions; shares of the left object's queries' attention; uniform's share in brackets; 'looks by' "
              f"follows the rule above, ratio {LOOK_RATIO:g}):", "",
              *(look_table(records) if records else ["(no look file yet)"])]  # fmt: skip
    if records:
        cpu = sum(r["cpu_seconds"] for r in records)
        lines += ["", f"Counts: {look_counts(records)}. {len(records)} look files, {cpu:.0f} CPU s; machine: "
                  f"{records[0]['machine']}."]  # fmt: skip
    if cosine:
        cpu = sum(v for s in cosine for v in s["cpu_seconds"].values() if v)
        lines += ["", f"The {len(cosine)} cosine runs: {cpu / 3600:.2f} CPU hours of training and evaluation (one "
                  f"thread each); machine: {cosine[0]['machine']}."]  # fmt: skip
    later = [s for s in load_summaries(summaries, COSINE_2K) if s["arm"] == COSINE and s["seed"] in SEEDS]
    if later:
        lines += ["", *later_lines({**runs, "cosine": [s for s in later if not s.get("partial")]}, cosine, looks)]
    return "\n".join(lines)


def later_lines(runs: dict[str, list[dict[str, Any]]], cosine_1k: list[dict[str, Any]], looks: Path) -> list[str]:
    """The section at STEP_2K: the arms, the pairs by the same rule, the looks; and whether each 2,000-step
    cosine run's checkpoint at STEP is the 1,000-step run's (same scores: nothing in training reads
    train.steps but the progress bar)."""
    cosine = runs["cosine"]
    table, verdicts = pair_rows(runs, STEP_2K, DS_2K, PAIRS, len(SEEDS))
    at_1k = {s["seed"]: s["scores_by_step"][str(STEP)] for s in cosine_1k}
    same = [s["seed"] for s in cosine if s["seed"] in at_1k and all(
            s["scores_by_step"][str(STEP)][k] == at_1k[s["seed"]][k] for k in ("coherence", "d_auc", "fcd"))]  # fmt: skip
    paired = sorted(set(at_1k) & {s["seed"] for s in cosine})
    records = load_looks(looks, STEP_2K)
    lines = [f"### At {STEP_2K:,} steps", "",
             f"Cosine runs finished: {len(cosine)} of {len(SEEDS)} (cell `{COSINE_2K}`, seeds "
             f"{', '.join(str(s['seed']) for s in cosine) or 'none'}). Their {STEP:,}-step checkpoints score as the "
             f"{STEP:,}-step runs' (coherence, D's AUC and FCD equal) in {len(same)} of the {len(paired)} seeds "
             "both cells hold.", "",
             *d_table(runs, STEP_2K, DS_2K), "", *(table if len(table) > 2 else ["(no pair has a paired seed yet)"]),
             "", "**Coherence verdicts at 2,000 steps:** "
             + "; ".join(f"`{a}` - `{b}`: {v}" for (a, b), v in verdicts.items()) + ".", "",
             f"Gate |gamma| and attention entropy over log N of D's block at {STEP_2K:,} steps:", "",
             *gate_table(runs, STEP_2K)]  # fmt: skip
    lines += ["", f"Where D's block looks at {STEP_2K:,} steps (as above):", "",
              *(look_table(records) if records else ["(no look file yet)"])]  # fmt: skip
    if records:
        lines += ["", f"Counts: {look_counts(records)}."]
    if cosine:
        cpu = sum(v for s in cosine for v in s["cpu_seconds"].values() if v)
        lines += ["", f"The {len(cosine)} 2,000-step cosine runs: {cpu / 3600:.2f} CPU hours of training, "
                  f"evaluation and checkpoint scoring (one thread each); machine: {cosine[0]['machine']}."]  # fmt: skip
    return lines


def write_report(summaries: Path, looks: Path, report: Path) -> str:
    body = report_text(summaries, looks)
    write_between(report, BEGIN, END, body, "the generated tables")
    return body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="train and evaluate the cosine arm (overrides after the options)")
    p_run.add_argument("--config", default="configs/ablation_coherence.yaml")
    p_run.add_argument("--seeds", required=True, help="comma-separated, e.g. 0,1,2,3,4")
    p_run.add_argument("--jobs", type=int, default=1)
    p_run.add_argument("--out", required=True)
    p_run.add_argument("--num-samples", type=int, default=None)
    p_run.add_argument("overrides", nargs="*", help="config overrides (the blind-D cell's COMMON and BLIND)")
    p_look = sub.add_parser("look", help="where each run's D block looks at one checkpoint")
    p_look.add_argument("--runs", nargs="+", required=True, help="grids' --out folders (<arm>/seed<k>/)")
    p_look.add_argument("--step", type=int, default=STEP)
    p_look.add_argument("--out", default="docs/gan_designs/look")
    p_rep = sub.add_parser("report", help="the tables and verdicts from the summaries and look files alone")
    p_rep.add_argument("--summaries", default="docs/blind_d/runs")
    p_rep.add_argument("--looks", default="docs/gan_designs/look")
    p_rep.add_argument("--report", default="docs/gan_designs.md")
    args = parser.parse_args(argv)
    with fail_cleanly():
        if args.command == "run":
            from experiments.experiment import parse_seeds

            run(parse_seeds(args.seeds), Path(args.out), args.jobs, args.overrides, args.num_samples, args.config)
        elif args.command == "look":
            written = look([Path(r) for r in args.runs], args.step, Path(args.out))
            print(f"{len(written)} new look files in {args.out}")
        else:
            write_report(Path(args.summaries), Path(args.looks), Path(args.report))
            print(f"wrote {args.report}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
