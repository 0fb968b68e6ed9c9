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

The probe lives in four modules: experiments/long_range_data.py (the images), long_range_model.py (the classifier and
its arms), long_range_training.py (the loop and the runs) and long_range_reports.py (the tables); this one is their
command line.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from experiments.long_range_data import DATASETS
from experiments.long_range_model import ARMS, BLOCK_INITS, READOUTS
from experiments.long_range_reports import cells_report, designs_report, report
from experiments.long_range_training import run
from gan.synthetic import VARIANTS


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "command",
        choices=("run", "report", "cells", "designs"),
        help="cells: the tables of docs/attention_opens.md; designs: issue 34's comparison in its three configurations",
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
    args.command_line = shlex.join(
        ["python", "-m", "experiments.long_range_probe", *(sys.argv[1:] if argv is None else argv)]
    )
    {"run": run, "report": report, "cells": cells_report, "designs": designs_report}[args.command](args)


if __name__ == "__main__":
    main()
