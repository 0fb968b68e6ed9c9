"""The long-range probe in time: can a 3D conv ladder tell clips whose last frame repeats the first from
clips whose last object was redrawn, and does one space-time non-local block change the depth it needs?

Clips are `experiments.clips.CoherentClips` (T = 8 frames of 32x32; coherent: frame T-1's object is frame 0's) and
their incoherent versions. The classifier reuses the 2D probe's pieces (experiments/long_range_model.py, _training.py, _reports.py: the
arms, the training loop `fit`, `accuracy`, `block_state`, the verdict rule): the repository's first D block
applied to every frame alone, optionally ONE `NonLocalBlock(dim=3)` on the whole (T, H, W) grid, then
`depth` residual blocks, ReLU, global sum (or, `--pool mean`, mean) pooling and a linear head, spectral norm
everywhere. Two ladders: `--ladder space` (the first design): ReLU-conv3x3x3-ReLU-conv1x3x3-avgpool(1,2,2)
blocks, each widening the temporal field by 2 frames (1 + 2 depth) while halving the spatial side;
`--ladder time`: the same convolutions with the temporal tap dilated 1, 2, 4, ... and no pooling at all, so
the field doubles in time (2^(depth+1) - 1 frames) while every block keeps the 16x16 map.
See docs/long_range.md (the report) and docs/long_range/log.md ("The probe in time (3D)").

    python -m experiments.long_range_clips run --arms conv attn_zero_init --depths 1 2 4 --seeds 0 1 2
    python -m experiments.long_range_clips run --fresh ...    # new training clips every step, no fixed set
    python -m experiments.long_range_clips run --ladder time ...   # dilated in time, space never pooled
    python -m experiments.long_range_clips report
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from experiments import long_range_data, long_range_model, long_range_plots, long_range_reports, long_range_training
from experiments.clips import CoherentClips
from experiments.erf import theoretical_rf
from gan.grids import save_image_grid
from gan.layers import DBlockOptimized, init_layer, linear
from gan.synthetic import FOREGROUND_THRESHOLD
from tools.report import machine_line

# The 2D probe's arms; the block's keys are max-pooled over (2, 2, 2) (frame pairs and 2x2 pixels): 256 keys from
# the 8 x 16 x 16 grid, as many as the 2D probe's block has, at half the cost of the video default (1, 2, 2).
KEY_POOL = (2, 2, 2)


def _clip_arm(name: str) -> dict:
    spec = long_range_model.ARMS[name]
    return spec if spec["attention"] is None else {**spec, "attention": {**spec["attention"], "pool": KEY_POOL}}


# Issue 33 part 3 runs the levers that opened the image probe (docs/attention_opens.md) at the decisive depth: the
# 10x block rate, the zero-init gate and cosine. Cosine with 4 query/key channels: at width 8 the default is 1,
# and the cosine of two scalars is a sign. `attn_cosine` (1 channel) was meant as the uniform control, since at
# seed 0 every key's sign came out the same; at seeds 1 and 2 they did not (docs/long_range.md), so
# `attn_uniform` (t = 1e-6) is the uniform-attention control.
ARMS = {
    name: _clip_arm(name)
    for name in ("conv", "attn", "attn_zero_init", "attn_lr10", "attn_cosine_qk4", "attn_cosine", "attn_uniform")
}
LADDERS = ("space", "time")
POOLS = ("sum", "mean")  # sum: SAGAN's D; mean: the same linear read-out over N positions, 1/N the logit scale


class FrameStem(nn.Module):
    """The repository's first D block on every frame alone: (B, C, T, H, W) -> (B, W, T, H/2, W/2)."""

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.block = DBlockOptimized(channels, width, sn=True)

    def forward(self, x: Tensor) -> Tensor:
        b, _, t = x.shape[:3]
        h = self.block(x.transpose(1, 2).flatten(0, 1))  # (B T, W, H/2, W/2)
        return h.unflatten(0, (b, t)).transpose(1, 2)  # (B, W, T, H/2, W/2)


