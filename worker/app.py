"""The arq worker: our settings for arq, and what every job shares (session, store, catalog, leases)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
from arq.connections import RedisSettings
from arq.worker import func

from config.catalog import Catalog
from config.settings import Settings
from llm_router.keys import RUN_JOB
from llm_router.redis_client import redis_url
from llm_router.store import Store
from worker.arq_worker import LeasedWorker
from worker.claims import Claims
from worker.http import create_session
from worker.job_runner import JobRunner
from worker.lease import LeaseKeeper
from worker.webhooks.deliverer import start_deliveries, stop_deliveries

# our record and the job's deadline decide when a job is done, not arq's try counter: every
# deferral or re-run spends one of arq's tries, and when they run out arq drops the job unseen
UNBOUNDED_TRIES = 1_000_000
# the poll loop's tick: the queue is read every poll_delay, or at the next tick once many slots freed
TICK_S = 0.01


async def run_llm_job(ctx: dict[str, Any], job_id: str) -> None:
    await ctx["runner"].run(job_id)


def build_worker(
    settings: Settings,
    catalog: Catalog | None = None,
    *,
    queue: str = "bulk",
    deliver_webhooks: bool = False,
    **overrides: Any,
) -> LeasedWorker:
    """An arq worker for one queue of llm-router jobs (``bulk`` or ``interactive``); ``overrides``
    go to arq (``burst=True`` in tests, say). ``deliver_webhooks`` also contends for the webhook
    delivery role (a task beside the jobs, never a job slot: ``worker.webhooks``)."""
    queue_name = settings.queue_for(queue)
    poll_delay = settings.interactive_poll_delay_s if queue == "interactive" else settings.poll_delay_s
    catalog = catalog or Catalog.load(settings)
    catalog.deployments(next(iter(catalog.models)))  # resolve every price now, not on the first job
    worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    url = redis_url(settings)

    async def startup(ctx: dict[str, Any]) -> None:
        store = Store(
            ctx["redis"],
            queue_name=queue_name,
            record_ttl_s=settings.record_ttl_s,
            usage_ttl_s=settings.usage_ttl_days * 86400,
        )
        session = create_session(settings)
        runner = JobRunner(store, catalog, settings, session, worker_id)
        worker.use_store(store, Claims(ctx["redis"], store.pipe, queue_name), runner.run)
        runner.aborting = worker.aborting_tasks.__contains__
        keeper = LeaseKeeper(
            redis_url=url,
            queue_name=queue_name,
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
        if deliver_webhooks:
            ctx["webhooks"] = start_deliveries(ctx["redis"], settings)

    async def shutdown(ctx: dict[str, Any]) -> None:
        await stop_deliveries(ctx.get("webhooks"))
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
        "queue_name": queue_name,
        "redis_settings": RedisSettings.from_dsn(url),
        "max_jobs": settings.max_jobs,
        "job_timeout": settings.job_timeout_s,
        "poll_delay": min(poll_delay, TICK_S),
        "read_every_s": poll_delay,
        # a cancel of a running job goes through arq's abort set (one read per poll, not per job)
        "allow_abort_jobs": True,
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


def run_worker(settings: Settings, queues: Sequence[str] = ("interactive", "bulk"), **overrides: Any) -> None:
    """Run an arq worker per queue in this process until SIGINT/SIGTERM, on uvloop when installed.

    The interactive queue's worker polls every few ms, so a chat call does not wait behind a bulk
    backlog; each worker has its own slots (``max_jobs``).
    """
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        loop = asyncio.new_event_loop()
    else:
        loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    catalog = Catalog.load(settings)
    webhooks = settings.webhooks_in_worker  # one contender per process: the first queue's worker
    if len(queues) == 1:
        build_worker(settings, catalog, queue=queues[0], deliver_webhooks=webhooks, **overrides).run()
        return
    # arq's own signal handlers would replace each other: one handler tells every worker
    workers = [
        build_worker(
            settings,
            catalog,
            queue=q,
            handle_signals=False,
            deliver_webhooks=webhooks and i == 0,
            **overrides,
        )
        for i, q in enumerate(queues)
    ]
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _stop_all, workers, sig)
    try:
        # each worker stops on its own, after its running jobs had their grace period
        loop.run_until_complete(asyncio.gather(*(w.async_run() for w in workers), return_exceptions=True))
    finally:
        loop.run_until_complete(asyncio.gather(*(w.close() for w in workers), return_exceptions=True))


def _stop_all(workers: list[LeasedWorker], sig: signal.Signals) -> None:
    for w in workers:
        w.handle_sig_wait_for_completion(sig)
