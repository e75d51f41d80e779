"""The server's job-end waiter on the real Redis: woken by the notification, not by its safety re-check."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from producer.http.ended import EndedWaiter
from producer.producer import Producer


async def test_waiter_wakes_on_notification(producer: Producer, until: Any) -> None:
    waiter = EndedWaiter(producer.redis, producer.store, recheck_s=30)  # a re-check would take 30 s
    await waiter.start()
    assert waiter.subscribed.is_set()
    try:
        job = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        job_id = f"ended-{time.monotonic_ns()}"
        scoped = producer.scoped(job_id)  # what the end notice names: the id inside its tenant
        with waiter.watch(scoped) as event:
            await producer.submit({**job, "job_id": job_id})  # no worker: stays queued
            waiting = asyncio.create_task(waiter.wait(scoped, event, timeout=20))
            # the waiter has read the queued record and sleeps on its event
            await until(lambda: event.waited_on, timeout=5, what="the waiter to block")
            started = time.monotonic()
            await producer.cancel(job_id)  # ends the job: its id is published
            record = await waiting
        assert record.status == "cancelled"
        assert time.monotonic() - started < 2
        assert scoped not in waiter._events  # nothing left behind once the handler is done
    finally:
        await waiter.close()
