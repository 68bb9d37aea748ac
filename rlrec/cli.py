"""Turning known errors into one clear line instead of a traceback, for the entry points."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator

from rlrec.checkpoint import CheckpointError
from rlrec.config import ConfigError


@contextmanager
def friendly_errors() -> Iterator[None]:
    """Print ``error: <message>`` and exit with status 2 on a configuration or checkpoint error."""
    try:
        yield
    except (ConfigError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
