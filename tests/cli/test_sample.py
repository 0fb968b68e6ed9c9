"""End-to-end sampling: the real sample.py on checkpoints that train.py wrote for 2 steps.

Expected images come from G called on latents drawn by hand from a CPU generator seeded like the CLI (z, then
labels; truncation by redrawing), run in this process;
those comparisons allow 1 uint8 level (this process may run another thread count than the CLI), while CLI
runs are compared with each other bit for bit. The baseline run and the unsafe-file cases run in a subprocess
(sample.py end to end, under OMP_NUM_THREADS=1); the other successful runs and the argument errors call
`sample.main` in-process on one thread (same code path, no interpreter start-up of ~4 CPU-s each), and their
bytes are compared with the subprocess's bit for bit.
"""

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sample as sample_cli
import train as train_cli
from gan.checkpoint import latest_checkpoint, load_checkpoint
from gan.config import load_config
from gan.grids import images_to_uint8, make_grid_array
from gan.models import Generator, load_generator
from gan.pretrained import export_generator

from shared import ROOT, TINY_RUN

TINY = [
    "--config",
    "configs/demo.yaml",
    *TINY_RUN,
    "train.steps=2",
    # big G steps and a fast EMA: after 2 steps, EMA vs raw weights and the classes visibly differ
    "optim.lr_g=0.02",
    "optim.ema_decay=0.5",
]
N, SEED = 6, 3  # the baseline run: 6 images (a 3x2 grid), seed 3


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two tiny runs, trained once for the module: unconditional and 4-class conditional."""
    root = tmp_path_factory.mktemp("runs")
    assert train_cli.main([*TINY, "--run-dir", str(root / "uncond")]) == 0
    assert train_cli.main([*TINY, "--run-dir", str(root / "cond"), "model.num_classes=4"]) == 0
    return {
        "uncond": root / "uncond",
        "cond": root / "cond",
        "step": latest_checkpoint(root / "uncond" / "checkpoints"),
    }


@pytest.fixture(scope="module")
def baseline(runs, tmp_path_factory) -> dict:
    """One CLI run from the unconditional step directory writing all three outputs."""
    out = tmp_path_factory.mktemp("baseline")
    res = ok(
        "--checkpoint",
        runs["step"],
        "--num",
        N,
        "--seed",
        SEED,
        "--grid",
        out / "g.png",
        "--out",
        out / "out",
        "--npz",
        out / "a.npz",
    )
    return {"dir": out, "stdout": res.stdout, "grid": (out / "g.png").read_bytes(), "arr": npz(out / "a.npz")}


def sample(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "sample.py", "--device", "cpu", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def ok(*args) -> subprocess.CompletedProcess:
    res = sample(*args)
    assert res.returncode == 0, res.stderr[-2000:]
    return res


def ok_here(capsys: pytest.CaptureFixture, *args) -> str:
    """`sample.main` in this process on one thread, as the subprocesses run; returns what it printed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        capsys.readouterr()
        assert sample_cli.main(["--device", "cpu", *map(str, args)]) == 0
    finally:
        torch.set_num_threads(threads)
    return capsys.readouterr().out


def assert_one_line_error(returncode: int, stderr: str, *words: str) -> None:
    assert returncode == 2, (returncode, stderr[-2000:])
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for word in words:
        assert word in lines[0], lines[0]


def fails_in_one_line(res: subprocess.CompletedProcess, *words: str) -> None:
    assert "Traceback" not in res.stderr
    assert_one_line_error(res.returncode, res.stderr, *words)


def main_fails_in_one_line(capsys, args: list, *words: str) -> None:
    """sample.main in-process: an unhandled exception would escape here instead of SystemExit(2)."""
    with pytest.raises(SystemExit) as exc:
        sample_cli.main(["--device", "cpu", *map(str, args)])
    assert_one_line_error(exc.value.code, capsys.readouterr().err, *words)


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def npz(path: Path) -> np.ndarray:
    with np.load(path) as f:
        assert list(f.keys()) == ["arr_0"]
        return f["arr_0"]


