"""Whether a Redis is fit to hold jobs, checked by every process at start, and Redis' refusals told
apart from its absence.

* ``check_eviction_policy``: any ``maxmemory-policy`` but ``noeviction`` lets Redis drop keys when
  full; for llm-router that silently loses queued jobs, paid answers and credit records (a tenant
  whose credit record is evicted runs unmetered). Refused unless the operator accepts it
  (``LLM_ROUTER_ACCEPT_EVICTION=1``). A Redis that forbids ``CONFIG`` (managed services) is not
  refused: the policy cannot be read, so a warning says so.
* ``wait_for_redis``: at start, Redis may not be up yet (or a failover is under way): ping until it
  answers, up to a bound, then give up with the reason. A refused password is final at once.
* ``write_refusal``: replies that mean "this Redis will not take writes now" (a read-only replica, out
  of memory, a failed snapshot, too few replicas). Through Sentinel a failover ends them; with one
  endpoint they may last. Either way they are an outage to ride out for a while, not a crash.
"""

from __future__ import annotations

import asyncio
import time

import structlog
from redis.asyncio import Redis
from redis.exceptions import (
    AuthenticationError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)

from llm_router.errors import RedisUnusable

log = structlog.get_logger("llm_router.redis")

SAFE_POLICY = "noeviction"
# the first word of an error reply → what it means, for a log line and an exit reason
WRITE_REFUSALS = {
    "READONLY": "Redis is a read-only replica (READONLY: it was demoted, or this is not the primary)",
    "OOM": "Redis refuses writes: out of memory (OOM: used memory > maxmemory)",
    "MISCONF": "Redis refuses writes: it cannot persist to disk (MISCONF)",
    "NOREPLICAS": "Redis refuses writes: fewer replicas than min-replicas-to-write (NOREPLICAS)",
    "MASTERDOWN": "Redis is a replica that lost its primary (MASTERDOWN)",
}
# redis-py strips the word off the replies it has a class for
REFUSAL_CLASSES: tuple[tuple[type[ResponseError], str], ...] = (
    (ReadOnlyError, "READONLY"),
    (OutOfMemoryError, "OOM"),
)

PIPELINE_PREFIX = "of pipeline caused error: "


def write_refusal(exc: BaseException) -> str | None:
    """The reason, when ``exc`` is Redis refusing writes for now; ``None`` for any other error."""
    if not isinstance(exc, ResponseError):
        return None
    for klass, word in REFUSAL_CLASSES:
        if isinstance(exc, klass):
            return WRITE_REFUSALS[word]
    # redis-py prefixes a pipeline's error with the command that caused it
    reply = str(exc).partition(PIPELINE_PREFIX)[2] or str(exc)
    reason = WRITE_REFUSALS.get(reply.split(" ", 1)[0])
    return None if reason is None else f"{reason}: {reply.splitlines()[0]}"


async def check_eviction_policy(redis: Redis, *, accept_eviction: bool) -> str:
    """The ``maxmemory-policy`` (``"unknown"`` when Redis hides it); raises ``RedisUnusable`` when
    it evicts and ``accept_eviction`` is false."""
    try:
        reply = await redis.config_get("maxmemory-policy")
    except (NoPermissionError, ResponseError) as exc:  # CONFIG renamed or forbidden: managed Redis
        log.warning(
            "cannot read Redis' maxmemory-policy; make sure it is noeviction, or jobs may vanish",
            error=str(exc),
        )
        return "unknown"
    raw = reply.get("maxmemory-policy") or reply.get(b"maxmemory-policy") or b""
    policy = raw.decode() if isinstance(raw, bytes) else str(raw)
    if policy == SAFE_POLICY:
        return policy
    if accept_eviction:
        log.warning(
            "Redis evicts keys; queued jobs, answers and credit records may vanish when it is full",
            maxmemory_policy=policy,
            accepted_by="LLM_ROUTER_ACCEPT_EVICTION",
        )
        return policy
    raise RedisUnusable(
        f"Redis evicts keys when full (maxmemory-policy {policy}), which silently loses queued jobs, "
        "answers and credit records: set maxmemory-policy noeviction, or LLM_ROUTER_ACCEPT_EVICTION=1 "
        "to run anyway",
        param="maxmemory-policy",
    )


async def wait_for_redis(redis: Redis, *, within_s: float, where: str) -> None:
    """Ping until Redis answers; ``RedisUnusable`` after ``within_s`` seconds, or at once when it
    refuses our credentials."""
    give_up = time.monotonic() + within_s
    delay = 0.1
    while True:
        try:
            await redis.ping()
            return
        except AuthenticationError as exc:
            raise RedisUnusable(f"Redis at {where} refused our credentials: {exc}") from None
        except (RedisError, OSError) as exc:
            if time.monotonic() + delay > give_up:
                raise RedisUnusable(f"cannot reach Redis at {where} within {within_s:g} s: {exc}") from None
            log.warning("waiting for Redis", redis=where, retry_in_s=delay, error=str(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
