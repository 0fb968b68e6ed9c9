"""The direct long-range probe: can a D-like classifier tell coherent images from their incoherent versions?

Coherent images are `CoherenceDataset` items (the right object mirrors the left one); their incoherent
versions (`CoherenceDataset.incoherent`) have the right object redrawn independently on the same
background, so only the long-range relation differs. Each classifier is built from the repository's own D
blocks: the optimised first block, optionally ONE non-local block at that (highest-resolution) stage, then
`depth` residual down-blocks, ReLU, global sum pooling and a linear head, spectral norm everywhere as in D.
See docs/long_range.md for the design, the argument and the measured results.

    python experiments/long_range_probe.py run --arms conv attn --depths 0 1 2 3 --seeds 0 1 2
    python experiments/long_range_probe.py report
    python experiments/long_range_probe.py run --variant detail ...   # the tie in fine detail (docs/detail_tie.md)

`run` writes one JSON per (arm, depth, seed) under --out and skips those already there; `report` prints
the Markdown tables of docs/long_range/log.md and draws its plot.

The cells of docs/attention_opens.md (what decides whether the block opens) vary one setting at a time from
the configuration that worked; each cell has its own folder (r64, r64-stage1, r64-conv, r64-black, ...):

    python -m experiments.long_range_probe run --width 8 --train-pairs 1024 --steps 1000 --depths 1 \
        --arms attn_lr10 --stage 1 --out docs/attention_opens/runs     # --readout, --fresh, --data, --batch
    python -m experiments.long_range_probe cells --depths 1 --out docs/attention_opens/runs
"""

from __future__ import annotations

import argparse
import colorsys
import functools
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from experiments import long_range_plots
from experiments.clips import CoherentClips
from experiments.erf import effective_rf, theoretical_rf
from experiments.experiment import compare, verdict
from experiments.gates import GATE_LABELS
from experiments.mismatch import object_look_share
from gan.attention import NonLocalBlock, gate_of
from gan.layers import DBlock, DBlockOptimized, conv2d, linear
from gan.synthetic import VARIANTS, CoherenceDataset
from gan.viz import save_image_grid
from tools.report import machine_line

# Arms as plain data. `attention`: None (no block) or NonLocalBlock options (the levers: gate, gamma_init,
# logit_scale, qk_spectral_norm); `attn_lr_mult`: the block's learning rate over the base one; `view`: the part
# of the image the model sees ("full", or one half only: the chance-level control); `reference`: the attention
# arm a lever is judged against in the report (default "attn").
ARMS: dict[str, dict] = {
    "conv": {"attention": None},
    "attn": {"attention": {}},
    "attn_zero_init": {"attention": {"gate": "zero_init"}},
    "attn_gamma0.1": {"attention": {"gamma_init": 0.1}},
    "attn_inv_sqrt_d": {"attention": {"logit_scale": "inv_sqrt_d"}},  # d_qk = W/8 = 1 at W = 8: the default exactly
    "attn_qk4": {"attention": {"qk_channels": 4}},  # the wider-query reference for the next arm
    "attn_qk4_inv_sqrt_d": {"attention": {"qk_channels": 4, "logit_scale": "inv_sqrt_d"}, "reference": "attn_qk4"},
    "attn_learned_temp": {"attention": {"logit_scale": "learned"}},
    "attn_qk_no_sn": {"attention": {"qk_spectral_norm": False}},
    "attn_lr10": {"attention": {}, "attn_lr_mult": 10.0},
    "attn_lr10_qk4": {"attention": {"qk_channels": 4}, "attn_lr_mult": 10.0, "reference": "attn_lr10"},
    # block designs built to open (issue 26): the l2 and cosine pairwise functions, per-channel gains
    "attn_l2": {"attention": {"pairwise": "l2"}},
    "attn_cosine": {"attention": {"pairwise": "cosine"}},
    "attn_channel": {"attention": {"gate": "channel"}},
    "conv_right_half": {"attention": None, "view": "right"},
}
# Issue 26's comparison: each design and lever alone, with the default 1 query/key channel at width 8 and with 4
# (as at width 32, where the second probe failed): attn_qk4 and attn_lr10_qk4 above, and these.
for _name in ("attn_zero_init", "attn_l2", "attn_cosine", "attn_channel"):
    ARMS[f"{_name}_qk4"] = {"attention": {**ARMS[_name]["attention"], "qk_channels": 4}, "reference": "attn_qk4"}