class ClipBlock(nn.Module):
    """DBlock in space-time: ReLU-conv3x3x3-ReLU-conv1x3x3-avgpool(1,2,2), shortcut conv1x1x1-avgpool(1,2,2).

    One temporal tap of 3 per block: the temporal field grows by exactly 2 frames; time is never pooled.
    With `pool=False` the block keeps the spatial side, and `dilation` spaces its temporal taps (t - d, t, t + d):
    the field then grows by 2 d frames."""

    def __init__(self, width: int, dilation: int = 1, pool: bool = True) -> None:
        super().__init__()
        self.conv1 = init_layer(
            nn.Conv3d(width, width, 3, padding=(dilation, 1, 1), dilation=(dilation, 1, 1)), sn=True
        )
        self.conv2 = init_layer(nn.Conv3d(width, width, (1, 3, 3), padding=(0, 1, 1)), sn=True)
        self.shortcut = init_layer(nn.Conv3d(width, width, 1), sn=True)
        self.pool = pool

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv2(F.relu(self.conv1(F.relu(x))))
        s = self.shortcut(x)
        return F.avg_pool3d(h, (1, 2, 2)) + F.avg_pool3d(s, (1, 2, 2)) if self.pool else h + s


class ClipProbe(nn.Module):
    """clips (B, C, T, H, W) -> logit (B,): FrameStem [-> NonLocalBlock(dim=3)] -> depth x ClipBlock -> ReLU,
    sum (or mean) over (T, H, W), linear. At depth 0 it is a per-frame classifier whose scores are summed over frames.
    `ladder="space"`: each block halves the spatial side; `"time"`: block i dilates its temporal tap by 2^i and
    nothing is pooled."""

    def __init__(
        self,
        depth: int,
        width: int,
        channels: int = 3,
        attention: dict | None = None,
        ladder: str = "space",
        pool: str = "sum",
        block_seed: int | None = None,
    ) -> None:
        super().__init__()
        if ladder not in LADDERS:
            raise ValueError(f"ladder must be one of {LADDERS}, got {ladder!r}")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        self.pool = pool
        self.stem = FrameStem(channels, width)
        self.attention = None
        if attention is not None:  # block_seed: its own stream, so the trunk is the conv arm's (None: the global one)
            self.attention = long_range_model.block_on_stream(width, {**attention, "dim": 3}, block_seed)
        in_time = ladder == "time"
        self.blocks = nn.Sequential(
            *[ClipBlock(width, dilation=2**i if in_time else 1, pool=not in_time) for i in range(depth)]
        )
        self.head = linear(width, 1, sn=True)

    def trunk(self, x: Tensor) -> Tensor:
        """The map before the final ReLU: (B, width, T, H / 2^(depth+1), W / 2^(depth+1)) for the space ladder,
        (B, width, T, H / 2, W / 2) for the time ladder."""
        h = self.stem(x)
        if self.attention is not None:
            h = self.attention(h)
        return self.blocks(h)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.trunk(x))
        return self.head(h.sum(dim=(2, 3, 4)) if self.pool == "sum" else h.mean(dim=(2, 3, 4))).squeeze(1)


def temporal_rf(depth: int, ladder: str = "space") -> int:
    """Theoretical temporal receptive field (frames) of the conv path: 1 + 2 depth (space ladder),
    2^(depth+1) - 1 (time ladder: block i's 3-tap conv dilated by 2^i spans 1 + 2^(i+1) frames)."""
    stem = [(1, 1)] * 3  # conv, conv, pool: per frame
    layers = []
    for i in range(depth):  # conv3x3x3 (dilated in time), conv1x3x3, [avgpool(1,2,2)]
        layers += [(1 + 2 * (2**i if ladder == "time" else 1), 1), (1, 1), (1, 1)]
    return theoretical_rf(stem + layers)[0]


