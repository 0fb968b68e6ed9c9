"""Checkpoint I/O for training and sampling alike: atomic, pruned, and never executing code on load.

A training checkpoint is a directory `checkpoints/step_00001000/` holding
    state.safetensors  every tensor (G, D, EMA-G, optimiser moments, spectral-norm vectors, RNG bytes)
    meta.json          everything else (step, config, optimiser hyper-parameters, RNG ints) and the SHA-256
                       of state.safetensors, written last
It is written under a hidden temporary name and renamed into place only when complete, so a crash mid-write
never leaves a directory that `latest_checkpoint` would take. Older checkpoints are pruned only after the new
one is in place; `best/` (the best evaluation score) is never pruned.

A generator export is a directory with `generator.safetensors` and `config.json` (which records the tensor
file's SHA-256): small enough to share (gan.pretrained adds the model card and turns weights into networks). Every tensor file is read through `read_tensors`, which checks that
hash (training resume, sampling, evaluation, `best/` copies, exports from anywhere) and refuses a mismatch in
one line; files written before hashes were recorded load with a one-time note. Tensor files get the same
permissions as the JSON files (0666 minus the umask), not safetensors' private 0600. A failed write (a full
disk) leaves nothing behind and raises an OSError naming the checkpoint or export directory (gan/files.py).
Nothing here calls `pickle` or `torch.load`: safetensors holds raw tensors and JSON holds the rest.
This module knows files only: no network class and no Hub (gan.pretrained and gan.hub sit above it).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from gan import files
from gan.atomic_folder import write_atomically
from gan.config import Config, ConfigError, from_dict, to_dict
from gan.errors import UserError

FORMAT = "sagan-checkpoint"
EXPORT_FORMAT = "sagan-generator"
DISCRIMINATOR_FILE = "discriminator.safetensors"  # optional, beside a generator export (convert.py writes one)
EXPORT_FILES = ("config.json", "generator.safetensors")  # a generator export, a Hub repo's loadable part
VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d{8,})$")


class CheckpointError(UserError, ValueError):
    """A missing, corrupt or mismatched checkpoint; the message is one line that says what to do."""


# ----------------------------------------------------------------------------------------------
# Nested state <-> (flat tensors, JSON tree)


def _encode(obj: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().cpu().contiguous().clone()  # clone: safetensors refuses shared storage
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, dict):
        return {"__dict__": [[k, _encode(v, f"{key}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{key}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{key}/{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {key} in a checkpoint")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return np.asarray(obj["__ndarray__"], dtype=obj["dtype"])
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__dict__" in obj:
        return {k: _decode(v, tensors) for k, v in obj["__dict__"]}
    raise CheckpointError(f"unknown entry {sorted(obj)} in checkpoint metadata; was it written by this repository?")


# ----------------------------------------------------------------------------------------------
# Writing


def save_checkpoint(root: str | Path, state: dict[str, Any], *, step: int, config: Config, keep_last: int) -> Path:
    """Write `state` as `root/step_XXXXXXXX` atomically, then prune to the newest `keep_last`."""
    root = Path(root)
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, "state", tensors)
    meta = {"format": FORMAT, "version": VERSION, "step": step, "config": to_dict(config), "state": tree}
    path = write_atomically(root / f"step_{step:08d}", {"state.safetensors": tensors, "meta.json": meta})
    # Prune only checkpoints older than this one: the one just written always survives, and so does any
    # newer one (a run directory never holds those: resuming moves them aside first, see gan/rundir.py).
    older = [p for p in list_checkpoints(root) if step_of(p) < step]
    for old in older[: max(len(older) - (keep_last - 1), 0)] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return path


def save_best(root: str | Path, source: Path) -> Path:
    """Copy the complete checkpoint `source` to `root/best` (atomically replacing the previous best);
    the source is verified against its recorded hash on the way."""
    meta = _read_json(source / "meta.json", FORMAT)
    contents: dict[str, Any] = {
        "state.safetensors": read_tensors(source / "state.safetensors", _recorded(meta, "state.safetensors")),
        "meta.json": {k: v for k, v in meta.items() if k != "sha256"},
    }
    return write_atomically(Path(root) / "best", contents)


def write_export(
    path: str | Path,
    generator: torch.nn.Module,
    config: Config,
    discriminator: torch.nn.Module | None = None,
    source: dict[str, Any] | None = None,
    finish: Callable[[Path], None] | None = None,
) -> Path:
    """The export's files, `generator.safetensors` (weights and buffers) and `config.json`, as directory `path`
    (replaced whole, atomically: `finish(folder)` adds files before the rename; gan.pretrained.export_generator
    adds gan.hub's model card there, so an export is whole or absent).
    A `discriminator` goes beside them as `discriminator.safetensors` (hashed in config.json like G).
    `source` (weights this repository did not train, e.g. converted ones; gan.hub.model_card says its keys)
    is recorded in config.json and read back by `read_weights` (`NetworkWeights.source`)."""
    files: dict[str, Any] = {"generator.safetensors": _tensors_of(generator)}
    if discriminator is not None:
        files[DISCRIMINATOR_FILE] = _tensors_of(discriminator)
    meta = {"format": EXPORT_FORMAT, "version": VERSION, "config": to_dict(config)}
    files["config.json"] = {**meta, "source": source} if source else meta
    return write_atomically(Path(path), files, finish=finish)


def _tensors_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------------------------
# Finding and reading


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first (temporary and half-written ones are skipped)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / "meta.json").is_file() and (p / "state.safetensors").is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def step_of(path: Path) -> int:
    """The step number in a `step_XXXXXXXX` directory name."""
    m = _STEP_DIR.match(Path(path).name)
    if not m:
        raise ValueError(f"{path} is not a step_XXXXXXXX checkpoint directory")
    return int(m.group(1))


def checkpoint_step(path: str | Path) -> int:
    """The step a checkpoint directory's meta.json records."""
    return int(_read_json(Path(path) / "meta.json", FORMAT)["step"])


def latest_checkpoint(root: str | Path) -> Path | None:
    ckpts = list_checkpoints(root)
    return ckpts[-1] if ckpts else None


def newest_usable(root: str | Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint under `root` that reads back intact (files present, JSON valid, hash matching),
    and one line per newer `step_*` directory skipped, saying why (e.g. a crash mid-write, flipped bytes)."""
    root = Path(root)
    steps = (
        sorted(((step_of(p), p) for p in root.iterdir() if _STEP_DIR.match(p.name)), reverse=True)
        if root.is_dir()
        else []
    )
    skipped: list[str] = []
    for _, path in steps:
        try:
            meta = _read_json(path / "meta.json", FORMAT)
            _verify(path / "state.safetensors", _recorded(meta, "state.safetensors"))
        except CheckpointError as exc:
            skipped.append(f"skipped {path}: {str(exc).removeprefix(str(path) + '/')}")
            continue
        return path, skipped
    return None, skipped


def _read_json(path: Path, expected_format: str) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; the checkpoint is incomplete, pick another one")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"{path} is unreadable or corrupt ({type(exc).__name__}); pick another checkpoint"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != expected_format:
        raise CheckpointError(f"{path} is not a {expected_format} file of this repository")
    if meta.get("version", 0) > VERSION:
        raise CheckpointError(f"{path} was written by a newer version (format {meta['version']}); update the code")
    return meta


def _recorded(meta: dict, name: str) -> str | None:
    """The SHA-256 that `meta` records for tensor file `name` (None: written before hashes were recorded)."""
    hashes = meta.get("sha256")
    return hashes.get(name) if isinstance(hashes, dict) else None


_said_unverified = False


def _verify(path: Path, recorded: str | None) -> None:
    """Refuse `path` in one line unless its bytes hash to `recorded`; say once per process when nothing is recorded."""
    global _said_unverified
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; the checkpoint is incomplete, pick another one")
    if recorded is None:
        if not _said_unverified:
            _said_unverified = True
            print(
                f"note: {path} carries no checksum (written before checksums were recorded); loaded unverified",
                file=sys.stderr,
            )
        return
    actual = files.sha256_of(path)
    if actual != recorded:
        raise CheckpointError(
            f"{path} fails its SHA-256 check (recorded {recorded[:12]}..., file {actual[:12]}...): the file is corrupt; "
            "pick another checkpoint or re-export"
        )


def read_tensors(path: Path, recorded: str | None) -> dict[str, torch.Tensor]:
    """Every tensor of a .safetensors file after checking its SHA-256 against `recorded` (the JSON metadata's)."""
    _verify(path, recorded)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable safetensors file ({msg}); pick another checkpoint") from None


def _config_of(meta: dict, where: Path) -> Config:
    try:
        return from_dict(meta["config"])
    except (ConfigError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{where} holds an unusable config ({exc}); it was written by another version") from None


def load_checkpoint(path: str | Path) -> tuple[dict[str, Any], Config, int]:
    """(state, config, step) of a training checkpoint directory, without executing anything from it."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(
            f"checkpoint {path} is not a directory; pass a checkpoints/step_* directory or a run directory"
        )
    meta = _read_json(path / "meta.json", FORMAT)
    tensors = read_tensors(path / "state.safetensors", _recorded(meta, "state.safetensors"))
    try:
        state = _decode(meta["state"], tensors)
    except KeyError as exc:
        raise CheckpointError(f"{path} lacks tensor {exc}; the checkpoint is corrupt, pick another one") from None
    return state, _config_of(meta, path), int(meta["step"])


def resolve(path: str | Path, say: Callable[[str], None] | None = None) -> Path:
    """A run directory means its newest intact checkpoint (`say` gets one line per newer one skipped and one
    naming the one used); anything else is returned as is."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if (path / "checkpoints").is_dir():
        newest, skipped = newest_usable(path / "checkpoints")
        if newest is None:
            why = f" ({skipped[0]})" if skipped else ""
            raise CheckpointError(f"run directory {path} has no intact checkpoint{why}")
        if say is not None:
            for line in skipped:
                say(line)
            say(f"using checkpoint {newest}" + (" (the newest intact one)" if skipped else ""))
        return newest
    return path


def load_into(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], what: str, where: Path) -> None:
    """`module.load_state_dict(strict=True)` with a one-line CheckpointError on any mismatch."""
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as exc:
        first = str(exc).split("\n\t")[1] if "\n\t" in str(exc) else str(exc).splitlines()[0]
        raise CheckpointError(
            f"{what} in {where} does not fit the model its config describes ({first.strip()})"
        ) from None


def read_export(path: str | Path) -> tuple[Config, dict[str, torch.Tensor]]:
    """(Config, generator state dict) of an export directory (`config.json` + `generator.safetensors`),
    the tensor file checked against the hash that config.json records."""
    path = Path(path)
    meta = _read_json(path / "config.json", EXPORT_FORMAT)
    return _config_of(meta, path), read_tensors(
        path / "generator.safetensors", _recorded(meta, "generator.safetensors")
    )


def export_source(path: str | Path) -> dict[str, Any] | None:
    """The `source` an export's config.json records (see `write_export`), or None."""
    source = _read_json(Path(path) / "config.json", EXPORT_FORMAT).get("source")
    return source if isinstance(source, dict) else None


def _export_discriminator(path: Path, meta: dict) -> dict[str, torch.Tensor] | None:
    """The tensors of an export's discriminator.safetensors (checked against `meta`'s hash), or None."""
    if not (path / DISCRIMINATOR_FILE).is_file():
        return None
    return read_tensors(path / DISCRIMINATOR_FILE, _recorded(meta, DISCRIMINATOR_FILE))


def read_networks(path: str | Path) -> tuple[Config, dict[str, dict[str, torch.Tensor] | None], Path]:
    """(Config, {"G", "G_ema", "D": state dict or None}, the directory read) of a generator export or a
    training checkpoint / run directory (its newest intact checkpoint): the weights a new run starts from.
    An export holds one generator (G; G_ema None) and D only when it has discriminator.safetensors."""
    path = resolve(path)
    if (path / "config.json").is_file():
        meta = _read_json(path / "config.json", EXPORT_FORMAT)
        config, weights = read_export(path)
        return config, {"G": weights, "G_ema": None, "D": _export_discriminator(path, meta)}, path
    if (path / "meta.json").is_file():
        state, config, _ = load_checkpoint(path)
        return config, {key: state.get(key) for key in ("G", "G_ema", "D")}, path
    raise CheckpointError(
        f"{path} is neither a generator export (config.json + generator.safetensors) nor a training checkpoint "
        "(meta.json + state.safetensors)"
    )


@dataclass
class NetworkWeights:
    """One network's weights as a checkpoint path holds them (`read_weights`)."""

    state: dict[str, torch.Tensor]  # the state dict
    config: Config  # the run config they were trained under
    step: int | None  # the training step of a checkpoint; None for an export
    what: str  # which weights, for messages: "G_ema", "G", "D" or "generator" (an export)
    where: Path  # the checkpoint or export directory read
    source: dict[str, Any] | None = None  # an export's provenance (`export_source`), else None


def read_weights(
    path: str | Path, network: str, *, use_ema: bool = True, say: Callable[[str], None] | None = None
) -> NetworkWeights:
    """The weights of `network` ("G" or "D") under a local `path`: a run directory (its newest intact
    checkpoint; `say` hears which one and why newer ones were skipped), a training checkpoint (G: its EMA
    weights `G_ema` when `use_ema` and present), for G a generator export or its .safetensors file, for D an
    export holding `discriminator.safetensors`."""
    path = resolve(path, say)
    if path.is_file() and path.suffix == ".safetensors":
        path = path.parent
    if network == "G" and ((path / "generator.safetensors").is_file() or (path / "config.json").is_file()):
        config, state = read_export(path)
        return NetworkWeights(state, config, None, "generator", path, export_source(path))
    if network == "D" and (path / DISCRIMINATOR_FILE).is_file() and (path / "config.json").is_file():
        meta = _read_json(path / "config.json", EXPORT_FORMAT)
        return NetworkWeights(_export_discriminator(path, meta), _config_of(meta, path), None, "discriminator", path)
    if (path / "meta.json").is_file():
        state, config, step = load_checkpoint(path)
        key = f"{network}_ema" if use_ema and state.get(f"{network}_ema") is not None else network
        return NetworkWeights(state[key], config, step, key, path)
    if network == "G":
        raise CheckpointError(
            f"{path} is neither a training checkpoint (meta.json + state.safetensors) nor a generator export "
            "(config.json + generator.safetensors)"
        )
    raise CheckpointError(
        f"{path} is not a training checkpoint (meta.json + state.safetensors) nor an export with {DISCRIMINATOR_FILE}; "
        f"{network} is only saved there"
    )
