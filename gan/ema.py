"""Exponential moving average of the generator's weights (the model that is evaluated and sampled).

    theta_ema <- decay * theta_ema + (1 - decay) * theta        (from step `start` on; copied before)

Only parameters are averaged. Buffers are copied: BatchNorm running statistics, and spectral norm's
power-iteration vectors u, v. Under torch's spectral-norm parametrization the parameter is the *original*
weight (`...parametrizations.weight.original`), so the EMA averages the unnormalised weights and divides
them by sigma = u^T W_ema v with the live model's u, v (the EMA module stays in eval mode, where no power
iteration runs).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class EMA:
    """Holds `module`, a frozen eval-mode deepcopy of the model passed in (pass the unwrapped model)."""

    def __init__(self, model: nn.Module, decay: float, start: int = 0) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1); got {decay}")
        self.decay = decay
        self.start = start
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def _pairs(self, ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], kind: str) -> tuple[list, list]:
        if ours.keys() != theirs.keys():
            missing = sorted(set(ours) ^ set(theirs))[:3]
            raise ValueError(f"EMA model and model differ in {kind} (e.g. {missing}); pass the unwrapped generator")
        return list(ours.values()), [theirs[name].detach() for name in ours]

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Average `model`'s parameters in (copy them while step < start) and copy its buffers."""
        ema_p, p = self._pairs(dict(self.module.named_parameters()), dict(model.named_parameters()), "parameters")
        if step < self.start:
            torch._foreach_copy_(ema_p, p)
        else:
            torch._foreach_lerp_(ema_p, p, 1.0 - self.decay)  # ema + (1 - decay) * (p - ema)
        ema_b, b = self._pairs(dict(self.module.named_buffers()), dict(model.named_buffers()), "buffers")
        torch._foreach_copy_(ema_b, b)

    def state_dict(self) -> dict[str, Any]:
        """The EMA model's own state dict: it loads straight into a fresh model of the same config."""
        return self.module.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.module.load_state_dict(state_dict)
