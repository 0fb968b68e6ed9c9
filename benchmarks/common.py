"""What the benchmark scripts share: medians, interleaved timing, peak-memory reading, child processes.

The machine line and Markdown tables come from `tools.report`, which the experiments use too.

Every script prints Markdown tables that docs/benchmarks.md records verbatim. Timings are medians over
repeats; when two variants are compared they run interleaved (A B A B ...) in one process and the ratio is
the median of the per-pair ratios, so a machine whose speed drifts (other jobs on a shared CPU) moves both
sides of each pair alike.
"""

from __future__ import annotations

import json
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def synchronize() -> None:
    """Wait for the queued CUDA work, if this process ever used CUDA (CPU work is synchronous already)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of `fn` takes, queued CUDA work included (synchronised before and after)."""
    synchronize()
    start = time.perf_counter()
    fn()
    synchronize()
    return time.perf_counter() - start


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of every variant, run in turn (A B C A B C ...) after `warmup` rounds."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn))
    return times


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median of a[i] / b[i]: the ratio of two interleaved series, robust to drift."""
    return median([x / y for x, y in zip(a, b)])


# ----------------------------------------------------------------------------------------------
# Peak resident memory of a piece of work, as the kernel accounts it


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        return int(re.search(rf"^{field}:\s+(\d+) kB", fh.read(), re.M).group(1))


class PeakRSS:
    """Peak resident memory (bytes) above the level at entry, of the work done inside the `with`.

    Linux: writing 5 to /proc/self/clear_refs resets the high-water mark (VmHWM) to the current RSS, so
    VmHWM - VmRSS(entry) afterwards is the peak of this work alone, whatever the process touched before
    (imports, set-up). Elsewhere it falls back to the ru_maxrss delta, which reads 0 unless the work goes
    above every earlier peak; `exact` says which was used.
    """

    def __enter__(self) -> PeakRSS:
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self.exact = True
            self._base = _status_kib("VmRSS") * 1024
        except OSError:
            self.exact = False
            self._base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.bytes = 0
        return self

    def __exit__(self, *exc) -> None:
        if self.exact:
            self.bytes = _status_kib("VmHWM") * 1024 - self._base
        else:
            self.bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self._base


class PeakCUDA:
    """Peak CUDA memory (bytes) allocated above the level at entry by the work inside the `with`: the caching
    allocator's count of live tensors (torch.cuda.max_memory_allocated), not the pool it keeps reserved."""

    exact = True

    def __enter__(self) -> PeakCUDA:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        self._base = torch.cuda.memory_allocated()
        self.bytes = 0
        return self

    def __exit__(self, *exc) -> None:
        torch.cuda.synchronize()
        self.bytes = torch.cuda.max_memory_allocated() - self._base


def peak_memory(device: str | torch.device) -> PeakRSS | PeakCUDA:
    """The peak-memory reader for work on `device`: resident memory on the CPU, allocated memory on CUDA."""
    return PeakCUDA() if torch.device(device).type == "cuda" else PeakRSS()


# ----------------------------------------------------------------------------------------------
# Child processes and sizes


def run_child(module: str, args: list[str], timeout: float = 1800) -> dict | None:
    """Run `python -m module args` in a fresh process; its last stdout line is JSON. None if it died (e.g. OOM)."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        print(f"  child {' '.join(args)} failed (exit {proc.returncode}): {tail}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:,.0f}"
