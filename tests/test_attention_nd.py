"""NonLocalBlock's options beyond SAGAN's defaults, against an independent float64 loop over all positions.

`reference` below knows nothing of the block's code path: it reads the weights the block applies, loops
over every query position i and every key position j of a grid of any dimension (positions in C order),
and takes the logit scale and the pooling kernel from the test, not from the block.
"""

import itertools
import math

import numpy as np
import pytest
import torch
from torch.nn.utils import parametrize

from gan.attention import NonLocalBlock, record_attention

SOFTMAX = ("embedded_gaussian", "gaussian")


def _w(conv: torch.nn.Module) -> np.ndarray:
    """The 1x1 conv weight the module applies (spectrally normalised if wrapped), as (out, in)."""
    w = conv.weight.detach().double().numpy()
    return w.reshape(w.shape[0], w.shape[1])


def _pool(a: np.ndarray, kernel: tuple[int, ...]) -> np.ndarray:
    """Max-pool (C, *grid) with stride = kernel and partial windows at the far edges, by explicit loops."""
    grid = a.shape[1:]
    out_grid = tuple(-(-n // k) for n, k in zip(grid, kernel))
    out = np.empty((a.shape[0], *out_grid))
    for cell in itertools.product(*map(range, out_grid)):
        window = tuple(slice(c * k, min(c * k + k, n)) for c, k, n in zip(cell, kernel, grid))
        out[(slice(None), *cell)] = a[(slice(None), *window)].reshape(a.shape[0], -1).max(axis=1)
    return out


def _columns(a: np.ndarray) -> np.ndarray:
    """(C, *grid) -> (positions, C), positions enumerated one by one in C order."""
    return np.stack([a[(slice(None), *p)] for p in itertools.product(*map(range, a.shape[1:]))])


def reference(block: NonLocalBlock, x: torch.Tensor, *, kernel=None, scale: float = 1.0):
    """(z, weights) by loops over query i and key j in float64; `kernel` None means no pooling."""
    zs, ws = [], []
    for xb in x.detach().double().numpy():
        c, grid = xb.shape[0], xb.shape[1:]
        if block.pairwise == "gaussian":
            th, ph = xb, xb
        else:
            th = np.tensordot(_w(block.theta), xb, axes=(1, 0))
            ph = np.tensordot(_w(block.phi), xb, axes=(1, 0))
        gx = np.tensordot(_w(block.g), xb, axes=(1, 0))
        if kernel is not None:
            ph, gx = _pool(ph, kernel), _pool(gx, kernel)
        queries, keys, values = _columns(th), _columns(ph), _columns(gx)
        n = len(keys)
        weights = np.zeros((len(queries), n))
        for i, qi in enumerate(queries):
            f = np.zeros(n)
            for j, kj in enumerate(keys):
                if block.pairwise == "concatenation":
                    wf = block.w_f.detach().double().numpy()
                    f[j] = max(0.0, float(wf @ np.concatenate([qi, kj])))
                else:
                    f[j] = float(qi @ kj)
            if block.pairwise in SOFTMAX:
                f = np.exp(scale * f - (scale * f).max())
                weights[i] = f / f.sum()
            else:
                weights[i] = f / n
        o = _w(block.out) @ (weights @ values).T  # (C, positions)
        gate = block.gamma.item() if block.gate == "gamma" else 1.0
        zs.append(xb + gate * o.reshape(c, *grid))
        ws.append(weights)
    return np.stack(zs), np.stack(ws)


def make_block(channels=16, *, gate="gamma", seed=0, **kw) -> NonLocalBlock:
    """A float64 block in eval mode (spectral norm frozen) with a non-zero gate, so attention shows in z."""
    torch.manual_seed(seed)
    block = NonLocalBlock(channels, gate=gate, **kw)
    with torch.no_grad():
        if gate == "gamma":
            block.gamma.fill_(0.7)
        else:
            block.out.weight.normal_(0, 0.3)
    return block.double().eval()


def _x(*shape, seed=1, gain=0.3) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * gain


def _check(block, x, z_ref, w_ref):
    """return_attention, record_attention and the ordinary (fused where it applies) forward all match."""
    z, attn = block(x, return_attention=True)
    np.testing.assert_allclose(attn.detach().numpy(), w_ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(z.detach().numpy(), z_ref, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(block(x).detach().numpy(), z_ref, rtol=1e-9, atol=1e-10)
    with record_attention(block) as records:
        block(x)
    assert len(records) == 1
    np.testing.assert_allclose(records[0].weights.double().numpy(), w_ref, rtol=1e-5, atol=1e-7)  # float32


# ----------------------------------------------------------------------------------------------
# Levers: logit_scale, gamma_init, qk_spectral_norm


@pytest.mark.parametrize("pairwise", SOFTMAX)
@pytest.mark.parametrize("subsample", [True, False])
def test_inv_sqrt_d_scale_matches_loop(pairwise, subsample):
    block = make_block(pairwise=pairwise, subsample=subsample, logit_scale="inv_sqrt_d")
    x = _x(2, 16, 5, 6, gain=1.0)
    d = 16 if pairwise == "gaussian" else 2  # C for the Gaussian, C/8 for theta/phi
    z_ref, w_ref = reference(block, x, kernel=(2, 2) if subsample else None, scale=1 / math.sqrt(d))
    _check(block, x, z_ref, w_ref)


@pytest.mark.parametrize("pairwise", SOFTMAX)
def test_learned_scale_matches_loop_and_starts_at_one(pairwise):
    block = make_block(pairwise=pairwise, logit_scale="learned")
    assert block.log_tau.item() == 0.0
    x = _x(2, 16, 5, 5)
    _check(block, x, *reference(block, x, kernel=(2, 2), scale=1.0))
    with torch.no_grad():
        block.log_tau.fill_(0.4)
    _check(block, x, *reference(block, x, kernel=(2, 2), scale=math.exp(0.4)))


@pytest.mark.parametrize("fused", [True, False])
def test_learned_scale_gradient_matches_finite_difference_of_loop(fused):
    """d(sum z * gz)/d(log_tau) from autograd on either path vs a central difference of the float64 loop."""
    block = make_block(logit_scale="learned", fused=fused)
    with torch.no_grad():
        block.log_tau.fill_(0.3)
    x = _x(1, 16, 4, 5, gain=1.0)
    gz = _x(1, 16, 4, 5, seed=2, gain=1.0)
    (block(x) * gz).sum().backward()
    eps = 1e-5
    loss = [float((reference(block, x, kernel=(2, 2), scale=math.exp(0.3 + s))[0] * gz.numpy()).sum()) for s in (eps, -eps)]
    numeric = (loss[0] - loss[1]) / (2 * eps)
    assert abs(numeric) > 1e-4  # the temperature matters at this input
    assert block.log_tau.grad.item() == pytest.approx(numeric, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("logit_scale", ["one", "inv_sqrt_d", "learned"])
def test_fused_and_explicit_agree_with_each_scale(logit_scale):
    torch.manual_seed(0)
    fused = NonLocalBlock(64, logit_scale=logit_scale, fused=True)
    explicit = NonLocalBlock(64, logit_scale=logit_scale, fused=False)
    explicit.load_state_dict(fused.state_dict())
    for b in (fused, explicit):
        b.gamma.data.fill_(0.5)
        if logit_scale == "learned":
            b.log_tau.data.fill_(-0.5)
        b.eval()
    x1 = torch.randn(2, 64, 7, 9, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    z1, z2 = fused(x1), explicit(x2)
    torch.testing.assert_close(z1, z2, rtol=1e-5, atol=1e-5)
    gz = torch.randn_like(z1)
    z1.backward(gz)
    z2.backward(gz)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-5)
    for (n, p1), (_, p2) in zip(fused.named_parameters(), explicit.named_parameters()):
        assert p1.grad is not None and p1.grad.abs().sum() > 0, n
        torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-4, atol=1e-5, msg=n)


def test_defaults_keep_the_state_dict_keys():
    """The levers at their defaults add nothing: the SAGAN block's keys, hand-listed."""
    sn = ("parametrizations.weight.original", "parametrizations.weight.0._u", "parametrizations.weight.0._v")
    expected = {"gamma"} | {f"{m}.{k}" for m in ("theta", "phi", "g", "out") for k in sn}
    assert set(NonLocalBlock(16).state_dict()) == expected
    assert set(NonLocalBlock(16, logit_scale="inv_sqrt_d").state_dict()) == expected
    assert set(NonLocalBlock(16, logit_scale="learned").state_dict()) == expected | {"log_tau"}
    torch.manual_seed(0)
    old = NonLocalBlock(16).state_dict()
    torch.manual_seed(0)
    new = NonLocalBlock(16, logit_scale="one", gamma_init=0.0, qk_spectral_norm=None).state_dict()
    assert all(torch.equal(old[k], new[k]) for k in expected)


def test_gamma_init_sets_the_gate_and_matches_loop():
    torch.manual_seed(0)
    block = NonLocalBlock(16, gamma_init=0.1).double().eval()
    assert block.gamma.item() == pytest.approx(0.1)
    x = _x(2, 16, 5, 7)
    z_ref, w_ref = reference(block, x, kernel=(2, 2))
    assert np.abs(z_ref - x.numpy()).max() > 1e-3  # no longer the identity at initialisation
    _check(block, x, z_ref, w_ref)
    with pytest.raises(ValueError, match="gamma_init=0.1 needs gate='gamma'"):
        NonLocalBlock(16, gate="zero_init", gamma_init=0.1)
    NonLocalBlock(16, gate="zero_init", gamma_init=0.0)  # the default is accepted under either gate


@pytest.mark.parametrize(("sn", "qk_sn"), [(True, False), (False, True), (True, None), (False, None)])
def test_qk_spectral_norm_separately_from_g_and_out(sn, qk_sn):
    block = make_block(spectral_norm=sn, qk_spectral_norm=qk_sn)
    want_qk = sn if qk_sn is None else qk_sn
    assert [parametrize.is_parametrized(getattr(block, m)) for m in ("theta", "phi", "g", "out")] == [
        want_qk, want_qk, sn, sn,
    ]
    x = _x(2, 16, 5, 5)
    _check(block, x, *reference(block, x, kernel=(2, 2)))


def test_lever_errors():
    with pytest.raises(ValueError, match="logit_scale must be one of one, inv_sqrt_d, learned"):
        NonLocalBlock(16, logit_scale="sqrt")
    for pairwise in ("dot_product", "concatenation"):
        with pytest.raises(ValueError, match="use logit_scale='one'"):
            NonLocalBlock(16, pairwise=pairwise, logit_scale="inv_sqrt_d")
