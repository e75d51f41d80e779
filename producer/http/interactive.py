"""Interactive jobs over HTTP: what every front that answers with a job's outcome shares (the chat
endpoint, the Gemini routes, and any front that waits for its job: Responses without ``background``,
Messages).

``start_interactive`` submits the job to the interactive queue and, while its context is open:

* **the answer names the job**: from the submit on, every answer to the request carries
  ``x-llm-router-job-id`` (the app's error middleware adds it to errors: a 503 because Redis went
  away, a wait timeout), so a client that did not get its answer still holds its job and a retry
  with the same ``Idempotency-Key`` returns the first job's outcome, never a second job;
* **a client that leaves stops paying**: when the connection closes before the answer is out (a
  dropped stream, a plain request given up), the job is cancelled, as OpenAI's API stops a
  generation whose client is gone. A queued job ends ``cancelled`` at once; a running one is
  aborted and charged for the prompt its provider read and what it streamed. Not the job of a
  request with an ``Idempotency-Key`` whose client left before its answer began (a timeout): that
  client means to retry, and the retry gets the first job's answer, so that job runs on. The
  connection is watched, not only written to, so a plain request's disconnect is seen while its
  job still runs. Jobs submitted through
  ``/v1/jobs`` (or as background work) are not interactive and keep running.

``wait_answer`` and ``follow`` wait for the job (the record, or its stream) and give up with 503
``redis_unavailable`` when Redis stops answering (``redis_watch``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web
from redis.exceptions import RedisError

from config.settings import Settings
from llm_router.contract import JobRecord, JobStatus
from llm_router.errors import InvalidRequest, NoWorkers, RouterError
from producer.http.ended import Ended, EndedWaiter, follow_stream
from producer.http.errors import ANSWER_STARTED, idempotency_key, name_job, record_error
from producer.http.jobs_api import submit_jobs, without_tenant
from producer.producer import Producer

log = structlog.get_logger("producer.http")

WAIT_SLACK_S = 5.0  # beyond the job's deadline: the worker fails it with deadline_exceeded first
GONE_POLL_S = 0.25  # how often a waiting request looks whether its client is still there


@dataclass(frozen=True, slots=True)
class Started:
    """An interactive job on its way: its id and tenant, when to stop waiting for it, and its end's
    event."""

    job_id: str
    wait_s: float
    ended: Ended
    tenant: str
    created: bool = False  # by this request (a retry's Idempotency-Key finds the first one's job)


def client_gone(request: web.Request) -> bool:
    """Whether the request's connection is closed (or closing): nobody will read the answer."""
    transport = request.transport
    return transport is None or transport.is_closing()


@contextlib.asynccontextmanager
async def start_interactive(
    request: web.Request, job: dict[str, Any], *, id_prefix: str = "", notify: bool = True
) -> AsyncIterator[Started]:
    """Submit ``job`` (tenant from the key) to the interactive queue.

    Refuses with ``no_workers`` when no worker serves the interactive queue (the job would wait for
    nobody). The job's end is watched from before it is submitted until the context exits; so is
    the client's connection (see the module docstring). A job that names no id gets ``id_prefix``
    before its key or random id (``resp_``, ``msg_``: the ids the Responses and Messages SDKs
    expect). ``notify``: the job's end brings its record to this server (``EndedWaiter.channel``):
    for a handler that answers from the record (``wait_answer``), not one that relays the stream.
    """
    settings: Settings = request.app["settings"]
    producer: Producer = request.app["producer"]
    waiter: EndedWaiter = request.app["ended"]
    if await producer.liveness.count(settings.interactive_queue_name) == 0:
        raise NoWorkers("no live llm-router worker serves the interactive queue")
    job = without_tenant(job)
    given = job.get("job_id")
    key = idempotency_key(request)
    if key is not None and given is not None and given != key:
        raise InvalidRequest("job_id and the Idempotency-Key header name different jobs", param="job_id")
    # the id is chosen here so the waiter is registered before the job exists; a retry with the same
    # Idempotency-Key finds the first job (and its answer) instead of running a second one
    job_id = given if isinstance(given, str) else id_prefix + (key or os.urandom(16).hex())
    if given is None:
        job = {**job, "job_id": job_id}
    tenant: str = request["tenant"]
    with waiter.watch(producer.scoped(job_id, tenant)) as event:
        # named before the submit: a submit cut off by Redis may have created the job all the same
        name_job(request, job_id)
        channel = waiter.channel if notify else None
        result = (
            await submit_jobs(
                producer, settings, [job], tenant, request=request, interactive=True, notify=channel
            )
        )[0]
        if isinstance(result, RouterError):
            name_job(request, None)  # refused: there is no job to name
            raise result
        deadline = job.get("deadline_s")
        wait_s = float(deadline if isinstance(deadline, int | float) else settings.interactive_deadline_s)
        started = Started(job_id, wait_s + WAIT_SLACK_S, event, tenant, result.created)
        gone: GoneWatch = request.app[GONE]
        watched = gone.add(request, producer, started, keyed=key is not None)
        try:
            yield started
        except ConnectionResetError:  # the client left while we wrote to it
            gone.discard(watched)
            await asyncio.shield(_cancel(producer, started))
            raise
        # a cancelled handler is the server stopping, not the client leaving: the job goes on, and
        # the client's retry (same Idempotency-Key) finds it on another server
        finally:
            gone.discard(watched)


