"""Generated clips whose first and last frames must agree: the temporal counterpart of `CoherenceDataset`.

A clip is T frames of one static background (`draw_background`). Frame 0 shows one object
(`draw_object`: shape, size, position and colour, anywhere in the frame); frames 1..T-2 show the
background and a small grey distractor square moving in a straight line (wrapping at the edges); frame
T-1 shows the background and, in a coherent clip, the same object again: same shape, size, position and
colour, so frame T-1 equals frame 0 pixel for pixel. The relation spans the whole clip: nothing in the
middle frames carries the object.

`incoherent(i)` is clip i with the last frame's object redrawn with independent attributes (drawn from
the same ranges, after all of clip i's draws): frames 0..T-2 are pixel-identical, and frame T-1 has the
distribution it has in coherent clips. So every single frame has the same distribution in both classes and
no frame carries a cue; only the relation between frame 0 and frame T-1 differs.
See docs/long_range.md (the report) and docs/long_range/log.md ("The probe in time (3D)").
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from gan.synthetic import SHAPES, check_arguments, draw_background, draw_object, shape_mask

DISTRACTOR_SIDE = 2  # pixels
DISTRACTOR_GREY = (0.25, 0.40)  # its grey level: above the background (< 0.22), below the objects (>= 0.55)
DISTRACTOR_MAX_SPEED = 3  # pixels per frame along each axis


def _paint(frame: np.ndarray, obj: tuple[int, int, int, int, np.ndarray]) -> np.ndarray:
    """A copy of frame (C, R, R) with the object (shape, side, x0, y0, colour) drawn on it."""
    shape, s, x0, y0, colour = obj
    mask = np.zeros(frame.shape[1:], dtype=bool)
    mask[y0 : y0 + s, x0 : x0 + s] = shape_mask(shape, s)
    return np.where(mask[None], colour[:, None, None], frame)


class CoherentClips(Dataset):
    """`size` clips of `frames` frames of side `resolution`; clip i depends only on (seed, i).

    Items are (float32 tensor in [-1, 1] of shape (channels, frames, resolution, resolution), the shape
    label of frame 0's object): the (C, T, H, W) layout of `nn.Conv3d` and `NonLocalBlock(dim=3)`.
    Drawn on the fly from a per-item numpy generator; the global RNGs are never touched.
    """

    num_classes = len(SHAPES)

    def __init__(self, size: int, resolution: int = 32, frames: int = 8, channels: int = 3, seed: int = 0) -> None:
        check_arguments("CoherentClips", size, resolution, channels, seed)
        if frames < 2:
            raise ValueError(f"CoherentClips needs at least 2 frames (first and last), got {frames}")
        self.size, self.resolution, self.frames, self.channels, self.seed = size, resolution, frames, channels, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self._render(index, coherent=True)

    def incoherent(self, index: int) -> tuple[Tensor, int]:
        """Clip `index` with the last frame's object redrawn independently; frames 0..T-2 unchanged."""
        return self._render(index, coherent=False)

    def _render(self, index: int, coherent: bool) -> tuple[Tensor, int]:
        if not -self.size <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} clips")
        index %= self.size
        rng = np.random.default_rng([self.seed, index])
        r, t = self.resolution, self.frames

        first = draw_object(rng, r, self.channels)  # anywhere in the frame
        background = draw_background(rng, r, self.channels)  # (C, R, R), the same in every frame
        span = r - DISTRACTOR_SIDE + 1  # top-left corners that keep the square inside the frame
        start = rng.integers(0, span, size=2)
        velocity = rng.integers(-DISTRACTOR_MAX_SPEED, DISTRACTOR_MAX_SPEED + 1, size=2)
        grey = rng.uniform(*DISTRACTOR_GREY)
        last = first if coherent else draw_object(rng, r, self.channels)  # drawn last: clip i is unchanged

        clip = np.repeat(background[:, None], t, axis=1)  # (C, T, R, R)
        clip[:, 0] = _paint(background, first)
        clip[:, t - 1] = _paint(background, last)
        for k in range(1, t - 1):
            y, x = (start + velocity * k) % span
            clip[:, k, y : y + DISTRACTOR_SIDE, x : x + DISTRACTOR_SIDE] = grey
        return torch.from_numpy((clip * 2.0 - 1.0).astype(np.float32)), first[0]
