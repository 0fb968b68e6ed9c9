"""gan/registry.py: every registered dataset and metric works end to end, and the registry drives config
validation, evaluate.py --metrics and the best-checkpoint choice."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

import evaluate as evaluate_cli
from gan.config import ConfigError, load_config
from gan.data import build_dataset
from gan.metrics import evaluate
from gan.models import Generator
from gan.pretrained import export_generator
from gan.registry import DATASETS, METRICS, MetricsError, higher_is_better, result_key
from gan.synthetic import CoherenceDataset
from gan.train_loop import Trainer

from shared import TINY_MODEL


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_registered_dataset_builds_from_its_files(name, tmp_path, dataset_on_disk):
    entry = DATASETS[name]
    overrides = dataset_on_disk(name, tmp_path / "data")
    for split in entry.splits or ("train",):
        cfg = load_config(None, [*overrides, f"model.resolution={entry.resolution}", "model.g_attention=[]",
                                 "model.d_attention=[]", "model.image_channels=3", f"data.split={split}",
                                 "data.builtin_size=16"])  # fmt: skip
        dataset = build_dataset(cfg.data, cfg.model)
        assert len(dataset) > 0 and dataset.num_classes == entry.num_classes
        items = [dataset[i] for i in range(min(len(dataset), 8))]
        r = entry.resolution
        for image, label in items:
            assert image.shape == (3, r, r) and image.min() >= -1 and image.max() <= 1
            assert 0 <= label < max(entry.num_classes, 1)
        # the registered native channels: a grayscale source reaches RGB as three equal planes, an RGB one does not
        gray = all(torch.equal(img[0], img[1]) and torch.equal(img[1], img[2]) for img, _ in items)
        assert gray == (entry.channels == 1), name


def test_builtin_classes_are_the_datasets_own():
    assert DATASETS["builtin"].num_classes == CoherenceDataset.num_classes


class DatasetImages(torch.nn.Module):
    """A 'generator' whose samples are the built-in dataset's images: coherence exactly 1 by construction."""

    z_dim, num_classes = 8, 0

    def __init__(self, blank: bool = False) -> None:
        super().__init__()
        self.data, self.blank, self.w = (
            CoherenceDataset(size=64, resolution=32),
            blank,
            torch.nn.Parameter(torch.zeros(1)),
        )
        self.seen = 0

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        n = z.shape[0]
        images = torch.stack([self.data[(self.seen + i) % 64][0] for i in range(n)])
        self.seen += n
        return torch.full_like(images, -1.0) if self.blank else images


def test_coherence_metric_is_one_on_the_data_and_zero_on_blank_images():
    cfg = load_config(None, [])
    scores = evaluate(DatasetImages(), cfg, ["coherence"], num_samples=300)  # five passes, the last padded
    assert scores == {"coherence": 1.0, "valid": 1.0, "shape_iou": 1.0, "colour_agreement": 1.0}
    assert evaluate(DatasetImages(blank=True), cfg, ["coherence"], num_samples=8)["coherence"] == 0.0


@pytest.mark.parametrize("name", sorted(METRICS))
def test_every_registered_metric_scores_a_generator(name, tmp_path):
    entry = METRICS[name]
    dataset = (entry.datasets or ("builtin",))[0]
    cfg = load_config(None, [*TINY_MODEL, f"data.dataset={dataset}", "data.builtin_size=32",
                             "eval.feature_extractor=fashion_classifier", f"eval.cache_dir={tmp_path}"])  # fmt: skip
    torch.manual_seed(0)
    G = Generator(cfg.model)
    first = evaluate(G, cfg, [name], num_samples=16, seed=3)
    key = result_key(name, cfg.eval.feature_extractor)
    assert key in first and torch.isfinite(torch.tensor(first[key]))
    assert evaluate(G, cfg, [name], num_samples=16, seed=3) == first  # the seed fixes every draw
    assert entry.direction in ("lower", "higher") and set(entry.needs) <= {"generator", "reference", "features"}


