"""Checkpoint I/O: exact round trips, atomic writes, pruning, and refusing files that would run code."""

import json
import os
import pickle
import random

import numpy as np
import pytest
import torch

import gan.checkpoint as ckpt
from gan.checkpoint import (
    CheckpointError,
    export_generator,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_generator,
    save_best,
    save_checkpoint,
)
from gan.config import load_config
from gan.models import Generator

from shared import TINY_MODEL


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

    monkeypatch.setattr(ckpt, "save_file", crash)
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
    assert sorted(os.listdir(export)) == ["README.md", "config.json", "generator.safetensors", "samples.png"]  # + model card
    save_checkpoint(tmp_path / "run" / "checkpoints", {"G": g.state_dict(), "G_ema": None}, step=3, config=cfg, keep_last=1)
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
