"""Differentiable augmentation of the images D sees: DiffAugment's policies (Zhao et al. 2020).

"Differentiable Augmentation for Data-Efficient GAN Training" (arXiv:2006.10738) augments every image D sees,
real and fake, in both the D and the G step, with operations that gradients pass through, so G is trained
through them. The operations here are those of the authors' `DiffAugment_pytorch.py`, with the same
parameter ranges, for images (B, C, H, W) in [-1, 1]:

- color:       brightness  x + b,                        b ~ U(-0.5, 0.5)   per image
               saturation  (x - mean_c x) * s + mean_c x, s ~ U(0, 2)        (mean over channels, per pixel)
               contrast    (x - mean_chw x) * c + mean_chw x, c ~ U(0.5, 1.5) (mean over the whole image)
- translation: shift by integers (dy, dx), each uniform in [-round(H/8), round(H/8)] (W for dx); pixels
               shifted in from outside are 0: out[i, j] = x[i + dy, j + dx], or 0 off the image
- cutout:      zero a square of side round(H/2) x round(W/2) centred at (cy, cx), cy uniform in
               [0, H - (side % 2)], cx likewise; the square is clipped at the borders

(round(v) = int(v + 0.5), as published.) The colour ops do not clamp (the published ones do not either).
On one-channel images saturation is the identity: the channel mean of one channel is the pixel.

Why not kornia: kornia 0.9.0's `adjust_brightness` and `adjust_contrast` clamp to [0, 1] and its contrast is
x * c without the mean; its `adjust_saturation` works in HSV space; `RandomTranslate` warps by fractional
shifts with interpolation; `RandomErasing` draws rectangles of random area and aspect. None matches the
published operations, and kornia draws from the global RNG rather than a passed generator.

Randomness: every draw comes from the `rng` passed in (a `torch.Generator` on the images' device), in this
fixed order, op by op in policy order (brightness, saturation, contrast for `color`): the op's parameters as
the published code draws them (colour ops: B uniforms; translation: B integers dy, then B integers dx;
cutout: B integers cy, then B integers cx), then B uniforms u, and the op is applied to image i iff u_i < p.
The number of draws does not depend on p or on the pixels, so the same rng state gives the same output, and
a resumed run (rng restored) sees the same augmentations. Parameters are drawn in float32 / int64 whatever
the image dtype; the ops run in the image dtype (bf16 images stay bf16).

`p` (ADA, Karras et al. 2020, "Training Generative Adversarial Networks with Limited Data") is the
probability, per image and per op, that the op is applied; p = 1 is DiffAugment, p = 0 returns the input.
What this module cannot: the ADA pipeline's other ops (rotations, flips, filtering, ...) and any op that
would need interpolation; augmentation is the same whatever D's conditioning label.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

POLICIES: dict[str, tuple[str, ...]] = {
    "color": ("brightness", "saturation", "contrast"),
    "translation": ("translation",),
    "cutout": ("cutout",),
}
TRANSLATION_RATIO = 0.125  # largest shift, as a fraction of the side
CUTOUT_RATIO = 0.5  # side of the cut-out square, as a fraction of the image side


def _round(v: float) -> int:
    return int(v + 0.5)  # the published code's rounding


# ----------------------------------------------------------------------------------------------------------
# The operations, with explicit parameters (one row of `params` per image)


def brightness(x: Tensor, offset: Tensor) -> Tensor:
    """x + offset_i per image; offset (B,)."""
    return x + offset.to(x.dtype).view(-1, 1, 1, 1)


def saturation(x: Tensor, factor: Tensor) -> Tensor:
    """(x - mean over channels) * factor_i + mean over channels; factor (B,)."""
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * factor.to(x.dtype).view(-1, 1, 1, 1) + mean


def contrast(x: Tensor, factor: Tensor) -> Tensor:
    """(x - mean over the image) * factor_i + mean over the image; factor (B,)."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * factor.to(x.dtype).view(-1, 1, 1, 1) + mean


def translation(x: Tensor, shift: Tensor) -> Tensor:
    """out[b, :, i, j] = x[b, :, i + dy_b, j + dx_b], 0 where that falls off the image; shift (B, 2) int (dy, dx)."""
    b, _, h, w = x.shape
    rows = torch.arange(h, device=x.device) + shift[:, :1]  # (B, H) source row of each output row
    cols = torch.arange(w, device=x.device) + shift[:, 1:]  # (B, W)
    padded = torch.nn.functional.pad(x, [1, 1, 1, 1])  # (B, C, H + 2, W + 2), zero border
    rows, cols = (rows + 1).clamp(0, h + 1), (cols + 1).clamp(0, w + 1)  # off the image -> the zero border
    batch = torch.arange(b, device=x.device).view(-1, 1, 1)
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2)  # (B, C, H, W)


