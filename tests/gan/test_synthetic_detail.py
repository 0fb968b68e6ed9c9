"""The detail variant of the built-in data (docs/detail_tie.md): the mirrored bit pattern, its incoherent
counterpart and the detail-agreement score, checked against hand-made images and numpy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp

from gan.synthetic import (
    FOREGROUND_THRESHOLD,
    PATTERN_CELL,
    PATTERN_CONTRAST,
    CoherenceDataset,
    coherence_report,
    detail_agreement,
)

N = 200


class Replay(torch.nn.Module):
    """A 'generator' that returns the first rows of `images` whatever z is."""

    z_dim, num_classes = 4, 0

    def __init__(self, images: torch.Tensor) -> None:
        super().__init__()
        self.images = images
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # the device generate() runs on

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.images[: z.shape[0]]


def _items(variant: str, coherent: bool, n: int = N, channels: int = 3, seed: int = 4) -> torch.Tensor:
    ds = CoherenceDataset(n, 64, channels, seed=seed, variant=variant)
    draw = ds.__getitem__ if coherent else ds.incoherent
    return torch.stack([draw(i)[0] for i in range(n)]).double()


def _fg(img: torch.Tensor) -> torch.Tensor:
    return img.amax(0) > FOREGROUND_THRESHOLD  # (H, W)


def test_coherent_pattern_is_the_exact_mirror_and_has_two_levels_on_a_cell_grid():
    plain = _items("objects", True, 40)
    for img, flat in zip(_items("detail", True, 40), plain):
        fg = _fg(img)
        assert torch.equal(fg, _fg(flat)) and torch.equal(fg, fg.flip(-1))  # same objects as the plain item
        assert torch.equal(img[:, fg], img.flip(-1)[:, fg])  # every object pixel equals its mirror
        assert torch.equal(img[:, ~fg], flat[:, ~fg])  # the background untouched
        # object pixels: the plain colour (1-bits) or (1 - contrast) of it in [0, 1] units (0-bits), both present
        ratio = ((img[:, fg] + 1) / (flat[:, fg] + 1)).amax(0)  # (n_fg,)
        levels = {round(v, 5) for v in ratio.tolist()}
        assert levels == {1.0, round(1 - PATTERN_CONTRAST, 5)}
        # the left object's pattern is constant on PATTERN_CELL x PATTERN_CELL cells anchored at its box corner
        rows, cols = torch.nonzero(fg[:, :32], as_tuple=True)
        y0, x0 = rows.min().item(), cols.min().item()
        bit = torch.full((64, 64), -1.0, dtype=torch.float64)
        bit[fg] = ratio
        for (r, c), v in zip(zip(rows.tolist(), cols.tolist()), bit[rows, cols].tolist()):
            cell = bit[y0 + (r - y0) // PATTERN_CELL * PATTERN_CELL :, x0 + (c - x0) // PATTERN_CELL * PATTERN_CELL :]
            cell = cell[:PATTERN_CELL, :PATTERN_CELL]
            assert all(u in (v, -1.0) for u in cell.flatten().tolist())  # -1: outside the shape


def test_incoherent_differs_only_inside_the_right_objects_pattern():
    coherent, incoherent = _items("detail", True, 60), _items("detail", False, 60)
    plain = _items("objects", True, 60)
    changed = 0
    for c, i, flat in zip(coherent, incoherent, plain):
        fg = _fg(c)
        assert torch.equal(fg, _fg(i))  # shape, size, row and column identical
        diff = (c != i).any(0)
        assert not diff[:, :32].any()  # the left half (left object, background) pixel-identical
        assert not (diff & ~fg).any()  # nothing outside the objects changed
        # the right object still carries the left object's colour, only at other bits
        right = fg.clone()
        right[:, :32] = False
        ratio = ((i[:, right] + 1) / (flat[:, right] + 1)).amax(0)
        assert {round(v, 5) for v in ratio.tolist()} <= {1.0, round(1 - PATTERN_CONTRAST, 5)}
        changed += int(diff.any())
    assert changed == 60


@pytest.mark.parametrize("channels", [3, 1])
def test_each_side_alone_has_the_same_distribution_in_both_classes(channels):
    """The fraction of 1-bit pixels in the right object: coherent vs incoherent, two-sample KS test (the left
    side is pixel-identical by the previous test)."""
    plain = _items("objects", True, 300, channels, seed=9)

    def ones_fraction(images: torch.Tensor) -> list[float]:
        out = []
        for img, flat in zip(images, plain):
            fg = _fg(img)
            fg[:, :32] = False
            out.append(
                float((((img[:, fg] + 1) / (flat[:, fg] + 1)).amax(0) > 1 - PATTERN_CONTRAST / 2).double().mean())
            )
        return out

    coherent = ones_fraction(_items("detail", True, 300, channels, seed=9))
    incoherent = ones_fraction(_items("detail", False, 300, channels, seed=9))
    assert 0.45 < np.mean(coherent) < 0.55 and 0.45 < np.mean(incoherent) < 0.55  # fair bits
    assert ks_2samp(coherent, incoherent).pvalue > 0.01


def _pair(left: np.ndarray, right: np.ndarray, colour: float = 0.9) -> torch.Tensor:
    """One hand-made 3x32x32 image: an 8x8 square at columns 3-10 whose luminance factors are `left`, and at the
    mirrored columns one whose factors are `right` (given in the left object's orientation)."""
    img = np.full((3, 32, 32), 0.05)
    img[:, 12:20, 3:11] = colour * left
    img[:, 12:20, 21:29] = (colour * right)[:, ::-1]
    return torch.from_numpy(img * 2 - 1).float()[None]


def _pearson_reference(left: np.ndarray, right: np.ndarray, colour: float = 0.9) -> float:
    a, b = (colour * left * 2 - 1).flatten(), (colour * right * 2 - 1).flatten()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_detail_agreement_on_hand_made_images():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2, (4, 4))
    pattern = 1 - PATTERN_CONTRAST * (1 - np.kron(bits, np.ones((2, 2))))
    inverse = 1 - PATTERN_CONTRAST * np.kron(bits, np.ones((2, 2)))
    other = 1 - PATTERN_CONTRAST * (1 - np.kron(rng.integers(0, 2, (4, 4)), np.ones((2, 2))))
    flat = np.ones((8, 8))
    assert detail_agreement(_pair(pattern, pattern)).item() == pytest.approx(1.0, abs=1e-5)
    assert detail_agreement(_pair(pattern, inverse)).item() == pytest.approx(-1.0, abs=1e-5)
    assert detail_agreement(_pair(pattern, other)).item() == pytest.approx(_pearson_reference(pattern, other), abs=1e-5)
    assert detail_agreement(_pair(pattern, flat)).item() == 0.0  # a flat object carries no detail
    assert detail_agreement(_pair(flat, flat)).item() == 0.0
    blank = torch.full((1, 3, 32, 32), -1.0)
    assert detail_agreement(blank).item() == 0.0  # not valid: no objects


