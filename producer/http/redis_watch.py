"""Whether the server's Redis answers, for handlers that wait without talking to it.

A handler waiting for a job's end sleeps on a notification and touches Redis only now and then; if
Redis stops answering (stopped, partitioned) it would learn so only at its next read, plus that
read's timeout. The watch PINGs every ``interval_s`` and says Redis is down once no PING has
succeeded for ``timeout_s`` (``LLM_ROUTER_REDIS_TIMEOUT_S``), so every waiter answers 503
``redis_unavailable`` within about the timeout of the outage's start, whatever it was doing. The
watch never refuses a request by itself: a request's own Redis calls fail or succeed on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog
from redis.asyncio import Redis

from llm_router.errors import RedisUnavailable

log = structlog.get_logger("producer.http")


class RedisWatch:
    """PINGs Redis in the background; ``down`` is set while it has not answered for ``timeout_s``."""

    def __init__(self, redis: Redis, *, timeout_s: float, interval_s: float = 0.5) -> None:
        self.redis = redis
        self.timeout_s = timeout_s
        self.interval_s = interval_s
        self.down = asyncio.Event()
        self._last_ok = time.monotonic()
        self._task: asyncio.Task[None] | None = None

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

    async def _run(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.timeout_s):
                    await self.redis.ping()
            except asyncio.CancelledError:
                raise
            except Exception:  # any failure to answer is the same news
                if time.monotonic() - self._last_ok >= self.timeout_s and not self.down.is_set():
                    log.warning("redis is not answering", for_s=round(time.monotonic() - self._last_ok, 1))
                    self.down.set()
            else:
                self._last_ok = time.monotonic()
                if self.down.is_set():
                    log.info("redis answers again")
                    self.down.clear()
            await asyncio.sleep(self.interval_s)


async def until_down(watch: RedisWatch | None) -> None:
    """Returns when ``watch`` says Redis is down (never, without a watch)."""
    if watch is None:
        await asyncio.Event().wait()
        return
    await watch.down.wait()
