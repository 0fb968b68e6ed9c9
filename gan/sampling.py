"""Latents and images from a generator, drawn one way for `sample.py`, model cards and the explorer.

Every z and label comes from one CPU torch.Generator seeded with `seed` (z first, then labels, as
`Generator.sample` draws them), so the latents depend on neither the device's RNG nor the batch size.
"""

from __future__ import annotations

import torch

from gan.config import ConfigError
from gan.models import Generator, truncated_normal


def draw_latents(
    G: Generator,
    *,
    seed: int,
    num: int = 1,
    truncation: float | None = None,
    label: int | None = None,
    interpolate: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(z, labels or None) on the CPU: `num` samples, or `num` rows of `interpolate` steps (row-major)."""
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
    return z, labels.repeat_interleave(max(interpolate, 1))  # one class per interpolation row


CHUNK = 64  # latents per forward pass of G, fixed so that the images never depend on a batch-size flag


def generate(
    G: Generator, z: torch.Tensor, labels: torch.Tensor | None, device: torch.device | str, chunk: int = CHUNK
) -> torch.Tensor:
    """Images (N, C, R, R) in [-1, 1] on the CPU, generated in eval mode `chunk` latents per forward pass.

    Every pass has exactly `chunk` rows (the last is padded by repeating its final latent, and the padding
    images are dropped): in eval mode each image depends only on its own latent, and with one matrix shape
    for every pass the result of image i depends neither on N nor on its position."""
    G.eval()
    out = []
    with torch.no_grad():
        for i in range(0, z.shape[0], chunk):
            zi = z[i : i + chunk]  # (n, Z)
            yi = None if labels is None else labels[i : i + chunk]
            n, pad = zi.shape[0], chunk - zi.shape[0]
            if pad:
                zi = torch.cat([zi, zi[-1:].expand(pad, -1)])  # (chunk, Z)
                yi = None if yi is None else torch.cat([yi, yi[-1:].expand(pad)])
            y = None if yi is None else yi.to(device)
            out.append(G(zi.to(device), y).float().cpu()[:n])
    return torch.cat(out)
