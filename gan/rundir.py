"""Guarding a run directory: one run's history per directory, nothing ever deleted that a user could want.

- One run at a time: `lock` takes an exclusive `flock` on `<parent>/.<run-dir name>.lock` (beside the
  directory, so `--overwrite` can move the directory aside under it) and writes the holder's pid, host and
  start time into it. The OS drops the lock when the process ends, however it ends (kill -9 included), so
  a lock is never stale; a second run, fresh or `--resume`, refuses in one line naming the holder.
- A fresh run refuses a directory that already holds a run (checkpoints or metrics.jsonl), unless
  `overwrite`, which moves the old run aside to `<run-dir>.old-<UTC time>` (never deletes it).
- A resume from step k moves what the old run wrote after step k (metrics.jsonl lines, checkpoints, sample
  grids and attention maps of later steps) into `<run-dir>/discarded-after-step_<k>/`, so the directory
  then holds one consistent history and keep_last pruning never weighs the old run's later checkpoints
  against the resumed run's new ones.
- Temporary directories that killed writers left behind (`.tmp-<name>-<pid>`, `.old-<name>-<pid>`, see
  gan/checkpoint.py) are removed when their process is gone; a live writer's are left alone.
Only the main process calls these; each returns the lines to print.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import socket
import time
from pathlib import Path

from gan.errors import UserError
from gan.files import write_text

_TEMP = re.compile(r"^\.(?:tmp|old)-.+-(\d+)$")  # what gan.atomic_folder.write_atomically leaves on a crash
_STEP_FILE = re.compile(r"^step_(\d{8,})(?:_[A-Za-z]+)?(?:\.png)?$")  # checkpoints, sample grids, attention maps


class RunDirError(UserError, ValueError):
    """The run directory holds another run; the message is one line that says what to do."""


class RunLock:
    """An exclusive lock on a run directory, held until `release()` or the end of the process."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd, self.path = fd, path

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = -1

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_path(run_dir: Path) -> Path:
    """The lock file of `run_dir`: a hidden file beside it (it survives `--overwrite` moving the directory)."""
    run_dir = Path(run_dir).resolve()
    return run_dir.parent / f".{run_dir.name}.lock"


def lock(run_dir: Path) -> RunLock:
    """Take the run directory's lock, or refuse in one line (RunDirError) naming the process that holds it."""
    path = lock_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = ""
        for _ in range(20):  # a holder that has just locked writes its line a moment later
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            if holder:
                break
            time.sleep(0.05)
        os.close(fd)
        holder = holder or "holder not recorded"
        raise RunDirError(
            f"{run_dir} is in use by another run ({holder}; lock file {path}); wait for it to end or stop it, "
            "or pass another --run-dir"
        ) from None
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n".encode(), 0)
    return RunLock(fd, path)


def disk_full_message(exc: OSError, run_dir: Path, resume_command: str) -> str:
    """The one line for a write that failed on a full disk: what, where the last complete checkpoint is, and
    how to go on once space is freed (the writers leave no partial files, see gan/files.py)."""
    from gan.checkpoint import newest_usable

    what = exc.filename or "an output file"
    newest, _ = newest_usable(Path(run_dir) / "checkpoints")
    if newest is None:
        after = f"no checkpoint is complete yet: free space, then start again (add --overwrite to move {run_dir} aside)"
    else:
        after = f"the last complete checkpoint is {newest}; free space, then resume with: {resume_command}"
    return f"disk full: could not write {what} ({exc.strerror or exc}; nothing partial left); {after}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(run_dir: Path) -> list[str]:
    """Delete the temporary directories of writers that were killed (their PID no longer runs)."""
    stale = []
    for parent in (run_dir, run_dir / "checkpoints"):
        if not parent.is_dir():
            continue
        for p in sorted(parent.iterdir()):
            m = _TEMP.match(p.name)
            if m and p.is_dir() and not pid_alive(int(m.group(1))):
                shutil.rmtree(p, ignore_errors=True)
                stale.append(p.name)
    if not stale:
        return []
    return [
        f"removed {len(stale)} temporary director{'y' if len(stale) == 1 else 'ies'} left by killed writers in {run_dir}: {', '.join(stale)}"
    ]


