"""The server's job-end waiter on the real Redis: woken by the notification, not by its safety re-check;
a job it waits for brings its ended record with the news (no read), and a lost record message leaves
the waiter to read as before."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgpack
from redis.asyncio import Redis

from llm_router.keys import notify_channel, record_key, scoped_id
from producer.http.ended import Ended, EndedWaiter
from producer.producer import Producer

JOB = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@contextlib.asynccontextmanager
async def reads_of(redis_url: str, key: str) -> AsyncIterator[list[str]]:
    """The reads (HGETALL) of the record ``key`` by clients (not by scripts) while the block runs,
    as Redis' MONITOR saw them: complete once the block exits (a marker command is seen last)."""
    client = Redis.from_url(redis_url)
    seen: list[str] = []
    marker = f"reads-done-{uuid.uuid4().hex}"
    ready = asyncio.Event()

    async def watch() -> None:
        async with client.monitor() as monitor:
            ready.set()
            async for command in monitor.listen():
                text = command["command"]
                if marker in text:
                    return
                if command["client_type"] != "lua" and text.upper().startswith("HGETALL") and key in text:
                    seen.append(text)

    task = asyncio.create_task(watch())
    try:
        async with asyncio.timeout(5):
            await ready.wait()
        yield seen
        other = Redis.from_url(redis_url)
        try:
            await other.echo(marker)
        finally:
            await other.aclose()
        async with asyncio.timeout(10):
            await task
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        await client.aclose()


def _url(producer: Producer) -> str:
    assert producer.settings.redis_url is not None
    return producer.settings.redis_url.get_secret_value()


async def _waiting(producer: Producer, waiter: EndedWaiter, job_id: str, until: Any, **submit: Any) -> Any:
    """The wait of a job submitted after its watch began (as the interactive fronts do), and its end
    (a cancel: no worker runs these jobs) once the waiter sleeps on it."""
    scoped = producer.scoped(job_id)
    with waiter.watch(scoped) as event:
        (submitted,) = await producer.submit_many([{**JOB, "job_id": job_id}], **submit)
        waiting = asyncio.create_task(waiter.wait(scoped, event, timeout=20, new_job=submitted.created))
        await until(lambda: event.waited_on, timeout=5, what="the waiter to block")
        started = time.monotonic()
        # ends the job (its id is published) without the read of ``Producer.cancel``
        await producer.store.cancel(scoped, {"code": "cancelled", "message": "by the test"})
        record = await waiting
    assert time.monotonic() - started < 2  # the news woke it, not the 30 s re-check
    assert scoped not in waiter._events  # nothing left behind once the handler is done
    return record


async def test_waiter_wakes_on_notification(producer: Producer, until: Any) -> None:
    waiter = EndedWaiter(producer.redis, producer.store, recheck_s=30)  # a re-check would take 30 s
    await waiter.start()
    assert waiter.subscribed.is_set()
    try:
        job_id = f"ended-{time.monotonic_ns()}"
        with waiter.watch(producer.scoped(job_id)) as event:
            await producer.submit({**JOB, "job_id": job_id})  # no worker: stays queued
            waiting = asyncio.create_task(waiter.wait(producer.scoped(job_id), event, timeout=20))
            # the waiter has read the queued record and sleeps on its event
            await until(lambda: event.waited_on, timeout=5, what="the waiter to block")
            started = time.monotonic()
            await producer.cancel(job_id)
            record = await waiting
        assert record.status == "cancelled"
        assert time.monotonic() - started < 2
    finally:
        await waiter.close()


async def test_a_job_that_notifies_the_waiters_server_is_answered_without_a_read(
    producer: Producer, until: Any
) -> None:
    waiter = EndedWaiter(producer.redis, producer.store, recheck_s=30)
    await waiter.start()
    try:
        job_id = f"notified-{time.monotonic_ns()}"
        key = record_key(producer.scoped(job_id))
        async with reads_of(_url(producer), key) as reads:
            record = await _waiting(producer, waiter, job_id, until, notify=waiter.channel)
        assert reads == []  # the record came with the news
        assert record.status == "cancelled" and record.request["messages"] == JOB["messages"]
        assert record == await producer.get(job_id)  # exactly what the read would have said
    finally:
        await waiter.close()


