"""Score a generator: `python evaluate.py --checkpoint PATH [--num N] [--metrics fid,kid,coherence] [key=value ...]`.

PATH is a training checkpoint, a run directory (its latest checkpoint), a generator export or a Hub repo id. The reference
set is the checkpoint config's training dataset, read for its images only (a conditional generator draws its
own labels, so an unlabelled folder scores it); `key=value` overrides change that config first (e.g.
`data.root=/data/cifar10 eval.cache_dir=/tmp/stats`). Prints one JSON object and writes it with --json; on
stderr, the progress of generating and one line per score with the number of samples behind it.
Metrics are the names of gan/registry.py's METRICS (`coherence` only for the built-in dataset). Scores from
`--feature-extractor fashion_classifier` are NOT FID/IS/KID (see docs/metrics.md). With `copy` among the
metrics, the closest (sample, training image) pairs are drawn into a PNG: --pairs-grid, or beside --json.
Scores from the fashion classifier mean something only on Fashion-MNIST-like data: on other datasets it
refuses unless --allow-out-of-domain. The work is gan/scoring.py's.
"""

from __future__ import annotations

import argparse
import json
import sys

from gan.cli import fail_cleanly, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--checkpoint", required=True, help="checkpoint directory, run directory, generator export or Hub repo id")
    add("--num", type=int, default=None, help="generated images (default: the config's eval.num_samples)")
    add("--metrics", default=None, help="comma-separated names from gan/registry.py: fid,isc,kid,prc,copy,coherence "
        "(default: eval.metrics)")  # fmt: skip
    add("--inception-weights", default=None, help="path to weights-inception-2015-12-05-6726825d.pth")
    add("--feature-extractor", choices=("inception", "fashion_classifier"), default=None)
    add("--allow-out-of-domain", action="store_true",
        help="score with fashion_classifier on a dataset other than Fashion-MNIST (a generic distance, not a quality score)")  # fmt: skip
    add("--json", default=None, help="also write the JSON object to this file")
    add("--pairs-grid", default=None, help="with the copy metric: PNG of the closest sample/training pairs "
        "(default: beside --json)")  # fmt: skip
    add("--no-ema", action="store_true", help="evaluate the raw generator, not its EMA weights")
    add(
        "--device",
        default="auto",
        help="auto (CUDA when present), cpu or cuda[:N]: where G and the feature network run",
    )
    add("--seed", type=int, default=0, help="seed of z, labels, KID subsets and IS splits")
    add("overrides", nargs="*", help="config overrides applied to the checkpoint's config")
    args = parser.parse_intermixed_args(argv)

    with fail_cleanly():
        from gan import scoring
        from gan.files import user_output, write_text
        from gan.runtime import resolve_device

        def say(line: str) -> None:  # stdout holds only the JSON object
            print(line, file=sys.stderr)

        result = scoring.score_checkpoint(
            args.checkpoint,
            overrides=args.overrides,
            metrics=[m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None,
            num=args.num,
            use_ema=not args.no_ema,
            device=resolve_device(args.device),
            seed=args.seed,
            inception_weights=args.inception_weights,
            feature_extractor=args.feature_extractor,
            allow_out_of_domain=args.allow_out_of_domain,
            pairs_grid=scoring.pairs_path(args.pairs_grid, args.json),
            say=say,
        )
        for line in scoring.score_lines(result):
            say(line)
        text = json.dumps(result, indent=2)
        print(text)
        if args.json:
            user_output(args.json, lambda: write_text(args.json, text + "\n"), "the scores are printed above")
        return 0
    return 2


if __name__ == "__main__":
    run(main)
