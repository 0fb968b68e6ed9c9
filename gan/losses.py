"""Adversarial losses as pure functions of the discriminator's logits, with the standard signs.

Every loss is a scalar float32 tensor: bf16 / fp16 logits from autocast are cast up first, so the
reduction does not lose precision.
"""

from __future__ import annotations

from collections.abc import Callable

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
