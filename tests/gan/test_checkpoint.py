"""Checkpoint I/O: exact round trips, atomic writes, pruning, and refusing files that would run code."""

import json
import os
import pickle
import random

import numpy as np
import pytest
import torch

import gan.checkpoint as ckpt
from gan import atomic_folder
from gan.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_best,
    save_checkpoint,
)
from gan.config import load_config
from gan.models import Generator, load_generator
from gan.pretrained import export_generator

from shared import TINY_MODEL, first_tensor_key, flip_bytes, tensor_offset


@pytest.fixture
def cfg():
    return load_config(None, TINY_MODEL)


def nested_state():
    opt = torch.optim.Adam(torch.nn.Linear(3, 2).parameters(), betas=(0.0, 0.9))
    opt.zero_grad()
    sum(p.sum() for p in opt.param_groups[0]["params"]).backward()
    opt.step()
    return {
        "opt": opt.state_dict(),  # int keys, tuples (betas), tensor leaves including 0-d `step`
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "bf16": torch.arange(4, dtype=torch.bfloat16),
        "none": None,
        "flag": True,
        "nested": {"list": [1, 2.5, "x", (3, 4)]},
    }


def assert_same(a, b):
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


def test_state_round_trips_exactly(tmp_path, cfg):
    state = nested_state()
    path = save_checkpoint(tmp_path, state, step=7, config=cfg, keep_last=3)
    assert path.name == "step_00000007"
    loaded, cfg2, step = load_checkpoint(path)
    assert step == 7 and cfg2 == cfg
    assert_same(state, loaded)
    # the restored states really drive the generators they came from
    random.setstate(loaded["python"])
    np.random.set_state(loaded["numpy"])
    a = (random.random(), np.random.rand())
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    assert a == (random.random(), np.random.rand())
    torch.optim.Adam(torch.nn.Linear(3, 2).parameters()).load_state_dict(loaded["opt"])


def test_pruning_keeps_the_newest_and_best(tmp_path, cfg):
    for step in (1, 2, 3, 4):
        path = save_checkpoint(tmp_path, {"x": torch.tensor(step)}, step=step, config=cfg, keep_last=2)
        if step == 2:
            save_best(tmp_path, path)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000003", "step_00000004"]
    best, _, step = load_checkpoint(tmp_path / "best")
    assert step == 2 and best["x"].item() == 2


def test_half_written_directories_are_never_latest(tmp_path, cfg):
    save_checkpoint(tmp_path, {"x": torch.tensor(1)}, step=1, config=cfg, keep_last=3)
    (tmp_path / "step_00000009").mkdir()  # no meta.json: a crash before the rename would look like this
    (tmp_path / "step_00000009" / "state.safetensors").write_bytes(b"partial")
    (tmp_path / ".tmp-step_00000010-123").mkdir()
    assert latest_checkpoint(tmp_path).name == "step_00000001"


def test_a_failed_write_leaves_earlier_checkpoints_intact(tmp_path, cfg, monkeypatch):
    for step in (1, 2):
        save_checkpoint(tmp_path, {"x": torch.tensor(step)}, step=step, config=cfg, keep_last=2)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(atomic_folder, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, {"x": torch.tensor(3)}, step=3, config=cfg, keep_last=2)
    monkeypatch.undo()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000001", "step_00000002"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000001", "step_00000002"]  # no debris
    assert load_checkpoint(latest_checkpoint(tmp_path))[0]["x"].item() == 2