def expected(G: Generator, n: int, seed: int, truncation: float | None = None, label: int | None = None) -> np.ndarray:
    """The images sample.py should write: z ~ N(0, I) (entries beyond |truncation| redrawn), then the labels."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, G.z_dim, generator=gen)
    while truncation is not None and (z.abs() > truncation).any():
        outside = z.abs() > truncation
        z[outside] = torch.randn(int(outside.sum()), generator=gen)
    y = None
    if G.num_classes:
        y = torch.full((n,), label) if label is not None else torch.randint(G.num_classes, (n,), generator=gen)
    with torch.no_grad():
        images = G.eval()(z, y)
    return images_to_uint8(images)


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


def assert_close_u8(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def as_images(arr: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> floats NCHW in [-1, 1] that map back to exactly `arr`."""
    return torch.from_numpy(arr).permute(0, 3, 1, 2).double() / 127.5 - 1


@pytest.mark.slow
def test_grid_out_npz_match_the_generator_and_each_other(runs, baseline):
    arr, out = baseline["arr"], baseline["dir"]
    assert arr.shape == (N, 32, 32, 3) and arr.dtype == np.uint8
    assert arr.min() < 50 and arr.max() > 200  # the images span the range, not a constant
    G, _ = load_generator(runs["step"])  # EMA weights by default
    assert_close_u8(arr, expected(G, N, seed=SEED))
    assert mean_abs_diff(arr, expected(G, N, seed=SEED + 1)) > 5  # the seed matters
    assert sorted(p.name for p in (out / "out").iterdir()) == [f"{i:06d}.png" for i in range(N)]
    for i in range(N):
        assert np.array_equal(png(out / "out" / f"{i:06d}.png"), arr[i])
    grid = png(out / "g.png")
    assert grid.shape == (2 + 2 * 66, 2 + 3 * 66, 3)  # ceil(sqrt(6)) = 3 per row, 32 px shown at 64, 2 px padding
    assert np.array_equal(grid, make_grid_array(as_images(arr), scale=2))
    for where in ("g.png", "out", "a.npz"):
        assert str(out / where) in baseline["stdout"]


@pytest.mark.slow
def test_same_seed_same_bytes_across_runs(runs, baseline, capsys, tmp_path):
    ok_here(
        capsys,
        "--checkpoint",
        runs["step"],
        "--num",
        N,
        "--seed",
        SEED,
        "--grid",
        tmp_path / "g.png",
        "--npz",
        tmp_path / "a.npz",
    )
    assert (tmp_path / "g.png").read_bytes() == baseline["grid"]
    assert np.array_equal(npz(tmp_path / "a.npz"), baseline["arr"])


@pytest.mark.slow
def test_batch_size_changes_no_image_bit_for_bit(runs, baseline, capsys, tmp_path):
    """G always runs on CHUNK latents per pass (the last padded), so --batch-size 1, 3 and the default give the
    same bytes, and so does any number of images: image i is the same whether 6 or 70 are drawn."""
    for batch_size in (1, 3):
        ok_here(
            capsys,
            "--checkpoint",
            runs["step"],
            "--num",
            N,
            "--seed",
            SEED,
            "--batch-size",
            batch_size,
            "--npz",
            tmp_path / "a.npz",
        )
        assert np.array_equal(npz(tmp_path / "a.npz"), baseline["arr"])
    # (that image i is the same whatever N and its position: tests/test_sampling.py)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["run", "export"])
def test_run_dir_and_export_load_the_step_dirs_ema_generator(runs, baseline, capsys, tmp_path, which):
    path = runs["uncond"] if which == "run" else runs["uncond"] / "generator"
    ok_here(capsys, "--checkpoint", path, "--num", N, "--seed", SEED, "--npz", tmp_path / "a.npz")
    assert np.array_equal(npz(tmp_path / "a.npz"), baseline["arr"])


