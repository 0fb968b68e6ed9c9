"""Receptive fields: the theoretical one of a layer stack and the effective one (Luo et al. 2016).

The effective receptive field (ERF) of an output position p is the map q -> mean |d out_p / d in_q| over
inputs: how strongly each input pixel actually moves that output. Luo et al. ("Understanding the Effective
Receptive Field in Deep Convolutional Neural Networks", 2016) show it is much smaller than the theoretical
field and roughly Gaussian. Two summaries are returned: the gradient mass as a function of the distance
|p - q| and the distance holding 90% of it. Distances are Chebyshev (max(|dy|, |dx|)), in input pixels,
from the centre of the input patch under p, so that a square theoretical field is a ball; where the input
is the coarser grid (G's first-stage map under an output pixel), in output pixels from the cell holding p.

For trained GANs (models in eval mode: BatchNorm on running statistics, spectral norm without power
iterations): `d_effective_rf` (each middle position's term of D's logit over real images) and
`g_effective_rf` (G's middle pixels over its 4x4 first-stage map); `attention_off` makes every non-local
block the identity for an as-trained / attention-off comparison. experiments/gan_erf.py reports both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan.attention import attention_blocks


def theoretical_rf(layers: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """Side and jump (input pixels per output step) of the field of a chain of (kernel, stride) layers.

    r_out = r_in + (kernel - 1) * jump_in, jump_out = jump_in * stride; starts at (1, 1).
    """
    side, jump = 1, 1
    for kernel, stride in layers:
        side += (kernel - 1) * jump
        jump *= stride
    return side, jump


@dataclass
class EffectiveRF:
    """The ERF of one output position, averaged over inputs."""

    grad_map: Tensor  # (H, W) mean over inputs of |d out_p / d in| summed over input channels
    distances: Tensor  # (K,) sorted distinct Chebyshev distances from the centre
    mass: Tensor  # (K,) fraction of the gradient mass at exactly each distance (sums to 1)
    r90: float  # smallest distance d whose ball (distance <= d) holds at least 90% of the mass

    def mass_beyond(self, distance: float) -> float:
        """Fraction of the gradient mass farther than `distance` from the centre."""
        return float(self.mass[self.distances > distance].sum())


def middle_positions(h: int, w: int) -> list[tuple[int, int]]:
    """The positions of an (h, w) grid nearest its middle: one per odd side, two per even side (up to 4)."""
    rows = [h // 2] if h % 2 else [h // 2 - 1, h // 2]
    cols = [w // 2] if w % 2 else [w // 2 - 1, w // 2]
    return [(i, j) for i in rows for j in cols]


def _distances(inputs: tuple[int, int], outputs: tuple[int, int], i: int, j: int) -> Tensor:
    """(H, W) Chebyshev distances of the input positions from output position (i, j), in the finer grid's pixels.

    Input finer than output (a D-like map): from the centre of the input patch under (i, j), in input pixels.
    Input coarser (a G-like early map): from the input cell holding (i, j), in cells times the output pixels
    per cell (0 for the own cell, one cell side for its neighbours, ...).
    """
    (big_h, big_w), (h, w) = inputs, outputs
    ys = torch.arange(big_h, dtype=torch.float64)[:, None]
    xs = torch.arange(big_w, dtype=torch.float64)[None, :]
    if big_h >= h and big_w >= w:
        sy, sx = big_h / h, big_w / w  # input pixels per output step
        cy, cx = (i + 0.5) * sy - 0.5, (j + 0.5) * sx - 0.5
        return torch.maximum((ys - cy).abs(), (xs - cx).abs())
    if big_h <= h and big_w <= w:
        sy, sx = h / big_h, w / big_w  # output pixels per input cell
        return torch.maximum((ys - i // sy).abs() * sy, (xs - j // sx).abs() * sx)
    raise ValueError(
        f"input grid {inputs} is finer along one axis and coarser along the other than output grid {outputs}"
    )


def effective_rf(
    features: Callable[[Tensor], Tensor],
    inputs: Tensor,
    position: tuple[int, int] | str | None = None,
) -> EffectiveRF:
    """ERF of `features` (a map (B, C, H, W) -> (B, C', h, w)) at an output position.

    `position`: (i, j); None: the centre (h // 2, w // 2); "middle": every position of `middle_positions`,
    each map normalised to unit mass and the masses averaged (grad_map is then the mean of the raw maps).
    The objective is the sum over channels of out[:, :, i, j]; its gradient is taken per input, its absolute
    value summed over input channels and averaged over the batch. Distances are those of `_distances`: from
    the middle of the input patch under (i, j) (half-integer for even strides) when the input is finer than
    the output, from the input cell holding (i, j), in output pixels, when it is coarser.
    """
    if isinstance(position, str) and position != "middle":
        raise ValueError(f"position must be (i, j), None or 'middle'; got {position!r}")
    x = inputs.detach().clone().requires_grad_(True)
    out = features(x)
    h, w = out.shape[-2:]
    if position == "middle":
        positions = middle_positions(h, w)
    else:
        positions = [position if position is not None else (h // 2, w // 2)]
    grad_maps, masses = [], []
    for k, (i, j) in enumerate(positions):
        (grad,) = torch.autograd.grad(out[:, :, i, j].sum(), x, retain_graph=k < len(positions) - 1)
        grad_map = grad.abs().sum(1).mean(0).double()  # (H, W)
        if not grad_map.sum() > 0:
            raise ValueError(
                f"output position ({i}, {j}) has zero gradient for every input (a dead unit?): "
                "measure the ERF before the last ReLU or at another position"
            )
        dist = _distances(tuple(x.shape[-2:]), (h, w), i, j)  # (H, W)
        grad_maps.append(grad_map)
        masses.append((dist.flatten(), grad_map.flatten() / grad_map.sum()))
    distances, inverse = torch.unique(torch.cat([d for d, _ in masses]), return_inverse=True)
    weights = torch.cat([m for _, m in masses]) / len(masses)
    mass = torch.zeros_like(distances).index_add_(0, inverse, weights)
    k = int(torch.searchsorted(mass.cumsum(0), torch.tensor(0.9 - 1e-9, dtype=torch.float64)))
    r90 = float(distances[min(k, len(distances) - 1)])
    return EffectiveRF(torch.stack(grad_maps).mean(0).float(), distances, mass, r90)


# ----------------------------------------------------------------------------------------------
# Trained GANs (gan.models' Discriminator and Generator, in eval mode)


def _require_eval(module: nn.Module) -> None:
    if module.training:
        raise ValueError(
            f"{type(module).__name__} is in training mode (batch-coupled BatchNorm, spectral-norm power iterations): "
            "call .eval() first (gan.checkpoint's loaders return eval-mode models)"
        )


def d_score_map(discriminator: nn.Module, x: Tensor, y: Tensor | None = None) -> Tensor:
    """(B, 1, h, w): each position's term of D's logit, (w + embed(y)) . ReLU(h_p), h = `features(x)`.

    D's logit is w . sum_p ReLU(h_p) + b (+ <embed(y), sum_p ReLU(h_p)> when conditional), so these terms
    plus the linear layer's bias sum to D(x, y) exactly: position p's ERF says where its share comes from.
    """
    if discriminator.embed is not None and y is None:
        raise ValueError("this discriminator is class-conditional: pass the images' labels")
    h = F.relu(discriminator.features(x))  # (B, C, h, w)
    weight = discriminator.linear.weight.expand(x.shape[0], -1)  # (B, C); spectrally normalised under SN
    if discriminator.embed is not None:
        weight = weight + discriminator.embed(y)  # (B, C): the projection term's weight
    return torch.einsum("bchw,bc->bhw", h, weight)[:, None]  # (B, 1, h, w)


def d_effective_rf(discriminator: nn.Module, images: Tensor, labels: Tensor | None = None) -> EffectiveRF:
    """ERF of D's score terms (`d_score_map`) at the middle positions of its last map, over real `images`
    (B, C, R, R) and their labels (conditional D); distances in input pixels."""
    _require_eval(discriminator)
    return effective_rf(lambda x: d_score_map(discriminator, x, labels), images, "middle")


def g_effective_rf(generator: nn.Module, z: Tensor, labels: Tensor | None = None) -> EffectiveRF:
    """ERF of G's middle output pixels (summed over colour channels) over its first-stage map (B, C, 4, 4),
    averaged over latents `z` (and `labels`, conditional G).

    Distances are in output pixels, in steps of one first-stage cell (R / 4 pixels): 0 for the cell holding
    the pixel, R / 4 for its eight neighbours, ...; `mass_beyond(0)` is the share outside the pixel's own cell.
    """
    _require_eval(generator)
    with torch.no_grad():
        h = generator.first_stage(z)  # (B, C, 4, 4)
    return effective_rf(lambda h: generator.from_first_stage(h, labels, z), h, "middle")


def gates(module: nn.Module) -> dict[str, float]:
    """Each non-local block's gate by name: gamma (gate "gamma") or the norm of its `out` weight ("zero_init")."""
    return {name: block.gate_value() for name, block in attention_blocks(module)}


@contextlib.contextmanager
def attention_off(module: nn.Module) -> Iterator[None]:
    """Inside the `with`, every non-local block of `module` is the identity (z = x): its gamma, or under
    gate "zero_init" its unnormalised `out` weight, under "channel" its gains, is 0. The values are restored on exit."""
    saved = []
    with torch.no_grad():
        for _, block in attention_blocks(module):
            param = block.gate_parameter()
            saved.append((param, param.detach().clone()))
            param.zero_()
    try:
        yield
    finally:
        with torch.no_grad():
            for param, value in saved:
                param.copy_(value)
