"""The arq worker: our settings for arq, and what every job shares (session, store, catalog)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from typing import Any

import orjson
from arq import Worker
from arq.connections import RedisSettings
from arq.worker import func

from config.catalog import Catalog
from config.settings import Settings
from llm_router.redis_client import redis_url
from llm_router.store import RUN_JOB, Store
from worker.heartbeat import beat_forever
from worker.http import create_session
from worker.job_runner import JobRunner

# our record and the job's deadline decide when a job is done, not arq's try counter: every
# deferral spends one of arq's tries, and when they run out arq drops the job without calling us
UNBOUNDED_TRIES = 1_000_000


async def run_llm_job(ctx: dict[str, Any], job_id: str) -> None:
    await ctx["runner"].run(job_id)


def build_worker(settings: Settings, catalog: Catalog | None = None, **overrides: Any) -> Worker:
    """An arq ``Worker`` for llm-router jobs; ``overrides`` go to arq (``burst=True`` in tests, say)."""
    catalog = catalog or Catalog.load(settings)
    worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"

    async def startup(ctx: dict[str, Any]) -> None:
        store = Store(ctx["redis"], queue_name=settings.queue_name, record_ttl_s=settings.record_ttl_s)
        session = create_session(settings)
        catalog.deployments(next(iter(catalog.models)))  # resolve every price now, not on the first job
        ctx["session"] = session
        ctx["store"] = store
        ctx["runner"] = JobRunner(store, catalog, settings, session, worker_id)
        ctx["heartbeat"] = asyncio.create_task(
            beat_forever(store, worker_id, settings.heartbeat_interval_s, settings.heartbeat_ttl_s)
        )

    async def shutdown(ctx: dict[str, Any]) -> None:
        task = ctx.get("heartbeat")
        if task:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if "store" in ctx:
            with contextlib.suppress(Exception):
                await ctx["store"].forget_worker(worker_id)
        if "session" in ctx:
            await ctx["session"].close()

    # arq logs an INFO line per job start and end: too costly for the hot path
    logging.getLogger("arq.worker").setLevel(logging.WARNING)
    options: dict[str, Any] = {
        "functions": [func(run_llm_job, name=RUN_JOB, max_tries=UNBOUNDED_TRIES)],
        "queue_name": settings.queue_name,
        "redis_settings": RedisSettings.from_dsn(redis_url(settings)),
        "max_jobs": settings.max_jobs,
        "job_timeout": settings.job_timeout_s,
        "poll_delay": settings.poll_delay_s,
        "queue_read_limit": settings.effective_queue_read_limit,
        "keep_result": 0,
        "max_tries": UNBOUNDED_TRIES,
        "job_serializer": orjson.dumps,
        "job_deserializer": orjson.loads,
        "on_startup": startup,
        "on_shutdown": shutdown,
        "health_check_interval": 60,
    }
    options.update(overrides)
    return Worker(**options)


def run_worker(settings: Settings, **overrides: Any) -> None:
    """Run a worker in this process until SIGINT/SIGTERM, on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        loop = asyncio.new_event_loop()
    else:
        loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    build_worker(settings, **overrides).run()