@pytest.mark.slow
def test_no_ema_samples_the_raw_generator(runs, baseline, capsys, tmp_path):
    ok_here(capsys, "--checkpoint", runs["step"], "--num", N, "--seed", SEED, "--no-ema", "--npz", tmp_path / "raw.npz")
    raw = npz(tmp_path / "raw.npz")
    state, cfg, _ = load_checkpoint(runs["step"])
    G = Generator(cfg.model)
    G.load_state_dict(state["G"])
    assert_close_u8(raw, expected(G, N, seed=SEED))
    assert mean_abs_diff(raw, baseline["arr"]) > 5


@pytest.mark.slow
def test_truncation_redraws_latents_and_narrows_the_spread(runs, baseline, capsys, tmp_path):
    out = tmp_path / "t.npz"
    ok_here(capsys, "--checkpoint", runs["step"], "--num", N, "--seed", SEED, "--truncation", 0.25, "--npz", out)
    truncated = npz(out)
    G, _ = load_generator(runs["step"])
    assert_close_u8(truncated, expected(G, N, seed=SEED, truncation=0.25))
    spread = lambda a: a.astype(float).std(axis=0).mean()  # per-pixel std over the samples  # noqa: E731
    assert spread(truncated) < 0.5 * spread(baseline["arr"])


@pytest.mark.slow
def test_interpolation_rows_run_between_seeded_endpoints(runs, capsys, tmp_path):
    ok_here(
        capsys,
        "--checkpoint",
        runs["step"],
        "--num",
        2,
        "--interpolate",
        5,
        "--seed",
        1,
        "--grid",
        tmp_path / "i.png",
        "--npz",
        tmp_path / "i.npz",
    )
    G, _ = load_generator(runs["step"])
    z = torch.randn(4, G.z_dim, generator=torch.Generator().manual_seed(1))  # 2 starts, then 2 ends
    t = torch.linspace(0, 1, 5)
    path = torch.stack([torch.stack([(1 - s) * z[r] + s * z[2 + r] for s in t]) for r in range(2)])  # (2, 5, Z)
    with torch.no_grad():
        images = G(path.reshape(10, G.z_dim))
    arr = npz(tmp_path / "i.npz")
    assert_close_u8(arr, images_to_uint8(images))
    grid = png(tmp_path / "i.png")
    assert grid.shape == (2 + 2 * 66, 2 + 5 * 66, 3)  # one row per pair, one column per step
    assert np.array_equal(grid, make_grid_array(as_images(arr), nrow=5, scale=2))


@pytest.mark.slow
def test_conditional_class_and_attention_maps(runs, capsys, tmp_path):
    out = ok_here(
        capsys,
        "--checkpoint",
        runs["cond"],
        "--num",
        5,
        "--class",
        2,
        "--npz",
        tmp_path / "c.npz",
        "--attention-maps",
        tmp_path / "attn.png",
    )
    G, _ = load_generator(runs["cond"])
    arr = npz(tmp_path / "c.npz")
    assert_close_u8(arr, expected(G, 5, seed=0, label=2))
    assert mean_abs_diff(arr, expected(G, 5, seed=0, label=0)) > 1  # the class matters
    figure = png(tmp_path / "attn.png")
    # a 14-px title and three 14-px header rows (names, entropy, queries) over 4 rows (images) of 4 panels
    # (image + 3 queries of G's one block), 128 + 2 px each, then a 28-px colour bar with its legend
    assert figure.shape == (14 + 3 * 14 + 2 + 4 * 130 + 28, 2 + 4 * 130, 3)
    assert figure.std() > 10
    assert str(tmp_path / "attn.png") in out


