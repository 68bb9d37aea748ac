"""The entry points' error handling: a known problem is one ``error:`` line and exit status 2.

Configuration, checkpoint, run-directory and data-file errors are the user's to fix, so they
are reported as one sentence naming the problem and the fix, never as a traceback. Hydra's own
errors (an unknown config option, a value of the wrong type) are condensed the same way. A
traceback is left for what is a bug in rlrec.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rlrec.config import ConfigError
from rlrec.data.obd import OBDFormatError
from rlrec.train.run import RunError

USER_ERRORS = (ConfigError, RunError, OBDFormatError)


def one_line(message: str) -> str:
    """A multi-line message as one line (Hydra's messages span several; the lines after a
    ``...:`` header, such as its list of available options, become a comma-separated list)."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    lines = [
        x
        for x in lines
        if not x.startswith(("Set the environment variable HYDRA_FULL_ERROR", "Config search path", "provider="))
    ]
    out, listing = "", False
    for line in lines:
        if not out:
            out = line
        elif listing and not line.endswith(":"):
            out += (" " if out.endswith(":") else ", ") + line
        else:
            out += (" " if out.endswith(":") else "; ") + line
        listing = line.endswith(":") or (listing and not line.endswith(":"))
    return out


def _fail(message: str) -> None:
    print(f"error: {one_line(message)}", file=sys.stderr)
    raise SystemExit(2)


@contextmanager
def friendly_errors() -> Iterator[None]:
    """Report a user error (config, checkpoint, run directory, data file, I/O) as one ``error:`` line, exit 2."""
    try:
        yield
    except USER_ERRORS as err:
        _fail(str(err))
    except OSError as err:  # a read-only directory, a full disk...
        where = f" {err.filename}" if err.filename else ""
        _fail(f"cannot use{where}: {err.strerror or err}")
    except RuntimeError as err:  # torch reports memory exhaustion as a RuntimeError (OutOfMemoryError on CUDA)
        if not _out_of_memory(err):
            raise
        _fail(
            f"out of memory ({one_line(str(err))[:200]}): lower env.num_users, agent.batch_size or "
            "agent.buffer_size, or use a device with more memory"
        )


def _out_of_memory(err: BaseException) -> bool:
    import torch

    text = str(err).lower()
    return isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in text or "out of memory" in text


def run_entry_point(main: Callable[[], object]) -> None:
    """Run a ``@hydra.main`` function with every error a user can cause reported as one line.

    Hydra reports composition errors itself (several lines, exit 1) unless HYDRA_FULL_ERROR
    is set, in which case it raises them: that is what lets them be condensed here.
    """
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    os.environ["HYDRA_FULL_ERROR"] = "1"
    with friendly_errors():
        try:
            main()
        except KeyboardInterrupt:
            print("interrupted: the last checkpoint is kept; run the same command to resume.", file=sys.stderr)
            raise SystemExit(130) from None
        except (HydraException, OmegaConfBaseException) as err:
            cause = err.__cause__ if isinstance(err.__cause__, (OmegaConfBaseException, ConfigError)) else None
            if isinstance(cause, ConfigError):
                raise cause from None
            _fail(f"{err}" + (f": {cause}" if cause is not None else ""))
