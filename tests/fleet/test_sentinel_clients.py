"""Every kind of client we build finds the new primary after a failover by itself: the async client
(producer, server, CLI, the worker's scripts and auto-pipeline), arq's pool, the lease keeper's
blocking client and the server's pub/sub subscription. Nothing is rebuilt or restarted."""

from __future__ import annotations

import asyncio
import contextlib
import time

import msgpack
import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from config.settings import Settings
from llm_router.autopipe import AutoPipeline
from llm_router.keys import ended_channel
from llm_router.redis_client import redis_client, sync_redis_client
from llm_router.store import Store
from llm_router.testing.sentinel_set import SentinelSet
from producer.http.ended import EndedWaiter
from worker.app import arq_pool


@pytest.fixture
def sentinels():
    with SentinelSet(down_after_ms=1000, failover_timeout_ms=3000) as s:
        yield s


async def _until_ok(call, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await call()
        except (RedisError, OSError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def _until_equal(call, wanted: bytes, timeout: float):
    """``call()`` until it answers ``wanted`` (errors and other answers are tried again), within
    ``timeout`` s of the first try."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = await call()
        except (RedisError, OSError) as exc:
            got = exc
        if got == wanted:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"still {got!r} after {timeout} s, not {wanted!r}")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("failover", ["primary killed", "primary demoted"])
async def test_every_client_follows_the_primary_through_a_failover(sentinels: SentinelSet, failover: str):
    settings = Settings(_env_file=None, redis_sentinels=sentinels.sentinels)
    client = redis_client(settings)
    pool = arq_pool(settings, "q")
    blocking = sync_redis_client(settings, socket_timeout=1)
    pipe = AutoPipeline(client)
    waiter = EndedWaiter(client, Store(client, queue_name="q", record_ttl_s=60), recheck_s=60)
    await waiter.start()
    try:
        await client.set("k", "before")
        assert await pool.get("k") == b"before" and blocking.get("k") == b"before"
        get = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
        assert await pipe.call(get) == b"before"  # the pipeline holds its connection from here on
        old = sentinels.primary_port()
        if failover == "primary killed":
            await asyncio.to_thread(sentinels.kill_primary)
        else:  # alive: still a writable primary for ~10 s, then a replica answering writes READONLY
            await asyncio.to_thread(sentinels.demote_primary)
        new = await asyncio.to_thread(sentinels.wait_for_new_primary, old, 60)
        assert new != old
        # A demoted primary stays a writable primary for ~10 s after the sentinels name the new one,
        # until they turn it into a replica: a client that kept its connection would still read and
        # write there. So the new value goes straight to the new primary, and every client must
        # read it (and the waiter hear what is published there) well within that time.
        direct = Redis(port=new, password=sentinels.password)
        await direct.set("k", "after")
        within = 5.0
        await _until_equal(lambda: client.get("k"), b"after", within)
        await _until_equal(lambda: pool.get("k"), b"after", within)
        await _until_equal(lambda: asyncio.to_thread(blocking.get, "k"), b"after", within)
        await _until_equal(lambda: pipe.call(get), b"after", within)
        # the subscription comes back on the new primary: a job's end still wakes its waiter
        await asyncio.wait_for(waiter.subscribed.wait(), 30)
        with waiter.watch("t/job-1") as ended:
            await direct.publish(ended_channel("t"), "t/job-1")
            await asyncio.wait_for(ended.wait(), within)
        # and so does the server's own channel: an ended record sent there reaches its waiter
        record = [b"status", b"succeeded", b"route", b'["m"]', b"model_requested", b"m"]
        record += [b"created_at", b"1.0", b"deadline_at", b"2.0", b'{"model":"m"}', b"t/job-2"]
        with waiter.watch("t/job-2") as ended:
            await direct.publish(waiter.channel, msgpack.packb(record))
            await asyncio.wait_for(ended.wait(), within)
            decoded = waiter.decoded("t/job-2", ended)  # the fields came; decoded when asked
        assert decoded is not None and decoded.status == "succeeded"
        await direct.aclose()
    finally:
        await waiter.close()
        await client.aclose()
        await pool.aclose()
        blocking.close()


async def test_passwords_for_the_nodes_and_the_sentinels_come_from_their_settings():
    with SentinelSet(password="s3cret-pw") as sentinels:
        env = sentinels.env()
        settings = Settings(
            _env_file=None,
            redis_sentinels=env["LLM_ROUTER_REDIS_SENTINELS"],
            redis_password=env["LLM_ROUTER_REDIS_PASSWORD"],
            redis_sentinel_password=env["LLM_ROUTER_REDIS_SENTINEL_PASSWORD"],
        )
        client = redis_client(settings)
        blocking = sync_redis_client(settings)
        try:
            await client.set("k", "v")
            assert blocking.get("k") == b"v"
        finally:
            await client.aclose()
            blocking.close()
        # the sentinels' own password missing: no primary can be found, and the error says why
        without = redis_client(settings.model_copy(update={"redis_sentinel_password": None}))
        try:
            with pytest.raises(RedisError, match=r"(?i)auth"):
                await without.ping()
        finally:
            await without.aclose()


async def test_a_primary_first_learned_by_a_new_connection_still_moves_the_open_ones(sentinels: SentinelSet):
    # no periodic look during the test: the one below is the one that counts
    client = redis_client(
        Settings(_env_file=None, redis_sentinels=sentinels.sentinels, redis_sentinel_check_s=3600)
    )
    pipe = AutoPipeline(client)
    get = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
    try:
        await client.set("k", "before")
        assert await pipe.call(get) == b"before"  # the pipeline holds this connection from here on
        old = sentinels.primary_port()
        await asyncio.to_thread(sentinels.demote_primary)
        new = await asyncio.to_thread(sentinels.wait_for_new_primary, old, 60)
        # a connection opened now asks the sentinels, and the pool takes their answer as known
        pool = client.connection_pool
        deadline = time.monotonic() + 10  # the sentinels agree on the new primary within moments
        while pool.master_address is None or pool.master_address[1] != new:
            assert time.monotonic() < deadline, f"the sentinels still name {pool.master_address}"
            extra = pool.make_connection()
            with contextlib.suppress(RedisError, OSError):
                await extra.connect()
            await extra.disconnect()
            await asyncio.sleep(0.05)
        # the next look still closes the pipeline's connection to the old primary
        assert await pool.follow_primary() >= 1
        direct = Redis(port=new, password=sentinels.password)
        await direct.set("k", "after")
        await _until_equal(lambda: pipe.call(get), b"after", 5.0)
        await direct.aclose()
    finally:
        await pipe.aclose()
        await client.aclose()


async def test_the_pools_look_at_the_sentinels_as_often_as_the_setting_says(sentinels: SentinelSet):
    settings = Settings(_env_file=None, redis_sentinels=sentinels.sentinels, redis_sentinel_check_s=0.2)
    client = redis_client(settings)
    blocking = sync_redis_client(settings)
    rarely = sync_redis_client(settings.model_copy(update={"redis_sentinel_check_s": 3600.0}))
    try:
        await client.ping()
        pool = client.connection_pool
        # the first command schedules the first look, the setting's time ahead
        assert pool._check is not None
        assert pool._check.when() - asyncio.get_running_loop().time() <= 0.2
        looks = 0
        follow = pool.follow_primary

        async def counted() -> int:
            nonlocal looks
            looks += 1
            return await follow()

        pool.follow_primary = counted
        started = time.monotonic()
        while looks < 3:
            assert time.monotonic() - started < 5, f"{looks} looks in 5 s at one every 0.2 s"
            await asyncio.sleep(0.05)
        # the blocking pool looks as it hands out a connection, at most that often
        blocking.ping()
        checked = blocking.connection_pool._checked_at
        time.sleep(0.25)
        blocking.ping()
        assert blocking.connection_pool._checked_at > checked
        rarely.ping()
        checked = rarely.connection_pool._checked_at
        assert checked > float("-inf")  # its first connection looked
        rarely.ping()
        assert rarely.connection_pool._checked_at == checked
    finally:
        await client.aclose()
        blocking.close()
        rarely.close()
