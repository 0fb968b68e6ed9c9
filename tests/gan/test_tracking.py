"""Trackers: an offline W&B run and a TensorBoard run hold the scalars, sample grids and attention maps."""

import math
import struct
import time
from pathlib import Path

import pytest
import torch

import train as train_cli
from gan.attention import NonLocalBlock
from gan.tracking import attention_stats

from shared import TINY_RUN

TINY = ["--config", "configs/demo.yaml", *TINY_RUN, "train.log_every=2", "train.sample_every=2", "log.attention_every=2",
        "train.steps=2"]  # fmt: skip
SCALARS = {
    "loss_d",
    "loss_g",
    "d_real",
    "d_fake",
    "lr_g",
    "lr_d",
    "images_per_s",
    "gate/gamma/G.blocks.attn16",
    "gate/gamma/D.blocks.attn16",
    "attn_entropy/G.blocks.attn16",
    "attn_entropy/D.blocks.attn16",
}


def read_wandb_records(path: Path) -> list[bytes]:
    """Records of a .wandb file: a 7-byte header, then LevelDB-log blocks of 32 KiB holding
    (crc32 u32, length u16, type u8) framed chunks; type 1 full, 2 first, 3 middle, 4 last."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            records.append(pending)
    return records


def finished_records(path: Path, timeout: float = 60.0) -> list[bytes]:
    """The records once the run's exit record is on disk (wandb's service may still be flushing)."""
    from wandb.proto import wandb_internal_pb2 as pb

    deadline = time.time() + timeout
    while True:
        records = read_wandb_records(path)
        kinds = []
        for raw in records:
            record = pb.Record()
            record.ParseFromString(raw)
            kinds.append(record.WhichOneof("record_type"))
        if "exit" in kinds and kinds.count("history") >= 1 or time.time() > deadline:
            return records
        time.sleep(0.5)


@pytest.mark.slow
def test_offline_wandb_run_holds_media_scalars_and_config(tmp_path, monkeypatch):
    from wandb.proto import wandb_internal_pb2 as pb  # wandb is pinned: a missing module is a failure, not a skip

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    assert train_cli.main([*TINY, "--run-dir", str(run), "log.backend=wandb", "log.tags=[ci]"]) == 0
    (offline,) = (run / "wandb").glob("offline-run-*")
    media = offline / "files" / "media" / "images"
    assert len(list(media.glob("samples_2_*.png"))) == 1
    assert len(list((media / "attention").glob("G_2_*.png"))) == 1
    assert len(list((media / "attention").glob("D_2_*.png"))) == 1
    history, config = set(), {}
    for raw in finished_records(next(offline.glob("run-*.wandb"))):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history |= {item.key or "/".join(item.nested_key) for item in record.history.item}
        elif kind == "config":
            config.update({item.key: item.value_json for item in record.config.update})
        elif kind == "run":
            assert list(record.run.tags) == ["ci"] and record.run.display_name == "run"
    assert SCALARS <= history
    assert {"samples/filenames", "attention/G/filenames", "attention/D/filenames"} <= history
    assert config["model.g_width"] == "16" and config["train.steps"] == "2"


@pytest.mark.slow
def test_tensorboard_run_holds_scalars_and_images(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    assert train_cli.main([*TINY, "--run-dir", str(run), "log.backend=tensorboard"]) == 0
    # accelerate writes run/<project>/events* (our logs) and a sub-directory for the hyper-parameters
    acc = EventAccumulator(str(run / "sagan"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    assert SCALARS <= set(acc.Tags()["scalars"])
    assert {"samples", "attention/G", "attention/D"} <= set(acc.Tags()["images"])
    assert acc.Scalars("loss_d")[0].step == 2


class _TwoArgs(torch.nn.Module):
    """A stand-in G or D: one non-local block on a fixed 4x4 map, called as net(x, y) like the real ones."""

    def __init__(self, gate: str) -> None:
        super().__init__()
        self.attn = NonLocalBlock(8, gate=gate, subsample=False, spectral_norm=False)

    def forward(self, x, y):  # noqa: ARG002
        return self.attn(x)


@pytest.mark.parametrize("gate", ["gamma", "zero_init", "channel"])
def test_attention_stats_logs_each_gate_and_entropy(gate):
    torch.manual_seed(0)
    G, D = _TwoArgs(gate), _TwoArgs(gate)
    with torch.no_grad():
        for net in (G, D):
            if gate == "gamma":
                net.attn.gamma.fill_(0.25)
            elif gate == "channel":
                net.attn.gain.copy_(torch.tensor([0.5, -0.5, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]))
            else:
                net.attn.out.weight.copy_(torch.arange(net.attn.out.weight.numel()).view_as(net.attn.out.weight))
    x = torch.randn(2, 8, 4, 4)
    stats = attention_stats(G, D, x, None, x, None)
    n = 8 * (8 // 2)
    expected_gate = {  # by hand: gamma; sqrt(0^2 + 1^2 + ... + (n-1)^2); the RMS of tanh(a) over 8 channels
        "gamma": 0.25,
        "zero_init": math.sqrt(sum(i * i for i in range(n))),
        "channel": math.sqrt((2 * math.tanh(0.5) ** 2 + math.tanh(1.0) ** 2) / 8),
    }[gate]
    assert {k for k in stats if not k.startswith("attn_entropy/")} == {f"gate/{gate}/G.attn", f"gate/{gate}/D.attn"}
    for tag in ("G", "D"):
        assert stats[f"gate/{gate}/{tag}.attn"] == pytest.approx(expected_gate)
        # entropy of the softmax rows of theta^T phi over the 16 positions, from the block's own projections
        block = (G if tag == "G" else D).attn
        theta = block.theta(x).flatten(2).double()
        phi = block.phi(x).flatten(2).double()
        p = torch.softmax(theta.transpose(1, 2) @ phi, dim=-1)
        expected = -(p * p.log()).sum(-1).mean().item()
        assert stats[f"attn_entropy/{tag}.attn"] == pytest.approx(expected, rel=1e-5)
