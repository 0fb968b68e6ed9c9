"""Probes built apart (issue 34, sections 2 and 3; docs/probes_apart.md): the arms, the training loop, the
"learns" rule fixed before the numbers, and the command line.

    python -m experiments.probe_apart run --probes bars --arms conv global --seeds 0 1 --out docs/probes_apart/runs
    python -m experiments.probe_apart table --out docs/probes_apart/runs

`run` trains one classifier per (probe, arm, seed) on fresh pairs every step (positives and their negatives,
experiments/probe_apart_data.py) and writes one JSON summary per run (test accuracy, steps, CPU seconds, the
machine, the date, the exact command) under OUT/<probe>/<arm>/seed<s>.json, skipping those that exist.
`table` prints the Markdown tables of every summary under OUT: accuracy, the count of runs that learn (the rule
below) and where each block run's attention looks.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from experiments import probe_apart_data as data
from experiments.block_designs import DESIGNS, with_position
from experiments.probe_apart_model import (
    BLOCK_SEED,
    MLP_HIDDEN,
    ProbeNet,
    block_look,
    block_side,
    position_zeroed,
    receptive_field,
)
from gan.cli import fail_cleanly
from gan.errors import UserError
from tools.report import machine_line

# The arms as plain data: the two controls and issue 34's designs (experiments/block_designs.py). `block`: None
# (no block) or the arm's NonLocalBlock options; `position`: the relative position term over the whole map the
# block sits on (position_max_side = that map's side: 8 in bars, 24 in dots); `readout`: overrides the probe's
# read-out ("mlp": the global control); `block_lr_mult`: the block's learning rate over the base one.
ARMS: dict[str, dict] = {
    "conv": {"block": None},  # the blind arm: no unit sees both objects
    "global": {"block": None, "readout": "mlp"},  # the positive control: an MLP on the whole last map
    **DESIGNS,
}
CONTROLS = ("conv", "global")


def block_options(arm: str, probe: str) -> dict | None:
    """The arm's NonLocalBlock options on `probe` (None: no block)."""
    spec = ARMS[arm]
    return with_position(spec["block"], spec.get("position", False), block_side(probe, data.PROBES[probe].resolution))


# The "learns" rule of section 3, fixed before any block runs: a run learns when its test accuracy exceeds
# the conv arm's mean on the same probe by more than twice the larger of the conv arm's seed std and the
# binomial standard error at chance of one run's test set (0.5 / sqrt(test images); 0.0158 at 1,000 images).
# A design opens "reliably" only if every one of its runs, every seed of every configuration, learns; counts
# are reported as counts ("k of n").
def learn_threshold(conv_accs: list[float], test_images: int) -> float:
    """The accuracy a run must exceed to count as learning, from the conv arm's accuracies on its probe."""
    if not conv_accs:
        raise ValueError("the learns rule needs the conv arm's runs on the same probe")
    sd = statistics.stdev(conv_accs) if len(conv_accs) > 1 else 0.0
    return statistics.mean(conv_accs) + 2 * max(sd, 0.5 / math.sqrt(test_images))


def learns_count(accs: list[float], threshold: float) -> tuple[int, int]:
    """(runs above the threshold, runs): "k of n"; reliable only when k == n."""
    return sum(a > threshold for a in accs), len(accs)


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 250) -> float:
    with torch.no_grad():
        logits = torch.cat([model(x[k : k + batch]) for k in range(0, len(x), batch)])
    return float(((logits > 0).float() == y).float().mean())


def build(probe: str, arm: str, seed: int, mlp_hidden: int = MLP_HIDDEN) -> ProbeNet:
    """The arm's classifier at `seed`: the trunk and head from the global stream, the block from its own."""
    spec, gen = ARMS[arm], data.PROBES[probe]
    options = block_options(arm, probe)
    torch.manual_seed(seed)
    return ProbeNet(
        probe,
        gen.channels,
        gen.resolution,
        block=options,
        readout=spec.get("readout"),
        block_seed=seed + BLOCK_SEED,
        mlp_hidden=mlp_hidden,
    )


