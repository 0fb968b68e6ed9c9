"""Writing one file: atomically, with the umask's permissions, and a full disk named as such.

Every file the repository writes goes through `atomic_file` (images, model cards, configs, checkpoint JSON
and tensors): the bytes land in a hidden temporary file beside the target, which is flushed, given the mode
an ordinary `open(path, "w")` would give (0666 minus the umask; `tempfile.mkstemp` makes 0600) and renamed
over the target only when complete. A failed write removes the temporary file and re-raises the OSError
with the *target's* name, so the caller can say what could not be written. `disk_full` tells a full disk
(or an exhausted quota) from other OSErrors.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TypeVar

from gan.errors import UserError

T = TypeVar("T")

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # no space left; disk quota exceeded


def umask() -> int:
    """The process's umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The permissions `open(path, "w")` gives a new file: 0666 minus the umask."""
    return 0o666 & ~umask()


class OutputError(UserError, OSError):
    """A file the user asked for could not be written; the message is one line naming it and why."""


def user_output(path: str | os.PathLike, write: Callable[[], T], what_next: str = "pick another output path") -> T:
    """Run `write()`, which writes `path`; an OSError (a full disk, no permission) becomes one line."""
    try:
        return write()
    except OSError as exc:
        raise OutputError(f"cannot write {path} ({exc.strerror or exc}); {what_next}") from None


def disk_full(exc: BaseException) -> bool:
    """Whether `exc` is an OSError for a full disk or an exhausted quota."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL


def naming(exc: OSError, path: str | os.PathLike) -> OSError:
    """The same OSError (class and errno) naming `path`, for errors raised where the file was a temporary."""
    return type(exc)(exc.errno, exc.strerror or str(exc), str(path))


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside `path` for writing; on a clean exit it becomes `path` (umask mode,
    fsynced, renamed into place); on any error it is removed and an OSError names `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename in (None, tmp):
            raise naming(exc, path) from exc
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """`Path(path).write_text(text)`, atomically (see `atomic_file`)."""
    with atomic_file(path, "w") as fh:
        fh.write(text)
    return Path(path)


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append `line` (plus a newline) to `path`; if the write fails (a full disk), the file is cut back to
    its previous length, so it never ends in half a line, and the OSError names `path`."""
    path = Path(path)
    size = path.stat().st_size if path.exists() else 0
    try:
        with open(path, "a") as fh:
            fh.write(line + "\n")
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.truncate(path, size)
        raise naming(exc, path) from exc


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks (never the whole file in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
