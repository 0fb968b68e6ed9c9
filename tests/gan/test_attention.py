"""NonLocalBlock against an independent float64 per-position loop of the formula in gan/attention.py."""

import math

import numpy as np
import pytest
import torch

from gan.attention import (
    PAIRWISE,
    NonLocalBlock,
    attention_blocks,
    attention_entropy,
    record_attention,
)

from shared import assert_fused_matches_explicit

SIZES = [(4, 4), (5, 7), (7, 7), (9, 6)]


def _w(conv: torch.nn.Module) -> np.ndarray:
    """The 1x1 conv weight the module actually applies (spectrally normalised if wrapped), (out, in)."""
    return conv.weight.detach().double().numpy()[:, :, 0, 0]


def _pool(a: np.ndarray) -> np.ndarray:
    """2x2 max-pool of (C, H, W) with partial windows at odd edges, by explicit loops."""
    c, h, w = a.shape
    hk, wk = (h + 1) // 2, (w + 1) // 2
    out = np.empty((c, hk, wk))
    for r in range(hk):
        for s in range(wk):
            out[:, r, s] = a[:, 2 * r : min(2 * r + 2, h), 2 * s : min(2 * s + 2, w)].max(axis=(1, 2))
    return out


def reference(block: NonLocalBlock, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(z, weights) for a batch, by loops over query i and key j in float64."""
    xs = x.detach().double().numpy()
    zs, ws = [], []
    for xb in xs:
        c, h, w = xb.shape
        if block.pairwise == "gaussian":
            th, ph = xb, xb
        else:
            th = np.einsum("oc,chw->ohw", _w(block.theta), xb)
            ph = th if block.pairwise == "l2" else np.einsum("oc,chw->ohw", _w(block.phi), xb)  # l2: tied keys
        gx = np.einsum("oc,chw->ohw", _w(block.g), xb)
        if block.subsample:
            ph, gx = _pool(ph), _pool(gx)
        queries = th.reshape(th.shape[0], -1).T  # (HW, Cqk)
        keys = ph.reshape(ph.shape[0], -1).T  # (N, Cqk)
        values = gx.reshape(gx.shape[0], -1).T  # (N, Cv)
        n = len(keys)
        weights = np.zeros((len(queries), n))
        for i, qi in enumerate(queries):
            f = np.zeros(n)
            for j, kj in enumerate(keys):
                if block.pairwise in ("embedded_gaussian", "gaussian", "dot_product"):
                    f[j] = float(qi @ kj)
                elif block.pairwise == "l2":
                    f[j] = -float(((qi - kj) ** 2).sum()) / math.sqrt(len(qi))
                elif block.pairwise == "cosine":
                    f[j] = block.temperature * float(qi @ kj) / (np.linalg.norm(qi) * np.linalg.norm(kj))
                else:
                    wf = block.w_f.detach().double().numpy()
                    f[j] = max(0.0, float(wf @ np.concatenate([qi, kj])))
            if block.pairwise in ("embedded_gaussian", "gaussian", "l2", "cosine"):
                f = np.exp(f - f.max())
                weights[i] = f / f.sum()
            else:
                weights[i] = f / n
        y = weights @ values  # (HW, Cv)
        o = _w(block.out) @ y.T  # (C, HW)
        if block.gate == "channel":
            gate = np.tanh(block.gain.detach().double().numpy())[:, None, None]  # (C, 1, 1)
        else:
            gate = block.gamma.item() if block.gate == "gamma" else 1.0
        zs.append(xb + gate * o.reshape(c, h, w))
        ws.append(weights)
    return np.stack(zs), np.stack(ws)


def make_block(pairwise, subsample, *, channels=16, sn=True, gate="gamma", seed=0, **kw) -> NonLocalBlock:
    torch.manual_seed(seed)
    block = NonLocalBlock(channels, pairwise=pairwise, subsample=subsample, spectral_norm=sn, gate=gate, **kw)
    with torch.no_grad():
        if gate == "gamma":
            block.gamma.fill_(0.7)
        elif gate == "channel":
            block.gain.normal_(0, 1.0)
        else:
            block.out.weight.normal_(0, 0.3)
    # eval(): spectral norm stops its power iteration, so the weights read by the reference are the ones used
    return block.double().eval()


@pytest.mark.parametrize("pairwise", PAIRWISE)
@pytest.mark.parametrize("subsample", [True, False])
@pytest.mark.parametrize("hw", SIZES)
def test_matches_float64_loop(pairwise, subsample, hw):
    block = make_block(pairwise, subsample, sn=(hw[0] % 2 == 1))
    x = torch.randn(2, 16, *hw, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    if pairwise == "gaussian":
        x = x * 0.3  # exp(x_i . x_j) of raw 16-d inputs: keep the logits moderate
    z, attn = block(x, return_attention=True)
    z_ref, w_ref = reference(block, x)
    np.testing.assert_allclose(attn.detach().double().numpy(), w_ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(z.detach().numpy(), z_ref, rtol=1e-9, atol=1e-10)
    # the ordinary forward (fused where it applies) gives the same output
    np.testing.assert_allclose(block(x).detach().numpy(), z_ref, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("gate", ["zero_init", "channel"])
@pytest.mark.parametrize("pairwise", PAIRWISE)
def test_other_gates_match_loop(pairwise, gate):
    block = make_block(pairwise, True, gate=gate)
    x = torch.randn(1, 16, 5, 6, dtype=torch.float64) * 0.3
    z_ref, _ = reference(block, x)
    np.testing.assert_allclose(block(x).detach().numpy(), z_ref, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("hw", SIZES)
def test_attention_shape_and_rows(hw):
    h, w = hw
    for subsample in (True, False):
        n = math.ceil(h / 2) * math.ceil(w / 2) if subsample else h * w
        for pairwise in PAIRWISE:
            block = make_block(pairwise, subsample).float()
            _, attn = block(torch.randn(3, 16, h, w), return_attention=True)
            assert attn.shape == (3, h * w, n)
            if pairwise in ("embedded_gaussian", "gaussian"):
                torch.testing.assert_close(attn.sum(-1), torch.ones(3, h * w), rtol=0, atol=1e-5)
                assert (attn >= 0).all()


@pytest.mark.parametrize("gate", ["gamma", "zero_init"])
@pytest.mark.parametrize("pairwise", PAIRWISE)
def test_identity_at_init_then_learns(gate, pairwise):
    torch.manual_seed(0)
    block = NonLocalBlock(16, pairwise=pairwise, gate=gate)
    x = torch.randn(4, 16, 8, 8)
    assert torch.equal(block(x), x)
    # A target that needs information from other positions: every position should see the map's mean.
    target = x + x.mean(dim=(2, 3), keepdim=True)
    opt = torch.optim.Adam(block.parameters(), lr=1e-2)
    loss = (block(x) - target).pow(2).mean()
    loss.backward()
    gated = block.gamma if gate == "gamma" else block.out.weight
    assert gated.grad is not None and gated.grad.abs().sum() > 0
    opt.step()
    with torch.no_grad():
        moved = (block(x) - x).abs().max()
    assert moved > 1e-4


def test_gamma_moves_and_loss_falls_over_steps():
    torch.manual_seed(0)
    block = NonLocalBlock(16)
    x = torch.randn(4, 16, 8, 8)
    target = x + x.mean(dim=(2, 3), keepdim=True)
    opt = torch.optim.Adam(block.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = (block(x) - target).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert abs(block.gamma.item()) > 0.05
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.parametrize("pairwise", ["embedded_gaussian", "gaussian"])
def test_permutation_equivariant_without_subsampling(pairwise):
    block = make_block(pairwise, subsample=False).float()
    x = torch.randn(2, 16, 6, 5) * 0.5
    perm = torch.randperm(30, generator=torch.Generator().manual_seed(3))
    x_p = x.flatten(2)[:, :, perm].reshape_as(x)
    z = block(x).flatten(2)
    z_p = block(x_p).flatten(2)
    torch.testing.assert_close(z_p, z[:, :, perm], rtol=1e-5, atol=1e-5)


def test_spectral_norm_top_singular_value_is_one():
    torch.manual_seed(0)
    block = NonLocalBlock(32, pairwise="embedded_gaussian")
    x = torch.randn(2, 32, 8, 8)
    for _ in range(30):  # power iterations run in training-mode forwards
        block(x)
    block.eval()
    for name in ("theta", "phi", "g", "out"):
        w = getattr(block, name).weight.detach().double().reshape(getattr(block, name).weight.shape[0], -1)
        top = torch.linalg.svdvals(w)[0].item()
        assert abs(top - 1.0) < 1e-3, (name, top)


@pytest.mark.parametrize("subsample", [True, False])
@pytest.mark.parametrize("hw", [(8, 8), (7, 9)])
def test_fused_and_explicit_paths_agree_forward_and_backward(subsample, hw):
    assert_fused_matches_explicit(hw, subsample=subsample)


def _ops_run(block, x) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        block(x)
    return {e.key for e in prof.key_averages()}


def test_fused_path_runs_cpu_flash_kernel_and_builds_no_weights():
    torch.manual_seed(0)
    block = NonLocalBlock(64).eval()
    ops = _ops_run(block, torch.randn(2, 64, 16, 16))
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in ops
    assert "aten::softmax" not in ops and "aten::_softmax" not in ops
    ops_explicit = _ops_run(NonLocalBlock(64, fused=False).eval(), torch.randn(2, 64, 16, 16))
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" not in ops_explicit


def test_bfloat16_runs_and_tracks_float32():
    torch.manual_seed(0)
    block = NonLocalBlock(32)
    block.gamma.data.fill_(1.0)
    block.eval()
    x = torch.randn(2, 32, 8, 8)
    ref = block(x)
    out = block.to(torch.bfloat16)(x.bfloat16())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)
    _, attn = block(x.bfloat16(), return_attention=True)
    torch.testing.assert_close(attn.float().sum(-1), torch.ones(2, 64), rtol=0, atol=1e-3)


def test_record_attention_collects_each_block():
    torch.manual_seed(0)
    net = torch.nn.Sequential(NonLocalBlock(16), torch.nn.Identity(), NonLocalBlock(16, subsample=False))
    x = torch.randn(2, 16, 5, 5)
    with record_attention(net) as records:
        net(x)
    assert [r.name for r in records] == ["0", "2"]
    assert records[0].query_hw == (5, 5) and records[0].key_hw == (3, 3)
    assert records[1].key_hw == (5, 5) and records[1].weights.shape == (2, 25, 25)
    _, expected = net[0](x, return_attention=True)
    torch.testing.assert_close(records[0].weights, expected.detach())
    assert all(b._records is None for _, b in attention_blocks(net))  # recording stops with the `with`


def test_attention_entropy_hand_values():
    uniform = torch.full((1, 2, 4), 0.25)
    assert attention_entropy(uniform).item() == pytest.approx(math.log(4))
    one_hot = torch.tensor([[[1.0, 0.0, 0.0, 0.0]]])
    assert attention_entropy(one_hot).item() == pytest.approx(0.0, abs=1e-9)


def test_bad_input_errors():
    block = NonLocalBlock(16)
    with pytest.raises(ValueError, match=r"expects \(B, 16, H, W\)"):
        block(torch.randn(2, 8, 4, 4))
    with pytest.raises(ValueError, match="pairwise must be one of"):
        NonLocalBlock(16, pairwise="sine")
    with pytest.raises(ValueError, match="gate must be one of"):
        NonLocalBlock(16, gate="sigmoid")


def test_one_by_one_map_and_batch_of_one():
    block = make_block("embedded_gaussian", True).float()
    z, attn = block(torch.randn(1, 16, 1, 1), return_attention=True)
    assert z.shape == (1, 16, 1, 1) and attn.shape == (1, 1, 1)
    assert attn.item() == pytest.approx(1.0)
