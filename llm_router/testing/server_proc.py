"""``llm-router serve`` as a child process, for the tests that talk to the HTTP API over the wire."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from llm_router.testing.redis_server import free_port
from llm_router.testing.worker_procs import terminate


class ServerProcess:
    """``llm-router serve`` as a child process; stderr to ``log_path``."""

    def __init__(self, env: Mapping[str, str], log_path: Path, *, extra_args: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        args = [sys.executable, "-m", "llm_router.cli", "serve", "--port", str(self.port), *extra_args]
        self.proc = subprocess.Popen(args, env=dict(env), stdout=self._log, stderr=self._log)

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited early:\n{self.log_tail()}"
            try:
                with urllib.request.urlopen(f"{self.url}/openapi.json", timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"server did not answer within {timeout} s:\n{self.log_tail()}")

    def stop(self) -> None:
        terminate(self.proc)
        self._log.close()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
