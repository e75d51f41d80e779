"""Whether the server's Redis answers, for handlers that wait without talking to it.

A handler waiting for a job's end sleeps on a notification and touches Redis only now and then; if
Redis stops answering (stopped, partitioned) it would learn so only at its next read, plus that
read's timeout. The watch PINGs every ``interval_s`` and says Redis is down as soon as it has not
answered for ``timeout_s`` (``LLM_ROUTER_REDIS_TIMEOUT_S``) since its last answer (a PING waits only
what is left of that), so every waiter answers 503 ``redis_unavailable`` within the timeout of the
outage's start, whatever it was doing. The watch never refuses a request by itself: a request's own
Redis calls fail or succeed on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from typing import TypeVar

import structlog
from redis.asyncio import Redis

from llm_router.errors import RedisUnavailable

log = structlog.get_logger("producer.http")
T = TypeVar("T")


class RedisWatch:
    """PINGs Redis in the background; ``down`` is set while it has not answered for ``timeout_s``."""

    def __init__(self, redis: Redis, *, timeout_s: float, interval_s: float = 0.25) -> None:
        self.redis = redis
        self.timeout_s = timeout_s
        self.interval_s = interval_s
        self.down = asyncio.Event()
        self._last_ok = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        # futures handed out by goes_down, done when Redis goes down: plain futures, not a task each
        # (every interactive request waited on two)
        self._going_down: set[asyncio.Future[object]] = set()

    def start(self) -> None:
        self._last_ok = time.monotonic()
        self._task = asyncio.create_task(self._run(), name="redis-watch")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def error(self) -> RedisUnavailable:
        """The error a waiter answers with while Redis is down."""
        return RedisUnavailable(
            f"the job store (Redis) has not answered for {self.timeout_s:g} s; the job goes on, "
            "retry with the same Idempotency-Key to get its answer",
            retry_after=self.timeout_s,
        )

    def goes_down(self) -> asyncio.Future[object]:
        """A future done when Redis goes down from now on; never done when it is down already (the
        watch may lag a recovery by a PING: the caller's own calls, each bounded by the timeout,
        then tell whether it is back). Cancel it when done with it."""
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        if not self.down.is_set():
            self._going_down.add(future)
            future.add_done_callback(self._going_down.discard)
        return future

    async def guard(self, call: Awaitable[T]) -> T:
        """``call``'s result, or ``RedisUnavailable`` as soon as Redis goes down: a waiter's check
        that went out just before an outage would otherwise wait its own whole timeout on top.

        ``call`` runs in the caller's task, which Redis going down cancels (as ``asyncio.timeout``
        does its own), rather than in a task of its own raced against the watch."""
        task = asyncio.current_task()
        assert task is not None
        down = self.goes_down()
        fired = False
        active = True  # a callback the loop already scheduled may run after the call returned

        def went_down(_: object) -> None:
            nonlocal fired
            if active and not down.cancelled():
                fired = True
                task.cancel()

        down.add_done_callback(went_down)
        try:
            return await call
        except asyncio.CancelledError:
            # ours alone (no cancel from elsewhere as well): Redis went down mid-call
            if fired and task.uncancel() == 0:
                raise self.error() from None
            raise
        finally:
            active = False
            down.remove_done_callback(went_down)
            down.cancel()

    def _went_down(self) -> None:
        self.down.set()
        for future in list(self._going_down):
            if not future.done():
                future.set_result(None)

    async def _run(self) -> None:
        while True:
            left = self.timeout_s - (time.monotonic() - self._last_ok)
            try:
                async with asyncio.timeout(max(left, self.interval_s)):
                    await self.redis.ping()
            except asyncio.CancelledError:
                raise
            except Exception:  # any failure to answer is the same news
                if time.monotonic() - self._last_ok >= self.timeout_s and not self.down.is_set():
                    log.warning("redis is not answering", for_s=round(time.monotonic() - self._last_ok, 1))
                    self._went_down()
            else:
                self._last_ok = time.monotonic()
                if self.down.is_set():
                    log.info("redis answers again")
                    self.down.clear()
            await asyncio.sleep(self.interval_s)


async def guarded(watch: RedisWatch | None, call: Awaitable[T]) -> T:
    """``watch.guard(call)``, or ``call`` alone without a watch."""
    return await call if watch is None else await watch.guard(call)
