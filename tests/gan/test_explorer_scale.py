"""What a newcomer reads off the attention figures (gan/attention_maps.py) and the explorer (gan/explorer.py): weights as
multiples of uniform on one shared log colour scale, query columns labelled in their ring colours, each
block's entropy as a fraction of uniform; the explorer's error state and its temporary folder."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio loads: no telemetry from tests

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from gan import attention_maps  # noqa: E402
from gan.attention import AttentionRecord as Record  # noqa: E402
from gan.config import Config, ModelConfig  # noqa: E402
from gan.pretrained import export_generator  # noqa: E402

from shared import ROOT  # noqa: E402

H = attention_maps.HEADER_HEIGHT


def _grey_images(b: int, side: int, level: float = 100 / 127.5 - 1) -> torch.Tensor:
    """Flat grey images whose pixels are uint8 100 (luminance 100)."""
    return torch.full((b, 3, side, side), level)


def _panel(fig: np.ndarray, row: int, col: int, size: int) -> np.ndarray:
    top, left = 3 * H + 2 + row * (size + 2), 2 + col * (size + 2)
    return fig[top : top + size, left : left + size]


def _blend(grey: float, position: float) -> np.ndarray:
    """The overlay's colour by hand: half the grey level, half the inferno table at `position`."""
    inferno = {0.0: (0, 0, 4), 0.5: (188, 55, 84), 1.0: (252, 255, 164)}[position]  # rows of the table
    return np.rint(0.5 * grey + 0.5 * np.array(inferno, dtype=np.float64)).astype(np.uint8)


def test_uniform_attention_is_one_times_uniform_in_the_middle_of_the_scale():
    keys = 8 * 8
    row = torch.full((keys,), 1 / keys)
    multiples = attention_maps.attention_heatmap(row, (8, 8), (32, 32)) * keys
    np.testing.assert_allclose(multiples, 1.0, rtol=1e-6)
    for top in (2.0, 16.0, 256.0):
        np.testing.assert_allclose(attention_maps.scale_position(multiples, top), 0.5, atol=1e-6)
    # the ends of the scale and what lies beyond them, by hand: 0.5 +- 0.5 * log(m) / log(top)
    np.testing.assert_allclose(
        attention_maps.scale_position(np.array([0.0, 0.25, 0.5, 2.0, 4.0, 8.0]), 4.0), [0.0, 0.0, 0.25, 0.75, 1.0, 1.0]
    )
    assert attention_maps.scale_top(1.13) == 2.0 and attention_maps.scale_top(37.5) == 37.5
    assert attention_maps.colour_bar_labels(4.0) == ("<=0.25x", "1x = uniform", "4x")


def test_one_scale_for_the_whole_figure_so_a_uniform_block_reads_flat_beside_a_peaked_one():
    b, size = 1, 64
    hot = torch.zeros(b, 64, 16)
    hot[..., 6] = 1.0  # every query of the 8x8 block gives all its weight to key 6: 16x uniform
    uniform = torch.full((b, 256, 256), 1 / 256)
    records = [Record("g.attn8", hot, (8, 8), (4, 4)), Record("d.attn16", uniform, (16, 16), (16, 16))]
    fig = attention_maps.attention_figure(_grey_images(b, 16), records, queries=1, seed=0, panel_size=size)
    hot_panel, flat_panel = _panel(fig, 0, 1, size), _panel(fig, 0, 2, size)
    # top = 16 (the hot key): the hot key is the top colour, the other keys 0x (bottom), uniform exactly mid
    counts = {tuple(c): n for c, n in zip(*np.unique(hot_panel.reshape(-1, 3), axis=0, return_counts=True))}
    assert counts[tuple(_blend(100, 1.0))] == 16 * 16  # key 6 = cell (1, 2): a 16x16-pixel square
    assert counts[tuple(_blend(100, 0.0))] > 0.8 * (size * size - 16 * 16)  # the rest, but for the ring
    mid = tuple(_blend(100, 0.5))
    flat = flat_panel.reshape(-1, 3)
    assert (flat == mid).all(axis=1).mean() > 0.9  # everything but the query's ring: the middle colour


