"""Train the Fashion-MNIST classifier behind the `fashion_classifier` feature extractor (gan/classifier.py).

    python tools/train_fashion_classifier.py [--root /usr/share/datasets/fashion-mnist] [--epochs 3]

Reads the four idx gz files of Fashion-MNIST (Debian: `apt-get install -y dataset-fashion-mnist`), trains
a few CPU minutes, reports test accuracy, and writes assets/fashion_classifier.safetensors plus
assets/fashion_classifier.json (accuracy, date, command, machine, seconds).

The 28x28 images reach 32x32 two ways in training, half the batch each: 2-pixel zero padding (what
gan.data does for data.dataset=fashion_mnist) and bilinear resize (what `to_classifier_input` does to any
non-32 input), plus random horizontal flips (generators trained with `data.random_flip`). The recorded
`test_accuracy` is on the padded test split, `test_accuracy_resized` on the resized one, both unflipped.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from gan.classifier import DEFAULT_WEIGHTS, FashionClassifier, to_classifier_input

SLICE = 2000  # first test images whose accuracy is recorded separately, for the tests
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path: Path) -> np.ndarray:
    """An idx file (gzip) as a numpy uint8 array: images (N, 28, 28) or labels (N,)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_split(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 1, 28, 28) and int64 labels (N,)."""
    images_file, labels_file = FILES[split]
    for name in (images_file, labels_file):
        if not (root / name).is_file():
            raise SystemExit(
                f"error: {root / name} not found; `apt-get install -y dataset-fashion-mnist` or pass --root"
            )
    images = torch.from_numpy(read_idx(root / images_file).copy()).unsqueeze(1)
    labels = torch.from_numpy(read_idx(root / labels_file).astype(np.int64))
    return images, labels


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def pad_to_32(images: torch.Tensor) -> torch.Tensor:
    return F.pad(images, (2, 2, 2, 2))  # (B, 1, 32, 32), zero = black background


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """uint8 (B, 1, 28, 28) -> classifier input (B, 1, 32, 32): half resized, half padded, random flips."""
    b = images.shape[0]
    resized = to_classifier_input(images)
    padded = to_classifier_input(pad_to_32(images))
    use_pad = torch.rand(b, generator=generator) < 0.5
    x = torch.where(use_pad[:, None, None, None], padded, resized)
    flip = torch.rand(b, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


@torch.no_grad()
def accuracy(model: FashionClassifier, images: torch.Tensor, labels: torch.Tensor, pad: bool) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(images), 1000):
        batch = images[start : start + 1000]
        x = to_classifier_input(pad_to_32(batch) if pad else batch)
        correct += (model(x).argmax(1) == labels[start : start + 1000]).sum().item()
    return correct / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(args.seed)
    train_x, train_y = load_split(args.root, "train")
    test_x, test_y = load_split(args.root, "test")

    model = FashionClassifier()
    steps = args.epochs * (len(train_x) // args.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=steps)
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train_x), generator=generator)
        for i in range(len(train_x) // args.batch_size):
            idx = order[i * args.batch_size : (i + 1) * args.batch_size]
            loss = F.cross_entropy(model(augment(train_x[idx], generator)), train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        acc = accuracy(model, test_x, test_y, pad=True)
        print(f"epoch {epoch + 1}/{args.epochs}: loss {loss.item():.3f}, test accuracy {acc:.4f}", flush=True)
    seconds = time.time() - start

    acc_pad = accuracy(model, test_x, test_y, pad=True)
    acc_slice = accuracy(model, test_x[:SLICE], test_y[:SLICE], pad=True)
    acc_resize = accuracy(model, test_x, test_y, pad=False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(args.out))
    record = {
        "test_accuracy": acc_pad,  # padded 28 -> 32, as gan.data feeds Fashion-MNIST
        "test_accuracy_resized": acc_resize,
        "test_images": len(test_x),
        f"test_accuracy_first_{SLICE}": acc_slice,  # what tests/gan/test_classifier.py checks
        "epochs": args.epochs,
        "train_seconds": round(seconds, 1),
        "date": datetime.date.today().isoformat(),
        "command": "python " + shlex.join(sys.argv),
        "machine": f"{cpu_model()}, {args.threads} torch threads, torch {torch.__version__}",
        "weights_bytes": args.out.stat().st_size,
    }
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
