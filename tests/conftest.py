"""Fixtures shared by the test modules: tiny configurations and small datasets on disk."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from shared import TINY_MODEL, TINY_RUN, celeba_images, pin_md5, write_cifar, write_folder, write_idx_gz


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`make test`: a worker per core), each worker takes its share of the cores for torch's
    intra-op threads, so that the workers do not oversubscribe the machine."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(workers)))


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