# The tie in fine detail (docs/detail_tie.md): keys and values not pooled (the 2x2 max-pool mixes 4x4-px
# regions, two pattern cells a side) and 8 query/key channels, with either lever.
for _name in ("attn_zero_init", "attn_lr10"):
    ARMS[f"{_name}_nopool_qk8"] = {
        **ARMS[_name],
        "attention": {**ARMS[_name]["attention"], "subsample": False, "qk_channels": 8},
        "reference": _name,
    }
TRAIN_SEED, TEST_SEED = 100, 12345  # dataset seeds: one training set for every run, a disjoint test set
BLOCK_SEED = 7_000_000  # --block-init own: the block's weights of seed s come from their own generator, seeded s + this
BLOCK_INITS = ("own", "shared")


def block_seed(seed: int, block_init: str) -> int | None:
    """The `Probe(block_seed=...)` of a run: its own stream (`own`), or None (`shared`: the global stream)."""
    return seed + BLOCK_SEED if block_init == "own" else None


READOUTS = ("sum", "mean", "conv")  # conv: a spectrally normalised 1x1 conv and ReLU, then the sum


class Probe(nn.Module):
    """images (B, C, H, W) -> logit (B,): DBlockOptimized -> depth x DBlock -> ReLU, read-out, linear, with
    ONE NonLocalBlock after `stage` of the down-blocks (0: after the first block, the highest-resolution stage).

    `readout`: "sum" (global sum pooling, as SAGAN's D), "mean" (global mean pooling) or "conv" (a 1x1 conv
    and ReLU on the map, then the sum; the second probe of issue 26). `block_seed`: see below.
    """

    def __init__(
        self,
        depth: int,
        width: int,
        channels: int = 3,
        attention: dict | None = None,
        stage: int = 0,
        readout: str = "sum",
        block_seed: int | None = None,
    ) -> None:
        super().__init__()
        if not 0 <= stage <= depth:
            raise ValueError(f"the block's stage must be in 0..depth ({depth}); got {stage}")
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}; got {readout!r}")
        self.stage, self.readout = stage, readout
        self.stem = DBlockOptimized(channels, width, sn=True)
        self.attention = None
        if attention is not None:
            # block_seed: the block's weights come from a generator of their own, so the trunk and head are those
            # of the conv arm at the same seed whatever the block's design; None draws them between the stem's and
            # the down-blocks' from the global generator (the first runs of docs/attention_opens.md, --block-init
            # shared), which makes the trunk depend on the block's parameter shapes.
            with torch.random.fork_rng(devices=[], enabled=block_seed is not None):
                if block_seed is not None:
                    torch.manual_seed(block_seed)
                self.attention = NonLocalBlock(width, **attention)
        self.blocks = nn.Sequential(*[DBlock(width, width, downsample=True, sn=True) for _ in range(depth)])
        self.read = conv2d(width, width, 1, sn=True) if readout == "conv" else None
        self.head = linear(width, 1, sn=True)

    def block_input(self, x: Tensor) -> Tensor:
        """The map the non-local block sees: (B, width, H / 2^(stage+1), W / 2^(stage+1))."""
        return self.blocks[: self.stage](self.stem(x))

    def trunk(self, x: Tensor) -> Tensor:
        """The map before the final ReLU: (B, width, H / 2^(depth+1), W / 2^(depth+1)); the ERF is measured here
        (after the ReLU, a unit over plain background can be dead for every input and have no gradient)."""
        h = self.block_input(x)
        if self.attention is not None:
            h = self.attention(h)
        return self.blocks[self.stage :](h)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.trunk(x))
        if self.read is not None:
            h = F.relu(self.read(h))
        return self.head(h.mean(dim=(2, 3)) if self.readout == "mean" else h.sum(dim=(2, 3))).squeeze(1)