@pytest.mark.slow
@pytest.mark.parametrize(
    "run, args, words",
    [
        ("cond", ["--class", 4], ["--class", "[0, 3]"]),
        ("uncond", ["--class", 0], ["unconditional"]),
        ("uncond", ["--num", 0], ["--num"]),
        ("uncond", ["--truncation", -1], ["--truncation"]),
        ("uncond", ["--interpolate", 1], ["--interpolate"]),
        ("uncond", ["--grid", "x.jpg"], ["--grid", ".png"]),
    ],
)
def test_bad_arguments_fail_in_one_line(runs, capsys, run, args, words):
    main_fails_in_one_line(capsys, ["--checkpoint", runs[run], *args], *words)


def test_not_a_checkpoint_fails_in_one_line(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    main_fails_in_one_line(capsys, ["--checkpoint", tmp_path], "neither")
    main_fails_in_one_line(capsys, ["--checkpoint", tmp_path / "missing"], "does not exist")


@pytest.mark.slow
def test_corrupt_checkpoint_fails_in_one_line(runs, tmp_path):
    bad = tmp_path / "step_00000002"
    shutil.copytree(runs["step"], bad)
    blob = (bad / "state.safetensors").read_bytes()
    (bad / "state.safetensors").write_bytes(blob[: len(blob) // 2])
    fails_in_one_line(sample("--checkpoint", bad, "--grid", tmp_path / "g.png"), "state.safetensors")
    assert not (tmp_path / "g.png").exists()


class _CreatesFile:
    """Unpickling this calls open(path, 'w'): proof that the file was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.slow
def test_planted_pickle_is_never_unpickled(runs, tmp_path):
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_CreatesFile(probe))).close()
    assert probe.exists()  # the payload does what it claims

    marker = tmp_path / "pwned"
    planted = tmp_path / "step_00000002"
    shutil.copytree(runs["step"], planted)  # a real meta.json beside the planted files
    (planted / "state.safetensors").write_bytes(pickle.dumps(_CreatesFile(marker)))
    torch.save({"x": _CreatesFile(marker)}, planted / "model.pt")
    fails_in_one_line(sample("--checkpoint", planted), "state.safetensors")
    assert not marker.exists()


def test_attention_maps_of_a_generator_without_attention_fail_in_one_line(capsys, tmp_path):
    cfg = load_config("configs/demo.yaml", ["model.g_width=16", "model.g_attention=[]"])
    export_generator(tmp_path / "generator", Generator(cfg.model), cfg)
    main_fails_in_one_line(
        capsys, ["--checkpoint", tmp_path / "generator", "--attention-maps", tmp_path / "a.png"], "no non-local block"
    )
    assert not (tmp_path / "a.png").exists()


@pytest.mark.slow
def test_unwritable_output_fails_in_one_line(runs, capsys, tmp_path):
    (tmp_path / "a_file").write_text("")
    main_fails_in_one_line(
        capsys,
        ["--checkpoint", runs["step"], "--num", 2, "--out", tmp_path / "a_file" / "sub"],
        "cannot write",
        "a_file",
    )


@pytest.mark.slow
def test_attention_figure_title_names_the_checkpoint_step(runs, monkeypatch, tmp_path):
    """From a training checkpoint the figure's title names G and that checkpoint's step; from an export,
    which records no step, it names G alone."""
    from gan import attention_maps

    titles = []
    real_title = attention_maps.attention_title
    monkeypatch.setattr(
        attention_maps, "attention_title", lambda net, step: titles.append((net, step)) or real_title(net, step)
    )
    step = int(latest_checkpoint(runs["uncond"] / "checkpoints").name.removeprefix("step_"))
    for source, out in ((runs["uncond"], "a.png"), (runs["uncond"] / "generator", "b.png")):  # in-process: patched
        assert (
            sample_cli.main(["--checkpoint", str(source), "--num", "4", "--attention-maps", str(tmp_path / out)]) == 0
        )
    assert titles == [("G", step), ("G", None)]
    assert real_title("G", step) == f"G (generator) on generated images, step {step}"
