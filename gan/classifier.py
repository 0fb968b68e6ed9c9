"""A small Fashion-MNIST classifier and the torch-fidelity feature extractor built on it.

Inception needs a 95 MB download and runs at a few images per second on a CPU. For CPU experiments on
Fashion-MNIST this module offers a domain-specific stand-in: a 3-conv CNN (32x32 grayscale input) trained
by `tools/train_fashion_classifier.py`, whose weights ship in `assets/fashion_classifier.safetensors`.
Its penultimate features give a Frechet *classifier* distance (FCD) and a kernel classifier distance
(KCD), its logits a classifier score (CS). These are NOT FID / KID / IS: the numbers are on another scale
and are comparable only with other numbers from the same weights file (see docs/metrics.md).

Importing this module registers the extractor with torch-fidelity as `FEATURE_EXTRACTOR_NAME`.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn
from torch_fidelity import register_feature_extractor
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

FEATURE_EXTRACTOR_NAME = "fashion-classifier"
DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "assets" / "fashion_classifier.safetensors"
INPUT_SIZE = 32
NUM_CLASSES = 10
FEATURE_DIM = 128
IN_DOMAIN = ("fashion_mnist",)  # data.dataset values whose images this classifier was trained to read
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class FashionClassifier(nn.Module):
    """(B, 1, 32, 32) images in [-1, 1] -> logits (B, 10); `features` gives the (B, 128) penultimate layer."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn(1, 32), nn.MaxPool2d(2),  # (B, 32, 16, 16)
            _conv_bn(32, 64), nn.MaxPool2d(2),  # (B, 64, 8, 8)
            _conv_bn(64, 128), nn.MaxPool2d(2),  # (B, 128, 4, 4)
            nn.AdaptiveAvgPool2d(2),  # (B, 128, 2, 2)
        )  # fmt: skip
        self.embed = nn.Linear(128 * 2 * 2, FEATURE_DIM)
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def features(self, x: Tensor) -> Tensor:
        return F.relu(self.embed(self.body(x).flatten(1)))  # (B, 128)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.dropout(self.features(x)))


def to_classifier_input(images: Tensor) -> Tensor:
    """uint8 (B, C, H, W) with C in {1, 3} -> float (B, 1, 32, 32) in [-1, 1].

    RGB is averaged to gray (for gray images replicated to 3 channels this is exact); other sides are
    resized bilinearly to 32x32. Training saw Fashion-MNIST both zero-padded 28 -> 32 (as gan.data does) and
    resized this way.
    """
    x = images.float().mean(dim=1, keepdim=True) / 127.5 - 1.0  # (B, 1, H, W)
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=True)
    return x


def load_classifier(path: str | Path = DEFAULT_WEIGHTS) -> FashionClassifier:
    """The classifier in eval mode with weights from a safetensors file (never a pickle)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"classifier weights '{path}' not found; run `python tools/train_fashion_classifier.py` to make them"
        )
    model = FashionClassifier()
    model.load_state_dict(load_file(str(path)))
    return model.eval().requires_grad_(False)


class FashionClassifierExtractor(FeatureExtractorBase):
    """torch-fidelity feature extractor: uint8 (B, 3, H, W) -> ("features" (B, 128), "logits" (B, 10)).

    torch-fidelity constructs it as `cls(name, features_list, **calculate_metrics_kwargs)`; the weights
    file comes from `feature_extractor_weights_path` (default: the committed asset).
    """

    def __init__(
        self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None, **kwargs
    ) -> None:
        super().__init__(name, features_list)
        self.model = load_classifier(feature_extractor_weights_path or DEFAULT_WEIGHTS)

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("features", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return {"isc": "logits", "fid": "features", "kid": "features", "prc": "features"}[metric]

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> Tensor:
        return torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE, dtype=torch.uint8)

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"expected uint8 images (B, C, H, W); got {images.dtype} {tuple(images.shape)}")
        features = self.model.features(to_classifier_input(images))
        out = {"features": features, "logits": self.model.head(features)}
        return tuple(out[name].float() for name in self.features_list)


if FEATURE_EXTRACTOR_NAME not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(FEATURE_EXTRACTOR_NAME, FashionClassifierExtractor)
