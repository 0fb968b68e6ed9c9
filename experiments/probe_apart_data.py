"""The data of the probes built apart (issue 34, section 2; docs/probes_apart.md): two objects far apart whose
tie lies in one attribute, positives (the tie holds) against negatives (the second object's attribute changed,
everything else identical).

Each probe draws, per item, a background, two object boxes and each object's nuisances (brightness or colour,
which dots) from one generator seeded (seed, item). The first object's attribute a is uniform over K values;
the second's is b = a in the positive and b = (a + o) mod K in the negative, with o uniform over 1..K-1, so
each object's attribute is uniform over the K values in both classes (the marginals match; only the joint
differs) and the negative never satisfies the tie by chance. The pair shares every other pixel. The values
(`values` of each probe) and the layouts were made easier until the global control learnt them (pilots in
docs/probes_apart.md).

- `bars` (32x32 grey): one bar in the top band, one in the bottom band, each box's column drawn
  independently from four (so the pair is vertical or diagonal); the tie is the bars' length (2 or 8 px,
  K = 2); each bar's orientation (0, 45, 90, 135 degrees) and brightness are nuisances; the background is
  i.i.d. Gaussian noise.
- `dots` (48x48 RGB): two 9x9 groups of 3x3-px dots in opposite corners (top-left and bottom-right, or
  top-right and bottom-left; which group sits where is random), 27 px or more apart (Chebyshev, between their
  boxes); the tie is the number of dots (1 or 4 of four slots, K = 2); which slots fill and each group's tint
  are nuisances; the background is a stationary texture of two random gratings.

Images are in [-1, 1]; every background pixel stays below FOREGROUND (-0.2) and every object pixel above it.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

FOREGROUND = -0.2  # in [-1, 1]: background pixels stay below, object pixels above
TRAIN_SEED, TEST_SEED = 100, 12345  # the training stream and the fixed test set: disjoint generator seeds


@dataclass(frozen=True)
class Item:
    """One rendered pair: the positive and the negative image (C, R, R), the attributes (a, b_pos, b_neg) and
    the two objects' boxes (x0, y0, side), object 0 the one that keeps its attribute."""

    positive: np.ndarray
    negative: np.ndarray
    attributes: tuple[int, int, int]
    boxes: tuple[tuple[int, int, int], tuple[int, int, int]]


def tie_attributes(rng: np.random.Generator, k: int) -> tuple[int, int, int]:
    """(a, b_pos, b_neg): a uniform over k values, b_pos = a, b_neg = (a + o) mod k with o uniform in 1..k-1."""
    a = int(rng.integers(k))
    return a, a, (a + int(rng.integers(1, k))) % k


def tied_pair(
    paint: Callable[..., np.ndarray],
    background: np.ndarray,
    boxes: tuple[tuple[int, int, int], tuple[int, int, int]],
    nuisances: list[tuple],
    values: tuple[int, ...],
    rng: np.random.Generator,
) -> Item:
    """One item: object 0 painted with value a on the background, then object 1 with b_pos (the positive) or
    b_neg (the negative) on that; `paint(image, box, value, *nuisances[i])` draws object i."""
    a, b_pos, b_neg = tie_attributes(rng, len(values))
    first = paint(background, boxes[0], values[a], *nuisances[0])
    positive, negative = (paint(first, boxes[1], values[b], *nuisances[1]) for b in (b_pos, b_neg))
    return Item(positive, negative, (a, b_pos, b_neg), boxes)


def box_gap(box0: tuple[int, int, int], box1: tuple[int, int, int]) -> int:
    """The smallest Chebyshev distance between a pixel of one box and a pixel of the other (0: they touch or
    overlap). A window of side w covers two pixels only if their distance is at most w - 1."""
    (x0, y0, s0), (x1, y1, s1) = box0, box1
    dx = max(0, x1 - (x0 + s0 - 1), x0 - (x1 + s1 - 1))
    dy = max(0, y1 - (y0 + s0 - 1), y0 - (y1 + s1 - 1))
    return max(dx, dy)


class Bars:
    """Probe A: the length of two bars, top band against bottom band, on noise (module docstring)."""

    name, resolution, channels = "bars", 32, 1
    values = (2, 8)  # the attribute's values: the bar's length (px)
    side = 8  # each bar's box
    top_rows, bottom_rows = (1, 2), (22, 23)  # the boxes' first rows: top rows <= 9, bottom rows >= 22
    columns = (3, 4, 20, 21)  # the boxes' first columns, drawn independently: vertical or diagonal pairs
    noise_level, noise_std = -0.6, 0.12

    def draw(self, rng: np.random.Generator) -> Item:
        r, s = self.resolution, self.side
        bg = np.clip(self.noise_level + self.noise_std * rng.standard_normal((1, r, r)), -1.0, FOREGROUND - 0.05)
        boxes = (
            (int(rng.choice(self.columns)), int(rng.choice(self.top_rows)), s),
            (int(rng.choice(self.columns)), int(rng.choice(self.bottom_rows)), s),
        )
        levels = rng.uniform(0.5, 1.0, size=2)  # brightness of each bar (nuisance)
        angles = rng.integers(4, size=2) * np.pi / 4  # orientation of each bar (nuisance)
        return tied_pair(self._paint, bg, boxes, list(zip(angles, levels)), self.values, rng)

    def _paint(self, img: np.ndarray, box: tuple[int, int, int], length: int, angle: float, level: float) -> np.ndarray:
        x0, y0, s = box
        out = img.copy()
        window = img[:, y0 : y0 + s, x0 : x0 + s]
        out[:, y0 : y0 + s, x0 : x0 + s] = np.where(bar_mask(s, angle, length), level, window)
        return out


