"""The arq worker: our settings for arq, and what every job shares (session, store, catalog, leases)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import traceback
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
import structlog
from arq.connections import ArqRedis
from arq.constants import expires_extra_ms
from arq.worker import func
from redis.exceptions import RedisError

from config.catalog import Catalog
from config.settings import Settings
from llm_router.errors import RedisUnusable, RouterError
from llm_router.gc_tuning import tune_gc
from llm_router.keys import LANES_ROLE, RUN_JOB
from llm_router.redis_checks import check_eviction_policy, wait_for_redis, write_refusal
from llm_router.redis_client import redis_client, redis_target, sync_redis_client
from llm_router.roles import run_role
from llm_router.store import Store
from worker import observe
from worker.arq_worker import LeasedWorker
from worker.batcher import Batcher
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
# how long closing the workers (after their grace period) may take before the process exits anyway
CLOSE_TIMEOUT_S = 15.0

log = structlog.get_logger("llm_router.worker")


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
    observer = observe.install(settings, catalog)

    async def startup(ctx: dict[str, Any]) -> None:
        store = Store(
            ctx["redis"],
            queue_name=queue_name,
            record_ttl_s=settings.record_ttl_s,
            usage_ttl_s=settings.usage_ttl_days * 86400,
            stream_ttl_s=settings.stream_ttl_s,
        )
        session = create_session(settings)
        runner = JobRunner(store, catalog, settings, session, worker_id)
        claims = Claims(ctx["redis"], store.pipe, queue_name, runner.starter)
        worker.use_store(store, claims, runner.run, runner.put_back_unrun)
        runner.aborting = worker.aborting_tasks.__contains__
        interval_s = min(settings.effective_lease_refresh_s, settings.heartbeat_interval_s)
        keeper = LeaseKeeper(
            client=sync_redis_client(settings, socket_timeout=max(interval_s, 1.0), socket_connect_timeout=2),
            queue_name=queue_name,
            worker_id=worker_id,
            held=lambda: list(worker.tasks),
            inflight=runner.inflight,
            lease_s=settings.lease_s,
            interval_s=interval_s,
            heartbeat_ttl_s=settings.heartbeat_ttl_s,
            routing=(runner.routing_key, runner.routing_table),
            slots=runner.slots,
        )
        ctx.update(session=session, store=store, runner=runner, keeper=keeper)  # shutdown closes them
        keeper.beat()  # seen as live before the first job arrives
        keeper.start()
        await observer.start(ctx["redis"])  # metrics port, recent jobs (once per process)
        if deliver_webhooks:
            ctx["webhooks"] = start_deliveries(ctx["redis"], settings)
        if settings.lanes_in_worker and queue == "bulk":  # the batch lane's role (worker.batcher)
            batcher = Batcher(ctx["redis"], store, catalog, settings, session)
            ctx["batcher"] = asyncio.ensure_future(
                run_role(ctx["redis"], LANES_ROLE, batcher.run, ttl_s=settings.lanes_role_ttl_s)
            )

    async def shutdown(ctx: dict[str, Any]) -> None:
        # each part once, whoever calls first (arq's close, or ours when arq's close failed)
        await stop_deliveries(ctx.pop("webhooks", None))
        if batcher_task := ctx.pop("batcher", None):
            batcher_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await batcher_task
        if "runner" in ctx:
            await observer.release()
        if keeper := ctx.pop("keeper", None):
            keeper.stop()
        if runner := ctx.pop("runner", None):
            await runner.images.close()
            await runner.provider.close()
        if session := ctx.pop("session", None):
            await session.close()

    # arq logs an INFO line per job start and end: too costly for the hot path
    logging.getLogger("arq.worker").setLevel(logging.WARNING)
    options: dict[str, Any] = {
        "functions": [func(run_llm_job, name=RUN_JOB, max_tries=UNBOUNDED_TRIES)],
        "queue_name": queue_name,
        # arq's pool is ours: the same client factory (Sentinel, credentials, timeouts) as every client
        "redis_pool": arq_pool(settings, queue_name),
        "max_jobs": settings.max_jobs,
        "job_timeout": settings.job_timeout_s,
        # the loop's tick while jobs run (aborts, health); an idle worker sleeps until woken
        "poll_delay": min(poll_delay, TICK_S),
        "safety_poll_s": settings.claim_safety_poll_s,
        # a cancel of a running job goes through arq's abort set (one read per poll, not per job)
        "allow_abort_jobs": True,
        # arq's read window, which our claims do not use: concurrency grows with the workers
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
        "refusal_limit_s": settings.redis_retry_s,
    }
    options.update(overrides)
    worker = LeasedWorker(**options)
    return worker


def arq_pool(settings: Settings, queue_name: str) -> ArqRedis:
    """arq's pool, built by our client factory, set up as ``arq.connections.create_pool`` would."""
    pool = redis_client(settings, redis_class=ArqRedis)
    pool.job_serializer = orjson.dumps
    pool.job_deserializer = orjson.loads
    pool.default_queue_name = queue_name
    pool.expires_extra_ms = expires_extra_ms
    return pool


