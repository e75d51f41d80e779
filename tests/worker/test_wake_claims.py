"""A wake-up claims at once, whenever it comes in the run loop's step.

arq's loop (``arq.utils.poll``) sleeps what is left of ``poll_delay`` after each step. A job submitted
in that sleep used to wait it out: a claim that came early in a step left most of the step as a
sleep, so the next job, submitted as soon as the first ended, waited most of a step before its claim.
The worker here has a 2 s step, so that wait would be a second or more; a wake-up must cut it short.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from config.catalog import Catalog
from config.settings import DEFAULT_CATALOG, Settings
from llm_router.testing.sim_env import SIM_KEYS
from producer.producer import Producer
from worker.app import build_worker

JOB = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
STEP_S = 2.0


async def test_a_job_submitted_right_after_another_ended_is_claimed_within_the_step(
    sim: Any, settings: Settings
) -> None:
    catalog = Catalog.from_path(DEFAULT_CATALOG, env=SIM_KEYS, upstream=sim.url)
    producer = await Producer.connect(settings, catalog)
    worker = build_worker(settings, catalog, handle_signals=False, poll_delay=STEP_S, max_jobs=4)
    running = asyncio.create_task(worker.main())
    try:
        first = await producer.submit(JOB)
        assert (await producer.wait(first.job_id, timeout=30)).status == "succeeded"
        waits = []
        for _ in range(3):  # each right after the one before ended: early in a step of the loop
            sub = await producer.submit(JOB)
            record = await producer.wait(sub.job_id, timeout=30)
            assert record.status == "succeeded"
            waits.append(record.started_at - record.created_at)  # type: ignore[operator]
        # waiting out the step would take over a second each time; a claim on the wake-up takes ms
        assert max(waits) < STEP_S / 4, waits
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await worker.close()
        await producer.close()
