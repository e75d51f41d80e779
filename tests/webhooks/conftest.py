"""Webhook fixtures: a real receiver (an aiohttp server in the test process) that verifies every
signature with the ``standardwebhooks`` package, and the system (``llm-router serve`` and a worker,
which delivers) on a Redis of its own, so no other test's worker takes the delivery role.

Long timings are settings scaled down here: backoff 0.1 to 0.4 s, a 3 s lease, a 1 s role TTL.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from redis.asyncio import Redis
from standardwebhooks import Webhook, WebhookVerificationError

from config.catalog import Catalog
from config.settings import Settings
from llm_router.testing.redis_server import RedisServer, free_port
from llm_router.testing.server_proc import ServerProcess
from llm_router.testing.sim_env import simulated_env
from llm_router.testing.worker_procs import WorkerProcess
from llm_router.webhooks.signing import derive_key, secret_text
from producer.http.auth import ApiKeys
from producer.producer import Producer

MASTER_KEY = "webhook-tests-master-key-" + "9" * 16
HANG = -1  # a planned answer: none until ``Receiver.release()`` (then 200), or the test's end


def webhook_env(redis_url: str, sim_url: str, queue: str) -> dict[str, str]:
    env = simulated_env(os.environ, redis_url=redis_url, sim_url=sim_url)
    env.update(
        LLM_ROUTER_QUEUE_NAME=queue,
        LLM_ROUTER_INTERACTIVE_QUEUE_NAME=f"{queue}:interactive",
        LLM_ROUTER_HEARTBEAT_INTERVAL_S="0.2",
        LLM_ROUTER_HEARTBEAT_TTL_S="2",
        LLM_ROUTER_LEASE_S="1",
        LLM_ROUTER_LOG_LEVEL="INFO",
        LLM_ROUTER_WEBHOOK_MASTER_KEY=MASTER_KEY,
        LLM_ROUTER_WEBHOOK_ALLOW="127.0.0.1/32",
        LLM_ROUTER_WEBHOOK_BACKOFF_S="0.1",
        LLM_ROUTER_WEBHOOK_BACKOFF_MAX_S="0.4",
        LLM_ROUTER_WEBHOOK_POLL_S="0.02",
        LLM_ROUTER_WEBHOOK_LEASE_S="3",
        LLM_ROUTER_WEBHOOK_ROLE_TTL_S="1",
        LLM_ROUTER_WEBHOOK_REFRESH_S="0.1",
        LLM_ROUTER_WEBHOOK_TIMEOUT_S="2",
        LLM_ROUTER_WEBHOOK_BREAKER_COOLDOWN_S="0.3",
        LLM_ROUTER_WEBHOOK_BREAKER_MAX_COOLDOWN_S="1",
    )
    env.pop("LLM_ROUTER_AUTH_DISABLED", None)
    env.pop("LLM_ROUTER_API_KEYS_FILE", None)
    return env


def settings_of(env: dict[str, str]) -> Settings:
    return Settings(
        _env_file=None,
        redis_url=env["REDIS_URL"],
        queue_name=env["LLM_ROUTER_QUEUE_NAME"],
        interactive_queue_name=env["LLM_ROUTER_INTERACTIVE_QUEUE_NAME"],
        webhook_allow=env["LLM_ROUTER_WEBHOOK_ALLOW"],
        webhook_master_key=MASTER_KEY,
    )


def secret_of(tenant: str, version: int = 1) -> str:
    """The tenant's signing secret, derived as the system derives it (what `webhooks set` prints)."""
    return secret_text(derive_key(MASTER_KEY.encode(), tenant, version))


@dataclass
class Call:
    """One request the receiver got."""

    at: float
    headers: dict[str, str]
    body: bytes
    status: int

    def verified(self, secret: str) -> dict[str, Any]:
        """The payload, if ``secret`` verifies the signature (``standardwebhooks``); else raises."""
        return Webhook(secret).verify(self.body, self.headers)

    def verifies(self, secret: str) -> bool:
        try:
            self.verified(secret)
        except WebhookVerificationError:
            return False
        return True


@dataclass
class Receiver:
    """A webhook receiver: ``/hook/<name>`` answers each request with the next planned status (200
    once the plan runs out) and remembers every request."""

    port: int
    calls: dict[str, list[Call]] = field(default_factory=lambda: defaultdict(list))
    plans: dict[str, list[int]] = field(default_factory=dict)
    runner: web.AppRunner | None = None
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/hook/{name}"

    def plan(self, name: str, *statuses: int) -> None:
        self.plans[name] = list(statuses)

    def release(self) -> None:
        """Answer every request held by a planned ``HANG`` (with 200)."""
        self.released.set()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        body = await request.read()
        plan = self.plans.get(name) or []
        status = plan.pop(0) if plan else 200
        self.calls[name].append(
            Call(time.time(), {str(k): v for k, v in request.headers.items()}, body, status)
        )
        if status == HANG:
            await self.released.wait()
            status = 200
        headers = {"Retry-After": "0"} if status == 429 else None
        return web.Response(
            status=status, text="ok" if status < 300 else f"planned {status}", headers=headers
        )

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook/{name}", self._handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver(free_port()).start()
    yield r
    await r.stop()


@dataclass
class System:
    """Server and worker on a Redis of their own; the test's producer, Redis client and API keys."""

    env: dict[str, str]
    url: str
    producer: Producer
    redis: Redis
    keys: dict[str, str] = field(default_factory=dict)

    async def key_for(self, tenant: str) -> str:
        if tenant not in self.keys:
            self.keys[tenant] = await ApiKeys(self.redis).create(tenant)
        return self.keys[tenant]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "llm_router.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )


@pytest.fixture(scope="session")
def hooks_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
async def system(
    hooks_redis: RedisServer, sim: Any, sim_catalog: Catalog, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[System]:
    logs: Path = tmp_path_factory.mktemp("webhooks")
    env = webhook_env(hooks_redis.url, sim.url, f"hooks-{uuid.uuid4().hex[:8]}")
    server = ServerProcess(env, logs / "server.log")
    worker = WorkerProcess(env, logs / "worker.log")
    producer = await Producer.connect(settings_of(env), sim_catalog)
    redis = Redis.from_url(hooks_redis.url)
    try:
        await asyncio.to_thread(server.wait_ready)
        deadline = time.monotonic() + 20
        while await producer.live_workers() == 0:
            assert worker.alive() and time.monotonic() < deadline, worker.log_tail()
            await asyncio.sleep(0.05)
        yield System(env=env, url=server.url, producer=producer, redis=redis)
    finally:
        server.stop()
        worker.stop()
        await producer.close()
        await redis.aclose()


def job(text: str, webhook: dict[str, Any] | None = None, **more: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **more}
    if webhook is not None:
        body["webhook"] = webhook
    return body


def payloads(calls: list[Call], secret: str) -> list[dict[str, Any]]:
    return [c.verified(secret) for c in calls]


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)
