"""The attention explorer (gan/explorer.py, explore.py), served on 127.0.0.1 and driven through Gradio's own
client, plus one end-to-end run in headless Chromium (Playwright, the system browser)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio loads: no telemetry from tests

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from PIL import Image  # noqa: E402

import explore as explore_cli  # noqa: E402
import sample as sample_cli  # noqa: E402
from gan.checkpoint import save_checkpoint  # noqa: E402
from gan.config import Config, ModelConfig  # noqa: E402
from gan.explorer import HEADLESS_CHROMIUM_ARGS, PANEL_SIZE, Explorer, display_scale, load_models, serve_in_background  # noqa: E402
from gan.models import Discriminator, Generator  # noqa: E402
from gan.pretrained import export_generator  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def tiny_models(num_classes: int) -> tuple[Generator, Discriminator, Config]:
    """G and D at width 8 with their attention switched on (gamma != 0) and BN statistics moved off 0/1."""
    cfg = Config(model=ModelConfig(g_width=8, d_width=8, z_dim=16, num_classes=num_classes))
    torch.manual_seed(1)
    G, D = Generator(cfg.model), Discriminator(cfg.model)
    with torch.no_grad():
        G.blocks.attn16.gamma.fill_(0.8)
        D.blocks.attn16.gamma.fill_(-0.6)
        for m in G.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return G.eval(), D.eval(), cfg


def served(checkpoint: str | Path):
    """The explorer for `checkpoint` on 127.0.0.1 at a free port (a context manager yielding its URL)."""
    return serve_in_background(Explorer(load_models(checkpoint)))


@pytest.fixture(scope="module")
def conditional(tmp_path_factory):
    """A 3-class training checkpoint (G and D) served by the explorer: (models, checkpoint path, client)."""
    G, D, cfg = tiny_models(num_classes=3)
    root = tmp_path_factory.mktemp("explorer") / "checkpoints"
    path = save_checkpoint(
        root, {"G": G.state_dict(), "D": D.state_dict(), "G_ema": None}, step=1, config=cfg, keep_last=1
    )
    with served(path) as url:
        yield G, D, path, Client(url, verbose=False)


@pytest.fixture(scope="module")
def unconditional(tmp_path_factory):
    """An unconditional generator export (G only) served by the explorer: (export path, client)."""
    G, _, cfg = tiny_models(num_classes=0)
    path = export_generator(tmp_path_factory.mktemp("explorer") / "export", G, cfg)
    with served(path) as url:
        yield path, Client(url, verbose=False)


def png(path: str | Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_generated_image_is_the_one_sample_py_writes(conditional, tmp_path):
    _, _, path, client = conditional
    shown, download = client.predict(3, "1", 0.8, 7, 0.0, api_name="/generate")
    out = tmp_path / "out"
    args = [
        "--checkpoint",
        str(path),
        "--num",
        "1",
        "--seed",
        "3",
        "--class",
        "1",
        "--truncation",
        "0.8",
        "--out",
        str(out),
    ]
    assert sample_cli.main(args) == 0
    assert Path(download).read_bytes() == (out / "000000.png").read_bytes()
    s = display_scale(32)
    assert np.array_equal(png(shown), np.repeat(np.repeat(png(download), s, axis=0), s, axis=1))  # nearest upscale

    # interpolation: t = 1 is the second seed's image, t = 0.5 neither endpoint
    _, end = client.predict(7, "1", 0.8, 3, 0.0, api_name="/generate")
    _, at_one = client.predict(3, "1", 0.8, 7, 1.0, api_name="/generate")
    _, half = client.predict(3, "1", 0.8, 7, 0.5, api_name="/generate")
    assert np.array_equal(png(at_one), png(end))
    assert not np.array_equal(png(half), png(end)) and not np.array_equal(png(half), png(download))


def block_attention(block: torch.nn.Module, net: torch.nn.Module, inputs: tuple) -> torch.Tensor:
    """The block's own `return_attention=True` weights (B, Hq*Wq, Hk*Wk) on the input it gets inside `net`."""
    seen = []
    handle = block.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    with torch.no_grad():
        net(*inputs)
        handle.remove()
        return block(seen[0], return_attention=True)[1]