def test_metrics_on_the_wrong_dataset_or_unknown_are_one_line():
    cfg = load_config(None, ["data.dataset=fashion_mnist", "model.image_channels=1"])
    with pytest.raises(
        MetricsError, match="metric 'coherence' is defined only on data.dataset builtin, not 'fashion_mnist'"
    ):
        evaluate(torch.nn.Identity(), cfg, ["coherence"])
    with pytest.raises(MetricsError, match="subset of fid, isc, kid, prc, copy, coherence"):
        evaluate(torch.nn.Identity(), cfg, ["ppl"])
    with pytest.raises(ConfigError, match="'eval.best_metric' accepts fid, isc, kid, prc, copy, coherence; got 'psnr'"):
        load_config(None, ["eval.best_metric=psnr"])
    assert load_config(None, ["eval.metrics=[coherence,fid]"]).eval.metrics == ["coherence", "fid"]


def test_evaluate_cli_scores_coherence_and_refuses_other_datasets(tmp_path, capsys):
    cfg = load_config(None, TINY_MODEL)
    torch.manual_seed(0)
    G = Generator(cfg.model).eval()
    export_generator(tmp_path / "gen", G, cfg)
    out = tmp_path / "scores.json"
    assert evaluate_cli.main(["--checkpoint", str(tmp_path / "gen"), "--metrics", "coherence", "--num", "12",
                              "--json", str(out)]) == 0  # fmt: skip
    scores = json.loads(out.read_text())
    assert scores["coherence"] == evaluate(G, cfg, ["coherence"], num_samples=12)["coherence"]
    capsys.readouterr()
    fashion = load_config(None, [*TINY_MODEL, "data.dataset=fashion_mnist", "model.image_channels=1"])
    export_generator(tmp_path / "gen1", Generator(fashion.model), fashion)
    with pytest.raises(SystemExit) as stop:
        evaluate_cli.main(["--checkpoint", str(tmp_path / "gen1"), "--metrics", "coherence"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "defined only on data.dataset builtin" in err


@pytest.mark.parametrize(
    "best_metric, metrics, history, expected",
    [
        ("fid", ["fid"], [5.0, 3.0, 4.0], [True, True, False]),  # lower is better
        ("coherence", ["coherence", "fid"], [0.2, 0.5, 0.4], [True, True, False]),  # higher is better
        ("fid", ["isc"], [1.0, 2.0], [False, False]),  # not evaluated: no best (as before the registry)
    ],
)
def test_best_checkpoint_follows_the_registered_direction(best_metric, metrics, history, expected):
    cfg = load_config(None, [f"eval.best_metric={best_metric}", f"eval.metrics=[{','.join(metrics)}]",
                             "eval.feature_extractor=fashion_classifier"])  # fmt: skip
    assert higher_is_better(best_metric) == (best_metric == "coherence")
    trainer = SimpleNamespace(cfg=cfg, best={})
    got = []
    for step, value in enumerate(history):
        key = result_key(best_metric, "fashion_classifier")
        improved, k = Trainer.is_new_best(trainer, {key: value})
        got.append(improved)
        if improved:
            trainer.best = {"metric": k, "value": value, "step": step}
    assert got == expected


def test_copy_metric_flags_a_generator_that_returns_training_images_and_draws_the_pairs(tmp_path):
    """A 'generator' whose samples ARE training images copies everything (distance 0 < the 5% threshold);
    fresh random G is not a copier. FID/prc's reference is the full set, copy's the data.subset."""
    from gan.metrics import ReferenceImages, memorisation_scores, reference_cache_name

    cfg = load_config(None, [*TINY_MODEL, "data.builtin_size=64", "eval.feature_extractor=fashion_classifier",
                             f"eval.cache_dir={tmp_path}"])  # fmt: skip
    grid = tmp_path / "pairs.png"
    copier = memorisation_scores(DatasetImages(), cfg, ["copy", "prc"], num_samples=32, pairs_grid=grid)
    assert copier["copy_fraction"] == 1.0 and copier["nn_distance_median"] < 1e-4 < copier["copy_threshold"]
    assert 0 <= copier["precision"] <= 1 and 0 <= copier["recall"] <= 1
    assert grid.is_file() and grid.stat().st_size > 0
    torch.manual_seed(0)
    assert evaluate(Generator(cfg.model), cfg, ["copy"], num_samples=32)["copy_fraction"] < 0.5
    subset = load_config(None, [*TINY_MODEL, "data.builtin_size=64", "data.subset=16"])
    assert len(ReferenceImages(subset)) == 64 and len(ReferenceImages(subset, subset=True)) == 16
    assert reference_cache_name(subset, "ab" * 32) == reference_cache_name(cfg, "ab" * 32)  # FID shares the cache
    assert reference_cache_name(subset, "ab" * 32, subset=True) != reference_cache_name(cfg, "ab" * 32)
