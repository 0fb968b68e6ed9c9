"""FID, Inception Score and KID through torch-fidelity, behind one call with cached reference statistics;
and `evaluate(generator, cfg, names)`, which computes any mix of gan/registry.py's metrics.

`compute_metrics(generator, cfg)` compares `num_samples` generated images with the training dataset
(`gan.data.build_dataset(cfg.data, cfg.model)`). Both sides reach the feature network as uint8 RGB
(B, 3, R, R), mapped from [-1, 1] exactly as image files are (`gan.grids.images_to_uint8`), so evaluating a
generator and evaluating its PNGs give the same numbers. The reference side's features and statistics
are cached by torch-fidelity under a name that encodes the dataset, split, resolution and the feature
network's weights (`reference_cache_name`), so later evaluations only pay for the generated side.

Two feature networks (`cfg.eval.feature_extractor`):
- `inception`: torch-fidelity's TF-compatible InceptionV3; the weights file is verified by sha256 before
  anything unpickles it (`resolve_inception_weights`). Keys are torch-fidelity's own
  (`frechet_inception_distance`, `inception_score_mean`, `kernel_inception_distance_mean`, ...).
- `fashion_classifier`: the small Fashion-MNIST CNN of gan/classifier.py, for CPU experiments. Its scores
  are NOT FID/IS/KID and are reported under other keys (`frechet_classifier_distance`, ...).
See docs/metrics.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
import torch_fidelity
from torch import Tensor, nn
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.generative_model_base import GenerativeModelBase

from gan import classifier, registry
from gan.config import Config
from gan.data import build_dataset
from gan.files import sha256_of, write_text
from gan.grids import images_to_uint8
from gan.registry import CLASSIFIER_KEYS, MetricsError

# The published weights (pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` and torch-fidelity's
# re-upload `weights-inception-2015-12-05-6726825d.pth` are the same 95,628,359 bytes). The hash is the
# one several public projects pin for that file; its first 8 hex digits are the suffix of the file name.
INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
INCEPTION_FILENAMES = ("weights-inception-2015-12-05-6726825d.pth", "pt_inception-2015-12-05-6726825d.pth")
METRICS = ("fid", "isc", "kid")  # torch-fidelity's flags
KID_SUBSET_SIZE = 1000  # torch-fidelity's default, lowered to the number of images when there are fewer
ISC_SPLITS = 10  # torch-fidelity's default, lowered to keep at least 2 images per split
PRC_REAL_SEED = 271_828  # the fixed sample of real images that precision/recall compares with
COPY_QUANTILE = 0.05  # gan/memorisation.py's copy_fraction quantile
PAIRS_IN_GRID = 16  # closest (sample, training image) pairs in evaluate.py's grid
REFERENCE_CACHE_VERSION = 1  # bump when the reference pipeline changes meaning, to orphan old caches

# cfg.eval.feature_extractor -> torch-fidelity extractor name (its keys are renamed by registry.CLASSIFIER_KEYS).
_FIDELITY_NAMES = {"inception": "inception-v3-compat", "fashion_classifier": classifier.FEATURE_EXTRACTOR_NAME}


# ----------------------------------------------------------------------------------------------------------
# Weights


def _hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _where_to_put_weights() -> str:
    return (
        f"put {INCEPTION_FILENAMES[0]} (or pytorch-fid's {INCEPTION_FILENAMES[1]}, the same file, "
        f"sha256 {INCEPTION_SHA256[:16]}...) in {_hub_checkpoints()}/ or pass its path with "
        f"--inception-weights / eval.inception_weights (it downloads from {URL_INCEPTION_V3})"
    )


def resolve_inception_weights(
    path: str | Path | None = None, *, expected_sha256: str | None = INCEPTION_SHA256, download: bool = True
) -> Path:
    """Find the InceptionV3 weights file and verify it; raise MetricsError (one line) when missing or wrong.

    Order: `path` when given; else either file name in the torch hub checkpoints cache
    (torch.hub.get_dir()/checkpoints/); else, when `download`, torch-fidelity's own URL into that cache.
    The file is a pickle, so its sha256 must equal `expected_sha256` before anything loads it.
    `expected_sha256=None` skips the check: only for weights you made yourself (tests).
    """
    if path:
        weights = Path(path).expanduser()
        if not weights.is_file():
            raise MetricsError(f"Inception weights file '{weights}' does not exist; {_where_to_put_weights()}")
    else:
        found = [_hub_checkpoints() / name for name in INCEPTION_FILENAMES if (_hub_checkpoints() / name).is_file()]
        if found:
            weights = found[0]
        elif download:
            weights = _hub_checkpoints() / INCEPTION_FILENAMES[0]
            weights.parent.mkdir(parents=True, exist_ok=True)
            try:
                torch.hub.download_url_to_file(URL_INCEPTION_V3, str(weights), progress=False)
            except Exception as exc:  # offline: URLError, timeouts, HTTP errors
                raise MetricsError(
                    f"Inception weights are not cached and the download failed ({type(exc).__name__}); "
                    f"{_where_to_put_weights()}"
                ) from None
        else:
            raise MetricsError(f"Inception weights not found; {_where_to_put_weights()}")
    if expected_sha256 is not None:
        actual = sha256_of(weights)
        if actual != expected_sha256:
            raise MetricsError(
                f"Inception weights '{weights}' have sha256 {actual[:16]}..., not the published "
                f"{expected_sha256[:16]}... (corrupt or a different file); refusing to load them; "
                f"{_where_to_put_weights()}"
            )
    return weights


def _extractor_weights(cfg: Config, inception_sha256: str | None) -> Path:
    if cfg.eval.feature_extractor == "inception":
        return resolve_inception_weights(cfg.eval.inception_weights or None, expected_sha256=inception_sha256)
    if not classifier.DEFAULT_WEIGHTS.is_file():
        raise MetricsError(
            f"classifier weights '{classifier.DEFAULT_WEIGHTS}' are missing; "
            "run `python tools/train_fashion_classifier.py` or restore assets/ from git"
        )
    return classifier.DEFAULT_WEIGHTS


# ----------------------------------------------------------------------------------------------------------
# The two inputs


def to_uint8(images: Tensor) -> Tensor:
    """(B, C, H, W) in [-1, 1], C in {1, 3} -> uint8 (B, 3, H, W) on the CPU (gray replicated to RGB)."""
    return torch.from_numpy(images_to_uint8(images)).permute(0, 3, 1, 2).contiguous()  # (B, 3, H, W)


class GeneratorSource(GenerativeModelBase):
    """A generator as torch-fidelity's generated input: z -> uint8 (B, 3, R, R).

    Conditional generators get labels drawn here, uniformly over classes from a generator seeded with
    `seed` (torch-fidelity's own label path uses `np.int`, gone from numpy, so `num_classes` is 0 towards
    it). The generator is not registered as a submodule: torch-fidelity's `.cuda()` on this wrapper does not
    move it; it runs where it lives and z is moved to it.
    """

    def __init__(self, generator: nn.Module, seed: int = 0) -> None:
        super().__init__()
        object.__setattr__(self, "generator", generator)  # plain attribute: see the class docstring
        self.labels = torch.Generator().manual_seed(seed)

    @property
    def z_size(self) -> int:
        return int(self.generator.z_dim)

    @property
    def z_type(self) -> str:
        return "normal"

    @property
    def num_classes(self) -> int:
        return 0

    def forward(self, z: Tensor) -> Tensor:
        device = next(self.generator.parameters()).device
        y = None
        if self.generator.num_classes > 0:
            y = torch.randint(self.generator.num_classes, (z.shape[0],), generator=self.labels).to(device)
        return to_uint8(self.generator(z.to(device), y)).to(z.device)


class ReferenceImages(Dataset):
    """The training dataset as uint8 (3, R, R) tensors; built on first use, so a cache hit never builds it.

    The whole dataset, without flips, whatever data.subset says (FID/FCD and precision/recall compare with the
    data distribution, and share one cache however many images a run trained on); `subset=True` keeps
    data.subset: the images the model saw, for the copy check. Labels are never read, so the dataset is built
    as for an unconditional model: a conditional generator (which draws its own labels) is scored against an
    unlabelled folder too, while training keeps checking that the model's classes are the dataset's."""

    def __init__(self, cfg: Config, subset: bool = False) -> None:
        self.data_cfg = dataclasses.replace(cfg.data, random_flip=False, subset=cfg.data.subset if subset else 0)
        self.model_cfg = dataclasses.replace(cfg.model, num_classes=0)  # images only: see the class docstring
        self._dataset: Dataset | None = None

    @property
    def dataset(self) -> Dataset:
        if self._dataset is None:
            self._dataset = build_dataset(self.data_cfg, self.model_cfg)
        return self._dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Tensor:
        image, _ = self.dataset[index]
        return to_uint8(image[None])[0]  # (3, R, R)


def reference_cache_name(cfg: Config, weights_sha256: str, subset: bool = False) -> str:
    """torch-fidelity's input2_cache_name: one per dataset, split, resolution, channels and feature weights
    (and data.subset for `ReferenceImages(cfg, subset=True)`; the full set keeps its old name)."""
    d, m = cfg.data, cfg.model
    identity = {"version": REFERENCE_CACHE_VERSION, "dataset": d.dataset, "split": d.split,
                "resolution": m.resolution, "channels": m.image_channels}  # fmt: skip
    if subset and d.subset:
        identity["subset"] = d.subset
    if d.dataset == "builtin":
        identity["builtin_size"] = d.builtin_size
        if d.builtin_variant != "objects":  # the objects variant keeps its old cache name
            identity["builtin_variant"] = d.builtin_variant
    if d.dataset == "folder":
        identity["root"] = str(Path(d.root).expanduser().resolve())
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]
    return f"sagan-{d.dataset}-{d.split}-{m.resolution}px-{m.image_channels}ch-{digest}-w{weights_sha256[:8]}"


def cache_root(cfg: Config) -> Path:
    return Path(cfg.eval.cache_dir or "~/.cache/sagan").expanduser()


# ----------------------------------------------------------------------------------------------------------
# The call


def evaluate(
    generator: nn.Module,
    cfg: Config,
    names: list[str] | None = None,
    *,
    num_samples: int | None = None,
    device: Any = "cpu",
    seed: int = 0,
    **options: Any,
) -> dict[str, float]:
    """Every named metric (default cfg.eval.metrics) of `generator`, one call per compute function, merged.

    `num_samples` defaults to cfg.eval.num_samples; `seed` fixes every random draw; `options` go to the compute
    functions (e.g. `inception_sha256=None` in tests)."""
    names = list(names if names is not None else cfg.eval.metrics)
    registry.check_metrics(names, cfg.data.dataset)
    if num_samples is None:
        num_samples = cfg.eval.num_samples
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(registry.METRICS[name].compute, []).append(name)
    scores: dict[str, float] = {}
    for target, group in groups.items():
        scores.update(
            registry.resolve(target)(
                generator, cfg, group, num_samples=num_samples, device=device, seed=seed, **options
            )
        )
    return scores


def compute_metrics(
    generator: nn.Module,
    cfg: Config,
    *,
    num_samples: int | None = None,
    metrics: list[str] | None = None,
    device: str = "cpu",
    seed: int = 0,
    inception_sha256: str | None = INCEPTION_SHA256,
    verbose: bool = False,
) -> dict[str, float]:
    """Score `num_samples` (default cfg.eval.num_samples) generated images against the training dataset.

    `metrics` defaults to the torch-fidelity ones among cfg.eval.metrics (fid, isc, kid; the others are
    gan/registry.py's: `evaluate` computes any mix); `device` is where the feature network
    runs (torch-fidelity's `.cuda()`: the current CUDA device for any "cuda[:N]"); the generator runs where
    it lives and is left in its train/eval mode afterwards. `seed` fixes z,
    labels, KID subsets and IS splits. `inception_sha256=None` skips the weights check (tests only).
    Returns torch-fidelity's keys, or the classifier keys for cfg.eval.feature_extractor="fashion_classifier".
    """
    metrics = list(metrics if metrics is not None else [m for m in cfg.eval.metrics if m in METRICS])
    num_samples = num_samples if num_samples is not None else cfg.eval.num_samples
    unknown = [m for m in metrics if m not in METRICS]
    if not metrics or unknown:
        raise MetricsError(f"metrics must be a non-empty subset of {', '.join(METRICS)}; got {metrics}")
    if num_samples < 2:
        raise MetricsError(f"evaluation needs at least 2 generated images; got num_samples={num_samples}")
    if cfg.eval.feature_extractor not in _FIDELITY_NAMES:
        raise MetricsError(f"eval.feature_extractor must be one of {', '.join(_FIDELITY_NAMES)}")
    cuda = torch.device(device).type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise MetricsError(f"device '{device}' requested but CUDA is not available; use --device cpu")

    weights = _extractor_weights(cfg, inception_sha256)
    options: dict = {f: f in metrics for f in METRICS}
    if "fid" in metrics or "kid" in metrics:  # IS alone never looks at the reference set
        reference = ReferenceImages(cfg)
        options["input2"] = reference
        options["input2_cache_name"] = reference_cache_name(cfg, sha256_of(weights))
        options["cache_root"] = str(cache_root(cfg))
    if "kid" in metrics:  # KID draws subsets of this size from both sides (len() builds, never iterates)
        options["kid_subset_size"] = min(KID_SUBSET_SIZE, num_samples, len(reference))
    if "isc" in metrics:  # at least 2 images per split
        options["isc_splits"] = max(1, min(ISC_SPLITS, num_samples // 2))
    was_training = generator.training
    generator.eval()
    try:
        result = torch_fidelity.calculate_metrics(
            input1=GeneratorSource(generator, seed=seed),
            input1_model_num_samples=num_samples,
            feature_extractor=_FIDELITY_NAMES[cfg.eval.feature_extractor],
            feature_extractor_weights_path=str(weights),
            batch_size=cfg.eval.batch_size,
            rng_seed=seed,
            cuda=cuda,
            save_cpu_ram=True,  # no DataLoader worker processes for the reference set
            verbose=verbose,
            **options,
        )
    finally:
        generator.train(was_training)
    rename = CLASSIFIER_KEYS if cfg.eval.feature_extractor == "fashion_classifier" else {}
    return {rename.get(key, key): float(value) for key, value in result.items()}


def fidelity_scores(generator: nn.Module, cfg: Config, names: list[str], **kwargs) -> dict[str, float]:
    """The registry's entry for fid, isc and kid (gan/registry.py): one torch-fidelity call for all of them."""
    kwargs.pop("pairs_grid", None)  # the copy metric's option
    return compute_metrics(generator, cfg, metrics=names, **kwargs)


# ----------------------------------------------------------------------------------------------------------
# Precision / recall and the copy check (gan/memorisation.py) on the same features


def memorisation_scores(
    generator: nn.Module,
    cfg: Config,
    names: list[str],
    *,
    num_samples: int,
    device: str | torch.device = "cpu",
    seed: int = 0,
    inception_sha256: str | None = INCEPTION_SHA256,
    verbose: bool = False,
    pairs_grid: str | Path | None = None,
) -> dict[str, float]:
    """The registry's `prc` and `copy`: `num_samples` generated images (gan.sampling.sample_images, fixed by `seed`)
    in the FID feature space of cfg.eval.feature_extractor.

    prc: precision / recall / f_score against a fixed sample (PRC_REAL_SEED) of `num_samples` images of the full
    training set. copy: copy_fraction against every image of the training subset (data.subset), the
    train-to-train threshold cached beside the features. `pairs_grid`: also write the closest pairs there (PNG)."""
    from gan import memorisation
    from gan.sampling import sample_images

    if num_samples <= memorisation.PRC_NEIGHBOURS:
        raise MetricsError(
            f"prc/copy need more than {memorisation.PRC_NEIGHBOURS} generated images; got num_samples={num_samples}"
        )
    weights = _extractor_weights(cfg, inception_sha256)
    cuda = torch.device(device).type == "cuda"
    name = _FIDELITY_NAMES[cfg.eval.feature_extractor]
    layer = torch_fidelity.utils.resolve_feature_layer_for_metric("prc", feature_extractor=name)
    extractor = torch_fidelity.utils.create_feature_extractor(
        name, [layer], cuda=cuda, feature_extractor_weights_path=str(weights), verbose=verbose
    )
    images = sample_images(generator, num_samples, seed)  # (N, C, R, R) in [-1, 1], CPU
    with torch.no_grad():
        generated = torch.cat([
            extractor.convert_features_tuple_to_dict(extractor(to_uint8(chunk).to("cuda" if cuda else "cpu")))[layer].cpu()
            for chunk in images.split(cfg.eval.batch_size)
        ])  # fmt: skip
    sha = sha256_of(weights)
    options = {"batch_size": cfg.eval.batch_size, "cuda": cuda, "save_cpu_ram": True, "verbose": verbose,
               "cache_root": str(cache_root(cfg))}  # fmt: skip

    def reference(subset: bool) -> tuple[Tensor, str]:
        cache_name = reference_cache_name(cfg, sha, subset=subset)
        features = torch_fidelity.utils.extract_featuresdict_from_input_id_cached(
            1, extractor, input1=ReferenceImages(cfg, subset=subset), input1_cache_name=cache_name, **options
        )[layer]
        return features, cache_name

    scores: dict[str, float] = {}
    if "prc" in names:
        real, _ = reference(subset=False)
        pick = torch.randperm(len(real), generator=torch.Generator().manual_seed(PRC_REAL_SEED))[:num_samples]
        scores.update(memorisation.precision_recall(generated, real[pick]))
    if "copy" in names:
        train, cache_name = reference(subset=True)
        threshold_file = cache_root(cfg) / f"{cache_name}-{name}-copy-threshold-q{COPY_QUANTILE}.json"
        if threshold_file.is_file():
            threshold = json.loads(threshold_file.read_text())["threshold"]
        else:
            threshold = memorisation.copy_threshold(train, COPY_QUANTILE)
            write_text(threshold_file, json.dumps({"threshold": threshold}))
        scores.update(memorisation.copy_fraction(generated, train, threshold=threshold))
        if pairs_grid is not None:
            order, nearest, _ = memorisation.closest_pairs(generated, train, k=min(PAIRS_IN_GRID, num_samples))
            reference_images = ReferenceImages(cfg, subset=True).dataset
            neighbours = torch.stack([reference_images[int(i)][0] for i in nearest])
            memorisation.save_pairs_grid(images[order], neighbours.to(images.dtype), pairs_grid)
    return scores
