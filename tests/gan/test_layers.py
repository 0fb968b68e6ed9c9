"""Layers: conditional BN by hand, spectral norm against float64 SVDs, residual blocks written out."""

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from gan.layers import (
    ConditionalBatchNorm2d,
    DBlock,
    DBlockOptimized,
    GBlock,
    conv2d,
    embedding,
    linear,
)


def _sigma_max(weight: torch.Tensor) -> float:
    """Largest singular value of a weight reshaped to (out, -1), in float64."""
    return torch.linalg.svdvals(weight.detach().double().reshape(weight.shape[0], -1))[0].item()


def set_spectrum(module: torch.nn.Module, top: float, seed: int) -> None:
    """Give the (original) weight singular values top, top/2, top/4, ... with random singular vectors."""
    target = module.parametrizations.weight.original if parametrize.is_parametrized(module) else module.weight
    g = torch.Generator().manual_seed(seed)
    mat = target.detach().reshape(target.shape[0], -1)
    u, _, vh = torch.linalg.svd(torch.randn(mat.shape, generator=g, dtype=torch.float64), full_matrices=False)
    s = top * 0.5 ** torch.arange(u.shape[1], dtype=torch.float64)
    with torch.no_grad():
        target.copy_((u @ torch.diag(s) @ vh).reshape(target.shape))


# ----------------------------------------------------------------------------------------------
# Conditional BatchNorm


