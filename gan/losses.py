"""Adversarial losses as pure functions of the discriminator's logits, with the standard signs.

Logits are (B,), one per image, or (B, h, w), one per position of a patch D (`model.d_output="patch"`):
each loss is then the mean over images and positions of the per-position loss, PatchGAN's objective.
Every loss is a scalar float32 tensor: bf16 / fp16 logits from autocast are cast up first, so the
reduction does not lose precision. The LeCam regulariser for D (and the EMA anchors it needs) ends the file.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def d_hinge(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """mean relu(1 - D(x)) + mean relu(1 + D(G(z)))."""
    return F.relu(1.0 - real_logits.float()).mean() + F.relu(1.0 + fake_logits.float()).mean()


def g_hinge(fake_logits: Tensor) -> Tensor:
    """-mean D(G(z))."""
    return -fake_logits.float().mean()


def d_nonsaturating(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Logistic loss: mean softplus(-D(x)) + mean softplus(D(G(z))) = -log sigmoid(D(x)) - log(1 - sigmoid(D(G(z))))."""
    return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()


def g_nonsaturating(fake_logits: Tensor) -> Tensor:
    """mean softplus(-D(G(z))) = -log sigmoid(D(G(z)))."""
    return F.softplus(-fake_logits.float()).mean()


# name -> (discriminator loss, generator loss); the names are `optim.loss`'s choices.
LOSSES: dict[str, tuple[Callable[[Tensor, Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "hinge": (d_hinge, g_hinge),
    "nonsaturating": (d_nonsaturating, g_nonsaturating),
}


# ----------------------------------------------------------------------------------------------
# LeCam regularisation (Tseng et al. 2021, "Regularizing Generative Adversarial Networks under Limited Data")


def lecam_regularizer(
    real_logits: Tensor, fake_logits: Tensor, anchor_real: Tensor | float, anchor_fake: Tensor | float
) -> Tensor:
    """mean relu(D(x) - alpha_F)^2 + mean relu(alpha_R - D(G(z)))^2, as the authors' `lecam_reg` computes it.

    alpha_R, alpha_F: EMAs of D's mean output on real and on fake images (`LeCamAnchors`), held constant.
    Added to D's loss with a weight (the paper's lambda)."""
    real_term = F.relu(real_logits.float() - anchor_fake).square().mean()
    fake_term = F.relu(anchor_real - fake_logits.float()).square().mean()
    return real_term + fake_term


class LeCamAnchors:
    """alpha_R, alpha_F <- decay * alpha + (1 - decay) * batch mean of D(x), D(G(z)); update, then regularise.

    The first max(start, 1) updates copy the batch means (the authors' code starts from a constant and copies
    until its `ema_start` step). The anchors are float32 and stay on the logits' device: no host sync per step.
    """

    def __init__(self, decay: float = 0.99, start: int = 0) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"LeCam anchor decay must be in [0, 1), got {decay}")
        self.decay, self.start = decay, start
        self.updates = 0
        self.anchors: Tensor | None = None  # (2,) float32: alpha_R, alpha_F

    def update(
        self, real_logits: Tensor, fake_logits: Tensor, reduce: Callable[[Tensor], Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Move the anchors towards this batch's mean logits; returns (alpha_R, alpha_F), detached.

        `reduce` averages a tensor over processes (e.g. `lambda t: accelerator.reduce(t, "mean")`), so that
        every process holds the same anchors."""
        means = torch.stack([real_logits.detach().float().mean(), fake_logits.detach().float().mean()])
        if reduce is not None:
            means = reduce(means)
        if self.anchors is None or self.updates < self.start:
            self.anchors = means
        else:
            self.anchors = self.anchors.to(means.device) * self.decay + means * (1.0 - self.decay)
        self.updates += 1
        return self.anchors[0], self.anchors[1]

    def state_dict(self) -> dict[str, float | int | None]:
        """Plain numbers (JSON-safe); anchors None before the first update."""
        real, fake = (None, None) if self.anchors is None else self.anchors.tolist()
        return {"anchor_real": real, "anchor_fake": fake, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        real, fake = state.get("anchor_real"), state.get("anchor_fake")
        ok = set(state) == {"anchor_real", "anchor_fake", "updates"} and isinstance(state["updates"], int)
        numbers = all(isinstance(v, (int, float, type(None))) for v in (real, fake))
        if not ok or not numbers or (real is None) != (fake is None):
            raise ValueError(
                f"LeCam anchor state must hold anchor_real, anchor_fake (numbers or null), updates: {state!r}"
            )
        self.updates = state["updates"]
        self.anchors = None if real is None else torch.tensor([real, fake], dtype=torch.float32)
