"""The attention explorer: a local web page (Gradio) over a generator and, when the checkpoint has one, its
discriminator.

Pick a seed (class, truncation; a second seed and a slider interpolate z between the two) and the page
shows the image `sample.py --seed S --num 1` would write for it. A click on the image picks a query pixel;
the attention panel then shows, for every non-local block of G (on the forward pass that made the image)
and of D (run on that image), where that pixel's query cell attends: the SAGAN figure of gan.attention_maps with one
query, each column headed by the block's name, resolution and gamma, weights shown as multiples of uniform
on one colour scale (gan.attention_maps). The same numbers come back as JSON.

`Explorer` holds the models and does the work, in plain numpy/torch, and owns a temporary folder for the
download buttons' files, removed by `close()` (explore.py calls it when the server stops) or at exit.
`build_app` only wires it to Gradio. The page's own handlers (`page_load`, `page_show`) never leave an
error badge: a failed load says what failed and keeps showing the loaded model; a failed image clears the
image and the attention panel and says why. The API functions (/load, /generate, /attend, for scripts)
turn a user mistake into one error message. Either way the terminal gets one `error:` line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import shutil
import socket
import sys
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # set before gradio loads: no telemetry

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from gan.attention import AttentionRecord, attention_blocks, gate_of, record_attention  # noqa: E402
from gan.attention_maps import attention_figure, entropy_fraction, save_attention_figure  # noqa: E402
from gan.config import Config, ConfigError  # noqa: E402
from gan.errors import UserError  # noqa: E402
from gan.grids import images_to_uint8  # noqa: E402
from gan.runtime import eval_mode  # noqa: E402
from gan.sampling import draw_latents, generate  # noqa: E402

if TYPE_CHECKING:
    from gan.models import Discriminator, Generator

DISPLAY_SIDE = 256  # the page shows images upscaled (nearest) to about this many pixels, to click on
PANEL_SIZE = 256  # attention-figure panels, so that a block's name, side and gamma fit above each


@dataclasses.dataclass
class Models:
    generator: Generator
    discriminator: Discriminator | None  # None for an export or a Hub repo: they hold G only
    config: Config
    source: str


def load_models(checkpoint: str | Path, *, use_ema: bool = True, device: str | torch.device = "cpu") -> Models:
    """G (EMA weights unless `use_ema=False`) and, from a training checkpoint or run directory, D."""
    from gan.checkpoint import DISCRIMINATOR_FILE, resolve
    from gan.hub import local_path
    from gan.models import load_discriminator, load_generator

    generator, config = load_generator(checkpoint, use_ema=use_ema, map_location=device)
    path = resolve(local_path(checkpoint))
    path = path.parent if path.is_file() else path
    discriminator = None
    if (path / "meta.json").is_file() or (path / DISCRIMINATOR_FILE).is_file():  # exports hold G, converted ones D too
        discriminator, _, _ = load_discriminator(path, map_location=device)
    return Models(generator, discriminator, config, str(checkpoint))


def _int_or_none(value: float | str | None, what: str) -> int | None:
    """A whole number from a Gradio field (float, or text); None when left empty."""
    if value is None or str(value).strip() == "":
        return None
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not number.is_integer():  # also NaN and infinities
        raise ConfigError(f"{what} must be a whole number or empty; got {value!r}")
    return int(number)


class Explorer:
    """What the page computes, callable without a browser. Images are (H, W, 3) uint8 arrays."""

    def __init__(self, models: Models, out_dir: str | Path | None = None) -> None:
        self.models = models
        self.out_dir = Path(out_dir or tempfile.mkdtemp(prefix="sagan-explorer-"))
        # A folder of our own making goes at close() or, at the latest, when the interpreter exits.
        self._remove = weakref.finalize(self, shutil.rmtree, self.out_dir, True) if out_dir is None else None
        self.lock = threading.Lock()  # Gradio runs handlers in threads; the models are shared

    def close(self) -> None:
        """Remove the temporary folder of the download files (if the explorer made it)."""
        if self._remove is not None:
            self._remove()

    def __enter__(self) -> Explorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the model -----------------------------------------------------------------------------------

    def load(self, checkpoint: str) -> str:
        """Switch to another checkpoint; on failure the current one stays."""
        if not str(checkpoint).strip():
            raise ConfigError("give a checkpoint: a run directory, a checkpoint or export directory, or a Hub id")
        device = next(self.models.generator.parameters()).device
        models = load_models(str(checkpoint).strip(), device=device)
        with self.lock:
            self.models = models
        return self.describe()

    def describe(self) -> str:
        """One Markdown paragraph: what is loaded, which blocks it has."""
        m = self.models
        cfg = m.config.model
        kind = f"class-conditional, classes 0..{cfg.num_classes - 1}" if cfg.num_classes else "unconditional"
        g_blocks = ", ".join(n for n, _ in attention_blocks(m.generator)) or "none"
        if m.discriminator is None:
            d_blocks = (
                "not in this checkpoint (an export or Hub repo holds G only; open a training checkpoint to see D)"
            )
        else:
            d_blocks = ", ".join(n for n, _ in attention_blocks(m.discriminator)) or "none"
        return f"**{m.source}**: {cfg.resolution}x{cfg.resolution}, {kind}. Non-local blocks of G: {g_blocks}. Of D: {d_blocks}."

    def latents(
        self, seed: float, label: float | None, truncation: float | None, seed_b: float | None = None, t: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """z (1, Z) and labels as `sample.py --seed S --num 1` draws them; t > 0 moves z towards seed_b's."""
        G = self.models.generator
        seed_a = _int_or_none(seed, "the seed")
        if seed_a is None:
            raise ConfigError("give a seed (a whole number)")
        truncation = None if truncation in (None, "", 0) else float(truncation)
        if truncation is not None and not truncation > 0:
            raise ConfigError(f"truncation must be a positive number (e.g. 0.5) or empty; got {truncation}")
        label = _int_or_none(label, "the class")
        if not 0.0 <= float(t) <= 1.0:
            raise ConfigError(f"the interpolation position must lie in [0, 1]; got {t}")
        z, labels = draw_latents(G, seed=seed_a, num=1, truncation=truncation, label=label)
        if float(t) > 0:
            other = _int_or_none(seed_b, "the second seed")
            if other is None:
                raise ConfigError("give a second seed to interpolate towards")
            z_b, _ = draw_latents(G, seed=other, num=1, truncation=truncation, label=label)
            z = torch.lerp(z, z_b, float(t))  # (1, Z); t = 1 gives z_b exactly
        return z, labels

    def image(self, *latent_args: Any) -> np.ndarray:
        """The uint8 image of `latents(*latent_args)`."""
        return images_to_uint8(self._generate(*self.latents(*latent_args)))[0]

    def _generate(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """(1, C, R, R) in [-1, 1] on the CPU, by the path sample.py takes (no attention recorded)."""
        G = self.models.generator
        with self.lock:
            return generate(G, z, labels, next(G.parameters()).device)

    def attention(self, row: int, col: int, *latent_args: Any) -> tuple[np.ndarray | None, dict[str, Any]]:
        """Where pixel (row, col) attends in every non-local block of G and D: (figure or None, numbers)."""
        z, labels = self.latents(*latent_args)
        images = self._generate(z, labels)  # (1, C, R, R)
        h, w = images.shape[-2:]
        if not (0 <= row < h and 0 <= col < w):
            raise ConfigError(f"the query point (row {row}, col {col}) lies outside the {h}x{w} image")
        m = self.models
        device = next(m.generator.parameters()).device
        y = None if labels is None else labels.to(device)
        named: list[tuple[str, torch.nn.Module, AttentionRecord]] = []
        with self.lock:
            for tag, net, inputs in (
                ("G", m.generator, (z.to(device), y)),
                ("D", m.discriminator, (images.to(device), y)),
            ):
                if net is None:
                    continue
                blocks = dict(attention_blocks(net))
                with eval_mode(net), record_attention(net) as records:
                    net(*inputs)
                named += [(tag, blocks[rec.name], rec) for rec in records]
        info: dict[str, Any] = {"query": {"row": row, "col": col}, "image_hw": [h, w], "blocks": []}
        shown = []
        for tag, block, rec in named:
            hq, wq = rec.query_hw
            cell = (row * hq // h, col * wq // w)  # the query cell holding the pixel, as gan.attention_maps maps it
            kind, value = gate_of(block)
            gamma = value if kind == "gamma" else None
            info["blocks"].append(
                {
                    "network": tag,
                    "block": rec.name,
                    "resolution": [hq, wq],
                    "key_grid": list(rec.key_hw),
                    "gamma": gamma,  # None under another gate (its kind and value below)
                    "gate": {"kind": kind, "value": value},
                    "query_cell": list(cell),
                    "weights": rec.weights[0, cell[0] * wq + cell[1]].tolist(),  # (Hk*Wk,) row-major keys
                    "uniform_weight": 1.0 / (rec.key_hw[0] * rec.key_hw[1]),
                    "entropy_of_uniform": entropy_fraction(rec.weights[0]),  # over every query of the image
                }
            )
            gate = f"gamma={value:+.3f}" if kind == "gamma" else f"{kind} gate {value:.3f}"
            label = f"{tag} {rec.name.removeprefix('blocks.')} {hq}x{wq} {gate}"
            shown.append(dataclasses.replace(rec, name=label))
        if not shown:
            return None, info
        figure = attention_figure(images, shown, points=np.array([[row, col]]), panel_size=PANEL_SIZE)
        return figure, info

    # -- files for the download buttons ---------------------------------------------------------------

    def save(self, array: np.ndarray, name: str) -> str:
        """Write a uint8 image as PNG under the explorer's folder; returns its path."""
        return str(save_attention_figure(array, self.out_dir / name))


def display_scale(side: int) -> int:
    """The nearest-neighbour factor images are shown at; a click at displayed pixel p is image pixel p // scale."""
    return max(1, DISPLAY_SIDE // side)


def displayed(u8: np.ndarray) -> np.ndarray:
    """An (R, R, 3) image as the page shows it: (R*s, R*s, 3), enlarged by `display_scale` (nearest)."""
    s = display_scale(u8.shape[0])
    return np.repeat(np.repeat(u8, s, axis=0), s, axis=1)


def summary(info: dict[str, Any]) -> str:
    """The attention numbers as a Markdown table (block, resolution, gamma, entropy, strongest key)."""
    if not info["blocks"]:
        return "This model has no non-local block: there is no attention to show."
    q = info["query"]
    lines = [
        f"Query pixel (row {q['row']}, col {q['col']}) of the {info['image_hw'][0]}x{info['image_hw'][1]} image. "
        "Weights as multiples of uniform (1 / keys); entropy: the block's mean over every query of the image, "
        "as a fraction of uniform's.",
        "",
        "| net | block | resolution | gamma | entropy of uniform | query cell | strongest key (row, col): weight |",
        "|---|---|---|---|---|---|---|",
    ]
    for b in info["blocks"]:
        weights = np.asarray(b["weights"])
        k = int(weights.argmax())
        kw = b["key_grid"][1]
        gamma = "" if b["gamma"] is None else f"{b['gamma']:+.4f}"
        lines.append(
            f"| {b['network']} | {b['block']} | {b['resolution'][0]}x{b['resolution'][1]} | {gamma} | "
            f"{b['entropy_of_uniform']:.2f} | {tuple(b['query_cell'])} | "
            f"{(k // kw, k % kw)}: {weights[k]:.4f} = {weights[k] / b['uniform_weight']:.2f}x uniform |"
        )
    return "\n".join(lines)


def _complain(exc: Exception) -> str:
    """The first line of a user mistake's message, also printed as one `error:` line in the terminal."""
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    print(f"error: {message}", file=sys.stderr, flush=True)
    return message


def _in_page(fn: Callable[..., Any]) -> Callable[..., Any]:
    """For the API functions: a user mistake becomes one error message (gr.Error) and one terminal line."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (UserError, ValueError) as exc:
            raise gr.Error(_complain(exc), print_exception=False) from None

    return wrapped


def page_load(explorer: Explorer, checkpoint: str) -> tuple[str, str, int, int]:
    """The Load button: (status, checkpoint box, query row, query col). A failed load raises nothing (no
    error badges): the status says what failed and that the loaded model stays, the box shows its path."""
    try:
        status = explorer.load(checkpoint)
    except (UserError, ValueError) as exc:
        message = _complain(exc)
        status = f"**Could not load {str(checkpoint).strip()!r}**: {message}\n\nStill loaded: {explorer.describe()}"
        return status, explorer.models.source, gr.update(), gr.update()  # the query point stays
    side = explorer.models.config.model.resolution
    return status, explorer.models.source, side // 2, side // 2  # the query point moves to the new image's centre


def page_show(explorer: Explorer, seed, label, truncation, seed_b, t, row, col) -> tuple[Any, ...]:
    """The image and where its query point attends: (image, image file, figure, table, numbers, figure file).
    A mistake (a bad class, seed or point) clears all of them, so nothing of the previous image stays, and
    the table says what was wrong."""
    try:
        u8 = explorer.image(seed, label, truncation, seed_b, t)
        figure, info = explorer.attention(int(row), int(col), seed, label, truncation, seed_b, t)
    except (UserError, ValueError) as exc:
        return None, None, None, f"**Nothing to show**: {_complain(exc)}", None, None
    figure_file = explorer.save(figure, "attention.png") if figure is not None else None
    return displayed(u8), explorer.save(u8, "image.png"), figure, summary(info), info, figure_file


# Headless system Chromium for driving the page (the browser test, the docs screenshot): no GPU, no sandbox
# (root in CI), nothing fetched in the background. Playwright adds a fresh temporary profile itself.
HEADLESS_CHROMIUM_ARGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)  # fmt: skip


@contextlib.contextmanager
def serve_in_background(explorer: Explorer, host: str = "127.0.0.1", port: int | None = None) -> Iterator[str]:
    """The page served from a background thread (a free port unless `port`); yields its URL, then stops it."""
    if port is None:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
    app = build_app(explorer)
    app.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True, share=False)
    try:
        yield f"http://{host}:{port}/"
    finally:
        app.close()


def build_app(explorer: Explorer) -> gr.Blocks:
    """The page: checkpoint, latent controls, the clickable image, the attention panel, downloads."""

    @_in_page
    def load(checkpoint: str) -> tuple[str, int, int]:
        status = explorer.load(checkpoint)
        side = explorer.models.config.model.resolution
        return status, side // 2, side // 2  # the query point moves to the centre of the new image size

    @_in_page
    def make_image(seed, label, truncation, seed_b, t):
        u8 = explorer.image(seed, label, truncation, seed_b, t)
        return displayed(u8), explorer.save(u8, "image.png")

    @_in_page
    def attend(seed, label, truncation, seed_b, t, row, col):
        figure, info = explorer.attention(int(row), int(col), seed, label, truncation, seed_b, t)
        path = explorer.save(figure, "attention.png") if figure is not None else None
        return figure, summary(info), info, path

    def pick(evt: gr.SelectData) -> tuple[int, int]:
        x, y = evt.index  # displayed pixels
        s = display_scale(explorer.models.config.model.resolution)
        return int(y) // s, int(x) // s

    side = explorer.models.config.model.resolution
    with gr.Blocks(title="SAGAN attention explorer") as app:
        gr.Markdown("# SAGAN attention explorer\nClick on the image to choose a query point.")
        with gr.Row():
            checkpoint = gr.Textbox(value=explorer.models.source, label="checkpoint (path or Hub id)", scale=4)
            load_button = gr.Button("Load", scale=1)
        status = gr.Markdown(explorer.describe(), elem_id="status")
        with gr.Row():
            seed = gr.Number(value=0, precision=0, label="seed")
            label = gr.Textbox(value="", label="class (empty: drawn from the seed)")
            truncation = gr.Number(value=0, minimum=0, label="truncation (0: none)")
            seed_b = gr.Number(value=1, precision=0, label="second seed")
            t = gr.Slider(0.0, 1.0, value=0.0, step=0.05, label="interpolation towards the second seed")
        with gr.Row():
            row = gr.Number(value=side // 2, precision=0, label="query row (pixel)")
            col = gr.Number(value=side // 2, precision=0, label="query col (pixel)")
            go = gr.Button("Generate", variant="primary")
        with gr.Row():
            with gr.Column(scale=1):
                gr.Markdown("**The image**: click a point")
                image = gr.Image(show_label=False, format="png", interactive=False, buttons=[], elem_id="image")
            with gr.Column(scale=2):
                gr.Markdown("**Where the point attends**, in every non-local block of G and D")
                figure = gr.Image(show_label=False, format="png", interactive=False, buttons=[], elem_id="attention")
        table = gr.Markdown(elem_id="attention-table")
        with gr.Row():
            image_file = gr.DownloadButton("Download image (PNG)")
            figure_file = gr.DownloadButton("Download figure (PNG)")
        numbers = gr.JSON(label="attention rows (JSON)")

        latent = [seed, label, truncation, seed_b, t]
        # The same functions for scripts and tests (gradio_client): /load, /generate, /attend (registered
        # first, so that they get those names).
        gr.Button(visible=False).click(load, checkpoint, [status, row, col], api_name="load")
        gr.Button(visible=False).click(make_image, latent, [image, image_file], api_name="generate")
        gr.Button(visible=False).click(
            attend, [*latent, row, col], [figure, table, numbers, figure_file], api_name="attend"
        )
        # The page itself: handlers that never raise (see page_load, page_show).
        show = {
            "fn": functools.partial(page_show, explorer),
            "inputs": [*latent, row, col],
            "outputs": [image, image_file, figure, table, numbers, figure_file],
            "api_visibility": "private",
        }
        for trigger in (go.click, t.release, app.load):
            trigger(**show)
        load_button.click(
            functools.partial(page_load, explorer), checkpoint, [status, checkpoint, row, col], api_visibility="private"
        ).then(**show)
        image.select(pick, None, [row, col], api_visibility="private").then(**show)
    return app