def first_object_cells(x: Tensor, cell: int = 2) -> Tensor:
    """(B, H / cell, W / cell) bool: the cells of frame 0 that hold its object. Frame 0 is the background and
    the object only (no distractor), and only the object is foreground (`FOREGROUND_THRESHOLD`: objects have
    value 1, the background stays below 0.22)."""
    pixels = (x[:, :, 0].amax(1) > FOREGROUND_THRESHOLD).float()  # (B, H, W)
    return F.max_pool2d(pixels.unsqueeze(1), cell).squeeze(1) > 0  # (B, H / cell, W / cell)


def frame_attention(model: ClipProbe, x: Tensor) -> Tensor:
    """Where frame 0's object looks: the attention mass that the block's queries at frame 0's object cells put on
    each temporal slot of keys, averaged over those cells: (B, T_k), rows summing to 1 (uniform: 1 / T_k each)."""
    with torch.no_grad():
        h = model.stem(x)  # (B, W, T, H', W')
        _, attn = model.attention(h, return_attention=True)  # (B, Nq, N), keys flattened in (t, h, w) order
    t, hq, wq = h.shape[2:]
    slots = -(-t // model.attention.pool[0])  # ceil(T / pool_t) temporal key slots
    mass = attn.unflatten(2, (slots, -1)).sum(-1)  # (B, Nq, T_k)
    mass = mass.unflatten(1, (t, hq, wq))[:, 0]  # (B, H', W', T_k): the queries of frame 0
    cells = first_object_cells(x, x.shape[-1] // hq).float()  # (B, H', W')
    return (mass * cells.unsqueeze(-1)).sum((1, 2)) / cells.sum((1, 2)).unsqueeze(-1)


@functools.lru_cache(maxsize=4)
def clip_pairs(seed: int, n: int, frames: int = 8, resolution: int = 32) -> tuple[Tensor, Tensor]:
    """n coherent clips and their incoherent versions, stacked: (2n, 3, T, R, R), labels 1 then 0."""
    return long_range_data.stacked_pairs(CoherentClips(n, resolution, frames, seed=seed), range(n))


def clip_stream(seed: int, half: int, steps: int, frames: int = 8, resolution: int = 32):
    """Fresh training clips: step s (1, 2, ...) gets clips (s - 1) half .. s half - 1 of one CoherentClips
    sequence and their incoherent versions, (2 half, 3, T, R, R) with labels 1 then 0; no clip is ever seen
    twice, and the stream is the same for every run (a function of `seed` alone)."""
    data = CoherentClips(steps * half, resolution, frames, seed=seed)

    def batch(step: int) -> tuple[Tensor, Tensor]:
        return long_range_data.stacked_pairs(data, range((step - 1) * half, step * half))

    return batch


def train_one(arm: str, depth: int, seed: int, args: argparse.Namespace, weights_path: Path) -> dict:
    """Train one (arm, depth, seed), save its weights (safetensors) to `weights_path`; returns the result."""
    spec = ARMS[arm]
    torch.manual_seed(seed)
    model = ClipProbe(
        depth,
        args.width,
        attention=spec["attention"],
        ladder=args.ladder,
        pool=args.pool,
        block_seed=long_range_model.block_seed(seed, args.block_init),
    )
    if args.fresh:  # every step draws new clips: the model cannot fit a fixed set instead of the rule
        train = clip_stream(long_range_data.TRAIN_SEED, args.batch // 2, args.steps, args.frames)
    else:
        train = clip_pairs(long_range_data.TRAIN_SEED, args.train_pairs, args.frames)
    test = clip_pairs(long_range_data.TEST_SEED, args.test_pairs, args.frames)
    log, cpu_s = long_range_training.fit(model, spec, train, test, args, seed, f"{arm} depth {depth} seed {seed}")
    save_file(model.state_dict(), str(weights_path))
    result = {
        "arm": arm,
        "depth": depth,
        "seed": seed,
        "spec": spec,
        "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "temporal_rf": temporal_rf(depth, args.ladder),
        "test_acc": long_range_training.accuracy(model, *test),
        "cpu_s": cpu_s,
        "log": log,
        "settings": {
            k: getattr(args, k)
            for k in (
                "steps",
                "batch",
                "width",
                "lr",
                "frames",
                "train_pairs",
                "test_pairs",
                "fresh",
                "ladder",
                "pool",
                "block_init",
            )  # fmt: skip
        },
        "machine": machine_line(),
    }
    if model.attention is not None:  # where frame 0's object looks, kept in the summary (weights are not committed)
        result["frame_attention"] = frame_attention_by_class(model.eval(), test[0])
    return result


def frame_attention_by_class(model: ClipProbe, x: Tensor) -> dict[str, list[float]]:
    """`frame_attention` on clips `x` (n coherent, then their n incoherent versions): each class's mean share
    per temporal key slot."""
    mass = frame_attention(model, x)
    n = len(x) // 2
    return {"coherent": mass[:n].mean(0).tolist(), "incoherent": mass[n:].mean(0).tolist()}


def _tag(args: argparse.Namespace) -> str:
    """The results folder of one clip length, ladder, pooling and block stream: t8 (space ladder and sum, the
    first design), t8-time, t8-time-mean, t8-time-mean-owninit, ..."""
    return f"t{args.frames}" + "".join(
        f"-{v}"
        for v, default in ((args.ladder, "space"), (args.pool, "sum"), (f"{args.block_init}init", "sharedinit"))
        if v != default
    )


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    for arm in args.arms:
        for depth in args.depths:
            for seed in args.seeds:
                path = Path(args.out) / _tag(args) / arm / f"depth{depth}" / f"seed{seed}.json"
                if path.exists():
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                result = train_one(arm, depth, seed, args, path.with_suffix(".safetensors"))
                path.write_text(json.dumps(result, indent=1))
                print(
                    f"{arm} depth {depth} seed {seed}: test acc {result['test_acc']:.3f}, {result['cpu_s']:.0f} CPU s"
                )


def report(args: argparse.Namespace) -> None:
    results = [json.loads(p.read_text()) for p in sorted(Path(args.out).glob(f"{_tag(args)}/*/depth*/seed*.json"))]
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in results:
        groups.setdefault((r["arm"], r["depth"]), []).append(r)
    order = sorted(groups.items(), key=lambda kv: (list(ARMS).index(kv[0][0]), kv[0][1]))
    print(
        "| arm | depth | params | temporal RF (frames) | test accuracy (mean +/- std) | seeds: accuracy | CPU s per run |"
    )
    print("|---|---|---|---|---|---|---|")
    for (arm, depth), rs in order:
        rs.sort(key=lambda r: r["seed"])
        accs = [r["test_acc"] for r in rs]
        print(
            f"| `{arm}` | {depth} | {rs[0]['params']:,} | {rs[0]['temporal_rf']} | {long_range_reports.mean_std_text(accs)} | "
            f"{', '.join(f'{a:.3f}' for a in accs)} | {statistics.mean(r['cpu_s'] for r in rs):.0f} |"
        )
    print("\nPer run of the attention arms (the block at the last logged step):\n")
    print("| arm | depth | seed | test accuracy | gate | entropy / log N | grad theta / grad g |")
    print("|---|---|---|---|---|---|---|")
    for (arm, depth), rs in order:
        for r in rs if ARMS[arm]["attention"] is not None else []:
            e = r["log"][-1]
            gate = long_range_reports.gate_label(e)
            print(
                f"| `{arm}` | {depth} | {r['seed']} | {r['test_acc']:.3f} | {gate} | {e['entropy_ratio']:.4f} | "
                f"{e['grad_theta'] / max(e['grad_g'], 1e-12):.3g} |"
            )
    long_range_reports.print_verdicts(groups, ARMS)
    long_range_reports.print_learns(groups, ARMS)
    _print_frame_attention(order, args)
    if results:
        print(f"\nSettings: {results[0]['settings']}; machine: {results[0]['machine']}")
    x, _ = clip_pairs(
        long_range_data.TEST_SEED, 3, args.frames
    )  # top 3 rows coherent, bottom 3 their incoherent versions
    save_image_grid(x.transpose(1, 2).flatten(0, 1), Path(args.plot), nrow=args.frames)
    has_block = {arm for arm, spec in ARMS.items() if spec["attention"] is not None}
    opening = Path(args.plot).with_name(f"block_opening_{_tag(args)}.png")  # the gates over training, seed 0
    long_range_plots.block_opening(groups, opening, has_block)


def _print_frame_attention(order: list[tuple[tuple[str, int], list[dict]]], args: argparse.Namespace) -> None:
    """For every attention run whose weights were saved: where the queries at frame 0's object look, on the test
    clips (coherent and incoherent apart), as the share of attention per temporal key slot. `order`: the report's
    (arm, depth) cells in table order."""
    rows = []
    for (arm, depth), rs in order:
        for r in rs if ARMS[arm]["attention"] is not None else []:
            if "frame_attention" in r:  # recorded at the end of the run
                rows.append(
                    (arm, depth, r["seed"], r["frame_attention"]["coherent"], r["frame_attention"]["incoherent"])
                )
                continue
            weights = Path(args.out) / _tag(args) / arm / f"depth{depth}" / f"seed{r['seed']}.safetensors"
            if not weights.exists():  # runs from before the weights were saved
                continue
            spec = ARMS[arm]["attention"]
            model = ClipProbe(depth, r["settings"]["width"], attention=spec, ladder=args.ladder, pool=args.pool)
            model.load_state_dict(load_file(weights))
            x, _ = clip_pairs(long_range_data.TEST_SEED, args.test_pairs, args.frames)
            n = len(x) // 2
            mass = frame_attention(model.eval(), x)  # (2n, T_k)
            rows.append((arm, depth, r["seed"], mass[:n].mean(0).tolist(), mass[n:].mean(0).tolist()))
    if not rows:
        return
    slots = len(rows[0][3])
    print("\nWhere frame 0's object looks (share of the block's attention per temporal key slot; uniform", end=" ")
    print(f"{1 / slots:.3f}; test clips, coherent / incoherent):\n")
    print("| arm | depth | seed | coherent: slots 0..last | incoherent: slots 0..last |")
    print("|---|---|---|---|---|")
    for arm, depth, seed, coherent, incoherent in rows:
        fmt = lambda m: ", ".join(f"{v:.3f}" for v in m)  # noqa: E731
        print(f"| `{arm}` | {depth} | {seed} | {fmt(coherent)} | {fmt(incoherent)} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("run", "report"))
    parser.add_argument("--arms", nargs="+", default=["conv", "attn_zero_init"], choices=list(ARMS))
    parser.add_argument("--depths", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=16, help="clips per step, half coherent, half incoherent")
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument(
        "--train-pairs", type=int, default=512, help="coherent clips (each with its incoherent version)"
    )
    parser.add_argument(
        "--fresh", action="store_true", help="new training clips every step (--train-pairs is then not used)"
    )
    parser.add_argument(
        "--ladder", choices=LADDERS, default="space", help="space: pool space per block; time: dilate time, no pooling"
    )
    parser.add_argument(
        "--pool", choices=POOLS, default="sum", help="the read-out over (T, H, W): sum (as SAGAN's D) or mean"
    )
    parser.add_argument(
        "--block-init",
        choices=long_range_model.BLOCK_INITS,
        default="shared",
        help="shared: the block's weights from the global generator (the first clip runs); own: from their own "
        "(every arm on the conv arm's trunk at the same seed, as the image probe's cells)",
    )
    parser.add_argument("--test-pairs", type=int, default=250)
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--out", default="runs/long_range_clips")
    parser.add_argument("--plot", default="docs/long_range/clips_8.png")
    args = parser.parse_args(argv)
    run(args) if args.command == "run" else report(args)


if __name__ == "__main__":
    main()
