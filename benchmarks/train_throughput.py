"""Training throughput (images/s) of the CIFAR-10 SAGAN-32 for each speed option, and of the data loader.

    python benchmarks/train_throughput.py [--tables training kernels loader] [--repeats 5] [--warmup 2]
                                          [--variants NAME ...] [--device cpu|cuda] [--config YAML] [overrides]

The model is configs/cifar10.yaml's (class-conditional SAGAN-32: G width 256, D width 128, attention at
16x16 in G and D, spectral norm everywhere, batch 64, EMA). One iteration is what one training step does:
`gan.step.train_step` (one D step on real + fake, one G step, the EMA update) built by `build_parts`
exactly as training builds it; real images come from an in-memory synthetic batch, so the data
loader is out of the measurement (`--tables loader` times it on its own; `--tables kernels` gives the FLOPs
of one iteration and the GFLOP/s of its two kernels, matmul and 3x3 convolution, per dtype).

Every variant is built in one process and the variants run in turn, one iteration each (A B C ... A B C
...), after --warmup iterations each (compilation happens there); the table gives the median seconds per
iteration, images/s = batch / median, and the median of the per-round ratios against the baseline.
`--device cuda` runs the training table on the GPU (every iteration synchronised before and after);
`--config` and config overrides change the model (the tests use a tiny one).
"""

from __future__ import annotations

import argparse
import itertools
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from benchmarks.common import ROOT, interleaved, median, paired_ratio, synchronize, timed
from gan.cli import fail_cleanly
from gan.config import Config, load_config
from gan.runtime import resolve_device
from tools.report import device_line, machine_line, table

CONFIG = ROOT / "configs" / "cifar10.yaml"

# key -> (table label, overrides on top of configs/cifar10.yaml). The ladder adds one lever at a time; the
# last two rows drop bf16 from the compiled variant and channels_last from the bf16 one.
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "baseline": ("baseline: fp32, eager, explicit attention", ["model.attn_fused=false"]),
    "fused": ("+ fused attention", []),
    "channels_last": ("+ channels_last", ["train.channels_last=true"]),
    "bf16": ("+ bf16 autocast", ["train.channels_last=true", "train.mixed_precision=bf16"]),
    "compile": ("+ compile", ["train.channels_last=true", "train.mixed_precision=bf16", "train.compile=true"]),
    "compile_fp32": ("fused + channels_last + compile, fp32", ["train.channels_last=true", "train.compile=true"]),
    "bf16_nchw": ("fused + bf16, NCHW", ["train.mixed_precision=bf16"]),
}
BASELINE = "baseline"
# Every speed switch off first, so a variant gets exactly the levers it names, whatever cifar10.yaml ships
# (it turns channels_last on): the baseline is plain float32 eager NCHW with explicit attention.
COMMON = ["train.seed=0", "train.progress=false", "optim.ema_start=0",
          "train.channels_last=false", "train.compile=false", "train.mixed_precision=no"]  # fmt: skip


def synthetic_batches(cfg: Config, seed: int = 0, device: torch.device | str = "cpu"):
    """An endless iterator over one fixed (images in [-1, 1], labels) batch of the config's shape, on `device`."""
    g = torch.Generator().manual_seed(seed)
    m = cfg.model
    x = torch.rand(cfg.train.batch_size, m.image_channels, m.resolution, m.resolution, generator=g) * 2 - 1
    y = torch.randint(max(m.num_classes, 1), (cfg.train.batch_size,), generator=g)
    return itertools.repeat((x.to(device), y.to(device)))


def make_iteration(overrides: list[str], accelerator, config: Path = CONFIG) -> Callable[[], dict[str, torch.Tensor]]:
    """One variant's iteration: `gan.step.train_step` (D step, G step, EMA update) on its own parts and batches."""
    from gan.step import build_parts, train_step

    cfg = load_config(config, [*COMMON, *overrides])
    batches, steps = synthetic_batches(cfg, device=accelerator.device), itertools.count(1)
    parts = build_parts(cfg, accelerator)

    def iteration() -> dict[str, torch.Tensor]:
        return train_step(parts, cfg, batches, accelerator, next(steps))[0]

    return iteration


