"""The l2 and cosine pairwise functions and the per-channel gate of NonLocalBlock, in 1D, 2D and 3D, against a
float64 reference of the formulas written with numpy (per-axis max-pool loops, einsum, an explicit softmax).

    l2:     logits_ij = -||theta(x_i) - theta(x_j)||^2 / sqrt(d)    (keys: theta, pooled like phi)
    cosine: logits_ij = t theta(x_i) . phi(x_j) / (|theta(x_i)| |phi(x_j)|)
    channel gate: z = x + tanh(a) * out(y), one a per channel
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gan.attention import NonLocalBlock, attention_blocks
from gan.config import ConfigError, load_config
from gan.models import Discriminator

from shared import assert_fused_matches_explicit


def _w(conv: torch.nn.Module) -> np.ndarray:
    """The (out, in) matrix the 1x1 conv applies (spectrally normalised if wrapped)."""
    w = conv.weight.detach().double().numpy()
    return w.reshape(w.shape[0], w.shape[1])


def _max_pool(a: np.ndarray, kernel: tuple[int, ...]) -> np.ndarray:
    """Max-pool (C, *S) with kernel = stride per axis, a last partial window where a side is not a multiple."""
    for axis, k in enumerate(kernel, start=1):
        n = a.shape[axis]
        windows = [np.take(a, range(s, min(s + k, n)), axis=axis).max(axis=axis) for s in range(0, n, k)]
        a = np.stack(windows, axis=axis)
    return a


def reference(block: NonLocalBlock, x: torch.Tensor) -> np.ndarray:
    """z for a batch (B, C, *S), in float64, from the formulas alone."""
    zs = []
    for xb in x.detach().double().numpy():
        c, grid = xb.shape[0], xb.shape[1:]
        flat = xb.reshape(c, -1)  # (C, Nq)
        theta = _w(block.theta) @ flat  # (d, Nq)
        key_map = theta if block.pairwise == "l2" else _w(block.phi) @ flat  # (d, Nq)
        g = _w(block.g) @ flat  # (Cv, Nq)
        if block.pool is not None:
            key_map = _max_pool(key_map.reshape(-1, *grid), block.pool).reshape(key_map.shape[0], -1)  # (d, N)
            g = _max_pool(g.reshape(-1, *grid), block.pool).reshape(g.shape[0], -1)  # (Cv, N)
        q, k = theta.T, key_map.T  # (Nq, d), (N, d)
        d = q.shape[1]
        if block.pairwise == "l2":
            logits = -np.einsum("ijc->ij", (q[:, None, :] - k[None, :, :]) ** 2) / math.sqrt(d)
        else:
            cos = np.einsum("ic,jc->ij", q, k) / np.outer(np.linalg.norm(q, axis=1), np.linalg.norm(k, axis=1))
            logits = block.temperature * cos
        weights = np.exp(logits - logits.max(1, keepdims=True))
        weights /= weights.sum(1, keepdims=True)  # (Nq, N)
        o = _w(block.out) @ (weights @ g.T).T  # (C, Nq)
        if block.gate == "channel":
            gate = np.tanh(block.gain.detach().double().numpy())[:, None]  # (C, 1)
        else:
            gate = block.gamma.item()
        zs.append(xb + (gate * o).reshape(c, *grid))
    return np.stack(zs)


def make_block(pairwise: str, dim: int, *, sn: bool = True, gate: str = "gamma", **kw) -> NonLocalBlock:
    torch.manual_seed(0)
    block = NonLocalBlock(16, dim=dim, pairwise=pairwise, spectral_norm=sn, gate=gate, **kw)
    with torch.no_grad():
        if gate == "gamma":
            block.gamma.fill_(0.7)
        else:
            block.gain.normal_(0.0, 1.0)
    return block.double().eval()  # eval: spectral norm's vectors stay as the reference reads them


GRIDS = {1: (9,), 2: (7, 5), 3: (3, 5, 4)}


@pytest.mark.parametrize("pairwise", ["l2", "cosine"])
@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("subsample", [True, False])
@pytest.mark.parametrize("sn", [True, False])
def test_matches_float64_reference(pairwise: str, dim: int, subsample: bool, sn: bool) -> None:
    block = make_block(pairwise, dim, sn=sn, subsample=subsample, temperature=3.0 if pairwise == "cosine" else None)
    x = torch.randn(2, 16, *GRIDS[dim], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = reference(block, x)
    z, attn = block(x, return_attention=True)  # the explicit path
    np.testing.assert_allclose(z.detach().numpy(), expected, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(block(x).detach().numpy(), expected, rtol=1e-9, atol=1e-10)  # the fused path
    n_keys = math.prod(-(-s // k) for s, k in zip(GRIDS[dim], block.pool)) if subsample else math.prod(GRIDS[dim])
    assert attn.shape == (2, math.prod(GRIDS[dim]), n_keys)


@pytest.mark.parametrize("pairwise", ["l2", "cosine"])
def test_channel_gate_matches_reference(pairwise: str) -> None:
    block = make_block(pairwise, 2, gate="channel")
    x = torch.randn(2, 16, 7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    np.testing.assert_allclose(block(x).detach().numpy(), reference(block, x), rtol=1e-9, atol=1e-10)
    gains = np.tanh(block.gain.detach().numpy())
    assert block.gate_value() == pytest.approx(float(np.sqrt((gains**2).mean())))


@pytest.mark.parametrize("pairwise", ["embedded_gaussian", "l2", "cosine"])
def test_channel_gate_is_the_identity_at_init_and_each_gain_gets_a_gradient(pairwise: str) -> None:
    torch.manual_seed(0)
    block = NonLocalBlock(16, pairwise=pairwise, gate="channel")
    x = torch.randn(2, 16, 6, 6)
    assert torch.equal(block(x), x) and block.gate_value() == 0.0
    (block(x) * torch.randn_like(x)).sum().backward()
    assert (block.gain.grad != 0).sum() == 16  # every channel's gain moves on its own gradient
    assert block.theta.parametrizations.weight.original.grad.abs().sum() == 0  # nothing through a closed gate


@pytest.mark.parametrize("pairwise", ["l2", "cosine"])
@pytest.mark.parametrize("grid", [(9,), (7, 5), (3, 5, 4)])
@pytest.mark.parametrize("qk", [None, 32])  # 32: l2's augmented queries (33) wider than the values (32)
def test_fused_equals_explicit_forward_and_backward(pairwise: str, grid: tuple[int, ...], qk: int | None) -> None:
    assert_fused_matches_explicit(grid, dim=len(grid), pairwise=pairwise, qk_channels=qk)
    torch.manual_seed(0)
    block = NonLocalBlock(8, pairwise=pairwise, qk_channels=4).eval()  # l2: 5 query channels, 4 value channels
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        block(torch.randn(2, 8, 7, 5))
    ops = {e.key for e in prof.key_averages()}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in ops and "aten::_softmax" not in ops


def test_l2_ties_keys_to_queries_and_cosine_logits_are_bounded() -> None:
    l2 = NonLocalBlock(16, pairwise="l2")
    assert not hasattr(l2, "phi")
    assert sum(p.numel() for p in l2.parameters()) == 16 * 2 + 16 * 8 + 8 * 16 + 1  # theta, g, out, gamma
    block = make_block("cosine", 2, temperature=2.5)
    q, k = torch.randn(1, 6, 2, dtype=torch.float64) * 50, torch.randn(1, 4, 2, dtype=torch.float64) * 1e-3
    logits = block.pairwise_logits(q, k)
    assert logits.abs().max() <= 2.5 + 1e-12  # the scale of q and k does not matter, only their angle
    cos = (q[0] @ k[0].T) / (q[0].norm(dim=1)[:, None] * k[0].norm(dim=1)[None])
    torch.testing.assert_close(logits[0], 2.5 * cos)


def test_bad_options_fail_in_one_line() -> None:
    with pytest.raises(ValueError, match="temperature sets pairwise='cosine'"):
        NonLocalBlock(16, pairwise="l2", temperature=4.0)
    with pytest.raises(ValueError, match="temperature must be positive"):
        NonLocalBlock(16, pairwise="cosine", temperature=0.0)
    with pytest.raises(ValueError, match="fixes its logits' scale"):
        NonLocalBlock(16, pairwise="l2", logit_scale="inv_sqrt_d")


def test_config_reaches_the_blocks() -> None:
    over = ["model.resolution=32", "model.d_width=16", "model.attn_pairwise=cosine", "model.attn_temperature=4"]
    cfg = load_config(None, [*over, "model.attn_gate=channel"])
    ((_, block),) = attention_blocks(Discriminator(cfg.model))
    assert (block.pairwise, block.temperature, block.gate) == ("cosine", 4.0, "channel")
    cfg = load_config(None, ["model.resolution=32", "model.d_width=16", "model.attn_pairwise=l2"])
    ((_, block),) = attention_blocks(Discriminator(cfg.model))
    assert (block.pairwise, block.temperature) == ("l2", None)
    with pytest.raises(ConfigError, match="'model.attn_lab.temperature': temperature must be positive"):
        load_config(None, ["model.attn_temperature=0"])


def test_attention_off_closes_the_channel_gate_and_restores_it() -> None:
    from experiments.erf import attention_off

    block = make_block("cosine", 2, gate="channel").float()
    model = torch.nn.Sequential(block)
    x = torch.randn(2, 16, 6, 6)
    before = block.gain.detach().clone()
    with attention_off(model):
        assert torch.equal(model(x), x)
    assert torch.equal(block.gain, before) and not torch.equal(model(x), x)
