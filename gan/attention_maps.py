"""SAGAN-style attention maps: the figure of where a block's query points attend, written as PNG.

Everything is numpy + PIL (no matplotlib), so the same inputs give the same bytes; images are mapped to
pixels as gan.grids maps them.

Attention maps follow the SAGAN paper's figure: for a query point in an image, colour each pixel by the
attention weight its query cell gives to the key cell covering that pixel. Weights are shown as multiples of
uniform (weight x number of keys: 1 means uniform attention) on one log colour scale shared by every panel
of a figure, uniform in its middle, so a nearly uniform map reads as a flat mid colour, not as a bright
wash; the figure's colour bar gives the scale, and each block's header its mean attention entropy as a
fraction of uniform's (log of the number of keys). A key cell covers exactly the
pixels of the query cells it was pooled from (query cell q -> key cell q // 2 under 2x2 subsampling). For an
odd query side 2k+1, ceil-mode pooling (gan.attention) gives k+1 keys, the last covering one query row;
floor-mode pooling gives k keys, and the last query row/column has no key and shows 0.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from gan.grids import ArrayLike, images_to_uint8, tile, to_float64, write_png

if TYPE_CHECKING:  # only for type hints: gan.attention is imported lazily where it is used
    from gan.attention import AttentionRecord

# Query-marker colours, cycled over query indices; none is red, so a marker never looks like a hot spot.
MARKER_COLORS: tuple[tuple[int, int, int], ...] = ((0, 255, 255), (0, 255, 0), (64, 128, 255), (255, 255, 255))
HEADER_HEIGHT = 14  # pixels of each label row above an attention figure (names, entropy, queries)
SWATCH_WIDTH = HEADER_HEIGHT  # a query label's colour disc and the gap after it
SCALE_MIN_TOP = 2.0  # a figure's colour scale spans at least 1/2x ... 2x uniform
FIGURE_PADDING = 2  # pixels between attention-figure panels
FIGURE_BACKGROUND = 255  # white behind panels and labels

# Piecewise-linear approximation of matplotlib's "inferno": (position, R, G, B). Red rises monotonically.
_INFERNO = np.array(
    [
        [0.00, 0, 0, 4],
        [0.25, 87, 16, 110],
        [0.50, 188, 55, 84],
        [0.75, 249, 142, 9],
        [1.00, 252, 255, 164],
    ],
    dtype=np.float64,
)


def query_points(h: int, w: int, k: int, generator: torch.Generator | None = None) -> np.ndarray:
    """k distinct query points on an h x w grid, as a (k, 2) int array of (row, col).

    Without a generator the points are fixed and spread out: rows at the centres of k equal bands, columns
    along a golden-ratio sequence (so they are not on one diagonal). With a torch.Generator they are a
    random Latin hypercube: point i lies in row band i and a randomly permuted column band, at a uniform
    position inside both, so random points never bunch up (uniform draws without replacement if k > min(h, w)).
    """
    if not 1 <= k <= h * w:
        raise ValueError(f"need 1 <= k <= h*w query points, got k={k} for a {h}x{w} grid")
    if generator is not None and k > min(h, w):
        flat = torch.randperm(h * w, generator=generator)[:k].numpy()
        return np.stack([flat // w, flat % w], axis=1).astype(np.int64)
    if generator is not None:
        bands = torch.arange(k + 1)
        row_lo, row_hi = bands[:-1] * h // k, bands[1:] * h // k  # (k,) non-empty integer bands
        perm = torch.randperm(k, generator=generator)
        col_lo, col_hi = perm * w // k, (perm + 1) * w // k
        u = torch.rand(k, 2, generator=generator, dtype=torch.float64)
        rows = row_lo + (u[:, 0] * (row_hi - row_lo)).long()
        cols = col_lo + (u[:, 1] * (col_hi - col_lo)).long()
        return torch.stack([rows, cols], dim=1).numpy().astype(np.int64)
    i = np.arange(k)
    rows = np.floor((i + 0.5) / k * h)
    cols = np.floor(((0.5 + i * 0.6180339887498949) % 1.0) * w)
    points = np.stack([rows, cols], axis=1).astype(np.int64)
    if len({tuple(p) for p in points}) < k:  # tiny grids: fall back to the first k cells, row-major
        flat = np.arange(k)
        points = np.stack([flat // w, flat % w], axis=1).astype(np.int64)
    return points


def _pixel_to_cell(pixels: int, cells: int) -> np.ndarray:
    """For each of `pixels` pixels along one axis, the index of the cell (of `cells` stretched evenly) it lies in."""
    return np.arange(pixels) * cells // pixels


def _cell_center(index: int, cells: int, pixels: int) -> float:
    """Centre, in pixel coordinates, of the pixels `_pixel_to_cell` assigns to cell `index`."""
    start = -(-index * pixels // cells)  # ceil(index * pixels / cells)
    stop = -(-(index + 1) * pixels // cells)
    return (start + stop - 1) / 2


def _pool_factor(query: int, key: int) -> int:
    """1 when keys are the query grid, 2 when they are its 2x2 max-pool (floor or ceil mode)."""
    if key == query:
        return 1
    if key in (query // 2, (query + 1) // 2):
        return 2
    raise ValueError(f"key grid side {key} is neither the query side {query} nor its 2x2-pooled side")


def attention_heatmap(
    weights_row: ArrayLike,
    key_hw: tuple[int, int],
    out_hw: tuple[int, int],
    query_hw: tuple[int, int] | None = None,
) -> np.ndarray:
    """One query's attention row (length Hk*Wk) -> an (out_h, out_w) float32 map of its weights.

    Nearest-neighbour placement, no interpolation: the query grid `query_hw` is stretched evenly over the
    output (pixel p lies in query cell p * Hq // out_h), and each pixel takes the weight of the key cell its
    query cell was pooled into (key = query // 2 with 2x2 subsampling, floor or ceil mode; key = query
    without). Pixels whose query cell has no key (odd sides under floor pooling) are 0. `query_hw=None`
    means the keys tile the whole output evenly (query grid = key grid).
    """
    hk, wk = key_hw
    out_h, out_w = out_hw
    hq, wq = query_hw if query_hw is not None else key_hw
    row = to_float64(weights_row).astype(np.float32).reshape(-1)
    if row.size != hk * wk:
        raise ValueError(f"attention row has {row.size} weights, expected Hk*Wk = {hk}*{wk} = {hk * wk}")
    keys = row.reshape(hk, wk)  # (Hk, Wk)
    key_row = _pixel_to_cell(out_h, hq) // _pool_factor(hq, hk)  # (out_h,) key row of each pixel row
    key_col = _pixel_to_cell(out_w, wq) // _pool_factor(wq, wk)  # (out_w,)
    row_ok, col_ok = key_row < hk, key_col < wk
    heat = np.zeros((out_h, out_w), dtype=np.float32)
    heat[np.ix_(row_ok, col_ok)] = keys[np.ix_(key_row[row_ok], key_col[col_ok])]
    return heat


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape S) -> (*S, 3) float RGB in [0, 255], an approximation of inferno."""
    v = np.clip(values, 0.0, 1.0)
    return np.stack([np.interp(v, _INFERNO[:, 0], _INFERNO[:, c]) for c in (1, 2, 3)], axis=-1)


def scale_top(largest_multiple: float) -> float:
    """The top of a figure's colour scale, in multiples of uniform: its largest weight, at least
    `SCALE_MIN_TOP` (so that uniform sits in the middle of a scale that spans something)."""
    return max(SCALE_MIN_TOP, float(largest_multiple))


def scale_position(multiples: np.ndarray, top: float) -> np.ndarray:
    """Multiples of uniform -> colour positions in [0, 1] on the log scale of `top` (> 1): 1/top and below -> 0,
    uniform (1) -> 0.5, top -> 1; 0 (no key) -> 0."""
    with np.errstate(divide="ignore"):
        position = 0.5 + 0.5 * np.log(np.asarray(multiples, dtype=np.float64)) / math.log(top)
    return np.clip(position, 0.0, 1.0)  # log 0 = -inf -> 0


def entropy_fraction(weights: ArrayLike) -> float:
    """Mean entropy of the attention rows of `weights` (..., N) divided by uniform's, log N (1: uniform)."""
    w = to_float64(weights)
    n = w.shape[-1]
    if n < 2:
        return 1.0  # one key: every row is uniform
    row_entropy = -(w * np.log(np.where(w > 0, w, 1.0))).sum(-1)  # 0 log 0 = 0
    return float(row_entropy.mean() / math.log(n))


def overlay(
    image_uint8: np.ndarray,
    positions: np.ndarray,
    alpha: float = 0.5,
    point: tuple[float, float] | None = None,
    color: tuple[int, int, int] = MARKER_COLORS[0],
) -> np.ndarray:
    """Blend `colormap(positions)` (colour positions in [0, 1], see `scale_position`) over the image's grey
    level; mark `point` (row, col) with a ring.

    The image (H, W, 3) uint8 is reduced to luminance (ITU-R 601, as PIL's "L") so that every colour in the
    result is the colour map's.
    """
    if image_uint8.shape[:2] != positions.shape or image_uint8.ndim != 3:
        raise ValueError(f"image {image_uint8.shape} and heatmap {positions.shape} must be (H, W, 3) and (H, W)")
    grey = image_uint8.astype(np.float64) @ np.array([0.299, 0.587, 0.114])  # (H, W)
    blended = (1.0 - alpha) * grey[..., None] + alpha * colormap(positions)  # (H, W, 3)
    out = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    if point is not None:
        out = _mark(out, point, color)
    return out


def _mark(image: np.ndarray, point: tuple[float, float], color: tuple[int, int, int]) -> np.ndarray:
    """Draw a ring (black outline, coloured inside) centred on pixel coordinates (row, col)."""
    r = max(2.0, min(image.shape[:2]) / 20)
    y, x = point
    pil = Image.fromarray(image)
    draw = ImageDraw.Draw(pil)
    draw.ellipse([x - r - 1, y - r - 1, x + r + 1, y + r + 1], outline=(0, 0, 0), width=4)
    draw.ellipse([x - r, y - r, x + r, y + r], outline=color, width=2)
    return np.asarray(pil)


def header_strip(
    labels: Sequence[tuple[str, int, int]], width: int, swatches: Sequence[tuple[int, int, int] | None] = ()
) -> np.ndarray:
    """A white (HEADER_HEIGHT, width, 3) strip with each label centred over its [left, right) pixel span;
    `swatches[i]`, when given, is drawn as a small ring of that colour before label i (the query markers')."""
    strip = Image.new("RGB", (width, HEADER_HEIGHT), (FIGURE_BACKGROUND,) * 3)
    draw = ImageDraw.Draw(strip)
    font = ImageFont.load_default_imagefont()  # bitmap font: identical pixels everywhere
    for i, (text, left, right) in enumerate(labels):
        swatch = swatches[i] if i < len(swatches) else None
        room = right - left - (SWATCH_WIDTH if swatch else 0)
        if draw.textlength(text, font=font) > room:  # keep the end of long names: "..blocks.2.attn"
            while len(text) > 1 and draw.textlength(".." + text, font=font) > room:
                text = text[1:]
            text = ".." + text
        x = left + (room - draw.textlength(text, font=font)) / 2
        if swatch:
            d = HEADER_HEIGHT - 4  # a disc like the markers: black outline, the ring's colour inside
            draw.ellipse([x, 2, x + d, 2 + d], fill=swatch, outline=(0, 0, 0), width=1)
            x += SWATCH_WIDTH
        draw.text((x, 1), text, fill=(0, 0, 0), font=font)
    return np.asarray(strip)


def _title(text: str, width: int) -> np.ndarray:
    """A white (HEADER_HEIGHT, width, 3) strip with `text` at its left edge (the figure's title)."""
    strip = Image.new("RGB", (width, HEADER_HEIGHT), (FIGURE_BACKGROUND,) * 3)
    ImageDraw.Draw(strip).text((FIGURE_PADDING, 1), text, fill=(0, 0, 0), font=ImageFont.load_default_imagefont())
    return np.asarray(strip)


def colour_bar_labels(top: float) -> tuple[str, str, str]:
    """The colour bar's left end, middle and right end, in multiples of uniform: 1/top, uniform, top."""
    return f"<={1 / top:.3g}x", "1x = uniform", f"{top:.3g}x"


def _colour_bar(width: int, top: float) -> np.ndarray:
    """A white strip with the panels' shared colour scale (log, 1/top ... uniform ... top) and its meaning."""
    strip = Image.new("RGB", (width, 2 * HEADER_HEIGHT), (FIGURE_BACKGROUND,) * 3)
    draw = ImageDraw.Draw(strip)
    font = ImageFont.load_default_imagefont()
    low, middle, high = colour_bar_labels(top)
    bar_left = FIGURE_PADDING + int(draw.textlength(low, font=font)) + 4
    bar_width = max(16, min(256, width // 3))
    ramp = colormap(np.linspace(0.0, 1.0, bar_width))  # (bar_width, 3)
    bar = np.repeat(np.clip(np.rint(ramp), 0, 255).astype(np.uint8)[None], HEADER_HEIGHT - 4, axis=0)
    strip.paste(Image.fromarray(bar), (bar_left, 2))
    mid = bar_left + (bar_width - 1) // 2  # position 0.5: uniform; ticks above and below the bar
    draw.line([(mid, 0), (mid, 1)], fill=(0, 0, 0))
    draw.line([(mid, HEADER_HEIGHT - 2), (mid, HEADER_HEIGHT - 1)], fill=(0, 0, 0))
    draw.text((FIGURE_PADDING, 2), low, fill=(0, 0, 0), font=font)
    draw.text((bar_left + bar_width + 3, 2), f"{high}  (middle tick: {middle})", fill=(0, 0, 0), font=font)
    notes = (  # the longest that fits the figure's width
        "colour: each key's attention weight as a multiple of uniform (1 / keys), log scale shared by all panels",
        "colour: attention weight x number of keys (1x = uniform), one log scale",
        "weight x keys, log scale",
    )
    note = next((n for n in notes if draw.textlength(n, font=font) <= width - 2 * FIGURE_PADDING), notes[-1])
    draw.text((FIGURE_PADDING, HEADER_HEIGHT + 1), note, fill=(0, 0, 0), font=font)
    return np.asarray(strip)


def attention_figure(
    images: ArrayLike,
    records: Sequence[AttentionRecord],
    queries: int = 3,
    seed: int | None = 0,
    panel_size: int = 128,
    points: np.ndarray | None = None,
    title: str | None = None,
) -> np.ndarray:
    """A (H', W', 3) uint8 figure: one row per image; columns = the image, then per record and query point
    the image overlaid with where that query attends (weights x keys, on one log scale for all panels).

    `records` are `gan.attention.AttentionRecord`s (.name, .weights (B, Hq*Wq, Hk*Wk), .query_hw, .key_hw)
    for the same batch as `images` (B, C, R, R) in [-1, 1]. Query points are picked per image in pixel space
    (seeded draws; `seed=None`: the same spread points for every image; `points`, a (k, 2) array of pixel
    (row, col): those k points for every image, `queries` ignored) and mapped to each block's query cell; overlay markers sit at that cell's centre. Panels are upscaled (nearest) to about `panel_size`
    pixels. Three header rows: each block's name, its mean entropy over every query row of the batch as a
    fraction of uniform's, and per column the query ("query 1" with its ring's colour). A colour bar with
    the shared scale goes below the panels; with `title`, a title strip goes above. Same inputs -> same bytes.
    """
    u8 = images_to_uint8(images)  # (B, R, R, 3)
    b, h, w, _ = u8.shape
    if not records:
        raise ValueError("no attention records: the model ran no non-local block (is attention enabled?)")
    for rec in records:
        hq, wq = rec.query_hw
        hk, wk = rec.key_hw
        if tuple(rec.weights.shape) != (b, hq * wq, hk * wk):
            raise ValueError(
                f"record {rec.name!r}: weights {tuple(rec.weights.shape)} != (B, Hq*Wq, Hk*Wk)"
                f" = ({b}, {hq * wq}, {hk * wk}); records and images must come from the same batch"
            )
    scale = max(1, round(panel_size / max(h, w)))
    ph, pw = h * scale, w * scale
    big = np.repeat(np.repeat(u8, scale, axis=1), scale, axis=2)  # (B, R*s, R*s, 3)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    if points is not None:
        points = np.asarray(points, dtype=np.int64).reshape(-1, 2)  # (k, 2) pixel (row, col)
        queries = len(points)
        if queries == 0 or not ((points >= 0) & (points < (h, w))).all():
            raise ValueError(f"query points must be (row, col) pixels inside the {h}x{w} image; got {points.tolist()}")
    weights = [torch.as_tensor(rec.weights).detach().to("cpu", torch.float32) for rec in records]

    marked_images, heats = [], []  # per image: its marked panel; per (image, record, query): heat, centre, query
    for i in range(b):
        picked = points if points is not None else query_points(h, w, queries, generator)  # (queries, 2) pixels
        marked = big[i]
        for j, (pr, pc) in enumerate(picked):
            marked = _mark(marked, ((pr + 0.5) * scale - 0.5, (pc + 0.5) * scale - 0.5), _marker_color(j))
        marked_images.append(marked)
        for rec, wts in zip(records, weights):
            hq, wq = rec.query_hw
            keys = rec.key_hw[0] * rec.key_hw[1]
            for j, (pr, pc) in enumerate(picked):
                qr, qc = pr * hq // h, pc * wq // w  # the query cell holding this pixel
                row = wts[i, qr * wq + qc]
                heat = attention_heatmap(row, rec.key_hw, (ph, pw), rec.query_hw) * keys  # multiples of uniform
                heats.append((heat, (_cell_center(qr, hq, ph), _cell_center(qc, wq, pw)), j))
    top = scale_top(max(float(heat.max()) for heat, _, _ in heats))  # one scale for every panel
    per_image = len(records) * queries
    panels = []
    for i in range(b):
        panels.append(marked_images[i])
        for heat, center, j in heats[i * per_image : (i + 1) * per_image]:
            panels.append(overlay(big[i], scale_position(heat, top), point=center, color=_marker_color(j)))

    grid = tile(np.stack(panels), 1 + per_image, FIGURE_PADDING, fill=FIGURE_BACKGROUND)
    step = pw + FIGURE_PADDING
    names, entropies, query_labels = [("image", FIGURE_PADDING, FIGURE_PADDING + pw)], [], []
    for k, rec in enumerate(records):
        left = FIGURE_PADDING + (1 + k * queries) * step
        span = (left, left + queries * step - FIGURE_PADDING)
        names.append((rec.name, *span))
        entropies.append((f"entropy {entropy_fraction(rec.weights):.2f} of uniform", *span))
        query_labels += [(f"query {j + 1}", left + j * step, left + j * step + pw) for j in range(queries)]
    swatches = [_marker_color(j) for j in range(queries)] * len(records)
    width = grid.shape[1]
    figure = [
        header_strip(names, width),
        header_strip(entropies, width),
        header_strip(query_labels, width, swatches),
        grid,
    ]
    figure.append(_colour_bar(width, top))
    if title is not None:
        figure.insert(0, _title(title, width))
    return np.concatenate(figure, axis=0)


def attention_title(net: str, step: int | None) -> str:
    """'G on generated images, step 400' / 'D on real images, step 400': the network the figure shows."""
    what = {"G": "G (generator) on generated images", "D": "D (discriminator) on real images"}[net]
    return what + (f", step {step}" if step is not None else "")


def _marker_color(j: int) -> tuple[int, int, int]:
    return MARKER_COLORS[j % len(MARKER_COLORS)]


def _forward_recorded(
    module: torch.nn.Module, *inputs: torch.Tensor | None
) -> tuple[torch.Tensor, list[AttentionRecord]]:
    """`module(*inputs)` without gradients, in eval mode, recording every non-local block call."""
    from gan.attention import record_attention
    from gan.runtime import eval_mode

    with eval_mode(module), record_attention(module) as records:
        output = module(*inputs)
    return output, records


def generator_attention_figure(
    generator: torch.nn.Module,
    z: torch.Tensor,
    labels: torch.Tensor | None = None,
    queries: int = 3,
    seed: int | None = 0,
    step: int | None = None,
) -> np.ndarray:
    """Generate from `z` (and `labels`) in eval mode and draw where each G non-local block attends; the
    title names G and the training `step` (when given)."""
    images, records = _forward_recorded(generator, z, labels)
    return attention_figure(images, records, queries=queries, seed=seed, title=attention_title("G", step))


def discriminator_attention_figure(
    discriminator: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    queries: int = 3,
    seed: int | None = 0,
    step: int | None = None,
) -> np.ndarray:
    """Run D on `images` (B, C, R, R) in [-1, 1] in eval mode and draw where each D non-local block attends;
    the title names D and the training `step` (when given)."""
    _, records = _forward_recorded(discriminator, images, labels)
    return attention_figure(images, records, queries=queries, seed=seed, title=attention_title("D", step))


def attention_figures(
    generator: torch.nn.Module | None,
    discriminator: torch.nn.Module | None,
    z: torch.Tensor,
    labels: torch.Tensor | None,
    real: torch.Tensor | None = None,
    real_labels: torch.Tensor | None = None,
    queries: int = 3,
    step: int | None = None,
) -> dict[str, np.ndarray]:
    """The SAGAN-paper figure for each network that has non-local blocks: "G" generated from `z`, "D" on the
    `real` images. Training, the experiments and sample.py all draw their maps through this one function."""
    from gan.attention import attention_blocks

    figures = {}
    if generator is not None and attention_blocks(generator):
        figures["G"] = generator_attention_figure(generator, z, labels, queries=queries, step=step)
    if discriminator is not None and real is not None and attention_blocks(discriminator):
        figures["D"] = discriminator_attention_figure(discriminator, real, real_labels, queries=queries, step=step)
    return figures


def save_attention_figure(figure: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a figure from `attention_figure` (or the G/D variants) as PNG, atomically; returns the path."""
    return write_png(figure, path)