def test_a_nearly_uniform_block_reads_nearly_uniform():
    """D's case from the issue: strongest weight 0.0176 where uniform is 1/64 = 0.0156 (1.13x uniform)."""
    keys = 64
    row = torch.full((keys,), 1 / keys)
    row[:8] = 0.0176
    row[8:] = (1 - 8 * 0.0176) / (keys - 8)  # the rest share what is left: 0.99x uniform
    multiples = attention_maps.attention_heatmap(row, (8, 8), (8, 8)) * keys
    positions = attention_maps.scale_position(multiples, attention_maps.scale_top(float(multiples.max())))
    assert multiples.max() == pytest.approx(0.0176 * 64, rel=1e-5)
    # log(1.1264) / log(2) / 2 = 0.0858 above the middle at most: the colours stay next to uniform's
    assert positions.max() == pytest.approx(0.5 + 0.5 * math.log(0.0176 * 64) / math.log(2), abs=1e-6)
    rest = (1 - 8 * 0.0176) / (keys - 8) * keys  # 0.982x uniform
    assert positions.min() == pytest.approx(0.5 + 0.5 * math.log(rest) / math.log(2), abs=1e-6)
    assert 0.48 < positions.min() and positions.max() < 0.59  # both within a tenth of the scale's middle


def test_entropy_as_a_fraction_of_uniform_by_hand():
    # rows (1/2, 1/4, 1/4, 0): H = 1/2 ln 2 + 2 * 1/4 ln 4 = 1.5 ln 2; uniform: ln 4 = 2 ln 2 -> 0.75
    # rows (1, 0, 0, 0): H = 0; their mean: 0.375
    w = torch.tensor([[[0.5, 0.25, 0.25, 0.0], [1.0, 0.0, 0.0, 0.0]]])
    assert attention_maps.entropy_fraction(w) == pytest.approx(0.375, abs=1e-12)
    assert attention_maps.entropy_fraction(torch.full((2, 5, 7), 1 / 7)) == pytest.approx(1.0, abs=1e-6)


def test_headers_state_each_blocks_entropy_and_label_the_queries_in_their_ring_colours():
    b, size, queries = 2, 64, 3
    half = torch.zeros(b, 64, 16)
    half[..., :2] = 0.5  # every row: two keys at 1/2 -> entropy ln 2 / ln 16 = 0.25 of uniform
    uniform = torch.full((b, 256, 256), 1 / 256)
    records = [Record("g.attn8", half, (8, 8), (4, 4)), Record("d.attn16", uniform, (16, 16), (16, 16))]
    fig = attention_maps.attention_figure(_grey_images(b, 16), records, queries=queries, seed=0, panel_size=size)
    step = size + 2
    spans = [(2 + (1 + k * queries) * step, 2 + (1 + (k + 1) * queries) * step - 2) for k in range(2)]
    want = attention_maps.header_strip(
        [("entropy 0.25 of uniform", *spans[0]), ("entropy 1.00 of uniform", *spans[1])], fig.shape[1]
    )  # the texts computed by hand, drawn at the group spans
    np.testing.assert_array_equal(fig[H : 2 * H], want)
    query_row = fig[2 * H : 3 * H]
    for k in range(2):
        for j in range(queries):
            left = spans[k][0] + j * step
            column = query_row[:, left : left + size].reshape(-1, 3)
            assert (column == attention_maps.MARKER_COLORS[j]).all(axis=1).any(), (k, j)  # its ring's colour
            others = [c for i, c in enumerate(attention_maps.MARKER_COLORS[:queries]) if i != j]
            assert not any((column == c).all(axis=1).any() for c in others)
            assert (column < 100).all(axis=1).any()  # and its text


