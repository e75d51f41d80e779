"""A worker process for the benchmark: drains a pre-filled queue in burst mode and reports on stdout.

``engine`` runs arq's own ``Worker`` with llm-router's arq settings and a no-op job function (the
ceiling arq sets); ``ours`` runs llm-router's worker as shipped. Both time themselves from start-up
to an empty queue and print one JSON line: jobs, seconds, CPU seconds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import Any

import orjson
import uvloop
from arq import Worker
from arq.connections import RedisSettings
from arq.worker import func

from config.settings import Settings
from llm_router.log_setup import configure_logging
from llm_router.redis_client import redis_url
from worker.app import UNBOUNDED_TRIES, build_worker

NOOP = "noop"


async def noop(ctx: dict[str, Any], *args: Any) -> None:
    return None


def engine_worker(settings: Settings, marks: dict[str, float]) -> Worker:
    async def startup(ctx: dict[str, Any]) -> None:
        marks["start"] = time.perf_counter()
        marks["cpu"] = time.process_time()

    logging.getLogger("arq.worker").setLevel(logging.WARNING)
    return Worker(
        functions=[func(noop, name=NOOP, max_tries=UNBOUNDED_TRIES)],
        queue_name=settings.queue_name,
        redis_settings=RedisSettings.from_dsn(redis_url(settings)),
        max_jobs=settings.max_jobs,
        job_timeout=settings.job_timeout_s,
        poll_delay=settings.poll_delay_s,
        queue_read_limit=settings.effective_queue_read_limit,
        keep_result=0,
        job_serializer=orjson.dumps,
        job_deserializer=orjson.loads,
        on_startup=startup,
        burst=True,
        handle_signals=False,
    )


def main() -> None:
    kind = sys.argv[1]
    configure_logging()  # as `llm-router worker` does: without it structlog prints every debug line
    settings = Settings()
    asyncio.set_event_loop(uvloop.new_event_loop())
    marks: dict[str, float] = {}
    if kind == "engine":
        worker = engine_worker(settings, marks)
    else:
        worker = build_worker(settings, burst=True, handle_signals=False)
        startup = worker.on_startup

        async def timed_startup(ctx: dict[str, Any]) -> None:
            await startup(ctx)  # type: ignore[misc]
            marks["start"] = time.perf_counter()
            marks["cpu"] = time.process_time()

        worker.on_startup = timed_startup
    worker.run()
    seconds = time.perf_counter() - marks["start"]
    cpu = time.process_time() - marks["cpu"]
    done = worker.jobs_complete + worker.jobs_failed
    sys.stdout.write(
        orjson.dumps({"kind": kind, "jobs": done, "seconds": seconds, "cpu_s": cpu}).decode() + "\n"
    )
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
