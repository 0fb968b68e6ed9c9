"""gan/attention_maps.py: attention-map geometry and figures."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from gan import attention_maps
from gan.attention import record_attention
from gan.config import ModelConfig
from gan.grids import images_to_uint8
from gan.models import Discriminator, Generator


@dataclass
class Record:  # the fields of gan.attention.AttentionRecord, built by hand
    name: str
    weights: torch.Tensor
    query_hw: tuple[int, int]
    key_hw: tuple[int, int]


# ------------------------------------------------------------------------------------ attention maps


def test_query_points_spread_and_seeded():
    pts = attention_maps.query_points(32, 32, 3)
    np.testing.assert_array_equal(pts, [[5, 16], [16, 3], [26, 23]])  # rows (i+.5)/3*32, cols golden ratio
    for h, w, k in [(2, 2, 4), (3, 3, 9), (1, 5, 5), (4, 3, 7)]:  # always k distinct cells inside the grid
        pts = attention_maps.query_points(h, w, k)
        assert len({tuple(p) for p in pts}) == k
        assert (pts >= 0).all() and (pts[:, 0] < h).all() and (pts[:, 1] < w).all()
    a = attention_maps.query_points(8, 8, 5, torch.Generator().manual_seed(3))
    b = attention_maps.query_points(8, 8, 5, torch.Generator().manual_seed(3))
    np.testing.assert_array_equal(a, b)
    assert len({tuple(p) for p in a}) == 5 and (a >= 0).all() and (a < 8).all()
    # Latin hypercube: one point per row band and per column band (bands of 8 // 5 or so cells)
    bands = [i * 8 // 5 for i in range(6)]
    assert sorted(np.searchsorted(bands, a[:, 0], side="right") - 1) == [0, 1, 2, 3, 4]
    assert sorted(np.searchsorted(bands, a[:, 1], side="right") - 1) == [0, 1, 2, 3, 4]
    many = attention_maps.query_points(3, 3, 7, torch.Generator().manual_seed(0))  # k > side: distinct random cells
    assert len({tuple(p) for p in many}) == 7
    with pytest.raises(ValueError, match="query points"):
        attention_maps.query_points(2, 2, 5)


def _one_hot(key_hw: tuple[int, int], cell: tuple[int, int]) -> torch.Tensor:
    row = torch.zeros(key_hw)
    row[cell] = 1.0
    return row.flatten()


@pytest.mark.parametrize("query_hw", [(16, 16), None])
def test_heatmap_one_hot_key_covers_its_pixels(query_hw):
    heat = attention_maps.attention_heatmap(_one_hot((8, 8), (2, 5)), (8, 8), (32, 32), query_hw)
    want = np.zeros((32, 32), dtype=np.float32)
    want[8:12, 20:24] = 1.0  # key row 2 <- query rows 4,5 <- pixels 8..11; key col 5 -> pixels 20..23
    np.testing.assert_array_equal(heat, want)


def test_heatmap_odd_grid_floor_pooling():
    # 7x7 queries on 28x28 pixels (4 px each); floor 2x2 pooling -> 3x3 keys over query cells 0..5
    for i in range(3):
        for j in range(3):
            heat = attention_maps.attention_heatmap(_one_hot((3, 3), (i, j)), (3, 3), (28, 28), (7, 7))
            want = np.zeros((28, 28), dtype=np.float32)
            want[8 * i : 8 * i + 8, 8 * j : 8 * j + 8] = 1.0
            np.testing.assert_array_equal(heat, want)
    w = torch.rand(9, generator=torch.Generator().manual_seed(1))
    heat = attention_maps.attention_heatmap(w, (3, 3), (28, 28), (7, 7))
    assert (heat[24:] == 0).all() and (heat[:, 24:] == 0).all()  # query row/col 6 has no key
    for p in range(24):
        for q in range(24):
            assert heat[p, q] == w[(p // 8) * 3 + q // 8]


def test_heatmap_odd_grid_ceil_pooling_as_in_gan_attention():
    # ceil-mode pooling (gan.attention): 7 -> 4 keys, the last covering query cell 6 = pixels 24..27
    w = torch.rand(16, generator=torch.Generator().manual_seed(2))
    heat = attention_maps.attention_heatmap(w, (4, 4), (28, 28), (7, 7))
    for p in range(28):
        for q in range(28):
            assert heat[p, q] == w[(p // 8) * 4 + q // 8]
    block = torch.nn.MaxPool2d(2, ceil_mode=True)(torch.zeros(1, 1, 7, 7))
    assert tuple(block.shape[-2:]) == (4, 4)


def test_heatmap_rejects_mismatched_grids():
    with pytest.raises(ValueError, match="Hk\\*Wk"):
        attention_maps.attention_heatmap(torch.zeros(10), (3, 3), (8, 8))
    with pytest.raises(ValueError, match="pooled"):
        attention_maps.attention_heatmap(torch.zeros(25), (5, 5), (16, 16), (16, 16))


def test_colormap_endpoints_and_monotone_red():
    c = attention_maps.colormap(np.array([0.0, 1.0, -1.0, 2.0]))
    np.testing.assert_array_equal(c, [[0, 0, 4], [252, 255, 164], [0, 0, 4], [252, 255, 164]])
    red = attention_maps.colormap(np.linspace(0, 1, 101))[:, 0]
    assert (np.diff(red) > 0).all()


def test_overlay_hot_spot_values_and_marker():
    image = np.full((32, 32, 3), 100, dtype=np.uint8)  # grey: luminance 100
    heat = attention_maps.attention_heatmap(_one_hot((8, 8), (2, 5)), (8, 8), (32, 32))  # colour positions 1 and 0
    out = attention_maps.overlay(image, heat, alpha=0.5, point=(26.0, 5.0))
    # hot: 0.5*100 + 0.5*(252, 255, 164); cold: 0.5*100 + 0.5*(0, 0, 4)
    np.testing.assert_array_equal(out[8:12, 20:24], np.broadcast_to([176, 178, 132], (4, 4, 3)))
    np.testing.assert_array_equal(out[0, 0], [50, 50, 52])
    red_max = np.argwhere(out[..., 0] == out[..., 0].max())
    assert red_max[:, 0].min() == 8 and red_max[:, 0].max() == 11
    assert red_max[:, 1].min() == 20 and red_max[:, 1].max() == 23 and len(red_max) == 16
    ring = out[20:33, 0:11].reshape(-1, 3)
    assert (ring == attention_maps.MARKER_COLORS[0]).all(axis=1).any()  # cyan ring around the query point
    with pytest.raises(ValueError, match="heatmap"):
        attention_maps.overlay(image, heat[:16])
    coloured = np.zeros((1, 1, 3), dtype=np.uint8)
    coloured[0, 0] = (200, 100, 0)  # luminance 0.299*200 + 0.587*100 = 118.5; blended with colormap(0)
    np.testing.assert_array_equal(attention_maps.overlay(coloured, np.zeros((1, 1)))[0, 0], [59, 59, 61])


# --------------------------------------------------------------------------------------------- figures


def _hand_records(b: int) -> list[Record]:
    hot = _one_hot((4, 4), (1, 2)).expand(b, 64, 16).clone()  # every query of "g.attn8" attends to key (1, 2)
    uniform = torch.full((b, 256, 256), 1 / 256)  # "d.attn16": no subsampling, uniform
    return [Record("g.attn8", hot, (8, 8), (4, 4)), Record("d.attn16", uniform, (16, 16), (16, 16))]


def test_attention_figure_size_panels_and_determinism(tmp_path):
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    records = _hand_records(2)
    fig = attention_maps.attention_figure(images, records, queries=3, seed=0, panel_size=64)  # scale 4 -> 64 px panels
    panels = 1 + len(records) * 3
    assert fig.dtype == np.uint8
    h = attention_maps.HEADER_HEIGHT  # three header rows (names, entropy, queries), the panels, a two-row colour bar
    assert fig.shape == (3 * h + 2 + 2 * (64 + 2) + 2 * h, 2 + panels * (64 + 2), 3)
    for r in range(3):
        assert (fig[r * h : (r + 1) * h] < 128).any()  # labels are drawn

    def panel(row: int, col: int) -> np.ndarray:
        top, left = 3 * h + 2 + row * 66, 2 + col * 66
        return fig[top : top + 64, left : left + 64]

    for row in range(2):
        for col in range(1, 4):  # "g.attn8": hottest red exactly on key (1, 2) = pixels 4..7 x 8..11, x4
            red = panel(row, col)[..., 0].astype(int)
            hot = np.argwhere(red == red.max())
            assert hot[:, 0].min() >= 16 and hot[:, 0].max() <= 31
            assert hot[:, 1].min() >= 32 and hot[:, 1].max() <= 47
    big = np.repeat(np.repeat(images_to_uint8(images)[1], 4, axis=0), 4, axis=1)
    assert (panel(1, 0) == big).all(axis=-1).mean() > 0.8  # the image panel, apart from the markers

    again = attention_maps.attention_figure(images, records, queries=3, seed=0, panel_size=64)
    assert fig.tobytes() == again.tobytes()
    a = attention_maps.save_attention_figure(fig, tmp_path / "a.png").read_bytes()
    b = attention_maps.save_attention_figure(again, tmp_path / "b.png").read_bytes()
    assert a == b
    with Image.open(tmp_path / "a.png") as im:
        np.testing.assert_array_equal(np.asarray(im), fig)
    other = attention_maps.attention_figure(images, records, queries=3, seed=1, panel_size=64)
    assert other.shape == fig.shape and other.tobytes() != fig.tobytes()


def test_attention_figure_rejects_mismatched_records():
    images = torch.zeros(3, 3, 16, 16)
    with pytest.raises(ValueError, match="weights"):
        attention_maps.attention_figure(images, _hand_records(2))
    with pytest.raises(ValueError, match="no attention records"):
        attention_maps.attention_figure(images, [])


def _tiny_model_config() -> ModelConfig:
    return ModelConfig(
        resolution=32, num_classes=3, z_dim=8, g_width=8, d_width=8, g_attention=[8, 16], d_attention=[16]
    )


def test_generator_attention_figure_matches_manual_recording_and_restores_mode():
    torch.manual_seed(0)
    g = Generator(_tiny_model_config())
    g.train()
    z = torch.randn(2, 8, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 2])
    bn_before = {k: v.clone() for k, v in g.state_dict().items()}

    fig = attention_maps.generator_attention_figure(g, z, y, queries=2, seed=0)

    assert all(m.training for m in g.modules())  # train mode restored
    for k, v in g.state_dict().items():  # eval forward: no BN statistics or spectral-norm vector moved
        assert torch.equal(v, bn_before[k]), k
    g.eval()
    with torch.no_grad(), record_attention(g) as records:
        images = g(z, y)
    assert [r.name for r in records] == ["blocks.attn8", "blocks.attn16"]
    want = attention_maps.attention_figure(
        images, records, queries=2, seed=0, title="G (generator) on generated images"
    )
    assert fig.tobytes() == want.tobytes()
    assert fig.shape[1] == 2 + (1 + 2 * 2) * (128 + 2)  # 32 px images upscaled 4x


def test_discriminator_attention_figure_matches_manual_recording():
    torch.manual_seed(0)
    d = Discriminator(_tiny_model_config())
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    y = torch.tensor([1, 0])
    fig = attention_maps.discriminator_attention_figure(d, images, y, queries=1, seed=None)
    assert d.training
    with torch.no_grad(), record_attention(d.eval()) as records:
        d(images, y)
    assert [(r.name, r.query_hw, r.key_hw) for r in records] == [("blocks.attn16", (16, 16), (8, 8))]
    want = attention_maps.attention_figure(
        images, records, queries=1, seed=None, title="D (discriminator) on real images, step 7"
    )
    assert (
        attention_maps.discriminator_attention_figure(d, images, y, queries=1, seed=None, step=7).tobytes()
        == want.tobytes()
    )
    assert (
        fig.tobytes()
        == attention_maps.attention_figure(
            images, records, queries=1, seed=None, title=attention_maps.attention_title("D", None)
        ).tobytes()
    )


def test_attention_figure_title_names_the_network_and_step_and_has_a_colour_bar():
    assert attention_maps.attention_title("G", 400) == "G (generator) on generated images, step 400"
    assert attention_maps.attention_title("D", None) == "D (discriminator) on real images"
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    records = _hand_records(2)
    plain = attention_maps.attention_figure(images, records, queries=3, seed=0, panel_size=64)
    titled = attention_maps.attention_figure(
        images, records, queries=3, seed=0, panel_size=64, title="G (generator) on generated images, step 400"
    )
    h = attention_maps.HEADER_HEIGHT
    assert titled.shape == (plain.shape[0] + h, plain.shape[1], 3)
    np.testing.assert_array_equal(titled[h:], plain)  # the title strip goes above; the colour bar is in both
    title = titled[:h]
    assert (title[:, :20] < 128).any() and (title[:, -100:] == 255).all()  # text, left-aligned
    other = attention_maps.attention_figure(
        images, records, queries=3, seed=0, panel_size=64, title="G (generator) on generated images, step 401"
    )
    assert other[:h].tobytes() != title.tobytes() and np.array_equal(other[h:], titled[h:])  # the step is drawn
    bar = titled[-2 * h :]
    row = bar[h // 2, :, :].astype(int)  # the gradient row: colormap from 0 (left) to 1 (right)
    ramp = np.where((row != 255).any(axis=1) & (np.abs(np.diff(np.vstack([row, row[-1:]]), axis=0)).sum(axis=1) < 40))[
        0
    ]
    low = attention_maps.colour_bar_labels(attention_maps.scale_top(16.0))[
        0
    ]  # the hot block's one key of 16 takes all: 16x uniform
    assert low == "<=0.0625x"
    start = 2 + 6 * len(low) + 4  # FIGURE_PADDING + the left label (6 px per character) + a gap
    np.testing.assert_array_equal(row[start], np.rint(attention_maps.colormap(np.array(0.0))).astype(int))
    width = max(16, min(256, titled.shape[1] // 3))
    np.testing.assert_array_equal(row[start + width - 1], np.rint(attention_maps.colormap(np.array(1.0))).astype(int))
    assert len(ramp) >= width // 2
    assert (bar[h:] < 128).any()  # the legend text under the bar
