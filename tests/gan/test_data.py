"""gan/data.py on real on-disk formats written into tmp dirs, checked against pixel values computed here.

Fixtures are generated at test time: CIFAR-10 python pickles, gzipped idx files, PNG/JPEG/BMP folders,
the CelebA annotation files. torchvision pins the md5 of each real release file; for CIFAR-10 and CelebA the
tests replace those pinned sums with the fixtures' own (`_pin_md5`), so torchvision's integrity check still
runs (a flipped byte is caught below) and its real parser reads the files. Nothing else is patched.
"""

from __future__ import annotations

import gzip
import io
import itertools
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import CelebA

from gan import data as data_mod
from gan.config import DataConfig, ModelConfig
from gan.data import (
    DatasetError,
    TrainingImages,
    build_dataset,
    num_classes_of,
    subset_indices,
)
from gan.data_order import ResumableSampler, build_loader, seed_worker

from shared import celeba_images as _celeba_images
from shared import md5 as _md5
from shared import pin_md5 as _pin_md5
from shared import write_cifar as _write_cifar
from shared import write_folder as _write_folder
from shared import write_idx_gz as _write_idx_gz


def _cfgs(dataset: str, root: Path | str, *, resolution: int = 32, channels: int = 3, **data) -> tuple:
    return DataConfig(dataset=dataset, root=str(root), **data), ModelConfig(
        resolution=resolution, image_channels=channels
    )


def _expected(pixels_hwc: np.ndarray) -> np.ndarray:
    """uint8 (H, W, C) -> float64 (C, H, W) in [-1, 1], the documented mapping x / 255 * 2 - 1."""
    return pixels_hwc.astype(np.float64).transpose(2, 0, 1) / 255.0 * 2.0 - 1.0


