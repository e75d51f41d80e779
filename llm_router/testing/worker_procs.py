"""Worker processes started by the demo and the tests (``llm-router worker`` as a child process)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path


def terminate(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; returns the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


class WorkerProcess:
    """One ``llm-router worker`` child; its stderr goes to ``log_path``."""

    def __init__(self, env: Mapping[str, str], log_path: Path, *, max_jobs: int | None = None) -> None:
        self.log_path = log_path
        args = [sys.executable, "-m", "llm_router.cli", "worker"]
        if max_jobs:
            args += ["--max-jobs", str(max_jobs)]
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, env=dict(env), stdout=self._log, stderr=self._log)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        code = terminate(self.proc, timeout)
        self._log.close()
        return code

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self._log.close()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Fleet:
    """Worker processes on one queue, started on demand (each may add env) and all killed at the end."""

    def __init__(self, env: Mapping[str, str], logs: Path) -> None:
        self.env = dict(env)
        self.logs = logs
        self.procs: list[WorkerProcess] = []

    def start(self, max_jobs: int | None = None, **env: str) -> WorkerProcess:
        proc = WorkerProcess(
            {**self.env, **env}, self.logs / f"worker-{len(self.procs)}.log", max_jobs=max_jobs
        )
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for p in self.procs:
            if p.alive():
                p.kill()
