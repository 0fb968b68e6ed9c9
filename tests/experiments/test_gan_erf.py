"""Effective receptive fields of trained GANs (experiments/erf.py's D and G functions, experiments/gan_erf.py).

The expected maps are computed by hand: networks whose gradients are known in closed form (all-ones kernels,
a nearest up-sampling, active ReLUs), so each mass profile is a ratio of pixel counts.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
import torch
from torch import nn

import train as train_cli
from experiments import gan_erf
from experiments.erf import attention_off, d_effective_rf, d_score_map, effective_rf, g_effective_rf, gates
from gan.attention import NonLocalBlock
from gan.config import load_config
from gan.models import Discriminator, Generator
from gan.synthetic import FOREGROUND_THRESHOLD, CoherenceDataset
from tools.report import machine_line

from shared import ROOT, TINY_MODEL, TINY_RUN


def model_cfg(*overrides: str):
    return load_config(None, [*TINY_MODEL, *overrides]).model


def hand_built_d(*blocks: nn.Module) -> Discriminator:
    """A Discriminator (no spectral norm) whose trunk is `blocks` and whose linear weight is all ones."""
    d = Discriminator(model_cfg("model.d_spectral_norm=false", "model.d_attention=[]"))
    d.blocks = nn.ModuleDict({f"b{i}": b for i, b in enumerate(blocks)})
    channels = [m.out_channels for m in d.blocks.modules() if isinstance(m, nn.Conv2d)][-1]
    d.linear = nn.Linear(channels, 1)
    nn.init.ones_(d.linear.weight)
    return d.eval()


def ones_conv(cin: int, cout: int, k: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)
    nn.init.ones_(conv.weight)
    return conv


def box_maps(side: int, boxes: list[tuple[int, int, int, int]], value: float) -> torch.Tensor:
    """The mean of one map per box (rows r0..r1-1, columns c0..c1-1), each `value` on its box, in float64 loops."""
    out = torch.zeros(side, side, dtype=torch.float64)
    for r0, r1, c0, c1 in boxes:
        for r in range(r0, r1):
            for c in range(c0, c1):
                out[r, c] += value / len(boxes)
    return out


# ----------------------------------------------------------------------------------------------
# D


@pytest.mark.parametrize("conditional", [False, True])
def test_d_score_terms_sum_to_the_logit(conditional: bool) -> None:
    torch.manual_seed(0)
    d = Discriminator(model_cfg(f"model.num_classes={4 if conditional else 0}")).eval()
    with torch.no_grad():
        d.blocks.attn16.gamma.fill_(0.3)
        x = torch.randn(3, 3, 32, 32)
        y = torch.tensor([0, 3, 1]) if conditional else None
        terms = d_score_map(d, x, y)
        logits = d(x, y)
    assert terms.shape == (3, 1, 8, 8)
    torch.testing.assert_close(terms.sum((1, 2, 3)) + d.linear.bias, logits, rtol=1e-5, atol=1e-5)
    if conditional:
        with pytest.raises(ValueError, match="class-conditional"):
            d_score_map(d, x)


def test_d_erf_needs_eval_mode_and_a_known_position() -> None:
    d = Discriminator(model_cfg())
    with pytest.raises(ValueError, match=r"call \.eval\(\) first"):
        d_effective_rf(d.train(), torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="'middle'"):
        effective_rf(nn.Identity(), torch.randn(1, 1, 4, 4), "centre")


@pytest.mark.parametrize(
    "name, trunk, mass, r90, boxes, value",
    [
        # 3x3 all-ones conv, stride 1: each middle position (15 or 16 per axis) sees its 3x3 box
        ("box", lambda: [ones_conv(3, 2, 3)], [1 / 9, 8 / 9], 1.0, [(14, 17, 14, 17), (14, 17, 15, 18),
                                                                      (15, 18, 14, 17), (15, 18, 15, 18)], 6.0),
        # 1x1 conv: a single pixel each
        ("pixel", lambda: [ones_conv(3, 2, 1)], [1.0], 0.0, [(15, 16, 15, 16), (15, 16, 16, 17),
                                                              (16, 17, 15, 16), (16, 17, 16, 17)], 6.0),
        # 1x1 conv then 4x4 average pooling (D's stride at 32x32): 4x4 patches centred at 13.5 / 17.5,
        # distances 0.5 (4 pixels) and 1.5 (12 pixels)
        ("pooled", lambda: [ones_conv(3, 2, 1), nn.AvgPool2d(4)], [0.25, 0.75], 1.5,
         [(12, 16, 12, 16), (12, 16, 16, 20), (16, 20, 12, 16), (16, 20, 16, 20)], 6.0 / 16),
    ],
)  # fmt: skip
def test_d_erf_of_hand_built_trunks(name, trunk, mass, r90, boxes, value) -> None:
    d = hand_built_d(*trunk())
    images = torch.rand(4, 3, 32, 32) + 0.1  # positive: every ReLU is active
    erf = d_effective_rf(d, images)
    # d term / d pixel = (channels out) x (kernel weight 1) x (linear weight 1) per colour, summed over 3 colours
    torch.testing.assert_close(erf.grad_map.double(), box_maps(32, boxes, value))
    torch.testing.assert_close(erf.mass[: len(mass)], torch.tensor(mass, dtype=torch.float64))
    assert erf.mass[len(mass) :].sum() == 0 and erf.r90 == r90


def attention_d(gamma: float) -> tuple[Discriminator, Discriminator]:
    """A conv3x3 -> non-local block trunk (spectral norm on) and the same conv alone."""
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 8, 3, padding=1)
    attn = NonLocalBlock(8, spectral_norm=True)
    with torch.no_grad():
        attn.gamma.fill_(gamma)
    return hand_built_d(conv, attn), hand_built_d(conv)


def test_attention_moves_gradient_mass_beyond_the_conv_field() -> None:
    images = torch.randn(8, 3, 16, 16)
    with_attn, conv_only = attention_d(0.5)
    conv_erf = d_effective_rf(conv_only, images)
    assert conv_erf.mass_beyond(1.0) == 0.0  # a 3x3 conv reaches 1 pixel from its centre
    erf = d_effective_rf(with_attn, images)
    assert erf.mass_beyond(1.0) > 0.05 and erf.grad_map[0, 0] > 0  # even the far corner moves the term
    assert gates(with_attn) == {"blocks.b1": 0.5}
    with attention_off(with_attn):
        assert torch.equal(d_effective_rf(with_attn, images).grad_map, conv_erf.grad_map)
    assert gates(with_attn) == {"blocks.b1": 0.5}  # restored
    closed, _ = attention_d(0.0)
    assert torch.equal(d_effective_rf(closed, images).grad_map, conv_erf.grad_map)


# ----------------------------------------------------------------------------------------------
# G


def hand_built_g(kernel: int) -> Generator:
    """G whose first stage goes straight to 32x32 by nearest up-sampling, BN the identity plus 5 (active ReLUs),
    then a `kernel` x `kernel` conv of weight 1e-3 (tanh far from saturation)."""
    torch.manual_seed(2)
    g = Generator(model_cfg("model.g_spectral_norm=false", "model.g_attention=[]"))
    g.blocks = nn.ModuleDict({"up": nn.Upsample(scale_factor=8, mode="nearest")})
    g.out_conv = nn.Conv2d(16, 3, kernel, padding=kernel // 2)
    with torch.no_grad():
        g.linear.weight.mul_(0.1)  # |h| < 5
        g.out_bn.bias.fill_(5.0)
        g.out_conv.weight.fill_(1e-3)
        g.out_conv.bias.zero_()
    return g.eval()


@pytest.mark.parametrize(
    "kernel, mass, r90, outside_middle",
    [
        # pixel 15 (cell 1) with a 3x3 window over rows 14-16: 4 of its 9 pixels in its own cell, 5 in cells
        # one step away (Chebyshev), none two away; every window stays inside the 2x2 middle cells
        (3, [4 / 9, 5 / 9, 0.0], 8.0, 0.0),
        (1, [1.0, 0.0, 0.0], 0.0, 0.0),  # a 1x1 conv: the pixel's own cell only
    ],
)
def test_g_erf_of_hand_built_generators(kernel: int, mass: list[float], r90: float, outside_middle: float) -> None:
    g = hand_built_g(kernel)
    erf = g_effective_rf(g, torch.randn(6, g.z_dim))
    torch.testing.assert_close(erf.distances, torch.tensor([0.0, 8.0, 16.0], dtype=torch.float64))
    torch.testing.assert_close(erf.mass, torch.tensor(mass, dtype=torch.float64))
    assert erf.r90 == r90 and erf.mass_beyond(0) == pytest.approx(1 - mass[0], abs=1e-12)
    assert gan_erf.outside_middle_cells(erf.grad_map) == pytest.approx(outside_middle, abs=1e-7)


def test_g_erf_with_attention_off_is_the_generator_without_it() -> None:
    torch.manual_seed(3)
    g = Generator(model_cfg("model.num_classes=4")).eval()  # attention at 16, spectral norm on
    with torch.no_grad():
        g.blocks.attn16.gamma.fill_(0.7)
    plain = Generator(model_cfg("model.num_classes=4", "model.g_attention=[]")).eval()
    missing, unexpected = plain.load_state_dict(g.state_dict(), strict=False)
    assert not missing and all(k.startswith("blocks.attn16.") for k in unexpected)
    z, y = torch.randn(4, g.z_dim), torch.tensor([0, 1, 2, 3])
    erf = g_effective_rf(g, z, y)
    with attention_off(g):
        off = g_effective_rf(g, z, y)
    assert torch.equal(off.grad_map, g_effective_rf(plain, z, y).grad_map)
    assert not torch.equal(erf.grad_map, off.grad_map)
    assert float(erf.mass.sum()) == pytest.approx(1.0) and erf.grad_map.shape == (4, 4)


# ----------------------------------------------------------------------------------------------
# The benchmark script


def test_object_half_distance_matches_rendered_images() -> None:
    # sizes 7..10 (mean 8.5), left edges 1..3 (mean 2): (32 - 4 - 8.5) / 2; at 64: 14..19, 1..6
    assert gan_erf.object_half_distance(32) == 9.75 and gan_erf.object_half_distance(64) == 20.25
    data = CoherenceDataset(300, 32, seed=5)
    columns = torch.arange(32, dtype=torch.float64)
    gaps = []
    for i in range(len(data)):
        fg = (data[i][0].amax(0) > FOREGROUND_THRESHOLD).double()  # (32, 32)
        left, right = fg[:, :16].sum(0), fg[:, 16:].sum(0)
        gaps.append((right @ columns[16:]) / right.sum() - (left @ columns[:16]) / left.sum())
    assert abs(sum(gaps) / len(gaps) / 2 - 9.75) < 0.25  # 4 standard errors of the mean


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    """Two tiny 2-step runs: attention at 16 in G and D, and none."""
    root = tmp_path_factory.mktemp("runs")
    base = ["--config", str(ROOT / "configs" / "demo.yaml"), *TINY_RUN, "train.steps=2"]
    assert train_cli.main([*base, "--run-dir", str(root / "attn")]) == 0
    assert (
        train_cli.main([*base, "--run-dir", str(root / "noattn"), "model.g_attention=[]", "model.d_attention=[]"]) == 0
    )
    return [root / "attn", root / "noattn"]


@pytest.mark.slow
def test_script_end_to_end(runs, tmp_path, capsys) -> None:
    out, report = tmp_path / "erf", tmp_path / "docs" / "erf.md"
    argv = [*map(str, runs), "--out", str(out), "--report", str(report), "--num-images", "16"]
    assert gan_erf.main(argv) == 0
    text = report.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) == 2 and rows[0].startswith(f"| `{runs[0]}` | 2 | 16 | 16 | G.attn16 gamma ")
    assert rows[1].startswith(f"| `{runs[1]}` | 2 | none | none | - |")
    assert f"`python -m experiments.gan_erf {runs[0]} {runs[1]} --out {out}" in text
    assert machine_line().split(" (")[0] in text and datetime.now(timezone.utc).date().isoformat() in text
    assert "](../erf/gan_erf.png)" in text and (out / "gan_erf.png").stat().st_size > 0
    assert sorted(p.name for p in out.glob("*.json")) == ["0_attn.json", "1_noattn.json"]


def test_script_refuses_a_directory_without_checkpoints(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        gan_erf.main([str(tmp_path), "--out", str(tmp_path / "o"), "--report", str(tmp_path / "r.md")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert not (tmp_path / "r.md").exists()
