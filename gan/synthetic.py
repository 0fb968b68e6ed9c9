"""The built-in generated dataset and its closed-form global-coherence score.

Each image holds two objects, one at the far left and one at the far right, that must agree: the right
object is the exact mirror image of the left one (same shape, size, colour and row, mirrored column).
Everything else is local: a dark background with a mild random gradient that is *not* mirrored.
A generator that gets local structure right but not the long-range dependency draws two plausible
objects that disagree; `coherence_score` measures that disagreement from the pixels alone.
See docs/coherence.md for the design, the score's definition and its measured chance level.

The `detail` variant (docs/detail_tie.md) also fills each object with a random binary pattern of
PATTERN_CELL-px square cells, the right object's pattern the mirror of the left one's, so the tie reaches
fine detail; `detail_agreement` scores it.
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

# The detail variant (docs/detail_tie.md).
VARIANTS = ("objects", "detail")  # what the right object repeats: shape, colour and row; or those and a pattern
PATTERN_CELL = 2  # side (px) of the pattern's square cells, anchored at the object's top-left corner
PATTERN_CONTRAST = 0.25  # a 0-bit cell is drawn at (1 - this) x the object's colour: still foreground (> 0.4)
MIN_PATTERN_STD = 0.02  # detail agreement needs this luminance std ([-1, 1] units) on both sides, else it is 0


def shape_mask(shape: int, s: int) -> np.ndarray:
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


def pattern_shade(rng: np.random.Generator, s: int) -> np.ndarray:
    """(s, s) brightness factors of one object's pattern: ceil(s / PATTERN_CELL)^2 fair bits, each a
    PATTERN_CELL-px square cell, 1 for a 1-bit and 1 - PATTERN_CONTRAST for a 0-bit."""
    n = -(-s // PATTERN_CELL)
    bits = rng.integers(0, 2, size=(n, n)).astype(np.float64)
    cells = np.kron(bits, np.ones((PATTERN_CELL, PATTERN_CELL)))[:s, :s]  # (s, s)
    return 1.0 - PATTERN_CONTRAST * (1.0 - cells)


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
    `variant` "detail" adds the mirrored bit pattern (`pattern_shade`), drawn after every other draw of the
    item, so its geometry, colours and background are those of the "objects" item of the same (seed, index).
    """

    num_classes = len(SHAPES)

    def __init__(self, size: int, resolution: int, channels: int = 3, seed: int = 0, variant: str = "objects") -> None:
        check_arguments("CoherenceDataset", size, resolution, channels, seed)
        if variant not in VARIANTS:
            raise ValueError(f"CoherenceDataset variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        self.size, self.resolution, self.channels, self.seed = size, resolution, channels, seed
        self.variant = variant

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
        In the detail variant only the right object's pattern is redrawn (its shape, size, row, column and
        colour still mirror the left object's), so only the detail tie is broken.
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
        left[y0 : y0 + s, x0 : x0 + s] = shape_mask(shape, s)
        detail = self.variant == "detail"

        def shade() -> np.ndarray:  # (R, R): the object's pattern in its box (detail), 1 elsewhere
            out = np.ones((r, r))
            if detail:
                out[y0 : y0 + s, x0 : x0 + s] = pattern_shade(rng, s)
            return out

        left_shade = shade()
        img = np.where(left[None], colour[:, None, None] * left_shade[None], img)
        if coherent or detail:  # detail: an incoherent item keeps the mirrored object, redraws its pattern
            right, right_colour = left[:, ::-1], colour
            right_shade = (left_shade if coherent else shade())[:, ::-1]
        else:
            shape2, s2, x2, y2, right_colour = self._draw_object(rng)
            right = np.zeros((r, r), dtype=bool)
            right[y2 : y2 + s2, x2 : x2 + s2] = shape_mask(shape2, s2)
            right, right_shade = right[:, ::-1], np.ones((r, r))
        img = np.where(right[None], right_colour[:, None, None] * right_shade[None], img)
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


def detail_agreement(images: Tensor) -> Tensor:
    """(B,) agreement of the fine detail of the two objects (the detail variant's tie), in [-1, 1].

    The Pearson correlation of the luminance (channel mean) of the left object and the mirrored right one,
    over the pixels where both foreground masks overlap; 0 where the image is not `valid`
    (`coherence_components`) or either side's luminance there has std below MIN_PATTERN_STD (a flat object
    carries no detail). Exactly 1 on the detail variant's coherent images (the luminance is an increasing
    linear function of the shared pattern); 0 in expectation for independent patterns (chance level).
    """
    parts = coherence_components(images)
    x = images.detach().float()
    w = x.shape[-1]
    half = w // 2
    lum = x.mean(dim=1)  # (B, H, W)
    fg = x.amax(dim=1) > FOREGROUND_THRESHOLD  # (B, H, W)
    both = (fg[..., :half] & fg[..., w - half :].flip(-1)).float()  # (B, H, half): overlap, right mirrored
    lum_l, lum_r = lum[..., :half], lum[..., w - half :].flip(-1)
    n = both.sum((1, 2)).clamp(min=1.0)

    def centred(v: Tensor) -> Tensor:
        return (v - ((v * both).sum((1, 2)) / n)[:, None, None]) * both  # zero off the overlap

    dl, dr = centred(lum_l), centred(lum_r)
    var_l, var_r = dl.pow(2).sum((1, 2)) / n, dr.pow(2).sum((1, 2)) / n
    corr = (dl * dr).sum((1, 2)) / n / (var_l * var_r).sqrt().clamp(min=1e-12)
    textured = (var_l.sqrt() >= MIN_PATTERN_STD) & (var_r.sqrt() >= MIN_PATTERN_STD)
    return torch.where(textured & (parts["valid"] > 0), corr.clamp(-1.0, 1.0), torch.zeros_like(corr))


DETAIL_CHANCE_LEVEL = 0.0  # detail agreement of independent patterns, in expectation (docs/detail_tie.md)


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


REAL_DATA_LEVEL = 1.0  # the coherence of the built-in dataset's own images: every object mirrored exactly


def coherence_levels(resolution: int, channels: int) -> dict[str, float | None]:
    """What a coherence score is read against: real data and the measured chance level (None: not measured)."""
    return {"real_data": REAL_DATA_LEVEL, "chance": chance_level(resolution, channels)}


def chance_level(resolution: int, channels: int) -> float | None:
    """The measured chance-level score for images of this size (None where docs/coherence.md has no value)."""
    return CHANCE_LEVEL.get((resolution, channels))


def coherence_report(
    generator: torch.nn.Module, model_cfg, *, seed: int, n: int = 1000, variant: str = "objects"
) -> str:
    """One line: the coherence score of `gan.sampling.sample_images(generator, n, seed)` next to the real-data
    and chance values (and, for the detail variant, the detail agreement next to its own)."""
    from gan.sampling import sample_images

    images = sample_images(generator, n, seed)
    chance = chance_level(model_cfg.resolution, model_cfg.image_channels)
    at_chance = f"chance {chance:.3f}" if chance is not None else "chance not measured at this size"
    line = f"coherence of {n} samples: {coherence_score(images):.3f} (real data {REAL_DATA_LEVEL:.3f}, {at_chance}; docs/coherence.md)"
    if variant == "detail":
        line += (
            f"; detail agreement {detail_agreement(images).mean().item():.3f} (real data {REAL_DATA_LEVEL:.3f}, "
            f"chance {DETAIL_CHANCE_LEVEL:.3f}; docs/detail_tie.md)"
        )
    return line


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
    (`gan.sampling.sample_images`, so fixed by `seed`) and the means of its three components; with
    data.builtin_variant "detail", also the mean `detail_agreement`."""
    from gan.sampling import sample_images

    images = sample_images(generator, num_samples, seed)
    parts = coherence_components(images)
    score = parts["valid"] * parts["shape_iou"] * parts["colour_agreement"]
    out = {"coherence": score.mean().item(), **{k: v.mean().item() for k, v in parts.items()}}
    if cfg.data.builtin_variant == "detail":
        out["detail_agreement"] = detail_agreement(images).mean().item()
    return out
