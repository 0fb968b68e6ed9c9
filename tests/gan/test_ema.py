"""EMA against hand-computed averages on a generator with spectral norm, conditional BN and attention."""

import pytest
import torch

from gan.config import ModelConfig
from gan.ema import EMA
from gan.models import Generator

DECAY = 0.9


def tiny_generator() -> Generator:
    torch.manual_seed(0)
    return Generator(ModelConfig(num_classes=3, z_dim=8, g_width=8, g_attention=[16]))


def randomise(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """New random parameters, then a train-mode forward (moves BN running stats and SN's u, v)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
        model.train()(torch.randn(4, 8, generator=g), torch.tensor([0, 1, 2, 0]))
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_two_updates_match_hand_average_and_buffers_are_copied():
    model = tiny_generator()
    p0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    ema = EMA(model, decay=DECAY, start=0)
    p1 = randomise(model, 1)
    ema.update(model, step=0)
    p2 = randomise(model, 2)
    ema.update(model, step=1)

    ema_params = dict(ema.module.named_parameters())
    assert "blocks.block0.conv1.parametrizations.weight.original" in ema_params  # the unnormalised weight
    assert "blocks.attn16.gamma" in ema_params
    for name, p in ema_params.items():
        expected = DECAY * (DECAY * p0[name] + (1 - DECAY) * p1[name]) + (1 - DECAY) * p2[name]
        assert torch.allclose(p, expected, atol=1e-6), name
    buffers = dict(model.named_buffers())
    assert any(n.endswith("_u") for n in buffers) and any(n.endswith("running_var") for n in buffers)
    for name, b in ema.module.named_buffers():
        assert torch.equal(b, buffers[name]), name  # copied, not averaged


def test_normalised_ema_weight_uses_averaged_original_and_copied_u_v():
    model = tiny_generator()
    ema = EMA(model, decay=DECAY)
    randomise(model, 1)
    ema.update(model, step=0)
    conv = ema.module.blocks["block1"].conv1
    w = conv.parametrizations.weight.original.detach()
    u, v = conv.parametrizations.weight[0]._u, conv.parametrizations.weight[0]._v
    live = model.blocks["block1"].conv1.parametrizations.weight[0]
    assert torch.equal(u, live._u) and torch.equal(v, live._v)
    sigma = torch.dot(u, w.reshape(w.shape[0], -1) @ v)
    assert torch.allclose(conv.weight, w / sigma, atol=1e-6)


def test_weights_are_copied_before_start():
    model = tiny_generator()
    ema = EMA(model, decay=DECAY, start=5)
    p1 = randomise(model, 1)
    ema.update(model, step=4)
    for name, p in ema.module.named_parameters():
        assert torch.equal(p, p1[name]), name
    randomise(model, 2)
    ema.update(model, step=5)  # from `start` on, averaging
    for name, p in ema.module.named_parameters():
        assert not torch.equal(p, p1[name]), name


def test_module_is_a_frozen_eval_copy():
    model = tiny_generator().train()
    ema = EMA(model, decay=DECAY)
    assert not ema.module.training and all(not m.training for m in ema.module.modules())
    assert all(not p.requires_grad for p in ema.module.parameters())
    assert all(p.requires_grad for p in model.parameters()) and model.training
    before = ema.module.linear.parametrizations.weight.original.clone()
    with torch.no_grad():
        model.linear.parametrizations.weight.original.add_(1.0)
    assert torch.equal(ema.module.linear.parametrizations.weight.original, before)  # not aliased


def test_state_dict_loads_into_a_fresh_generator_and_back():
    model = tiny_generator()
    ema = EMA(model, decay=DECAY)
    randomise(model, 1)
    ema.update(model, step=0)
    fresh = tiny_generator()
    fresh.load_state_dict(ema.state_dict())
    z, y = torch.randn(3, 8), torch.tensor([0, 1, 2])
    with torch.no_grad():
        assert torch.equal(fresh.eval()(z, y), ema.module(z, y))
    other = EMA(tiny_generator(), decay=DECAY)
    other.load_state_dict(ema.state_dict())
    with torch.no_grad():
        assert torch.equal(other.module(z, y), ema.module(z, y))


def test_mismatched_model_and_bad_decay():
    ema = EMA(tiny_generator(), decay=DECAY)
    other = Generator(ModelConfig(num_classes=3, z_dim=8, g_width=8, g_attention=[]))
    with pytest.raises(ValueError, match="unwrapped generator"):
        ema.update(other, step=0)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        EMA(tiny_generator(), decay=1.0)