def train_one(probe: str, arm: str, seed: int, args: argparse.Namespace) -> dict:
    """Trains one run on fresh pairs (step s: items (s - 1) h .. s h - 1 of the training stream, h = batch / 2,
    each with its negative) and returns its summary."""
    spec = ARMS[arm]
    model = build(probe, arm, seed, args.mlp_hidden)
    block_params = list(model.block.parameters()) if model.block is not None else []
    ids = {id(p) for p in block_params}
    groups = [{"params": [p for p in model.parameters() if id(p) not in ids], "lr": args.lr}]
    if block_params:
        groups.append({"params": block_params, "lr": args.lr * spec.get("block_lr_mult", 1.0)})
    opt = torch.optim.Adam(groups)
    test_items = data.items(probe, data.TEST_SEED, 0, args.test_pairs)
    x_test, y_test = data.stack(test_items)
    half, log = args.batch // 2, []
    cpu0, wall0 = time.process_time(), time.time()
    for step in range(1, args.steps + 1):
        x, y = data.stack(data.items(probe, data.TRAIN_SEED, (step - 1) * half, half))
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % args.log_every == 0 or step == args.steps:
            entry = {"step": step, "loss": loss.item(), "test_acc_200": accuracy(model, x_test[::5], y_test[::5])}
            if model.block is not None:
                entry["gate"] = model.block.gate_value()
            log.append(entry)
            print(f"  {probe} {arm} seed {seed} step {step}: loss {entry['loss']:.4f}, acc {entry['test_acc_200']:.3f}")
    cpu_s, wall_s = time.process_time() - cpu0, time.time() - wall0
    result = {
        "probe": probe,
        "arm": arm,
        "seed": seed,
        "spec": spec,
        "data": data.settings(probe),
        "trunk": model_description(model),
        "receptive_field": receptive_field(),
        "params": sum(p.numel() for p in model.parameters()),
        "steps": args.steps,
        "batch": args.batch,
        "lr": args.lr,
        "mlp_hidden": args.mlp_hidden if spec.get("readout") == "mlp" else None,
        "test_images": len(y_test),
        "test_acc": accuracy(model, x_test, y_test),
        "cpu_s": cpu_s,
        "wall_s": wall_s,
        "machine": machine_line(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": args.command_line,
        "log": log,
    }
    if model.block is not None:  # where the block looks, on 64 test positives
        masks = data.box_masks(test_items[:64], data.PROBES[probe].resolution)[:64]
        result["block"] = {"gate": model.block.gate_value(), **block_look(model, x_test[:64], masks)}
        if model.block.position_max_side:  # the whole test set with the position term zeroed
            with position_zeroed(model.block):
                result["block"]["test_acc_no_position"] = accuracy(model, x_test, y_test)
    return result


def model_description(model: ProbeNet) -> str:
    return f"{model.layers}".replace("\n", " ") + f"; block after layer {model.block_after}; read-out {model.readout}"


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    for probe in args.probes:
        for arm in args.arms:
            for seed in args.seeds:
                path = Path(args.out) / probe / arm / f"seed{seed}.json"
                if path.exists():
                    continue
                result = train_one(probe, arm, seed, args)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(result, indent=1) + "\n")
                print(
                    f"{probe} {arm} seed {seed}: test acc {result['test_acc']:.3f}, {result['cpu_s']:.0f} CPU s",
                    flush=True,
                )


