"""Latents, truncation and batched generation: the one way images are drawn from a generator.

`sample.py`, the model card's samples.png, the explorer, the metrics that score generated images
(prc, copy, coherence) and the experiment figures all call this module, so the images of seed S are the
same everywhere: `sample_images(G, n, seed=S)` is what `python sample.py --seed S --num n` writes.

- `truncated_normal`: z ~ N(0, I), every entry beyond |truncation| redrawn (BigGAN's truncation trick).
- `draw_latents`: every z and label of a request up front, on the CPU, from one torch.Generator seeded
  with `seed` (z first, then labels), so they depend on neither the device's RNG nor the batch size.
- `generate`: images of given latents in eval mode, `chunk` latents per forward pass.
- `sample_images`: the two in one call.

A generator here is any module with `z_dim`, `num_classes` and `forward(z, y)` (gan.models.Generator,
or a stand-in in tests); this module imports no network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from gan import progress
from gan.config import ConfigError
from gan.runtime import eval_mode

CHUNK = 64  # latents per forward pass of G, fixed so that the images never depend on a batch-size flag


def truncated_normal(
    shape: Sequence[int],
    truncation: float | None = None,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """N(0, I) samples; with `truncation`, every entry beyond |truncation| is redrawn until none is left.

    Draws on `generator`'s device when a generator is given (torch requires it), else on `device`.
    """
    draw_device = generator.device if generator is not None else device
    z = torch.randn(*shape, generator=generator, device=draw_device)
    if truncation is None:
        return z
    if not truncation > 0:
        raise ValueError(f"truncation must be a positive number; got {truncation}")
    while True:
        outside = z.abs() > truncation
        count = int(outside.sum())
        if count == 0:
            return z
        z[outside] = torch.randn(count, generator=generator, device=draw_device)


def draw_latents(
    G: nn.Module,
    *,
    seed: int,
    num: int = 1,
    truncation: float | None = None,
    label: int | None = None,
    interpolate: int = 0,
) -> tuple[Tensor, Tensor | None]:
    """(z, labels or None) on the CPU: `num` samples, or `num` rows of `interpolate` steps (row-major).

    Conditional generators get uniform random labels unless `label` fixes the class of every image; one
    class per interpolation row."""
    if G.num_classes == 0 and label is not None:
        raise ConfigError(
            f"class {label} was given, but this generator is unconditional: leave --class / the class empty"
        )
    if label is not None and not 0 <= label < G.num_classes:
        raise ConfigError(
            f"class {label} is out of range: --class must lie in [0, {G.num_classes - 1}] for this generator"
        )
    rng = torch.Generator().manual_seed(seed)
    if interpolate:  # endpoints: num starts, then num ends
        ends = truncated_normal((2 * num, G.z_dim), truncation, generator=rng).view(2, num, 1, G.z_dim)  # (2, n, 1, Z)
        t = torch.linspace(0.0, 1.0, interpolate).view(1, -1, 1)  # (1, K, 1)
        z = torch.lerp(ends[0], ends[1], t).reshape(num * interpolate, G.z_dim)  # (n*K, Z), row-major
    else:
        z = truncated_normal((num, G.z_dim), truncation, generator=rng)
    if G.num_classes == 0:
        return z, None
    if label is not None:
        labels = torch.full((num,), label, dtype=torch.long)
    else:
        labels = torch.randint(G.num_classes, (num,), generator=rng)
    return z, labels.repeat_interleave(max(interpolate, 1))


def generate(
    G: nn.Module,
    z: Tensor,
    labels: Tensor | None = None,
    device: torch.device | str | None = None,
    chunk: int = CHUNK,
) -> Tensor:
    """Images (N, C, R, R) float32 in [-1, 1] on the CPU, `chunk` latents per forward pass on `device`
    (default: where G's parameters are), under `gan.runtime.eval_mode` (G's modes are restored after).

    Every pass has exactly `chunk` rows (the last is padded by repeating its final latent, and the padding
    images are dropped): in eval mode each image depends only on its own latent, and with one matrix shape
    for every pass the result of image i depends neither on N nor on its position. Autocast set by the
    caller applies."""
    if device is None:
        device = next(G.parameters()).device
    out = []
    with eval_mode(G), progress.tracked(z.shape[0]) as advance:  # shown by evaluate.py (gan/progress.py)
        for i in range(0, z.shape[0], chunk):
            zi = z[i : i + chunk]  # (n, Z)
            yi = None if labels is None else labels[i : i + chunk]
            n, pad = zi.shape[0], chunk - zi.shape[0]
            if pad:
                zi = torch.cat([zi, zi[-1:].expand(pad, -1)])  # (chunk, Z)
                yi = None if yi is None else torch.cat([yi, yi[-1:].expand(pad)])
            y = None if yi is None else yi.to(device)
            out.append(G(zi.to(device), y).float().cpu()[:n])
            advance(n)
    return torch.cat(out)


def sample_images(
    G: nn.Module, n: int, seed: int, *, truncation: float | None = None, label: int | None = None
) -> Tensor:
    """n images (N, C, R, R) float32 in [-1, 1] on the CPU: `draw_latents(seed=seed)`, then `generate`.

    The same (n, seed) give the same images (the labels are drawn after all n latents, so n matters)."""
    z, labels = draw_latents(G, seed=seed, num=n, truncation=truncation, label=label)
    return generate(G, z, labels)
