"""Training the long-range probe: the loop every probe shares (`fit`, also the clip probe's), one run's summary
(`train_one`), the block's state over training, and `run`, which writes one JSON per (arm, depth, seed) under
the cell's folder (`cell_tag`) and skips those already there."""

from __future__ import annotations

import argparse
import datetime
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from experiments.erf import effective_rf
from experiments.long_range_data import TEST_SEED, TRAIN_SEED, pair_stream, pairs
from experiments.long_range_model import ARMS, Probe, block_options, block_seed, position_zeroed, probe_rf
from experiments.mismatch import object_look_share
from gan.attention import gate_of
from tools.report import machine_line


def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch: int = 250) -> float:
    with torch.no_grad():
        logits = torch.cat([model(x[k : k + batch]) for k in range(0, len(x), batch)])
    return float(((logits > 0).float() == y).float().mean())


def block_state(model: nn.Module, probe_x: Tensor) -> dict[str, float]:
    """The gate, the last step's gradient norms reaching theta/phi/g/out, attention entropy, logit spread,
    the block's residual over its input (||z - x|| / ||x||) and where the left object's queries look."""
    block = model.attention
    grads = {
        name: math.sqrt(
            sum(float(p.grad.pow(2).sum()) for p in getattr(block, name).parameters() if p.grad is not None)
        )
        for name in ("theta", "phi", "g", "out")
        if hasattr(block, name)  # pairwise="l2" ties phi to theta
    }
    image_probe = hasattr(model, "block_input")  # the clip probe (long_range_clips) has its block after the stem
    with torch.no_grad():  # the calls of the first runs, in their order (spectral norm steps in each)
        h = model.block_input(probe_x) if image_probe else model.stem(probe_x)
        q, k, _, _ = block.project(h)  # (B, HW, Cqk), (B, N, Cqk)
        heads = lambda t: t.unflatten(-1, (block.heads, -1)).transpose(1, 2)  # noqa: E731 (B, h, HW, Cqk / h)
        logits = block.pairwise_logits(heads(q), heads(k))  # (B, h, HW, N): content logits, as the block scales them
        z, p = block(h, return_attention=True)  # weights with the position term, if any: (B, [h,] HW, N)
        entropy = float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean() / math.log(k.shape[1]))  # mean over heads
        residual = float((z - h).norm() / h.norm())
    state = {f"grad_{n}": g for n, g in grads.items()}
    state.update(
        entropy_ratio=entropy,
        logit_std=float(logits.std()),
        logit_range=float(logits.amax(-1).sub(logits.amin(-1)).mean()),
        residual=residual,
    )
    state["gate_kind"], state["gate_value"] = gate_of(block)
    state["gamma"] = block.gamma.item() if block.gate == "gamma" else float("nan")
    state["out_weight_norm"] = float(block.out.weight.detach().norm())
    if hasattr(block, "log_tau"):
        state["log_tau"] = block.log_tau.item()
    if image_probe:
        state.update(zip(("look_share", "look_uniform"), look_share(model, probe_x)))
        state["alive"] = alive(model, probe_x)
    return state


def alive(model: nn.Module, x: Tensor) -> float:
    """The fraction of the trunk's outputs (every channel and position) above 0, i.e. passed by the final ReLU:
    at 0 the read-out is constant and no gradient reaches any weight (a dead trunk)."""
    with torch.no_grad():
        return float((model.trunk(x) > 0).float().mean())


