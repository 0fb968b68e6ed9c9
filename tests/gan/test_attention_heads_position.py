"""Multi-head attention and the relative position term of NonLocalBlock, in 1D, 2D and 3D, against a float64
reference written from the formulas with explicit loops over queries i and keys j:

    heads:     head n attends with theta/phi channels n d ... (n + 1) d - 1 and g channels n dv ... (n + 1) dv - 1
               (d = Cqk / h, dv = Cv / h); the heads' outputs are concatenated before `out`
    position:  logits_ij += b_n(offset(i, j)), offset_a = i_a - k_a j_a per axis a: the query's input coordinate
               minus the first input row of key j's pooling window (k_a: the kernel, 1 without pooling)

and the fused path (SDPA, the position term as its additive mask) against the explicit one.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gan.attention import NonLocalBlock, record_attention
from gan.config import ConfigError, load_config
from gan.models import Discriminator


def _w(conv: torch.nn.Module) -> np.ndarray:
    w = conv.weight.detach().double().numpy()
    return w.reshape(w.shape[0], w.shape[1])


def _project(w: np.ndarray, a: np.ndarray) -> np.ndarray:
    """A 1x1 convolution of (C, *S): (O, *S)."""
    return np.tensordot(w, a, axes=(1, 0))


def _pooled(a: np.ndarray, kernel: tuple[int, ...]) -> np.ndarray:
    """(C, *S) -> (C, *S_k): key j is the max over input rows k_a j_a ... k_a j_a + k_a - 1 (clipped at the side)."""
    sides = a.shape[1:]
    key_sides = [-(-s // k) for s, k in zip(sides, kernel)]
    out = np.empty((a.shape[0], *key_sides))
    for j in np.ndindex(*key_sides):
        window = tuple(slice(k * jj, min(k * jj + k, s)) for jj, k, s in zip(j, kernel, sides))
        out[(slice(None), *j)] = a[(slice(None), *window)].reshape(a.shape[0], -1).max(axis=1)
    return out


def _logit(pairwise: str, qi: np.ndarray, kj: np.ndarray, block: NonLocalBlock) -> float:
    if pairwise == "cosine":
        return block.temperature * float(qi @ kj) / (np.linalg.norm(qi) * np.linalg.norm(kj))
    if pairwise == "l2":
        return -float(((qi - kj) ** 2).sum()) / math.sqrt(len(qi))
    scale = 1 / math.sqrt(len(qi)) if block.logit_scale == "inv_sqrt_d" else 1.0
    return scale * float(qi @ kj)  # embedded Gaussian, Gaussian, dot product


def reference(block: NonLocalBlock, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """z (B, C, *S) and the weights (B, h, Nq, N), in float64, from the formulas alone."""
    xs = x.detach().double().numpy()
    kernel = block.pool or (1,) * block.dim
    h, m = block.heads, block.position_max_side
    table = block.position_bias.detach().double().numpy() if m else None
    zs, ws = [], []
    for xb in xs:
        theta = xb if block.pairwise == "gaussian" else _project(_w(block.theta), xb)  # (Cqk, *S)
        phi = theta if block.pairwise in ("gaussian", "l2") else _project(_w(block.phi), xb)
        keys, values = _pooled(phi, kernel), _pooled(_project(_w(block.g), xb), kernel)  # (Cqk, *S_k), (Cv, *S_k)
        queries_at, keys_at = list(np.ndindex(*xb.shape[1:])), list(np.ndindex(*keys.shape[1:]))
        d, dv = theta.shape[0] // h, values.shape[0] // h
        y = np.zeros((values.shape[0], len(queries_at)))
        w = np.zeros((h, len(queries_at), len(keys_at)))
        for n in range(h):
            for a, i in enumerate(queries_at):
                qi = theta[(slice(n * d, (n + 1) * d), *i)]
                logits = np.empty(len(keys_at))
                for b, j in enumerate(keys_at):
                    logits[b] = _logit(block.pairwise, qi, keys[(slice(n * d, (n + 1) * d), *j)], block)
                    if m:
                        offset = [ia - k * ja + k * (-(-m // k) - 1) for ia, ja, k in zip(i, j, kernel)]
                        logits[b] += table[(n, *offset)]
                if block.pairwise == "dot_product":
                    w[n, a] = logits / len(keys_at)
                else:
                    e = np.exp(logits - logits.max())
                    w[n, a] = e / e.sum()
                for b, j in enumerate(keys_at):
                    y[n * dv : (n + 1) * dv, a] += w[n, a, b] * values[(slice(n * dv, (n + 1) * dv), *j)]
        out = _w(block.out) @ y  # (C, Nq)
        zs.append(xb + block.gamma.item() * out.reshape(xb.shape))
        ws.append(w)
    return np.stack(zs), np.stack(ws)


def make_block(dim: int, pairwise: str, heads: int, position: int, subsample: bool = True) -> NonLocalBlock:
    torch.manual_seed(0)
    block = NonLocalBlock(
        12, dim=dim, pairwise=pairwise, qk_channels=6, v_channels=6, heads=heads, position_max_side=position,
        subsample=subsample, fused=False,
    )  # fmt: skip
    with torch.no_grad():
        block.gamma.fill_(0.7)
        if position:
            block.position_bias.normal_()  # a moved table: at 0 the term would be invisible
    return block.double().eval()


GRIDS = [(7,), (5, 3), (3, 5, 3)]  # odd sides: the last pooled row holds one input row


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{len(g)}d")
@pytest.mark.parametrize(
    "pairwise, heads, position",
    [
        ("embedded_gaussian", 1, 7),
        ("embedded_gaussian", 3, 7),
        ("embedded_gaussian", 2, 0),
        ("cosine", 2, 8),
        ("l2", 3, 7),
        ("gaussian", 3, 7),
        ("dot_product", 2, 0),
    ],
)
def test_heads_and_position_match_the_float64_loop(grid, pairwise, heads, position) -> None:
    block = make_block(len(grid), pairwise, heads, position)
    x = torch.randn(2, 12, *grid, dtype=torch.float64)
    z, w = block(x, return_attention=True)
    z_ref, w_ref = reference(block, x)
    w_ref = w_ref[:, 0] if heads == 1 else w_ref  # one head: (B, Nq, N), as SAGAN's block returns
    np.testing.assert_allclose(w.detach().numpy(), w_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(z.detach().numpy(), z_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("grid", [(6,), (4, 6), (2, 3, 4)], ids=lambda g: f"{len(g)}d")
def test_position_without_subsampling_uses_plain_offsets(grid) -> None:
    block = make_block(len(grid), "embedded_gaussian", 2, 6, subsample=False)
    x = torch.randn(1, 12, *grid, dtype=torch.float64)
    z_ref, _ = reference(block, x)
    np.testing.assert_allclose(block(x).detach().numpy(), z_ref, rtol=1e-10, atol=1e-12)


def test_the_offset_by_hand_on_an_odd_side() -> None:
    """1D, side 5, keys pooled by 2 (ceil): key windows start at rows 0, 2, 4; offset = i - 2 j."""
    block = NonLocalBlock(4, dim=1, qk_channels=2, v_channels=2, position_max_side=5)
    with torch.no_grad():  # table index = offset + 2 (ceil(5 / 2) - 1) = offset + 4, over offsets -4 ... 4
        block.position_bias.copy_(torch.arange(9.0).view(1, 9))
    bias = block.position_logits((5,), (3,))  # (1, 5, 3)
    expected = torch.tensor([[i - 2 * j + 4 for j in range(3)] for i in range(5)], dtype=torch.float32)
    assert torch.equal(bias[0], expected)
    assert block.position_bias.shape == (1, 5 + 2 * 2)  # R = M + k (ceil(M / k) - 1)


def _pair(dtype: torch.dtype, grid: tuple[int, ...], **kw) -> tuple[NonLocalBlock, NonLocalBlock]:
    torch.manual_seed(0)
    fused = NonLocalBlock(32, dim=len(grid), fused=True, **kw)
    explicit = NonLocalBlock(32, dim=len(grid), fused=False, **kw)
    explicit.load_state_dict(fused.state_dict())
    for b in (fused, explicit):
        b.gamma.data.fill_(0.5)
        if kw.get("position_max_side"):
            b.position_bias.data.copy_(torch.linspace(-1, 1, b.position_bias.numel()).view_as(b.position_bias))
    return fused.to(dtype).eval(), explicit.to(dtype).eval()


@pytest.mark.parametrize(
    "dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)], ids=["float64", "float32"]
)  # fmt: skip
@pytest.mark.parametrize("grid", [(9,), (7, 6), (2, 5, 4)], ids=lambda g: f"{len(g)}d")
@pytest.mark.parametrize(
    "kw",
    [
        {"heads": 4},
        {"position_max_side": 9},
        {"heads": 2, "position_max_side": 9, "pairwise": "cosine"},
        {"heads": 2, "position_max_side": 9, "pairwise": "l2"},
        {"heads": 4, "logit_scale": "inv_sqrt_d", "position_max_side": 9},
    ],
    ids=["heads", "position", "cosine", "l2", "inv_sqrt_d"],
)
def test_fused_and_explicit_agree_forward_and_backward(dtype, tol, grid, kw) -> None:
    fused, explicit = _pair(dtype, grid, **kw)
    x1 = torch.randn(2, 32, *grid, dtype=dtype, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    z1, z2 = fused(x1), explicit(x2)
    torch.testing.assert_close(z1, z2, rtol=tol, atol=tol)
    gz = torch.randn_like(z1)
    z1.backward(gz)
    z2.backward(gz)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=tol, atol=tol)
    for (n, p1), (_, p2) in zip(fused.named_parameters(), explicit.named_parameters()):
        assert p1.grad is not None and p1.grad.abs().sum() > 0, n
        torch.testing.assert_close(p1.grad, p2.grad, rtol=10 * tol, atol=tol, msg=n)


def test_one_head_is_sagans_block_bit_for_bit() -> None:
    """heads=1 computes what SAGAN's block always did, in the same order: softmax(theta^T phi) g, then out and
    gamma; state dict keys unchanged, and the position term absent unless asked for."""
    torch.manual_seed(0)
    block = NonLocalBlock(16, heads=1, fused=False).eval()
    block.gamma.data.fill_(0.5)
    x = torch.randn(2, 16, 6, 5)
    q, k, v, _ = block.project(x)  # (B, Nq, 2), (B, N, 2), (B, N, 8)
    y = torch.bmm(torch.softmax(torch.bmm(q, k.transpose(1, 2)), dim=-1), v)  # (B, Nq, 8)
    expected = x + block.gamma * block.out(y.transpose(1, 2).reshape(2, 8, 6, 5))
    assert torch.equal(block(x), expected)
    keys = {"gamma", "theta.parametrizations.weight.original", "phi.parametrizations.weight.original"}
    keys |= {"g.parametrizations.weight.original", "out.parametrizations.weight.original"}
    assert {k for k in block.state_dict() if not k.endswith(("_u", "_v"))} == keys
    assert "position_bias" in dict(NonLocalBlock(16, position_max_side=8).named_parameters())


def test_the_position_term_starts_at_zero_and_learns() -> None:
    torch.manual_seed(0)
    plain = NonLocalBlock(16, heads=2)
    with_position = NonLocalBlock(16, heads=2, position_max_side=8)
    with_position.load_state_dict(plain.state_dict(), strict=False)
    for b in (plain, with_position):
        b.gamma.data.fill_(0.5)
    x = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(with_position(x), plain(x), rtol=1e-6, atol=1e-6)  # b = 0: the same block
    with_position(x).square().sum().backward()
    assert with_position.position_bias.grad.abs().sum() > 0


def test_records_and_weights_with_heads() -> None:
    block = NonLocalBlock(16, heads=4, qk_channels=4, v_channels=8).eval()  # eval: no power iteration between calls
    x = torch.randn(2, 16, 6, 6)
    _, w = block(x, return_attention=True)
    assert w.shape == (2, 4, 36, 9)
    with record_attention(torch.nn.Sequential(block)) as records:
        block(x)
    torch.testing.assert_close(records[0].weights, w.mean(1))  # the heads' mean, still rows summing to 1
    torch.testing.assert_close(records[0].weights.sum(-1), torch.ones(2, 36))


def test_maps_beyond_the_table_and_bad_options_are_one_line_errors() -> None:
    block = NonLocalBlock(16, position_max_side=4)
    with pytest.raises(ValueError, match=r"sides up to 4 \(position_max_side\); got \(5, 4\)"):
        block(torch.randn(1, 16, 5, 4))
    with pytest.raises(ValueError, match="heads=3 must divide the query/key channels"):
        NonLocalBlock(16, heads=3)
    with pytest.raises(ValueError, match="pairwise='concatenation' scores all of"):
        NonLocalBlock(16, pairwise="concatenation", heads=2)
    with pytest.raises(ValueError, match="the position term adds to softmax logits"):
        NonLocalBlock(16, pairwise="dot_product", position_max_side=8)
    with pytest.raises(ValueError, match="heads must be a positive number"):
        NonLocalBlock(16, heads=0)


def test_the_config_reaches_heads_and_position_and_checks_widths_as_the_blocks_are_built() -> None:
    over = ["model.resolution=32", "model.d_width=32", "model.attn_heads=2", "model.attn_lab.position_max_side=16"]
    d = Discriminator(load_config(None, over).model)
    block = d.blocks.attn16
    assert (block.heads, block.position_max_side, tuple(block.position_bias.shape)) == (2, 16, (2, 30, 30))
    with pytest.raises(ConfigError, match=r"^config key 'model.attn_heads': heads=3 must divide"):
        Discriminator(load_config(None, ["model.d_width=32", "model.attn_heads=3"]).model)
    with pytest.raises(ConfigError, match=r"^config key 'model.attn_lab.position_max_side': the position term"):
        load_config(None, ["model.attn_lab.pairwise=dot_product", "model.attn_lab.position_max_side=8"])
