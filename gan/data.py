"""Training images and the resumable stream of sample indices that feeds them.

`build_dataset` turns a `DataConfig` into a `TrainingImages` dataset whose items are
(image, label): image float32 (C, R, R) in [-1, 1] with C = model.image_channels and R = model.resolution,
label an int (0 for unlabelled data). Pixels map as x / 127.5 - 1, so 0 -> -1 and 255 -> 1 exactly.

Sources (data.dataset; each one entry of gan/registry.py's DATASETS, built by the `build_*` functions here):
- cifar10:       torchvision's CIFAR10 on `<root>/cifar-10-batches-py/` (its md5 checks included).
- fashion_mnist: torchvision's FashionMNIST on `<root>/FashionMNIST/raw/`. When only the gzipped idx files are
                 there, or nothing is there but Debian's `dataset-fashion-mnist` package is installed
                 (/usr/share/datasets/fashion-mnist/), the gz files are decompressed into that layout first,
                 so training works offline. 28x28 is zero-padded (black) to 32x32, then resized if R != 32.
- celeba:        torchvision's CelebA on `<root>/celeba/` when its files pass torchvision's checks; otherwise
                 an unpacked `img_align_celeba/` folder (under <root>/celeba, <root>, or <root> itself), split
                 by `list_eval_partition.txt` when it sits next to the folder (else every image is used).
                 Images are centre-cropped to 108x108 then resized to R: the crop of DCGAN-era 64x64 CelebA
                 work (crop 140 is the other common choice; at R=128 the 108 crop is upsampled).
- folder:        every image under <root>, recursively, each decoded in full when the dataset is built (files
                 that fail are skipped and counted in one line on stderr); resize the shorter side to R, then
                 centre crop.
- builtin:       `gan.synthetic.CoherenceDataset`, generated on the fly, no files needed.
data.subset = N keeps the first N images of one fixed permutation of the source (see `subset_indices`), so
subsets are nested (the 1,000 are among the 5,000) and the same for every train.seed.
Grayscale, palette and alpha images are converted (alpha composited onto white) to RGB, or to L when
model.image_channels == 1; RGB sources replicate gray to three channels.

Random flips are not drawn from worker RNG state: `gan.data_order.ResumableSampler(mirror=True)` emits (index, flip)
keys whose flip bit is a pure function of (seed, global position), and `TrainingImages` applies it. So a resumed
run and a run with any number of workers see the same images, flips included.
"""

from __future__ import annotations

import gzip
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset, Subset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from gan.config import DataConfig, ModelConfig
from gan.data_order import Key
from gan.errors import UserError
from gan.registry import DATASETS, resolve


class DatasetError(UserError, ValueError):
    """A user-caused dataset problem (missing files, bad split); its message is one line that says what to do."""


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # from `apt-get install dataset-fashion-mnist`
SUBSET_SEED = 314_159  # seed of data.subset's permutation: a constant, so the subset never follows train.seed
CELEBA_CROP = 108  # side of the centre crop taken from the 178x218 aligned CelebA images before resizing
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)  # what PIL raises on bad files


def num_classes_of(data_cfg: DataConfig) -> int:
    """Number of label classes the dataset provides (0: unlabelled)."""
    return DATASETS[data_cfg.dataset].num_classes


def build_dataset(data_cfg: DataConfig, model_cfg: ModelConfig) -> TrainingImages:
    """The dataset named by `data_cfg` (its builder in gan/registry.py's DATASETS), as (C, R, R) images in
    [-1, 1] with int labels. Raises DatasetError."""
    name = data_cfg.dataset
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset '{name}'; set data.dataset to one of {', '.join(DATASETS)}")
    entry = DATASETS[name]
    classes = entry.num_classes
    if model_cfg.num_classes not in (0, classes):
        fix = f"set model.num_classes={classes} (conditional) or 0" if classes else "set model.num_classes=0"
        raise DatasetError(
            f"model.num_classes={model_cfg.num_classes} but dataset '{name}' has {classes or 'no'} classes; {fix}"
        )
    if entry.splits is not None and data_cfg.split not in entry.splits:
        choices = ", ".join(entry.splits)
        raise DatasetError(f"dataset '{name}' has no '{data_cfg.split}' split; set data.split to one of {choices}")
    r, c = model_cfg.resolution, model_cfg.image_channels
    source = resolve(entry.build)(data_cfg, r, c)
    if data_cfg.subset:
        source = Subset(source, subset_indices(len(source), data_cfg.subset))  # type: ignore[arg-type]
    return TrainingImages(source, name=name, num_classes=classes, resolution=r, channels=c)