class GoneWatch:
    """The connections of a server's interactive requests, looked at every ``GONE_POLL_S`` by one
    task (a task of its own per request cost every call a task); the job of a request whose client
    left is cancelled. The task runs while some request is watched."""

    def __init__(self) -> None:
        self._watched: dict[int, tuple[web.Request, Producer, Started, bool]] = {}
        self._next = 0
        self._task: asyncio.Task[None] | None = None
        self._cancels: set[asyncio.Task[None]] = set()

    def add(self, request: web.Request, producer: Producer, started: Started, *, keyed: bool = False) -> int:
        """Watch ``request``; ``keyed``: it sent an ``Idempotency-Key``, so a client that leaves
        before its answer begins (a timeout) will retry, and its job runs on for that retry."""
        self._next += 1
        self._watched[self._next] = (request, producer, started, keyed)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="interactive-clients")
        return self._next

    def discard(self, key: int) -> None:
        self._watched.pop(key, None)

    async def _run(self) -> None:
        while self._watched:
            await asyncio.sleep(GONE_POLL_S)
            for key, (request, producer, started, keyed) in list(self._watched.items()):
                if client_gone(request):
                    del self._watched[key]
                    if keyed and not request.get(ANSWER_STARTED):
                        continue  # timed out waiting: its retry (same key) gets this job's answer
                    cancel = asyncio.create_task(_cancel(producer, started))
                    self._cancels.add(cancel)
                    cancel.add_done_callback(self._cancels.discard)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


GONE = "interactive_clients"  # the app's GoneWatch


async def _cancel(producer: Producer, started: Started) -> None:
    """Cancel the job of a client that left; a job that ended meanwhile is left as it is."""
    try:
        record = await producer.cancel(started.job_id, tenant=started.tenant)
    except RouterError:
        return  # ended (job_not_cancellable) or expired: nothing to stop
    except RedisError as exc:
        log.warning(
            "client left; its job could not be cancelled",
            job_id=started.job_id,
            tenant=started.tenant,
            error=repr(exc),
        )
        return
    log.info("client left; job cancelled", job_id=started.job_id, tenant=started.tenant, status=record.status)


async def wait_answer(request: web.Request, started: Started) -> JobRecord:
    """The succeeded record of an interactive job; its error (502 for provider failures) otherwise."""
    waiter: EndedWaiter = request.app["ended"]
    producer: Producer = request.app["producer"]
    scoped = producer.scoped(started.job_id, started.tenant)
    record = await waiter.wait(scoped, started.ended, started.wait_s, new_job=started.created)
    if record.status != JobStatus.SUCCEEDED:
        raise record_error(record.error)
    return record


async def wait_ended(request: web.Request, started: Started) -> JobRecord | list[bytes]:
    """The end of an interactive job, whatever its status: the fields of its record when its end
    brought them (``EndedWaiter.wait_ended``: a handler that needs a few fields skips the decode),
    else the record read."""
    waiter: EndedWaiter = request.app["ended"]
    producer: Producer = request.app["producer"]
    scoped = producer.scoped(started.job_id, started.tenant)
    return await waiter.wait_ended(scoped, started.ended, started.wait_s, new_job=started.created)


def follow(request: web.Request, started: Started) -> AsyncIterator[dict[str, Any]]:
    """The job's chunks as they come (``ended.follow_stream``), bounded by the job's wait and by
    Redis answering."""
    return follow_stream(
        request.app["producer"],
        started.job_id,
        tenant=started.tenant,
        timeout_s=started.wait_s,
        watch=request.app.get("redis_watch"),
    )