def cutout(x: Tensor, center: Tensor) -> Tensor:
    """x with the square of side round(H/2) x round(W/2) centred at (cy, cx) zeroed; center (B, 2) int (cy, cx)."""
    _, _, h, w = x.shape
    size_h, size_w = _round(h * CUTOUT_RATIO), _round(w * CUTOUT_RATIO)
    top, left = center[:, :1] - size_h // 2, center[:, 1:] - size_w // 2  # (B, 1) each
    r, c = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    in_rows, in_cols = (r >= top) & (r < top + size_h), (c >= left) & (c < left + size_w)  # (B, H), (B, W)
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])  # (B, H, W)
    return x * keep[:, None].to(x.dtype)  # multiplied, as published (so -x * 0 = -0.0, NaN stays NaN)


OPS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "brightness": brightness,
    "saturation": saturation,
    "contrast": contrast,
    "translation": translation,
    "cutout": cutout,
}


# ----------------------------------------------------------------------------------------------------------
# Drawing the parameters


@dataclass(frozen=True)
class OpDraw:
    """One op's draws for a batch: its parameters (B,) or (B, 2), and which images it is applied to (B,) bool."""

    op: str
    params: Tensor
    apply: Tensor


def _draw_params(op: str, b: int, h: int, w: int, rng: torch.Generator, device: torch.device) -> Tensor:
    def uniform() -> Tensor:
        return torch.rand(b, generator=rng, device=device)

    def integers(low: int, high: int) -> Tensor:  # uniform in [low, high)
        return torch.randint(low, high, (b,), generator=rng, device=device)

    if op == "brightness":
        return uniform() - 0.5
    if op == "saturation":
        return uniform() * 2.0
    if op == "contrast":
        return uniform() + 0.5
    if op == "translation":
        sy, sx = _round(h * TRANSLATION_RATIO), _round(w * TRANSLATION_RATIO)
        return torch.stack([integers(-sy, sy + 1), integers(-sx, sx + 1)], dim=1)
    size_h, size_w = _round(h * CUTOUT_RATIO), _round(w * CUTOUT_RATIO)
    return torch.stack([integers(0, h + 1 - size_h % 2), integers(0, w + 1 - size_w % 2)], dim=1)


def parse_policy(policy: str | Sequence[str]) -> tuple[str, ...]:
    """ "color,translation" or ["color", "translation"] -> the op names in order; "" or [] -> (). Raises ValueError."""
    names = [p.strip() for p in policy.split(",")] if isinstance(policy, str) else list(policy)
    names = [n for n in names if n]
    unknown = [n for n in names if n not in POLICIES]
    if unknown:
        raise ValueError(f"unknown augmentation policy {unknown[0]!r}; use a comma list of {', '.join(POLICIES)}")
    return tuple(op for n in names for op in POLICIES[n])


def draw(
    ops: Sequence[str], shape: Sequence[int], p: float, rng: torch.Generator, device: torch.device
) -> list[OpDraw]:
    """All random draws for a batch of `shape` (B, C, H, W), in the documented order."""
    b, _, h, w = shape
    out = []
    for op in ops:
        params = _draw_params(op, b, h, w, rng, device)
        out.append(OpDraw(op, params, torch.rand(b, generator=rng, device=device) < p))
    return out


def apply(x: Tensor, draws: Sequence[OpDraw]) -> Tensor:
    """Apply drawn ops in order; image i keeps its previous value where an op's `apply` is False."""
    for d in draws:  # `where` rather than indexing the selected images: no host sync, and exact for p = 1
        x = torch.where(d.apply.view(-1, 1, 1, 1), OPS[d.op](x, d.params), x)
    return x