def test_a_click_gives_the_query_row_of_every_g_and_d_block(conditional):
    G, D, _, client = conditional
    row, col = 21, 6  # image pixel; in the 16x16 blocks its query cell is (10, 3)
    figure, table, info, download = client.predict(5, "2", 0, 6, 0.0, row, col, api_name="/attend")

    # an independent forward pass: z as sample.py draws it without truncation, then each block's own weights
    z = torch.randn(1, 16, generator=torch.Generator().manual_seed(5))
    y = torch.tensor([2])
    with torch.no_grad():
        image = G(z, y)
    expected = {
        "G": block_attention(G.blocks.attn16, G, (z, y)),
        "D": block_attention(D.blocks.attn16, D, (image, y)),
    }
    assert [(b["network"], b["block"]) for b in info["blocks"]] == [("G", "blocks.attn16"), ("D", "blocks.attn16")]
    for b in info["blocks"]:
        hq, wq = b["resolution"]
        assert (hq, wq) == (16, 16) and b["key_grid"] == [8, 8] and b["query_cell"] == [10, 3]
        want = expected[b["network"]][0, 10 * 16 + 3]  # (64,) the query row
        torch.testing.assert_close(torch.tensor(b["weights"]), want, rtol=1e-5, atol=1e-7)
        assert b["gamma"] == pytest.approx({"G": 0.8, "D": -0.6}[b["network"]])
        assert b["uniform_weight"] == 1 / 64
        rows = expected[b["network"]][0].double()  # (256, 64): every query of the image, entropy in float64
        by_hand = (-(rows * rows.clamp_min(1e-300).log()).sum(-1)).mean().item() / np.log(64)
        assert b["entropy_of_uniform"] == pytest.approx(by_hand, abs=1e-5)
    g, d = info["blocks"]
    assert (
        f"| G | blocks.attn16 | 16x16 | +0.8000 | {g['entropy_of_uniform']:.2f} | (10, 3) |" in table
        and "| D | blocks.attn16 | 16x16 | -0.6000 |" in table
    )

    # the figure: three label rows (names, entropy, query) over the image and one panel per block, 256 px each,
    # then the colour bar; the download is the same picture
    assert png(figure).shape == (3 * 14 + 2 + PANEL_SIZE + 2 + 2 * 14, 2 + 3 * (PANEL_SIZE + 2), 3)
    assert np.array_equal(png(figure), png(download))
    other = client.predict(5, "2", 0, 6, 0.0, 2, 30, api_name="/attend")[2]
    assert other["blocks"][0]["query_cell"] == [1, 15] and other["blocks"][0]["weights"] != info["blocks"][0]["weights"]


def test_mistakes_are_one_message_in_the_page_and_one_line_in_the_terminal(unconditional, capfd):
    path, client = unconditional
    capfd.readouterr()
    with pytest.raises(AppError, match="unconditional"):
        client.predict(0, "2", 0, 1, 0.0, api_name="/generate")
    with pytest.raises(AppError, match="does not exist"):
        client.predict("/no/such/run", api_name="/load")
    with pytest.raises(AppError, match="outside the 32x32 image"):
        client.predict(0, "", 0, 1, 0.0, 40, 3, api_name="/attend")
    err = [line for line in capfd.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 3 and "unconditional" in err[0] and "/no/such/run does not exist" in err[1]
    # the failed load kept the model: the page still works, and without D for an export; a good load works
    status, row, col = client.predict(str(path), api_name="/load")
    assert "32x32, unconditional" in status and "not in this checkpoint" in status and (row, col) == (16, 16)
    assert client.predict(0, "", 0, 1, 0.0, 16, 16, api_name="/attend")[2]["blocks"][0]["network"] == "G"
    assert len(client.predict(0, "", 0, 1, 0.0, 16, 16, api_name="/attend")[2]["blocks"]) == 1


def test_explore_cli_fails_cleanly_and_binds_localhost_by_default(unconditional, tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as exc:
        explore_cli.main(["--checkpoint", str(tmp_path / "missing")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error:") and "does not exist" in err

    import gradio as gr

    launched = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: launched.update(kw))
    assert explore_cli.main(["--checkpoint", str(unconditional[0]), "--port", "7999"]) == 0
    assert launched["server_name"] == "127.0.0.1" and launched["server_port"] == 7999 and not launched["share"]


def test_explore_cli_prints_its_url_and_no_hint_it_offers_no_way_to_act_on(unconditional, capfd, monkeypatch):
    """The real Gradio launch (in a background thread, on a free port, closed at once): explore.py's own line
    with the URL, and not Gradio's "set `share=True` in `launch()`" hint."""
    import socket

    import gradio as gr

    real_launch = gr.Blocks.launch

    def launch_and_close(self, **kw):
        real_launch(self, **{**kw, "prevent_thread_lock": True})
        self.close()

    monkeypatch.setattr(gr.Blocks, "launch", launch_and_close)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert explore_cli.main(["--checkpoint", str(unconditional[0]), "--port", str(port)]) == 0
    out = capfd.readouterr().out
    assert f"on http://127.0.0.1:{port} (Ctrl+C stops it)" in out
    assert "share=True" not in out and "public link" not in out


@pytest.mark.skipif(CHROMIUM is None, reason="no system Chromium (apt-get install chromium; .ci/run installs it)")
def test_page_in_a_real_browser_loads_shows_an_image_and_a_click_moves_the_attention(conditional, tmp_path):
    from playwright.sync_api import sync_playwright

    _, _, path, _ = conditional
    with served(path) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=list(HEADLESS_CHROMIUM_ARGS)
        )  # a fresh temporary profile
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            hosts = set()
            page.on("request", lambda r: hosts.add(r.url.split("/")[2]))
            page.goto(url)
            image = page.locator("#image img")
            image.wait_for(state="visible", timeout=60_000)
            attention = page.locator("#attention img")
            attention.wait_for(state="visible", timeout=60_000)
            before = attention.get_attribute("src")
            box = image.bounding_box()
            assert box["width"] >= 200  # shown upscaled, to click on
            s = box["width"] / 32  # screen pixels per image pixel
            image.click(position={"x": (24 + 0.5) * s, "y": (8 + 0.5) * s})  # image pixel (row 8, col 24)
            page.wait_for_function(
                "before => document.querySelector('#attention img')?.src !== before", arg=before, timeout=60_000
            )
            assert page.locator("#attention-table").inner_text().startswith("Query pixel (row 8, col 24)")
            page.screenshot(path=str(tmp_path / "explorer.png"), full_page=True)
        finally:
            browser.close()
    assert hosts == {url.split("/")[2]}  # the page fetched nothing from anywhere else