# ----------------------------------------------------------------------------------------------
# The explorer


@pytest.fixture
def explorer(tmp_path):
    """An explorer over a 3-class generator export (G only), its download folder in tmp_path."""
    from gan.explorer import Explorer, load_models
    from gan.models import Generator

    cfg = Config(model=ModelConfig(g_width=8, d_width=8, z_dim=16, num_classes=3))
    torch.manual_seed(1)
    path = export_generator(tmp_path / "export", Generator(cfg.model), cfg)
    with Explorer(load_models(path), out_dir=tmp_path / "files") as ex:
        yield ex


def test_a_failed_load_says_what_failed_and_keeps_the_loaded_model_and_its_path(explorer, capfd):
    from gan.explorer import page_load

    source = explorer.models.source
    status, box, row, col = page_load(explorer, "/no/such/run")
    assert status.startswith("**Could not load '/no/such/run'**: checkpoint /no/such/run does not exist")
    assert "Still loaded: **" + source + "**" in status and "Error" not in status
    assert box == source and explorer.models.source == source
    assert row == {"__type__": "update"} and col == {"__type__": "update"}  # the query point stays
    assert capfd.readouterr().err == "error: checkpoint /no/such/run does not exist\n"


@pytest.mark.slow
def test_a_bad_class_clears_the_previous_image_and_its_attention_panel(explorer, capfd):
    from gan.explorer import page_show

    shown = page_show(explorer, 0, "1", 0, 1, 0.0, 16, 16)
    assert shown[0].shape == (256, 256, 3) and shown[2] is not None and shown[4]["blocks"]
    block = shown[4]["blocks"][0]
    assert block["uniform_weight"] == 1 / 64 and 0 < block["entropy_of_uniform"] <= 1
    assert "x uniform |" in shown[3] and f"| {block['entropy_of_uniform']:.2f} |" in shown[3]
    capfd.readouterr()
    cleared = page_show(explorer, 0, "7", 0, 1, 0.0, 16, 16)  # classes are 0..2
    assert cleared[:3] == (None, None, None) and cleared[4:] == (None, None)
    assert cleared[3].startswith("**Nothing to show**: ") and "class" in cleared[3]
    assert capfd.readouterr().err.count("\n") == 1


def test_the_explorer_removes_its_temporary_folder(tmp_path, monkeypatch):
    import gradio as gr

    import explore as explore_cli
    from gan.explorer import Explorer

    monkeypatch.setattr(sys.modules["tempfile"], "tempdir", str(tmp_path))  # mkdtemp's folder: this test's
    seen = []
    real_init = Explorer.__init__

    def remember(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.save(np.zeros((4, 4, 3), dtype=np.uint8), "image.png")
        seen.append(self.out_dir)

    monkeypatch.setattr(Explorer, "__init__", remember)
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: None)  # the server starts and stops at once
    cfg = Config(model=ModelConfig(g_width=8, d_width=8, z_dim=16))
    from gan.models import Generator

    export = export_generator(tmp_path / "export", Generator(cfg.model), cfg)
    assert explore_cli.main(["--checkpoint", str(export)]) == 0
    assert len(seen) == 1 and seen[0].parent == tmp_path and seen[0].name.startswith("sagan-explorer-")
    assert not seen[0].exists() and not list(tmp_path.glob("sagan-explorer-*"))


@pytest.mark.slow
def test_explore_stopped_by_sigterm_leaves_no_folder(tmp_path):
    from gan.models import Generator

    cfg = Config(model=ModelConfig(g_width=8, d_width=8, z_dim=16))
    export = export_generator(tmp_path / "export", Generator(cfg.model), cfg)
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp), "GRADIO_ANALYTICS_ENABLED": "False"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "explore.py", "--checkpoint", str(export), "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().startswith("explorer for ")
        assert len(list(temp.glob("sagan-explorer-*"))) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert list(temp.glob("sagan-explorer-*")) == []
