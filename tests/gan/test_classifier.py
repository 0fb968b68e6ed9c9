"""gan.classifier: the committed weights, the extractor's contract, and the recorded test accuracy."""

from __future__ import annotations

import json

import pytest
import torch
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from gan.classifier import (
    DEFAULT_WEIGHTS,
    FEATURE_DIM,
    FEATURE_EXTRACTOR_NAME,
    FashionClassifierExtractor,
    load_classifier,
    to_classifier_input,
)
from gan.config import DataConfig, ModelConfig
from gan.data import DEBIAN_FASHION_MNIST, build_dataset

RECORD = DEFAULT_WEIGHTS.with_suffix(".json")


def test_committed_weights_are_small_safetensors_with_a_record():
    assert DEFAULT_WEIGHTS.stat().st_size < 2 * 1024 * 1024
    assert DEFAULT_WEIGHTS.read_bytes()[8:9] == b"{"  # safetensors: 8-byte header length, then JSON
    record = json.loads(RECORD.read_text())
    assert record["test_accuracy"] >= 0.89 and record["command"].startswith("python tools/train_fashion_classifier.py")
    model = load_classifier()
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_missing_weights_name_the_script_that_makes_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_fashion_classifier.py"):
        load_classifier(tmp_path / "none.safetensors")


def test_to_classifier_input_maps_bytes_to_unit_range_and_rgb_gray_to_gray():
    gray = torch.tensor([0, 51, 255], dtype=torch.uint8).repeat(11)[:32].expand(1, 1, 32, 32)
    x = to_classifier_input(gray)
    assert x.shape == (1, 1, 32, 32)
    assert torch.allclose(x, gray.float() / 127.5 - 1.0)
    assert torch.equal(to_classifier_input(gray.expand(1, 3, 32, 32)), x)
    assert to_classifier_input(torch.zeros(2, 3, 28, 28, dtype=torch.uint8)).shape == (2, 1, 32, 32)


def test_extractor_returns_requested_layers_of_the_classifier_in_order():
    assert FEATURE_EXTRACTORS_REGISTRY[FEATURE_EXTRACTOR_NAME] is FashionClassifierExtractor
    assert FashionClassifierExtractor.get_default_feature_layer_for_metric("fid") == "features"
    assert FashionClassifierExtractor.get_default_feature_layer_for_metric("isc") == "logits"
    images = torch.randint(0, 256, (5, 1, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    extractor = FashionClassifierExtractor(FEATURE_EXTRACTOR_NAME, ["logits", "features"])
    logits, features = extractor(images.expand(5, 3, 32, 32))
    model = load_classifier()
    with torch.no_grad():
        x = to_classifier_input(images)
        assert torch.allclose(features, model.features(x), atol=1e-6) and features.shape == (5, FEATURE_DIM)
        assert torch.allclose(logits, model(x), atol=1e-5) and logits.shape == (5, 10)
    with pytest.raises(ValueError, match="uint8"):
        extractor(images.float())


@pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)",
)
def test_recorded_accuracy_on_the_real_test_split_through_the_gan_data_pipeline(tmp_path):
    record = json.loads(RECORD.read_text())
    (key,) = [k for k in record if k.startswith("test_accuracy_first_")]
    n = int(key.rsplit("_", 1)[1])
    data = build_dataset(
        DataConfig(dataset="fashion_mnist", split="test", root=str(tmp_path)), ModelConfig(image_channels=1)
    )
    images = torch.stack([data[i][0] for i in range(n)])  # (n, 1, 32, 32), zero-padded 28 -> 32
    labels = torch.tensor([data[i][1] for i in range(n)])
    extractor = FashionClassifierExtractor(FEATURE_EXTRACTOR_NAME, ["logits"])
    with torch.no_grad():
        (logits,) = extractor(torch.round((images + 1) * 127.5).to(torch.uint8))
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    assert accuracy == pytest.approx(record[key], abs=1.5 / n)  # at most one image may flip on another CPU
