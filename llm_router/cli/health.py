"""``llm-router health``: is the fleet working? One line, and an exit code a probe or a cron can read.

* **4 down**: Redis does not answer within ``LLM_ROUTER_HEALTH_TIMEOUT_S`` (2 s), or jobs are due
  and no queue has a live worker (nothing will run them).
* **1 degraded**: a queue has jobs due and no live worker, the oldest waiting job is older than
  ``LLM_ROUTER_HEALTH_MAX_AGE_S`` (300 s), or no worker is live at all (even with nothing queued).
* **0 healthy**: otherwise.

The line names each queue's live workers, due jobs and oldest waiting job, e.g.
``healthy: interactive 2 workers, 0 due; bulk 2 workers, 12 due, oldest waiting 0.4 s``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any
from urllib.parse import urlsplit

import orjson

from config.settings import Settings
from llm_router.metrics import FleetReader, FleetSnapshot, QueueStats

HEALTHY, DEGRADED, DOWN = 0, 1, 4
STATES = {HEALTHY: "healthy", DEGRADED: "degraded", DOWN: "down"}


def add_commands(sub: Any) -> None:
    """Add ``health`` to the CLI's subparsers."""
    s = sub.add_parser("health", help="exit 0 healthy, 1 degraded, 4 down, with a one-line reason")
    s.add_argument("--max-age", type=float, help="seconds a job may wait (LLM_ROUTER_HEALTH_MAX_AGE_S)")
    s.add_argument("--timeout", type=float, help="seconds Redis has to answer (LLM_ROUTER_HEALTH_TIMEOUT_S)")
    s.add_argument("--json", action="store_true", help="the verdict and every queue's figures as JSON")
    s.set_defaults(handler=health)


def verdict(snapshot: FleetSnapshot, max_age_s: float) -> tuple[int, str]:
    """The exit code and the reason, from one reading of the fleet."""
    if not snapshot.ok:
        return DOWN, str(snapshot.error)
    queues = snapshot.queues
    figures = "; ".join(_describe(q) for q in queues)
    due = [q for q in queues if q.depth > 0]
    unserved = [q for q in due if q.workers == 0]
    if due and all(q.workers == 0 for q in queues):
        return DOWN, f"jobs are due and no worker is live ({figures})"
    problems = [f"{q.label} has {q.depth} due and no live worker" for q in unserved]
    problems += [
        f"{q.label}'s oldest waiting job is {q.oldest_age_s:.0f} s old (over {max_age_s:g} s)"
        for q in queues
        if q.oldest_age_s is not None and q.oldest_age_s > max_age_s
    ]
    if not problems and all(q.workers == 0 for q in queues):
        problems.append("no worker is live")
    if problems:
        return DEGRADED, f"{', '.join(problems)} ({figures})"
    return HEALTHY, figures


def _describe(q: QueueStats) -> str:
    text = f"{q.label} {q.workers} worker{'s' if q.workers != 1 else ''}, {q.depth} due"
    if q.oldest_age_s is not None:
        text += f", oldest waiting {q.oldest_age_s:.1f} s"
    return text


def _where(settings: Settings) -> str:
    """Redis' host and port, never its password."""
    if not settings.redis_url:
        return "?"
    parts = urlsplit(settings.redis_url.get_secret_value())
    return f"{parts.hostname or '?'}:{parts.port or 6379}"


async def health(args: argparse.Namespace, settings: Settings) -> int:
    from llm_router.redis_client import redis_client

    timeout = args.timeout if args.timeout is not None else settings.health_timeout_s
    max_age = args.max_age if args.max_age is not None else settings.health_max_age_s
    if not settings.redis_url:
        return _report(args, DOWN, "REDIS_URL is not set", None)
    redis = redis_client(settings, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        reader = FleetReader(
            redis,
            queues={"interactive": settings.interactive_queue_name, "bulk": settings.queue_name},
            heartbeat_ttl_s=settings.heartbeat_ttl_s,
            scan_limit=settings.metrics_scan_limit,
            timeout_s=timeout,
        )
        snapshot = await reader.read()
    finally:
        await redis.aclose()
    code, reason = verdict(snapshot, max_age)
    if code == DOWN and not snapshot.ok:
        reason = f"redis at {_where(settings)}: {reason}"
    return _report(args, code, reason, snapshot)


def _report(args: argparse.Namespace, code: int, reason: str, snapshot: FleetSnapshot | None) -> int:
    if args.json:
        out: dict[str, Any] = {"status": STATES[code], "code": code, "reason": reason}
        if snapshot is not None and snapshot.ok:
            out["queues"] = [
                {
                    "queue": q.label,
                    "name": q.name,
                    "workers": q.workers,
                    "due": q.depth,
                    "deferred": q.deferred,
                    "oldest_waiting_s": q.oldest_age_s,
                }
                for q in snapshot.queues
            ]
        sys.stdout.write(orjson.dumps(out).decode() + "\n")
    else:
        print(f"{STATES[code]}: {reason}")
    return code
