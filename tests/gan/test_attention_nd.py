"""NonLocalBlock beyond SAGAN's 2D defaults (levers; sequences and video), against an independent float64 loop.

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

from shared import ROOT, assert_fused_matches_explicit

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
    loss = [
        float((reference(block, x, kernel=(2, 2), scale=math.exp(0.3 + s))[0] * gz.numpy()).sum()) for s in (eps, -eps)
    ]
    numeric = (loss[0] - loss[1]) / (2 * eps)
    assert abs(numeric) > 1e-4  # the temperature matters at this input
    assert block.log_tau.grad.item() == pytest.approx(numeric, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("logit_scale", ["one", "inv_sqrt_d", "learned"])
def test_fused_and_explicit_agree_with_each_scale(logit_scale):
    assert_fused_matches_explicit((7, 9), logit_scale=logit_scale)


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
        want_qk,
        want_qk,
        sn,
        sn,
    ]
    x = _x(2, 16, 5, 5)
    _check(block, x, *reference(block, x, kernel=(2, 2)))


def test_lever_errors():
    with pytest.raises(ValueError, match="logit_scale must be one of one, inv_sqrt_d, learned"):
        NonLocalBlock(16, logit_scale="sqrt")
    for pairwise in ("dot_product", "concatenation"):
        with pytest.raises(ValueError, match="use logit_scale='one'"):
            NonLocalBlock(16, pairwise=pairwise, logit_scale="inv_sqrt_d")


# ----------------------------------------------------------------------------------------------
# Sequences (dim=1) and video (dim=3); 2D is covered by tests/gan/test_attention.py

PAIRWISE = ("embedded_gaussian", "dot_product", "concatenation", "gaussian")
GRIDS = [(7,), (8,), (3, 5, 7), (2, 4, 6)]  # odd and even, per dimension
SUBSAMPLE_KERNEL = {1: (2,), 3: (1, 2, 2)}  # subsample=True: video pools space only


@pytest.mark.parametrize("gate", ["gamma", "zero_init"])
@pytest.mark.parametrize("subsample", [True, False])
@pytest.mark.parametrize("pairwise", PAIRWISE)
@pytest.mark.parametrize("grid", GRIDS)
def test_nd_matches_float64_loop(grid, pairwise, subsample, gate):
    dim = len(grid)
    sn = sum(grid) % 2 == 1  # spectral norm on the odd grids, plain convs on the even ones
    block = make_block(dim=dim, pairwise=pairwise, subsample=subsample, spectral_norm=sn, gate=gate)
    x = _x(2, 16, *grid)
    z_ref, w_ref = reference(block, x, kernel=SUBSAMPLE_KERNEL[dim] if subsample else None)
    n_keys = math.prod(-(-s // k) for s, k in zip(grid, SUBSAMPLE_KERNEL[dim])) if subsample else math.prod(grid)
    assert w_ref.shape == (2, math.prod(grid), n_keys)
    _check(block, x, z_ref, w_ref)


@pytest.mark.parametrize(
    ("grid", "pool", "key_shape"),
    [
        ((7,), (3,), (3,)),
        ((3, 5, 7), (2, 2, 2), (2, 3, 4)),
        ((3, 5, 7), (3, 1, 4), (1, 5, 2)),
        ((5, 6), (1, 4), (5, 2)),
    ],
)
def test_pool_takes_any_per_axis_kernel(grid, pool, key_shape):
    block = make_block(dim=len(grid), pool=pool)
    x = _x(2, 16, *grid)
    z_ref, w_ref = reference(block, x, kernel=pool)
    _check(block, x, z_ref, w_ref)
    with record_attention(block) as records:
        block(x)
    assert records[0].query_shape == grid and records[0].key_shape == key_shape
    assert records[0].weights.shape == (2, math.prod(grid), math.prod(key_shape))


def test_records_keep_2d_fields_and_refuse_them_elsewhere():
    block = NonLocalBlock(16, dim=3)
    with record_attention(block) as records:
        block(torch.randn(1, 16, 3, 5, 7))
    assert records[0].query_shape == (3, 5, 7) and records[0].key_shape == (3, 3, 4)
    with pytest.raises(ValueError, match="read query_shape / key_shape"):
        _ = records[0].query_hw
    block2d = NonLocalBlock(16)
    with record_attention(block2d) as records:
        block2d(torch.randn(1, 16, 5, 7))
    assert records[0].query_hw == (5, 7) and records[0].key_hw == (3, 4)


@pytest.mark.parametrize("gate", ["gamma", "zero_init"])
@pytest.mark.parametrize("pairwise", PAIRWISE)
@pytest.mark.parametrize("grid", [(9,), (3, 4, 5)])
def test_nd_identity_at_init(grid, pairwise, gate):
    torch.manual_seed(0)
    block = NonLocalBlock(16, dim=len(grid), pairwise=pairwise, gate=gate)
    x = torch.randn(2, 16, *grid)
    assert torch.equal(block(x), x)


@pytest.mark.parametrize("pairwise", PAIRWISE)
@pytest.mark.parametrize("grid", [(11,), (3, 4, 5)])
def test_nd_permutation_equivariant_over_all_positions(grid, pairwise):
    """Without pooling, shuffling all positions (across frames too) shuffles the output the same way."""
    block = make_block(dim=len(grid), pairwise=pairwise, subsample=False).float()
    x = torch.randn(2, 16, *grid) * 0.5
    perm = torch.randperm(math.prod(grid), generator=torch.Generator().manual_seed(3))
    x_p = x.flatten(2)[:, :, perm].reshape_as(x)
    torch.testing.assert_close(block(x_p).flatten(2), block(x).flatten(2)[:, :, perm], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("logit_scale", ["one", "learned"])
@pytest.mark.parametrize("subsample", [True, False])
@pytest.mark.parametrize("grid", [(13,), (16,), (3, 5, 7), (2, 6, 6)])
def test_nd_fused_and_explicit_agree_forward_and_backward(grid, subsample, logit_scale):
    assert_fused_matches_explicit(grid, dim=len(grid), subsample=subsample, logit_scale=logit_scale)


def _ops(block, x) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        block(x).sum().backward()
    return {e.key for e in prof.key_averages()}


@pytest.mark.parametrize("shape", [(2, 64, 40), (1, 64, 4, 8, 8)])
def test_nd_fused_path_runs_cpu_flash_kernel_and_builds_no_weights(shape):
    torch.manual_seed(0)
    dim = len(shape) - 2
    x = torch.randn(*shape)
    ops = _ops(NonLocalBlock(64, dim=dim, gamma_init=0.5).eval(), x)
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in ops
    assert "aten::_scaled_dot_product_flash_attention_for_cpu_backward" in ops
    assert not ops & {"aten::softmax", "aten::_softmax", "aten::bmm"}
    ops_explicit = _ops(NonLocalBlock(64, dim=dim, gamma_init=0.5, fused=False).eval(), x)
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" not in ops_explicit and "aten::_softmax" in ops_explicit


def test_nd_parameter_shapes_follow_dim():
    for dim, kernel in ((1, (1,)), (2, (1, 1)), (3, (1, 1, 1))):
        sd = NonLocalBlock(16, dim=dim).state_dict()
        assert sd["theta.parametrizations.weight.original"].shape == (2, 16, *kernel)
        assert sd["out.parametrizations.weight.original"].shape == (16, 8, *kernel)


def test_nd_errors():
    with pytest.raises(ValueError, match="dim must be 1, 2 or 3"):
        NonLocalBlock(16, dim=4)
    with pytest.raises(ValueError, match=r"with dim=3 expects \(B, 16, T, H, W\)"):
        NonLocalBlock(16, dim=3)(torch.randn(2, 16, 4, 4))
    with pytest.raises(ValueError, match=r"with dim=1 expects \(B, 16, L\)"):
        NonLocalBlock(16, dim=1)(torch.randn(2, 8, 4))
    for bad in ((2, 2), (0, 2, 2), 2):
        with pytest.raises(ValueError, match="pool must be 3 positive kernel sizes"):
            NonLocalBlock(16, dim=3, pool=bad)
    with pytest.raises(ValueError, match="with subsample=True"):
        NonLocalBlock(16, dim=3, pool=(2, 2, 2), subsample=False)


def test_one_position_sequence_and_one_frame_video():
    block = make_block(dim=1).float()
    z, attn = block(torch.randn(1, 16, 1), return_attention=True)
    assert z.shape == (1, 16, 1) and attn.shape == (1, 1, 1) and attn.item() == pytest.approx(1.0)
    video = make_block(dim=3).float()
    x = torch.randn(1, 16, 1, 5, 5)
    image = make_block(dim=2).float()  # same seed, same weights: a one-frame video is an image
    image.load_state_dict({k: v.squeeze(2) if v.dim() == 5 else v for k, v in video.state_dict().items()})
    torch.testing.assert_close(video(x)[:, :, 0], image(x[:, :, 0]), rtol=1e-6, atol=1e-6)


def test_docs_video_example_runs():
    """docs/attention.md's video example, executed as written."""
    page = (ROOT / "docs" / "attention.md").read_text()
    snippets = [s.split("```", 1)[0] for s in page.split("```python\n")[1:] if "dim=3" in s.split("```", 1)[0]]
    assert len(snippets) == 1, "docs/attention.md should hold exactly one python block with a dim=3 NonLocalBlock"
    torch.manual_seed(0)
    scope: dict = {}
    exec(snippets[0], scope)
    assert scope["z"].shape == (2, 64, 8, 16, 16) and scope["logits"].shape == (2, 10)
    assert scope["attn"].shape == (2, 8 * 16 * 16, 8 * 8 * 8)
    torch.testing.assert_close(scope["attn"].sum(-1), torch.ones(2, 2048))
    torch.testing.assert_close(scope["z"], scope["h"])  # gamma = 0: the identity at initialisation


@pytest.mark.parametrize("gate", ["gamma", "zero_init"])
def test_gate_value_is_zero_exactly_when_the_block_is_the_identity(gate):
    torch.manual_seed(0)
    block = NonLocalBlock(8, dim=1, gate=gate, subsample=False, spectral_norm=False)
    x = torch.randn(2, 8, 5)
    assert block.gate_value() == 0.0 and torch.equal(block(x), x)
    with torch.no_grad():
        if gate == "gamma":
            block.gamma.fill_(-0.375)
        else:  # out's weight (8, 4, 1) set to 0, 1, ..., 31: Frobenius norm sqrt(sum of squares), by hand
            block.out.weight.copy_(torch.arange(32.0).view(8, 4, 1))
    expected = -0.375 if gate == "gamma" else math.sqrt(sum(i * i for i in range(32)))
    assert block.gate_value() == pytest.approx(expected) and not torch.equal(block(x), x)
