"""Precision / recall and the nearest-neighbour check against brute-force float64 numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gan.memorisation import (
    closest_pairs,
    copy_fraction,
    nearest_neighbours,
    precision_recall,
    save_pairs_grid,
)


def _points(n: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d))


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """All pairwise Euclidean distances, from differences (not the |a|^2 + |b|^2 - 2ab expansion torch uses)."""
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=-1))  # (len(a), len(b))


def _precision_recall_numpy(gen: np.ndarray, real: np.ndarray, k: int) -> tuple[float, float]:
    """Kynkaanniemi et al.: radius = distance to the k-th nearest other point of the same set."""
    radius_gen = np.sort(_distances(gen, gen), axis=1)[:, k]  # column 0 is the point itself
    radius_real = np.sort(_distances(real, real), axis=1)[:, k]
    d = _distances(gen, real)  # (N gen, M real)
    precision = np.mean([any(d[i, j] <= radius_real[j] for j in range(len(real))) for i in range(len(gen))])
    recall = np.mean([any(d[i, j] <= radius_gen[i] for i in range(len(gen))) for j in range(len(real))])
    return float(precision), float(recall)


@pytest.mark.parametrize("k", [1, 3])
def test_precision_recall_match_brute_force(k: int) -> None:
    real = _points(50, 5, 0)
    gen = np.concatenate([_points(30, 5, 1) * 0.5, _points(10, 5, 2) + 3.0])  # part inside, part outside
    expected = _precision_recall_numpy(gen, real, k)
    got = precision_recall(torch.from_numpy(gen), real, k=k, batch_size=16)  # batches smaller than the sets
    # torch-fidelity averages in float32; one sample more or fewer would move a value by >= 1/50
    assert (got["precision"], got["recall"]) == pytest.approx(expected, abs=1e-6)
    assert 0.0 < expected[0] < 1.0 and 0.0 < expected[1] < 1.0  # the case is not degenerate
    p, r = expected
    assert got["f_score"] == pytest.approx(2 * p * r / (p + r), abs=1e-6)
    copies = precision_recall(real[:20], real)
    assert copies["precision"] == 1.0  # every copy sits inside its own original's ball
    with pytest.raises(ValueError, match="more than k=3 rows"):
        precision_recall(real[:3], real)


def test_nearest_neighbours_match_brute_force() -> None:
    queries, keys = _points(23, 4, 3), _points(17, 4, 4)
    d = _distances(queries, keys)
    distance, index = nearest_neighbours(queries, keys, batch_size=5)
    np.testing.assert_allclose(distance.numpy(), d.min(axis=1), rtol=1e-12)
    np.testing.assert_array_equal(index.numpy(), d.argmin(axis=1))
    keys[5] = keys[11]  # a duplicate: its nearest other is its twin, at distance 0
    self_d = _distances(keys, keys)
    np.fill_diagonal(self_d, np.inf)
    distance, index = nearest_neighbours(keys, keys, exclude_self=True, batch_size=4)
    np.testing.assert_allclose(distance.numpy(), self_d.min(axis=1), rtol=1e-12, atol=1e-12)
    assert index[5] == 11 and index[11] == 5 and distance[5] < 1e-12


def test_copy_fraction_matches_brute_force_and_separates_copies_from_fresh_samples() -> None:
    train = _points(300, 8, 5)
    fresh = _points(2000, 8, 6)
    self_d = _distances(train, train)
    np.fill_diagonal(self_d, np.inf)
    threshold = np.quantile(self_d.min(axis=1), 0.05)
    expected = np.mean(_distances(fresh, train).min(axis=1) < threshold)
    got = copy_fraction(fresh, train)
    assert got["copy_threshold"] == pytest.approx(threshold, rel=1e-12)
    assert got["copy_fraction"] == expected
    assert 0.01 < expected < 0.12  # fresh samples from the data distribution: about the quantile, 0.05
    copies = train[np.random.default_rng(7).permutation(300)[:100]]
    assert copy_fraction(copies, train)["copy_fraction"] == 1.0
    half = np.concatenate([copies[:50], fresh[:50]])
    assert 0.5 <= copy_fraction(half, train)["copy_fraction"] < 0.6
    assert copy_fraction(fresh, train, quantile=0.5)["copy_fraction"] == pytest.approx(0.5, abs=0.06)


def test_closest_pairs_find_planted_copies() -> None:
    train = _points(40, 6, 8)
    gen = np.concatenate([_points(20, 6, 9), train[7:8] + 1e-3, train[2:3]])
    samples, neighbours, distances = closest_pairs(gen, train, k=3)
    assert samples[:2].tolist() == [21, 20] and neighbours[:2].tolist() == [2, 7]
    d = _distances(gen, train).min(axis=1)
    np.testing.assert_allclose(distances.numpy(), np.sort(d)[:3], rtol=1e-9, atol=1e-12)
    assert samples[2].item() == int(np.argsort(d)[2])


def test_pairs_grid_puts_each_sample_beside_its_neighbour(tmp_path) -> None:
    gen = torch.Generator().manual_seed(0)
    samples, neighbours = torch.rand(3, 1, 4, 4, generator=gen) * 2 - 1, torch.rand(3, 1, 4, 4, generator=gen) * 2 - 1
    path = save_pairs_grid(samples, neighbours, tmp_path / "pairs.png", pairs_per_row=1)
    grid = np.asarray(Image.open(path))  # 3 rows of (sample, neighbour), 4x4 images shown at 64x64, 2 px padding
    assert grid.shape == (3 * 66 + 2, 2 * 66 + 2, 3)
    for row in range(3):
        for col, images in enumerate((samples, neighbours)):
            pixels = np.clip(np.rint((images[row, 0].double().numpy() + 1.0) * 127.5), 0, 255)
            expected = np.kron(pixels, np.ones((16, 16)))  # each pixel a 16x16 block of itself
            panel = grid[2 + 66 * row : 66 + 66 * row, 2 + 66 * col : 66 + 66 * col]
            for channel in range(3):
                np.testing.assert_array_equal(panel[..., channel], expected)
