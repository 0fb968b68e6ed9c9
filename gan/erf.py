"""Receptive fields: the theoretical one of a layer stack and the effective one (Luo et al. 2016).

The effective receptive field (ERF) of an output position p is the map q -> mean |d out_p / d in_q| over
inputs: how strongly each input pixel actually moves that output. Luo et al. ("Understanding the Effective
Receptive Field in Deep Convolutional Neural Networks", 2016) show it is much smaller than the theoretical
field and roughly Gaussian. Two summaries are returned: the gradient mass as a function of the distance
|p - q| and the distance holding 90% of it. Distances are Chebyshev (max(|dy|, |dx|)), in input pixels,
from the centre of the input patch under p, so that a square theoretical field is a ball.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


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


def effective_rf(
    features: Callable[[Tensor], Tensor], inputs: Tensor, position: tuple[int, int] | None = None
) -> EffectiveRF:
    """ERF of `features` (a map (B, C, H, W) -> (B, C', h, w)) at output `position` (default: the centre).

    The objective is the sum over channels of out[:, :, i, j]; its gradient is taken per input, its absolute
    value summed over input channels and averaged over the batch. The centre in input pixels is the middle
    of the patch of side H / h under the output position (half-integer for even strides).
    """
    x = inputs.detach().clone().requires_grad_(True)
    out = features(x)
    h, w = out.shape[-2:]
    i, j = position if position is not None else (h // 2, w // 2)
    (grad,) = torch.autograd.grad(out[:, :, i, j].sum(), x)
    grad_map = grad.abs().sum(1).mean(0).double()  # (H, W)

    big_h, big_w = x.shape[-2:]
    sy, sx = big_h / h, big_w / w  # input pixels per output step
    cy, cx = (i + 0.5) * sy - 0.5, (j + 0.5) * sx - 0.5
    ys = torch.arange(big_h, dtype=torch.float64)[:, None]
    xs = torch.arange(big_w, dtype=torch.float64)[None, :]
    dist = torch.maximum((ys - cy).abs(), (xs - cx).abs())  # (H, W)
    distances, inverse = torch.unique(dist, return_inverse=True)
    mass = torch.zeros_like(distances).index_add_(0, inverse.flatten(), grad_map.flatten())
    if not mass.sum() > 0:
        raise ValueError(
            f"output position ({i}, {j}) has zero gradient for every input (a dead unit?): "
            "measure the ERF before the last ReLU or at another position"
        )
    mass = mass / mass.sum()
    k = int(torch.searchsorted(mass.cumsum(0), torch.tensor(0.9 - 1e-9, dtype=torch.float64)))
    return EffectiveRF(grad_map.float(), distances, mass, float(distances[min(k, len(distances) - 1)]))
