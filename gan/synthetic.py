"""The built-in generated dataset and its closed-form global-coherence score.

Each image holds two objects, one at the far left and one at the far right, that must agree: the right
object is the exact mirror image of the left one (same shape, size, colour and row, mirrored column).
Everything else is local: a dark background with a mild random gradient that is *not* mirrored.
A generator that gets local structure right but not the long-range dependency draws two plausible
objects that disagree; `coherence_score` measures that disagreement from the pixels alone.
See docs/coherence.md for the design, the score's definition and its measured chance level.
"""

from __future__ import annotations

import colorsys
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

SHAPES = ("disc", "square", "triangle", "cross")

# Geometry, as fractions of the image side R (all drawn per image, shared by both objects).
SIZE_RANGE = (0.22, 0.30)  # object bounding-box side s
MAX_EDGE_OFFSET = 0.10  # left object starts at column x0 in [1, 0.1 R]: it ends before 0.4 R

# Intensities in [0, 1] (mapped to [-1, 1] at the end). Background < FOREGROUND_THRESHOLD < object.
BACKGROUND_BASE = 0.12  # per-channel base level drawn in [0, this]
BACKGROUND_GRADIENT = 0.10  # linear gradient of amplitude in [0, this], random direction
SATURATION_RANGE = (0.6, 1.0)  # RGB objects: random hue, this saturation, value 1
GREY_RANGE = (0.55, 1.0)  # grayscale objects: this grey level

# Score constants (see docs/coherence.md).
FOREGROUND_THRESHOLD = -0.2  # in [-1, 1] units (0.4 in [0, 1]): a pixel is foreground if max_c x > this
AREA_RANGE = (0.01, 0.35)  # an object is present on a side if its foreground covers this fraction of the half
CENTRE_BAND = 0.42  # columns in [0.42 W, W - 0.42 W) form the central band between the objects
MAX_CENTRE_FOREGROUND = 0.05  # fraction of all foreground allowed in the central band
COLOUR_TOLERANCE = 0.25  # RMS colour distance (in [0, 1] units) at which colour agreement reaches 0


def _shape_mask(shape: int, s: int) -> np.ndarray:
    """Hard (s, s) boolean mask of a shape in its bounding box; each shape is left-right symmetric."""
    c = (np.arange(s) + 0.5) / s  # pixel centres in (0, 1)
    v, u = np.meshgrid(c, c, indexing="ij")  # v: row (0 top), u: column
    if shape == 0:  # disc
        return (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    if shape == 1:  # square
        return np.ones((s, s), dtype=bool)
    if shape == 2:  # triangle, apex up; tested at each row's bottom edge so the apex row is never empty
        return np.abs(u - 0.5) <= (v + 0.5 / s) / 2 + 1e-9  # 1e-9: the apex row touches the bound exactly
    if shape == 3:  # cross (plus sign), arms one third of the box wide
        return (np.abs(u - 0.5) <= 1 / 6) | (np.abs(v - 0.5) <= 1 / 6)
    raise ValueError(f"shape index {shape} is not in 0..{len(SHAPES) - 1}")


def draw_object(
    rng: np.random.Generator, resolution: int, channels: int, x0_max: int | None = None
) -> tuple[int, int, int, int, np.ndarray]:
    """shape, side s, left edge x0, top row y0 and colour (C,) of one object, drawn in that order.

    x0 is drawn in [1, x0_max] (None: anywhere the object fits, like y0). The hue/saturation and the grey
    level are both drawn whatever `channels` is, so that the RGB and grayscale geometry agree.
    """
    r = resolution
    shape = int(rng.integers(len(SHAPES)))
    s = int(rng.integers(round(SIZE_RANGE[0] * r), round(SIZE_RANGE[1] * r) + 1))
    x0 = int(rng.integers(1, x0_max + 1)) if x0_max is not None else int(rng.integers(1, r - s))
    y0 = int(rng.integers(1, r - s))  # rows [y0, y0 + s) stay inside [1, r - 1)
    hue, sat = rng.random(), rng.uniform(*SATURATION_RANGE)
    grey = rng.uniform(*GREY_RANGE)
    colour = np.array(colorsys.hsv_to_rgb(hue, sat, 1.0)) if channels == 3 else np.array([grey])
    return shape, s, x0, y0, colour


def draw_background(rng: np.random.Generator, resolution: int, channels: int) -> np.ndarray:
    """(C, R, R) in [0, 1]: base + amplitude * (linear ramp in a random direction, rescaled to [0, 1])."""
    base = rng.uniform(0.0, BACKGROUND_BASE, size=3)
    amplitude, angle = rng.uniform(0.0, BACKGROUND_GRADIENT), rng.uniform(0.0, 2 * np.pi)
    coords = (np.arange(resolution) + 0.5) / resolution
    ys, xs = np.meshgrid(coords, coords, indexing="ij")
    ramp = xs * np.cos(angle) + ys * np.sin(angle)
    ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min())
    return base[:channels, None, None] + amplitude * ramp[None]


