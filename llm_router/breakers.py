"""Reading and resetting the fleet's circuit breakers (``llm-router breakers``).

The breakers themselves change only inside the job scripts (``llm_router.resilience_lua``); this is
what people and dashboards read.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from redis.asyncio import Redis

from llm_router.keys import BREAKER_PREFIX, SICK_KEY, breaker_key, probes_key


class BreakerBoard:
    """Reading and resetting the fleet's breakers (``llm-router breakers``)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def list(
        self, *, window_s: float, bucket_s: float, names: Iterable[str] | None = None
    ) -> list[dict[str, Any]]:
        """Every deployment with breaker state: its state, time to half-open, and window counts.

        ``names`` limits it to those deployments (a dashboard refreshing every few seconds), where
        the default finds them with a SCAN of the keyspace.
        """
        sick = {k.decode(): v.decode() for k, v in (await self.redis.hgetall(SICK_KEY)).items()}
        if names is not None:
            names = set(names)
        else:
            names = set(sick)
            async for key in self.redis.scan_iter(match=f"{BREAKER_PREFIX}*", count=500):
                names.add(key.decode().removeprefix(BREAKER_PREFIX))
        now_s, now_us = await self.redis.time()
        now_ms = now_s * 1000 + now_us // 1000
        current = now_ms // int(bucket_s * 1000)
        first = current - int(window_s // bucket_s) + 1
        out = []
        for name in sorted(names):
            fields = {
                k.decode(): v.decode() for k, v in (await self.redis.hgetall(breaker_key(name))).items()
            }
            state, _, until = sick.get(name, "closed|0").partition("|")
            calls = sum(int(v) for k, v in fields.items() if k.startswith("n:") and int(k[2:]) >= first)
            failures = sum(int(v) for k, v in fields.items() if k.startswith("f:") and int(k[2:]) >= first)
            until_ms = int(until or 0)
            out.append(
                {
                    "deployment": name,
                    "state": state,
                    "calls_in_window": calls,
                    "failures_in_window": failures,
                    "consecutive_failures": int(fields.get("c", 0)),
                    "trips": int(fields.get("trips", 0)),
                    "seconds_to_retry": max(until_ms - now_ms, 0) / 1000 if state != "half_open" else 0.0,
                }
            )
        return out

    async def reset(self, name: str) -> bool:
        """Close one breaker and clear its counts; ``False`` when it had no state."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(SICK_KEY, name)
            pipe.delete(breaker_key(name), probes_key(name))
            removed, deleted = await pipe.execute()
        return bool(removed or deleted)