def _luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma, the formula PIL documents for RGB -> L (to within one grey level)."""
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


# ----------------------------------------------------------------------------------------------
# CIFAR-10


def test_cifar10_pixels_labels_and_splits(tmp_path, monkeypatch):
    batches = _write_cifar(tmp_path)
    _pin_md5(monkeypatch, tmp_path / "cifar-10-batches-py")
    train = build_dataset(*_cfgs("cifar10", tmp_path))
    assert len(train) == 10 and train.num_classes == 10
    for i in range(10):
        pixels, labels = batches[f"data_batch_{i // 2 + 1}"]
        image, label = train[i]
        assert image.dtype == torch.float32 and image.shape == (3, 32, 32)
        reference = pixels[i % 2].reshape(3, 32, 32).astype(np.float64) / 255.0 * 2.0 - 1.0
        np.testing.assert_allclose(image.numpy(), reference, rtol=0, atol=1e-6)
        assert label == labels[i % 2] and isinstance(label, int)
    assert image.min() >= -1.0 and image.max() <= 1.0

    test = build_dataset(*_cfgs("cifar10", tmp_path, split="test"))
    assert [test[k][1] for k in range(3)] == batches["test_batch"][1]
    everything = build_dataset(*_cfgs("cifar10", tmp_path, split="all"))
    assert len(everything) == 13
    torch.testing.assert_close(everything[12][0], test[2][0], rtol=0, atol=0)

    gray = build_dataset(*_cfgs("cifar10", tmp_path, channels=1))
    rgb_hwc = batches["data_batch_1"][0][0].reshape(3, 32, 32).transpose(1, 2, 0).astype(np.float64)
    reference = _luma(rgb_hwc) / 255.0 * 2.0 - 1.0
    assert gray[0][0].shape == (1, 32, 32)
    np.testing.assert_allclose(gray[0][0][0].numpy(), reference, rtol=0, atol=1.01 / 127.5)

    upsampled = build_dataset(*_cfgs("cifar10", tmp_path, resolution=64))
    assert upsampled[0][0].shape == (3, 64, 64)


def test_cifar10_missing_and_corrupt(tmp_path, monkeypatch):
    with pytest.raises(DatasetError) as excinfo:
        build_dataset(*_cfgs("cifar10", tmp_path))
    message = _one_line_error(excinfo)
    assert "cifar-10-batches-py" in message and "data.download=true" in message

    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar(tmp_path)
    _pin_md5(monkeypatch, folder)
    raw = bytearray((folder / "data_batch_3").read_bytes())
    raw[-20] ^= 0xFF  # one flipped byte: torchvision's md5 check must refuse it
    (folder / "data_batch_3").write_bytes(bytes(raw))
    with pytest.raises(DatasetError) as excinfo:
        build_dataset(*_cfgs("cifar10", tmp_path))
    assert "corrupt" in _one_line_error(excinfo)

    (folder / "data_batch_3").write_bytes(bytes(raw[:100]))  # truncated pickle whose md5 matches: parsing fails
    _pin_md5(monkeypatch, folder)
    with pytest.raises(DatasetError) as excinfo:
        build_dataset(*_cfgs("cifar10", tmp_path))
    assert "corrupt" in _one_line_error(excinfo)


# ----------------------------------------------------------------------------------------------
# Fashion-MNIST


def _fashion_reference(image28: np.ndarray) -> np.ndarray:
    """Documented 28 -> 32 mapping: 2 pixels of black (-1) on every side."""
    padded = np.zeros((32, 32), dtype=np.float64)
    padded[2:30, 2:30] = image28
    return padded / 255.0 * 2.0 - 1.0


def test_fashion_mnist_from_gz_in_torchvision_layout(tmp_path, monkeypatch):
    monkeypatch.setattr(data_mod, "DEBIAN_FASHION_MNIST", tmp_path / "not-installed")
    raw = tmp_path / "FashionMNIST" / "raw"
    arrays = _write_idx_gz(raw)
    gray = build_dataset(*_cfgs("fashion_mnist", tmp_path, channels=1))
    assert (raw / "train-images-idx3-ubyte").is_file()  # decompressed where torchvision reads
    images, labels = arrays["train"]
    assert len(gray) == 5 and gray.num_classes == 10
    for i in range(5):
        image, label = gray[i]
        assert image.shape == (1, 32, 32) and label == int(labels[i])
        np.testing.assert_allclose(image[0].numpy(), _fashion_reference(images[i]), rtol=0, atol=1e-6)

    rgb = build_dataset(*_cfgs("fashion_mnist", tmp_path, channels=3, split="test"))
    image, label = rgb[2]
    assert image.shape == (3, 32, 32) and label == int(arrays["t10k"][1][2])
    for c in range(3):
        np.testing.assert_allclose(image[c].numpy(), _fashion_reference(arrays["t10k"][0][2]), rtol=0, atol=1e-6)
    assert len(build_dataset(*_cfgs("fashion_mnist", tmp_path, split="all"))) == 8
    assert build_dataset(*_cfgs("fashion_mnist", tmp_path, resolution=64))[0][0].shape == (3, 64, 64)


def test_fashion_mnist_falls_back_to_debian_directory(tmp_path, monkeypatch):
    debian = tmp_path / "usr-share-datasets-fashion-mnist"
    arrays = _write_idx_gz(debian)
    monkeypatch.setattr(data_mod, "DEBIAN_FASHION_MNIST", debian)
    dataset = build_dataset(*_cfgs("fashion_mnist", tmp_path / "root", channels=1))
    np.testing.assert_allclose(dataset[4][0][0].numpy(), _fashion_reference(arrays["train"][0][4]), rtol=0, atol=1e-6)


def test_fashion_mnist_missing_and_corrupt(tmp_path, monkeypatch):
    monkeypatch.setattr(data_mod, "DEBIAN_FASHION_MNIST", tmp_path / "not-installed")
    with pytest.raises(DatasetError) as excinfo:
        build_dataset(*_cfgs("fashion_mnist", tmp_path))
    assert "apt-get install -y dataset-fashion-mnist" in _one_line_error(excinfo)

    raw = tmp_path / "FashionMNIST" / "raw"
    _write_idx_gz(raw)
    (raw / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x09\x03" + bytes(40)))  # bad magic
    with pytest.raises(DatasetError) as excinfo:
        build_dataset(*_cfgs("fashion_mnist", tmp_path))
    _one_line_error(excinfo)


def _unpack_in_step(src: Path, raw: Path, barrier, results) -> None:
    """Child process: unpack, but hold every file until the other process has written its copy too."""
    original = data_mod.shutil.copyfileobj

    def copy_then_wait(f_in, f_out, *args):
        original(f_in, f_out, *args)
        f_out.flush()
        barrier.wait(timeout=60)

    data_mod.shutil.copyfileobj = copy_then_wait
    try:
        data_mod.decompress_idx(src, raw, ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"])
        results.put("ok")
    except Exception as exc:  # reported to the parent, which asserts
        results.put(f"{type(exc).__name__}: {exc}")


def test_fashion_mnist_unpack_is_safe_for_concurrent_processes(tmp_path):
    # Two runs started together (the ablation's parallel jobs, DDP ranks) unpack into the same data.root.
    # Both write every file before either renames it: with one shared partial name, the second rename
    # found nothing (the CI failure this test was written for).
    import multiprocessing

    src, raw = tmp_path / "debian", tmp_path / "root" / "FashionMNIST" / "raw"
    _write_idx_gz(src)
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_unpack_in_step, args=(src, raw, barrier, results)) for _ in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    assert sorted(results.get(timeout=5) for _ in procs) == ["ok", "ok"]
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        assert (raw / name).read_bytes() == gzip.decompress((src / f"{name}.gz").read_bytes())
    assert sorted(p.name for p in raw.iterdir()) == ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"]


DEBIAN_FILES = [f"{p}-{k}.gz" for p in ("train", "t10k") for k in ("images-idx3-ubyte", "labels-idx1-ubyte")]


@pytest.mark.skipif(
    not all((data_mod.DEBIAN_FASHION_MNIST / name).is_file() for name in DEBIAN_FILES),
    reason="Debian package dataset-fashion-mnist is not installed (CI installs it: apt-get install -y dataset-fashion-mnist)",
)
def test_fashion_mnist_real_debian_files(tmp_path):
    train = build_dataset(*_cfgs("fashion_mnist", tmp_path, channels=1))
    test = build_dataset(*_cfgs("fashion_mnist", tmp_path, channels=1, split="test"))
    assert (len(train), len(test)) == (60000, 10000)
    # Independent parse of the Debian file: a 16-byte idx header, then 28*28 bytes per image.
    raw = gzip.decompress((data_mod.DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").read_bytes())
    assert raw[:4] == b"\x00\x00\x08\x03"
    first = np.frombuffer(raw, dtype=np.uint8, count=784, offset=16).reshape(28, 28)
    np.testing.assert_allclose(train[0][0][0].numpy(), _fashion_reference(first), rtol=0, atol=1e-6)
    labels = gzip.decompress((data_mod.DEBIAN_FASHION_MNIST / "t10k-labels-idx1-ubyte.gz").read_bytes())
    assert np.bincount(np.frombuffer(labels, dtype=np.uint8, offset=8), minlength=10).tolist() == [1000] * 10
    assert [test[i][1] for i in range(20)] == list(np.frombuffer(labels, dtype=np.uint8, count=20, offset=8))


# ----------------------------------------------------------------------------------------------
# Image folders


def test_folder_modes_exact_pixels_and_one_summary_line(tmp_path, capsys):
    arrays = _write_folder(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warnings-module output (it echoes a source line)
        dataset = build_dataset(*_cfgs("folder", tmp_path))
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"note: skipped 1 unreadable image file(s) of 7 under '{tmp_path}': sub/broken.png (first: "
    )
    names = [p.name for p in dataset.source.files]
    assert names == ["a_gray.png", "b_rgba.png", "c_palette.png", "d_wide.png", "f_small.bmp", "e_photo.jpg"]
    assert len(dataset) == 6 and dataset.num_classes == 0
    for i in range(len(dataset)):
        image, label = dataset[i]
        assert image.shape == (3, 32, 32) and label == 0
        assert image.min() >= -1.0 and image.max() <= 1.0

    gray_rgb = np.repeat(arrays["gray"][..., None], 3, axis=2)
    np.testing.assert_allclose(dataset[0][0].numpy(), _expected(gray_rgb), rtol=0, atol=1e-6)
    rgba = arrays["rgba"]
    rgba_on_white = np.where(rgba[..., 3:] == 0, 255, rgba[..., :3]).astype(np.uint8)
    np.testing.assert_allclose(dataset[1][0].numpy(), _expected(rgba_on_white), rtol=0, atol=1e-6)
    np.testing.assert_allclose(dataset[2][0].numpy(), _expected(arrays["palette"]), rtol=0, atol=1e-6)
    np.testing.assert_allclose(dataset[3][0].numpy(), _expected(arrays["wide"][:, 16:48]), rtol=0, atol=1e-6)

    single = build_dataset(*_cfgs("folder", tmp_path, channels=1))
    reference = _luma(arrays["wide"][:, 16:48].astype(np.float64)) / 255.0 * 2.0 - 1.0
    assert single[3][0].shape == (1, 32, 32)
    np.testing.assert_allclose(single[3][0][0].numpy(), reference, rtol=0, atol=1.01 / 127.5)


def test_folder_resizes_shorter_side_then_centre_crops(tmp_path):
    # 128 wide x 64 high, left half black, right half white, with a 16-px grey band at the centre columns.
    pixels = np.zeros((64, 128), dtype=np.uint8)
    pixels[:, 64:] = 255
    pixels[:, 56:72] = 128
    Image.fromarray(pixels).save(tmp_path / "x.png")
    image = build_dataset(*_cfgs("folder", tmp_path, channels=1))[0][0][0]  # 64x128 -> 32x64 -> crop cols 16..48
    assert image.shape == (32, 32)
    expected_cols = np.where(np.arange(16, 48) < 32, -1.0, 1.0)
    expected_cols[(np.arange(16, 48) >= 28) & (np.arange(16, 48) < 36)] = 128 / 127.5 - 1
    # Bicubic blurs edges by a pixel or two: compare the columns away from the two transitions.
    interior = [c for c in range(32) if min(abs(c - 12), abs(c - 20)) >= 3]
    expected = np.broadcast_to(expected_cols[interior], (32, len(interior)))
    np.testing.assert_allclose(image[:, interior].numpy(), expected, rtol=0, atol=2 / 127.5)


def test_folder_truncated_jpeg_is_caught_at_indexing_and_reported_once(tmp_path, capsys):
    """A truncated JPEG has an intact header: only decoding every pixel finds it, at indexing time, so the run
    never meets it. One summary line names the count and the first few files; nothing is said mid-run."""
    rng = np.random.default_rng(3)
    for name in ("a.jpg", "b.png", "c.jpg", "d.jpg", "e.jpg", "f.png"):
        Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)).save(tmp_path / name)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    for name in ("a.jpg", "c.jpg", "d.jpg", "e.jpg"):
        (tmp_path / name).write_bytes(buffer.getvalue()[:-2000])  # header intact, entropy-coded data cut
        with Image.open(tmp_path / name) as img:
            img.verify()  # what the header check sees: nothing wrong
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset = build_dataset(*_cfgs("folder", tmp_path))
        assert [p.name for p in dataset.source.files] == ["b.png", "f.png"]
        for i in range(len(dataset)):  # the run: no fallback, no message
            dataset[i]
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert err[0].startswith(
        f"note: skipped 4 unreadable image file(s) of 6 under '{tmp_path}': a.jpg, c.jpg, d.jpg, ... (first: "
    )


def test_folder_file_damaged_after_indexing_is_replaced_and_named_once(tmp_path, capsys):
    rng = np.random.default_rng(3)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)).save(tmp_path / name)
    dataset = build_dataset(*_cfgs("folder", tmp_path))
    (tmp_path / "a.png").write_bytes(b"gone bad")
    for _ in range(2):
        image, _ = dataset[0]
        torch.testing.assert_close(image, dataset[1][0], rtol=0, atol=0)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"note: could not decode '{tmp_path / 'a.png'}'")


def test_folder_missing_empty_and_unreadable(tmp_path):
    for root in (tmp_path / "nowhere", tmp_path):
        with pytest.raises(DatasetError) as excinfo:
            build_dataset(*_cfgs("folder", root))
        assert str(root) in _one_line_error(excinfo)
    (tmp_path / "bad.png").write_bytes(b"garbage")
    with pytest.raises(DatasetError) as excinfo:
        build_dataset(*_cfgs("folder", tmp_path))
    assert "none of the 1 image files" in _one_line_error(excinfo)


# ----------------------------------------------------------------------------------------------
# CelebA


PARTITION = "".join(f"{i:06d}.jpg {0 if i <= 4 else i - 4}\n" for i in range(1, 7))  # 4 train, 1 valid, 1 test


def _celeba_reference(path: Path, resolution: int) -> np.ndarray:
    """Centre crop 108 of the 178x218 image, i.e. box (35, 55, 143, 163), then bicubic resize."""
    with Image.open(path) as img:
        patch = img.convert("RGB").crop((35, 55, 143, 163)).resize((resolution, resolution), Image.BICUBIC)
    return _expected(np.asarray(patch))


def test_celeba_unpacked_folder_with_partition(tmp_path):
    _celeba_images(tmp_path / "img_align_celeba")
    (tmp_path / "list_eval_partition.txt").write_text(PARTITION)
    lengths = {s: len(build_dataset(*_cfgs("celeba", tmp_path, split=s))) for s in ("train", "valid", "test", "all")}
    assert lengths == {"train": 4, "valid": 1, "test": 1, "all": 6}
    dataset = build_dataset(*_cfgs("celeba", tmp_path, resolution=64, split="test"))
    image, label = dataset[0]
    assert label == 0 and dataset.num_classes == 0
    reference = _celeba_reference(tmp_path / "img_align_celeba" / "000006.jpg", 64)
    np.testing.assert_allclose(image.numpy(), reference, rtol=0, atol=1e-6)

    bare = tmp_path / "bare"  # the images alone, no partition file: every image is used
    _celeba_images(bare)
    assert len(build_dataset(*_cfgs("celeba", bare))) == 6


def test_celeba_torchvision_layout(tmp_path, monkeypatch):
    base = tmp_path / "celeba"
    _celeba_images(base / "img_align_celeba")
    names = [f"{i:06d}.jpg" for i in range(1, 7)]
    attrs = ["5_o_Clock_Shadow", "Smiling"]
    files = {
        "list_eval_partition.txt": PARTITION,
        "identity_CelebA.txt": "".join(f"{n} {i}\n" for i, n in enumerate(names)),
        "list_attr_celeba.txt": f"6\n{' '.join(attrs)}\n" + "".join(f"{n} 1 -1\n" for n in names),
        "list_bbox_celeba.txt": "6\nimage_id x_1 y_1 width height\n" + "".join(f"{n} 1 2 3 4\n" for n in names),
        "list_landmarks_align_celeba.txt": "6\nlefteye_x lefteye_y\n" + "".join(f"{n} 69 109\n" for n in names),
    }
    for name, text in files.items():
        (base / name).write_text(text)
    pinned = [(fid, _md5(base / name) if name in files else md5, name) for fid, md5, name in CelebA.file_list]
    monkeypatch.setattr(CelebA, "file_list", pinned)
    dataset = build_dataset(*_cfgs("celeba", tmp_path, split="train"))
    assert isinstance(dataset.source, CelebA) and len(dataset) == 4
    image, label = dataset[3]
    assert label == 0
    reference = _celeba_reference(base / "img_align_celeba" / "000004.jpg", 32)
    np.testing.assert_allclose(image.numpy(), reference, rtol=0, atol=1e-6)


def test_celeba_missing(tmp_path):
    with pytest.raises(DatasetError) as excinfo:
        build_dataset(*_cfgs("celeba", tmp_path))
    assert "img_align_celeba" in _one_line_error(excinfo)


# ----------------------------------------------------------------------------------------------
# Built-in data, classes, user errors


def test_builtin_dispatch_and_classes():
    from gan.synthetic import CoherenceDataset

    data_cfg, model_cfg = _cfgs("builtin", "unused", channels=1, builtin_size=7)
    dataset = build_dataset(data_cfg, model_cfg)
    reference = CoherenceDataset(size=7, resolution=32, channels=1)
    assert len(dataset) == 7 and dataset.num_classes == num_classes_of(data_cfg) == CoherenceDataset.num_classes
    for i in (0, 6):
        torch.testing.assert_close(dataset[i][0], reference[i][0], rtol=0, atol=0)
        assert dataset[i][1] == reference[i][1]
    torch.testing.assert_close(dataset[2, True][0], reference[2][0].flip(-1), rtol=0, atol=0)

    assert num_classes_of(DataConfig(dataset="cifar10")) == 10
    assert num_classes_of(DataConfig(dataset="fashion_mnist")) == 10
    assert num_classes_of(DataConfig(dataset="celeba")) == num_classes_of(DataConfig(dataset="folder")) == 0


def test_subset_is_a_fixed_nested_prefix_of_one_permutation():
    from gan.synthetic import CoherenceDataset

    reference = CoherenceDataset(size=20, resolution=32, channels=1)
    torch.manual_seed(1)  # the global RNG (which train.seed seeds) plays no part
    six = build_dataset(*_cfgs("builtin", "unused", channels=1, builtin_size=20, subset=6))
    torch.manual_seed(2)
    again = subset_indices(20, 6)
    indices = subset_indices(20, 12)
    assert len(six) == 6 and again == indices[:6]  # same draw every time; the 6 are the first of the 12
    assert len(set(indices)) == 12 and set(indices) <= set(range(20)) and indices != list(range(12))
    for position, index in enumerate(again):
        torch.testing.assert_close(six[position][0], reference[index][0], rtol=0, atol=0)
        assert six[position][1] == reference[index][1]
    torch.testing.assert_close(six[0, True][0], reference[again[0]][0].flip(-1), rtol=0, atol=0)
    assert len(build_dataset(*_cfgs("builtin", "unused", channels=1, builtin_size=20, subset=0))) == 20
    with pytest.raises(DatasetError) as excinfo:
        build_dataset(*_cfgs("builtin", "unused", channels=1, builtin_size=20, subset=21))
    assert "data.subset=21 but the dataset has only 20 images" in _one_line_error(excinfo)


def test_user_errors_are_one_line(tmp_path):
    data_cfg, model_cfg = _cfgs("celeba", tmp_path)
    model_cfg.num_classes = 10
    with pytest.raises(DatasetError) as excinfo:
        build_dataset(data_cfg, model_cfg)
    assert "model.num_classes=0" in _one_line_error(excinfo)
    with pytest.raises(DatasetError) as excinfo:
        build_dataset(*_cfgs("cifar10", tmp_path, split="valid"))
    assert "data.split" in _one_line_error(excinfo)
    assert issubclass(DatasetError, ValueError)


# ----------------------------------------------------------------------------------------------
# Sampler


def _take(sampler: ResumableSampler, n: int) -> list:
    return list(itertools.islice(iter(sampler), n))


def test_sampler_epochs_follow_seeded_randperm():
    n, seed = 7, 11
    stream = _take(ResumableSampler(n, seed), 3 * n)
    for e in range(3):
        expected = torch.randperm(n, generator=torch.Generator().manual_seed(seed + e)).tolist()
        assert stream[e * n : (e + 1) * n] == expected
    assert stream == _take(ResumableSampler(n, seed), 3 * n)
    assert stream != _take(ResumableSampler(n, seed + 1), 3 * n)


def test_sampler_resume_equals_tail_of_uninterrupted_stream():
    n, seed = 10, 3
    full = _take(ResumableSampler(n, seed), 60)
    for k in (0, 1, 9, 10, 23, 40):
        assert _take(ResumableSampler(n, seed, start=k), 20) == full[k : k + 20]
    mirrored = _take(ResumableSampler(n, seed, mirror=True), 60)
    assert [i for i, _ in mirrored] == full
    assert _take(ResumableSampler(n, seed, start=23, mirror=True), 20) == mirrored[23:43]
    g = torch.Generator().manual_seed(seed)
    torch.randperm(n, generator=g)
    assert [f for _, f in mirrored[:n]] == (torch.rand(n, generator=g) < 0.5).tolist()


def test_sampler_rank_shards_are_disjoint_and_cover_each_global_batch():
    n, seed, batch, world, start = 13, 5, 4, 3, 17
    full = _take(ResumableSampler(n, seed, start=start), 5 * batch * world)
    ranks = [ResumableSampler(n, seed, start=start, rank=r, world_size=world, batch_size=batch) for r in range(world)]
    shards = [_take(sampler, 5 * batch) for sampler in ranks]
    positions = [list(itertools.islice(sampler.positions(), 5 * batch)) for sampler in ranks]
    assert len(set().union(*map(set, positions))) == 5 * batch * world  # no position read twice
    for k in range(5):
        gathered = [key for r in range(world) for key in shards[r][k * batch : (k + 1) * batch]]
        assert gathered == full[k * batch * world : (k + 1) * batch * world]
    consumed = 2 * batch * world  # two global steps done: each rank resumes at its own tail
    for r in range(world):
        again = ResumableSampler(n, seed, start=start + consumed, rank=r, world_size=world, batch_size=batch)
        resumed = _take(again, 3 * batch)
        assert resumed == shards[r][2 * batch :]


def test_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError):
        ResumableSampler(0, 0)
    with pytest.raises(ValueError):
        ResumableSampler(5, 0, rank=2, world_size=2)


# ----------------------------------------------------------------------------------------------
# Loader


def _ramp_images(n: int = 6) -> TrainingImages:
    """Images whose pixel (c, y, x) = (i * 16 + x) / 127.5 - 1: item and flip are readable from pixels."""
    xs = torch.arange(4, dtype=torch.float32)
    source = [(((i * 16 + xs) / 127.5 - 1).expand(1, 4, 4).clone(), i % 3) for i in range(n)]
    return TrainingImages(source, name="ramp", num_classes=3, resolution=4, channels=1)


def _batches(loader, k: int) -> list:
    it = iter(loader)
    return [next(it) for _ in range(k)]


def test_loader_flips_are_a_function_of_seed_and_position():
    dataset = _ramp_images()
    cfg = DataConfig(random_flip=True)
    batches = _batches(build_loader(dataset, cfg, batch_size=4, seed=9), 5)  # 20 samples > 6: endless
    sampler = ResumableSampler(len(dataset), 9, batch_size=4, mirror=True)
    for b, (images, labels) in enumerate(batches):
        assert images.shape == (4, 1, 4, 4) and labels.dtype == torch.int64
        for j in range(4):
            index, flip = sampler.key_at(b * 4 + j)
            expected = dataset.source[index][0].flip(-1) if flip else dataset.source[index][0]
            torch.testing.assert_close(images[j], expected, rtol=0, atol=0)
            assert labels[j].item() == index % 3
    flips = [sampler.key_at(p)[1] for p in range(20)]
    assert any(flips) and not all(flips)

    resumed = _batches(build_loader(dataset, cfg, batch_size=4, seed=9, start=8), 3)
    for (a, la), (b, lb) in zip(resumed, batches[2:]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert la.tolist() == lb.tolist()

    unflipped = _batches(build_loader(dataset, DataConfig(random_flip=False), batch_size=4, seed=9), 1)[0][0]
    for j in range(4):
        torch.testing.assert_close(unflipped[j], dataset.source[sampler.key_at(j)[0]][0], rtol=0, atol=0)


class _Noisy(torch.utils.data.Dataset):
    """Draws from the worker's global RNGs: a user transform that only seeding can make reproducible."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.tensor([float(index), torch.rand(()).item(), float(np.random.rand()), random.random()]), 0