async def test_a_lost_record_message_leaves_the_waiter_to_read_the_record(
    producer: Producer, until: Any
) -> None:
    waiter = EndedWaiter(producer.redis, producer.store, recheck_s=30)
    await waiter.start()
    try:
        job_id = f"lost-{time.monotonic_ns()}"
        key = record_key(producer.scoped(job_id))
        async with reads_of(_url(producer), key) as reads:
            # the record goes to a channel this server does not hear (as if its subscription had
            # dropped it): the tenant's usual notice wakes the waiter, which reads
            record = await _waiting(producer, waiter, job_id, until, notify=notify_channel("elsewhere"))
        assert len(reads) == 1
        assert record.status == "cancelled"
    finally:
        await waiter.close()


async def test_an_ended_message_that_is_no_record_leaves_the_waiter_to_read_it(
    producer: Producer, until: Any
) -> None:
    """The fields of an ended message are decoded when the waiter asks for its record: ones that do
    not decode (a newer worker's shape, say) are dropped, and the record is read instead."""
    waiter = EndedWaiter(producer.redis, producer.store, recheck_s=30)
    await waiter.start()
    try:
        job_id = f"garbled-{time.monotonic_ns()}"
        scoped = producer.scoped(job_id)
        async with reads_of(_url(producer), record_key(scoped)) as reads:
            with waiter.watch(scoped) as event:
                (submitted,) = await producer.submit_many([{**JOB, "job_id": job_id}])
                wait = waiter.wait(scoped, event, timeout=20, new_job=submitted.created)
                waiting = asyncio.create_task(wait)
                await until(lambda: event.waited_on, timeout=5, what="the waiter to block")
                # a status that is no status at all: the listener lives on; the waiter woken reads
                odd = msgpack.packb([b"status", [1], b"", scoped.encode()])
                await producer.redis.publish(waiter.channel, odd)
                await until(lambda: len(reads) == 1, timeout=5, what="a read after the odd message")
                garbled = msgpack.packb([b"status", b"succeeded", b"", scoped.encode()])  # no route, no times
                await producer.redis.publish(waiter.channel, garbled)
                await until(lambda: len(reads) == 2, timeout=5, what="the read instead")  # still queued
                await producer.store.cancel(scoped, {"code": "cancelled", "message": "by the test"})
                record = await waiting
        assert record.status == "cancelled" and len(reads) == 3
    finally:
        await waiter.close()


async def test_an_interactive_answer_takes_no_read_of_its_record(api: Any) -> None:
    """The real server and worker processes: the chat completion's record reaches the server in the
    end message; the server never reads it."""
    tenant = "notify"
    job_id = f"chat-{uuid.uuid4().hex}"
    key = record_key(scoped_id(tenant, job_id))
    client = api.async_openai(tenant)
    async with reads_of(api.redis_url, key) as reads:
        completion = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"Idempotency-Key": job_id},
        )
    await client.close()
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.total_tokens > 0
    assert reads == []
    redis = Redis.from_url(api.redis_url)
    try:
        fields = await redis.hgetall(key)
    finally:
        await redis.aclose()
    assert fields[b"status"] == b"succeeded" and b"notify" not in fields


async def test_an_end_resumes_its_waiter_at_the_next_turn_of_the_loop() -> None:
    """The event sets the future its waiter awaits: the handler runs at the loop's next turn after
    the end arrived (through a future and a callback of its own, it took two turns, and the
    listener read on in between)."""
    waiter = EndedWaiter(None, None)  # type: ignore[arg-type]  # no Redis: the wait alone
    event = Ended()
    resumed: list[bool] = []

    async def handler() -> None:
        await waiter._sleep(event, timeout=5)
        resumed.append(True)

    task = asyncio.create_task(handler())
    await asyncio.sleep(0)
    assert event.waited_on
    event.set()
    await asyncio.sleep(0)  # one turn
    assert resumed == [True]
    await task


async def test_a_wait_that_times_out_or_is_cancelled_leaves_the_event_usable() -> None:
    waiter = EndedWaiter(None, None)  # type: ignore[arg-type]
    event = Ended()
    started = time.monotonic()
    await waiter._sleep(event, timeout=0.05)  # nobody sets it: the timeout ends the wait
    assert 0.04 < time.monotonic() - started < 2
    assert not event.waited_on
    cancelled = asyncio.create_task(waiter._sleep(event, timeout=5))
    await asyncio.sleep(0)
    cancelled.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await cancelled
    assert not event.waited_on
    event.set()  # the done futures of those waits are skipped
    await waiter._sleep(event, timeout=5)  # set already: returns at once
    later: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    event.add(later)
    assert later.done()
