"""What every written result shares, in the lab (experiments/) and the benchmarks alike: the machine and
device lines that head a report, Markdown tables, and matplotlib's pyplot on a file-only backend.

It lives here, beside neither of them, so that experiments and benchmarks both import it without one depending
on the other, and the library (gan/) imports none of them. It imports nothing from this repository.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
from collections.abc import Sequence
from pathlib import Path

import torch


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, imported late: the run paths never need it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def machine_line() -> str:
    """CPU model, cores this process may use, memory, torch version and threads, the date (UTC)."""
    model = platform.processor() or "unknown CPU"
    with open("/proc/cpuinfo") as fh:
        found = re.search(r"^model name\s*:\s*(.+)$", fh.read(), re.M)
    if found:
        model = found.group(1).strip()
    cores = len(os.sched_getaffinity(0))
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    flags = Path("/proc/cpuinfo").read_text()
    isa = "AVX-512 bf16" if "avx512_bf16" in flags else ("AVX-512" if "avx512f" in flags else "AVX2")
    date = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    return (
        f"{model} ({isa}), {cores} cores, {mem_gib:.0f} GiB; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {date}"
    )


def device_line(device: str | torch.device) -> str:
    """The accelerator a benchmark or experiment ran on: 'NVIDIA H200 (cuda, 139 GiB; CUDA 12.x)' or 'cpu'."""
    device = torch.device(device)
    if device.type != "cuda":
        return "cpu"
    props = torch.cuda.get_device_properties(device)
    return f"{props.name} (cuda, {props.total_memory / 2**30:.0f} GiB; CUDA {torch.version.cuda})"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)