def probe_rf(depth: int) -> int:
    """Theoretical receptive field (pixels) of the conv path: the optimised block then `depth` down-blocks."""
    stem = [(3, 1), (3, 1), (2, 2)]  # conv3x3, conv3x3, avgpool2 (the shortcut's field is smaller)
    down = [(3, 1), (3, 1), (2, 2)]  # ReLU-conv3x3-ReLU-conv3x3-avgpool2
    return theoretical_rf(stem + down * depth)[0]


class BlackObjects(CoherenceDataset):
    """The second probe's images (issue 26): two objects of 9-12 px (at 64x64; 14-19% of the side) at opposite
    edges, the left one's left edge within 5 px (8%) of the border, on black; shapes disc, square and cross, a
    random hue. Coherent: the right object mirrors the left one (shape, size, row, colour); incoherent: it is
    drawn independently, as in `CoherenceDataset`."""

    def _draw_object(self, rng: np.random.Generator) -> tuple[int, int, int, int, np.ndarray]:
        r = self.resolution
        shape = int(rng.choice([0, 1, 3]))  # disc, square, cross (gan.synthetic.SHAPES)
        s = int(rng.integers(round(0.14 * r), round(0.19 * r) + 1))
        x0 = int(rng.integers(1, max(1, round(0.08 * r)) + 1))
        y0 = int(rng.integers(1, r - s))
        colour = np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.6, 1.0), 1.0))[: self.channels]
        return shape, s, x0, y0, colour

    def _background(self, rng: np.random.Generator) -> np.ndarray:  # noqa: ARG002 (black: nothing to draw)
        return np.zeros((self.channels, self.resolution, self.resolution))


DATASETS = {"builtin": CoherenceDataset, "black": BlackObjects}


@functools.lru_cache(maxsize=4)
def pairs(
    resolution: int, seed: int, n: int, view: str = "full", data: str = "builtin", variant: str = "objects"
) -> tuple[Tensor, Tensor]:
    """n coherent items and their incoherent versions, stacked: images (2n, 3, R, R or R/2), labels 1 then 0.

    `data`: a name of DATASETS; `variant`: the built-in data's tie ("detail": only the right object's pattern
    differs; docs/detail_tie.md).
    Rendered once per process (numpy drawing costs about as much as a training step of the small probes).
    """
    x, y = stacked_pairs(dataset(data, n, resolution, seed, variant), range(n))
    half = x.shape[-1] // 2
    return {"full": x, "left": x[..., :half], "right": x[..., half:]}[view], y


def dataset(data: str, n: int, resolution: int, seed: int, variant: str = "objects") -> CoherenceDataset:
    """n items of DATASETS[data]; `variant` picks the built-in data's tie (the black objects have only one)."""
    if data == "builtin":
        return CoherenceDataset(n, resolution, seed=seed, variant=variant)
    if variant != "objects":
        raise ValueError(f"--variant {variant} is a variant of the built-in data; --data {data} has none")
    return DATASETS[data](n, resolution, seed=seed)


def pair_stream(data: str, resolution: int, seed: int, half: int, steps: int, variant: str = "objects"):
    """Fresh training pairs: step s (1, 2, ...) gets items (s - 1) half .. s half - 1 of one dataset and their
    incoherent versions, (2 half, 3, R, R) with labels 1 then 0; no image is seen twice, and the stream is
    the same for every run (a function of `seed` alone)."""
    items = dataset(data, steps * half, resolution, seed, variant)
    return lambda step: stacked_pairs(items, range((step - 1) * half, step * half))