def holds_a_run(run_dir: Path) -> bool:
    ckpts = run_dir / "checkpoints"
    has_ckpt = ckpts.is_dir() and any(_STEP_FILE.match(p.name) or p.name == "best" for p in ckpts.iterdir())
    metrics = run_dir / "metrics.jsonl"
    return has_ckpt or (metrics.is_file() and metrics.stat().st_size > 0)


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime())


def refuse_if_taken(run_dir: Path) -> None:
    """One-line RunDirError when `run_dir` holds a run that a fresh run would mix with."""
    if holds_a_run(run_dir):
        raise RunDirError(
            f"{run_dir} already holds a run (checkpoints or metrics.jsonl): continue it with `--resume latest`, "
            f"pass a new `--run-dir`, or add `--overwrite` to move it aside to {run_dir}.old-<time>"
        )


def start_fresh(run_dir: Path, overwrite: bool) -> list[str]:
    """Refuse (one line) a directory holding a run; with `overwrite`, move that run aside first."""
    lines = remove_stale_temporaries(run_dir)
    if not holds_a_run(run_dir):
        return lines
    if not overwrite:
        refuse_if_taken(run_dir)
    aside = run_dir.with_name(f"{run_dir.name}.old-{_stamp()}")
    n = 1
    while aside.exists():
        aside, n = run_dir.with_name(f"{run_dir.name}.old-{_stamp()}-{n}"), n + 1
    os.replace(run_dir, aside)
    return [*lines, f"--overwrite: moved the previous run in {run_dir} to {aside} (nothing deleted)"]


def _metric_step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def discard_after(run_dir: Path, step: int) -> list[str]:
    """Move everything the old run wrote after `step` into `run_dir/discarded-after-step_<step>/`."""
    lines = remove_stale_temporaries(run_dir)
    aside = run_dir / f"discarded-after-step_{step:08d}"
    if aside.exists():
        aside = run_dir / f"discarded-after-step_{step:08d}-{_stamp()}"
    moved: dict[str, int] = {}

    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        keep, later = [], []
        for line in metrics.read_text().splitlines(keepends=True):
            s = _metric_step(line)
            (later if s is not None and s > step else keep).append(line)
        if later:
            aside.mkdir(parents=True, exist_ok=True)
            write_text(aside / "metrics.jsonl", "".join(later))
            write_text(metrics, "".join(keep))
            moved["metric lines"] = len(later)

    for sub, what in (("checkpoints", "checkpoints"), ("samples", "sample grids"), ("attention", "attention maps")):
        folder = run_dir / sub
        if not folder.is_dir():
            continue
        for p in sorted(folder.iterdir()):
            m = _STEP_FILE.match(p.name)
            if m and int(m.group(1)) > step:
                (aside / sub).mkdir(parents=True, exist_ok=True)
                os.replace(p, aside / sub / p.name)
                moved[what] = moved.get(what, 0) + 1
    best = run_dir / "checkpoints" / "best"
    try:
        best_step = int(json.loads((best / "meta.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        best_step = None
    if best_step is not None and best_step > step:  # the resumed state's own record of its best comes along
        (aside / "checkpoints").mkdir(parents=True, exist_ok=True)
        os.replace(best, aside / "checkpoints" / "best")
        moved["checkpoints"] = moved.get("checkpoints", 0) + 1
    if moved:
        counts = ", ".join(f"{n} {what}" for what, n in moved.items())
        lines.append(f"resuming at step {step}: moved what the old run wrote after it ({counts}) to {aside}")
    return lines


def outputs_summary(run_dir: Path, step: int, keep_last: int, export: Path) -> list[str]:
    """The end-of-run lines: where every output of a finished run landed."""
    from gan.checkpoint import latest_checkpoint

    grids = sorted((run_dir / "samples").glob("step_*.png"))
    maps = sorted((run_dir / "attention").glob(f"step_{step:08d}_*.png"))
    outputs = (
        ("samples", grids[-1] if grids else None, "fixed-noise grids"),
        ("attention maps", ", ".join(map(str, maps)), "G on generated, D on real images"),
        ("metrics", run_dir / "metrics.jsonl", "one JSON object per log step"),
        ("checkpoint", latest_checkpoint(run_dir / "checkpoints"), f"newest of the last {keep_last} kept"),
        ("generator export", export, "generator.safetensors + config.json, for sample.py / evaluate.py"),
    )
    return [f"step {step}: done; outputs in {run_dir}"] + [
        f"  {what}: {path} ({note})" for what, path, note in outputs if path
    ]
