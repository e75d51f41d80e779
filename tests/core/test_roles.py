"""The lease-held role helper against the real redis-server: one holder, renewal, takeover."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from llm_router.keys import role_key
from llm_router.roles import RoleLease, run_role


async def test_one_lease_holds_a_role_and_only_its_holder_renews_or_releases(redis_server) -> None:
    redis = Redis.from_url(redis_server.url)
    try:
        first = RoleLease(redis, "r1", ttl_s=5)
        second = RoleLease(redis, "r1", ttl_s=5)
        assert await first.acquire()
        assert not await second.acquire()
        assert not await second.renew()
        await second.release()  # not its lease: nothing happens
        assert await first.holder() == first.token
        assert await first.renew() and 4000 < await redis.pttl(role_key("r1")) <= 5000
        await first.release()
        assert await first.holder() is None
        assert await second.acquire()
    finally:
        await redis.aclose()


async def test_a_lapsed_lease_is_taken_over_and_the_old_holder_cannot_renew_it(redis_server) -> None:
    redis = Redis.from_url(redis_server.url)
    try:
        stalled = RoleLease(redis, "r2", ttl_s=0.2)
        assert await stalled.acquire()
        successor = RoleLease(redis, "r2", ttl_s=5)
        lapsed_at = time.monotonic() + 0.2
        while not await successor.acquire():
            await asyncio.sleep(0.02)
        assert time.monotonic() >= lapsed_at - 0.05
        assert not await stalled.renew()
        assert await successor.holder() == successor.token
    finally:
        await redis.aclose()


async def test_run_role_runs_the_work_in_one_process_and_moves_it_when_the_holder_dies(redis_server) -> None:
    redis = Redis.from_url(redis_server.url)
    running: list[str] = []

    def work_of(who: str):
        async def work() -> None:
            running.append(who)
            await asyncio.Event().wait()  # until cancelled

        return work

    a = asyncio.create_task(run_role(redis, "r3", work_of("a"), ttl_s=0.6))
    b = asyncio.create_task(run_role(redis, "r3", work_of("b"), ttl_s=0.6))
    try:
        while not running:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.8)  # longer than the TTL: renewals keep the first holder, alone
        assert len(running) == 1
        holder = running[0]
        dead, alive = (a, b) if holder == "a" else (b, a)
        # the holder dies without releasing: cancel its loop, then put its lease back as a dead
        # process would leave it (no release)
        token = await redis.get(role_key("r3"))
        dead.cancel()
        await asyncio.gather(dead, return_exceptions=True)
        await redis.set(role_key("r3"), token, px=600)
        died = time.monotonic()
        while len(running) < 2:
            await asyncio.sleep(0.02)
        took = time.monotonic() - died
        assert running[1] != holder
        assert took < 0.6 + 0.2 + 0.5, took  # TTL + retry interval + slack
        assert not alive.done()
    finally:
        for t in (a, b):
            t.cancel()
        await asyncio.gather(a, b, return_exceptions=True)
        await redis.aclose()


async def test_run_role_cancels_the_work_when_the_lease_is_lost(redis_server) -> None:
    redis = Redis.from_url(redis_server.url)
    cancelled = asyncio.Event()
    started = asyncio.Event()

    async def work() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    task = asyncio.create_task(run_role(redis, "r4", work, ttl_s=0.6, retry_s=5))
    try:
        await asyncio.wait_for(started.wait(), 5)
        await redis.set(role_key("r4"), "someone-else", px=10_000)  # taken over behind its back
        await asyncio.wait_for(cancelled.wait(), 2)
        assert await redis.get(role_key("r4")) == b"someone-else"  # its release leaves the new lease
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await redis.aclose()
