"""HTTP API fixtures: ``llm-router serve`` and workers as separate processes, talking only through Redis.

``api`` is the server every HTTP test (and the batch tests) shares: workers on its bulk and
interactive queues, the simulator upstream. ``idle_api`` is a second server on queues no worker
serves, with a tiny per-tenant queue limit: jobs stay queued there, so cancel, 429 and 503 are
deterministic. Both hand out API keys per tenant (``key_for``), created through the auth module the
way ``llm-router keys create`` does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest
from redis.asyncio import Redis

from config.settings import Settings
from llm_router.testing.redis_server import RedisServer
from llm_router.testing.server_proc import ServerProcess
from llm_router.testing.sim_env import simulated_env
from llm_router.testing.worker_procs import WorkerProcess
from producer.http.auth import ApiKeys

SERVER_MAX_BODY_BYTES = 256 * 1024  # small, so a 413 test needs no large body
IDLE_MAX_QUEUED = 3


def _run_async(coro: Any) -> Any:
    """Run a coroutine to completion from sync code, even inside a running event loop (async tests)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _create_key(redis_url: str, tenant: str) -> str:
    redis = Redis.from_url(redis_url)
    try:
        return await ApiKeys(redis).create(tenant)
    finally:
        await redis.aclose()


@dataclass
class Api:
    """A running server: its base ``url`` (no ``/v1``), the ``settings`` it runs with, keys per tenant."""

    url: str
    settings: Settings
    server: ServerProcess
    _keys: dict[str, str] = field(default_factory=dict)

    @property
    def redis_url(self) -> str:
        assert self.settings.redis_url is not None
        return self.settings.redis_url.get_secret_value()

    def key_for(self, tenant: str) -> str:
        """An API key of ``tenant`` (created on first use, then reused)."""
        if tenant not in self._keys:
            self._keys[tenant] = _run_async(_create_key(self.redis_url, tenant))
        return self._keys[tenant]

    def headers(self, tenant: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key_for(tenant)}"}

    def openai(self, tenant: str, **kwargs: Any) -> openai.OpenAI:
        """The official SDK on this server with ``tenant``'s key (no retries: tests see every answer)."""
        return openai.OpenAI(
            base_url=f"{self.url}/v1", api_key=self.key_for(tenant), max_retries=0, timeout=30, **kwargs
        )

    def async_openai(self, tenant: str, **kwargs: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=f"{self.url}/v1", api_key=self.key_for(tenant), max_retries=0, timeout=30, **kwargs
        )


def _base_env(redis_server: RedisServer, sim_url: str, queue: str) -> dict[str, str]:
    env = simulated_env(os.environ, redis_url=redis_server.url, sim_url=sim_url)
    env.update(
        LLM_ROUTER_QUEUE_NAME=queue,
        LLM_ROUTER_INTERACTIVE_QUEUE_NAME=f"{queue}:interactive",
        LLM_ROUTER_HEARTBEAT_INTERVAL_S="0.5",
        LLM_ROUTER_RETRY_BACKOFF_S="0.2",
        LLM_ROUTER_RETRY_BUDGET_RATIO="1.0",
        LLM_ROUTER_SERVER_MAX_BODY_BYTES=str(SERVER_MAX_BODY_BYTES),
        LLM_ROUTER_LOG_LEVEL="WARNING",
    )
    env.pop("LLM_ROUTER_AUTH_DISABLED", None)
    env.pop("LLM_ROUTER_API_KEYS_FILE", None)
    return env


def _settings(env: Mapping[str, str]) -> Settings:
    """The server's settings as the tests see them (same Redis, same queue names and limits)."""
    return Settings(
        _env_file=None,
        redis_url=env["REDIS_URL"],
        queue_name=env["LLM_ROUTER_QUEUE_NAME"],
        interactive_queue_name=env["LLM_ROUTER_INTERACTIVE_QUEUE_NAME"],
        server_max_body_bytes=int(env["LLM_ROUTER_SERVER_MAX_BODY_BYTES"]),
        tenant_max_queued=int(env.get("LLM_ROUTER_TENANT_MAX_QUEUED", Settings().tenant_max_queued)),
    )


def _wait_workers(settings: Settings, queues: list[str], procs: list[WorkerProcess]) -> None:
    async def live() -> None:
        redis = Redis.from_url(settings.redis_url.get_secret_value())  # type: ignore[union-attr]
        try:
            deadline = time.monotonic() + 30
            while True:
                now = time.time()
                counts = [
                    await redis.zcount(f"{q}:workers", now - settings.heartbeat_ttl_s, "+inf") for q in queues
                ]
                if all(counts):
                    return
                assert all(p.alive() for p in procs), [p.log_tail() for p in procs]
                assert time.monotonic() < deadline, f"workers did not start: {counts}"
                await asyncio.sleep(0.05)
        finally:
            await redis.aclose()

    _run_async(live())


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A Redis of this directory's own: batch lines run in provider batches, and the batcher is one
    role per Redis; here it is held by these tests' workers (the simulator's fast batch settings),
    never by another directory's fleet in this pytest process, with its own settings (a provider
    batch formed after 60 s), or just killed while holding it."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def http_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("http")


@pytest.fixture(scope="session")
def api(redis_server: RedisServer, sim: Any, http_logs: Path) -> Iterator[Api]:
    """The shared server, and one worker process serving both its queues (interactive and bulk)."""
    env = _base_env(redis_server, sim.url, f"http-{uuid.uuid4().hex[:8]}")
    settings = _settings(env)
    server = ServerProcess(env, http_logs / "server.log")
    workers = [WorkerProcess(env, http_logs / "worker.log")]  # `worker` serves interactive,bulk
    try:
        server.wait_ready()
        _wait_workers(settings, [settings.queue_name, settings.interactive_queue_name], workers)
        yield Api(url=server.url, settings=settings, server=server)
    finally:
        server.stop()
        for w in workers:
            w.stop()


@pytest.fixture(scope="session")
def idle_api(redis_server: RedisServer, sim: Any, http_logs: Path) -> Iterator[Api]:
    """A server whose queues no worker serves, with a per-tenant limit of ``IDLE_MAX_QUEUED`` jobs."""
    env = _base_env(redis_server, sim.url, f"http-idle-{uuid.uuid4().hex[:8]}")
    env["LLM_ROUTER_TENANT_MAX_QUEUED"] = str(IDLE_MAX_QUEUED)
    server = ServerProcess(env, http_logs / "server-idle.log")
    try:
        server.wait_ready()
        yield Api(url=server.url, settings=_settings(env), server=server)
    finally:
        server.stop()
