"""Fixtures shared by the test modules: tiny configurations, small datasets on disk, and the one tiny ablation
run the lab's end-to-end tests share."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from shared import ROOT, TINY_MODEL, TINY_RUN, celeba_images, pin_md5, write_cifar, write_folder, write_idx_gz


def pytest_configure(config: pytest.Config) -> None:
    """torch runs on one intra-op thread in the test processes (every pytest-xdist worker of `make test`) and in
    every process a test starts (train.py, the lab's runners, the benchmarks), unless OMP_NUM_THREADS says
    otherwise: the tiny configurations gain little from a second thread, and on busy cores (the other worker,
    anything else) a second thread spins at every barrier; the tiny throughput benchmark of test_gpu_evidence
    took 12.3 CPU-s with two threads and 5.3 with one on the loaded 2-core machine. (torch read the environment
    when conftest imported it, before this runs: this process is set by hand.)"""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture
def tiny_cfg():
    """The default config with the tiny model (tests/shared.py's TINY_MODEL)."""
    from gan.config import load_config

    return load_config(None, TINY_MODEL)


@pytest.fixture
def tiny_run() -> list[str]:
    """Overrides for a quiet, short run on a few built-in images (tests/shared.py's TINY_RUN)."""
    return list(TINY_RUN)


@pytest.fixture
def dataset_on_disk(monkeypatch: pytest.MonkeyPatch) -> Callable[[str, Path], list[str]]:
    """`make(name, root)` writes a small copy of dataset `name` in its real on-disk format under `root` and
    returns the config overrides that train on it (builtin needs no files)."""

    def make(name: str, root: Path) -> list[str]:
        import gan.data as data_mod

        root.mkdir(parents=True, exist_ok=True)
        if name == "cifar10":
            write_cifar(root, n_per_batch=4)
            pin_md5(monkeypatch, root / "cifar-10-batches-py")
            extra = ["model.num_classes=10"]
        elif name == "fashion_mnist":
            monkeypatch.setattr(data_mod, "DEBIAN_FASHION_MNIST", root / "not-installed")
            write_idx_gz(root / "FashionMNIST" / "raw", n_train=12)
            extra = ["model.image_channels=1", "model.num_classes=10"]
        elif name == "folder":
            write_folder(root)
            extra = []
        elif name == "celeba":
            celeba_images(root / "img_align_celeba")
            extra = ["model.resolution=64", "model.g_attention=[32]", "model.d_attention=[32]"]
        elif name == "builtin":
            extra = []
        else:
            raise ValueError(f"no on-disk writer for dataset {name!r}; add one to tests/shared.py and here")
        return [f"data.dataset={name}", f"data.root={root}", *extra]

    return make


# The one tiny run of the lab's end-to-end tests: the ablation's CLI on the coherence config, arms none, gd16
# (SAGAN's block at 16x16 in G and D) and gd16-zero (the zero-initialised gate), seed 0, 2 steps, 16 samples (and
# 16 in each train.py's closing line); one job, so that the runner evaluates the three runs in its own process.
TINY_ABLATION_ARGS = ["--config", "configs/ablation_coherence.yaml", "--arms", "none,gd16,gd16-zero", "--seeds", "0",
                      "--jobs", "1", "--num-samples", "16", "train.steps=2", "train.batch_size=4", "data.builtin_size=64",
                      "model.g_width=16", "model.d_width=16", "train.log_every=1", "train.summary_samples=16"]  # fmt: skip


@dataclasses.dataclass(frozen=True)
class TinyAblation:
    runs: Path  # the ablation's OUT: runs/<arm>/seed0/ (read it, or copy it before writing there)
    cmd: list[str]  # the command that made it; run again, it finds every run cached
    returncode: int
    stderr: str


@pytest.fixture(scope="session")
def tiny_ablation(tmp_path_factory: pytest.TempPathFactory) -> TinyAblation:
    """`python -m experiments.ablation run` with TINY_ABLATION_ARGS, trained and evaluated once per test run and
    shared by the tests of the runner and of each study on it. Under pytest-xdist every worker is a session of its
    own: the workers share the folder above their own temporary ones, and the first to take the file lock there
    makes the runs while the others wait and then read them."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # gw0, gw1, ...: basetemp is .../pytest-N/popen-gwK
        base = base.parent
    root = base / "tiny_ablation"
    cmd = [sys.executable, "-m", "experiments.ablation", "run", "--out", str(root / "runs"), *TINY_ABLATION_ARGS,
           f"eval.cache_dir={root / 'cache'}"]  # fmt: skip
    outcome = root / "outcome.json"
    with open(base / "tiny_ablation.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not outcome.is_file():
            root.mkdir(exist_ok=True)
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
            outcome.write_text(json.dumps({"returncode": proc.returncode, "stderr": proc.stderr}))
    done = json.loads(outcome.read_text())
    return TinyAblation(root / "runs", cmd, done["returncode"], done["stderr"])
