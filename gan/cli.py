"""What the entry scripts share: user mistakes end in one line on stderr and exit status 2."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def fail_cleanly() -> Iterator[None]:
    """Turn the repository's user-facing errors (all ValueError / RuntimeError subclasses named *Error
    in gan/) into `error: <message>` and exit status 2; anything else is a bug and keeps its traceback."""
    from gan.checkpoint import CheckpointError
    from gan.config import ConfigError

    user_errors: list[type[BaseException]] = [ConfigError, CheckpointError]
    with contextlib.suppress(ImportError):
        from gan.data import DatasetError

        user_errors.append(DatasetError)
    with contextlib.suppress(ImportError):
        from gan.metrics import MetricsError

        user_errors.append(MetricsError)
    try:
        yield
    except tuple(user_errors) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
