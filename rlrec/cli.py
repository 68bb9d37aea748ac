"""Turning known errors into one clear line instead of a traceback, for the entry points."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator

from rlrec.checkpoint import CheckpointError
from rlrec.config import ConfigError
from rlrec.data.obd import OBDFormatError


@contextmanager
def friendly_errors() -> Iterator[None]:
    """Print ``error: <message>`` and exit with status 2 on a configuration, checkpoint or data-file error."""
    try:
        yield
    except (ConfigError, CheckpointError, OBDFormatError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