def stacked_pairs(data: CoherenceDataset | CoherentClips, indices: range) -> tuple[Tensor, Tensor]:
    """Items `indices` of a coherence dataset (images or clips), then their incoherent versions, stacked,
    with labels 1 then 0."""
    x = torch.stack([data[i][0] for i in indices] + [data.incoherent(i)[0] for i in indices])
    return x, torch.cat([torch.ones(len(indices)), torch.zeros(len(indices))])


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
    with torch.no_grad():
        h = model.block_input(probe_x) if image_probe else model.stem(probe_x)
        q, k, _, _ = block.project(h)  # (B, HW, Cqk), (B, N, Cqk)
        logits = block.pairwise_logits(q, k)  # (B, HW, N), as the block scales them
        p = torch.softmax(logits, dim=-1)
        entropy = float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean() / math.log(k.shape[1]))
        residual = float((block(h) - h).norm() / h.norm())
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
        _, attn = model.attention(h, return_attention=True)  # (B, Nq, N)
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
        attention=spec["attention"],
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
    return {
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
    }


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
        result["depth"], args.width, attention=result["spec"]["attention"], stage=args.stage, readout=args.readout
    )
    model.load_state_dict(load_file(str(weights)))
    x_test, _ = pairs(args.resolution, TEST_SEED, args.test_pairs, result["view"], args.data, args.variant)
    result["look_share"], result["look_uniform"] = look_share(model.eval(), x_test[:64])
    result["alive"] = alive(model, torch.cat([x_test[:32], x_test[-32:]]))  # both classes
    path.write_text(json.dumps(result, indent=1))


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
    attention runs one by one, and each attention arm against the conv arm of its cell (else of the cell that
    differs only in the block's stream and stage, which a conv arm does not have; else of r64)."""
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
        # a conv arm has no block, so neither the block's stream nor its stage matters to it: the control's cell
        # is this run's settings with those two at their defaults (runs from before a setting existed lack it)
        blockless = {**CELL_DEFAULTS, **groups[(cell, arm)][0]["settings"], "stage": 0, "block_init": "own"}
        candidates = (cell, cell_tag(argparse.Namespace(**blockless)), f"r{args.resolution}")
        control = next(((c, "conv") for c in candidates if (c, "conv") in groups), None)
        if ARMS[arm]["attention"] is None or control is None:
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "command", choices=("run", "report", "cells"), help="cells: the tables of docs/attention_opens.md"
    )
    parser.add_argument("--arms", nargs="+", default=["conv", "attn"], choices=list(ARMS))
    parser.add_argument("--depths", nargs="+", type=int, default=[0, 1, 2, 3])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=32, help="images per step, half coherent, half incoherent")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument(
        "--train-pairs", type=int, default=2048, help="coherent images (each with its incoherent version)"
    )
    parser.add_argument("--test-pairs", type=int, default=500)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument(
        "--stage", type=int, default=0, help="down-blocks before the non-local block (0: 32x32 at 64x64)"
    )
    parser.add_argument("--readout", choices=READOUTS, default="sum", help="sum, mean, or conv (1x1 conv, ReLU, sum)")
    parser.add_argument("--fresh", action="store_true", help="new training images every step (--train-pairs unused)")
    parser.add_argument(
        "--data", choices=list(DATASETS), default="builtin", help="builtin, or black (issue 26's objects)"
    )
    parser.add_argument(
        "--variant", default="objects", choices=VARIANTS, help="the built-in data's tie (docs/detail_tie.md)"
    )
    parser.add_argument(
        "--block-init",
        choices=BLOCK_INITS,
        default="own",
        help="own: the block's weights from their own generator (every arm on the conv arm's trunk); shared: the "
        "global generator (the first runs of docs/attention_opens.md)",
    )
    parser.add_argument("--out", default="runs/long_range")
    parser.add_argument("--plot", default="docs/long_range/accuracy_vs_depth.png")
    args = parser.parse_args(argv)
    {"run": run, "report": report, "cells": cells_report}[args.command](args)


if __name__ == "__main__":
    main()
