"""``llm-router lanes`` (the open provider batches: age, size, expected completion; jobs waiting for
a batch; re-dispatches and wasted spend) and the ``submit`` options ``--lane`` / ``--deadline``."""

from __future__ import annotations

import argparse
import re
import sys
import time
from typing import Any

import orjson

from config.cost import nanos_to_usd
from config.settings import Settings

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``6h``, ``30m``, ``90s``, ``2d`` or plain seconds → seconds; ``ValueError`` otherwise."""
    m = _DURATION.match(text)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a duration (90s, 30m, 6h, 2d)")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def with_defaults(line: bytes, lane: str | None, deadline_s: float | None) -> bytes | dict[str, Any]:
    """A JSONL line with ``lane`` / ``deadline_s`` set where it names none (a line that is not a JSON
    object is left for validation to refuse with its own error)."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return line
    if not isinstance(obj, dict):
        return line
    if lane is not None:
        obj.setdefault("lane", lane)
    if deadline_s is not None:
        obj.setdefault("deadline_s", deadline_s)
    return obj


async def lanes_report(redis: Any, catalog: Any, settings: Settings) -> dict[str, Any]:
    """What ``llm-router lanes`` shows, read from Redis."""
    from llm_router.keys import (
        LANES_OPEN_KEY,
        LANES_STATS_KEY,
        LANES_TURNAROUND_KEY,
        lane_batch_key,
        lane_members_key,
        lane_pending_key,
    )

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


async def lanes_command(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console
    from rich.table import Table

    from config.catalog import Catalog
    from llm_router.redis_client import redis_client

    redis = redis_client(settings)
    try:
        report = await lanes_report(redis, Catalog.load(settings), settings)
    finally:
        await redis.aclose()
    if args.json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    table = Table(title="llm-router lanes: open provider batches")
    for col in ("batch", "deployment", "state", "age", "size", "waiting", "expected completion"):
        table.add_column(col, justify="left" if col in ("batch", "deployment", "state") else "right")
    for b in report["open_batches"]:
        table.add_row(
            b["batch"],
            b["deployment"],
            b["state"] or "-",
            f"{b['age_s']:.0f}s",
            str(b["size"]),
            str(b["waiting"]),
            f"in {b['expected_completion_in_s']:.0f}s",
        )
    Console().print(table)
    for dep, count in report["waiting_for_a_batch"].items():
        print(f"{dep}: {count} jobs waiting for a batch")
    print(
        f"re-dispatched to now: {report['redispatched']}; results after their job ended (wasted): "
        f"{report['wasted_results']} (${report['wasted_usd']:.6f})"
    )
    return 0
