"""gan.metrics: values against independent numpy/scipy computations over independently extracted features.

Inception on a CPU runs a few images per second, so only one test runs it (8 generated + 8 reference
images, features recorded at the extractor), with a weights file the test makes in
torch-fidelity's format (random He-initialised weights; `inception_sha256=None` accepts it). The other
Frechet / KID / cache cases use the committed Fashion-MNIST classifier, which is fast.
"""

from __future__ import annotations

import urllib.error
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

from gan import metrics
from gan.classifier import FashionClassifierExtractor
from gan.config import Config, ModelConfig
from gan.files import sha256_of
from gan.metrics import INCEPTION_FILENAMES, MetricsError, compute_metrics, resolve_inception_weights
from gan.models import Generator
from gan.registry import result_key

# ----------------------------------------------------------------------------------------------------------
# Helpers


def rectangles(n: int, channels: int = 1, resolution: int = 32, seed: int = 0) -> torch.Tensor:
    """(n, C, R, R) in [-1, 1] from uint8 bytes: one bright rectangle of random place, size and level each."""
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, channels, resolution, resolution, dtype=torch.uint8)
    for i in range(n):
        y0, x0 = torch.randint(0, resolution // 2, (2,), generator=g).tolist()
        h, w = torch.randint(resolution // 5, resolution // 2, (2,), generator=g).tolist()
        images[i, :, y0 : y0 + h, x0 : x0 + w] = int(torch.randint(100, 256, (1,), generator=g))
    return images.float() / 127.5 - 1.0


class CountingImages(Dataset):
    """What build_dataset returns, counting reads."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images, self.reads = images, 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        self.reads += 1
        return self.images[index], 0


class BankGenerator(nn.Module):
    """A 'generator' that returns a fixed bank of images in order, whatever z is."""

    z_dim, num_classes = 8, 0

    def __init__(self, bank: torch.Tensor) -> None:
        super().__init__()
        self.bank, self.pos = bank, 0
        self.anchor = nn.Parameter(torch.zeros(()))  # so that the wrapper can find the device

    def forward(self, z: torch.Tensor, y=None) -> torch.Tensor:
        out = self.bank[self.pos : self.pos + z.shape[0]]
        self.pos += z.shape[0]
        return out


def make_cfg(tmp_path, extractor: str = "fashion_classifier", channels: int = 1) -> Config:
    cfg = Config()
    cfg.model.image_channels = channels
    cfg.eval.feature_extractor = extractor
    cfg.eval.cache_dir = str(tmp_path / "cache")
    cfg.eval.batch_size = 64
    return cfg


def use_reference(monkeypatch, images: torch.Tensor) -> CountingImages:
    dataset = CountingImages(images)
    monkeypatch.setattr(metrics, "build_dataset", lambda data_cfg, model_cfg: dataset)
    return dataset


def features_of(extractor: nn.Module, images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        (features,) = extractor(metrics.to_uint8(images))
    return features.double().numpy()


def frechet_sqrtm(f1: np.ndarray, f2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2) with scipy's matrix square root.

    ReLU features have dead units on synthetic images, so S1 S2 is singular and scipy warns; its root is
    still accurate here (the test also checks the exact low-rank formula below)."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def frechet_low_rank(f1: np.ndarray, f2: np.ndarray) -> float:
    """The same distance for n << d: with S1 = A A^T, S2 = B B^T (A = X1c^T / sqrt(n-1)), the eigenvalues of
    S1 S2 are the squared singular values of A^T B, so Tr (S1 S2)^1/2 is the nuclear norm of A^T B (n x n)."""
    a = (f1 - f1.mean(0)).T / np.sqrt(len(f1) - 1)
    b = (f2 - f2.mean(0)).T / np.sqrt(len(f2) - 1)
    tr_covmean = np.linalg.svd(a.T @ b, compute_uv=False).sum()
    mu = f1.mean(0) - f2.mean(0)
    return float(mu @ mu + (a * a).sum() + (b * b).sum() - 2 * tr_covmean)


def kid_full(f1: np.ndarray, f2: np.ndarray) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel (x.y / d + 1)^3 over the full sets."""
    k = lambda x, y: (x @ y.T / x.shape[1] + 1.0) ** 3  # noqa: E731
    m = len(f1)
    kxx, kyy, kxy = k(f1, f1), k(f2, f2), k(f1, f2)
    off = lambda km: (km.sum() - np.trace(km)) / (m * (m - 1))  # noqa: E731
    return float(off(kxx) + off(kyy) - 2 * kxy.mean())


class _BlankInception(FeatureExtractorInceptionV3):
    """torch-fidelity's InceptionV3 without its weight loading, to make a weights file of the right format."""

    def load_state_dict(self, state_dict, strict=True, assign=False):
        return None


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """A state dict of torch-fidelity's FeatureExtractorInceptionV3 with He-initialised random weights."""
    folder = tmp_path_factory.mktemp("inception")
    torch.save({}, folder / "empty.pth")
    torch.manual_seed(0)
    model = _BlankInception("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(folder / "empty.pth"))
    for module in model.modules():  # default init shrinks activations to ~1e-9 through 90 layers
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    nn.init.normal_(model.fc.weight, std=2048**-0.5)
    path = folder / "random-inception.pth"
    torch.save(FeatureExtractorInceptionV3.state_dict(model), path)
    return path


# ----------------------------------------------------------------------------------------------------------
# Pixels and names


def test_to_uint8_inverts_the_dataset_pixel_mapping_and_replicates_gray():
    raw = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    u8 = metrics.to_uint8(raw.float() / 127.5 - 1.0)  # gan.data maps pixels as x / 127.5 - 1
    assert u8.dtype == torch.uint8 and u8.shape == (1, 3, 16, 16)
    assert torch.equal(u8, raw.expand(1, 3, 16, 16))


def test_metric_keys_name_classifier_scores_distinctly():
    assert result_key("fid") == "frechet_inception_distance"
    assert result_key("kid") == "kernel_inception_distance_mean"
    assert result_key("fid", "fashion_classifier") == "frechet_classifier_distance"
    assert result_key("isc", "fashion_classifier") == "classifier_score_mean"


def test_reference_cache_name_separates_dataset_split_resolution_and_weights(tmp_path):
    cfg = make_cfg(tmp_path)
    names = {metrics.reference_cache_name(cfg, "ab" * 32)}
    for change in ("split", "resolution", "builtin_size", "weights"):
        other = make_cfg(tmp_path)
        sha = "cd" * 32 if change == "weights" else "ab" * 32
        if change == "split":
            other.data.split = "test"
        elif change == "resolution":
            other.model.resolution = 64
        elif change == "builtin_size":
            other.data.builtin_size = 100
        names.add(metrics.reference_cache_name(other, sha))
    assert len(names) == 5


# ----------------------------------------------------------------------------------------------------------
# Frechet / kernel distances with the classifier (fast)


def test_frechet_classifier_distance_matches_scipy_and_is_zero_for_the_reference_itself(tmp_path, monkeypatch):
    n = 160
    reference = rectangles(n, seed=1)
    shifted = (reference + 0.5).clamp(-1, 1)  # brighter background
    use_reference(monkeypatch, reference)
    cfg = make_cfg(tmp_path)

    same = compute_metrics(BankGenerator(reference), cfg, num_samples=n, metrics=["fid"])
    moved = compute_metrics(BankGenerator(shifted), cfg, num_samples=n, metrics=["fid"])

    assert set(moved) == {"frechet_classifier_distance"}  # never reported as FID
    extractor = FashionClassifierExtractor("fashion-classifier", ["features"])
    f_gen, f_ref = features_of(extractor, shifted), features_of(extractor, reference)
    expected = frechet_sqrtm(f_gen, f_ref)
    assert expected > 1.0 and frechet_low_rank(f_gen, f_ref) == pytest.approx(expected, rel=1e-4)
    assert moved["frechet_classifier_distance"] == pytest.approx(expected, rel=1e-3)
    assert abs(same["frechet_classifier_distance"]) < 1e-3 * expected


def test_second_evaluation_reads_reference_statistics_from_cache(tmp_path, monkeypatch):
    n = 64
    reference = rectangles(n, seed=2)
    dataset = use_reference(monkeypatch, reference)
    cfg = make_cfg(tmp_path)
    generated = (reference.flip(-1) * 0.8).clamp(-1, 1)

    first = compute_metrics(BankGenerator(generated), cfg, num_samples=n, metrics=["fid", "kid"], seed=3)
    assert dataset.reads >= n  # every image (torch-fidelity also peeks at item 0)
    reads = dataset.reads
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert cached and all(name.startswith("sagan-builtin-train-32px-1ch-") for name in cached)

    second = compute_metrics(BankGenerator(generated), cfg, num_samples=n, metrics=["fid", "kid"], seed=3)
    assert dataset.reads == reads  # not one more image read
    assert second == first

    extractor = FashionClassifierExtractor("fashion-classifier", ["features"])
    f_gen, f_ref = features_of(extractor, generated), features_of(extractor, reference)
    # KID subsets hold all n images (subset size = n), so every subset gives the full-set estimate.
    assert first["kernel_classifier_distance_mean"] == pytest.approx(kid_full(f_gen, f_ref), rel=1e-4)
    assert first["kernel_classifier_distance_std"] < 1e-4 * abs(
        first["kernel_classifier_distance_mean"]
    )  # float32 sums


def test_inception_score_alone_never_builds_the_reference_set(tmp_path, monkeypatch):
    def no_dataset(data_cfg, model_cfg):
        raise AssertionError("IS does not need the reference set")

    monkeypatch.setattr(metrics, "build_dataset", no_dataset)
    out = compute_metrics(BankGenerator(rectangles(40, seed=4)), make_cfg(tmp_path), num_samples=40, metrics=["isc"])
    assert set(out) == {"classifier_score_mean", "classifier_score_std"}
    assert 1.0 <= out["classifier_score_mean"] <= 10.0  # IS lies in [1, number of classes]


def test_conditional_generator_gets_seeded_uniform_labels_and_keeps_its_mode(tmp_path, monkeypatch):
    model_cfg = ModelConfig(num_classes=3, z_dim=16, g_width=16, g_attention=[], d_attention=[])
    torch.manual_seed(0)
    generator = Generator(model_cfg).train()
    seen: list[torch.Tensor] = []
    generator.register_forward_pre_hook(lambda module, args: seen.append(args[1].clone()))
    use_reference(monkeypatch, rectangles(48, channels=3, seed=5))
    cfg = make_cfg(tmp_path, channels=3)
    cfg.model = model_cfg

    runs = [compute_metrics(generator, cfg, num_samples=48, metrics=["fid", "isc", "kid"], seed=7) for _ in range(2)]

    labels = torch.cat(seen)
    assert labels.shape == (96,) and labels.dtype == torch.int64
    assert set(labels.tolist()) == {0, 1, 2}
    assert torch.equal(labels[:48], labels[48:])  # seeded: the same labels on every call
    assert runs[0] == runs[1]
    assert all(np.isfinite(v) for v in runs[0].values())
    assert generator.training  # put back into training mode


# ----------------------------------------------------------------------------------------------------------
# Inception (slow on CPU: keep to this one test)


@pytest.mark.slow
def test_inception_path_matches_independent_frechet_and_kid(tmp_path, monkeypatch, inception_weights):
    n = 8
    reference = rectangles(n, channels=3, seed=6)
    generated = (reference + 0.4).clamp(-1, 1)
    use_reference(monkeypatch, reference)
    cfg = make_cfg(tmp_path, extractor="inception", channels=3)
    cfg.eval.inception_weights = str(inception_weights)
    # Extracting the 16 images a second time would double the slowest test: record what the extractor saw
    # and gave instead, and check its inputs against an independent uint8 conversion.
    calls: list[tuple[torch.Tensor, tuple[torch.Tensor, ...]]] = []
    forward = FeatureExtractorInceptionV3.forward

    def spy(self, x):
        out = forward(self, x)
        calls.append((x.clone(), out))
        return out

    monkeypatch.setattr(FeatureExtractorInceptionV3, "forward", spy)

    out = compute_metrics(
        BankGenerator(generated), cfg, num_samples=n, metrics=["fid", "isc", "kid"], inception_sha256=None
    )

    assert len(calls) == 2  # one batch per side: generated first, then the reference
    for (seen, _), images in zip(calls, (generated, reference)):
        expected = torch.round((images + 1) * 127.5).to(torch.uint8).expand(n, 3, 32, 32)
        assert torch.equal(seen, expected)
    # torch-fidelity requests the layers "2048" (FID, KID) and "logits_unbiased" (IS) in set order: pick by width.
    f_gen, f_ref = (next(t for t in o if t.shape[1] == 2048).double().numpy() for _, o in calls)
    assert f_gen.shape == (n, 2048) and np.abs(f_gen - f_ref).max() > 1e-3
    assert out["frechet_inception_distance"] == pytest.approx(frechet_low_rank(f_gen, f_ref), rel=1e-3)
    assert out["kernel_inception_distance_mean"] == pytest.approx(kid_full(f_gen, f_ref), rel=1e-3)
    assert 1.0 <= out["inception_score_mean"] < 1008 and np.isfinite(out["inception_score_std"])


# ----------------------------------------------------------------------------------------------------------
# Weights: placement, download failure, hash


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub" / "checkpoints"


def test_missing_weights_give_one_line_saying_where_to_put_them(hub, monkeypatch):
    with pytest.raises(MetricsError) as err:
        resolve_inception_weights(download=False)
    message = str(err.value)
    assert "\n" not in message and str(hub) in message and INCEPTION_FILENAMES[0] in message

    def offline(url, dst, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(MetricsError, match="download failed") as err:
        resolve_inception_weights()
    assert "\n" not in str(err.value)


def test_missing_explicit_weights_file_stops_compute_metrics(tmp_path):
    cfg = make_cfg(tmp_path, extractor="inception")
    cfg.eval.inception_weights = str(tmp_path / "nope.pth")
    with pytest.raises(MetricsError, match="does not exist"):
        compute_metrics(BankGenerator(rectangles(4)), cfg, num_samples=4)


def test_weights_in_the_hub_cache_are_found_under_either_name_and_hash_checked(hub):
    hub.mkdir(parents=True)
    placed = hub / INCEPTION_FILENAMES[1]  # pytorch-fid's name
    placed.write_bytes(b"not the published weights")
    assert resolve_inception_weights(expected_sha256=sha256_of(placed)) == placed
    assert resolve_inception_weights(expected_sha256=None) == placed
    with pytest.raises(MetricsError, match="refusing to load") as err:
        resolve_inception_weights()  # the published hash
    assert "\n" not in str(err.value)


def test_hash_mismatch_is_refused_before_anything_unpickles(tmp_path, monkeypatch):
    bogus = tmp_path / "weights.pth"
    torch.save({"fc.weight": torch.zeros(1)}, bogus)
    cfg = make_cfg(tmp_path, extractor="inception")
    cfg.eval.inception_weights = str(bogus)

    def never(*args, **kwargs):
        raise AssertionError("torch.load reached with unverified weights")

    monkeypatch.setattr(torch, "load", never)
    with pytest.raises(MetricsError, match="sha256"):
        compute_metrics(BankGenerator(rectangles(4)), cfg, num_samples=4)


def test_bad_arguments_are_metrics_errors(tmp_path):
    cfg = make_cfg(tmp_path)
    with pytest.raises(MetricsError, match="subset of fid, isc, kid"):
        compute_metrics(BankGenerator(rectangles(4)), cfg, num_samples=4, metrics=["ppl"])
    with pytest.raises(MetricsError, match="at least 2"):
        compute_metrics(BankGenerator(rectangles(4)), cfg, num_samples=1)
