"""What several test modules share (conftest.py turns it into fixtures; module-level constants import it).

Tiny configurations: `TINY_MODEL` (G and D 16 channels wide) and `TINY_RUN` (a quiet, short run on a few
built-in images, closing with the coherence of 64 samples). Small datasets in their real on-disk formats:
CIFAR-10 python pickles (with torchvision's pinned md5 sums pointed at the files: `pin_md5`), gzipped idx files
(Fashion-MNIST), an image folder of mixed modes with one corrupt file, aligned-CelebA-sized JPEGs.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets import CIFAR10

ROOT = Path(__file__).resolve().parents[1]  # the repository: tests/ mirrors its tree below this file

TINY_MODEL = ["model.g_width=16", "model.d_width=16"]
# The closing coherence line scores 64 samples, not 1,000: ~0.9 CPU-s less per run in the test's process, ~4 in a
# subprocess; tests/cli/test_train.py runs the CLI once with the default.
TINY_RUN = [*TINY_MODEL, "data.builtin_size=64", "train.batch_size=4", "train.progress=false",
            "train.sample_every=0", "log.attention_every=0", "train.checkpoint_every=0",
            "train.summary_samples=64"]  # fmt: skip


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_cifar(root: Path, n_per_batch: int = 2, n_test: int = 3) -> dict[str, tuple[np.ndarray, list[int]]]:
    """A miniature `cifar-10-batches-py/` in the release format: protocol-2 pickles of dicts with str keys
    (what torchvision's `pickle.load(encoding="latin1")` sees for the Python-2 originals), data uint8 (N, 3072)
    laid out as the R, G, B planes of a row-major 32x32 image."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for b, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        n = n_test if name == "test_batch" else n_per_batch
        pixels = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int((b * 3 + k) % 10) for k in range(n)]
        filenames = [f"{name}_{k}.png" for k in range(n)]
        entry = {"batch_label": f"{name} of 6", "labels": labels, "data": pixels, "filenames": filenames}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
        batches[name] = (pixels, labels)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    meta = {"num_cases_per_batch": n_per_batch, "label_names": names, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return batches


def pin_md5(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Point torchvision's CIFAR10 checksum table at the fixture files (see the module docstring)."""
    monkeypatch.setattr(
        CIFAR10, "train_list", [[f"data_batch_{i}", md5(folder / f"data_batch_{i}")] for i in range(1, 6)]
    )
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5(folder / "test_batch")]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5(folder / "batches.meta")})


def idx_bytes(array: np.ndarray) -> bytes:
    """The idx format: 0x00 0x00, dtype code 0x08 (ubyte), ndim, big-endian int32 dims, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_gz(folder: Path, n_train: int = 5, n_test: int = 3) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
        out[prefix] = (images, labels)
    return out


def write_folder(root: Path) -> dict[str, np.ndarray]:
    """Grayscale, RGBA, palette (with a transparent entry), a non-square RGB, a nested BMP, a JPEG,
    one corrupt file and one non-image. Returns the 32x32 pixel arrays that the tests compare exactly."""
    rng = np.random.default_rng(2)
    (root / "sub" / "deeper").mkdir(parents=True)
    gray = rng.integers(0, 256, size=(32, 32), dtype=np.uint8)
    Image.fromarray(gray, mode="L").save(root / "a_gray.png")

    rgba = rng.integers(0, 256, size=(32, 32, 4), dtype=np.uint8)
    rgba[..., 3] = np.where(np.arange(32)[None, :] < 16, 0, 255)  # left half transparent, right half opaque
    Image.fromarray(rgba, mode="RGBA").save(root / "b_rgba.png")

    palette_img = Image.new("P", (32, 32))
    palette_img.putpalette([10, 20, 30, 200, 100, 50, 0, 0, 0] + [0] * (256 * 3 - 9))
    indices = (np.arange(32 * 32).reshape(32, 32) % 3).astype(np.uint8)
    palette_img.putdata(indices.flatten().tolist())
    palette_img.info["transparency"] = 2  # entry 2 is transparent -> white
    palette_img.save(root / "c_palette.png", transparency=2)

    wide = rng.integers(0, 256, size=(32, 64, 3), dtype=np.uint8)  # H=32, W=64: no resize, centre crop only
    Image.fromarray(wide, mode="RGB").save(root / "d_wide.png")

    Image.fromarray(rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)).save(
        root / "sub" / "e_photo.jpg", quality=90
    )
    Image.fromarray(rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)).save(
        root / "sub" / "deeper" / "f_small.bmp"
    )
    (root / "sub" / "broken.png").write_bytes(b"this is not a png at all")
    (root / "notes.txt").write_text("not an image")
    palette_rgb = np.array([[10, 20, 30], [200, 100, 50], [255, 255, 255]], dtype=np.uint8)[indices]
    return {"gray": gray, "rgba": rgba, "palette": palette_rgb, "wide": wide}


def celeba_images(folder: Path, n: int = 6) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(4)
    for i in range(1, n + 1):
        Image.fromarray(rng.integers(0, 256, size=(218, 178, 3), dtype=np.uint8)).save(folder / f"{i:06d}.jpg")


# ----------------------------------------------------------------------------------------------
# Damaging safetensors files on purpose


def flip_bytes(path: Path, offset: int, n: int = 16) -> None:
    """XOR n bytes at `offset` with 0xFF: the file keeps its size and still parses as safetensors."""
    data = bytearray(path.read_bytes())
    for i in range(offset, offset + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def tensor_offset(path: Path, key: str) -> int:
    """Byte offset in a .safetensors file where tensor `key`'s data starts (header read by hand)."""
    raw = path.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])
    return 8 + header_len + header[key]["data_offsets"][0]


def first_tensor_key(path: Path, prefix: str) -> str:
    """The first tensor name in a .safetensors file's header that starts with `prefix`."""
    raw = path.read_bytes()
    return next(k for k in json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")]) if k.startswith(prefix))


def assert_fused_matches_explicit(grid: tuple[int, ...], **kw) -> None:
    """Equal weights and input: a NonLocalBlock(64, **kw)'s fused and explicit paths agree in z and in every
    gradient (the gate opened to 0.5, a learned temperature moved off 1)."""
    import torch

    from gan.attention import NonLocalBlock

    torch.manual_seed(0)
    fused, explicit = NonLocalBlock(64, fused=True, **kw), NonLocalBlock(64, fused=False, **kw)
    explicit.load_state_dict(fused.state_dict())
    for b in (fused, explicit):
        b.gamma.data.fill_(0.5)
        if kw.get("logit_scale") == "learned":
            b.log_tau.data.fill_(-0.5)
        b.eval()
    x1 = torch.randn(2, 64, *grid, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    z1, z2 = fused(x1), explicit(x2)
    torch.testing.assert_close(z1, z2, rtol=1e-5, atol=1e-5)
    gz = torch.randn_like(z1)
    z1.backward(gz)
    z2.backward(gz)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-5)
    for (n, p1), (_, p2) in zip(fused.named_parameters(), explicit.named_parameters()):
        assert p1.grad is not None and p1.grad.abs().sum() > 0, n
        torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-4, atol=1e-5, msg=n)
