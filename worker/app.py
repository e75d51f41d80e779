"""The arq worker: our settings for arq, and what every job shares (session, store, catalog, leases)."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from typing import Any

import orjson
from arq.connections import RedisSettings
from arq.worker import func

from config.catalog import Catalog
from config.settings import Settings
from llm_router.redis_client import redis_url
from llm_router.store import RUN_JOB, Store
from worker.arq_worker import LeasedWorker
from worker.http import create_session
from worker.job_runner import JobRunner
from worker.lease import LeaseKeeper

# our record and the job's deadline decide when a job is done, not arq's try counter: every
# deferral or re-run spends one of arq's tries, and when they run out arq drops the job unseen
UNBOUNDED_TRIES = 1_000_000


async def run_llm_job(ctx: dict[str, Any], job_id: str) -> None:
    await ctx["runner"].run(job_id)


def build_worker(settings: Settings, catalog: Catalog | None = None, **overrides: Any) -> LeasedWorker:
    """An arq worker for llm-router jobs; ``overrides`` go to arq (``burst=True`` in tests, say)."""
    catalog = catalog or Catalog.load(settings)
    catalog.deployments(next(iter(catalog.models)))  # resolve every price now, not on the first job
    worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    url = redis_url(settings)

    async def startup(ctx: dict[str, Any]) -> None:
        store = Store(ctx["redis"], queue_name=settings.queue_name, record_ttl_s=settings.record_ttl_s)
        worker.use_store(store)
        session = create_session(settings)
        runner = JobRunner(store, catalog, settings, session, worker_id)
        keeper = LeaseKeeper(
            redis_url=url,
            queue_name=settings.queue_name,
            worker_id=worker_id,
            held=lambda: list(worker.tasks),
            inflight=runner.inflight,
            lease_s=settings.lease_s,
            interval_s=min(settings.effective_lease_refresh_s, settings.heartbeat_interval_s),
            heartbeat_ttl_s=settings.heartbeat_ttl_s,
            routing=(runner.routing_key, runner.routing_table),
        )
        keeper.beat()  # seen as live before the first job arrives
        keeper.start()
        ctx.update(session=session, store=store, runner=runner, keeper=keeper)

    async def shutdown(ctx: dict[str, Any]) -> None:
        if "keeper" in ctx:
            ctx["keeper"].stop()
        if "runner" in ctx:
            await ctx["runner"].images.close()
        if "session" in ctx:
            await ctx["session"].close()

    # arq logs an INFO line per job start and end: too costly for the hot path
    logging.getLogger("arq.worker").setLevel(logging.WARNING)
    options: dict[str, Any] = {
        "functions": [func(run_llm_job, name=RUN_JOB, max_tries=UNBOUNDED_TRIES)],
        "queue_name": settings.queue_name,
        "redis_settings": RedisSettings.from_dsn(url),
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
        # SIGTERM: stop taking jobs, give running ones this long, then cancel and re-queue them
        "job_completion_wait": settings.shutdown_grace_s,
        "lease_s": settings.lease_s,
    }
    options.update(overrides)
    worker = LeasedWorker(**options)
    return worker


def run_worker(settings: Settings, **overrides: Any) -> None:
    """Run a worker in this process until SIGINT/SIGTERM, on uvloop when it is installed."""
    import asyncio

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        loop = asyncio.new_event_loop()
    else:
        loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    build_worker(settings, **overrides).run()
