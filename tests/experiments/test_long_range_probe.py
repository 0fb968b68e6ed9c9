"""The long-range probe: incoherent counterparts, the probe classifier, the ERF function, the script end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp
from torch import nn

from experiments import long_range_data, long_range_model, long_range_probe, long_range_reports
from experiments.erf import effective_rf, theoretical_rf
from gan.synthetic import FOREGROUND_THRESHOLD, CoherenceDataset


def _foreground(img: torch.Tensor) -> torch.Tensor:
    return img.amax(0) > FOREGROUND_THRESHOLD  # (H, W)


@pytest.mark.parametrize("channels", [3, 1])
def test_incoherent_keeps_background_and_left_object(channels: int) -> None:
    data = CoherenceDataset(40, 64, channels=channels, seed=7)
    changed_anywhere = 0
    for i in range(len(data)):
        (coh, label), (inc, label_inc) = data[i], data.incoherent(i)
        assert label == label_inc
        fg = _foreground(coh) | _foreground(inc)
        differs = (coh != inc).any(0)
        # Every differing pixel is object in one of the two: the background is pixel-identical (no seam) ...
        assert not (differs & ~fg).any()
        # ... and only the right object moved: the left 60% of the columns (left object, centre) is untouched.
        assert torch.equal(coh[..., : int(0.6 * 64)], inc[..., : int(0.6 * 64)])
        changed_anywhere += int(differs.any())
    assert changed_anywhere == len(data)  # the redrawn object never coincides with the mirror image here


def _right_object(img: torch.Tensor) -> tuple[int, float]:
    """Top row and mean grey level of the right object, read from the pixels."""
    fg = _foreground(img)
    fg[:, : img.shape[-1] // 2] = False
    rows = fg.any(1).nonzero()
    return int(rows[0]), float(img[0][fg].mean())


def _left_object(img: torch.Tensor) -> tuple[int, float]:
    fg = _foreground(img)
    fg[:, img.shape[-1] // 2 :] = False
    rows = fg.any(1).nonzero()
    return int(rows[0]), float(img[0][fg].mean())


def test_incoherent_right_object_is_independent_and_halves_match_in_distribution() -> None:
    n = 1500
    data = CoherenceDataset(n, 32, channels=1, seed=3)
    coh = torch.stack([data[i][0] for i in range(n)])
    inc = torch.stack([data.incoherent(i)[0] for i in range(n)])

    # Independence: the right object's row and grey level are uncorrelated with the left one's.
    left = np.array([_left_object(x) for x in inc])
    right_inc = np.array([_right_object(x) for x in inc])
    right_coh = np.array([_right_object(x) for x in coh])
    for k in range(2):
        assert np.corrcoef(left[:, k], right_coh[:, k])[0, 1] > 0.999  # coherent: tied
        assert abs(np.corrcoef(left[:, k], right_inc[:, k])[0, 1]) < 0.1  # 3.9 standard errors at n = 1500

    # Each half alone: per-image mean and variance have the same distribution in both classes
    # (two-sample Kolmogorov-Smirnov, p > 0.001), and the left halves are identical.
    half = 16
    assert torch.equal(coh[..., :half], inc[..., :half])
    for stat in (lambda x: x.mean((1, 2, 3)), lambda x: x.var((1, 2, 3))):
        assert ks_2samp(stat(coh[..., half:]).numpy(), stat(inc[..., half:]).numpy()).pvalue > 1e-3

    # The same statistic does see a real difference: the whole-image correlation of mirrored halves.
    def mirror_corr(x: torch.Tensor) -> np.ndarray:
        a, b = x[..., :half].flatten(1), x[..., half:].flip(-1).flatten(1)
        a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
        return ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).numpy()

    assert ks_2samp(mirror_corr(coh), mirror_corr(inc)).pvalue < 1e-6


def _hand_count(depth: int, w: int, c: int, attention: bool) -> int:
    conv = lambda cin, cout, k: cin * cout * k * k + cout  # noqa: E731
    stem = conv(c, w, 3) + conv(w, w, 3) + conv(c, w, 1)
    block = 2 * conv(w, w, 3) + conv(w, w, 1)  # downsampling: learnable 1x1 shortcut
    attn = 2 * w * (w // 8) + w * (w // 2) + (w // 2) * w + 1  # theta, phi, g, out (no bias), gamma
    return stem + depth * block + (w + 1) + (attn if attention else 0)


@pytest.mark.parametrize("depth", [0, 2])
@pytest.mark.parametrize("attention", [None, {}])
def test_probe_shapes_and_parameter_count(depth: int, attention: dict | None) -> None:
    torch.manual_seed(0)
    model = long_range_model.Probe(depth, width=16, attention=attention)
    x = torch.randn(3, 3, 64, 64)
    side = 64 // 2 ** (depth + 1)
    assert model.trunk(x).shape == (3, 16, side, side)
    assert model(x).shape == (3,)
    assert sum(p.numel() for p in model.parameters()) == _hand_count(depth, 16, 3, attention is not None)
    assert (
        long_range_model.probe_rf(depth) == {0: 6, 2: 36}[depth]
    )  # conv3, conv3, pool2 (6); +10 at jump 2, +20 at jump 4


def test_erf_of_one_conv_is_its_kernel() -> None:
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    nn.init.ones_(conv.weight)
    erf = effective_rf(conv, torch.randn(4, 1, 9, 9))
    support = erf.grad_map > 0
    assert support.sum() == 9 and support[3:6, 3:6].all()  # exactly the 3x3 kernel around (4, 4)
    torch.testing.assert_close(erf.mass[:2], torch.tensor([1 / 9, 8 / 9], dtype=torch.float64))
    assert erf.r90 == 1.0 and erf.mass_beyond(1) == 0.0
    assert theoretical_rf([(3, 1)]) == (3, 1)
    nn.init.zeros_(conv.weight)  # a unit with no gradient anywhere has no ERF: one clear error
    with pytest.raises(ValueError, match="zero gradient"):
        effective_rf(conv, torch.randn(2, 1, 9, 9))


@pytest.mark.parametrize("depth", [0, 1])
def test_probe_gradient_support_is_the_theoretical_rf(depth: int) -> None:
    torch.manual_seed(0)
    model = long_range_model.Probe(depth, width=8)
    erf = effective_rf(model.trunk, torch.randn(8, 3, 64, 64))
    rows = (erf.grad_map > 0).any(1).nonzero()
    assert int(rows[-1] - rows[0] + 1) == long_range_model.probe_rf(depth)


def test_script_end_to_end(tmp_path, capsys) -> None:
    out, plot = tmp_path / "runs", tmp_path / "plot.png"
    common = ["--depths", "0", "--seeds", "0", "--resolution", "32", "--out", str(out), "--plot", str(plot)]
    tiny = [
        "--steps",
        "3",
        "--batch",
        "4",
        "--width",
        "8",
        "--train-pairs",
        "4",
        "--test-pairs",
        "6",
        "--log-every",
        "2",
    ]
    long_range_probe.main(["run", "--arms", "conv", "attn", *common, *tiny])
    result = json.loads((out / "r32-b4" / "attn" / "depth0" / "seed0.json").read_text())  # batch 4: its own cell
    assert result["params"] == _hand_count(0, 8, 3, True)
    assert result["theoretical_rf"] == 6 and result["settings"]["steps"] == 3
    assert [e["step"] for e in result["log"]] == [1, 2]
    assert {"gamma", "grad_theta", "grad_phi", "grad_g", "entropy_ratio", "logit_std"} <= set(result["log"][0])
    assert 0.0 <= result["test_acc"] <= 1.0 and (result["test_acc"] * 12) % 1 == 0  # 12 test images
    assert 0.0 < result["erf_r90"] <= 16
    capsys.readouterr()
    long_range_probe.main(["report", *common, "--batch", "4", "--width", "8"])  # the run's cell (r32-b4)
    assert plot.stat().st_size > 0
    printed = capsys.readouterr().out
    # one seed per arm: the verdict table names the comparison and refuses a verdict
    assert "| `attn` depth 0 | `conv` depth 0 |" in printed and "no verdict (one seed)" in printed
    assert f"| `attn` | 0 | 0 | {result['test_acc']:.3f} | gamma " in printed  # the per-run table
    # the ERF column is the mass beyond the object gap at this resolution (R / 4 = 8 px), from the stored profile
    beyond = sum(m for d, m in result["erf_profile"] if d > 8)
    assert "| ERF mass beyond 8 px |" in printed and f"| {beyond:.4f} |" in printed


def test_object_gap_scales_with_resolution_and_mass_beyond_reads_the_profile() -> None:
    # the facing edges' smallest distance, by hand from the dataset's ranges: R - 2 (x0_max + s_max)
    assert (long_range_reports.object_gap(64), long_range_reports.object_gap(128)) == (16, 32)  # about 14 and 26 px
    result = {"erf_profile": [[0.0, 0.5], [16.0, 0.3], [16.5, 0.15], [40.0, 0.05]]}
    assert long_range_reports.mass_beyond(result, 16) == pytest.approx(0.2)  # strictly farther than 16 px
    assert long_range_reports.mass_beyond({"erf_profile": None}, 16) is None


def test_inv_sqrt_d_is_the_default_at_width_8_and_scales_logits_with_wider_queries() -> None:
    """The probe's 1/sqrt(d) lever: d_qk = W/8 = 1 at W = 8, so the arm is the default arm exactly; with
    4 query channels its weights are softmax(q k^T / 2), checked against a float64 softmax."""
    x = torch.randn(2, 3, 64, 64)
    models = {}
    for arm in ("attn", "attn_inv_sqrt_d", "attn_qk4", "attn_qk4_inv_sqrt_d"):
        torch.manual_seed(0)
        models[arm] = long_range_model.Probe(1, width=8, attention=long_range_model.ARMS[arm]["attention"]).eval()
        models[arm].attention.gamma.data.fill_(0.5)  # open the gate so the block's output counts
    assert models["attn"].attention.qk_channels == 1
    assert torch.equal(models["attn"](x), models["attn_inv_sqrt_d"](x))
    block = models["attn_qk4_inv_sqrt_d"].attention
    assert block.qk_channels == 4
    with torch.no_grad():
        q, k, _, _ = block.project(models["attn_qk4_inv_sqrt_d"].stem(x))  # (B, 1024, 4), (B, 256, 4)
        expected = torch.softmax(q.double() @ k.double().transpose(1, 2) / 2.0, dim=-1)
        torch.testing.assert_close(block._weights(q, k).double(), expected, rtol=1e-5, atol=1e-7)
        assert not torch.equal(models["attn_qk4"](x), models["attn_qk4_inv_sqrt_d"](x))


def test_pairs_of_the_detail_variant_differ_only_in_the_right_objects_pattern() -> None:
    """`--variant detail`: the probe's incoherent images keep every object where it was (same foreground) and
    differ only right of the centre, inside the right object."""
    x, y = long_range_data.pairs(32, 3, 6, variant="detail")
    coherent, incoherent = x[:6], x[6:]
    assert y.tolist() == [1.0] * 6 + [0.0] * 6
    for coh, inc in zip(coherent, incoherent):
        assert torch.equal(_foreground(coh), _foreground(inc))
        differs = (coh != inc).any(0)
        assert differs.any() and not differs[:, :16].any() and not (differs & ~_foreground(coh)).any()
    assert torch.equal(coherent[0], CoherenceDataset(6, 32, seed=3, variant="detail")[0][0])
