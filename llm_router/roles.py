"""Work exactly one process does at a time: a lease on a named role in Redis.

A lease is a key (``keys.role_key(name)``) holding the holder's random token with a TTL. Taking it is
``SET NX PX``; only the holder may renew or release it (a script compares the token), so a process
that stalled past its TTL and lost the role cannot extend or drop the new holder's lease. A holder
that dies (SIGKILL, a lost host) stops renewing, and the role is free again when the TTL runs out.

``RoleLease`` is one lease (the Batch API takes one per batch while it enqueues or finalizes it);
``run_role`` keeps a long-lived role going in a fleet (a tracker, a batcher, a scheduler): every
process runs it, one holds the role and does the work, the others wait to take over within about
``ttl_s`` of the holder's death.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from llm_router.keys import role_key

log = structlog.get_logger("llm_router.roles")

# KEYS: the role's key.  ARGV: token, ttl ms ('' to release).  Returns 1 when the caller held the
# lease (renewed or released), 0 when it did not (expired, or another process holds it now).
RENEW_LUA = """
local key = KEYS[1]
local token, ttl_ms = ARGV[1], ARGV[2]
if redis.call('GET', key) ~= token then return 0 end
if ttl_ms == '' then redis.call('DEL', key) else redis.call('PEXPIRE', key, ttl_ms) end
return 1
"""


class RoleLease:
    """One process's lease on the role ``name``; ``ttl_s`` after its last renewal it is free."""

    def __init__(self, redis: Redis, name: str, *, ttl_s: float) -> None:
        self.redis = redis
        self.name = name
        self.key = role_key(name)
        self.ttl_ms = max(int(ttl_s * 1000), 1)
        self.token = secrets.token_hex(12)
        self._renew = redis.register_script(RENEW_LUA)

    async def acquire(self) -> bool:
        """Take the role if nobody holds it; ``True`` when this lease holds it now."""
        if await self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms):
            return True
        return await self.renew()  # it may be ours already (taken before, still live)

    async def renew(self) -> bool:
        """Extend the lease by its TTL; ``False`` when it was lost (expired or taken over)."""
        return bool(await self._renew(keys=[self.key], args=[self.token, self.ttl_ms]))

    async def release(self) -> None:
        """Give the role up now (only if this lease still holds it)."""
        await self._renew(keys=[self.key], args=[self.token, ""])

    async def holder(self) -> str | None:
        """The token of whoever holds the role, or ``None``."""
        raw = await self.redis.get(self.key)
        return raw.decode() if raw is not None else None


async def run_role(
    redis: Redis,
    name: str,
    work: Callable[[], Awaitable[None]],
    *,
    ttl_s: float = 10.0,
    retry_s: float | None = None,
) -> None:
    """Run ``work`` in this process whenever it holds the role ``name``, until cancelled.

    The lease is renewed every ``ttl_s / 3``; when a renewal fails (Redis lost it, or another process
    took it after this one stalled), ``work`` is cancelled at once. When ``work`` returns, the role is
    released and taken again on the next try. Processes without the role try every ``retry_s``
    (default ``ttl_s / 3``), so a dead holder's role moves within about ``ttl_s + retry_s``.
    """
    lease = RoleLease(redis, name, ttl_s=ttl_s)
    every = ttl_s / 3
    retry = retry_s if retry_s is not None else every
    while True:
        try:
            held = await lease.acquire()
        except RedisError as exc:
            log.warning("role: redis unavailable", role=name, error=repr(exc))
            held = False
        if not held:
            await asyncio.sleep(retry)
            continue
        log.info("role taken", role=name)
        task = asyncio.ensure_future(work())
        try:
            while not task.done():
                done, _ = await asyncio.wait({task}, timeout=every)
                if done:
                    break
                try:
                    still = await lease.renew()
                except RedisError as exc:
                    log.warning("role: renewal failed", role=name, error=repr(exc))
                    still = False
                if not still:
                    log.warning("role lost", role=name)
                    task.cancel()
                    break
        finally:
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            with contextlib.suppress(RedisError):
                await lease.release()
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.error("role work failed", role=name, error=repr(task.exception()))
            await asyncio.sleep(retry)