def check_arguments(what: str, size: int, resolution: int, channels: int, seed: int) -> None:
    """The argument checks every generated dataset shares (`what` names it in the message). Raises ValueError."""
    if size < 1:
        raise ValueError(f"{what} size must be at least 1, got {size}")
    if resolution < 16:
        raise ValueError(f"{what} resolution must be at least 16, got {resolution}")
    if channels not in (1, 3):
        raise ValueError(f"{what} channels must be 1 or 3, got {channels}")
    if seed < 0:
        raise ValueError(f"{what} seed must be non-negative, got {seed}")


class CoherenceDataset(Dataset):
    """`size` generated images of side `resolution`; item i depends only on (seed, i).

    Items are (float32 tensor in [-1, 1] of shape (channels, resolution, resolution), shape label).
    The label indexes `SHAPES`, so the dataset also serves conditional training (`num_classes` = 4).
    Images are drawn on the fly from a per-item numpy generator; the global RNGs are never touched.
    """

    num_classes = len(SHAPES)

    def __init__(self, size: int, resolution: int, channels: int = 3, seed: int = 0) -> None:
        check_arguments("CoherenceDataset", size, resolution, channels, seed)
        self.size, self.resolution, self.channels, self.seed = size, resolution, channels, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self._render(index, coherent=True)

    def incoherent(self, index: int) -> tuple[Tensor, int]:
        """Item `index` with its right object redrawn: the long-range tie broken, nothing else changed.

        The background and the left object are pixel-identical to item `index`; the right object is the
        mirror image of an independent object (its own shape, size, left-edge offset, row and colour, drawn
        from the same ranges after all of the item's draws). So each half alone has exactly the distribution
        it has in coherent images, and there is no seam. The label is the left object's shape.
        """
        return self._render(index, coherent=False)

    def _draw_object(self, rng: np.random.Generator) -> tuple[int, int, int, int, np.ndarray]:
        """shape, side s, left edge x0, top row y0 and colour (C,) of one left-side object."""
        return draw_object(rng, self.resolution, self.channels, max(1, round(MAX_EDGE_OFFSET * self.resolution)))

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        """(C, R, R) in [0, 1], drawn after the left object (a subclass may draw another kind)."""
        return draw_background(rng, self.resolution, self.channels)

    def _render(self, index: int, coherent: bool) -> tuple[Tensor, int]:
        if not -self.size <= index < self.size:
            raise IndexError(f"index {index} out of range for a dataset of {self.size} images")
        index %= self.size
        rng = np.random.default_rng([self.seed, index])
        r = self.resolution

        # Draw every attribute in a fixed order, whatever `channels` is, so that the geometry of item i is
        # the same in the RGB and the grayscale dataset.
        shape, s, x0, y0, colour = self._draw_object(rng)
        img = self._background(rng)  # (C, R, R)

        # Objects: the left one at columns [x0, x0 + s); the right one the mirror image of the left one
        # (coherent) or of an independently drawn one (incoherent, drawn last so item i itself is unchanged).
        left = np.zeros((r, r), dtype=bool)
        left[y0 : y0 + s, x0 : x0 + s] = _shape_mask(shape, s)
        img = np.where(left[None], colour[:, None, None], img)
        if coherent:
            right, right_colour = left[:, ::-1], colour
        else:
            shape2, s2, x2, y2, right_colour = self._draw_object(rng)
            right = np.zeros((r, r), dtype=bool)
            right[y2 : y2 + s2, x2 : x2 + s2] = _shape_mask(shape2, s2)
            right = right[:, ::-1]
        img = np.where(right[None], right_colour[:, None, None], img)
        return torch.from_numpy((img * 2.0 - 1.0).astype(np.float32)), shape


# ----------------------------------------------------------------------------------------------
# Coherence score


