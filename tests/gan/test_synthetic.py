"""The built-in coherence dataset and its score: determinism, design guarantees, score values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gan.synthetic import (
    AREA_RANGE,
    CENTRE_BAND,
    COLOUR_TOLERANCE,
    FOREGROUND_THRESHOLD,
    MAX_CENTRE_FOREGROUND,
    SHAPES,
    CoherenceDataset,
    coherence_components,
    coherence_per_image,
    coherence_score,
    make_independent_halves,
    shape_mask,
)

# Chance level (mean score on independent halves) measured on 262,144 pairings, 32x32 (docs/coherence.md),
# and the spread (std) of a 512-image estimate measured over 64 disjoint blocks.
CHANCE = {3: 0.0117, 1: 0.0724}
CHANCE_STD_512 = {3: 0.0022, 1: 0.0052}


def _batch(n: int, resolution: int = 32, channels: int = 3, seed: int = 0) -> torch.Tensor:
    ds = CoherenceDataset(n, resolution, channels, seed=seed)
    return torch.stack([ds[i][0] for i in range(n)])


def _canvas(h: int = 32, w: int = 32, level: float = -0.9) -> torch.Tensor:
    return torch.full((1, 3, h, w), level)


def _paint(img: torch.Tensor, rows: slice, cols: slice, rgb01: tuple[float, float, float]) -> None:
    img[0, :, rows, cols] = (torch.tensor(rgb01) * 2 - 1)[:, None, None]


# ----------------------------------------------------------------------------------------------
# Dataset


def test_item_is_a_pure_function_of_seed_and_index():
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    a, b = CoherenceDataset(100, 32, seed=3), CoherenceDataset(100, 32, seed=3)
    xa, ya = a[17]
    _ = a[5]  # reading other items in between changes nothing
    xb, yb = b[17]
    assert torch.equal(xa, xb) and ya == yb
    assert torch.equal(a[17][0], xa)
    assert torch.equal(a[-1][0], a[99][0])
    assert not torch.equal(CoherenceDataset(100, 32, seed=4)[17][0], xa)
    assert not torch.equal(a[18][0], xa)
    # the global RNGs are untouched
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert all(np.array_equal(u, v) for u, v in zip(np.random.get_state(), np_state))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_shape_dtype_range_and_labels(channels, resolution):
    ds = CoherenceDataset(8, resolution, channels, seed=1)
    assert len(ds) == 8 and CoherenceDataset.num_classes == len(SHAPES) == 4
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (channels, resolution, resolution) and x.dtype == torch.float32
        assert x.min() >= -1.0 and x.max() <= 1.0
        assert isinstance(y, int) and 0 <= y < 4


def test_labels_cover_all_shapes_evenly():
    labels = torch.tensor([CoherenceDataset(800, 32, seed=0)[i][1] for i in range(800)])
    counts = torch.bincount(labels, minlength=4)
    assert counts.min() > 150  # 200 expected each (binomial std 12)


@pytest.mark.parametrize("resolution", [32, 64])
def test_design_right_object_mirrors_left_object_far_apart(resolution):
    """The guarantees the score relies on, checked on pixels directly."""
    ds = CoherenceDataset(64, resolution, 3, seed=2)
    r = resolution
    for i in range(len(ds)):
        x, label = ds[i]
        fg = x.amax(0) > FOREGROUND_THRESHOLD  # (R, R)
        assert torch.equal(fg, fg.flip(-1))  # the object mask is mirror-symmetric
        left = fg[:, : r // 2]
        cols = left.any(0).nonzero().flatten()
        rows = left.any(1).nonzero().flatten()
        assert cols.min() >= 1 and cols.max() < 0.4 * r  # the left object hugs the left edge
        s = int(cols.max() - cols.min() + 1)
        assert round(0.22 * r) <= s <= round(0.30 * r)
        # the left object is exactly the labelled shape at its bounding box
        box = left[rows.min() : rows.min() + s, cols.min() : cols.min() + s]
        assert torch.equal(box, torch.from_numpy(shape_mask(label, s)))
        # one colour for both objects; background stays below the threshold
        colours = x[:, fg].T.unique(dim=0)
        assert colours.shape[0] == 1
        assert x[:, ~fg].max() < FOREGROUND_THRESHOLD - 0.2


def test_grayscale_and_rgb_share_geometry():
    rgb, grey = CoherenceDataset(16, 32, 3, seed=5), CoherenceDataset(16, 32, 1, seed=5)
    for i in range(16):
        assert rgb[i][1] == grey[i][1]
        assert torch.equal(rgb[i][0].amax(0) > FOREGROUND_THRESHOLD, grey[i][0][0] > FOREGROUND_THRESHOLD)


def test_dataset_rejects_bad_arguments():
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        CoherenceDataset(4, 32, channels=2)
    with pytest.raises(ValueError, match="resolution must be at least 16"):
        CoherenceDataset(4, 8)
    with pytest.raises(ValueError, match="size must be at least 1"):
        CoherenceDataset(0, 32)
    with pytest.raises(IndexError):
        CoherenceDataset(4, 32)[4]


def test_dataloader_collates():
    loader = torch.utils.data.DataLoader(CoherenceDataset(10, 32, 1), batch_size=4)
    x, y = next(iter(loader))
    assert x.shape == (4, 1, 32, 32) and y.dtype == torch.int64


# ----------------------------------------------------------------------------------------------
# Score on real data and at chance


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("resolution", [32, 64])
def test_real_images_score_exactly_one(channels, resolution):
    x = _batch(512 if resolution == 32 else 128, resolution, channels)
    parts = coherence_components(x)
    for name, values in parts.items():
        assert torch.equal(values, torch.ones_like(values)), name
    assert coherence_score(x) == 1.0


@pytest.mark.parametrize("channels", [1, 3])
def test_independent_halves_score_at_chance(channels):
    x = _batch(512, 32, channels, seed=7)
    mixed = make_independent_halves(x, torch.Generator().manual_seed(0))
    score = coherence_score(mixed)
    # 5 standard deviations of a 512-image estimate around the chance level measured on 262k pairings
    assert abs(score - CHANCE[channels]) <= 5 * CHANCE_STD_512[channels], score
    assert coherence_components(mixed)["valid"].mean() == 1.0  # every half still holds a real object


def test_make_independent_halves_pairs_each_image_with_another():
    x = _batch(16, 32, 3)
    out = make_independent_halves(x, torch.Generator().manual_seed(1))
    again = make_independent_halves(x, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    assert torch.equal(out[..., :16], x[..., :16])  # left halves kept
    donors = []
    for i in range(16):
        matches = [j for j in range(16) if torch.equal(out[i, ..., 16:], x[j, ..., 16:])]
        assert matches and i not in matches
        donors.append(matches[0])
    assert sorted(donors) == list(range(16))  # every right half used exactly once
    with pytest.raises(ValueError, match="at least 2 images"):
        make_independent_halves(x[:1])


# ----------------------------------------------------------------------------------------------
# Score on images built by hand


def test_blank_constant_and_noise_images_score_zero():
    gen = torch.Generator().manual_seed(0)
    cases = {
        "blank": torch.full((4, 3, 32, 32), -1.0),
        "grey": torch.zeros(4, 3, 32, 32),
        "white": torch.ones(4, 3, 32, 32),
        "uniform noise": torch.rand(4, 3, 32, 32, generator=gen) * 2 - 1,
        # sparse bright specks (10% of pixels) on black: a plausible-looking foreground area on both sides
        "sparse noise": torch.where(torch.rand(4, 1, 32, 32, generator=gen) < 0.1, 1.0, -1.0).expand(4, 3, 32, 32),
        "symmetric noise": (lambda n: torch.cat([n, n.flip(-1)], -1))(torch.rand(4, 3, 32, 16, generator=gen) * 2 - 1),
    }
    for name, images in cases.items():
        assert coherence_per_image(images).tolist() == [0.0] * 4, name


def test_two_identical_mirrored_shapes_score_one():
    img = _canvas()
    _paint(img, slice(10, 18), slice(2, 10), (1.0, 0.2, 0.1))  # columns 2..9
    _paint(img, slice(10, 18), slice(22, 30), (1.0, 0.2, 0.1))  # columns 22..29 = 31-9 .. 31-2
    assert coherence_per_image(img).tolist() == [1.0]


def test_different_colours_score_zero():
    img = _canvas()
    _paint(img, slice(10, 18), slice(2, 10), (1.0, 0.0, 0.0))
    _paint(img, slice(10, 18), slice(22, 30), (0.0, 0.0, 1.0))
    parts = coherence_components(img)
    assert parts["shape_iou"].item() == 1.0 and parts["colour_agreement"].item() == 0.0
    assert coherence_score(img) == 0.0


def test_slightly_different_colour_scores_by_rms_distance():
    img = _canvas()
    _paint(img, slice(10, 18), slice(2, 10), (1.0, 0.5, 0.0))
    _paint(img, slice(10, 18), slice(22, 30), (0.9, 0.5, 0.0))
    expected = 1 - math.sqrt(0.1**2 / 3) / COLOUR_TOLERANCE  # RMS over the 3 channels, [0, 1] units
    assert coherence_score(img) == pytest.approx(expected, abs=1e-5)


def test_vertical_offset_scores_by_iou():
    img = _canvas()
    _paint(img, slice(10, 16), slice(2, 8), (0.0, 1.0, 0.0))  # 6x6 square, rows 10..15
    _paint(img, slice(13, 19), slice(24, 30), (0.0, 1.0, 0.0))  # mirrored columns, rows 13..18
    # intersection 3 rows x 6 = 18, union 36 + 36 - 18 = 54
    assert coherence_score(img) == pytest.approx(18 / 54, abs=1e-6)


def test_one_sided_or_centred_objects_score_zero():
    one_sided = _canvas()
    _paint(one_sided, slice(10, 18), slice(2, 10), (1.0, 1.0, 0.0))
    centred = _canvas()  # one symmetric square across the midline: both halves "agree" but it is one object
    _paint(centred, slice(10, 18), slice(12, 20), (1.0, 1.0, 0.0))
    assert coherence_per_image(torch.cat([one_sided, centred])).tolist() == [0.0, 0.0]


def test_oversized_object_is_not_an_object():
    img = _canvas()  # each side 40% foreground: above AREA_RANGE[1] = 0.35
    _paint(img, slice(0, 20), slice(0, 13), (1.0, 1.0, 1.0))
    _paint(img, slice(0, 20), slice(19, 32), (1.0, 1.0, 1.0))
    assert 20 * 13 / (32 * 16) > AREA_RANGE[1]
    assert coherence_score(img) == 0.0


def _reference_score(img: np.ndarray) -> float:
    """The definition in docs/coherence.md, one image, plain loops over pixels."""
    c, h, w = img.shape
    half = w // 2
    fg = [[max(img[k, i, j] for k in range(c)) > FOREGROUND_THRESHOLD for j in range(w)] for i in range(h)]
    left = [(i, j) for i in range(h) for j in range(half) if fg[i][j]]
    right_mirrored = [(i, w - 1 - j) for i in range(h) for j in range(w - half, w) if fg[i][j]]
    total = sum(map(sum, fg))
    band = round(CENTRE_BAND * w)
    centre = sum(fg[i][j] for i in range(h) for j in range(band, w - band))
    lo, hi = AREA_RANGE[0] * h * half, AREA_RANGE[1] * h * half
    if not (lo <= len(left) <= hi and lo <= len(right_mirrored) <= hi and centre <= MAX_CENTRE_FOREGROUND * total):
        return 0.0
    iou = len(set(left) & set(right_mirrored)) / len(set(left) | set(right_mirrored))
    mean_l = [sum(img[k, i, j] for i, j in left) / len(left) for k in range(c)]
    mean_r = [sum(img[k, i, w - 1 - j] for i, j in right_mirrored) / len(right_mirrored) for k in range(c)]
    rms = math.sqrt(sum(((a - b) / 2) ** 2 for a, b in zip(mean_l, mean_r)) / c)
    return iou * min(1.0, max(0.0, 1 - rms / COLOUR_TOLERANCE))


def test_vectorised_score_matches_pixel_loop_reference():
    gen = torch.Generator().manual_seed(3)
    x = _batch(12, 32, 3, seed=9)
    mixed = make_independent_halves(x, gen)
    shifted = x.roll(1, dims=-2)
    shifted[..., 16:] = x[..., 16:].roll(2, dims=-2)  # the right object sits 1 row lower than the left one
    noisy = (x + 0.3 * torch.randn(x.shape, generator=gen)).clamp(-1, 1)
    images = torch.cat([mixed, shifted, noisy])
    expected = [_reference_score(im) for im in images.double().numpy()]
    assert expected.count(0.0) < len(expected) // 2  # the cases are not all trivially zero
    assert coherence_per_image(images).tolist() == pytest.approx(expected, abs=1e-5)


def test_score_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        coherence_score(torch.zeros(3, 32, 32))


def test_coherence_report_scores_what_the_generator_draws():
    """A 'generator' that returns real images scores 1.000; one that returns independent halves of real images
    scores near the documented chance level; the line names both reference values."""
    from gan.config import ModelConfig
    from gan.synthetic import CHANCE_LEVEL, chance_level, coherence_report, make_independent_halves

    real = torch.stack([CoherenceDataset(400, 32, seed=5)[i][0] for i in range(400)])
    mixed = make_independent_halves(real, torch.Generator().manual_seed(0))
    cfg = ModelConfig(z_dim=4, num_classes=0)

    class Replay(torch.nn.Module):
        """Returns `images` in order, whatever z is (the padding rows of the last pass run past the end)."""

        z_dim, num_classes = 4, 0

        def __init__(self, images):
            super().__init__()
            self.images, self.pos, self.calls = images, 0, []
            self.anchor = torch.nn.Parameter(torch.zeros(()))  # the device generate() runs on

        def forward(self, z, y):
            self.calls.append((z.shape[0], y))
            self.pos += z.shape[0]
            return self.images[self.pos - z.shape[0] : self.pos]

    g = Replay(real)
    line = coherence_report(g, cfg, seed=0, n=400)
    assert line == "coherence of 400 samples: 1.000 (real data 1.000, chance 0.012; docs/coherence.md)"
    assert [n for n, _ in g.calls] == [64] * 7 and all(y is None for _, y in g.calls)  # 400 = 6 * 64 + 16 padded
    score = float(coherence_report(Replay(mixed), cfg, seed=0, n=400).split(": ")[1].split()[0])
    assert (
        abs(score - CHANCE_LEVEL[(32, 3)]) < 5 * 0.0022 * (512 / 400) ** 0.5
    )  # docs/coherence.md: std of a 512 estimate
    assert chance_level(128, 3) is None
    assert "chance not measured at this size" in coherence_report(
        Replay(real), ModelConfig(resolution=128, z_dim=4), seed=0, n=4
    )
