"""Sample a trained generator: `python sample.py --checkpoint PATH [--num N] [--seed S] [--grid FILE] ...`.

PATH is a training checkpoint (runs/X/checkpoints/step_*), a run directory (its latest checkpoint), a
generator export (runs/X/generator) or a Hugging Face Hub repo id `owner/name` (fetched into the usual Hub
cache). Every z and label is drawn up front (gan.sampling) from one CPU torch.Generator
seeded with --seed (z first, then labels), and G always runs on exactly
CHUNK latents at a time (the last pass padded), so no flag changes the arithmetic: the same seed gives the
same files, bit for bit, on the same machine, whatever --batch-size says. (BLAS picks kernels by matrix
size, so a pass of another size could move floats in their last bits and an 8-bit pixel by one level.)
Outputs: one grid PNG (--grid, the
default), one PNG per image (--out), a uint8 NHWC array under key 'arr_0' (--npz, the format the BigGAN /
TF FID scripts read), the SAGAN attention figure for the first four latents (--attention-maps).
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import TYPE_CHECKING

from gan.cli import fail_cleanly, run
from gan.config import ConfigError
from gan.files import user_output
from gan.sampling import CHUNK, draw_latents, generate

if TYPE_CHECKING:  # torch loads only once the arguments are known good
    import numpy as np
    import torch

    from gan.models import Generator

DEFAULT_NUM = 64  # images, without --interpolate
DEFAULT_ROWS = 8  # interpolation rows, with --interpolate
DEFAULT_GRID = "samples.png"  # written in the current directory when no output option is given


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--checkpoint",
        required=True,
        help="checkpoint dir, run dir (latest checkpoint), generator export dir or Hub repo id (owner/name)",
    )
    p.add_argument(
        "--num", type=int, default=None, help=f"images ({DEFAULT_NUM}), or interpolation rows ({DEFAULT_ROWS})"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of every z and label")
    p.add_argument("--out", default=None, help="directory for one PNG per image (000000.png, ...)")
    p.add_argument(
        "--grid", default=None, help="one PNG grid of all images (default samples.png if no output is given)"
    )
    p.add_argument("--npz", default=None, help="uint8 (N, H, W, 3) array under key 'arr_0'")
    p.add_argument(
        "--class", dest="label", type=int, default=None, metavar="C", help="class of every image (conditional models)"
    )
    p.add_argument("--truncation", type=float, default=None, help="redraw every z entry beyond |T| (BigGAN's trick)")
    p.add_argument("--no-ema", action="store_true", help="use the raw generator instead of its EMA weights")
    p.add_argument("--interpolate", type=int, default=0, metavar="K", help="K-step linear z interpolation per row")
    p.add_argument(
        "--batch-size",
        type=int,
        default=CHUNK,
        help=f"kept for compatibility, no effect: G always runs on {CHUNK} latents at a time (the last pass padded), so the images are the same bit for bit",
    )
    p.add_argument("--attention-maps", default=None, help="PNG of where G's non-local blocks attend (first 4 latents)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: cuda when available")
    args = p.parse_args(argv)
    args.default_grid = args.out is None and args.grid is None and args.npz is None and args.attention_maps is None
    if args.default_grid:  # the quick start needs no flag; main() says where the grid went
        args.grid = DEFAULT_GRID
    if args.num is None:
        args.num = DEFAULT_ROWS if args.interpolate else DEFAULT_NUM
    return args


def check_args(args: argparse.Namespace) -> None:
    """Everything that can be checked before loading the checkpoint; raises ConfigError (one line)."""
    for flag, value, least in (("--num", args.num, 1), ("--batch-size", args.batch_size, 1)):
        if value < least:
            raise ConfigError(f"{flag} must be at least {least}; got {value}")
    if args.interpolate and args.interpolate < 2:
        raise ConfigError(f"--interpolate K needs K >= 2 steps (both endpoints); got {args.interpolate}")
    if args.truncation is not None and not args.truncation > 0:
        raise ConfigError(f"--truncation must be a positive number (e.g. 0.5); got {args.truncation}")
    for flag, path, suffix in (
        ("--grid", args.grid, ".png"),
        ("--attention-maps", args.attention_maps, ".png"),
        ("--npz", args.npz, ".npz"),
    ):
        if path is not None and Path(path).suffix.lower() != suffix:
            raise ConfigError(f"{flag} must name a {suffix} file; got {path!r}")
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out!r} exists and is not a directory")


def write_outputs(images: torch.Tensor, args: argparse.Namespace) -> list[str]:
    """Write --grid, --out and --npz; returns one line per output saying where it landed."""
    from gan import grids

    lines = []
    if args.grid is not None:
        user_output(args.grid, lambda: grids.save_image_grid(images, args.grid, nrow=args.interpolate or None))
        where = args.grid
        if getattr(args, "default_grid", False):  # False when a script builds `args` itself
            where = f"{Path(args.grid).resolve()} (no output option given, so the default --grid {DEFAULT_GRID}; --grid, --out, --npz choose others)"
        lines.append(f"grid of {len(images)} images: {where}")
    if args.out is not None:
        for i in range(len(images)):
            path = Path(args.out) / f"{i:06d}.png"
            user_output(path, functools.partial(grids.save_image_grid, images[i : i + 1], path, padding=0, min_cell=0))
        lines.append(f"{len(images)} PNGs: {args.out}/000000.png ... {len(images) - 1:06d}.png")
    if args.npz is not None:
        arr = grids.images_to_uint8(images)  # (N, H, W, 3) uint8
        user_output(args.npz, lambda: _save_npz(args.npz, arr))
        lines.append(f"uint8 array {tuple(arr.shape)} under 'arr_0': {args.npz}")
    return lines


def _save_npz(path: str, arr: np.ndarray) -> None:
    import numpy as np

    from gan.files import atomic_file

    with atomic_file(path) as fh:
        np.savez(fh, arr_0=arr)  # the key BigGAN's and TF's FID scripts read


def write_attention_maps(
    G: Generator, z: torch.Tensor, labels: torch.Tensor | None, path: str, device: torch.device
) -> str:
    """The SAGAN-paper figure for the first four latents: where each G non-local block attends."""
    from gan.attention_maps import attention_figures, save_attention_figure

    head = None if labels is None else labels[:4].to(device)
    step = getattr(G, "checkpoint_step", None)  # None for exports: the title then names no step
    figure = attention_figures(G, None, z[:4].to(device), head, step=step)["G"]  # main() checked G has blocks
    return f"attention maps: {user_output(path, lambda: save_attention_figure(figure, path))}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with fail_cleanly():
        check_args(args)
        from gan.runtime import resolve_device

        device = resolve_device(args.device)
        from gan.attention import attention_blocks
        from gan.models import load_generator

        G, _ = load_generator(args.checkpoint, use_ema=not args.no_ema, map_location=device, say=print)
        if args.attention_maps and not attention_blocks(G):
            raise ConfigError("--attention-maps: this generator has no non-local block (model.g_attention is empty)")
        z, labels = draw_latents(
            G, seed=args.seed, num=args.num, truncation=args.truncation, label=args.label, interpolate=args.interpolate
        )
        lines = []
        if args.grid or args.out or args.npz:
            lines = write_outputs(generate(G, z, labels, device), args)
        if args.attention_maps:
            lines.append(write_attention_maps(G, z, labels, args.attention_maps, device))
        print("\n".join(lines))
        return 0
    return 2


if __name__ == "__main__":
    run(main)