def coherence_components(images: Tensor) -> dict[str, Tensor]:
    """Per-image parts of the score, each of shape (B,): `valid` (0/1), `shape_iou`, `colour_agreement`.

    valid: each half holds an object (foreground area in AREA_RANGE of the half) and the central band
    between them is (nearly) empty, so that one symmetric blob across the midline does not count.
    shape_iou: IoU of the left foreground mask and the mirrored right one (shape, size, row and column).
    colour_agreement: 1 - (RMS distance of the two mean foreground colours, in [0, 1] units) / tolerance,
    clipped to [0, 1].
    """
    if images.ndim != 4 or images.shape[-1] < 4:
        raise ValueError(f"coherence score expects images of shape (B, C, H, W) with W >= 4, got {tuple(images.shape)}")
    x = images.detach().float()
    b, c, h, w = x.shape
    half = w // 2  # an odd middle column belongs to neither half
    fg = x.amax(dim=1) > FOREGROUND_THRESHOLD  # (B, H, W)
    left, right = fg[..., :half], fg[..., w - half :].flip(-1)  # (B, H, half), right mirrored
    area_l, area_r = left.sum((1, 2)).float(), right.sum((1, 2)).float()

    lo, hi = AREA_RANGE[0] * h * half, AREA_RANGE[1] * h * half
    band = round(CENTRE_BAND * w)
    centre_fg = fg[..., band : w - band].sum((1, 2)).float()
    separated = centre_fg <= MAX_CENTRE_FOREGROUND * fg.sum((1, 2)).float()
    valid = (area_l >= lo) & (area_l <= hi) & (area_r >= lo) & (area_r <= hi) & separated

    inter = (left & right).sum((1, 2)).float()
    union = (left | right).sum((1, 2)).float()
    shape_iou = inter / union.clamp(min=1.0)

    def mean_colour(xs: Tensor, m: Tensor, area: Tensor) -> Tensor:
        return (xs * m[:, None]).sum((2, 3)) / area.clamp(min=1.0)[:, None]  # (B, C)

    col_l = mean_colour(x[..., :half], left, area_l)
    col_r = mean_colour(x[..., w - half :].flip(-1), right, area_r)
    rms = ((col_l - col_r) / 2.0).pow(2).mean(1).sqrt()  # /2: [-1, 1] units -> [0, 1] units
    colour_agreement = (1.0 - rms / COLOUR_TOLERANCE).clamp(0.0, 1.0)
    return {"valid": valid.float(), "shape_iou": shape_iou, "colour_agreement": colour_agreement}


def coherence_per_image(images: Tensor) -> Tensor:
    """(B,) scores in [0, 1]: valid * shape_iou * colour_agreement (see `coherence_components`)."""
    parts = coherence_components(images)
    return parts["valid"] * parts["shape_iou"] * parts["colour_agreement"]


def coherence_score(images: Tensor) -> float:
    """Mean coherence of images (B, C, H, W) in [-1, 1].

    Exactly 1.0 on the dataset's images; chance (independent halves) is 0.012 for RGB and 0.072 for grayscale
    32x32 images (grey levels agree by chance more often than colours); see docs/coherence.md.
    """
    return coherence_per_image(images).mean().item()


# Chance level (independent halves) per (resolution, channels), measured in docs/coherence.md.
CHANCE_LEVEL = {(32, 3): 0.0117, (32, 1): 0.0724, (64, 3): 0.0108, (64, 1): 0.0671}


def chance_level(resolution: int, channels: int) -> float | None:
    """The measured chance-level score for images of this size (None where docs/coherence.md has no value)."""
    return CHANCE_LEVEL.get((resolution, channels))


def coherence_report(
    generator: torch.nn.Module, model_cfg, *, seed: int, device: torch.device | str = "cpu", n: int = 1000
) -> str:
    """One line: the coherence score of n samples of `generator` (called as generator(z, labels), in the mode it
    is in; z and labels from a CPU generator seeded with `seed`) next to the real-data and chance values."""
    rng = torch.Generator().manual_seed(seed)
    z = torch.randn(n, model_cfg.z_dim, generator=rng)
    k = model_cfg.num_classes
    y = torch.randint(k, (n,), generator=rng) if k else None
    with torch.no_grad():
        images = torch.cat(
            [
                generator(z[i : i + 250].to(device), None if y is None else y[i : i + 250].to(device)).float().cpu()
                for i in range(0, n, 250)
            ]
        )
    chance = chance_level(model_cfg.resolution, model_cfg.image_channels)
    at_chance = f"chance {chance:.3f}" if chance is not None else "chance not measured at this size"
    return f"coherence of {n} samples: {coherence_score(images):.3f} (real data 1.000, {at_chance}; docs/coherence.md)"


