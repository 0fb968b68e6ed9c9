"""Image grids, written as PNG.

This module and gan.attention_maps are the places in the repository that turn tensors into image files.
Everything is numpy + PIL (no matplotlib, no wandb), so the same inputs give the same bytes.

Pixel mapping, used for every image: uint8 = clamp(rint((x + 1) * 127.5), 0, 255) for x in [-1, 1]
(rint rounds halves to even; NaN becomes 0, +inf 255). Grayscale (C=1) is repeated to RGB.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gan.files import atomic_file

ArrayLike = torch.Tensor | np.ndarray

GRID_MIN_CELL = 64  # saved sample grids enlarge smaller images (nearest) to at least this many pixels


def to_float64(x: ArrayLike) -> np.ndarray:
    """A tensor or array as a float64 numpy array (on the CPU, detached)."""
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def images_to_uint8(images: ArrayLike) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] with C in {1, 3} -> (B, H, W, 3) uint8 with the module's exact mapping."""
    x = to_float64(images)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (B, C, H, W) with C = 1 or 3, got {tuple(x.shape)}")
    x = np.nan_to_num(x, nan=-1.0, posinf=1.0, neginf=-1.0)
    u8 = np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
    u8 = u8.transpose(0, 2, 3, 1)  # (B, H, W, C)
    if u8.shape[-1] == 1:
        u8 = np.repeat(u8, 3, axis=-1)  # (B, H, W, 3)
    return u8


def tile(panels: np.ndarray, ncol: int, padding: int, fill: int) -> np.ndarray:
    """(N, h, w, 3) uint8 -> one (rows*(h+p)+p, ncol*(w+p)+p, 3) array, filled row by row."""
    n, h, w, _ = panels.shape
    rows = math.ceil(n / ncol)
    out = np.full((rows * (h + padding) + padding, ncol * (w + padding) + padding, 3), fill, dtype=np.uint8)
    for i in range(n):
        top = padding + (i // ncol) * (h + padding)
        left = padding + (i % ncol) * (w + padding)
        out[top : top + h, left : left + w] = panels[i]
    return out


def make_grid_array(images: ArrayLike, nrow: int | None = None, padding: int = 2, scale: int = 1) -> np.ndarray:
    """Images (B, C, H, W) in [-1, 1] -> one (H', W', 3) uint8 grid.

    `nrow` is the number of images per row (torchvision's meaning); default ceil(sqrt(B)). Every image,
    the outer border included, is separated by `padding` black pixels. `scale` > 1 enlarges every image by
    nearest neighbour first (each pixel becomes a `scale` x `scale` block of itself).
    """
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    u8 = images_to_uint8(images)
    u8 = np.repeat(np.repeat(u8, scale, axis=1), scale, axis=2)  # (B, H*s, W*s, 3)
    if u8.shape[0] == 0:
        raise ValueError("make_grid_array needs at least one image")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    ncol = nrow if nrow is not None else math.ceil(math.sqrt(u8.shape[0]))
    if ncol < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    return tile(u8, min(ncol, u8.shape[0]), padding, fill=0)


def write_png(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an (H, W, 3) or (H, W) uint8 array as PNG, atomically and with the umask's mode (gan.files)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"images are written as PNG: give a path ending in .png, got {str(path)!r}")
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"expected an (H, W, 3) or (H, W) uint8 array, got {array.dtype} {array.shape}")
    with atomic_file(path) as fh:
        Image.fromarray(np.ascontiguousarray(array)).save(fh, format="PNG")
    return path


def grid_scale(side: int, min_cell: int = GRID_MIN_CELL) -> int:
    """The whole-number nearest-neighbour factor that makes an image of `side` pixels at least `min_cell` wide."""
    return max(1, math.ceil(min_cell / side))


def save_image_grid(
    images: ArrayLike,
    path: str | os.PathLike,
    nrow: int | None = None,
    padding: int = 2,
    min_cell: int = GRID_MIN_CELL,
) -> Path:
    """Save images (B, C, H, W) in [-1, 1] as one PNG grid (see `make_grid_array`); returns the path.

    Images narrower than `min_cell` pixels are enlarged by a whole factor (nearest neighbour: exact pixel
    replicas, nothing interpolated), so a grid of 32x32 samples can be seen without zooming; `min_cell=0`
    keeps the images' own size (one PNG per image for a metric)."""
    scale = grid_scale(max(images.shape[-2:]), min_cell) if min_cell > 0 else 1
    return write_png(make_grid_array(images, nrow=nrow, padding=padding, scale=scale), path)
