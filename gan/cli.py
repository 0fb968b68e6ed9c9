"""What the entry scripts share: user mistakes end in one line on stderr and exit status 2."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from gan.errors import UserError


@contextlib.contextmanager
def fail_cleanly() -> Iterator[None]:
    """Turn a `UserError` into `error: <message>` and exit status 2; anything else is a bug and keeps its traceback."""
    try:
        yield
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