def test_conditional_bn_matches_hand_computation():
    torch.manual_seed(0)
    bn = ConditionalBatchNorm2d(3, num_classes=4)
    with torch.no_grad():
        bn.gain.weight.copy_(torch.arange(12.0).view(4, 3) / 4 - 1)
        bn.bias.weight.copy_(torch.arange(12.0).view(4, 3).flip(0) / 3)
    x = torch.randn(5, 3, 2, 3) * 2 + 1
    y = torch.tensor([0, 3, 1, 3, 2])
    out = bn.train()(x, y)

    xd = x.double()
    mean = xd.mean(dim=(0, 2, 3), keepdim=True)
    var = ((xd - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)  # biased, as BatchNorm normalises
    xhat = (xd - mean) / torch.sqrt(var + 1e-5)
    for i in range(5):
        c = y[i].item()
        gain = (torch.arange(3.0) + 3 * c) / 4 - 1  # row c of the gain table
        bias = (torch.arange(3.0) + 3 * (3 - c)) / 3  # row c of the flipped bias table
        expected = gain.double()[:, None, None] * xhat[i] + bias.double()[:, None, None]
        assert torch.allclose(out[i].double(), expected, atol=1e-5), f"sample {i} (class {c})"


def test_conditional_bn_starts_as_plain_bn_and_uses_running_stats_in_eval():
    torch.manual_seed(0)
    cbn, bn = ConditionalBatchNorm2d(4, num_classes=3), torch.nn.BatchNorm2d(4)
    assert torch.equal(cbn.gain.weight, torch.ones(3, 4)) and torch.equal(cbn.bias.weight, torch.zeros(3, 4))
    x, y = torch.randn(6, 4, 3, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    assert torch.allclose(cbn(x, y), bn(x), atol=1e-6)
    assert torch.allclose(cbn.bn.running_mean, bn.running_mean) and torch.allclose(cbn.bn.running_var, bn.running_var)
    cbn.eval()
    with torch.no_grad():
        cbn.gain.weight[1] = 2.0
    expected = 2.0 * (x[1] - cbn.bn.running_mean[:, None, None]) / torch.sqrt(cbn.bn.running_var[:, None, None] + 1e-5)
    assert torch.allclose(cbn(x, y)[1], expected, atol=1e-5)


def test_unconditional_bn_is_affine_batchnorm():
    cbn = ConditionalBatchNorm2d(4, num_classes=0)
    assert cbn.bn.affine and not hasattr(cbn, "gain")
    x = torch.randn(3, 4, 2, 2)
    with torch.no_grad():
        cbn.bn.weight.fill_(3.0)
    assert torch.allclose(cbn(x, y=torch.tensor([5, 6, 7])), cbn(x))  # labels are ignored
    assert torch.allclose(cbn(x), 3.0 * F.batch_norm(x, None, None, training=True), atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Layer helpers: init and spectral norm


@pytest.mark.parametrize(
    "make",
    [
        lambda sn: conv2d(6, 8, 3, sn=sn),
        lambda sn: conv2d(16, 4, 1, sn=sn),
        lambda sn: linear(10, 7, sn=sn),
        lambda sn: embedding(5, 9, sn=sn),
    ],
    ids=["conv3x3", "conv1x1", "linear", "embedding"],
)
def test_helpers_init_orthogonal_and_wrap_by_parameter(make):
    torch.manual_seed(0)
    plain, wrapped = make(False), make(True)
    assert not parametrize.is_parametrized(plain)
    assert parametrize.is_parametrized(wrapped, "weight")
    w = plain.weight.detach().double().reshape(plain.weight.shape[0], -1)
    # Orthogonal: every singular value is 1, whichever side is longer.
    assert torch.allclose(torch.linalg.svdvals(w), torch.ones(min(w.shape), dtype=torch.float64), atol=1e-5)
    if getattr(plain, "bias", None) is not None:
        assert torch.equal(plain.bias, torch.zeros_like(plain.bias))


@pytest.mark.parametrize(
    "make",
    [
        lambda: conv2d(6, 8, 3, sn=True),
        lambda: conv2d(16, 4, 1, sn=True),
        lambda: linear(10, 7, sn=True),
        lambda: embedding(5, 9, sn=True),
    ],
    ids=["conv3x3", "conv1x1", "linear", "embedding"],
)
def test_spectral_norm_bounds_largest_singular_value(make):
    torch.manual_seed(0)
    module = make()
    set_spectrum(module, top=5.0, seed=1)
    assert _sigma_max(module.parametrizations.weight.original) == pytest.approx(5.0)
    module.train()
    for _ in range(12):  # each access in train mode runs one power iteration
        weight = module.weight
    assert _sigma_max(weight) == pytest.approx(1.0, abs=1e-3)
    module.eval()  # eval reuses u, v: same normalised weight
    assert torch.allclose(module.weight, weight)


# ----------------------------------------------------------------------------------------------
# Residual blocks against their formulas written out with the blocks' own layers


def test_gblock_formula_and_shape():
    torch.manual_seed(0)
    block = GBlock(4, 6, num_classes=3, sn=True).eval()
    x, y = torch.randn(2, 4, 5, 5), torch.tensor([2, 0])
    with torch.no_grad():
        for bn in (block.bn1, block.bn2):
            bn.gain.weight.uniform_(0.5, 1.5)
            bn.bn.running_mean.uniform_(-1, 1)
        out = block(x, y)
        up = lambda t: t.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # noqa: E731  nearest x2
        h = block.conv1(up(F.relu(block.bn1(x, y))))
        h = block.conv2(F.relu(block.bn2(h, y)))
        expected = h + block.shortcut(up(x))  # upsample first, as the block diagram says
    assert out.shape == (2, 6, 10, 10)
    assert torch.allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("cin,cout,down,learnable", [(4, 4, False, False), (4, 4, True, True), (4, 6, False, True)])
def test_dblock_formula_and_shortcut(cin, cout, down, learnable):
    torch.manual_seed(0)
    block = DBlock(cin, cout, downsample=down, sn=True).eval()
    assert (block.shortcut is not None) == learnable
    x = torch.randn(2, cin, 6, 6)
    pool = lambda t: t.unfold(2, 2, 2).unfold(3, 2, 2).mean(dim=(-1, -2)) if down else t  # noqa: E731
    with torch.no_grad():
        h = pool(block.conv2(F.relu(block.conv1(F.relu(x)))))
        s = pool(block.shortcut(x) if learnable else x)
        out = block(x)
    assert out.shape == (2, cout, 3 if down else 6, 3 if down else 6)
    assert torch.allclose(out, h + s, atol=1e-5)


def test_optimized_dblock_formula():
    torch.manual_seed(0)
    block = DBlockOptimized(3, 5, sn=False)
    x = torch.randn(2, 3, 8, 8)
    pool = lambda t: t.unfold(2, 2, 2).unfold(3, 2, 2).mean(dim=(-1, -2))  # noqa: E731
    with torch.no_grad():
        expected = pool(block.conv2(F.relu(block.conv1(x)))) + block.shortcut(pool(x))
        assert torch.allclose(block(x), expected, atol=1e-5)
