"""Train a SAGAN-style GAN: `python train.py --config configs/demo.yaml [--run-dir DIR] [--resume latest|PATH | --overwrite] [--init-from DIR] [key=value ...]`.

Runs the same under `accelerate launch` for several GPUs or machines.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from gan.cli import fail_cleanly, run
from gan.config import describe, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="YAML file of changes to the defaults (configs/demo.yaml)")
    parser.add_argument("--run-dir", default=None, help="output directory (default: runs/<config name>)")
    parser.add_argument("--resume", default=None, help="'latest' (in the run directory) or a checkpoint path")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in a run directory that holds a run, moving it aside to <run-dir>.old-<time>",
    )
    parser.add_argument(
        "--init-from",
        default=None,
        metavar="DIR",
        help="start a new run from an export's (e.g. convert.py's) or a checkpoint's weights: G, EMA, D if present; "
        "fresh optimisers, step 0; the model config must match it",
    )
    parser.add_argument("--help-config", action="store_true", help="list every config key with its meaning")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. train.steps=100 model.g_attention=[16]")
    args = parser.parse_intermixed_args(argv)
    with fail_cleanly():
        if args.help_config:  # the defaults, or the values of the config (and overrides) given with it
            given = args.config is not None or args.overrides
            cfg = load_config(args.config, args.overrides) if given else None
            print(describe(cfg, " ".join([args.config or "the defaults", *args.overrides])))
            return 0
        args.config = args.config or "configs/demo.yaml"
        cfg = load_config(args.config, args.overrides)
        run_dir = Path(args.run_dir or Path("runs") / Path(args.config).stem)
        from gan.train_loop import train  # torch / accelerate load only once the arguments are known good

        summary = train(
            cfg,
            run_dir,
            resume=args.resume,
            overwrite=args.overwrite,
            resume_command=resume_command(args, run_dir),
            init_from=args.init_from,
        )
        return 130 if summary["interrupted"] else 0
    return 2


def resume_command(args: argparse.Namespace, run_dir: Path) -> str:
    """The exact command that continues this run: same interpreter, config and overrides, `--resume latest`."""

    def short(path: str) -> str:
        return path if os.path.relpath(path).startswith("..") else os.path.relpath(path)

    words = [
        short(sys.executable),
        short(__file__),
        "--config",
        args.config,
        "--run-dir",
        str(run_dir),
        "--resume",
        "latest",
    ]
    return shlex.join([*words, *args.overrides])


if __name__ == "__main__":
    run(main)
