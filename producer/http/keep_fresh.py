"""What a request reads before its submit, kept fresh by the server rather than by the request.

Before an interactive submit the server knows the key's tenant (``ApiKeys``, believed 3 s), the
tenant's policy (``TenantPolicies``, 5 s) and that a worker serves the queue (``LiveWorkers``, 1 s).
A caller sending one request every few seconds found all three stale every time and paid three
Redis round trips, one after the other, before its job was even submitted (1.3 ms more overhead p50
at 6 s between requests than at 50 ms, `bench/README.md`, session 37). Here one task per cache
reads its entries in use again, one round trip each, every half of its lifetime; an entry read by a
request in between is left alone (``refresh`` of each). The lifetimes, and what they promise (a
revoked key refused within 3 s), are unchanged: a refresh that fails (Redis away) extends nothing,
and the entries expire as they would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog
from redis.exceptions import RedisError

log = structlog.get_logger("producer.http.keep_fresh")

# what a request used within this long is read ahead of its next one; past it, it is forgotten
WITHIN_S = 600.0

Refresh = Callable[[float], Awaitable[None]]  # a cache's ``refresh(within_s)``


class KeepFresh:
    """The refresh tasks of a server process: ``add`` each cache, ``close`` at shutdown."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []

    def add(self, name: str, every_s: float, refresh: Refresh) -> None:
        self._tasks.append(asyncio.create_task(_every(name, every_s, refresh), name=f"keep-fresh-{name}"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()


async def _every(name: str, every_s: float, refresh: Refresh) -> None:
    while True:
        await asyncio.sleep(every_s)
        try:
            await refresh(WITHIN_S)
        except (RedisError, OSError) as exc:  # Redis away: the entries expire, requests read them
            log.debug("not refreshed", cache=name, error=repr(exc))
        except Exception:  # a bug here must not stop the refreshing for good
            log.exception("refresh failed", cache=name)