def bench_training(
    names: list[str], repeats: int, warmup: int, device: str = "cpu", config: Path = CONFIG, extra: Sequence[str] = ()
) -> str:
    """The training table: every variant of `names` on `config` + `extra` overrides, on `device`."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=resolve_device(device).type == "cpu")
    trainers = {name: make_iteration([*VARIANTS[name][1], *extra], accelerator, config) for name in names}
    batch = load_config(config, [*COMMON, *extra]).train.batch_size
    warm_s = {}
    for name, trainer in trainers.items():
        warm_s[name] = sum(timed(trainer) for _ in range(warmup))
        print(f"  warm-up {name}: {warm_s[name]:.1f} s", file=sys.stderr)
    times: dict[str, list[float]] = {name: [] for name in names}
    last: dict[str, dict[str, torch.Tensor]] = {}
    rounds = 0
    try:  # a SIGTERM / Ctrl-C after some rounds still prints the table of the complete rounds
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        for r in range(repeats):
            for name, trainer in trainers.items():
                synchronize()  # on a GPU: the time of the work, not of queueing it
                start = time.perf_counter()
                last[name] = trainer()
                synchronize()
                times[name].append(time.perf_counter() - start)
            rounds += 1
            print(f"  round {r + 1}/{repeats}: " + ", ".join(f"{times[n][-1]:.2f}" for n in names), file=sys.stderr)
    except KeyboardInterrupt:
        if rounds == 0:
            raise
        print(f"interrupted: the table covers the {rounds} complete rounds", file=sys.stderr)
        times = {name: ts[:rounds] for name, ts in times.items()}
    rows = []
    for name in names:
        s = median(times[name])
        ratio = f"{paired_ratio(times[BASELINE], times[name]):.2f}x" if BASELINE in times else "-"
        finite = all(torch.isfinite(v).all() for v in last[name].values())
        rows.append(
            [
                VARIANTS[name][0],
                f"{s:.2f}",
                f"{min(times[name]):.2f}-{max(times[name]):.2f}",
                f"{batch / s:.1f}",
                ratio,
                f"{warm_s[name]:.0f}",
                "yes" if finite else "NO",
            ]
        )
    headers = [
        "variant",
        "s / iteration (median)",
        "min-max",
        "images/s",
        "speed vs baseline",
        f"warm-up s ({warmup} it.)",
        "losses finite",
    ]
    return table(headers, rows)


def bench_kernels(repeats: int) -> str:
    """GFLOP/s of the two kernels a step is made of, float32 vs bf16 vs fp16, NCHW vs channels_last (interleaved)."""
    torch.manual_seed(0)
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    x, w = torch.randn(64, 256, 16, 16), torch.randn(256, 256, 3, 3)  # G's 3x3 conv at 16x16, batch 64
    conv_flop = 2 * 64 * 256 * 256 * 9 * 16 * 16

    def conv(dtype: torch.dtype, channels_last: bool, backward: bool):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        xx = x.to(dtype, memory_format=fmt, copy=True).requires_grad_(backward)
        ww = w.to(dtype, memory_format=fmt, copy=True).requires_grad_(backward)

        def run() -> None:
            y = torch.nn.functional.conv2d(xx, ww, padding=1)
            if backward:
                y.sum().backward()
                xx.grad = ww.grad = None

        return run

    dtypes = {"float32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    fns = {}
    for label, dtype in dtypes.items():
        aa, bb = a.to(dtype), b.to(dtype)
        fns[("matmul 2048^3", label)] = lambda aa=aa, bb=bb: aa @ bb
    for label, dtype in dtypes.items():
        for cl in (False, True):
            layout = "channels_last" if cl else "NCHW"
            fns[(f"conv3x3 forward, {layout}", label)] = conv(dtype, cl, backward=False)
            if dtype != torch.float16:  # CPU fp16 conv backward takes a slow non-oneDNN path (~1 min here)
                fns[(f"conv3x3 forward+backward, {layout}", label)] = conv(dtype, cl, backward=True)
    times = interleaved(fns, repeats, warmup=1)
    rows = []
    for (what, label), ts in sorted(times.items(), key=lambda kv: kv[0][0]):
        f = 2 * n**3 if what.startswith("matmul") else conv_flop * (3 if "backward" in what else 1)
        rows.append([what, label, f"{median(ts) * 1e3:.1f}", f"{f / median(ts) / 1e9:.0f}"])
    return table(["kernel", "dtype", "ms (median)", "GFLOP/s"], rows)


def flops_per_iteration(name: str) -> float:
    """FLOPs of one iteration of a variant (convolutions and matrix products, forward and backward)."""
    from accelerate import Accelerator
    from torch.utils.flop_counter import FlopCounterMode

    trainer = make_iteration(VARIANTS[name][1], Accelerator(cpu=True))
    with FlopCounterMode(display=False) as counter:
        trainer()
    return float(counter.get_total_flops())


def bench_loader(batches: int, worker_counts: list[int]) -> str:
    """images/s of the real data loader alone (Fashion-MNIST from Debian's files, as RGB 32x32)."""
    from gan.data import build_dataset
    from gan.data_order import build_loader

    rows = []
    with tempfile.TemporaryDirectory() as root:
        for workers in worker_counts:
            cfg = load_config(
                None,
                [
                    "data.dataset=fashion_mnist",
                    f"data.root={root}",
                    "data.random_flip=true",
                    "model.num_classes=10",
                    f"data.num_workers={workers}",
                    f"data.persistent_workers={workers > 0}",
                ],
            )
            dataset = build_dataset(cfg.data, cfg.model)
            loader = build_loader(dataset, cfg.data, batch_size=64, seed=0)
            start = time.perf_counter()
            it = iter(loader)
            next(it)
            first = time.perf_counter() - start
            start = time.perf_counter()
            for _ in range(batches):
                next(it)
            steady = time.perf_counter() - start
            rows.append([workers, f"{first:.2f}", f"{64 * batches / steady:,.0f}", f"{steady / batches * 1e3:.1f}"])
            del it, loader
    return table(["num_workers", "first batch s (start-up)", "images/s after", "ms / batch of 64"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed iterations per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations per variant first")
    parser.add_argument(
        "--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), help="which rows (default: all)"
    )
    parser.add_argument("--tables", nargs="+", default=["training"], choices=["training", "kernels", "loader"])
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where the training table runs")
    parser.add_argument("--config", type=Path, default=CONFIG, help="the model and batch of the training table")
    parser.add_argument("overrides", nargs="*", help="config overrides for every variant (e.g. model.g_width=8)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*pin_memory.*")
    with fail_cleanly():
        load_config(args.config, [*COMMON, *args.overrides])  # a bad config or override: one line, first
        resolve_device(args.device)
    print(f"machine: {machine_line()}\ndevice (training table): {device_line(args.device)}")
    if "kernels" in args.tables:
        flop = flops_per_iteration(BASELINE)
        print(f"\nFLOPs per iteration (torch.utils.flop_counter, baseline): {flop / 1e12:.2f} TFLOP\n")
        print(bench_kernels(args.repeats))
    if "training" in args.tables:
        config = args.config.resolve().relative_to(ROOT) if args.config.resolve().is_relative_to(ROOT) else args.config
        batch = load_config(args.config, [*COMMON, *args.overrides]).train.batch_size
        print(
            f"\n{config} model{' with ' + ' '.join(args.overrides) if args.overrides else ''}, batch {batch}, "
            f"one D step + one G step + EMA per iteration; "
            f"median of {args.repeats} interleaved rounds after {args.warmup} warm-up iterations\n"
        )
        print(bench_training(args.variants, args.repeats, args.warmup, args.device, args.config, args.overrides))
    if "loader" in args.tables:
        print("\nData loader alone (Fashion-MNIST as RGB 32x32, random flips, batch 64, 100 batches):\n")
        print(bench_loader(100, [0, 1, 2]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