class _Plant:
    """Unpickling this creates a file: the proof that a loader executed code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_pickle_is_refused_and_never_executed(tmp_path, cfg):
    marker = tmp_path / "pwned"
    good = save_checkpoint(tmp_path / "ck", {"x": torch.tensor(1)}, step=1, config=cfg, keep_last=1)
    (good / "state.safetensors").write_bytes(pickle.dumps(_Plant(str(marker))))
    with pytest.raises(CheckpointError, match="fails its SHA-256 check"):
        load_checkpoint(good)
    meta = json.loads((good / "meta.json").read_text())  # without a recorded hash: parsed as safetensors, refused
    (good / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "sha256"}))
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(good)
    # a torch.save'd file passed as a checkpoint: refused without being opened as a pickle
    planted = tmp_path / "model.pt"
    torch.save({"w": _Plant(str(marker))}, planted)
    with pytest.raises(CheckpointError, match="neither a training checkpoint"):
        load_generator(planted)
    with pytest.raises(CheckpointError, match="is not a directory"):
        load_checkpoint(planted)
    assert not marker.exists()


def test_corrupt_and_foreign_files_give_one_line(tmp_path, cfg):
    good = save_checkpoint(tmp_path, {"x": torch.tensor(1)}, step=1, config=cfg, keep_last=1)
    data = (good / "state.safetensors").read_bytes()
    (good / "state.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(good)
    assert "\n" not in str(info.value)
    (good / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable or corrupt"):
        load_checkpoint(good)
    (good / "meta.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="is not a sagan-checkpoint file"):
        load_checkpoint(good)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_generator(tmp_path / "nope")


def test_export_and_training_checkpoint_load_the_same_generator(tmp_path, cfg):
    torch.manual_seed(0)
    g = Generator(cfg.model)
    export = export_generator(tmp_path / "gen", g, cfg)
    assert sorted(os.listdir(export)) == [
        "README.md",
        "config.json",
        "generator.safetensors",
        "samples.png",
    ]  # + model card
    save_checkpoint(
        tmp_path / "run" / "checkpoints", {"G": g.state_dict(), "G_ema": None}, step=3, config=cfg, keep_last=1
    )
    z = torch.randn(2, cfg.model.z_dim)
    g.eval()
    for path in (export, tmp_path / "run", tmp_path / "run" / "checkpoints" / "step_00000003"):
        loaded, loaded_cfg = load_generator(path)
        assert loaded_cfg == cfg and not loaded.training
        assert torch.equal(loaded(z), g(z))


def test_mismatched_weights_are_one_line(tmp_path, cfg):
    g = Generator(cfg.model)
    export = export_generator(tmp_path / "gen", g, cfg)
    meta = json.loads((export / "config.json").read_text())
    meta["config"]["model"]["g_width"] = 32
    (export / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as info:
        load_generator(export)
    assert "does not fit the model its config describes" in str(info.value) and "\n" not in str(info.value)


# ----------------------------------------------------------------------------------------------
# Hashes, permissions, pruning after a resume


def test_recorded_hash_is_the_files_sha256(tmp_path, cfg):
    import hashlib

    good = save_checkpoint(tmp_path, {"x": torch.arange(5.0)}, step=1, config=cfg, keep_last=1)
    recorded = json.loads((good / "meta.json").read_text())["sha256"]
    assert recorded == {"state.safetensors": hashlib.sha256((good / "state.safetensors").read_bytes()).hexdigest()}
    export = export_generator(tmp_path / "gen", Generator(cfg.model), cfg)
    recorded = json.loads((export / "config.json").read_text())["sha256"]
    assert recorded == {
        "generator.safetensors": hashlib.sha256((export / "generator.safetensors").read_bytes()).hexdigest()
    }


def test_flipped_bytes_in_every_tensor_file_kind_are_refused_in_one_line(tmp_path, cfg):
    """16 flipped bytes inside G_ema's weights and inside D's optimiser moments (the file still parses as
    safetensors, so only the hash can notice), in the best/ copy, and in the generator export: each load
    refuses in one line naming the file."""
    from safetensors.torch import load_file

    torch.manual_seed(0)
    g = Generator(cfg.model)
    opt = torch.optim.Adam(torch.nn.Linear(4, 4).parameters())
    opt.zero_grad()
    sum(p.sum() for p in opt.param_groups[0]["params"]).backward()
    opt.step()
    state = {"G": g.state_dict(), "G_ema": g.state_dict(), "opt_d": opt.state_dict()}
    cases = []
    for name, prefix in (("ema", "state/G_ema/"), ("optd", "state/opt_d/state/0/exp_avg_sq")):
        path = save_checkpoint(tmp_path / name, state, step=1, config=cfg, keep_last=1)
        f = path / "state.safetensors"
        cases.append((f, tensor_offset(f, first_tensor_key(f, prefix)), lambda p=path: load_checkpoint(p)))
    best = save_best(tmp_path / "b", save_checkpoint(tmp_path / "b", state, step=1, config=cfg, keep_last=1))
    f = best / "state.safetensors"
    cases.append((f, tensor_offset(f, first_tensor_key(f, "state/G_ema/")), lambda: load_checkpoint(best)))
    export = export_generator(tmp_path / "gen", g, cfg)
    f = export / "generator.safetensors"
    cases.append((f, tensor_offset(f, next(iter(g.state_dict()))), lambda: load_generator(export)))
    for f, offset, load in cases:
        load()  # intact: loads
        flip_bytes(f, offset)
        assert len(load_file(str(f))) > 0  # still a well-formed file: without the hash it would load silently
        with pytest.raises(CheckpointError) as info:
            load()
        message = str(info.value)
        assert "\n" not in message and str(f) in message and "fails its SHA-256 check" in message, message


def test_save_best_refuses_a_corrupt_source(tmp_path, cfg):
    path = save_checkpoint(tmp_path, {"x": torch.arange(64.0)}, step=1, config=cfg, keep_last=1)
    flip_bytes(path / "state.safetensors", tensor_offset(path / "state.safetensors", "state/x"))
    with pytest.raises(CheckpointError, match="fails its SHA-256 check"):
        save_best(tmp_path, path)
    assert not (tmp_path / "best").exists()


def test_old_checkpoints_without_hash_load_with_one_note(tmp_path, cfg, capsys, monkeypatch):
    monkeypatch.setattr(ckpt, "_said_unverified", False)
    paths = [save_checkpoint(tmp_path, {"x": torch.tensor(s)}, step=s, config=cfg, keep_last=3) for s in (1, 2)]
    for p in paths:  # what checkpoints written before hashes were recorded look like
        meta = json.loads((p / "meta.json").read_text())
        (p / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "sha256"}))
    assert [load_checkpoint(p)[0]["x"].item() for p in paths] == [1, 2]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "carries no checksum" in err[0] and str(paths[0]) in err[0]


def test_tensor_files_get_the_json_files_permissions(tmp_path, cfg):
    old = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "a", {"x": torch.tensor(1)}, step=1, config=cfg, keep_last=1)
        export = export_generator(tmp_path / "gen", Generator(cfg.model), cfg)
        best = save_best(tmp_path / "a", path)
        os.umask(0o027)
        private = export_generator(tmp_path / "gen2", Generator(cfg.model), cfg)
    finally:
        os.umask(old)

    def mode(p):
        return p.stat().st_mode & 0o777

    for d, tensors, meta in ((path, "state.safetensors", "meta.json"), (best, "state.safetensors", "meta.json"),
                             (export, "generator.safetensors", "config.json")):  # fmt: skip
        assert mode(d / tensors) == mode(d / meta) == 0o644
    assert mode(private / "generator.safetensors") == mode(private / "config.json") == 0o640


def test_pruning_never_removes_the_new_checkpoint_or_newer_ones(tmp_path, cfg):
    """A directory still holding step 400 (an old run) while steps 101..103 are written: keep_last counts only
    older checkpoints, so each new one survives (resuming also moves later ones aside, see test_rundir)."""
    for step in (100, 400):
        save_checkpoint(tmp_path, {"x": torch.tensor(step)}, step=step, config=cfg, keep_last=2)
    for step in (101, 102, 103):
        save_checkpoint(tmp_path, {"x": torch.tensor(step)}, step=step, config=cfg, keep_last=2)
        assert (tmp_path / f"step_{step:08d}").is_dir()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000102", "step_00000103", "step_00000400"]


def test_newest_usable_skips_damaged_checkpoints_and_says_why(tmp_path, cfg):
    root = tmp_path / "run" / "checkpoints"
    for step in (1, 2, 3):
        save_checkpoint(root, {"x": torch.arange(64.0) + step}, step=step, config=cfg, keep_last=3)
    flip_bytes(
        root / "step_00000003" / "state.safetensors",
        tensor_offset(root / "step_00000003" / "state.safetensors", "state/x"),
    )
    (root / "step_00000002" / "meta.json").unlink()
    where, skipped = ckpt.newest_usable(root)
    assert where == root / "step_00000001"
    assert len(skipped) == 2
    assert skipped[0].startswith(f"skipped {root / 'step_00000003'}: state.safetensors fails its SHA-256 check")
    assert skipped[1].startswith(f"skipped {root / 'step_00000002'}: meta.json is missing")
    said = []  # a run directory resolves to the newest intact checkpoint, saying so
    assert ckpt.resolve(tmp_path / "run", said.append) == root / "step_00000001"
    assert said == [*skipped, f"using checkpoint {root / 'step_00000001'} (the newest intact one)"]
