"""Metrics that see memorisation and coverage, computed from feature arrays (any feature extractor).

- `precision_recall`: Kynkaanniemi et al. 2019, "Improved Precision and Recall Metric for Assessing Generative
  Models": a generated sample counts for precision when it lies inside the k-nearest-neighbour ball (k = 3) of
  some real sample; a real sample counts for recall when it lies inside the ball of some generated sample.
  Computed by torch-fidelity's own `prc_features_to_metric` (its memory-bounded `save_cpu_ram` path), so the
  numbers are torch-fidelity's `prc`.
- `copy_fraction`: the nearest-neighbour check. d_gen(s) = distance of sample s to its closest training
  feature; d_train(x) = distance of training feature x to its closest *other* training feature. The
  threshold is the `quantile` (default 0.05) of d_train, and copy_fraction = fraction of samples with
  d_gen < threshold. Why this reads well: for a generator that draws fresh images from the data
  distribution, a sample's distance to the M training images is distributed like a training image's distance
  to the M - 1 others, so copy_fraction ~ quantile (0.05) for it, while exact copies give 1.0. A low quantile
  rather than the median makes the check about near-copies: a generator that only concentrates on dense
  regions also shrinks distances, and moves a median-based fraction much more than a 5%-based one. For a
  measured null, pass held-out real features as `generated` (expect ~ quantile).
- `closest_pairs` / `save_pairs_grid`: the samples nearest to a training image, beside that image.

What these cannot: they are only as good as the feature space (a copy shifted by a few pixels may be far in
it); `generated` must be compared with the images the model was trained on (the data.subset when one is set),
not the full dataset; distances to M training features cost N * M * D (train-to-train M^2 * D: cache it for
large M). Distances are computed in float64 (batched) for `copy_fraction` and `closest_pairs`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch_fidelity.metric_prc import prc_features_to_metric

from gan.grids import save_image_grid

Features = Tensor | np.ndarray  # (N, D)
PRC_NEIGHBOURS = 3  # k of the k-NN balls (the paper's and torch-fidelity's default)


def _as_2d(features: Features, name: str) -> Tensor:
    x = torch.as_tensor(features)
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (N, D) feature array, got shape {tuple(x.shape)}")
    return x


def precision_recall(
    generated: Features, real: Features, k: int = PRC_NEIGHBOURS, batch_size: int = 10000
) -> dict[str, float]:
    """Improved precision and recall (k-NN balls) and their F-score, as torch-fidelity's `prc` computes them."""
    gen, ref = _as_2d(generated, "generated"), _as_2d(real, "real")
    if gen.shape[1] != ref.shape[1] or min(len(gen), len(ref)) <= k:
        shapes = f"{tuple(gen.shape)}, {tuple(ref.shape)}"
        raise ValueError(f"precision_recall needs equal feature sizes and more than k={k} rows; got {shapes}")
    dtype = torch.promote_types(gen.dtype, ref.dtype)
    kwargs = {"prc_neighborhood": k, "prc_batch_size": batch_size, "save_cpu_ram": True, "verbose": False}
    return prc_features_to_metric(gen.to(dtype), ref.to(dtype), **kwargs)


def nearest_neighbours(
    queries: Features, keys: Features, exclude_self: bool = False, batch_size: int = 512
) -> tuple[Tensor, Tensor]:
    """Euclidean distance (float64) from each query row to its closest key row, and that row's index.

    `exclude_self`: queries are the keys themselves, and row i may not pick itself (it may pick a duplicate)."""
    q, kx = _as_2d(queries, "queries").double(), _as_2d(keys, "keys").double()
    if exclude_self and (q.shape != kx.shape or len(kx) < 2):
        raise ValueError("exclude_self needs queries == keys with at least two rows")
    distances, indices = [], []
    for start in range(0, len(q), batch_size):
        d = torch.cdist(q[start : start + batch_size], kx)  # (b, M)
        if exclude_self:
            rows = torch.arange(len(d))
            d[rows, rows + start] = float("inf")
        best = d.min(dim=1)
        distances.append(best.values)
        indices.append(best.indices)
    return torch.cat(distances), torch.cat(indices)


def copy_threshold(train: Features, quantile: float = 0.05) -> float:
    """The `quantile` of train-to-nearest-other-train distances (M^2 * D work: cache it for large M)."""
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    d_train, _ = nearest_neighbours(train, train, exclude_self=True)
    return torch.quantile(d_train, quantile).item()  # linear interpolation, as numpy's default


def copy_fraction(
    generated: Features, train: Features, quantile: float = 0.05, threshold: float | None = None
) -> dict[str, float]:
    """Fraction of samples closer to a training feature than the `quantile` of train-to-nearest-other distances
    (`threshold`: that distance, computed earlier by `copy_threshold(train, quantile)`)."""
    if threshold is None:
        threshold = copy_threshold(train, quantile)
    d_gen, _ = nearest_neighbours(generated, train)
    return {
        "copy_fraction": (d_gen < threshold).double().mean().item(),
        "copy_threshold": threshold,
        "nn_distance_median": d_gen.median().item(),
    }


def closest_pairs(generated: Features, train: Features, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The k samples nearest to a training feature: (sample index, nearest training index, distance), nearest first."""
    distance, index = nearest_neighbours(generated, train)
    order = torch.argsort(distance, stable=True)[:k]
    return order, index[order], distance[order]


def save_pairs_grid(samples: Tensor, neighbours: Tensor, path: str | os.PathLike, pairs_per_row: int = 4) -> Path:
    """PNG of (sample, its nearest training image) pairs side by side: images (K, C, H, W) in [-1, 1] each."""
    if samples.shape != neighbours.shape:
        shapes = f"{tuple(samples.shape)}, {tuple(neighbours.shape)}"
        raise ValueError(f"samples and neighbours must have the same shape, got {shapes}")
    pairs = torch.stack([samples.detach().cpu(), neighbours.detach().cpu()], dim=1)  # (K, 2, C, H, W)
    return save_image_grid(pairs.flatten(0, 1), path, nrow=2 * pairs_per_row)  # (2K, C, H, W): sample, neighbour, ...
