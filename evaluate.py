"""Score a generator: `python evaluate.py --checkpoint PATH [--num N] [--metrics fid,kid,coherence] [key=value ...]`.

PATH is a training checkpoint, a run directory (its latest checkpoint), a generator export or a Hub repo id. The reference
set is the checkpoint config's training dataset, read for its images only (a conditional generator draws its
own labels, so an unlabelled folder scores it); `key=value` overrides change that config first (e.g.
`data.root=/data/cifar10 eval.cache_dir=/tmp/stats`). Prints one JSON object and writes it with --json.
Metrics are the names of gan/registry.py's METRICS (`coherence` only for the built-in dataset). Scores from
`--feature-extractor fashion_classifier` are NOT FID/IS/KID (see docs/metrics.md). With `copy` among the
metrics, the closest (sample, training image) pairs are drawn into a PNG: --pairs-grid, or beside --json.
Scores from the fashion classifier mean something only on Fashion-MNIST-like data: on other datasets it
refuses unless --allow-out-of-domain.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from gan.cli import fail_cleanly, run


def _merge(base: dict, delta: dict) -> dict:
    for key, value in delta.items():
        base[key] = (
            _merge(base.get(key, {}), value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
        )
    return base


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="checkpoint directory, run directory, generator export or Hub repo id (owner/name)",
    )
    parser.add_argument(
        "--num", type=int, default=None, help="generated images (default: the config's eval.num_samples)"
    )
    parser.add_argument(
        "--metrics",
        default=None,
        help="comma-separated names from gan/registry.py: fid,isc,kid,prc,copy,coherence (default: eval.metrics)",
    )
    parser.add_argument("--inception-weights", default=None, help="path to weights-inception-2015-12-05-6726825d.pth")
    parser.add_argument("--feature-extractor", choices=("inception", "fashion_classifier"), default=None)
    parser.add_argument(
        "--allow-out-of-domain",
        action="store_true",
        help="score with fashion_classifier on a dataset other than Fashion-MNIST (a generic distance, not a quality score)",
    )
    parser.add_argument("--json", default=None, help="also write the JSON object to this file")
    parser.add_argument(
        "--pairs-grid",
        default=None,
        help="with the copy metric: PNG of the closest sample/training pairs (default: beside --json)",
    )
    parser.add_argument("--no-ema", action="store_true", help="evaluate the raw generator, not its EMA weights")
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when present), cpu or cuda[:N]: where G and the feature network run",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of z, labels, KID subsets and IS splits")
    parser.add_argument("overrides", nargs="*", help="config overrides applied to the checkpoint's config")
    args = parser.parse_intermixed_args(argv)

    with fail_cleanly():
        from gan.classifier import IN_DOMAIN
        from gan.config import ConfigError, from_dict, parse_overrides, to_dict
        from gan.files import user_output, write_text
        from gan.metrics import evaluate
        from gan.models import load_generator
        from gan.registry import METRICS
        from gan.runtime import resolve_device
        from gan.synthetic import coherence_levels

        device = resolve_device(args.device)

        def say(line: str) -> None:  # stdout holds only the JSON object
            print(line, file=sys.stderr)

        generator, cfg = load_generator(args.checkpoint, use_ema=not args.no_ema, map_location=device, say=say)
        cfg = from_dict(_merge(to_dict(cfg), parse_overrides(args.overrides)))
        if args.inception_weights is not None:
            cfg.eval.inception_weights = args.inception_weights
        if args.feature_extractor is not None:
            cfg.eval.feature_extractor = args.feature_extractor
        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else cfg.eval.metrics
        uses_features = any("features" in METRICS[m].needs for m in metrics if m in METRICS)  # unknown: evaluate() says
        if (
            cfg.eval.feature_extractor == "fashion_classifier"
            and uses_features
            and cfg.data.dataset not in IN_DOMAIN
            and not args.allow_out_of_domain
        ):
            raise ConfigError(
                f"the fashion_classifier only reads Fashion-MNIST-like images, but this generator's dataset is "
                f"{cfg.data.dataset!r}: use --feature-extractor inception, or pass --allow-out-of-domain for a generic distance"
            )
        num = args.num if args.num is not None else cfg.eval.num_samples

        start = time.time()
        pairs = args.pairs_grid or (str(Path(args.json).with_suffix(".pairs.png")) if args.json else None)
        pairs = pairs if "copy" in metrics else None
        scores = evaluate(generator, cfg, metrics, num_samples=num, device=device, seed=args.seed, pairs_grid=pairs)
        result = {
            "checkpoint": str(args.checkpoint),
            "feature_extractor": cfg.eval.feature_extractor if uses_features else None,  # coherence uses none
            "dataset": cfg.data.dataset,
            "split": cfg.data.split,
            "num_samples": num,
            "use_ema": not args.no_ema,
            "seed": args.seed,
            **scores,
            **(
                {"coherence_levels": coherence_levels(cfg.model.resolution, cfg.model.image_channels)}
                if "coherence" in metrics
                else {}
            ),
            **({"pairs_grid": pairs} if pairs else {}),
            "seconds": round(time.time() - start, 2),
        }
        text = json.dumps(result, indent=2)
        print(text)
        if args.json:
            user_output(args.json, lambda: write_text(args.json, text + "\n"), "the scores are printed above")
        return 0
    return 2


if __name__ == "__main__":
    run(main)
