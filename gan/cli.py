"""What the entry scripts share: user mistakes end in one line on stderr and exit status 2, and output piped
into a reader that stops early (`train.py --help-config | head`) ends quietly."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterator
from typing import NoReturn

from gan.errors import UserError
from gan.files import disk_full


@contextlib.contextmanager
def fail_cleanly() -> Iterator[None]:
    """Turn a `UserError` into `error: <message>` and exit status 2, and a full disk (or quota) that no caller
    explained further into one line naming the file; anything else is a bug and keeps its traceback."""
    try:
        yield
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        if not disk_full(exc):
            raise
        what = exc.filename or "a file"
        print(f"error: disk full: could not write {what} ({exc.strerror}); free space, then run the same command again",
              file=sys.stderr)  # fmt: skip
        sys.exit(2)


def run(main: Callable[[], int]) -> NoReturn:
    """`sys.exit(main())` for an entry script. When stdout's reader has gone (a pipe into `head`), stop
    quietly with the status a process killed by SIGPIPE has (141), as `cat` or `yes` would, instead of
    a BrokenPipeError traceback (Python ignores SIGPIPE, so the write fails instead of ending the process)."""
    try:
        try:
            code = main()
        finally:
            sys.stdout.flush()  # what is still buffered fails here, not in the interpreter's exit
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # exit's own flush then goes nowhere
        code = 128 + signal.SIGPIPE
    sys.exit(code)
