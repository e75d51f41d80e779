"""An evicting Redis (``maxmemory-policy`` other than ``noeviction``) silently drops queued jobs,
answers and credit records when full, so workers and the server refuse it at start unless
``LLM_ROUTER_ACCEPT_EVICTION=1``; a Redis that hides its configuration (managed services) is not
refused."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest
from redis.asyncio import Redis

from config.settings import Settings
from llm_router.errors import RedisUnusable
from llm_router.redis_checks import check_eviction_policy
from llm_router.testing.redis_server import RedisServer, free_port
from producer.producer import Producer

from .conftest import Procs, fleet_env

LRU = ["--maxmemory-policy", "allkeys-lru"]


@pytest.fixture(scope="module")
def lru_server():
    with RedisServer(extra_args=LRU) as server:
        yield server


async def test_the_check_refuses_allkeys_lru_and_accepts_it_when_told(lru_server: RedisServer):
    client = Redis.from_url(lru_server.url)
    try:
        with pytest.raises(
            RedisUnusable, match=r"maxmemory-policy allkeys-lru.*LLM_ROUTER_ACCEPT_EVICTION=1"
        ):
            await check_eviction_policy(client, accept_eviction=False)
        assert await check_eviction_policy(client, accept_eviction=True) == "allkeys-lru"
    finally:
        await client.aclose()


async def test_noeviction_passes_and_a_hidden_config_is_not_refused(redis: Redis):
    assert await check_eviction_policy(redis, accept_eviction=False) == "noeviction"
    with RedisServer(extra_args=[*LRU, "--rename-command", "CONFIG", ""]) as managed:
        client = Redis.from_url(managed.url)
        try:
            assert await check_eviction_policy(client, accept_eviction=False) == "unknown"
        finally:
            await client.aclose()


async def test_worker_and_server_refuse_an_evicting_redis_with_the_reason(
    sim, procs: Procs, lru_server: RedisServer
):
    env = fleet_env(sim.url, redis_url=lru_server.url)
    worker = procs.start(env, "worker")
    server = procs.start(env, "serve", "--no-auth", "--port", str(free_port()))
    codes = await asyncio.gather(asyncio.to_thread(worker.wait, 30), asyncio.to_thread(server.wait, 30))
    assert codes == [1, 1], (worker.stderr(), server.stderr())
    for cli in (worker, server):
        line = cli.last_line()
        assert line.startswith(
            "error: redis_unusable: Redis evicts keys when full (maxmemory-policy allkeys-lru)"
        )
        assert "LLM_ROUTER_ACCEPT_EVICTION=1" in line


async def test_worker_and_server_run_on_it_when_eviction_is_accepted(
    sim, procs: Procs, lru_server: RedisServer, until
):
    env = fleet_env(sim.url, redis_url=lru_server.url, LLM_ROUTER_ACCEPT_EVICTION="1")
    port = free_port()
    worker = procs.start(env, "worker")
    server = procs.start(env, "serve", "--no-auth", "--port", str(port))
    settings = Settings(_env_file=None, redis_url=lru_server.url, queue_name=env["LLM_ROUTER_QUEUE_NAME"])
    producer = await Producer.connect(settings)
    try:
        await until(lambda: producer.live_workers(), timeout=20, what="the worker's heartbeat")
        await until(lambda: _answers(f"http://127.0.0.1:{port}/healthz"), timeout=20, what="the server")
    finally:
        await producer.close()
    assert (worker.stop(), server.stop()) == (0, 0)
    for cli in (worker, server):
        assert "allkeys-lru" in cli.stderr() and "may vanish" in cli.stderr()  # run, with a warning


async def test_a_server_started_before_redis_checks_once_redis_answers(sim, procs: Procs, until):
    port = free_port()
    api = free_port()
    server = procs.start(
        fleet_env(sim.url, redis_url=f"redis://127.0.0.1:{port}/0"), "serve", "--port", str(api)
    )
    # it serves (not ready: /readyz says so) rather than exit while Redis is away
    await until(lambda: _answers(f"http://127.0.0.1:{api}/healthz"), timeout=20, what="the server")
    with RedisServer(port=port, extra_args=LRU):
        code = await asyncio.to_thread(server.wait, 30)
    assert code == 1, server.stderr()
    assert server.last_line().startswith("error: redis_unusable: Redis evicts keys when full")


async def _answers(url: str) -> bool:
    def get() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    return await asyncio.to_thread(get)