class DiffAugment:
    """The augmentation hook: `DiffAugment("color,translation,cutout")(images, rng) -> images`.

    images (B, C, H, W) float, any memory format (the output keeps channels_last if the input has it);
    rng a torch.Generator on the images' device. `p` may be changed between calls (ADA).
    """

    def __init__(self, policy: str | Sequence[str], p: float = 1.0) -> None:
        self.ops = parse_policy(policy)
        self.p = p

    def __call__(self, images: Tensor, rng: torch.Generator) -> Tensor:
        if images.dim() != 4:
            raise ValueError(f"DiffAugment expects images (B, C, H, W), got shape {tuple(images.shape)}")
        if not self.ops:
            return images
        draws = draw(self.ops, images.shape, self.p, rng, images.device)
        if self.p <= 0.0:  # the draws above still happen, so the rng advances the same for every p
            return images
        fmt = torch.channels_last if _is_channels_last(images) else torch.contiguous_format
        return apply(images, draws).contiguous(memory_format=fmt)

    def __repr__(self) -> str:
        return f"DiffAugment(ops={','.join(self.ops)}, p={self.p})"


def _is_channels_last(x: Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


# ----------------------------------------------------------------------------------------------------------
# ADA's adaptive probability


class AdaptiveProbability:
    """ADA's heuristic for p (Karras et al. 2020, section 3; stylegan2-ada's ada_target / ada_interval / ada_kimg).

    Feed D's logits on real images with `observe` after every D step and call `step` once per D step. Every
    `interval` steps, r_t = E[sign(D(real))] over everything observed since the last adjustment, and
    p <- clamp(p + sign(r_t - target) * images_per_step * interval / speed_images, 0, 1): p moves from 0 to 1
    in `speed_images` images at the fastest. `images_per_step` counts the real images of one step over all
    processes. r_t = target (sign 0) leaves p alone; so does an interval with nothing observed.

    Differences from stylegan2-ada: it adjusts after step `interval`, 2 * interval, ... (it adjusts after
    step 1, 1 + interval, ...), and clamps p at 1 as well as at 0. The running sign sum stays on the device,
    so the host waits for the device only at an adjustment (and in `state_dict`).
    """

    def __init__(
        self,
        images_per_step: int,
        target: float = 0.6,
        interval: int = 4,
        speed_images: int = 500_000,
        p: float = 0.0,
    ) -> None:
        if images_per_step < 1 or interval < 1 or speed_images < 1 or not 0.0 <= p <= 1.0:
            raise ValueError(
                f"AdaptiveProbability needs images_per_step, interval, speed_images >= 1 and p in [0, 1]; "
                f"got {images_per_step}, {interval}, {speed_images}, {p}"
            )
        self.target, self.interval, self.p = target, interval, p
        self.rate = images_per_step * interval / speed_images  # the size of one adjustment of p
        self._steps, self._count = 0, 0
        self._sign_sum: int | Tensor = 0  # sum of sign(D(real)) since the last adjustment (int64 on the device)

    def observe(self, real_logits: Tensor) -> None:
        """Add one batch of D's real logits (any shape) to the running E[sign(D(real))]."""
        logits = real_logits.detach()
        self._sign_sum = self._sign_sum + ((logits > 0).sum() - (logits < 0).sum())
        self._count += logits.numel()

    def step(self, reduce: Callable[[Tensor], Tensor] | None = None) -> float:
        """Count one step; at every `interval`-th, adjust p. Returns p.

        `reduce` sums a tensor over processes (e.g. `lambda t: accelerator.reduce(t, "sum")`), so that every
        process computes the same r_t and keeps the same p."""
        self._steps += 1
        if self._steps % self.interval == 0:
            sign_sum = torch.as_tensor(self._sign_sum, dtype=torch.long)  # on the logits' device
            totals = torch.stack([sign_sum, torch.full_like(sign_sum, self._count)])
            if reduce is not None:
                totals = reduce(totals)
            sign_sum, count = (int(v) for v in totals.tolist())
            if count > 0:
                r_t = sign_sum / count
                direction = (r_t > self.target) - (r_t < self.target)
                self.p = min(max(self.p + direction * self.rate, 0.0), 1.0)
            self._sign_sum, self._count = 0, 0
        return self.p

    def state_dict(self) -> dict[str, float | int]:
        """Plain numbers (JSON-safe): p, the step count and the statistics of the unfinished interval."""
        return {"p": float(self.p), "steps": self._steps, "sign_sum": int(self._sign_sum), "count": self._count}

    def load_state_dict(self, state: dict) -> None:
        expected = {"p": float, "steps": int, "sign_sum": int, "count": int}
        if set(state) != set(expected) or any(not isinstance(state[k], t) for k, t in expected.items()):
            raise ValueError(f"adaptive-probability state must hold {expected} exactly, got {state!r}")
        self.p, self._steps, self._sign_sum, self._count = state["p"], state["steps"], state["sign_sum"], state["count"]
