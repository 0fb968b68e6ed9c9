"""The plug-in points found by name: datasets and metrics (the pattern of stylegan2-ada's `metric_main.py`).

A new dataset or metric is one entry here plus one test (tests/gan/test_registry.py runs every entry end to
end). Each entry names its function as "module:function", imported on first use, so this module stays light:
the config validates names against it without loading torch.

- `DATASETS[name]`: `build(data_cfg, resolution, channels) -> Dataset` of (image in [-1, 1], label) items,
  plus the dataset's native channels, number of classes (0: unlabelled), default resolution and splits. Used
  by `gan.config` (the choices of `data.dataset`) and `gan.data.build_dataset`.
- `METRICS[name]`: `compute(generator, cfg, names, *, num_samples, device, seed, **options) -> {key: value}`,
  the direction of its main value (`key`), what it needs (a generator, the reference data, a feature network)
  and the datasets it is defined on (None: any). Entries sharing a `compute` function are computed in one
  call (FID, IS and KID share torch-fidelity's feature pass; `gan.metrics.evaluate` makes the calls). Used
  by `gan.config` (`eval.metrics`, `eval.best_metric`), `evaluate.py --metrics`, training-time evaluation and
  best-checkpoint selection, and the experiment reports (`experiments/experiment.py`).

This module imports no other module of gan/ but gan.errors: the config imports its names.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gan.errors import UserError


class MetricsError(UserError, RuntimeError):
    """A user-caused evaluation problem (missing or wrong weights, bad arguments); one line that says what to do."""


def resolve(target: str) -> Callable[..., Any]:
    """ "package.module:function" -> the function (imported now)."""
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


# ----------------------------------------------------------------------------------------------
# Datasets


@dataclass(frozen=True)
class DatasetEntry:
    build: str  # "module:function" taking (data_cfg, resolution, channels)
    channels: int  # native channels (1: grayscale, 3: RGB); either can be trained (model.image_channels)
    num_classes: int  # label classes (0: unlabelled)
    resolution: int  # the side it is usually trained at
    splits: tuple[str, ...] | None  # accepted data.split values; None: data.split is ignored
    about: str


DATASETS: dict[str, DatasetEntry] = {
    "builtin": DatasetEntry("gan.data:build_builtin", 3, 4, 32, None, "generated coherence dataset, no files"),
    "cifar10": DatasetEntry("gan.data:build_cifar10", 3, 10, 32, ("train", "test", "all"), "CIFAR-10 (torchvision)"),
    "celeba": DatasetEntry("gan.data:build_celeba", 3, 0, 64, ("train", "valid", "test", "all"), "CelebA aligned"),
    "fashion_mnist": DatasetEntry(
        "gan.data:build_fashion_mnist", 1, 10, 32, ("train", "test", "all"), "Fashion-MNIST, 28x28 padded to 32"
    ),
    "folder": DatasetEntry("gan.data:build_folder", 3, 0, 64, None, "every image under data.root"),
}


# ----------------------------------------------------------------------------------------------
# Metrics

FIDELITY = "gan.metrics:fidelity_scores"
# The main keys under the Fashion-MNIST classifier features: they are NOT FID/IS/KID (docs/metrics.md).
CLASSIFIER_KEYS = {
    "frechet_inception_distance": "frechet_classifier_distance",
    "inception_score_mean": "classifier_score_mean",
    "inception_score_std": "classifier_score_std",
    "kernel_inception_distance_mean": "kernel_classifier_distance_mean",
    "kernel_inception_distance_std": "kernel_classifier_distance_std",
}


@dataclass(frozen=True)
class MetricEntry:
    compute: str  # "module:function"; entries sharing one are computed in one call
    key: str  # result key of the main value (under the inception features, renamed by CLASSIFIER_KEYS)
    direction: str  # "lower" or "higher" is better
    needs: tuple[str, ...]  # of "generator", "reference" (the training data), "features" (a feature network)
    datasets: tuple[str, ...] | None  # data.dataset values it is defined on; None: any
    about: str


METRICS: dict[str, MetricEntry] = {
    "fid": MetricEntry(FIDELITY, "frechet_inception_distance", "lower", ("generator", "reference", "features"), None,
                       "Frechet distance of features (torch-fidelity)"),
    "isc": MetricEntry(FIDELITY, "inception_score_mean", "higher", ("generator", "features"), None,
                       "Inception Score (torch-fidelity)"),
    "kid": MetricEntry(FIDELITY, "kernel_inception_distance_mean", "lower", ("generator", "reference", "features"),
                       None, "Kernel Inception Distance (torch-fidelity)"),
    "prc": MetricEntry("gan.metrics:memorisation_scores", "precision", "higher", ("generator", "reference", "features"),
                       None, "precision (and recall, f_score) of k-NN balls against a fixed sample of the full training set"),
    "copy": MetricEntry("gan.metrics:memorisation_scores", "copy_fraction", "lower", ("generator", "reference", "features"),
                        None, "fraction of samples nearer a training-subset image than 95% of training images are to each other"),
    "coherence": MetricEntry("gan.synthetic:coherence_scores", "coherence", "higher", ("generator",), ("builtin",),
                             "mirrored-object coherence of the built-in dataset (docs/coherence.md)"),
}  # fmt: skip


def result_key(name: str, feature_extractor: str = "inception") -> str:
    """The result key of a metric's main value: ("fid", "fashion_classifier") -> "frechet_classifier_distance"."""
    key = METRICS[name].key
    if feature_extractor == "fashion_classifier" and "features" in METRICS[name].needs:
        return CLASSIFIER_KEYS.get(key, key)
    return key


def higher_is_better(name: str) -> bool:
    return METRICS[name].direction == "higher"


def check_metrics(names: list[str], dataset: str) -> None:
    """Raise MetricsError (one line) unless every name is registered and defined on `dataset`."""
    unknown = [n for n in names if n not in METRICS]
    if not names or unknown:
        raise MetricsError(f"metrics must be a non-empty subset of {', '.join(METRICS)}; got {names}")
    for name in names:
        allowed = METRICS[name].datasets
        if allowed is not None and dataset not in allowed:
            raise MetricsError(
                f"metric '{name}' is defined only on data.dataset {', '.join(allowed)}, not '{dataset}'; "
                f"choose from {', '.join(n for n, m in METRICS.items() if m.datasets is None or dataset in m.datasets)}"
            )