def subset_indices(size: int, n: int) -> list[int]:
    """The first n of torch.randperm(size) drawn from a generator seeded with SUBSET_SEED. Raises DatasetError.

    The permutation is torch's: torch does not promise the same stream across versions, so a recorded
    experiment names its torch version (or stores these indices)."""
    if n > size:
        raise DatasetError(
            f"data.subset={n} but the dataset has only {size} images; set data.subset to at most {size} (0: all)"
        )
    return torch.randperm(size, generator=torch.Generator().manual_seed(SUBSET_SEED))[:n].tolist()


# The registry's builders: (data_cfg, resolution, channels) -> Dataset of (image, label or None).


def build_builtin(cfg: DataConfig, r: int, c: int) -> Dataset:
    from gan.synthetic import CoherenceDataset  # imported here: only this source needs it

    return CoherenceDataset(size=cfg.builtin_size, resolution=r, channels=c, variant=cfg.builtin_variant)


def build_cifar10(cfg: DataConfig, r: int, c: int) -> Dataset:
    return _cifar10(cfg, ImageTransform(r, c))


def build_fashion_mnist(cfg: DataConfig, r: int, c: int) -> Dataset:
    return _fashion_mnist(cfg, ImageTransform(r, c, pad=(32 - 28) // 2))


def build_celeba(cfg: DataConfig, r: int, c: int) -> Dataset:
    return _celeba(cfg, ImageTransform(r, c, crop=CELEBA_CROP))


def build_folder(cfg: DataConfig, r: int, c: int) -> Dataset:
    return ImageFiles(_scan_images(Path(cfg.root), what="image folder", decode=True), ImageTransform(r, c))


# ----------------------------------------------------------------------------------------------
# Pixels


@dataclass(frozen=True)
class ImageTransform:
    """PIL image -> float32 (channels, resolution, resolution) in [-1, 1].

    Steps: convert the mode (see `convert_mode`), zero-pad by `pad` pixels, centre crop to `crop`, then, unless
    the image is already resolution x resolution, resize the shorter side to `resolution` (bicubic) and centre
    crop. A class rather than a closure so that DataLoader workers can pickle it under any start method.
    """

    resolution: int
    channels: int
    pad: int = 0
    crop: int | None = None

    def __call__(self, img: Image.Image) -> Tensor:
        img = convert_mode(img, self.channels)
        if self.pad:
            img = ImageOps.expand(img, border=self.pad, fill=0)
        if self.crop is not None:
            img = TF.center_crop(img, [self.crop])
        if img.size != (self.resolution, self.resolution):
            img = TF.resize(img, [self.resolution], interpolation=InterpolationMode.BICUBIC)
            img = TF.center_crop(img, [self.resolution])
        return TF.pil_to_tensor(img).float().div_(127.5).sub_(1.0)  # (C, R, R) uint8 -> [-1, 1]


def convert_mode(img: Image.Image, channels: int) -> Image.Image:
    """8-bit RGB (channels 3) or L (channels 1); 16-bit gray is rescaled, transparency composited onto white."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):  # 16-bit PNG gray: PIL's convert would clip
        img = Image.fromarray(
            (np.asarray(img, dtype=np.float64) * (255.0 / 65535.0)).round().clip(0, 255).astype(np.uint8)
        )
    if img.has_transparency_data:  # RGBA, LA, PA, or a palette / RGB / L image with a transparent colour
        img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img.convert("RGBA"))
    return img.convert("L" if channels == 1 else "RGB")


# ----------------------------------------------------------------------------------------------
# The dataset the training loop sees


class TrainingImages(Dataset):
    """(image, label) items of one source, addressable by index or by an (index, mirror) key.

    `dataset[i]` is never flipped (e.g. for reference statistics); `dataset[i, True]` is the mirror image.
    `ResumableSampler(mirror=True)` produces such keys, which is how `data.random_flip` reaches training.
    """

    def __init__(self, source: Dataset, *, name: str, num_classes: int, resolution: int, channels: int) -> None:
        self.source, self.name, self.num_classes = source, name, num_classes
        self.resolution, self.channels = resolution, channels

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]

    def __getitem__(self, key: Key) -> tuple[Tensor, int]:
        index, mirror = key if isinstance(key, tuple) else (key, False)
        image, label = self.source[index]
        if mirror:
            image = image.flip(-1)  # (C, R, R), columns reversed
        return image, 0 if label is None else int(label)


# ----------------------------------------------------------------------------------------------
# Sources


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _cifar10(cfg: DataConfig, transform: ImageTransform) -> Dataset:
    from torchvision.datasets import CIFAR10

    folder = Path(cfg.root) / CIFAR10.base_folder
    names = [name for name, _ in CIFAR10.train_list + CIFAR10.test_list] + [CIFAR10.meta["filename"]]
    present = all((folder / name).is_file() for name in names)
    if not present and not cfg.download:
        raise DatasetError(
            f"CIFAR-10 not found: unpack cifar-10-python.tar.gz so that '{folder}/' holds data_batch_1..5, "
            f"test_batch and batches.meta, or set data.download=true"
        )
    trains = {"train": [True], "test": [False], "all": [True, False]}[cfg.split]
    try:
        parts = [CIFAR10(cfg.root, train=t, transform=transform, download=cfg.download) for t in trains]
    except Exception as exc:  # torchvision: RuntimeError on md5 mismatch; pickle / numpy errors on bad content
        if not present:
            raise DatasetError(
                f"could not download CIFAR-10 into '{cfg.root}' ({_first_line(exc)}); "
                f"unpack cifar-10-python.tar.gz there by hand or check the connection"
            ) from exc
        raise DatasetError(
            f"CIFAR-10 files in '{folder}' are corrupt or incomplete ({_first_line(exc)}); "
            f"delete the folder and unpack cifar-10-python.tar.gz again, or set data.download=true"
        ) from exc
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


def _fashion_mnist(cfg: DataConfig, transform: ImageTransform) -> Dataset:
    from torchvision.datasets import FashionMNIST

    raw = Path(cfg.root) / "FashionMNIST" / "raw"  # FashionMNIST.raw_folder
    names = [Path(name).stem for name, _ in FashionMNIST.resources]  # e.g. train-images-idx3-ubyte
    if not cfg.download and not all((raw / name).is_file() for name in names):
        gz_dirs = [d for d in (raw, DEBIAN_FASHION_MNIST) if all((d / f"{name}.gz").is_file() for name in names)]
        if not gz_dirs:
            raise DatasetError(
                f"Fashion-MNIST not found in '{raw}/': run `apt-get install -y dataset-fashion-mnist` "
                f"(used automatically), put the four idx .gz files there, or set data.download=true"
            )
        decompress_idx(gz_dirs[0], raw, names)
    trains = {"train": [True], "test": [False], "all": [True, False]}[cfg.split]
    try:
        parts = [FashionMNIST(cfg.root, train=t, transform=transform, download=cfg.download) for t in trains]
    except Exception as exc:  # download failures, or idx files with a wrong magic number / size
        raise DatasetError(
            f"could not load Fashion-MNIST from '{raw}' ({_first_line(exc)}); delete that folder and let it be "
            f"rebuilt (needs dataset-fashion-mnist or data.download=true)"
        ) from exc
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


def decompress_idx(src: Path, raw: Path, names: list[str]) -> None:
    """Decompress `src/<name>.gz` to `raw/<name>` (the layout torchvision reads), atomically per file.

    Safe when several processes unpack into the same root at once (parallel runs, DDP ranks): each writes
    its own partial file, and the atomic rename of identical bytes leaves one complete file whoever wins.
    """
    try:
        raw.mkdir(parents=True, exist_ok=True)
        for name in names:
            if (raw / name).is_file():
                continue
            tmp = raw / f".{name}.{os.getpid()}.partial"
            with gzip.open(src / f"{name}.gz", "rb") as f_in, open(tmp, "wb") as f_out:
                shutil.copyfileobj(f_in, f_out)
            os.replace(tmp, raw / name)
    except (OSError, EOFError) as exc:
        raise DatasetError(
            f"could not unpack Fashion-MNIST from '{src}' into '{raw}' ({_first_line(exc)}); "
            f"make data.root writable or reinstall dataset-fashion-mnist"
        ) from exc


def _celeba(cfg: DataConfig, transform: ImageTransform) -> Dataset:
    from torchvision.datasets import CelebA
    from torchvision.datasets.utils import check_integrity

    root = Path(cfg.root)
    base = root / CelebA.base_folder
    torchvision_layout = (base / "img_align_celeba").is_dir() and all(
        check_integrity(base / name, md5) for _, md5, name in CelebA.file_list if name.endswith(".txt")
    )  # the check CelebA itself runs: annotation md5s plus the image folder
    if cfg.download or torchvision_layout:
        try:
            return CelebA(str(root), split=cfg.split, target_type=[], transform=transform, download=cfg.download)
        except Exception as exc:
            raise DatasetError(
                f"could not load CelebA from '{root / 'celeba'}' ({_first_line(exc)}); unpack "
                f"img_align_celeba.zip under '{root}' instead (Google Drive downloads need gdown and often hit quotas)"
            ) from exc
    for home in (base, root, None):  # images in <home>/img_align_celeba, or in root itself (home None)
        folder = root if home is None else home / "img_align_celeba"
        if folder.is_dir() and any(f.suffix.lower() == ".jpg" for f in folder.iterdir()):
            break
    else:
        raise DatasetError(
            f"CelebA not found: unpack img_align_celeba.zip so that '{root}/img_align_celeba/' holds the "
            f"aligned .jpg images (or use torchvision's '{root}/celeba/' layout)"
        )
    keep = _celeba_partition((home or root) / "list_eval_partition.txt", cfg.split)
    files = _scan_images(folder, what="CelebA folder", keep=keep)
    return ImageFiles(files, transform)


def _celeba_partition(path: Path, split: str) -> set[str] | None:
    """File names of `split` from CelebA's `list_eval_partition.txt` (`000001.jpg 0` per line); None: keep all."""
    if split == "all" or not path.is_file():
        return None
    code = {"train": "0", "valid": "1", "test": "2"}[split]
    rows = (line.split() for line in path.read_text().splitlines())
    return {row[0] for row in rows if len(row) == 2 and row[1] == code}


def _scan_images(root: Path, *, what: str, keep: set[str] | None = None, decode: bool = False) -> list[Path]:
    """Sorted image files under `root` (recursive) that PIL can read: every pixel decoded when `decode` (a
    truncated JPEG is caught here, not mid-run), else the header checked. One stderr line counts the others."""
    if not root.is_dir():
        raise DatasetError(f"{what} '{root}' does not exist; set data.root to a directory of images")
    candidates = sorted(
        Path(d) / f
        for d, _, files in os.walk(root, followlinks=True)
        for f in files
        if f.lower().endswith(IMAGE_EXTENSIONS) and (keep is None or f in keep)
    )
    good, bad = [], []
    for path in candidates:
        try:
            with Image.open(path) as img:
                img.load() if decode else img.verify()  # verify: header (and PNG chunk CRCs) only
            good.append(path)
        except _DECODE_ERRORS as exc:
            bad.append((path, exc))
    if not good:
        found = f"none of the {len(candidates)} image files" if candidates else "no image files"
        raise DatasetError(
            f"{found} under '{root}' could be read ({', '.join(IMAGE_EXTENSIONS)}); set data.root to a directory of images"
        )
    if bad:
        names = ", ".join(str(p.relative_to(root)) for p, _ in bad[:3]) + (", ..." if len(bad) > 3 else "")
        print(
            f"note: skipped {len(bad)} unreadable image file(s) of {len(candidates)} under '{root}': {names} "
            f"(first: {_first_line(bad[0][1])})",
            file=sys.stderr,
        )
    return good


class ImageFiles(Dataset):
    """Image files as (tensor, 0). A file that fails to decode at load time anyway (changed on disk since the
    scan, or a CelebA JPEG, whose scan reads headers only) is replaced by the next readable one and named once
    through tqdm (above any progress bar), so a long run never stops on a bad image."""

    def __init__(self, files: list[Path], transform: ImageTransform) -> None:
        self.files, self.transform = files, transform
        self._said: set[Path] = set()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        n = len(self.files)
        for step in range(n):
            path = self.files[(index + step) % n]
            try:
                with Image.open(path) as img:
                    return self.transform(ImageOps.exif_transpose(img)), 0  # exif_transpose decodes the pixels
            except _DECODE_ERRORS as exc:
                if path not in self._said:
                    from tqdm.auto import tqdm

                    self._said.add(path)
                    tqdm.write(
                        f"note: could not decode '{path}' ({_first_line(exc)}); using the next image", file=sys.stderr
                    )
        raise DatasetError(f"none of the {n} image files could be decoded; check the files under data.root")