def run_worker(settings: Settings, queues: Sequence[str] = ("interactive", "bulk"), **overrides: Any) -> None:
    """Run an arq worker per queue in this process until SIGINT/SIGTERM, on uvloop when installed.

    The interactive queue's worker polls every few ms, so a chat call does not wait behind a bulk
    backlog; each worker has its own slots (``max_jobs``). Returns when a signal stopped the workers;
    raises a ``RouterError`` (``RedisUnusable`` for Redis) with a one-line reason, also logged, when
    one cannot start or go on, so that the process exits non-zero and its supervisor sees why.
    """
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        loop = asyncio.new_event_loop()
    else:
        loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        catalog = Catalog.load(settings)
        loop.run_until_complete(_preflight(settings))
        # arq's own signal handlers would replace each other: one handler tells every worker
        webhooks = settings.webhooks_in_worker  # one contender per process: the first queue's worker
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
        # a job in flight holds ~110 objects the collector tracks and leaves almost no cyclic
        # garbage: with Python's defaults, at 10,000 in flight, a full collection walked 1.3 M
        # objects, ~1 s each, every few seconds (bench/README.md "Width")
        tune_gc()
        loop.run_until_complete(_run_all(workers))
    except Exception as exc:
        fatal = _fatal(exc, settings)
        if fatal.code == "internal_error":  # a bug: the traceback goes to the log too
            trace = "".join(traceback.format_exception(exc))
            log.error("worker stopped", reason=fatal.message, traceback=trace)
        else:
            log.error("worker stopped", reason=fatal.message, code=fatal.code)
        raise fatal from exc


async def _preflight(settings: Settings) -> None:
    """Redis answers (waiting up to ``redis_retry_s`` for it) and will not evict jobs."""
    client = redis_client(settings)
    try:
        await wait_for_redis(client, within_s=settings.redis_retry_s, where=str(redis_target(settings)))
        await check_eviction_policy(client, accept_eviction=settings.accept_eviction)
    finally:
        await client.aclose()


async def _run_all(workers: list[LeasedWorker]) -> None:
    """Run every worker; when one fails, stop the others at once (their jobs are put back, or their
    leases lapse) and raise its error. Each stops on its own after a signal and its grace period."""
    tasks = [asyncio.ensure_future(w.async_run()) for w in workers]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        failed = [t.exception() for t in done if not t.cancelled() and t.exception() is not None]
        if failed:
            for w in workers:
                w.handle_sig(signal.SIGTERM)
            await asyncio.gather(*tasks, return_exceptions=True)
            raise failed[0]  # type: ignore[misc]
    finally:
        # a Redis that stopped answering must not hold the exit: arq's close talks to it
        closing = asyncio.gather(*(_close(w) for w in workers), return_exceptions=True)
        try:
            await asyncio.wait_for(closing, timeout=CLOSE_TIMEOUT_S)
        except TimeoutError:
            log.warning("workers did not close in time; exiting anyway")


async def _close(worker: LeasedWorker) -> None:
    try:
        await worker.close()
    except BaseException:
        # arq's close stops at its first Redis error, before our shutdown hook: run it ourselves
        if worker.on_shutdown is not None:
            await worker.on_shutdown(worker.ctx)
        raise


def _fatal(exc: Exception, settings: Settings) -> RouterError:
    """The one-line reason a worker process stops on ``exc``."""
    where = _where(settings)
    if isinstance(exc, RedisUnusable) and where not in exc.message:
        return RedisUnusable(f"{exc.message} (Redis: {where})")
    if isinstance(exc, RouterError):
        return exc
    if (reason := write_refusal(exc)) is not None:
        return RedisUnusable(f"{reason} (Redis: {where})")
    if isinstance(exc, RedisError | OSError):
        return RedisUnusable(f"lost Redis ({where}): {exc}")
    return RouterError(f"the worker crashed: {exc!r}")


def _where(settings: Settings) -> str:
    try:
        return str(redis_target(settings))
    except RouterError:
        return "?"


def _stop_all(workers: list[LeasedWorker], sig: signal.Signals) -> None:
    for w in workers:
        w.handle_sig_wait_for_completion(sig)
