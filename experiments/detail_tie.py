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
from experiments.long_range_data import TEST_SEED, pairs
from experiments.long_range_model import Probe
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


def summarise(runs: Path, summaries: Path) -> dict[tuple[str, str, int], list[dict]]:
    """One summary JSON per run (the run's record plus `test_auc` and `test_acc_eval`) under `summaries`,
    named <variant>_<arm>_depth<d>_steps<s>_seed<k>.json, written for the runs under `runs` that have none
    yet (their weights are needed once); returns every summary by (variant, arm, steps). The report thus
    regenerates from the committed summaries alone."""
    summaries.mkdir(parents=True, exist_ok=True)
    for path in sorted(runs.glob("*/r*/*/depth*/seed*.json")):
        result = json.loads(path.read_text())
        variant, steps = result["settings"].get("variant", "objects"), result["settings"]["steps"]
        name = f"{variant}_{result['arm']}_depth{result['depth']}_steps{steps}_seed{result['seed']}.json"
        if not (summaries / name).exists():
            result["test_auc"], result["test_acc_eval"] = held_out_scores(result, path.with_suffix(".safetensors"))
            (summaries / name).write_text(json.dumps(result, indent=1) + "\n")
    groups: dict[tuple[str, str, int], list[dict]] = {}
    for path in sorted(summaries.glob("*_depth*_steps*_seed*.json")):
        r = json.loads(path.read_text())
        groups.setdefault((r["settings"].get("variant", "objects"), r["arm"], r["settings"]["steps"]), []).append(r)
    return groups


def mean_std(xs: list[float]) -> str:
    return f"{xs[0]:.3f} (1 seed)" if len(xs) == 1 else f"{statistics.mean(xs):.3f} +/- {statistics.stdev(xs):.3f}"


def _outcome(c) -> str:
    return verdict(c) if c.seeds < 2 else f"{'beyond' if c.exceeds else 'within'} the seed spread"


def print_report(groups: dict[tuple[str, str, int], list[dict]]) -> None:
    """The table (one row per variant, arm and step count), then the verdicts by the repository's rule
    (|diff| > 2 x pooled std): the conv D's detail tie against its objects tie, and each attention arm on a
    variant against the conv arm on it, at equal steps."""
    print(
        "| variant | arm | steps | seeds | test AUC (mean +/- std) | seeds: AUC | test accuracy | "
        "grad theta / grad g (last log) | CPU s per run |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    order = sorted(groups, key=lambda k: (VARIANTS.index(k[0]), k[2], k[1] != "conv", k[1]))
    for variant, arm, steps in order:
        rs = sorted(groups[(variant, arm, steps)], key=lambda r: r["seed"])
        aucs = [r["test_auc"] for r in rs]
        grads = [
            r["log"][-1]["grad_theta"] / max(r["log"][-1]["grad_g"], 1e-12) for r in rs if "grad_g" in r["log"][-1]
        ]
        print(
            f"| `{variant}` | `{arm}` | {steps} | {len(rs)} | {mean_std(aucs)} | {', '.join(f'{a:.3f}' for a in aucs)} | "
            f"{mean_std([r['test_acc'] for r in rs])} | {', '.join(f'{g:.2g}' for g in grads) or '-'} | "
            f"{statistics.mean(r['cpu_s'] for r in rs):.0f} |"
        )
    auc = {k: [r["test_auc"] for r in rs] for k, rs in groups.items()}
    print()
    for variant, arm, steps in order:
        if arm == "conv" and variant == "detail" and ("objects", "conv", steps) in auc:
            c = compare("detail", auc[(variant, arm, steps)], auc[("objects", "conv", steps)], True)
            print(f"- conv, detail vs objects at {steps} steps, test AUC: diff {c.diff:+.3f}, "
                  f"pooled std {c.pooled_std:.3f}: {_outcome(c)}")  # fmt: skip
        elif arm != "conv" and (variant, "conv", steps) in auc:
            c = compare(arm, auc[(variant, arm, steps)], auc[(variant, "conv", steps)], True)
            print(f"- `{arm}` vs conv on `{variant}` at {steps} steps, test AUC: diff {c.diff:+.3f}, "
                  f"pooled std {c.pooled_std:.3f}: {_outcome(c)}")  # fmt: skip
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
