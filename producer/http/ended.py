"""Waiting for jobs to end by notification: one pub/sub subscription per server process.

Every job has its scoped id PUBLISHed on its tenant's ``ended`` channel when it reaches a terminal
status. The server holds one subscription (a pattern over every tenant's channel) for all its
waiters and wakes the waiters of that id; a waiter then reads the record. A job the server submits
to wait for names the server's own channel (``channel``, subscribed on the same connection): its end
sends the whole record there first, and its waiter returns that record without the read. A handler
registers (``watch``) before it submits, so no notification can slip past it, and reads the record
once after submitting, which covers a job that already existed (an idempotent resubmission) and
ended before.
Pub/sub is at-most-once: a message lost while Redis restarts would leave a waiter hanging, so every
resubscription wakes every waiter, and each waiter re-reads its record every ``recheck_s`` anyway (a
safety net, not the mechanism).

Redis that stops answering never hangs a waiter: the listener reads its messages from the
connection (``llm_router.subscription``: a quiet channel is not an outage, so no read times out), and
a waiter (or a stream follower) given the server's ``RedisWatch`` gives up with 503
``redis_unavailable`` as soon as the watch says Redis is down; a Redis call that fails does the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from llm_router.contract import TERMINAL, JobRecord, JobStatus
from llm_router.errors import JobNotFound, RedisUnavailable, WaitTimeout
from llm_router.keys import ENDED_PATTERN, notify_channel, split_scoped
from llm_router.redis_checks import write_refusal
from llm_router.store import Store, decode_ended, decode_ended_record, ended_field
from llm_router.subscription import Subscription
from producer.http.redis_watch import RedisWatch, guarded
from producer.producer import TERMINAL_VALUES, JobFailed, Producer

log = structlog.get_logger("producer.http")
TERMINAL_BYTES = frozenset(v.encode() for v in TERMINAL_VALUES)


def is_outage(exc: BaseException) -> bool:
    """Redis away, silent or refusing writes for now (not a bug of ours, such as a script error)."""
    return isinstance(exc, RedisConnectionError | RedisTimeoutError) or write_refusal(exc) is not None


def unavailable(exc: Exception, watch: RedisWatch | None = None) -> RedisUnavailable:
    """A Redis failure as the error a caller gets (the detail goes to the log, not to the tenant:
    it names internal hosts)."""
    log.warning("redis call failed", error=repr(exc))
    if watch is not None and watch.down.is_set():
        return watch.error()
    return RedisUnavailable("the job store (Redis) is unavailable; retry shortly")


class Ended:
    """One waiter's news of its job's end: ``asyncio.Event``'s ``set``/``is_set``/``clear``/``wait``,
    and ``future()``, a plain future done when it is set, to wait on it alongside other news without
    a task."""

    __slots__ = ("_futures", "_set", "fields", "record")

    def __init__(self) -> None:
        self._set = False
        self._futures: list[asyncio.Future[None]] = []
        # the ended record as its message brought it (``decode_ended``'s fields), undecoded: a
        # handler that needs a field or two reads them (``store.ended_field``); decoding the whole
        # record was most of the server's work on a request's way back
        self.fields: list[bytes] | None = None
        self.record: JobRecord | None = None  # that record decoded, once a waiter asked for it

    def set(self) -> None:
        self._set = True
        futures, self._futures = self._futures, []
        for future in futures:
            if not future.done():
                future.set_result(None)

    def is_set(self) -> bool:
        return self._set

    @property
    def waited_on(self) -> bool:
        """Whether a wait on it is under way."""
        return any(not f.done() for f in self._futures)

    def clear(self) -> None:
        self._set = False

    def future(self) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.add(future)
        return future

    def add(self, future: asyncio.Future[None]) -> None:
        """``future`` is set (if not done by then) when this is: at once if it is already."""
        if self._set:
            if not future.done():
                future.set_result(None)
            return
        if len(self._futures) > 8:  # those of earlier waits (done or cancelled), on a long wait
            self._futures = [f for f in self._futures if not f.done()]
        self._futures.append(future)

    async def wait(self) -> None:
        if not self._set:
            await self.future()


class EndedWaiter:
    """Wakes the waiters of a job when its id arrives on ``ENDED_CHANNEL``, or its ended record on
    the server's own ``channel`` (``keys.notify_channel``: a job submitted with ``notify=channel``)."""

    def __init__(
        self, redis: Redis, store: Store, *, recheck_s: float = 2.0, watch: RedisWatch | None = None
    ) -> None:
        self.redis = redis
        self.store = store
        self.recheck_s = recheck_s
        self.redis_watch = watch
        self._events: dict[str, set[Ended]] = {}
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()
        self.channel = notify_channel(os.urandom(8).hex())

    async def start(self, timeout: float = 5.0) -> None:
        """Subscribe in the background; waits up to ``timeout`` for the first subscription."""
        self._task = asyncio.create_task(self._listen(), name="ended-listener")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.subscribed.wait()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @contextlib.contextmanager
    def watch(self, job_id: str) -> Iterator[Ended]:
        """Register for ``job_id``'s end (a scoped id, as the scripts publish); enter before
        submitting the job."""
        event = Ended()
        self._events.setdefault(job_id, set()).add(event)
        try:
            yield event
        finally:
            waiters = self._events.get(job_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._events[job_id]

    async def wait(self, job_id: str, event: Ended, timeout: float, *, new_job: bool = False) -> JobRecord:
        """The job's final record, read when ``event`` (from ``watch``) fires; ``WaitTimeout`` after
        ``timeout`` seconds.

        ``new_job``: the job was created after ``watch`` began, so it cannot have ended unnoticed
        and the first read waits for its end (the read of a record still queued was a round trip
        and a decode on every interactive call). A job that ended with its record sent to
        ``channel`` is answered with that record, without a read. A lost subscription wakes every
        waiter when it is back, and the read every ``recheck_s`` stays the safety net."""
        while True:
            ended = await self.wait_ended(job_id, event, timeout, new_job=new_job)
            if isinstance(ended, JobRecord):
                return ended
            record = self.decoded(job_id, event)
            if record is not None:
                return record
            new_job = False  # its fields did not decode (and are dropped): the record is read

    def decoded(self, job_id: str, event: Ended) -> JobRecord | None:
        """The record of the fields ``event`` holds, decoded once; ``None`` (and the fields dropped,
        so that the waiter reads the record instead) when they do not decode."""
        if event.record is None and event.fields is not None:
            try:
                event.record = decode_ended_record(job_id, event.fields)
            except Exception as exc:
                log.warning("unreadable ended record", job_id=job_id, error=repr(exc))
                event.fields = None
        return event.record

    async def wait_ended(
        self, job_id: str, event: Ended, timeout: float, *, new_job: bool = False
    ) -> JobRecord | list[bytes]:
        """As ``wait``, but a job whose end brought its record gives that record's fields, undecoded
        (``Ended.fields``): a handler that answers from a few of them skips the decode."""
        deadline = time.monotonic() + timeout
        if new_job and self.subscribed.is_set():
            await self._sleep(event, min(self.recheck_s, timeout))
        while True:
            if event.record is not None:
                return event.record
            if event.fields is not None:
                return event.fields
            event.clear()  # before the read: a notification arriving after it sets the event again
            try:
                record = await guarded(self.redis_watch, self.store.get(job_id))
            except RedisError as exc:
                raise unavailable(exc, self.redis_watch) from None
            if record is None:
                raise JobNotFound(f"no job '{split_scoped(job_id)[1]}' (unknown or expired)", param="job_id")
            if record.status in TERMINAL:
                return record
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(f"job '{record.id}' did not end within {timeout:.0f} s", param="job_id")
            await self._sleep(event, min(self.recheck_s, left))

    async def _sleep(self, event: Ended, timeout: float) -> None:
        """Until ``event``, ``timeout`` seconds, or Redis is down (then ``RedisUnavailable``): one
        future woken by whichever comes first (no task per wait)."""
        watch = self.redis_watch
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[None] = loop.create_future()

        def wake(_: object = None) -> None:
            if not woken.done():
                woken.set_result(None)

        # the event sets the waited future itself: through a future of its own and a callback, the
        # handler resumed two turns of the event loop after the end arrived, not one
        event.add(woken)
        down = watch.goes_down() if watch is not None else None
        if down is not None:
            down.add_done_callback(wake)
        timer = loop.call_later(timeout, wake)
        try:
            await woken
        finally:
            timer.cancel()
            if not woken.done():  # the waiting task was cancelled: the event lets go of it
                woken.cancel()
            if down is not None:
                down.cancel()
        if event.record is not None or event.fields is not None:
            return  # the record came: Redis going down since does not matter
        if watch is not None and down is not None and down.done() and not down.cancelled():
            raise watch.error()

    def _wake(self, job_id: str) -> None:
        for event in self._events.get(job_id, ()):
            event.set()

    def _deliver(self, message: bytes) -> None:
        """An ended record on ``channel``: its waiters get its fields (decoded when one asks), and
        wake."""
        try:
            job_id, fields = decode_ended(message)
        except Exception as exc:  # a message of another shape (a newer worker?): nobody to wake
            log.warning("unreadable end message", error=repr(exc))
            return
        events = self._events.get(job_id)
        if not events:
            return  # the waiter is gone (its client left), or it waits on another server
        status = ended_field(fields, b"status")
        ended = isinstance(status, bytes) and status in TERMINAL_BYTES  # nothing here may raise
        for event in events:
            if ended:  # else (never sent so) the waiter reads the record, as without the message
                event.fields = fields
            event.set()

    def _wake_all(self) -> None:
        for events in self._events.values():
            for event in events:
                event.set()

    async def _listen(self) -> None:
        delay = 0.05
        while True:
            pubsub = self.redis.pubsub()
            sub: Subscription | None = None
            try:
                await pubsub.psubscribe(ENDED_PATTERN)
                await pubsub.subscribe(self.channel)
                sub = Subscription(pubsub)
                self.subscribed.set()
                delay = 0.05
                self._wake_all()  # whatever ended while we were not subscribed
                channel = self.channel.encode()
                while True:
                    # no timeout: a quiet channel is not an outage, a broken connection raises, and
                    # a stopped Redis that keeps it open is the watch's to tell
                    message = await sub.next()
                    if message.pattern is not None:
                        self._wake(message.data.decode(errors="replace"))
                    elif message.channel == channel:
                        self._deliver(message.data)
                    # the woken waiters answer first: reading on (the next message parsed, the
                    # socket polled) before them delayed every answer
                    await asyncio.sleep(0)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if self.subscribed.is_set():
                    log.warning("job-end notifications lost, resubscribing", error=repr(exc))
                self.subscribed.clear()
            finally:
                if sub is not None:
                    sub.close()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def _ended_record(producer: Producer, job_id: str, tenant: str) -> JobRecord | None:
    """The job's record if it has ended (one status read when it has not)."""
    status = (await producer.store.statuses([producer.scoped(job_id, tenant)]))[0]
    return await producer.get(job_id, tenant=tenant) if status in TERMINAL_VALUES else None


async def follow_stream(
    producer: Producer,
    job_id: str,
    *,
    tenant: str,
    recheck_s: float = 1.0,
    timeout_s: float | None = None,
    watch: RedisWatch | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """``Producer.stream`` with a safety net: when no chunk came for ``recheck_s`` and the record has
    ended, the stream is over (a job's chunks are all written before its record ends), whatever the
    follower is still blocked on. Raises ``JobFailed`` like ``Producer.stream``, and
    ``RedisUnavailable`` when a Redis call fails or ``watch`` says Redis is down.

    Why: ``Producer.stream`` can block without end on a job that ended without writing a stream
    (failed before its first token, cancelled while queued), and rides out Redis outages; a relay
    must never hang its client.
    """
    chunks = producer.stream(job_id, tenant=tenant)
    step: asyncio.Future[dict[str, Any]] | None = None
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        while True:
            step = asyncio.ensure_future(anext(chunks))
            while True:
                down = watch.goes_down() if watch is not None else None
                try:
                    done, _ = await asyncio.wait(
                        {step} if down is None else {step, down},
                        timeout=recheck_s,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    if down is not None:
                        down.cancel()
                if step in done:
                    break
                if watch is not None and down is not None and down in done:
                    raise watch.error()
                if deadline is not None and time.monotonic() > deadline:
                    # no worker took the job in time (they died after the liveness check, say)
                    raise WaitTimeout(f"job '{job_id}' did not finish within {timeout_s} s", param="timeout")
                try:
                    record = await guarded(watch, _ended_record(producer, job_id, tenant))
                except RedisError as exc:
                    raise unavailable(exc, watch) from None
                if record is not None:
                    step.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await step
                    if record.status != JobStatus.SUCCEEDED:
                        raise JobFailed(record)
                    return
            try:
                chunk = step.result()
            except StopAsyncIteration:
                return
            except RedisError as exc:
                raise unavailable(exc, watch) from None
            yield chunk
    finally:
        if step is not None and not step.done():  # an error or a cancel while a read was pending
            step.cancel()
            with contextlib.suppress(BaseException):
                await step
        with contextlib.suppress(RedisError):
            await chunks.aclose()