def test_detail_agreement_is_one_on_coherent_data_and_near_chance_on_incoherent():
    coherent, incoherent = _items("detail", True).float(), _items("detail", False).float()
    assert torch.equal(detail_agreement(coherent), torch.ones(N))
    scores = detail_agreement(incoherent)
    # chance is 0: flipping the right object's fair bits negates the correlation; 5 standard errors
    assert abs(scores.mean().item()) < 5 * scores.std().item() / N**0.5
    assert detail_agreement(_items("objects", True, 40).float()).abs().max().item() == 0.0  # flat objects


def test_coherence_report_adds_the_detail_agreement_for_the_detail_variant():
    from gan.config import ModelConfig

    cfg = ModelConfig(resolution=64, z_dim=4, num_classes=0)
    real = _items("detail", True, 64).float()
    line = coherence_report(Replay(real), cfg, seed=0, n=64, variant="detail")
    assert line.endswith("; detail agreement 1.000 (real data 1.000, chance 0.000; docs/detail_tie.md)")
    assert "detail agreement" not in coherence_report(Replay(real), cfg, seed=0, n=64)


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="variant must be one of objects, detail"):
        CoherenceDataset(4, 32, variant="texture")


def test_config_key_builds_the_variant_scores_it_and_keeps_its_own_reference_cache():
    from gan.config import ConfigError, load_config
    from gan.data import build_dataset
    from gan.metrics import evaluate, reference_cache_name

    cfg = load_config(None, ["data.builtin_variant=detail", "data.builtin_size=8", "model.resolution=64"])
    data = build_dataset(cfg.data, cfg.model)
    expected = CoherenceDataset(8, 64, 3, variant="detail")[3][0]
    assert torch.equal(data[3][0], expected)

    real = _items("detail", True, 64).float()
    scores = evaluate(Replay(real), cfg, ["coherence"], num_samples=64)
    assert scores["detail_agreement"] == 1.0 and scores["coherence"] == 1.0
    plain = load_config(None, ["data.builtin_size=8", "model.resolution=64"])
    assert "detail_agreement" not in evaluate(Replay(real), plain, ["coherence"], num_samples=8)
    assert reference_cache_name(cfg, "0" * 64) != reference_cache_name(plain, "0" * 64)
    with pytest.raises(ConfigError, match="builtin_variant"):
        load_config(None, ["data.builtin_variant=texture"])
