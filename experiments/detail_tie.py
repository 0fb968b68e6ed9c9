"""Does a conv D with SAGAN's 64x64 geometry see a tie in fine detail? (issue 25, second route)

The probe (experiments/long_range_probe.py) at depth 3 (four down-samplings to 4x4, SAGAN's D at 64x64
without attention) trained on coherent vs incoherent pairs of each variant of the built-in data: `objects`
(the right object mirrors the left one's shape, colour and row) and `detail` (only the mirrored 2x2-px bit
pattern inside the objects differs). This script summarises those runs: each run's test AUC, recomputed
from its saved weights on its own test pairs, one summary JSON per run, the table and the verdict of
docs/detail_tie.md.

    P="env OMP_NUM_THREADS=1 python -m experiments.long_range_probe run --arms conv --depths 3 --steps 800 \\
       --width 16 --batch 32 --train-pairs 1024 --log-every 100"
    $P --variant detail --out runs/detail_tie/detail; $P --variant objects --out runs/detail_tie/objects
    $P --variant detail --seeds 0 --steps 2000 --log-every 250 --out runs/detail_tie/detail_2000
    python -m experiments.detail_tie --runs runs/detail_tie --summaries docs/detail_tie
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from safetensors.torch import load_file

from experiments.experiment import compare, verdict
from experiments.long_range_probe import TEST_SEED, Probe, pairs
from experiments.mismatch import rank_auc
from gan.synthetic import VARIANTS


@torch.no_grad()
def held_out_scores(result: dict, weights: Path) -> tuple[float, float]:
    """(AUC, accuracy) of a saved probe on its run's test pairs, coherent as positives, in eval mode."""
    s = result["settings"]
    model = Probe(result["depth"], s["width"], attention=result["spec"]["attention"])
    model.load_state_dict(load_file(str(weights)))
    model.eval()
    x, y = pairs(s["resolution"], TEST_SEED, s["test_pairs"], result["view"], variant=s.get("variant", "objects"))
    logits = torch.cat([model(x[k : k + 250]) for k in range(0, len(x), 250)])  # (2n,)
    return rank_auc(logits[y == 1], logits[y == 0]), float(((logits > 0).float() == y).float().mean())


def summarise(runs: Path, summaries: Path) -> dict[tuple[str, int], list[dict]]:
    """One summary JSON per run (the run's record plus `test_auc` and `test_acc_eval`) under `summaries`,
    named <variant>_<arm>_depth<d>_steps<s>_seed<k>.json; returns the summaries by (variant, steps)."""
    summaries.mkdir(parents=True, exist_ok=True)
    groups: dict[tuple[str, int], list[dict]] = {}
    for path in sorted(runs.glob("*/r*/*/depth*/seed*.json")):
        result = json.loads(path.read_text())
        variant, steps = result["settings"].get("variant", "objects"), result["settings"]["steps"]
        result["test_auc"], result["test_acc_eval"] = held_out_scores(result, path.with_suffix(".safetensors"))
        name = f"{variant}_{result['arm']}_depth{result['depth']}_steps{steps}_seed{result['seed']}.json"
        (summaries / name).write_text(json.dumps(result, indent=1) + "\n")
        groups.setdefault((variant, steps), []).append(result)
    return groups


def mean_std(xs: list[float]) -> str:
    return f"{xs[0]:.3f} (1 seed)" if len(xs) == 1 else f"{statistics.mean(xs):.3f} +/- {statistics.stdev(xs):.3f}"


def print_report(groups: dict[tuple[str, int], list[dict]]) -> None:
    """The table (one row per variant and step count) and, at each step count run for both variants, the
    verdict on detail vs objects by the repository's rule (|diff| > 2 x pooled std)."""
    print("| variant | steps | seeds | test AUC (mean +/- std) | seeds: AUC | test accuracy | CPU s per run |")
    print("|---|---|---|---|---|---|---|")
    for variant, steps in sorted(groups, key=lambda k: (VARIANTS.index(k[0]), k[1])):
        rs = sorted(groups[(variant, steps)], key=lambda r: r["seed"])
        aucs = [r["test_auc"] for r in rs]
        print(
            f"| `{variant}` | {steps} | {len(rs)} | {mean_std(aucs)} | {', '.join(f'{a:.3f}' for a in aucs)} | "
            f"{mean_std([r['test_acc'] for r in rs])} | {statistics.mean(r['cpu_s'] for r in rs):.0f} |"
        )
    for steps in sorted({s for v, s in groups if v == "detail" and ("objects", s) in groups}):
        auc = {v: [r["test_auc"] for r in groups[(v, steps)]] for v in ("detail", "objects")}
        c = compare("detail", auc["detail"], auc["objects"], True)
        outcome = verdict(c) if c.seeds < 2 else f"{'beyond' if c.exceeds else 'within'} the seed spread"
        print(
            f"\ndetail vs objects at {steps} steps, test AUC: diff {c.diff:+.3f}, pooled std {c.pooled_std:.3f}: {outcome}"
        )
    first = next(iter(groups.values()))[0]
    print(f"\nMachine: {first['machine']}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs/detail_tie", help="one probe --out per variant below this")
    parser.add_argument("--summaries", default="docs/detail_tie")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print_report(summarise(Path(args.runs), Path(args.summaries)))


if __name__ == "__main__":
    main()
