"""The speed options compute what the plain float32 path computes: agreement checks only, no timings.

channels_last, fused attention, bf16 autocast and torch.compile each run the real `train_step` on a tiny SAGAN-32 and are
compared with the plain float32 NCHW explicit-attention step built from the same seed. Spectral norm's
power iteration and sigma must stay float32 under autocast.
"""

import copy
import functools
import itertools

import pytest
import torch
from accelerate import Accelerator
from torch.overrides import TorchFunctionMode

from gan.config import load_config
from gan.layers import conv2d, linear
from gan.step import build_parts, train_step

from shared import TINY_MODEL

TINY = [
    *TINY_MODEL,
    "model.resolution=32",
    "model.num_classes=3",
    "model.g_attention=[16]",
    "model.d_attention=[16]",
    "train.batch_size=4",
    "train.seed=0",
    "optim.ema_decay=0",
]


class _AutocastAtMv(TorchFunctionMode):
    """Records whether CPU autocast is on each time torch.mv runs (the power iteration's product)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bool] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.mv:
            self.seen.append(torch.is_autocast_enabled("cpu"))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    "make", [lambda: conv2d(8, 6, 3, sn=True), lambda: linear(10, 7, sn=True)], ids=["conv", "linear"]
)
def test_spectral_norm_is_float32_and_identical_under_autocast(make):
    torch.manual_seed(0)
    plain = make().train()
    mixed = copy.deepcopy(plain)
    for _ in range(3):  # three power iterations each
        w_plain = plain.weight
        with torch.autocast("cpu", dtype=torch.bfloat16), _AutocastAtMv() as spy:
            w_mixed = mixed.weight
        assert spy.seen and not any(spy.seen)  # the power iteration ran with autocast switched off
        assert w_mixed.dtype == torch.float32
        assert torch.equal(w_mixed, w_plain)
    sn_plain, sn_mixed = plain.parametrizations.weight[0], mixed.parametrizations.weight[0]
    assert torch.equal(sn_plain._u, sn_mixed._u) and torch.equal(sn_plain._v, sn_mixed._v)
    # and sigma is what float64 says for the same u, v
    w = plain.parametrizations.weight.original.detach().double().flatten(1)
    sigma = torch.dot(sn_plain._u.double(), w @ sn_plain._v.double())
    torch.testing.assert_close(w_plain.detach().double().flatten(1), w / sigma, rtol=1e-6, atol=1e-7)


def _run(overrides: list[str], steps: int = 2):
    """Losses of `steps` train_steps and the final parts, from seed 0 and one fixed batch stream."""
    cfg = load_config(None, [*TINY, *overrides])
    accelerator = Accelerator(cpu=True)
    parts = build_parts(cfg, accelerator)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
    y = torch.randint(3, (4,), generator=g)
    batches = itertools.repeat((x, y))
    losses = []
    for _ in range(steps):
        stats, _ = train_step(parts, cfg, batches, accelerator, len(losses) + 1)
        losses.append({k: v for k, v in stats.items()})
    return losses, parts


def _close(a: list[dict], b: list[dict], rtol: float) -> None:
    """Every logged scalar of every step within rtol (relative to the reference; a floor of rtol * 1)."""
    for step, (sa, sb) in enumerate(zip(a, b)):
        for key in sa:
            torch.testing.assert_close(sa[key], sb[key], rtol=rtol, atol=rtol, msg=f"step {step} {key}")


@pytest.fixture(scope="module")
def reference():
    return _run(["model.attn_fused=false"])


def test_channels_last_step_matches_contiguous(reference):
    ref_losses, ref_parts = reference
    losses, parts = _run(["model.attn_fused=false", "train.channels_last=true"])
    assert parts.G_raw.out_conv.parametrizations.weight.original.is_contiguous(memory_format=torch.channels_last)
    _close(losses[:1], ref_losses[:1], rtol=1e-5)  # identical weights: only summation order differs
    _close(losses[1:], ref_losses[1:], rtol=1e-4)  # after one Adam step from (nearly) equal gradients
    for p, q in zip(parts.D_raw.parameters(), ref_parts.D_raw.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    # (G's weights are not compared: Adam's first steps move a weight by ~lr whatever the gradient's size,
    # so a gradient that is ~0 in both runs may step either way.)


def test_fused_attention_step_matches_explicit(reference):
    ref_losses, _ = reference
    losses, _ = _run(["model.attn_fused=true"])
    _close(losses[:1], ref_losses[:1], rtol=1e-5)
    _close(losses[1:], ref_losses[1:], rtol=1e-4)


def test_bf16_step_is_finite_close_and_keeps_spectral_norm_float32(reference):
    ref_losses, _ = reference
    losses, parts = _run(["train.mixed_precision=bf16", "train.channels_last=true"])
    for stats in losses:
        for key, value in stats.items():
            assert value.dtype == torch.float32 and torch.isfinite(value), key
    _close(losses, ref_losses, rtol=0.03)  # bf16 keeps 8 significant bits (0.4 %) per rounding
    checked = 0
    for net in (parts.G_raw, parts.D_raw):
        net.eval()  # eval: reuse u, v, so both readings use the same vectors
        for module in net.modules():
            if not hasattr(module, "parametrizations"):
                continue
            sn = module.parametrizations.weight[0]
            assert sn._u.dtype == torch.float32 and sn._v.dtype == torch.float32
            with torch.autocast("cpu", dtype=torch.bfloat16):
                w_mixed = module.weight
            assert w_mixed.dtype == torch.float32
            assert torch.equal(w_mixed, module.weight)
            checked += 1
    assert checked > 10


@pytest.mark.slow
def test_compiled_step_matches_eager_and_compiles_every_pass(monkeypatch):
    """train.compile: every pass of the step (D step's no-grad fakes, D on real+fake, G with frozen D) runs
    compiled, and the step computes what eager computes, spectral norm's in-place u/v updates included.

    What is ours is what dynamo captures and AOT autograd functionalises (the graphs, their in-place buffer
    updates, the gradients), so the step compiles with the `aot_eager` backend here: the same capture and
    functionalisation as the default inductor backend, without inductor's cold C++ code generation, which
    is torch's and cost about 200 of the suite's 800 CPU seconds (2026-12-02). Inductor itself runs in
    `benchmarks/train_throughput.py --variants compile`."""
    import torch._dynamo

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    eager_losses, eager_parts = _run(["model.attn_fused=true"])
    losses, parts = _run(["model.attn_fused=true", "train.compile=true"])
    assert parts.G is not parts.G_raw and parts.G_local is parts.G and parts.D_local is parts.D
    # G with and without grad, D with trainable and with frozen parameters: four graphs at least
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 4
    _close(losses[:1], eager_losses[:1], rtol=1e-5)
    _close(losses[1:], eager_losses[1:], rtol=1e-4)
    # The compiled passes mutate state as eager does: SN's u, v in both nets, and G's batch-norm statistics
    # (updated by the no-grad fakes as well: 2 passes per step). G's statistics get a loose bound only:
    # they follow G's weights, which Adam's first step may move either way (see the channels_last test).
    for (name, buf), (_, ref_buf) in zip(parts.D_raw.named_buffers(), eager_parts.D_raw.named_buffers()):
        torch.testing.assert_close(buf, ref_buf, rtol=1e-5, atol=1e-6, msg=name)
    for (name, buf), (_, ref_buf) in zip(parts.G_raw.named_buffers(), eager_parts.G_raw.named_buffers()):
        if name.endswith("num_batches_tracked"):
            assert int(buf) == int(ref_buf) == 4, name
        else:
            torch.testing.assert_close(buf, ref_buf, rtol=0, atol=1e-3, msg=name)
    for p, q in zip(parts.D_raw.parameters(), eager_parts.D_raw.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
