"""Scoring a saved generator, as evaluate.py does: load it (a checkpoint, run directory, export or Hub id) with
config overrides, pick the metrics, refuse the fashion classifier out of its domain, score with progress shown
(gan/progress.py), and return one JSON-able record with the sample count beside the scores.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gan.config import Config, ConfigError, from_dict, parse_overrides, to_dict


def merge(base: dict, delta: dict) -> dict:
    """`delta` (nested dicts) written over `base`, section by section."""
    for key, value in delta.items():
        nested = isinstance(value, dict) and isinstance(base.get(key), dict)
        base[key] = merge(base.get(key, {}), value) if nested else value
    return base


def check_domain(cfg: Config, uses_features: bool, allow_out_of_domain: bool) -> None:
    """The fashion classifier reads only Fashion-MNIST-like images: refuse it elsewhere unless allowed."""
    from gan.classifier import IN_DOMAIN

    if cfg.eval.feature_extractor != "fashion_classifier" or not uses_features or allow_out_of_domain:
        return
    if cfg.data.dataset not in IN_DOMAIN:
        raise ConfigError(
            f"the fashion_classifier only reads Fashion-MNIST-like images, but this generator's dataset is "
            f"{cfg.data.dataset!r}: use --feature-extractor inception, or pass --allow-out-of-domain for a generic distance"
        )


def score_checkpoint(
    checkpoint: str,
    *,
    overrides: list[str],
    metrics: list[str] | None,
    num: int | None,
    use_ema: bool,
    device: Any,
    seed: int,
    inception_weights: str | None = None,
    feature_extractor: str | None = None,
    allow_out_of_domain: bool = False,
    pairs_grid: str | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The scores of `checkpoint`'s generator as one record (checkpoint, extractor, dataset, num_samples, the
    scores, coherence levels, pairs grid, seconds). `metrics` None: the config's eval.metrics; `num` None: its
    eval.num_samples; `pairs_grid` is drawn only when `copy` is among the metrics."""
    from gan import metrics as metric_fns  # looked up at call time: tests replace metric_fns.evaluate
    from gan.models import load_generator
    from gan.progress import reported
    from gan.registry import METRICS
    from gan.synthetic import coherence_levels

    generator, cfg = load_generator(checkpoint, use_ema=use_ema, map_location=device, say=say)
    cfg = from_dict(merge(to_dict(cfg), parse_overrides(overrides)))
    if inception_weights is not None:
        cfg.eval.inception_weights = inception_weights
    if feature_extractor is not None:
        cfg.eval.feature_extractor = feature_extractor
    metrics = metrics or cfg.eval.metrics
    uses_features = any("features" in METRICS[m].needs for m in metrics if m in METRICS)  # unknown: evaluate() says
    check_domain(cfg, uses_features, allow_out_of_domain)
    num = num if num is not None else cfg.eval.num_samples
    pairs = pairs_grid if "copy" in metrics else None
    start = time.time()
    with reported(f"generating {num} samples"):
        scores = metric_fns.evaluate(generator, cfg, metrics, num_samples=num, device=device, seed=seed,
                                     pairs_grid=pairs)  # fmt: skip
    levels = {"coherence_levels": coherence_levels(cfg.model.resolution, cfg.model.image_channels)}
    return {
        "checkpoint": str(checkpoint),
        "feature_extractor": cfg.eval.feature_extractor if uses_features else None,  # coherence uses none
        "dataset": cfg.data.dataset,
        "split": cfg.data.split,
        "num_samples": num,
        "use_ema": use_ema,
        "seed": seed,
        **scores,
        **(levels if "coherence" in metrics else {}),
        **({"pairs_grid": pairs} if pairs else {}),
        "seconds": round(time.time() - start, 2),
    }


RECORD_KEYS = (
    "checkpoint",
    "feature_extractor",
    "dataset",
    "split",
    "num_samples",
    "use_ema",
    "seed",
    "coherence_levels",
    "pairs_grid",
    "seconds",
)  # fmt: skip; the rest of a record are scores


def score_lines(result: dict[str, Any]) -> list[str]:
    """One line per score of a `score_checkpoint` record, each with the number of samples behind it (and
    coherence's reference levels)."""
    n = result["num_samples"]
    lines = []
    for key in [k for k in result if k not in RECORD_KEYS]:
        line = f"{key} of {n} samples: {result[key]:.4g}"
        levels = result.get("coherence_levels") if key == "coherence" else None
        if levels:
            chance = "not measured" if levels["chance"] is None else f"{levels['chance']:.3f}"
            line += f" (real data {levels['real_data']:.3f}, chance {chance}; docs/coherence.md)"
        lines.append(line)
    return lines


def pairs_path(pairs_grid: str | None, json_path: str | None) -> str | None:
    """Where the copy metric's closest pairs go: --pairs-grid, else beside --json."""
    return pairs_grid or (str(Path(json_path).with_suffix(".pairs.png")) if json_path else None)
