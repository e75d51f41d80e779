"""Fleet tests: real ``llm-router`` processes (workers, the server, ``submit``) against private
redis-servers and Sentinel sets, with stdout and stderr kept apart so a test reads what an operator
(or a supervisor's log) would see on stderr."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from llm_router.testing.sim_env import simulated_env
from llm_router.testing.worker_procs import terminate


class Cli:
    """One ``llm-router`` command as a child process; stdout and stderr each go to a file."""

    def __init__(self, args: list[str], env: Mapping[str, str], logs: Path, name: str) -> None:
        self.stdout_path = logs / f"{name}.out"
        self.stderr_path = logs / f"{name}.err"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "llm_router.cli", *args], env=dict(env), stdout=out, stderr=err
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> int:
        return terminate(self.proc)

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def last_line(self) -> str:
        lines = self.stderr().strip().splitlines()
        return lines[-1] if lines else ""


class Procs:
    """Starts commands and kills whatever is still running at the end of the test."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[Cli] = []

    def start(self, env: Mapping[str, str], *args: str) -> Cli:
        cli = Cli(list(args), env, self.logs, f"{args[0]}-{len(self.started)}")
        self.started.append(cli)
        return cli

    def kill_all(self) -> None:
        for cli in self.started:
            if cli.alive():
                cli.proc.kill()
                cli.proc.wait()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    yield p
    p.kill_all()


def fleet_env(sim_url: str, *, redis_url: str = "", **extra: str) -> dict[str, str]:
    """Simulator keys, a queue of the test's own, and ``extra``; ``redis_url`` empty: no REDIS_URL
    (the caller names Redis through Sentinel settings in ``extra``)."""
    env = simulated_env(os.environ, redis_url=redis_url, sim_url=sim_url)
    for name in ("REDIS_URL", "LLM_ROUTER_REDIS_URL", "LLM_ROUTER_REDIS_SENTINELS"):
        env.pop(name, None)
    if redis_url:
        env["REDIS_URL"] = redis_url
    env.update(
        LLM_ROUTER_QUEUE_NAME=f"fleet-{uuid.uuid4().hex[:8]}",
        LLM_ROUTER_LOG_LEVEL="WARNING",
        LLM_ROUTER_HEARTBEAT_INTERVAL_S="0.2",
        LLM_ROUTER_HEARTBEAT_TTL_S="2",
    )
    env.update(extra)
    return env