def make_independent_halves(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Images whose right half comes from another image of the batch (the chance-level reference).

    A random cyclic pairing: with permutation p, image p[k] keeps its left half and receives the right
    half of image p[k + 1] (indices mod B), so no image is paired with itself. Needs B >= 2.
    """
    b, w = images.shape[0], images.shape[-1]
    if b < 2:
        raise ValueError(f"make_independent_halves needs at least 2 images, got {b}")
    p = torch.randperm(b, generator=generator)
    donor = torch.empty_like(p)
    donor[p] = p.roll(-1)  # donor[p[k]] = p[k + 1]
    out = images.clone()
    out[..., w - w // 2 :] = images[donor][..., w - w // 2 :]
    return out


def coherence_scores(generator: torch.nn.Module, cfg: Any, names: list[str], *, num_samples: int, seed: int = 0,
                     **_options: Any) -> dict[str, float]:  # fmt: skip
    """The registry's `coherence` metric (gan/registry.py): mean coherence of `num_samples` generated images
    (`gan.runtime.sample_images`, so fixed by `seed`) and the means of its three components."""
    from gan.runtime import sample_images

    parts = coherence_components(sample_images(generator, num_samples, seed))
    score = parts["valid"] * parts["shape_iou"] * parts["colour_agreement"]
    return {"coherence": score.mean().item(), **{k: v.mean().item() for k, v in parts.items()}}


# ----------------------------------------------------------------------------------------------
# Does a discriminator notice a broken long-range tie?


def rank_auc(positive: Tensor, negative: Tensor) -> float:
    """P(a positive scores above a negative), ties counting one half: the Mann-Whitney U over n_pos * n_neg.

    0.5 means the scores do not separate the two sets; 1.0 that every positive scores above every negative."""
    pos, neg = positive.double().flatten(), negative.double().flatten()
    if not len(pos) or not len(neg):
        raise ValueError("rank_auc needs at least one positive and one negative score")
    # U = sum over positives of (#negatives below it + half #negatives equal to it), via sorted negatives.
    neg_sorted = neg.sort().values
    below = torch.searchsorted(neg_sorted, pos, right=False).double()
    equal = torch.searchsorted(neg_sorted, pos, right=True).double() - below
    return ((below + 0.5 * equal).sum() / (len(pos) * len(neg))).item()


@torch.no_grad()
def mismatch_auc(
    discriminator: torch.nn.Module, model_cfg: Any, *, num: int = 1000, seed: int = 1, batch_size: int = 100
) -> dict[str, float]:
    """How well D's output tells coherent images from their incoherent versions (issue 16, part 3).

    `num` images of a CoherenceDataset drawn with `seed` (1 by default: not the training images, which use
    seed 0) and, for each, `CoherenceDataset.incoherent` of the same index: identical background and left
    object, right object redrawn, so only the long-range tie differs. D is called as D(images, labels) with
    the left object's shape as the label when it is class-conditional (the label a real image carries).
    Returns `d_auc` (rank_auc of D's outputs, coherent as positives: 0.5 = D cannot see the mismatch),
    `d_paired` (fraction of the `num` pairs where the coherent image scores higher, ties one half) and the
    mean outputs `d_coherent` / `d_incoherent`."""
    data = CoherenceDataset(num, model_cfg.resolution, model_cfg.image_channels, seed=seed)
    conditional = bool(model_cfg.num_classes)
    scores: dict[str, list[Tensor]] = {"coherent": [], "incoherent": []}
    for start in range(0, num, batch_size):
        idx = range(start, min(start + batch_size, num))
        for kind, draw in (("coherent", data.__getitem__), ("incoherent", data.incoherent)):
            items = [draw(i) for i in idx]
            x = torch.stack([image for image, _ in items])
            y = torch.tensor([label for _, label in items]) if conditional else None
            scores[kind].append(discriminator(x, y).flatten().double())
    coherent, incoherent = torch.cat(scores["coherent"]), torch.cat(scores["incoherent"])
    paired = ((coherent > incoherent).double() + 0.5 * (coherent == incoherent).double()).mean().item()
    return {
        "d_auc": rank_auc(coherent, incoherent),
        "d_paired": paired,
        "d_coherent": coherent.mean().item(),
        "d_incoherent": incoherent.mean().item(),
    }
