"""The async producer: validate and enqueue jobs (one or in bulk), read, wait for and cancel them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from config.catalog import Catalog
from config.cost import nanos_to_usd
from config.settings import Settings
from llm_router.contract import TERMINAL, JobRecord, JobStatus
from llm_router.errors import (
    IdempotencyConflict,
    InsufficientCredits,
    InvalidRequest,
    JobNotCancellable,
    JobNotFound,
    ModelNotFound,
    NoWorkers,
    RouterError,
    TooManyQueued,
    WaitTimeout,
)
from llm_router.keys import DEFAULT_TENANT, ended_channel, scoped_id, split_scoped, workers_key
from llm_router.redis_client import blocking_read_ms, redis_client
from llm_router.store import CancelReply, NewJob, Store, SubmitReply
from llm_router.tenants import TenantPolicies
from llm_router.tracing import job_trace_fields
from llm_router.webhooks import spec as webhook_spec
from producer import liveness
from producer.validation import Validator
from producer.vision import vision_to_chat

TERMINAL_VALUES = frozenset(s.value for s in TERMINAL)
WAIT_WINDOW = 2000  # ids whose status one poll reads

log = structlog.get_logger("llm_router.producer")


@dataclass(frozen=True, slots=True)
class Submitted:
    """The outcome of one submitted job: its id, whether this call created it, and its tenant (a job
    id names a job only inside its tenant)."""

    job_id: str
    created: bool
    tenant: str = DEFAULT_TENANT


# what a job's slot of a bulk submit's results holds until its chunk is settled (never handed out)
_PENDING = Submitted("", False)


def _ids() -> Iterator[str]:
    """Random 128-bit job ids, drawn from the OS a few thousand at a time (uuid4 per job costs more)."""
    while True:
        block = os.urandom(16 * 4096).hex()
        for i in range(0, len(block), 32):
            yield block[i : i + 32]


# one stream for the process: a stream per submit drew 64 KiB from the OS for a single interactive job
_NEW_IDS = _ids()


def _fresh_ids_after_fork() -> None:
    global _NEW_IDS  # a forked child must not hand out its parent's remaining ids
    _NEW_IDS = _ids()


os.register_at_fork(after_in_child=_fresh_ids_after_fork)


class JobFailed(RouterError):
    """Raised by the interactive calls when their job ended without an answer; ``record`` says why."""

    def __init__(self, record: JobRecord) -> None:
        err = record.error or {"code": "internal_error", "message": "job failed"}
        super().__init__(str(err.get("message")), param=err.get("param"), code=str(err.get("code")))
        self.record = record


def comparison_by_model(record: JobRecord, models: Sequence[str]) -> dict[str, dict[str, Any]]:
    """A compare record's sides keyed by the model names the caller gave (in the caller's order)."""
    by_job = {c.get("job_id"): c for c in record.comparison or ()}
    out: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(models):
        side = by_job.get(f"{record.id}-{i}") or {}
        out[name] = {
            "response": side.get("content"),
            "latency": side.get("latency"),
            "cost": side.get("cost", 0.0),
            "error": side.get("error"),
            "prompt_tokens": side.get("prompt_tokens"),
            "completion_tokens": side.get("completion_tokens"),
            "provider": side.get("provider"),
            "job_id": side.get("job_id"),
        }
    return out


class Producer:
    """Submits jobs to Redis and reads their records; safe to share across tasks.

    A job id names a job inside its tenant: reads, waits, cancels and streams take ``tenant``
    (default: the producer's own, ``default`` unless given to ``connect``). Another tenant's job
    behaves exactly like one that does not exist.
    """

    def __init__(
        self, redis: Redis, catalog: Catalog, settings: Settings, *, tenant: str = DEFAULT_TENANT
    ) -> None:
        self.redis = redis
        self.catalog = catalog
        self.settings = settings
        self.tenant = tenant
        self.store = Store(
            redis,
            queue_name=settings.queue_name,
            record_ttl_s=settings.record_ttl_s,
            usage_ttl_s=settings.usage_ttl_days * 86400,
        )
        self.validator = Validator(catalog, settings)
        self.policies = TenantPolicies(redis, settings)
        self.liveness = liveness.LiveWorkers(redis, settings)

    @classmethod
    async def connect(
        cls, settings: Settings | None = None, catalog: Catalog | None = None, *, tenant: str = DEFAULT_TENANT
    ) -> Producer:
        settings = settings or Settings()
        redis = redis_client(settings)
        return cls(redis, catalog or Catalog.load(settings), settings, tenant=tenant)

    def scoped(self, job_id: str, tenant: str | None = None) -> str:
        """The id the store knows the job by (``keys.scoped_id``)."""
        return scoped_id(tenant or self.tenant, job_id)

    async def close(self) -> None:
        await self.redis.aclose()

    async def __aenter__(self) -> Producer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- submitting -----------------------------------------------------------------------------

    async def submit(
        self,
        job: dict[str, Any] | bytes | str,
        *,
        interactive: bool = False,
        allow_files: bool = False,
        tenant: str | None = None,
        max_queued: int | None = None,
    ) -> Submitted:
        """Validate and enqueue one job; raises the job's ``RouterError`` if it is refused."""
        result = (
            await self.submit_many(
                [job],
                interactive=interactive,
                allow_files=allow_files,
                tenant=tenant,
                max_queued=max_queued,
            )
        )[0]
        if isinstance(result, RouterError):
            raise result
        return result

    async def submit_many(
        self,
        jobs: Iterable[dict[str, Any] | bytes | str | NewJob],
        *,
        interactive: bool = False,
        allow_files: bool = False,
        tenant: str | None = None,
        max_queued: int | None = None,
        parent: str | None = None,
        ids: Iterable[str] | None = None,
        on_settled: Callable[[list[Submitted | RouterError], int], None] | None = None,
        default_webhook: bool = True,
        notify: str | None = None,
    ) -> list[Submitted | RouterError]:
        """Validate and enqueue many jobs, pipelined in chunks; one result per job, in input order.

        A refused job's slot holds its error; the other jobs are enqueued all the same.
        ``allow_files`` lets vision jobs name local image files (for callers on this machine).
        ``interactive`` jobs go to the interactive queue with the interactive deadline. ``tenant``
        replaces any tenant the jobs name (the HTTP API passes its caller's). Every job publishes its
        end on its tenant's ``ended`` channel (``wait`` listens there). ``max_queued`` refuses a job with
        ``too_many_queued`` while its tenant has that many queued or running. Each job reserves its
        worst-case cost from its tenant's credit, if the tenant has credits, or is refused with
        ``insufficient_credits``. ``ids`` are the ids of jobs that name none (random by default).
        ``on_settled(results, n)`` is called as chunks are accepted: ``results[:n]`` are final then,
        so a caller can hand out ids before the whole submit is over (or cut off). A bulk job
        without a ``webhook`` of its own reports its end to its tenant's default endpoint (the
        ``webhook_url`` policy) unless ``default_webhook`` is off (a batch's lines: the batch
        reports); interactive jobs and compare sides only ever to their own. A ``NewJob`` is a job
        validated already (``self.validator.prepare``, off the event loop for a large body).
        ``notify``: the channel of the server that waits for these jobs (``EndedWaiter.channel``);
        each job's end sends its whole record there, so the server answers without reading it.
        """
        use_default = default_webhook and not interactive and parent is None
        queue = self.settings.queue_for("interactive" if interactive else "bulk")
        results: list[Submitted | RouterError] = []
        chunk: list[tuple[int, NewJob]] = []
        in_flight: asyncio.Task[None] | None = None
        new_ids = iter(ids) if ids is not None else _NEW_IDS
        trace = job_trace_fields(self.settings)  # the active span's context: the worker joins its trace
        traceparent = trace[1] if trace else None
        for job in jobs:
            try:
                prepared = (
                    job
                    if isinstance(job, NewJob)
                    else self.validator.prepare(
                        job,
                        now=time.time(),
                        interactive=interactive,
                        new_id=next(new_ids),
                        allow_files=allow_files,
                    )
                )
            except RouterError as exc:
                results.append(exc)
                continue
            if tenant is not None:
                prepared.tenant = tenant
            elif not prepared.tenant_given:
                prepared.tenant = self.tenant
            if interactive:  # a cancel from any producer must find the job's queue
                prepared.queue = queue
            prepared.parent = parent
            prepared.traceparent = traceparent
            if notify is not None:
                prepared.notify = notify
            results.append(_PENDING)  # until Redis answers
            chunk.append((len(results) - 1, prepared))
            if len(chunk) >= self.settings.enqueue_chunk:
                # one chunk in Redis while the next is validated: the two sides work at once
                if in_flight is not None:
                    await in_flight
                in_flight = asyncio.create_task(
                    self._flush(chunk, results, queue, max_queued or 0, on_settled, use_default)
                )
                chunk = []
                await asyncio.sleep(0)  # let the flush send its commands before validating on
        if in_flight is not None:
            await in_flight
        if chunk:
            await self._flush(chunk, results, queue, max_queued or 0, on_settled, use_default)
        if on_settled is not None:
            on_settled(results, len(results))  # refusals after the last chunk
        return results

    async def _flush(
        self,
        chunk: list[tuple[int, NewJob]],
        results: list[Submitted | RouterError],
        queue: str,
        max_queued: int,
        on_settled: Callable[[list[Submitted | RouterError], int], None] | None = None,
        use_default_webhook: bool = False,
    ) -> None:
        if use_default_webhook:
            await self._default_webhooks(chunk)
        await self._default_lanes(chunk)
        batch = [self.store.submit_command(p, queue, max_queued) for _, p in chunk]
        outcomes = await self.store.submit_batch(batch)
        for (index, prepared), outcome in zip(chunk, outcomes, strict=True):
            if outcome >= 0:  # created, or there already (the common case first)
                results[index] = Submitted(prepared.job_id, outcome == SubmitReply.CREATED, prepared.tenant)
            elif outcome == SubmitReply.CONFLICT:
                results[index] = IdempotencyConflict(
                    f"job '{prepared.job_id}' exists with a different body", param="job_id"
                )
            elif outcome == SubmitReply.NO_CREDIT:
                results[index] = InsufficientCredits(
                    f"tenant '{prepared.tenant}' has too little credit for this job, which may cost up to "
                    f"${nanos_to_usd(prepared.reserve_nanos):.6f} "
                    f"(see `llm-router credits show {prepared.tenant}`)",
                    param="tenant",
                )
            else:
                results[index] = TooManyQueued(
                    f"tenant '{prepared.tenant}' has {max_queued} jobs queued or running, its limit",
                    retry_after=1.0,
                )
        if on_settled is not None:
            on_settled(results, chunk[-1][0] + 1)

    async def _default_webhooks(self, chunk: list[tuple[int, NewJob]]) -> None:
        """Jobs without a webhook of their own get their tenant's default endpoint, if it has one
        (policies are cached: no Redis read per chunk, let alone per job)."""
        for tenant in {p.tenant for _, p in chunk if p.webhook is None}:
            url = (await self.policies.get(tenant)).get("webhook_url")
            if url:
                spec = webhook_spec.encode(url)
                for _, p in chunk:
                    if p.webhook is None and p.tenant == tenant:
                        p.webhook = spec

    async def _default_lanes(self, chunk: list[tuple[int, NewJob]]) -> None:
        """Submitted jobs that name no lane get their tenant's ``default_lane`` (policies are cached)."""
        for tenant in {p.tenant for _, p in chunk if p.lane is None}:
            lane = (await self.policies.get(tenant)).get("default_lane")
            for _, p in chunk:
                if p.lane is None and p.tenant == tenant:
                    p.lane = lane

    # -- reading --------------------------------------------------------------------------------

    async def get(self, job_id: str, *, tenant: str | None = None) -> JobRecord:
        record = await self.store.get(self.scoped(job_id, tenant))
        if record is None:
            raise JobNotFound(f"no job '{job_id}' (unknown or expired)", param="job_id")
        return record

    async def wait(
        self, job_id: str, timeout: float | None = None, *, tenant: str | None = None
    ) -> JobRecord:
        """The job's final record; polls with backoff up to ``timeout`` seconds, then ``WaitTimeout``."""
        return (await self.wait_many([job_id], timeout=timeout, tenant=tenant))[0]

    async def wait_many(
        self,
        job_ids: Sequence[str | Submitted],
        timeout: float | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        *,
        tenant: str | None = None,
    ) -> list[JobRecord]:
        """Final records of many jobs, in the order given (ids of ``tenant``, or ``Submitted`` results,
        which carry their own).

        Polls one pipelined status read at a time (at most ``WAIT_WINDOW`` ids, oldest first), backing
        off while nothing changes, and rides out a Redis restart until ``timeout``.
        """
        scoped = [
            self.scoped(j.job_id, j.tenant) if isinstance(j, Submitted) else self.scoped(j, tenant)
            for j in job_ids
        ]
        return await self._wait_scoped(scoped, timeout, on_progress)

    async def _wait_scoped(
        self,
        job_ids: list[str],
        timeout: float | None,
        on_progress: Callable[[int, int], None] | None,
    ) -> list[JobRecord]:
        """Waits by listening: every job publishes its end on its tenant's channel, so a waiter
        subscribes, reads the statuses once (for jobs that ended before it listened), then only
        crosses off the ids it hears, with a slow sweep of what is left (``wait_safety_poll_s``) for
        a notice lost to a Redis restart."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = dict.fromkeys(job_ids)
        total = len(pending)
        channels = sorted({ended_channel(split_scoped(j)[0]) for j in pending})
        pubsub = None
        next_sweep = 0.0  # sweep at once: after (re)subscribing, what ended before is only in Redis
        try:
            while pending:
                if pubsub is None:
                    try:
                        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                        await pubsub.subscribe(*channels)
                    except RedisError as exc:
                        log.warning("redis unavailable while waiting, retrying", error=repr(exc))
                        await self._close_quietly(pubsub)
                        pubsub = None
                        await self._sleep_until(0.5, deadline, timeout, len(pending))
                        continue
                    next_sweep = 0.0
                now = time.monotonic()
                if now >= next_sweep:
                    try:
                        await self._sweep(pending)
                    except RedisError as exc:
                        log.warning("redis unavailable while waiting, retrying", error=repr(exc))
                        await self._close_quietly(pubsub)
                        pubsub = None
                        continue
                    next_sweep = now + self.settings.wait_safety_poll_s
                    if on_progress:
                        on_progress(total - len(pending), total)
                    continue
                wait = next_sweep - now
                if deadline is not None:
                    wait = min(wait, deadline - now)
                    if wait <= 0:
                        raise WaitTimeout(
                            f"{len(pending)} job(s) not finished within {timeout} s", param="timeout"
                        )
                try:
                    message = await pubsub.get_message(timeout=wait)
                    heard = 0
                    while message is not None:  # take every notice already here before looking again
                        job_id = message["data"].decode()
                        if job_id in pending:
                            del pending[job_id]
                            heard += 1
                        message = await pubsub.get_message(timeout=0)
                except (RedisError, OSError) as exc:
                    log.warning("job-end notices lost, listening again", error=repr(exc))
                    await self._close_quietly(pubsub)
                    pubsub = None
                    continue
                if heard and on_progress:
                    on_progress(total - len(pending), total)
        finally:
            await self._close_quietly(pubsub)
        records = await self._read_many(job_ids, deadline)
        missing = [j for j, r in zip(job_ids, records, strict=True) if r is None]
        if missing:
            raise JobNotFound(f"no job '{_public(missing[0])}' (expired while waiting)", param="job_id")
        return records  # type: ignore[return-value]

    async def _sweep(self, pending: dict[str, None]) -> None:
        """Cross off the pending jobs that ended (a pipelined status read, a window at a time)."""
        ids = list(pending)
        for start in range(0, len(ids), WAIT_WINDOW):
            window = ids[start : start + WAIT_WINDOW]
            for job_id, status in zip(window, await self.store.statuses(window), strict=True):
                if status is None:
                    raise JobNotFound(f"no job '{_public(job_id)}' (unknown or expired)", param="job_id")
                if status in TERMINAL_VALUES:
                    pending.pop(job_id, None)

    @staticmethod
    async def _close_quietly(pubsub: Any) -> None:
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    @staticmethod
    async def _sleep_until(delay: float, deadline: float | None, timeout: float | None, left: int) -> None:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeout(f"{left} job(s) not finished within {timeout} s", param="timeout")
            delay = min(delay, remaining)
        await asyncio.sleep(delay)

    async def _read_many(self, job_ids: list[str], deadline: float | None) -> list[JobRecord | None]:
        delay = 0.2
        while True:
            try:
                return await self.store.get_many(job_ids)
            except RedisError:
                if deadline is not None and time.monotonic() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def cancel_many(
        self, job_ids: Sequence[str], *, tenant: str | None = None
    ) -> list[JobRecord | RouterError]:
        """Cancel many jobs (their scripts go to Redis together); per id, the record or the error."""

        async def one(job_id: str) -> JobRecord | RouterError:
            try:
                return await self.cancel(job_id, tenant=tenant)
            except RouterError as exc:
                return exc

        out: list[JobRecord | RouterError] = []
        for i in range(0, len(job_ids), 500):
            out.extend(await asyncio.gather(*(one(j) for j in job_ids[i : i + 500])))
        return out

    async def cancel(self, job_id: str, *, tenant: str | None = None) -> JobRecord:
        """Cancel a job: a queued one ends ``cancelled`` now; a running one is aborted (arq's abort)
        and its worker ends it ``cancelled``, settling what its provider already answered; an ended
        one is ``job_not_cancellable``. Returns the record as it is after the call."""
        error = {
            "code": "cancelled",
            "status": 499,
            "message": "cancelled by the client",
            "param": None,
            "type": "invalid_request_error",
        }
        reply, ended = await self.store.cancel(self.scoped(job_id, tenant), error)
        if reply == CancelReply.NOT_FOUND:
            raise JobNotFound(f"no job '{job_id}' (unknown or expired)", param="job_id")
        if reply == CancelReply.ALREADY_ENDED:
            raise JobNotCancellable(f"job '{job_id}' is {ended}; it has ended")
        if reply == CancelReply.PARENT:  # a compare job: each side is cancelled as a job of its own
            parent = await self.get(job_id, tenant=tenant)
            for i in range(len(parent.route)):
                await self.store.cancel(self.scoped(f"{job_id}-{i}", tenant), error)
        return await self.get(job_id, tenant=tenant)

    async def live_workers(self, queue: str | None = None) -> int:
        """Workers that beat recently on a queue (the bulk queue unless named)."""
        if queue is None:
            return await self.store.live_workers(self.settings.heartbeat_ttl_s)
        return int(
            await self.redis.zcount(workers_key(queue), time.time() - self.settings.heartbeat_ttl_s, "+inf")
        )

    # -- compare ----------------------------------------------------------------------------------

    async def compare(
        self,
        models: Sequence[str],
        messages: list[dict[str, Any]],
        *,
        fallback: bool = False,
        tenant: str | None = None,
        interactive: bool = True,
        **params: Any,
    ) -> str:
        """Submit one prompt to each model as a compare job; returns the parent's id.

        Each model runs as a child job (``<parent>-<i>``), without fallbacks unless ``fallback``, so
        the comparison is honest. The parent's record shows, side by side in ``comparison``, each
        model's content, latency, tokens, cost and error, and ends when every child has.
        """
        if not models:
            raise InvalidRequest("compare needs at least one model", param="models")
        if len(models) > 16:
            raise InvalidRequest("compare takes at most 16 models", param="models")
        route: list[str] = []
        for i, name in enumerate(models):
            model_id = self.catalog.resolve(name)
            if model_id is None:
                raise ModelNotFound(f"Model '{name}' is not available", param=f"models[{i}]")
            route.append(model_id)
        parent_id = uuid.uuid4().hex
        now = time.time()
        deadline_s = params.get("deadline_s") or (
            self.settings.interactive_deadline_s if interactive else self.settings.default_deadline_s
        )
        request = orjson.dumps({"compare": list(models), "messages": messages, **params})
        tenant = tenant or params.pop("tenant", None) or self.tenant
        await self.store.create_parent(
            scoped_id(tenant, parent_id),
            request=request,
            route=route,
            model_requested="compare:" + ",".join(models),
            tenant=tenant,
            created_at=now,
            deadline_at=now + deadline_s,
            pending=len(models),
        )
        children = [
            {
                **params,
                "model": name,
                "messages": messages,
                "job_id": f"{parent_id}-{i}",
                **({} if fallback else {"fallbacks": []}),
            }
            for i, name in enumerate(models)
        ]
        try:
            results: list[Submitted | RouterError] = await self.submit_many(
                children, interactive=interactive, tenant=tenant, parent=parent_id
            )
        except BaseException as exc:
            # the parent must still end: the sides that were not created count as refused
            with contextlib.suppress(Exception):
                created = await self.store.statuses([scoped_id(tenant, c["job_id"]) for c in children])
                failure = RouterError(f"not submitted: {exc!r}")
                results = [
                    Submitted(c["job_id"], True) if st else failure
                    for c, st in zip(children, created, strict=True)
                ]
                await self._refuse_sides(tenant, parent_id, route, results)
            raise
        await self._refuse_sides(tenant, parent_id, route, results)
        return parent_id

    async def _refuse_sides(
        self, tenant: str, parent_id: str, route: list[str], results: list[Submitted | RouterError]
    ) -> None:
        for i, result in enumerate(results):
            if isinstance(result, RouterError):
                await self.store.child_refused(
                    scoped_id(tenant, parent_id),
                    f"{parent_id}-{i}",
                    {
                        "job_id": f"{parent_id}-{i}",
                        "model": route[i],
                        "status": "failed",
                        "error": result.to_dict(),
                    },
                )

    async def compare_models(
        self, models: Sequence[str], message: str, *, timeout: float | None = None, **params: Any
    ) -> dict[str, dict[str, Any]]:
        """The product's A/B call: per model (as named), ``response`` (the answer text), ``latency``
        (seconds), ``cost`` (USD) and ``error`` (the error object, or ``None``)."""
        if await self._interactive_workers() == 0:
            raise NoWorkers("no live llm-router worker on the interactive queue (`llm-router worker`)")
        tenant = params.pop("tenant", None) or self.tenant
        parent_id = await self.compare(
            models, [{"role": "user", "content": message}], tenant=tenant, **params
        )
        wait_s = timeout if timeout is not None else self.settings.interactive_deadline_s + 5
        record = await self.wait(parent_id, timeout=wait_s, tenant=tenant)
        return comparison_by_model(record, models)

    # -- the product's interactive calls --------------------------------------------------------

    async def chat(
        self, model: str, messages: list[dict[str, Any]], *, timeout: float | None = None, **params: Any
    ) -> dict[str, Any]:
        """Run one chat job and return its OpenAI ``chat.completion``; raises ``JobFailed`` on failure."""
        record = await self.run_interactive({"model": model, "messages": messages, **params}, timeout=timeout)
        return record.response or {}

    async def vision(
        self, model: str, image: str, prompt: str, *, timeout: float | None = None, **params: Any
    ) -> dict[str, Any]:
        job = vision_to_chat(
            {"model": model, "image": image, "prompt": prompt, **params},
            allow_files=True,
            max_bytes=self.settings.max_body_bytes,
        )
        record = await self.run_interactive(job, timeout=timeout)
        return record.response or {}

    async def stream(
        self, job_id: str, *, block_ms: int = 1000, tenant: str | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """The job's ``chat.completion.chunk`` objects as they come; a late follower gets them all
        from the start. Ends when the job ends; raises ``JobFailed`` if it failed (``stream_interrupted``
        after some chunks, say)."""
        scoped = self.scoped(job_id, tenant)
        after = "0-0"
        ended = False
        while True:
            try:
                entries = await self.store.read_stream(
                    scoped, after, block_ms=0 if ended else blocking_read_ms(self.settings, block_ms)
                )
            except RedisError as exc:
                log.warning("redis unavailable while streaming, retrying", error=repr(exc))
                await asyncio.sleep(0.5)
                continue
            for entry_id, fields in entries:
                after = entry_id
                if b"c" in fields:
                    yield orjson.loads(fields[b"c"])
                elif b"end" in fields:  # written with the final record: the outcome is readable now
                    await self._raise_unless_succeeded(job_id, tenant)
                    return
                # an error entry comes before the record is final; its end entry follows
            if ended:  # drained what raced with the end: done
                await self._raise_unless_succeeded(job_id, tenant)
                return
            if not entries:
                record = await self.store.get(scoped)
                if record is None:
                    raise JobNotFound(f"no job '{job_id}' (unknown or expired)", param="job_id")
                # a job that ended without streaming (failed before a token, cancelled) has no end entry
                ended = record.status in TERMINAL

    async def _raise_unless_succeeded(self, job_id: str, tenant: str | None) -> None:
        record = await self.get(job_id, tenant=tenant)
        if record.status != JobStatus.SUCCEEDED:
            raise JobFailed(record)

    async def _interactive_workers(self) -> int:
        # heartbeats missed during a Redis outage are not a dead fleet (see producer.liveness)
        return await self.liveness.count(self.settings.interactive_queue_name)

    async def chat_stream(
        self, model: str, messages: list[dict[str, Any]], **params: Any
    ) -> AsyncIterator[str]:
        """The product's streaming call: the answer's text, piece by piece, as the job produces it."""
        if await self._interactive_workers() == 0:
            raise NoWorkers("no live llm-router worker on the interactive queue (`llm-router worker`)")
        submitted = await self.submit(
            {"model": model, "messages": messages, **params, "stream": True}, interactive=True
        )
        async for chunk in self.stream(submitted.job_id, tenant=submitted.tenant):
            for choice in chunk.get("choices") or ():
                text = (choice.get("delta") or {}).get("content")
                if text:
                    yield text

    async def run_interactive(self, job: dict[str, Any], *, timeout: float | None = None) -> JobRecord:
        """Submit with the interactive deadline and wait; fail fast when no worker is alive."""
        if await self._interactive_workers() == 0:
            raise NoWorkers("no live llm-router worker on the interactive queue (`llm-router worker`)")
        submitted = await self.submit(job, interactive=True)
        wait_s = (
            timeout if timeout is not None else job.get("deadline_s") or self.settings.interactive_deadline_s
        )
        record = await self.wait(submitted.job_id, timeout=float(wait_s) + 5, tenant=submitted.tenant)
        if record.status != JobStatus.SUCCEEDED:
            raise JobFailed(record)
        return record


def _public(scoped: str) -> str:
    return scoped.partition("/")[2]
