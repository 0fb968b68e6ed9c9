"""Losses against hand-computed values (plain Python math, not torch)."""

import math

import pytest
import torch

from gan.config import OptimConfig
from gan.losses import LOSSES, d_hinge, d_nonsaturating, g_hinge, g_nonsaturating

REAL = [2.0, 0.5, -1.0]
FAKE = [-2.0, 0.0, 0.5]


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def _mean(xs):
    return sum(xs) / len(xs)


def test_hinge_values():
    real, fake = torch.tensor(REAL), torch.tensor(FAKE)
    # relu(1 - real) = [0, 0.5, 2], relu(1 + fake) = [0, 1, 1.5]: 2.5/3 + 2.5/3
    assert d_hinge(real, fake).item() == pytest.approx(5.0 / 3.0, abs=1e-6)
    # -mean(fake) = -(-1.5 / 3)
    assert g_hinge(fake).item() == pytest.approx(0.5, abs=1e-6)


def test_nonsaturating_values():
    real, fake = torch.tensor(REAL), torch.tensor(FAKE)
    d_expected = _mean([_softplus(-r) for r in REAL]) + _mean([_softplus(f) for f in FAKE])
    g_expected = _mean([_softplus(-f) for f in FAKE])
    assert d_expected == pytest.approx(1.236140, abs=1e-5)
    assert d_nonsaturating(real, fake).item() == pytest.approx(d_expected, abs=1e-6)
    assert g_nonsaturating(fake).item() == pytest.approx(g_expected, abs=1e-6)
    # The logistic form: -log sigmoid(D(x)) - log(1 - sigmoid(D(G(z)))).
    sig = lambda x: 1.0 / (1.0 + math.exp(-x))  # noqa: E731
    logistic = _mean([-math.log(sig(r)) for r in REAL]) + _mean([-math.log(1 - sig(f)) for f in FAKE])
    assert d_expected == pytest.approx(logistic, abs=1e-12)


def test_hinge_gradient_signs():
    fake = torch.tensor(FAKE, requires_grad=True)
    g_hinge(fake).backward()
    assert torch.allclose(fake.grad, torch.full((3,), -1.0 / 3.0))  # G pushes D(G(z)) up
    real = torch.tensor(REAL, requires_grad=True)
    fake = torch.tensor(FAKE, requires_grad=True)
    d_hinge(real, fake).backward()
    # Only margin violators get gradient: real 0.5 and -1 (below 1), fake 0 and 0.5 (above -1).
    assert torch.allclose(real.grad, torch.tensor([0.0, -1.0, -1.0]) / 3)
    assert torch.allclose(fake.grad, torch.tensor([0.0, 1.0, 1.0]) / 3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_low_precision_logits_give_float32(name, dtype):
    d_loss, g_loss = LOSSES[name]
    real, fake = torch.tensor(REAL), torch.tensor(FAKE)  # all exactly representable in bf16 / fp16
    d, g = d_loss(real.to(dtype), fake.to(dtype)), g_loss(fake.to(dtype))
    assert d.dtype == g.dtype == torch.float32
    assert d.item() == pytest.approx(d_loss(real, fake).item(), abs=1e-6)
    assert g.item() == pytest.approx(g_loss(fake).item(), abs=1e-6)


def test_registry_covers_config_choices():
    choices = OptimConfig.__dataclass_fields__["loss"].metadata["choices"]
    assert set(LOSSES) == set(choices)
    assert LOSSES["hinge"] == (d_hinge, g_hinge)
    assert LOSSES["nonsaturating"] == (d_nonsaturating, g_nonsaturating)