def test_loader_with_workers_matches_single_process_and_is_reproducible():
    dataset = _ramp_images()
    single = _batches(build_loader(dataset, DataConfig(random_flip=True), batch_size=3, seed=1), 4)
    cfg = DataConfig(random_flip=True, num_workers=2, persistent_workers=True)
    multi = _batches(build_loader(dataset, cfg, batch_size=3, seed=1), 4)
    for (a, la), (b, lb) in zip(single, multi):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert la.tolist() == lb.tolist()

    noisy_cfg = DataConfig(num_workers=2)
    first = torch.cat([x for x, _ in _batches(build_loader(_Noisy(), noisy_cfg, batch_size=2, seed=4), 3)])
    second = torch.cat([x for x, _ in _batches(build_loader(_Noisy(), noisy_cfg, batch_size=2, seed=4), 3)])
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert len(set(first[:, 1].tolist())) == len(first)  # workers draw different numbers, reproducibly


def test_seed_worker_seeds_all_three_generators():
    values = []
    for _ in range(2):
        seed_worker(3, base_seed=100)
        values.append((torch.rand(2).tolist(), np.random.rand(2).tolist(), random.random()))
    assert values[0] == values[1]
    seed_worker(4, base_seed=100)
    assert torch.rand(2).tolist() != values[0][0]
