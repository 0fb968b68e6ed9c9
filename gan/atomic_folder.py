"""Writing a folder of safetensors and JSON files atomically: written under a temporary name, fsynced, renamed
into place, every tensor file's SHA-256 recorded in the JSON written after it (gan/checkpoint.py's checkpoints
and exports go through `write_atomically`)."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from gan import files


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors' `save_file`, its I/O failures (reported as SafetensorError text) raised as the OSError they are."""
    try:
        save_file(tensors, str(path))
    except SafetensorError as exc:
        code = re.search(r"os error (\d+)", str(exc))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from exc
    os.chmod(path, files.file_mode())  # safetensors writes 0600 through a temporary file


def write_atomically(final: Path, contents: dict[str, Any], finish: Callable[[Path], None] | None = None) -> Path:
    """Write `contents` (name -> tensors dict for .safetensors, JSON-able dict for .json) as directory `final`;
    `finish(folder)` may add files to the folder before it is renamed into place.

    Each .safetensors file's SHA-256 is recorded under "sha256" in every JSON file written after it. On any
    error the temporary folder is removed; an OSError (a full disk) then names `final`."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    hashes: dict[str, str] = {}
    try:
        tmp.mkdir()
        for name, content in contents.items():  # callers order the JSON metadata last
            path = tmp / name
            if name.endswith(".safetensors"):
                save_tensors(content, path)
                hashes[name] = files.sha256_of(path)
            else:
                path.write_text(json.dumps({**content, "sha256": hashes}, indent=1))
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
        if finish is not None:
            finish(tmp)
        fsync_dir(tmp)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise files.naming(exc, final) from exc
        raise
    trash = final.parent / f".old-{final.name}-{os.getpid()}"
    if final.exists():
        os.replace(final, trash)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    shutil.rmtree(trash, ignore_errors=True)
    return final
