"""Generators on the Hugging Face Hub, offline: save/load in the export format, a pre-filled Hub cache,
push_to_hub with the upload mocked, Hub ids as `--checkpoint`, and the model card of every export."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from unittest import mock

import huggingface_hub
import numpy as np
import pytest
import torch
from huggingface_hub import constants as hub_constants
from PIL import Image
from safetensors.torch import load_file

import evaluate as evaluate_cli
import sample as sample_cli
from gan import hub
from gan.checkpoint import CheckpointError
from gan.config import Config, ModelConfig
from gan.models import Discriminator, Generator, load_generator
from gan.pretrained import export_generator

REPO = "sagan-tests/tiny-generator"
REVISION = "0123456789abcdef0123456789abcdef01234567"


def tiny_generator(num_classes: int = 0) -> tuple[Generator, Config]:
    cfg = Config(model=ModelConfig(g_width=8, d_width=8, z_dim=16, num_classes=num_classes))
    torch.manual_seed(0)
    G = Generator(cfg.model)
    with torch.no_grad():  # a trained-looking G: attention switched on, BN statistics away from 0/1
        G.blocks.attn16.gamma.fill_(0.5)
        for m in G.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return G.eval(), cfg


def images_u8(G: Generator, seed: int = 0, n: int = 4) -> bytes:
    """n images of fixed latents, as uint8 bytes (the form every output of sample.py takes)."""
    z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(seed))
    y = torch.arange(n) % G.num_classes if G.num_classes else None
    with torch.no_grad():
        x = G.eval()(z, y)
    return np.clip(np.rint((x.double().numpy() + 1) * 127.5), 0, 255).astype(np.uint8).tobytes()


@pytest.fixture
def offline_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hub cache in tmp_path, with the Hub unreachable by configuration (HF_HUB_OFFLINE=1)."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)  # read at call time by huggingface_hub
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    return cache


def fill_cache(cache: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """Lay `files` out as huggingface_hub's cache does: blobs named by hash, snapshot symlinks, refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / REVISION
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / name)
    return snapshot


def test_hub_ids_are_owner_slash_name_and_never_an_existing_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    assert hub.is_hub_id("owner/name") and hub.is_hub_id("my-org/sagan_32.v2")
    assert not hub.is_hub_id("runs/demo")  # exists: a local path wins
    for text in ("name", "a/b/c", "/abs/path", "./x", "../x/y", "owner/", "owner/..", "-x/y"):
        assert not hub.is_hub_id(text), text
    assert hub.local_path("runs/demo") == Path("runs/demo")


def test_save_pretrained_writes_the_export_format_and_round_trips_bit_for_bit(tmp_path):
    G, cfg = tiny_generator(num_classes=3)
    G.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == sorted(hub.EXPORT_FILES + hub.CARD_FILES)
    meta = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert meta["format"] == "sagan-generator" and meta["config"]["model"]["num_classes"] == 3
    weights = load_file(str(tmp_path / "saved" / "generator.safetensors"))
    assert weights.keys() == G.state_dict().keys()

    # the same files as export_generator: exports and Hub repos are one format
    export_generator(tmp_path / "export", G, cfg)
    for name in hub.EXPORT_FILES + hub.CARD_FILES:
        assert (tmp_path / "export" / name).read_bytes() == (tmp_path / "saved" / name).read_bytes(), name

    loaded = Generator.from_pretrained(tmp_path / "saved")
    assert isinstance(loaded, Generator) and loaded.run_config == cfg
    assert images_u8(loaded) == images_u8(G)
    # and once more through save_pretrained of the loaded model
    loaded.save_pretrained(tmp_path / "again")
    assert images_u8(Generator.from_pretrained(tmp_path / "again")) == images_u8(G)


