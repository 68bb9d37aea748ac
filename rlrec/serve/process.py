"""The service as a subprocess on a free local port: what tests and benchmarks talk to over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SERVE_PY = Path(__file__).resolve().parents[2] / "serve.py"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServiceProcess:
    """``python serve.py model=<model> store.path=<store> <overrides>`` on 127.0.0.1, until stopped.

    Use as a context manager, or :meth:`start` then :meth:`stop` / :meth:`kill`. Its output
    goes to a log file (:meth:`output`), so a chatty server never blocks on a full pipe.
    """

    def __init__(self, model: str | Path, store: str | Path, *overrides: str, port: int | None = None) -> None:
        self.model, self.store, self.overrides = str(model), str(store), list(overrides)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="rlrec-serve-", suffix=".log", delete=False)

    def start(self, timeout: float = 120.0) -> ServiceProcess:
        import httpx

        cmd = [
            sys.executable,
            str(SERVE_PY),
            f"model={self.model}",
            f"store.path={self.store}",
            "host=127.0.0.1",
            f"port={self.port}",
            *self.overrides,
        ]
        env = {**os.environ, "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service exited ({self.proc.returncode}) at start:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"the service did not answer /healthz within {timeout} s:\n{self.output()}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def kill(self) -> None:
        """``kill -9``: no shutdown, no flush."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (uvicorn's graceful shutdown: answer what is in flight, commit the log), then wait."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        Path(self._log.name).unlink(missing_ok=True)
