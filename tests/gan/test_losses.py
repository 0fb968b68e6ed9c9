"""Losses against hand-computed values (plain Python math, not torch)."""

import json
import math

import pytest
import torch

from gan.config import OptimConfig
from gan.losses import LOSSES, LeCamAnchors, d_hinge, d_nonsaturating, g_hinge, g_nonsaturating, lecam_regularizer

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


def test_hinge_per_position_values():
    """A patch D's (B, h, w) logits: the hinge at every position, averaged over images and positions."""
    real = torch.tensor([[[2.0, 0.5], [-1.0, 0.0]], [[1.5, 3.0], [0.25, -0.5]]])  # (2, 2, 2)
    fake = torch.tensor([[[-2.0, 0.0], [0.5, -0.75]], [[1.0, -3.0], [-1.0, 0.2]]])
    # relu(1 - real) = 0, 0.5, 2, 1, 0, 0, 0.75, 1.5 (sum 5.75); relu(1 + fake) = 0, 1, 1.5, 0.25, 2, 0, 0, 1.2 (sum 5.95)
    assert d_hinge(real, fake).item() == pytest.approx(5.75 / 8 + 5.95 / 8, abs=1e-6)
    # -mean(fake) = -(-2 + 0 + 0.5 - 0.75 + 1 - 3 - 1 + 0.2) / 8 = 5.05 / 8
    assert g_hinge(fake).item() == pytest.approx(5.05 / 8, abs=1e-6)
    # not the hinge of each image's mean logit: image 0's fakes average -0.5625, so that hinge is 0.4375, not 0.6875
    assert d_hinge(real, fake).item() != pytest.approx(d_hinge(real.mean((1, 2)), fake.mean((1, 2))).item(), abs=1e-3)


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


def test_lecam_regularizer_value_and_gradient():
    real, fake = torch.tensor(REAL, requires_grad=True), torch.tensor(FAKE, requires_grad=True)
    # alpha_R = 1, alpha_F = 0: relu(real - 0) = [2, 0.5, 0] -> 4.25 / 3; relu(1 - fake) = [3, 1, 0.5] -> 10.25 / 3
    reg = lecam_regularizer(real, fake, torch.tensor(1.0), torch.tensor(0.0))
    assert reg.item() == pytest.approx(14.5 / 3.0, abs=1e-6)
    reg.backward()  # d/dreal = 2 relu(real) / 3, d/dfake = -2 relu(1 - fake) / 3
    assert real.grad.tolist() == pytest.approx([4 / 3, 1 / 3, 0.0], abs=1e-6)
    assert fake.grad.tolist() == pytest.approx([-2.0, -2 / 3, -1 / 3], abs=1e-6)
    assert lecam_regularizer(real.bfloat16(), fake, 1.0, 0.0).dtype == torch.float32


def test_lecam_anchors_are_emas_that_copy_until_start():
    anchors = LeCamAnchors(decay=0.5, start=2)
    batches = [([0.5], [-0.5]), ([1.0, 3.0], [0.0, -4.0]), ([3.0], [-3.0]), ([0.0], [1.0])]
    # updates 1 and 2 copy the means; then alpha <- 0.5 alpha + 0.5 mean
    expected = [(0.5, -0.5), (2.0, -2.0), (2.5, -2.5), (1.25, -0.75)]
    for (real, fake), (alpha_r, alpha_f) in zip(batches, expected, strict=True):
        a_r, a_f = anchors.update(torch.tensor(real, requires_grad=True), torch.tensor(fake))
        assert (a_r.item(), a_f.item()) == (alpha_r, alpha_f)
        assert not a_r.requires_grad
    other = torch.tensor([0.25, 1.25])  # another process's batch means
    a_r, a_f = anchors.update(torch.tensor([1.75]), torch.tensor([0.25]), reduce=lambda t: (t + other) / 2)
    assert (a_r.item(), a_f.item()) == (0.5 * 1.25 + 0.5 * 1.0, 0.5 * -0.75 + 0.5 * 0.75)
    assert LeCamAnchors().decay == 0.99 and LeCamAnchors().state_dict() == {
        "anchor_real": None,
        "anchor_fake": None,
        "updates": 0,
    }


def test_lecam_anchor_state_round_trips_through_json_bit_exactly():
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, generator=gen), torch.randn(8, generator=gen)) for _ in range(6)]
    straight, first = LeCamAnchors(), LeCamAnchors()
    for real, fake in batches:
        straight.update(real, fake)
    for real, fake in batches[:3]:
        first.update(real, fake)
    resumed = LeCamAnchors()
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    for real, fake in batches[3:]:
        resumed.update(real, fake)
    assert torch.equal(resumed.anchors, straight.anchors) and resumed.updates == 6
    with pytest.raises(ValueError, match="LeCam anchor state"):
        resumed.load_state_dict({"anchor_real": 1.0, "anchor_fake": None, "updates": 0})