def bar_mask(side: int, angle: float, length: float) -> np.ndarray:
    """(side, side) bool: pixels within 1 px of the line through the box's centre at `angle` (0: horizontal,
    counter-clockwise) and within length / 2 of the centre."""
    c = np.arange(side) + 0.5 - side / 2
    v, u = np.meshgrid(-c, c, indexing="ij")  # v up, u right
    across = np.abs(u * np.sin(angle) - v * np.cos(angle))
    return (across <= 1.0) & (u**2 + v**2 <= (length / 2) ** 2)


class Dots:
    """Probe B: the number of dots in two groups in opposite corners, 27 px or more apart, on a grating
    texture (module docstring)."""

    name, resolution, channels = "dots", 48, 3
    values = (1, 4)  # the attribute's values: how many of the four slots hold a dot
    side, dot = 9, 3  # each group's box; each dot's side
    slots = ((1, 1), (1, 5), (5, 1), (5, 5))  # (row, column) of each dot's top-left corner in the box
    corner = 2  # each group's box starts 1 .. `corner` px from its corner's two edges: the boxes are at least
    # 48 - 2 (2 + 9) + 1 = 27 px apart on both axes, more than the trunk's receptive field spans (13 px:
    # probe_apart_model.receptive_field)

    def draw(self, rng: np.random.Generator) -> Item:
        r, s = self.resolution, self.side
        bg = self._texture(rng)
        near = [rng.integers(1, self.corner + 1, size=2) for _ in range(2)]  # offsets from each group's corner
        far = r - s - self.corner - 1  # added for a far corner: first row / column 37 or 38 at 48x48
        corners = ((0, 0), (1, 1)) if rng.random() < 0.5 else ((0, 1), (1, 0))  # (row side, column side)
        if rng.random() < 0.5:
            corners = corners[::-1]
        boxes = tuple((int(n[1] + far * cx), int(n[0] + far * cy), s) for n, (cy, cx) in zip(near, corners))
        hues = rng.random(2)  # each group's tint (nuisance)
        orders = [rng.permutation(len(self.slots)) for _ in range(2)]  # which slots fill first (nuisance)
        return tied_pair(self._paint, bg, boxes, list(zip(hues, orders)), self.values, rng)  # type: ignore[arg-type]

    def _texture(self, rng: np.random.Generator) -> np.ndarray:
        """A base tint plus two sinusoidal gratings (random orientation, period 3-8 px, phase): stationary, so
        an object's surroundings say nothing of where it is; amplitude 0.08 each, below FOREGROUND."""
        r = self.resolution
        yy, xx = np.mgrid[0:r, 0:r].astype(np.float64)
        base = np.full((self.channels, 1, 1), -0.75)
        wave = np.zeros((r, r))
        for _ in range(2):
            theta, period, phase = rng.uniform(0, np.pi), rng.uniform(3.0, 8.0), rng.uniform(0, 2 * np.pi)
            wave += 0.08 * np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period + phase)
        return np.clip(base + wave[None], -1.0, FOREGROUND - 0.05)

    def _paint(
        self, img: np.ndarray, box: tuple[int, int, int], count: int, hue: float, order: np.ndarray
    ) -> np.ndarray:
        x0, y0, _ = box
        colour = np.array(colorsys.hsv_to_rgb(hue, 0.3, 1.0)) * 2 - 1  # a light tint: every channel >= 0.4
        out = img.copy()
        for slot in order[:count]:
            dy, dx = self.slots[slot]
            out[:, y0 + dy : y0 + dy + self.dot, x0 + dx : x0 + dx + self.dot] = colour[:, None, None]
        return out


PROBES = {"bars": Bars, "dots": Dots}


def settings(probe: str) -> dict:
    """A probe's generator settings (its class's plain attributes: resolution, values, layout, background), for
    the run summaries."""
    gen = PROBES[probe]
    return {k: v for k, v in vars(gen).items() if not k.startswith("_") and isinstance(v, (int, float, str, tuple))}


def items(probe: str, seed: int, start: int, n: int) -> list[Item]:
    """Items start .. start + n - 1 of a probe's stream; item i comes from its own generator (seed, i), so any
    slice is reproducible alone."""
    gen = PROBES[probe]()
    return [gen.draw(np.random.default_rng([seed, i])) for i in range(start, start + n)]


def stack(batch: list[Item]) -> tuple[Tensor, Tensor]:
    """Positives then their negatives: images (2n, C, R, R) float32, labels 1 then 0."""
    x = np.stack([it.positive for it in batch] + [it.negative for it in batch])
    y = torch.cat([torch.ones(len(batch)), torch.zeros(len(batch))])
    return torch.from_numpy(x).float(), y


def box_masks(batch: list[Item], resolution: int) -> Tensor:
    """(2n, 2, R, R) float: each object's box as a 0/1 map, for the images of `stack(batch)` (a pair shares
    its boxes)."""
    m = torch.zeros(len(batch), 2, resolution, resolution)
    for i, it in enumerate(batch):
        for j, (x0, y0, s) in enumerate(it.boxes):
            m[i, j, y0 : y0 + s, x0 : x0 + s] = 1.0
    return torch.cat([m, m])
