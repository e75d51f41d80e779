"""Observability fixtures: ``llm-router serve`` and two ``llm-router worker`` processes with metrics ports,
on the simulator and the test Redis, as an operator would run them.

Both workers ask for port 0 (several workers on one host): each logs the port it got. The workers
log JSON lines (``LLM_ROUTER_LOG_FORMAT=json``), trip a breaker after two consecutive failures, and
the server refreshes its dashboard every quarter second, so the tests see changes quickly.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from llm_router.testing.redis_server import RedisServer, free_port
from llm_router.testing.sim_env import simulated_env
from llm_router.testing.worker_procs import WorkerProcess, terminate
from producer.http.auth import ApiKeys

ADMIN_TENANT = "ops"
USER_TENANT = "acme"


def http(
    method: str, url: str, *, body: Any = None, headers: dict[str, str] | None = None, timeout: float = 10
) -> tuple[int, bytes, dict[str, str]]:
    """One request; (status, body, headers) whatever the status."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def wait_until(check: Any, timeout: float = 20, what: str = "condition", every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


def json_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


@dataclass
class ObsFleet:
    """The running processes: the server's ``url``, each worker's metrics URL, keys, the env."""

    url: str
    env: dict[str, str]
    redis_url: str
    queue: str
    admin_key: str
    user_key: str
    server: subprocess.Popen[bytes]
    server_log: Path
    workers: list[WorkerProcess]
    worker_metrics: list[str] = field(default_factory=list)

    def submit(self, jobs: list[dict[str, Any]], key: str | None = None) -> list[str]:
        status, body, _ = http(
            "POST",
            f"{self.url}/v1/jobs",
            body={"jobs": jobs},
            headers={"Authorization": f"Bearer {key or self.user_key}"},
        )
        assert status in (200, 201), body
        return [line["id"] for line in json.loads(body)["data"]]

    def record(self, job_id: str) -> dict[str, Any]:
        status, body, _ = http(
            "GET", f"{self.url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {self.user_key}"}
        )
        assert status == 200, body
        return json.loads(body)

    def wait_ended(self, ids: list[str], timeout: float = 20) -> list[dict[str, Any]]:
        def ended() -> list[dict[str, Any]] | None:
            records = [self.record(i) for i in ids]
            return (
                records if all(r["status"] in ("succeeded", "failed", "cancelled") for r in records) else None
            )

        return wait_until(ended, timeout, "jobs to end", every=0.1)


def _metrics_port(worker: WorkerProcess) -> int | None:
    for line in json_lines(worker.log_path):
        if line.get("event") == "metrics serving":
            return int(line["port"])
    return None


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _keys(redis_url: str) -> tuple[str, str]:
    redis = Redis.from_url(redis_url)
    try:
        keys = ApiKeys(redis)
        return await keys.create(ADMIN_TENANT, admin=True), await keys.create(USER_TENANT)
    finally:
        await redis.aclose()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A Redis of this directory's own: the batcher is one role per Redis, and these tests need it
    held by their own workers, with their settings, never by another file's fleet in this pytest
    process (alive, or just killed while holding it)."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def obs_fleet(
    redis_server: RedisServer, sim: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ObsFleet]:
    logs = tmp_path_factory.mktemp("observability")
    queue = f"obs-{uuid.uuid4().hex[:8]}"
    env = simulated_env(os.environ, redis_url=redis_server.url, sim_url=sim.url)
    env.update(
        LLM_ROUTER_QUEUE_NAME=queue,
        LLM_ROUTER_INTERACTIVE_QUEUE_NAME=f"{queue}:interactive",
        LLM_ROUTER_HEARTBEAT_INTERVAL_S="0.5",
        LLM_ROUTER_RETRY_BACKOFF_S="0.2",
        LLM_ROUTER_RETRY_BUDGET_RATIO="1.0",
        LLM_ROUTER_BREAKER_CONSECUTIVE="2",
        LLM_ROUTER_BREAKER_COOLDOWN_S="60",
        LLM_ROUTER_DASHBOARD_REFRESH_S="0.25",
        # a batch-lane job is in a provider batch within a second (the dashboard's lanes panel)
        LLM_ROUTER_LANES_BATCH_AGE_S="0.3",
        LLM_ROUTER_LANES_POLL_S="0.3",
        LLM_ROUTER_LOG_FORMAT="json",
        LLM_ROUTER_LOG_LEVEL="INFO",
    )
    for name in (
        "LLM_ROUTER_AUTH_DISABLED",
        "LLM_ROUTER_API_KEYS_FILE",
        "LLM_ROUTER_OTEL",
        "LLM_ROUTER_METRICS_PORT",
    ):
        env.pop(name, None)
    port = free_port()
    server_log = logs / "server.log"
    server_out = open(server_log, "ab")  # noqa: SIM115 - closed at teardown
    server = subprocess.Popen(
        [sys.executable, "-m", "llm_router.cli", "serve", "--port", str(port)],
        env=env,
        stdout=server_out,
        stderr=server_out,
    )
    worker_env = {**env, "LLM_ROUTER_METRICS_PORT": "0", "LLM_ROUTER_METRICS_HOST": "127.0.0.1"}
    workers = [WorkerProcess(worker_env, logs / f"worker-{i}.log") for i in range(2)]
    fleet = ObsFleet(
        url=f"http://127.0.0.1:{port}",
        env=env,
        redis_url=redis_server.url,
        queue=queue,
        admin_key="",
        user_key="",
        server=server,
        server_log=server_log,
        workers=workers,
    )
    try:
        fleet.admin_key, fleet.user_key = _run(_keys(redis_server.url))

        def up() -> bool:
            assert server.poll() is None, server_log.read_text()
            try:
                return http("GET", f"{fleet.url}/healthz", timeout=0.5)[0] == 200
            except OSError:
                return False

        wait_until(up, 30, "the server")
        for w in workers:
            p = wait_until(
                lambda w=w: (w.alive() or pytest.fail(w.log_tail())) and _metrics_port(w), 30, "a port"
            )
            fleet.worker_metrics.append(f"http://127.0.0.1:{p}")
        yield fleet
    finally:
        terminate(server)
        server_out.close()
        for w in workers:
            w.stop()
