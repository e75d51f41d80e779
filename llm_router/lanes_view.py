"""The lanes' provider batches as an operator sees them (``llm-router lanes``, the dashboard)."""

from __future__ import annotations

import time
from typing import Any

from redis.asyncio import Redis

from config.catalog import Catalog
from config.cost import nanos_to_usd
from config.settings import Settings
from llm_router.keys import (
    LANES_OPEN_KEY,
    LANES_STATS_KEY,
    LANES_TURNAROUND_KEY,
    lane_batch_key,
    lane_members_key,
    lane_pending_key,
)


async def lanes_report(redis: Redis, catalog: Catalog, settings: Settings) -> dict[str, Any]:
    """What ``llm-router lanes`` and the dashboard show, read from Redis: the open provider batches
    (age, size, jobs still waiting in each, expected completion from the learned turnaround), the
    jobs waiting for a batch per deployment, re-dispatches and the operator's wasted spend."""
    now = time.time()
    turnaround = {k.decode(): float(v) for k, v in (await redis.hgetall(LANES_TURNAROUND_KEY)).items()}
    batches = []
    for raw in sorted(await redis.smembers(LANES_OPEN_KEY)):
        batch_id = raw.decode()
        h = {k.decode(): v.decode() for k, v in (await redis.hgetall(lane_batch_key(batch_id))).items()}
        created = float(h.get("created_at") or now)
        dep = h.get("deployment", "")
        expected = turnaround.get(dep, settings.lanes_batch_expected_s)
        batches.append(
            {
                "batch": batch_id,
                "deployment": dep,
                "state": h.get("state"),
                "remote_id": h.get("remote_id"),
                "age_s": round(now - created, 1),
                "size": int(h.get("size") or 0),
                "waiting": await redis.hlen(lane_members_key(batch_id)),
                "expected_completion_in_s": round(max(created + expected - now, 0.0), 1),
            }
        )
    pending = {}
    for model_id in catalog.models:
        for dep in catalog.deployments(model_id):
            if dep.lanes is not None and dep.lanes.batch is not None:
                count = await redis.zcard(lane_pending_key(dep.id))
                if count:
                    pending[dep.id] = count
    stats = {k.decode(): int(v) for k, v in (await redis.hgetall(LANES_STATS_KEY)).items()}
    return {
        "open_batches": batches,
        "waiting_for_a_batch": pending,
        "learned_turnaround_s": turnaround,
        "redispatched": stats.get("redispatched", 0),
        "wasted_results": stats.get("wasted_results", 0),
        "wasted_usd": nanos_to_usd(stats.get("wasted_nanos", 0)),
    }
