"""Convert published weights: `python convert.py biggan-pytorch G_ema.pth --out DIR [--discriminator D.pth]`.

Reads a BigGAN-PyTorch state dict with `torch.load(weights_only=True)` (a file that needs pickle is refused),
infers the architecture from its tensor names and shapes, maps every tensor (the singular-value logs `sv0`
are named as ignored) and writes this repository's generator export to DIR: generator.safetensors,
config.json and the model card, which sample.py, evaluate.py, explore.py and `Generator.from_pretrained` read.
With --discriminator, D's converted weights go to DIR/discriminator.safetensors. docs/biggan.md has the details.
"""

from __future__ import annotations

import argparse
import sys

from gan.cli import fail_cleanly


def _sides(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="format", required=True, metavar="FORMAT")
    b = sub.add_parser("biggan-pytorch", help="ajbrock/BigGAN-PyTorch G.pth / G_ema.pth (and D.pth) state dicts")
    b.add_argument("source", help="the generator state dict (G_ema.pth for the EMA weights the paper samples)")
    b.add_argument("--out", required=True, help="new directory for the generator export")
    b.add_argument("--discriminator", default=None, metavar="D.pth", help="also convert this discriminator")
    b.add_argument(
        "--origin",
        default=None,
        help="how the source weights were trained, for the model card (default: 'trained on ImageNet by its authors')",
    )
    over = b.add_argument_group("overrides of what is inferred from the tensors (checked against their shapes)")
    over.add_argument("--resolution", type=int, default=None, choices=(64, 128))
    over.add_argument("--width", dest="g_width", type=int, default=None, help="BigGAN's G_ch")
    over.add_argument("--attention", dest="g_attention", type=_sides, default=None, help="G sides, e.g. 64")
    over.add_argument("--z-dim", dest="z_dim", type=int, default=None)
    over.add_argument(
        "--bn-eps",
        dest="g_bn_eps",
        type=float,
        default=None,
        help="BigGAN's --BN_eps (1e-5; 1e-4 for a TF-Hub conversion, detected by its lack of sv0)",
    )
    over.add_argument("--sn-eps", type=float, default=None,
                      help="BigGAN's --SN_eps for the power iteration (1e-6; 1e-4 for a TF-Hub conversion)")  # fmt: skip
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with fail_cleanly():
        from gan.convert_biggan import convert

        keys = ("resolution", "g_width", "g_attention", "z_dim", "g_bn_eps")
        convert(
            args.source,
            args.out,
            discriminator_path=args.discriminator,
            sn_eps=args.sn_eps,
            origin=args.origin,
            **{k: getattr(args, k) for k in keys},
        )
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
