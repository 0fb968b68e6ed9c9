"""Sampling throughput (images/s) of the CIFAR-10 generator: float32 vs bf16 autocast vs channels_last.

    python benchmarks/sampling.py [--repeats 7] [--batch 64]

configs/cifar10.yaml's Generator (SAGAN-32, width 256, attention at 16x16, 10 classes) in eval mode under
`torch.no_grad()`, `gan.sampling.sample_images(G, batch, seed)` per call (z and labels drawn, then one
forward pass of `batch` latents, as sample.py does at its default of 64). All
variants share the same weights and run interleaved in one process after one warm-up call each; the table
gives the median seconds per batch, images/s and the median per-round ratio against float32.
"""

from __future__ import annotations

import argparse
import copy
import sys

import torch

from benchmarks.common import ROOT, interleaved, median, paired_ratio
from gan.attention import attention_blocks
from gan.config import load_config
from gan.models import Generator
from gan.sampling import draw_latents, generate
from tools.report import machine_line, table

# name -> (autocast dtype or None, channels_last, fused attention)
VARIANTS: dict[str, tuple[torch.dtype | None, bool, bool]] = {
    "float32 (fused attention)": (None, False, True),
    "float32, explicit attention": (None, False, False),
    "float32 + channels_last": (None, True, True),
    "bf16 autocast": (torch.bfloat16, False, True),
    "bf16 autocast + channels_last": (torch.bfloat16, True, True),
}
BASELINE = next(iter(VARIANTS))


def sampler(G: Generator, batch: int, dtype: torch.dtype | None, seed: int = 0):
    """A zero-argument call that draws one batch of images, as sample.py would."""

    def run() -> torch.Tensor:
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            z, labels = draw_latents(G, seed=seed, num=batch)
            return generate(G, z, labels, chunk=batch)

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed batches per variant")
    parser.add_argument("--batch", type=int, default=64, help="images per call")
    args = parser.parse_args(argv)
    cfg = load_config(ROOT / "configs" / "cifar10.yaml")
    torch.manual_seed(0)
    base = Generator(cfg.model).eval()
    with torch.no_grad():
        for _, block in attention_blocks(base):
            block.gamma.fill_(0.5)  # a trained-looking gate: at init (0) attention would add nothing
    fns = {}
    for name, (dtype, channels_last, fused) in VARIANTS.items():
        G = copy.deepcopy(base)
        for _, block in attention_blocks(G):
            block.fused = fused
        if channels_last:
            G.to(memory_format=torch.channels_last)
        fns[name] = sampler(G, args.batch, dtype)
    ref = {name: fn().float() for name, fn in fns.items()}  # same seed: every variant draws the same z, y
    times = interleaved(fns, args.repeats, warmup=1)
    rows = []
    for name in VARIANTS:
        s = median(times[name])
        err = (ref[name] - ref[BASELINE]).abs().max().item()
        rows.append(
            [
                name,
                f"{s:.3f}",
                f"{min(times[name]):.3f}-{max(times[name]):.3f}",
                f"{args.batch / s:.1f}",
                f"{paired_ratio(times[BASELINE], times[name]):.2f}x",
                f"{err:.1e}",
            ]
        )
    print(f"machine: {machine_line()}")
    print(
        f"configs/cifar10.yaml Generator, eval, no_grad, batch {args.batch}; median of {args.repeats} interleaved rounds\n"
    )
    print(
        table(
            [
                "variant",
                "s / batch (median)",
                "min-max",
                "images/s",
                "speed vs float32",
                "max |x - x_fp32| (first batch)",
            ],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