def look_share(model: nn.Module, x: Tensor) -> tuple[float, float]:
    """Where the probe block's left-object queries look on images `x` (`mismatch.object_look_share`)."""
    with torch.no_grad():
        h = model.block_input(x)
        _, attn = model.attention(h, return_attention=True)  # (B, Nq, N), or (B, heads, Nq, N)
    attn = attn.mean(1) if attn.dim() == 4 else attn  # several heads: their mean attention
    pool = model.attention.pool or (1, 1)
    hq, wq = h.shape[2:]
    return object_look_share(attn, (hq, wq), (-(-hq // pool[0]), -(-wq // pool[1])), x)


def fit(
    model: nn.Module,
    spec: dict,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    args: argparse.Namespace,
    seed: int,
    name: str,
) -> tuple[list[dict], float]:
    """The loop every probe shares; returns (log, CPU s). `train` and `test` hold n coherent items, then
    their n incoherent versions (`pairs`); each step draws batch / 2 items (order fixed by `seed`) with their
    own incoherent versions. `train` may instead be a function of the step (1, 2, ...) returning that step's
    batch (x, y): a stream of fresh items, nothing to memorise. Adam at args.lr, the block (`model.attention`,
    if any) at spec's `attn_lr_mult` x."""
    attn_params = list(model.attention.parameters()) if model.attention is not None else []
    attn_ids = {id(p) for p in attn_params}
    groups = [{"params": [p for p in model.parameters() if id(p) not in attn_ids], "lr": args.lr}]
    if attn_params:
        groups.append({"params": attn_params, "lr": args.lr * spec.get("attn_lr_mult", 1.0)})
    opt = torch.optim.Adam(groups, betas=(0.9, 0.999))

    x_test, y_test = test
    if callable(train):
        draw = train
    else:
        x_train, y_train = train
        n_train = len(x_train) // 2
        order = torch.Generator().manual_seed(seed)

        def draw(step: int) -> tuple[Tensor, Tensor]:  # noqa: ARG001 (the order generator advances instead)
            k = torch.randint(n_train, (args.batch // 2,), generator=order)
            k = torch.cat([k, k + n_train])  # each drawn item with its own incoherent version
            return x_train[k], y_train[k]

    log, start = [], time.process_time()
    for step in range(1, args.steps + 1):
        x, y = draw(step)
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if step % args.log_every == 0 or step == 1:
            entry = {
                "step": step,
                "loss": loss.item(),
                "test_acc_256": accuracy(model, x_test[::4][:256], y_test[::4][:256]),
            }
            if model.attention is not None:
                entry.update(block_state(model, x_test[:16]))
            log.append(entry)
            print(
                f"  {name} step {step}: "
                + ", ".join(f"{k} {v:.4g}" for k, v in entry.items() if k not in ("step", "gate_kind")),
                flush=True,
            )
        opt.step()
    return log, time.process_time() - start


def train_one(arm: str, depth: int, seed: int, args: argparse.Namespace, weights_path: Path) -> dict:
    spec = ARMS[arm]
    view = spec.get("view", "full")
    torch.manual_seed(seed)
    model = Probe(
        depth,
        args.width,
        attention=block_options(spec, args.resolution, args.stage),
        stage=args.stage,
        readout=args.readout,
        block_seed=block_seed(seed, args.block_init),
    )
    if args.fresh:  # every step draws new images: the model cannot fit a fixed set instead of the rule
        if view != "full":
            raise ValueError("--fresh streams full images; the half-view arms use the fixed set")
        train = pair_stream(args.data, args.resolution, TRAIN_SEED, args.batch // 2, args.steps, args.variant)
    else:
        train = pairs(args.resolution, TRAIN_SEED, args.train_pairs, view, args.data, args.variant)
    x_test, y_test = pairs(args.resolution, TEST_SEED, args.test_pairs, view, args.data, args.variant)
    name = f"{arm} depth {depth} seed {seed}"
    log, cpu_s = fit(model, spec, train, (x_test, y_test), args, seed, name)

    save_file(model.state_dict(), str(weights_path))
    erf = effective_rf(model.trunk, x_test[:64]) if view == "full" else None
    look = look_share(model.eval(), x_test[:64]) if model.attention is not None and view == "full" else (None, None)
    result = {
        "arm": arm,
        "depth": depth,
        "seed": seed,
        "spec": spec,
        "view": view,
        "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "theoretical_rf": probe_rf(depth),
        "test_acc": accuracy(model, x_test, y_test),
        "erf_r90": erf.r90 if erf else None,
        "erf_profile": [[float(d), float(m)] for d, m in zip(erf.distances, erf.mass)] if erf else None,
        "look_share": look[0],
        "look_uniform": look[1],
        "alive": alive(model, torch.cat([x_test[:32], x_test[-32:]])) if view == "full" else None,  # both classes
        "cpu_s": cpu_s,
        "log": log,
        "settings": {k: getattr(args, k) for k in SETTINGS},
        "machine": machine_line(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": getattr(args, "command_line", None),  # set by the command line (long_range_probe.main)
    }
    if look[0] is not None and model.attention.position_max_side:  # did the position term do the looking?
        with position_zeroed(model.attention):
            result["look_share_no_position"] = look_share(model, x_test[:64])[0]
            result["test_acc_no_position"] = accuracy(model, x_test, y_test)
    return result


SETTINGS = (
    "steps",
    "batch",
    "width",
    "lr",
    "resolution",
    "train_pairs",
    "test_pairs",
    "stage",
    "readout",
    "fresh",
    "data",
    "variant",
    "block_init",
)
# The probe's configuration that worked (docs/long_range.md, "Longer training") for the settings that name a cell.
CELL_DEFAULTS = {
    "stage": 0, "readout": "sum", "fresh": False, "data": "builtin", "variant": "objects", "width": 8, "batch": 32,
    "block_init": "own",
}  # fmt: skip


def cell_tag(args: argparse.Namespace) -> str:
    """The results folder of one probe configuration: r64 for the configuration that worked, then one suffix per
    setting that differs from it, e.g. r64-stage1, r64-mean-fresh, r64-w32."""
    short = {
        "stage": "stage{}",
        "readout": "{}",
        "fresh": "fresh",
        "data": "{}",
        "variant": "{}",
        "width": "w{}",
        "batch": "b{}",
        "block_init": "{}init",
    }
    return f"r{args.resolution}" + "".join(
        "-" + short[k].format(getattr(args, k)) for k, v in CELL_DEFAULTS.items() if getattr(args, k) != v
    )


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    out = Path(args.out)
    for arm in args.arms:
        for depth in args.depths:
            for seed in args.seeds:
                path = out / cell_tag(args) / arm / f"depth{depth}" / f"seed{seed}.json"
                if path.exists():
                    add_look_share(path, args)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                result = train_one(arm, depth, seed, args, path.with_suffix(".safetensors"))
                path.write_text(json.dumps(result, indent=1))
                print(
                    f"{arm} depth {depth} seed {seed}: test acc {result['test_acc']:.3f}, "
                    f"{result['params']} params, {result['cpu_s']:.0f} CPU s",
                    flush=True,
                )


def add_look_share(path: Path, args: argparse.Namespace) -> None:
    """Adds `look_share` and `alive` to a finished attention run's JSON that lacks them, from its saved weights."""
    result = json.loads(path.read_text())
    weights = path.with_suffix(".safetensors")
    if "alive" in result or result["spec"]["attention"] is None or not weights.exists():
        return
    model = Probe(
        result["depth"],
        args.width,
        attention=block_options(result["spec"], args.resolution, args.stage),
        stage=args.stage,
        readout=args.readout,
    )
    model.load_state_dict(load_file(str(weights)))
    x_test, _ = pairs(args.resolution, TEST_SEED, args.test_pairs, result["view"], args.data, args.variant)
    result["look_share"], result["look_uniform"] = look_share(model.eval(), x_test[:64])
    result["alive"] = alive(model, torch.cat([x_test[:32], x_test[-32:]]))  # both classes
    path.write_text(json.dumps(result, indent=1))