def test_save_pretrained_refuses_a_directory_with_other_files(tmp_path):
    G, _ = tiny_generator()
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="other files"):
        G.save_pretrained(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_load_from_a_prefilled_hub_cache_offline(tmp_path, offline_cache, capsys):
    G, cfg = tiny_generator()
    export_generator(tmp_path / "export", G, cfg)
    files = {name: (tmp_path / "export" / name).read_bytes() for name in hub.EXPORT_FILES}
    snapshot = fill_cache(offline_cache, REPO, files)

    assert hub.local_path(REPO) == snapshot
    loaded, loaded_cfg = load_generator(REPO)
    assert loaded_cfg == cfg and images_u8(loaded) == images_u8(G)
    assert images_u8(Generator.from_pretrained(REPO)) == images_u8(G)

    # sample.py with a Hub id writes the same bytes as with the local export
    assert sample_cli.main(["--checkpoint", REPO, "--num", "5", "--npz", str(tmp_path / "hub.npz")]) == 0
    assert (
        sample_cli.main(["--checkpoint", str(tmp_path / "export"), "--num", "5", "--npz", str(tmp_path / "dir.npz")])
        == 0
    )
    assert np.load(tmp_path / "hub.npz")["arr_0"].tobytes() == np.load(tmp_path / "dir.npz")["arr_0"].tobytes()
    capsys.readouterr()

    # the explorer reads the same snapshot (an export: G only)
    from gan.explorer import load_models

    models = load_models(REPO)
    assert models.discriminator is None and images_u8(models.generator) == images_u8(G)

    # a repo that is not in the cache: one line, exit status 2, nothing contacted (sample.py and evaluate.py)
    for cli, args in (
        (sample_cli, ["--npz", str(tmp_path / "x.npz")]),
        (evaluate_cli, ["--json", str(tmp_path / "x.json")]),
    ):
        with pytest.raises(SystemExit) as exc:
            cli.main(["--checkpoint", "sagan-tests/missing", *args])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "sagan-tests/missing" in err and "could not be fetched" in err
    assert not (tmp_path / "x.npz").exists() and not (tmp_path / "x.json").exists()


def test_a_damaged_file_in_the_hub_cache_is_refused_by_the_local_loader(tmp_path, offline_cache):
    G, cfg = tiny_generator()
    export_generator(tmp_path / "export", G, cfg)
    blob = (tmp_path / "export" / "generator.safetensors").read_bytes()
    fill_cache(
        offline_cache,
        REPO,
        {"config.json": (tmp_path / "export" / "config.json").read_bytes(), "generator.safetensors": blob[:-40]},
    )
    with pytest.raises(CheckpointError, match="generator.safetensors"):
        load_generator(REPO)


def test_push_to_hub_uploads_the_export_and_card_without_contacting_the_hub(tmp_path, offline_cache):
    G, cfg = tiny_generator()
    uploaded: dict[str, bytes] = {}

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        uploaded.update({p.name: p.read_bytes() for p in Path(folder_path).iterdir()})
        return f"https://huggingface.co/{repo_id}/commit/fake"

    created = mock.Mock(return_value=mock.Mock(repo_id=REPO))
    with (
        mock.patch.object(huggingface_hub.HfApi, "create_repo", created),
        mock.patch.object(huggingface_hub.HfApi, "upload_folder", upload_folder),
    ):
        url = G.push_to_hub(REPO)
    assert url.endswith("/commit/fake")
    assert created.call_args.kwargs["repo_id"] == REPO
    assert sorted(uploaded) == sorted(hub.EXPORT_FILES + hub.CARD_FILES)
    # what would be uploaded is exactly what export_generator writes, and it loads back bit for bit
    export_generator(tmp_path / "export", G, cfg)
    for name, data in uploaded.items():
        assert data == (tmp_path / "export" / name).read_bytes(), name
    snapshot_files = {name: uploaded[name] for name in hub.EXPORT_FILES}
    fill_cache(offline_cache, REPO, snapshot_files)
    assert images_u8(Generator.from_pretrained(REPO)) == images_u8(G)


def test_model_card_has_config_parameter_counts_scores_and_the_sample_grid(tmp_path):
    G, cfg = tiny_generator()
    run = tmp_path / "run"
    run.mkdir()
    lines = [
        {"step": 10, "time": 1.0, "loss_d": 1.5, "images_per_s": 100.0, "gamma/G.blocks.attn16": 0.1},
        {"step": 20, "time": 2.0, "frechet_inception_distance": 123.456, "inception_score_mean": 2.5},
        {"step": 40, "time": 3.0, "frechet_inception_distance": 99.5, "inception_score_mean": 3.25},
    ]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n{cut by a cr")
    export_generator(run / "generator", G, cfg)
    card = (run / "generator" / "README.md").read_text()

    g_params = sum(p.numel() for p in G.parameters())
    d_params = sum(p.numel() for p in Discriminator(cfg.model).parameters())
    assert f"| generator | {g_params:,} |" in card and f"| discriminator | {d_params:,} |" in card
    assert "| step | frechet_inception_distance | inception_score_mean |" in card
    assert "| 20 | 123.5 | 2.5 |" in card and "| 40 | 99.5 | 3.25 |" in card
    assert "loss_d" not in card and "images_per_s" not in card  # training values are no evaluation
    assert (
        json.loads(card.split("```json\n")[1].split("\n```")[0])
        == json.loads((run / "generator" / "config.json").read_text())["config"]
    )
    assert card.startswith("---\nlibrary_name: sagan\n") and "![samples](samples.png)" in card

    # samples.png is what `sample.py --num 16 --seed 0` writes for this export
    assert (
        sample_cli.main(
            ["--checkpoint", str(run / "generator"), "--num", "16", "--seed", "0", "--grid", str(tmp_path / "s.png")]
        )
        == 0
    )
    card_grid = np.asarray(Image.open(run / "generator" / "samples.png"))
    assert card_grid.shape == (4 * 66 + 2, 4 * 66 + 2, 3)  # 32x32 images shown at 64x64 (grids.GRID_MIN_CELL)
    assert np.array_equal(card_grid, np.asarray(Image.open(tmp_path / "s.png")))

    export_generator(tmp_path / "alone", G, cfg)  # no metrics.jsonl beside it
    assert "No evaluation was recorded" in (tmp_path / "alone" / "README.md").read_text()
