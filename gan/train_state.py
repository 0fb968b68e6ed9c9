"""A run's training state: what a checkpoint holds beyond the files (networks, optimisers, scalers, every
random stream, the data position, ADA and LeCam), how a resume puts it back, and how `--init-from` starts a
new run from another run's networks. gan/train_loop.py calls these; gan/checkpoint.py writes and reads them."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from gan import checkpoint as ckpt
from gan.config import Config, to_dict
from gan.files import sha256_of, write_text
from gan.step import Parts


def rng_state(parts: Parts) -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "train": parts.rng.get_state(),
    }


def set_rng_state(parts: Parts, state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    parts.rng.set_state(state["train"])


def training_state(parts: Parts, accelerator: Accelerator, consumed: int, best: dict) -> dict[str, Any]:
    """Full state; every process must call it (RNG states are gathered), the main one writes it."""
    rng_all = gather_object([rng_state(parts)])
    # One number per process: equal everywhere iff the replicas hold the same weights (DDP kept them in sync).
    checksum = sum(float(t.detach().double().sum()) for t in [*parts.G_raw.parameters(), *parts.D_raw.parameters()])
    return {
        "G": parts.G_raw.state_dict(),
        "D": parts.D_raw.state_dict(),
        "G_ema": parts.ema.state_dict() if parts.ema else None,
        "opt_g": parts.opt_g.state_dict(),
        "opt_d": parts.opt_d.state_dict(),
        "scaler_g": parts.scaler_g.state_dict(),
        "scaler_d": parts.scaler_d.state_dict(),
        "consumed": consumed,
        "world_size": accelerator.num_processes,
        "rng": rng_all,
        "replica_checksums": gather_object([checksum]),
        "best": best,
        # ADA's unfinished-interval statistics are per process (reduced only at an adjustment); LeCam's anchors
        # are the same everywhere (averaged over processes). Plain numbers: they land in meta.json.
        "ada": gather_object([parts.ada.state_dict()]) if parts.ada else None,
        "lecam": parts.lecam.state_dict() if parts.lecam else None,
    }


def restore(parts: Parts, state: dict[str, Any], accelerator: Accelerator, where: Path) -> None:
    ckpt.load_into(parts.G_raw, state["G"], "G", where)
    ckpt.load_into(parts.D_raw, state["D"], "D", where)
    if parts.ema is not None and state.get("G_ema") is not None:
        ckpt.load_into(parts.ema.module, state["G_ema"], "G_ema", where)
    parts.opt_g.load_state_dict(state["opt_g"])
    parts.opt_d.load_state_dict(state["opt_d"])
    for name in ("scaler_g", "scaler_d"):
        if state[name]:
            getattr(parts, name).load_state_dict(state[name])
    if parts.lecam is not None and state.get("lecam"):  # .get: checkpoints from before LeCam load too
        parts.lecam.load_state_dict(state["lecam"])
    if parts.ada is not None and state.get("ada"):
        ada_states = state["ada"]
        parts.ada.load_state_dict(ada_states[min(accelerator.process_index, len(ada_states) - 1)])
        parts.augment.p = parts.ada.p  # type: ignore[attr-defined]
    if state["world_size"] == accelerator.num_processes:
        set_rng_state(parts, state["rng"][accelerator.process_index])
    else:
        accelerator.print(
            f"warning: checkpoint written by {state['world_size']} processes, resuming with "
            f"{accelerator.num_processes}: weights, optimisers and data position carry over, random streams restart"
        )


def model_changes(cfg: Config, other: Config) -> dict[str, Any]:
    """The model config fields in which `other` differs from `cfg`, with `other`'s values."""
    ours, theirs = to_dict(cfg.model), to_dict(other.model)
    return {key: theirs[key] for key, value in ours.items() if theirs[key] != value}


def initialise(parts: Parts, networks: dict[str, dict | None], where: Path, say: Callable[[str], None]) -> None:
    """A new run's networks from `networks` (gan.checkpoint.read_networks): G, the EMA copy (the source's G_ema,
    else its G) and D when the source has one (else D keeps its fresh random weights, said in one line).
    Spectral-norm vectors and BatchNorm statistics come along (they are buffers); optimisers stay fresh."""
    ckpt.load_into(parts.G_raw, networks["G"], "G", where)
    if parts.ema is not None:
        ckpt.load_into(parts.ema.module, networks["G_ema"] or networks["G"], "G_ema", where)
    loaded = [name for name in ("G", "G_ema", "D") if networks[name] is not None]
    if networks["D"] is not None:
        ckpt.load_into(parts.D_raw, networks["D"], "D", where)
    else:
        say(f"--init-from: {where} holds no discriminator; D starts from random weights")
    say(f"--init-from: {', '.join(loaded)} from {where}; optimisers fresh, starting at step 0")


def record_init(run_dir: Path, networks: dict[str, dict | None], where: Path) -> Path:
    """Writes `run_dir/init_from.json`: where a `--init-from` run's weights came from (the directory read, which
    networks it gave, and the SHA-256 of each of its .safetensors / .json files), so the run says its origin."""
    record = {
        "source": str(where),
        "networks": [name for name in ("G", "G_ema", "D") if networks[name] is not None],
        "sha256": {p.name: sha256_of(p) for p in sorted(where.iterdir()) if p.suffix in (".safetensors", ".json")},
    }
    return write_text(run_dir / "init_from.json", json.dumps(record, indent=1) + "\n")
