"""A diverging run loses nothing: non-finite losses are caught without a host sync per step, and nothing
non-finite is ever written.

`FiniteWatch.fold(stats)` ORs `~isfinite(loss)` into one boolean tensor per loss, on the device, every step
(no host sync). The loop calls `check(step)` at log steps and `check(step, state)` before every checkpoint,
export and `best` write: that reads the flags (one sync) and, before a write, the tensors about to be written.
A failure raises `DivergenceError`, one line naming the steps since the last check, the loss that went
non-finite, the last checkpoint whose tensors are all finite (the newest one: nothing else is written) and
what to try. An fp16 GradScaler that skips a step on inf/NaN gradients leaves losses and weights finite: that is
its normal working, not a divergence, and nothing here sees it.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from gan.errors import UserError

LOSSES = ("loss_d", "loss_g")  # the step's scalars whose non-finiteness is a divergence


class DivergenceError(UserError):
    """Training went non-finite; nothing non-finite was written and the message says how to go on."""


def _tensors(tree: Any, name: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """The floating-point tensors of a nested state (dicts, lists, tuples), with their paths."""
    if isinstance(tree, torch.Tensor):
        if tree.is_floating_point():
            yield name, tree
    elif isinstance(tree, dict):
        for key, value in tree.items():
            yield from _tensors(value, f"{name}.{key}" if name else str(key))
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            yield from _tensors(value, f"{name}[{i}]")


def nonfinite(tree: Any) -> list[str]:
    """Paths of the floating-point tensors of `tree` holding a NaN or an infinity (one host sync per device)."""
    by_device: dict[torch.device, list[tuple[str, torch.Tensor]]] = {}
    for name, t in _tensors(tree):
        by_device.setdefault(t.device, []).append((name, t))
    bad = []
    for items in by_device.values():
        finite = torch.stack([t.isfinite().all() for _, t in items]).cpu()
        bad += [name for (name, _), ok in zip(items, finite.tolist()) if not ok]
    return bad


class FiniteWatch:
    """Per-loss flags folded on the device each step, read only at `check`. `reduce` sums a tensor over the
    processes (all of them stop at the same check, or none)."""

    def __init__(self, device: torch.device, reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> None:
        self.flags = {key: torch.zeros((), dtype=torch.bool, device=device) for key in LOSSES}
        self.reduce = reduce
        self.checked = 0  # the last step known to be finite

    def fold(self, stats: dict[str, torch.Tensor]) -> None:
        for key, flag in self.flags.items():
            if key in stats:
                flag.logical_or_(~torch.isfinite(stats[key]))

    def check(self, step: int, state: Any = None, tail: Callable[[], str] = str) -> None:
        """Raise DivergenceError when a loss went non-finite since the last check, or `state` (about to be
        written) holds a non-finite tensor; `tail()` says what was kept and what to try."""
        flags = self.reduce(torch.stack(list(self.flags.values())).int()).cpu().tolist()
        losses = [key for key, bad in zip(self.flags, flags) if bad]
        tensors = nonfinite(state) if state is not None and not losses else []
        if not losses and not tensors:
            self.checked = step
            return
        steps = f"step {step}" if step == self.checked + 1 else f"steps {self.checked + 1}-{step} (checked every few)"
        what = " and ".join(losses) if losses else f"weight {tensors[0]}"
        raise DivergenceError(f"training diverged in {steps}: {what} went non-finite; {tail()}")


def last_finite(ckpt_dir: Path) -> Path | None:
    """The newest intact checkpoint under `ckpt_dir` whose tensors are all finite (this loop writes no other
    kind, but a directory may hold older ones), or None."""
    from gan.checkpoint import CheckpointError, list_checkpoints, load_checkpoint

    for path in reversed(list_checkpoints(ckpt_dir)):
        try:
            state = load_checkpoint(path)[0]
        except CheckpointError:
            continue
        if not nonfinite(state):
            return path
    return None


def advice(ckpt_dir: Path, cfg: Any, resume_command: str) -> str:
    """What was kept (the last checkpoint whose tensors are all finite) and what to try: a tenth of the learning
    rates, float32 when the run used mixed precision, resuming from that checkpoint."""
    last = last_finite(ckpt_dir)
    o = cfg.optim
    changes = f"optim.lr_g={o.lr_g / 10:g} optim.lr_d={o.lr_d / 10:g}"
    fp32 = cfg.train.mixed_precision != "no"
    if fp32:
        changes += " train.mixed_precision=no"
    try_ = f"try lower learning rates{' and float32' if fp32 else ''}"
    if last is None:
        command = resume_command.replace("--resume latest", "--overwrite")
        return f"no checkpoint was written yet (none is, with non-finite tensors); {try_}: {command} {changes}"
    command = resume_command.replace("--resume latest", f"--resume {shlex.quote(str(last))}")
    return f"nothing non-finite was written; the last checkpoint, all finite, is {last}; {try_}: {command} {changes}"
