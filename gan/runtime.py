"""Devices, CPU threads and inference mode, written once for training, sampling, evaluation and figures.

Images are drawn from a generator in gan/sampling.py."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from gan.config import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' means CUDA when present, else CPU; asking for CUDA without it is a one-line ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use cpu")
    return device


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """No gradients, eval mode (BN running statistics and spectral-norm vectors stay untouched), then every
    submodule's own mode restored: a look at a model that changes none of its state."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            yield module
    finally:
        for m, training in modes:
            m.training = training


def auto_threads() -> int:
    """The cores nobody else is using at start: usable cores minus the 1-minute load average, at least 1.

    Measured (docs/benchmarks.md, Threads): with the cores busy, two threads made 8 demo steps 2.5x slower
    than one (a thread waits at every barrier for a descheduled partner); on quiet machines two threads
    were faster (1.23x for the demo on an AMD EPYC, 1.7x for the CIFAR-10 model on an Intel Xeon). Counting
    idle cores picks the faster side of both."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    idle = cores - os.getloadavg()[0] if hasattr(os, "getloadavg") else cores
    return max(1, min(cores, int(idle + 0.5)))


def set_threads(threads: int) -> int:
    """Set torch's intra-op CPU threads to `threads`, or with 0 to `auto_threads()`; an OMP_NUM_THREADS in
    the environment is respected when `threads` is 0. Returns the number set."""
    import os

    if threads == 0:
        if os.environ.get("OMP_NUM_THREADS"):
            return torch.get_num_threads()
        threads = auto_threads()
    torch.set_num_threads(threads)
    return threads
