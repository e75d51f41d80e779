"""The server's caches of what a request reads before its submit (the key's tenant, the tenant's
policy, whether a worker serves the queue), read again ahead of their requests (``refresh``): an
entry refreshed before it went stale costs its request no Redis round trip, and a change made in
Redis meanwhile (a key revoked, a policy set, the fleet gone) is what the refresh brings.

Each test has a Redis of its own, so ``INFO commandstats`` counts only its own commands."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from config.settings import Settings
from llm_router.errors import InvalidApiKey
from llm_router.keys import workers_key
from llm_router.tenants import TenantPolicies
from llm_router.testing.redis_server import RedisServer
from producer.http.auth import ApiKeys
from producer.http.keep_fresh import WITHIN_S, KeepFresh
from producer.liveness import LiveWorkers

TTL_S = 1.0


@pytest.fixture
async def own_redis() -> AsyncIterator[Redis]:
    with RedisServer() as server:
        client = Redis.from_url(server.url)
        yield client
        await client.aclose()


async def calls(redis: Redis, command: str) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def at(when: float) -> None:
    await asyncio.sleep(max(when - time.monotonic(), 0.0))


async def refreshed_then_read(
    read: Callable[[], Awaitable[Any]], refresh: Callable[[], Awaitable[None]], redis: Redis, command: str
) -> tuple[Any, int]:
    """Read (the entry believed ``TTL_S`` from then), refresh at 0.7 of that, and read again once
    the first read's lifetime is over but the refresh's is not: what that last read returns, and
    how many ``command`` calls it made. Timed from the steps themselves, and tried again if the
    machine stalled past the window."""
    for _ in range(3):
        await read()
        read_at = time.monotonic()
        await at(read_at + 0.7 * TTL_S)
        refresh_at = time.monotonic()
        await refresh()
        await at(read_at + TTL_S + 0.05)
        if time.monotonic() < refresh_at + TTL_S - 0.05:
            before = await calls(redis, command)
            value = await read()
            return value, await calls(redis, command) - before
    raise AssertionError("the machine stalled past the window three times")


async def test_a_refreshed_key_costs_its_request_no_round_trip(own_redis: Redis) -> None:
    keys = ApiKeys(own_redis, cache_ttl_s=TTL_S)
    key = await keys.create("acme")
    assert await keys.tenant_for(key) == "acme"
    # stale, not refreshed: the request looks the key up (what every sparse caller paid)
    await asyncio.sleep(TTL_S + 0.05)
    before = await calls(own_redis, "hget")
    assert await keys.tenant_for(key) == "acme"
    assert await calls(own_redis, "hget") == before + 1
    # refreshed before it went stale: no lookup of its own
    tenant, lookups = await refreshed_then_read(
        lambda: keys.tenant_for(key), lambda: keys.refresh(WITHIN_S), own_redis, "hget"
    )
    assert (tenant, lookups) == ("acme", 0)


async def test_a_key_revoked_is_refused_once_a_refresh_saw_it(own_redis: Redis) -> None:
    keys = ApiKeys(own_redis, cache_ttl_s=60.0)  # only the refresh can tell
    key = await keys.create("acme")
    assert await keys.tenant_for(key) == "acme"
    await ApiKeys(own_redis).revoke(key[:9])  # another process: the CLI, the dashboard
    assert await keys.tenant_for(key) == "acme"  # cached, as before
    await keys.refresh(WITHIN_S)
    with pytest.raises(InvalidApiKey):
        await keys.tenant_for(key)


async def test_a_refreshed_policy_costs_its_request_no_round_trip(own_redis: Redis) -> None:
    settings = Settings(_env_file=None)
    policies = TenantPolicies(own_redis, settings, cache_s=TTL_S)
    elsewhere = TenantPolicies(own_redis, settings)  # another process: the CLI, the dashboard
    await elsewhere.set("acme", {"max_queued": "7"})
    assert (await policies.get("acme")).get("max_queued") == 7
    await asyncio.sleep(TTL_S + 0.05)
    before = await calls(own_redis, "hgetall")
    await policies.get("acme")
    assert await calls(own_redis, "hgetall") == before + 1  # stale: read by the request

    async def set_then_refresh() -> None:  # set elsewhere, then refreshed here
        await elsewhere.set("acme", {"max_queued": "9"})
        await policies.refresh(WITHIN_S)

    policy, reads = await refreshed_then_read(
        lambda: policies.get("acme"), set_then_refresh, own_redis, "hgetall"
    )
    assert (policy.get("max_queued"), reads) == (9, 0)


async def test_a_refreshed_worker_count_costs_its_request_no_round_trip(own_redis: Redis) -> None:
    settings = Settings(_env_file=None)
    queue = "q:interactive"
    await own_redis.zadd(workers_key(queue), {"worker-1": time.time()})  # a worker's heartbeat
    live = LiveWorkers(own_redis, settings, fresh_s=TTL_S)
    assert await live.count(queue) == 1

    async def another_then_refresh() -> None:
        await own_redis.zadd(workers_key(queue), {"worker-2": time.time()})
        await live.refresh(WITHIN_S)

    count, reads = await refreshed_then_read(
        lambda: live.count(queue), another_then_refresh, own_redis, "zcount"
    )
    assert (count, reads) == (2, 0)
    # the fleet gone: forgotten, and the next caller asks (and is told nobody serves the queue)
    await own_redis.delete(workers_key(queue))
    await live.refresh(WITHIN_S)
    assert await live.count(queue) == 0


async def test_keep_fresh_refreshes_on_its_own_and_outlives_a_failing_refresh() -> None:
    seen: list[float] = []

    async def refresh(within_s: float) -> None:
        assert within_s == WITHIN_S
        seen.append(time.monotonic())
        if len(seen) == 1:
            raise ConnectionError("Redis away")  # an OSError: logged, and the task goes on

    fresh = KeepFresh()
    fresh.add("test", 0.05, refresh)
    try:
        deadline = time.monotonic() + 5
        while len(seen) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    finally:
        await fresh.close()
    assert len(seen) >= 3
    stopped = len(seen)
    await asyncio.sleep(0.15)
    assert len(seen) == stopped  # closed: no more refreshes
