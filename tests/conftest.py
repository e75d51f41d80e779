"""Session fixtures: a real redis-server on a free port, the shipped catalog with simulator keys."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import aiohttp
import pytest
from redis.asyncio import Redis

from config.catalog import Catalog
from config.settings import DEFAULT_CATALOG, Settings
from llm_router.testing.redis_server import RedisServer, free_port
from llm_router.testing.sim_env import SIM_KEYS
from producer.producer import Producer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(autouse=True)
def fresh_breakers(redis_server: RedisServer) -> None:
    """Breakers, rate limits and learned limits are fleet-wide by design, so a test starts with none."""
    import redis as sync_redis

    client = sync_redis.Redis.from_url(redis_server.url)
    for pattern in (
        "llm-router:breaker:*",
        "llm-router:probes:*",
        "llm-router:rpm:*",
        "llm-router:tpm:*",
        "llm-router:conc:*",  # learned concurrency limits and latency
        "llm-router:slots:*",
    ):
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.delete(*keys)
    client.delete("llm-router:sick")
    client.close()


@pytest.fixture(scope="session")
def sim_catalog() -> Catalog:
    """The shipped catalog as a worker pointed at the simulator sees it (placeholder keys only)."""
    return Catalog.from_path(DEFAULT_CATALOG, env=SIM_KEYS, upstream="http://127.0.0.1:9")


@pytest.fixture
def settings(redis_server: RedisServer) -> Settings:
    """Settings on the test Redis with a queue of its own, so tests never see each other's jobs."""
    return Settings(_env_file=None, redis_url=redis_server.url, queue_name=f"test-{uuid.uuid4().hex[:10]}")


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
async def producer(settings: Settings, sim_catalog: Catalog) -> AsyncIterator[Producer]:
    p = await Producer.connect(settings, sim_catalog)
    yield p
    await p.close()


class Sim:
    """The simulator running as its own process, driven through its control API."""

    def __init__(self, url: str, proc: subprocess.Popen[bytes]) -> None:
        self.url = url
        self.proc = proc

    async def faults(self, *rules: dict, replace: bool = True) -> None:
        async with aiohttp.ClientSession() as s:
            r = await s.post(f"{self.url}/_sim/faults", json={"rules": list(rules), "replace": replace})
            assert r.status == 200, await r.text()

    async def calls(self) -> dict:
        async with aiohttp.ClientSession() as s:
            r = await s.get(f"{self.url}/_sim/calls")
            return await r.json()


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("simulator exited early")
        try:
            with urllib.request.urlopen(url, timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


@pytest.fixture(scope="session")
def sim() -> Iterator[Sim]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llm_router.cli", "simulate", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{url}/_sim/calls", proc)
        yield Sim(url, proc)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def _until(check: Callable[[], object], timeout: float = 20, what: str = "condition") -> object:
    """Poll ``check`` (sync or async) until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@pytest.fixture
def until() -> Callable[..., Awaitable[object]]:
    """``await until(check, timeout=…, what=…)``: poll with a deadline, never a bare sleep."""
    return _until
