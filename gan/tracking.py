"""What a run writes and hears between steps: attention statistics, images for the trackers, the metrics log
(metrics.jsonl mirrored to the trackers) and the stop signal. Used by gan/train_loop.py."""

from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator

from gan.attention import attention_blocks, attention_entropy, gate_of, record_attention
from gan.files import append_line
from gan.runtime import eval_mode


def attention_stats(G: torch.nn.Module, D: torch.nn.Module, z, y, real, y_real) -> dict[str, float]:
    """How far every attention block of G (on z) and D (on real images) has opened, `gate/<kind>/<net>.<block>`
    (gan.attention.gate_of: gamma, the norm of `out`'s weight under the zero-initialised gate, or the RMS of
    tanh(a) under the channel gate; 0 at init), and the mean row entropy of its attention."""
    out: dict[str, float] = {}
    for tag, net, args in (("G", G, (z, y)), ("D", D, (real, y_real))):
        blocks = attention_blocks(net)
        if not blocks:
            continue
        with eval_mode(net), record_attention(net) as records:
            net(*args)
        for (name, block), record in zip(blocks, records):
            kind, value = gate_of(block)
            out[f"gate/{kind}/{tag}.{name}"] = value
            out[f"attn_entropy/{tag}.{name}"] = attention_entropy(record.weights).item()
    return out


def log_image(accelerator: Accelerator, key: str, image: np.ndarray, step: int) -> None:
    """Send an (H, W, 3) uint8 image to every tracker."""
    for tracker in accelerator.trackers:
        if tracker.name == "wandb":
            tracker.log_images({key: [image]}, step=step)
        elif tracker.name == "tensorboard":
            tracker.log_images({key: image[None]}, step=step, dataformats="NHWC")


def strict(value: Any) -> Any:
    """`value` with every non-finite float (NaN, +-inf, which JSON cannot hold) turned into None (null)."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


class RunLog:
    """metrics.jsonl in the run directory (main process) mirrored to the trackers. Every line is strict JSON:
    a non-finite value (a diverged loss) is written as null; the trackers get the value itself."""

    def __init__(self, run_dir: Path, accelerator: Accelerator) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.accelerator = accelerator

    def write(self, step: int, values: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            record = {"step": step, "time": time.time(), **{k: strict(v) for k, v in values.items()}}
            append_line(self.path, json.dumps(record, allow_nan=False))
        self.accelerator.log(values, step=step)


class StopSignal:
    """SIGINT / SIGTERM ask the loop to checkpoint and return at the next step boundary."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
