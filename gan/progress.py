"""Progress of long work: a tqdm bar on a terminal, plain periodic lines anywhere else (a log file, a pipe),
where a bar's redraws would pile up as hundreds of '\\r'-joined copies.

`bar(total, ...)` is what the training loop shows. Long scoring reports through `reported(what)`: inside it,
`tracked(total)` (which gan.sampling.generate calls) shows a bar or lines; outside it, it is silent, so the
training run's closing coherence line and the tests stay quiet.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from collections.abc import Callable, Iterator
from typing import Any, TextIO

LINES = 20  # about this many plain lines over a whole run, plus the last

_reporting: contextvars.ContextVar[str | None] = contextvars.ContextVar("reporting", default=None)


class PlainProgress:
    """tqdm's `update` / `set_postfix` / `close`, written as a line at every 1/LINES of the total and at the end."""

    def __init__(self, total: int, initial: int = 0, unit: str = "step", desc: str = "", file: TextIO | None = None):
        self.total, self.n, self.unit, self.desc = total, initial, unit, desc
        self.file = file if file is not None else sys.stderr
        self.every = max(1, total // LINES)
        self.postfix = ""
        self.shown = initial

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n // self.every > self.shown // self.every or self.n >= self.total:
            self.show()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = " ".join(f"{k}={v}" for k, v in values.items())

    def show(self) -> None:
        if self.shown == self.n:
            return
        self.shown = self.n
        pct = 100 * self.n // max(self.total, 1)
        line = f"{self.desc}{': ' if self.desc else ''}{self.n}/{self.total} {self.unit}s ({pct}%)"
        print(f"{line} {self.postfix}".rstrip(), file=self.file, flush=True)

    def close(self) -> None:
        if self.n != self.shown:
            self.show()


def bar(total: int, *, initial: int = 0, unit: str = "step", desc: str = "", enabled: bool = True) -> Any:
    """A tqdm bar when stderr is a terminal, else a PlainProgress; with `enabled` False, one that shows nothing."""
    from tqdm.auto import tqdm

    if enabled and not sys.stderr.isatty():
        return PlainProgress(total, initial, unit, desc)
    return tqdm(total=total, initial=initial, unit=unit, desc=desc or None, disable=not enabled)


@contextlib.contextmanager
def reported(what: str) -> Iterator[None]:
    """Within this block, `tracked` work shows its progress, labelled `what`."""
    token = _reporting.set(what)
    try:
        yield
    finally:
        _reporting.reset(token)


@contextlib.contextmanager
def tracked(total: int, unit: str = "image") -> Iterator[Callable[[int], None]]:
    """`advance(n)` for a loop over `total` items: shown inside `reported`, a no-op elsewhere."""
    what = _reporting.get()
    if what is None:
        yield lambda n: None
        return
    progress = bar(total, unit=unit, desc=what)
    try:
        yield progress.update
    finally:
        progress.close()