def summaries(out: Path) -> dict[tuple[str, str], list[dict]]:
    """Every run summary under `out`, grouped by (probe, arm), seeds in order."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for path in sorted(out.glob("*/*/seed*.json")):
        r = json.loads(path.read_text())
        groups.setdefault((r["probe"], r["arm"]), []).append(r)
    return {k: sorted(v, key=lambda r: r["seed"]) for k, v in groups.items()}


def table(args: argparse.Namespace) -> None:
    """The Markdown tables of the summaries under --out for --probes, --arms and --seeds: accuracy and learns
    counts per (probe, arm) against the conv runs of those seeds, each block arm's count over the probes shown,
    and where each block run's attention looks (with the position term zeroed too, for arms that have one)."""
    groups = {
        k: [r for r in rs if r["seed"] in args.seeds]
        for k, rs in summaries(Path(args.out)).items()
        if k[0] in args.probes
    }
    groups = {k: rs for k, rs in groups.items() if rs}
    shown = {k: rs for k, rs in groups.items() if k[1] in args.arms}
    if not shown:
        raise UserError(f"no run summaries under {args.out} for these probes, arms and seeds: run `run` first")
    order = sorted(shown, key=lambda k: (k[0], list(ARMS).index(k[1])))
    thresholds = {
        probe: learn_threshold([r["test_acc"] for r in rs], rs[0]["test_images"])
        for (probe, arm), rs in groups.items()
        if arm == "conv"
    }
    learns = {
        (probe, arm): learns_count([r["test_acc"] for r in shown[(probe, arm)]], thresholds[probe])
        for probe, arm in order
        if arm != "conv" and probe in thresholds
    }
    print(
        "| probe | arm | seeds | test accuracy per seed | mean | learns (rule) | last batch's loss per seed | steps | "
        "CPU s per run |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for probe, arm in order:
        rs = shown[(probe, arm)]
        accs = [r["test_acc"] for r in rs]
        losses = ", ".join(f"{r['log'][-1]['loss']:.4f}" for r in rs)
        counted = "{} of {}".format(*learns[(probe, arm)]) if (probe, arm) in learns else "-"
        print(
            f"| {probe} | `{arm}` | {', '.join(str(r['seed']) for r in rs)} | {', '.join(f'{a:.3f}' for a in accs)} | "
            f"{statistics.mean(accs):.3f} | {counted} | {losses} | {rs[0]['steps']} | "
            f"{statistics.mean(r['cpu_s'] for r in rs):.0f} |"
        )
    for probe, t in sorted(thresholds.items()):
        print(f"\n{probe}: a run learns above {t:.3f} (the conv arm's mean + 2 x max(seed std, binomial SE))")
    block_arms = [a for a in ARMS if ARMS[a]["block"] is not None and any(arm == a for _, arm in learns)]
    if block_arms:
        print("\nEach block arm over the probes here (reliable only if every run learns):\n")
        for a in block_arms:
            k, n = (sum(c[i] for (_, arm), c in learns.items() if arm == a) for i in (0, 1))
            print(f"- `{a}`: {k} of {n} runs learn{' (every run here)' if k == n else ''}")
        _look_table(order, shown, thresholds)
    runs = [r for rs in shown.values() for r in rs]
    print(f"\n{len(runs)} runs, {sum(r['cpu_s'] for r in runs):.0f} CPU s in all; machine: {runs[0]['machine']}")


def _look_table(order: list[tuple[str, str]], shown: dict, thresholds: dict[str, float]) -> None:
    """Where each block run's attention looks: each object's queries on the other object (uniform's share in
    brackets); for arms with a position term, the same shares and the test accuracy with that term zeroed."""
    print(
        "\n| probe | arm | seed | test accuracy | learns | gate | object 0's queries on object 1 (uniform) | "
        "object 1's on object 0 (uniform) | without the position term: 0 on 1, 1 on 0; accuracy |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for probe, arm in order:
        for r in (x for x in shown[(probe, arm)] if "block" in x):
            b = r["block"]
            learned = "-" if probe not in thresholds else ("yes" if r["test_acc"] > thresholds[probe] else "no")
            zeroed = (
                f"{b['look_0_on_1_no_position']:.3f}, {b['look_1_on_0_no_position']:.3f}; {b['test_acc_no_position']:.3f}"
                if "look_0_on_1_no_position" in b
                else "-"
            )
            print(
                f"| {probe} | `{arm}` | {r['seed']} | {r['test_acc']:.3f} | {learned} | {b['gate']:.4f} | "
                f"{b['look_0_on_1']:.3f} ({b['look_0_on_1_uniform']:.3f}) | "
                f"{b['look_1_on_0']:.3f} ({b['look_1_on_0_uniform']:.3f}) | {zeroed} |"
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("run", "table"))
    parser.add_argument("--probes", nargs="+", choices=list(data.PROBES), default=list(data.PROBES))
    parser.add_argument(
        "--arms", nargs="+", choices=list(ARMS), default=list(CONTROLS), help="run: these arms; table: only these"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="run: these seeds; table: only these")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=32, help="images per step: half positives, half their negatives")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--test-pairs", type=int, default=500, help="held-out pairs (2 images each), fixed seed")
    parser.add_argument("--mlp-hidden", type=int, default=MLP_HIDDEN, help="hidden width of the global arm's MLP")
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--out", default="runs/probes_apart")
    args = parser.parse_args(argv)
    if args.batch < 2 or args.batch % 2:
        parser.error(f"--batch must be an even number >= 2; got {args.batch}")
    args.command_line = shlex.join(
        ["python", "-m", "experiments.probe_apart", *(sys.argv[1:] if argv is None else argv)]
    )
    with fail_cleanly():
        {"run": run, "table": table}[args.command](args)


if __name__ == "__main__":
    main()
