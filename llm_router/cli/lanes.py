"""``llm-router lanes`` (the open provider batches: age, size, expected completion; jobs waiting for
a batch; re-dispatches and wasted spend) and the ``submit`` options ``--lane`` / ``--deadline``."""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

import orjson

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


async def lanes_command(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console
    from rich.table import Table

    from config.catalog import Catalog
    from llm_router.lanes_view import lanes_report
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
