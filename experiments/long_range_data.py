"""The long-range probe's data: coherent images (`CoherenceDataset`, or the second probe's `BlackObjects`)
stacked with their incoherent versions, as a fixed set (`pairs`) or a stream of fresh items (`pair_stream`)."""

from __future__ import annotations

import colorsys
import functools

import numpy as np
import torch
from torch import Tensor

from experiments.clips import CoherentClips
from gan.synthetic import CoherenceDataset

TRAIN_SEED, TEST_SEED = 100, 12345  # dataset seeds: one training set for every run, a disjoint test set


class BlackObjects(CoherenceDataset):
    """The second probe's images (issue 26): two objects of 9-12 px (at 64x64; 14-19% of the side) at opposite
    edges, the left one's left edge within 5 px (8%) of the border, on black; shapes disc, square and cross, a
    random hue. Coherent: the right object mirrors the left one (shape, size, row, colour); incoherent: it is
    drawn independently, as in `CoherenceDataset`."""

    def _draw_object(self, rng: np.random.Generator) -> tuple[int, int, int, int, np.ndarray]:
        r = self.resolution
        shape = int(rng.choice([0, 1, 3]))  # disc, square, cross (gan.synthetic.SHAPES)
        s = int(rng.integers(round(0.14 * r), round(0.19 * r) + 1))
        x0 = int(rng.integers(1, max(1, round(0.08 * r)) + 1))
        y0 = int(rng.integers(1, r - s))
        colour = np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.6, 1.0), 1.0))[: self.channels]
        return shape, s, x0, y0, colour

    def _background(self, rng: np.random.Generator) -> np.ndarray:  # noqa: ARG002 (black: nothing to draw)
        return np.zeros((self.channels, self.resolution, self.resolution))


DATASETS = {"builtin": CoherenceDataset, "black": BlackObjects}


@functools.lru_cache(maxsize=4)
def pairs(
    resolution: int, seed: int, n: int, view: str = "full", data: str = "builtin", variant: str = "objects"
) -> tuple[Tensor, Tensor]:
    """n coherent items and their incoherent versions, stacked: images (2n, 3, R, R or R/2), labels 1 then 0.

    `data`: a name of DATASETS; `variant`: the built-in data's tie ("detail": only the right object's pattern
    differs; docs/detail_tie.md).
    Rendered once per process (numpy drawing costs about as much as a training step of the small probes).
    """
    x, y = stacked_pairs(dataset(data, n, resolution, seed, variant), range(n))
    half = x.shape[-1] // 2
    return {"full": x, "left": x[..., :half], "right": x[..., half:]}[view], y


def dataset(data: str, n: int, resolution: int, seed: int, variant: str = "objects") -> CoherenceDataset:
    """n items of DATASETS[data]; `variant` picks the built-in data's tie (the black objects have only one)."""
    if data == "builtin":
        return CoherenceDataset(n, resolution, seed=seed, variant=variant)
    if variant != "objects":
        raise ValueError(f"--variant {variant} is a variant of the built-in data; --data {data} has none")
    return DATASETS[data](n, resolution, seed=seed)


def pair_stream(data: str, resolution: int, seed: int, half: int, steps: int, variant: str = "objects"):
    """Fresh training pairs: step s (1, 2, ...) gets items (s - 1) half .. s half - 1 of one dataset and their
    incoherent versions, (2 half, 3, R, R) with labels 1 then 0; no image is seen twice, and the stream is
    the same for every run (a function of `seed` alone)."""
    items = dataset(data, steps * half, resolution, seed, variant)
    return lambda step: stacked_pairs(items, range((step - 1) * half, step * half))


def stacked_pairs(data: CoherenceDataset | CoherentClips, indices: range) -> tuple[Tensor, Tensor]:
    """Items `indices` of a coherence dataset (images or clips), then their incoherent versions, stacked,
    with labels 1 then 0."""
    x = torch.stack([data[i][0] for i in indices] + [data.incoherent(i)[0] for i in indices])
    return x, torch.cat([torch.ones(len(indices)), torch.zeros(len(indices))])
