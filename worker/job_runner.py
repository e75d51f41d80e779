"""Running one job: read it, walk its route of deployments, write its record.

Redis budget per job: none before the call when the worker's claim started the job (the start
script's work: mark running, read the request, admit the route's first deployment past its breaker
and rate limits; ``worker.claims``), else that script; and one after (``finish``: write the
outcome and the breaker reports of the calls made, and, when the job ended, take it off its queue). The walk
itself is ``worker.route_walk``. When nothing answered but something may later (transient errors,
open breakers, rate limits), the job is deferred, without holding a worker slot, to when a
deployment is available again or by backoff (never before a ``Retry-After`` heard), until its
deadline.

A run never lets an exception reach arq other than ``Retry`` and ``CancelledError``: arq drops a
job whose function raised anything else, and our record would never reach a final status.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Coroutine
from typing import Any

import aiohttp
import orjson
import structlog
from arq import Retry
from redis.exceptions import RedisError

from config.catalog import Catalog, Deployment
from config.cost import followed_stream
from config.settings import Settings
from llm_router.circuit_breaker import (
    Admission,
    AdmissionState,
    BreakerReport,
    Policy,
    ReportKind,
    breaker_report,
)
from llm_router.contract import JobStatus, new_attempt
from llm_router.deadlines import Deadlines
from llm_router.errors import (
    DeadlineExceeded,
    JobCancelled,
    RouterError,
    UpstreamTimeout,
    WorkerLost,
)
from llm_router.keys import split_scoped
from llm_router.redact import redact
from llm_router.store import (
    NOT_STARTED,
    Finished,
    NotStarted,
    Settlement,
    Started,
    StartReply,
    Store,
    UnstartReply,
)
from worker import observe
from worker.breaker import RetryBudget, routing_table
from worker.claims import Starter
from worker.hedge import hedge_after_s
from worker.http import Timeouts
from worker.images import ImageFetcher
from worker.lanes import LaneChoice, Lanes, ParkReply
from worker.provider_client import ProviderClient
from worker.providers import ADAPTERS, Completion
from worker.providers.stream import completion_chunks
from worker.room import Room
from worker.route_walk import PassResult, RouteWalk, failed_pass
from worker.streaming import ChunkPublisher, stream_call, wants_usage

log = structlog.get_logger("llm_router.worker")

MAX_ERROR_MESSAGE = 1000
# a run stops this long before arq's own job timeout would cancel it (and drop the job)
RUN_MARGIN_S = 5.0


class RunBudgetSpent(Exception):
    """The run reached arq's job timeout before the job's deadline: run it again, not fail it."""


class JobRunner:
    """Everything a job needs, built once per worker process and shared by all its jobs."""

    def __init__(
        self,
        store: Store,
        catalog: Catalog,
        settings: Settings,
        session: aiohttp.ClientSession,
        worker_id: str,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.settings = settings
        self.session = session  # streamed calls
        self.provider = ProviderClient(settings)  # unstreamed calls; the worker closes it
        self.worker_id = worker_id
        # the call each running job is making; the lease keeper copies it into the record, so a
        # run that dies mid-call still shows that attempt
        self.inflight: dict[str, dict[str, Any]] = {}
        # the concurrency slots each running job holds (its walk's ``held``); the lease keeper renews them
        self.slots: dict[str, dict[str, Deployment]] = {}
        # jobs waiting for a slot of a busy deployment, woken as this worker's calls give slots back
        self.room = Room()
        self._secrets = sorted(
            {d.api_key for m in catalog.models for d in catalog.deployments(m) if d.api_key},
            key=len,
            reverse=True,
        )
        self._run_budget_s = max(settings.job_timeout_s - RUN_MARGIN_S, 1.0)
        self._deadlines = Deadlines()  # a thousand walks' bounds on a few loop timers
        self.routing_key, self.routing_table = routing_table(catalog, settings)
        self.policies = {
            d.id: Policy.for_deployment(d, settings) for m in catalog.models for d in catalog.deployments(m)
        }
        self.budget = RetryBudget(settings.retry_budget_ratio)
        self.images = ImageFetcher(settings)
        self._model_by_deployment = {d.id: m for m in catalog.models for d in catalog.deployments(m)}
        self._deployments = {d.id: d for m in catalog.models for d in catalog.deployments(m)}
        self.timeouts = {d.id: Timeouts.of(d, settings) for d in self._deployments.values()}
        self._probe_lease_ms = int((settings.call_timeout_s + 5) * 1000)
        self._slot_lease_ms = int(settings.lease_s * 1000)
        # answers this process got but could not store (Redis away past redis_retry_s), by job id
        self.unwritten: dict[str, dict[str, Any]] = {}
        # whether arq is aborting a job (a cancel while it runs); set by the worker that owns the runner
        self.aborting: Any = lambda job_id: False
        self.lanes = Lanes(store.redis, catalog, settings)  # lane decisions (README "Lanes")

    @property
    def starter(self) -> Starter:
        """What a claim needs to start this runner's jobs as it leases them (``Store.start``'s arguments)."""
        return Starter(self.worker_id, self.routing_key, self._probe_lease_ms, self._slot_lease_ms)

    async def put_back_unrun(self, job_id: str, started: Started, queue: str) -> UnstartReply:
        """Put back a job started for this worker that it never ran (handed to it, then stopped
        before it had a slot), its start undone in one step (``Store.unstart``): its record says
        queued again, so the next worker's start does not take it for a run lost with its worker
        (an ``interrupted`` attempt, a lost run counted towards ``max_lost_runs``); the slot and
        probe lease its start took are given back now, not when their leases lapse. Only while
        this worker holds the job's lease and its record says running here."""
        reports = []
        for dep_id, admission in started.admissions.items():
            dep = self._deployments.get(dep_id)
            if dep is None or not admission.state.admitted:
                continue
            probe = admission.state == AdmissionState.PROBE
            if probe or self.policies[dep_id].limited:
                reports.append(breaker_report(dep, ReportKind.NEUTRAL, self.policies[dep_id], probe=probe))
        reply = await self.store.unstart(job_id, queue, self.worker_id, reports)
        if reply == UnstartReply.PUT_BACK:
            self.room.freed(r.deployment for r in reports if r.slot)
        return reply

    async def run(self, job_id: str, started: StartReply | NotStarted = NOT_STARTED) -> bool:
        """Run one job to a record; raises only ``Retry`` (run again later) or ``CancelledError``.

        ``job_id`` is the scoped id the queue holds (``keys.scoped_id``); logs show the job's own id
        and its tenant apart. ``started`` is what the start script replied when the job's claim
        started it; else the run starts it. True when the write that ended the job also took it off
        its queue (its lease, as the end of a run that is done does: one round trip fewer a job).
        """
        observe.job_begins(self, job_id)
        now = time.time()
        if started is NOT_STARTED:
            try:
                started = await self.store.start(
                    job_id, self.worker_id, now, self.routing_key, self._probe_lease_ms, self._slot_lease_ms
                )
            except RedisError as exc:
                log.warning("cannot start job, redis unavailable", job_id=job_id, error=repr(exc))
                raise Retry(defer=1.0) from None
        if started is None:
            log.warning("job record missing (expired or deleted)", job_id=job_id)
            return False
        if not isinstance(started, Started):  # already ended: a duplicate delivery, nothing to do
            return False
        clock_offset_s = time.time() - started.redis_now_ms / 1000
        for dep_id, admission in started.admissions.items():
            if admission.state == AdmissionState.PROBE:  # the start script half-opened this breaker
                log.info("breaker half-open, probing", deployment=dep_id, job_id=job_id)
        request_b = started.request
        request: dict[str, Any] = orjson.loads(request_b)
        route: list[str] = orjson.loads(started.route)
        attempts: list[dict[str, Any]] = orjson.loads(started.attempts) if started.attempts else []
        passes = started.passes
        deadline_at = started.deadline_at
        tenant, public_id = split_scoped(job_id)
        bound = log.bind(job_id=public_id, tenant=tenant, model=route[0], run=started.runs)
        await observe.job_started(
            request,
            route,
            started.runs,
            attempts,
            tenant=started.tenant,
            traceparent=started.traceparent,
            created_at=started.created_at,
            first_started_at=started.first_started_at,
        )
        if started.previous_status == "running":
            # the run before was cut short, its worker dead mid-job: the start script recorded the
            # interrupted attempt
            bound.warning("job resumed after an interrupted run", previous_worker=started.previous_worker)
        parent = started.parent
        if started.lost_runs > self.settings.max_lost_runs:
            # a poison job (one that kills its worker, an OOM say) must not take the fleet down one
            # worker at a time: it fails, and its reservation is released
            lost = WorkerLost(
                f"the job's runs ended with their worker's death {started.lost_runs} times; "
                "it is not run again"
            )
            released = await asyncio.shield(
                self._write(job_id, failed_pass(lost, attempts).fields, bound, route=route, parent=parent)
            )
            bound.error(
                "job failed: its runs kept ending with their worker's death", lost_runs=started.lost_runs
            )
            return released
        unwritten = self.unwritten.pop(job_id, None)
        if unwritten is not None:
            # an answer this process got but could not store: store it rather than pay for it twice
            return await asyncio.shield(self._write(job_id, unwritten, bound, route=route, parent=parent))
        if started.cancel_requested:
            return await asyncio.shield(
                self._write(job_id, _cancelled(attempts), bound, route=route, parent=parent)
            )
        if started.cached:
            return await self._serve_cached(job_id, started.cached, request, route, attempts, bound, parent)
        # lanes: a batch job goes to the batcher; an auto job takes the cheapest lane that meets its deadline
        lane, lane_reason = started.lane or "now", None
        if lane in ("batch", "auto"):
            interactive = started.queue == self.settings.interactive_queue_name
            choice = await self.lanes.choose(request, route, deadline_at, lane, interactive=interactive)
            if choice.lane == "batch":
                parked = await self.lanes.park(job_id, choice, deadline_at)
                bound.debug("job parked for a provider batch", outcome=parked.name)
                if parked != ParkReply.CANCEL_ASKED:
                    return False
                choice = LaneChoice("now", "cancel asked")
            lane, lane_reason = choice.lane, choice.reason
        if lane == "flex" and request.get("service_tier") != "flex":
            request = {**request, "service_tier": "flex"}

        publisher = (
            ChunkPublisher(self.store, job_id, route[0], self.settings.stream_maxlen, scrub=self._redact)
            if request.get("stream")
            else None
        )
        followed = followed_stream(request, started.queue == self.settings.interactive_queue_name)
        walk = RouteWalk(
            job_id=job_id,
            request=request,
            request_json=request_b,
            route=route,
            attempts=attempts,
            deadline_at=deadline_at,
            admissions=started.admissions,
            est_tokens=started.est_tokens,
            clock_offset_s=clock_offset_s,
            catalog=self.catalog,
            settings=self.settings,
            policies=self.policies,
            budget=self.budget,
            call=self.lanes.wrap(self._call, job_id, lane),
            admit=lambda dep, est, reports: self._admit(dep, job_id, est, reports, bound),
            inflight=self.inflight,
            scrub=self._scrub,
            inline_images=self.images.inline,
            stream=self.lanes.wrap(self._stream_for(job_id, route[0], publisher, followed), job_id, lane)
            if publisher is not None
            else None,
            publisher=publisher,
            wait_room=self.room.wait,
            hedge_after_s=hedge_after_s(
                started.hedge_ms, started.learned_ms, started.learned_samples, self.settings.hedge_min_samples
            ),
        )
        self.slots[job_id] = walk.held
        try:
            with self.images.scope():  # its fetched images are let go with the walk
                result = await self._bounded_walk(walk, now)
        except RunBudgetSpent:
            back = {"status": JobStatus.QUEUED, "attempts": attempts}
            await asyncio.shield(self._write(job_id, back, bound, walk.unsent_reports()))
            bound.warning("run reached the worker's job timeout; the job will run again")
            raise Retry(defer=0.1) from None
        except asyncio.CancelledError:
            # stopped (SIGTERM past the grace period): put the job back for another worker; the
            # interrupted call is recorded and none of the job's retry passes is spent. Aborted (a
            # cancel while it ran): it ends cancelled
            call = self.inflight.get(job_id)
            tried = [*attempts, _interrupted(call, self.worker_id, measured=True)]
            if self.aborting(job_id):
                streamed = "".join(publisher.text) if publisher is not None else ""
                # the calls the provider had are paid for: their prompts and what they streamed
                cut, usage = walk.cut_short(streamed, "cancelled")
                back = _cancelled([*attempts, *cut] if cut else tried)
                if usage is not None:
                    back["usage"] = usage
                if streamed:
                    back["partial_text"] = streamed
                bound.info("job aborted by a cancel")
            else:
                back = {"status": JobStatus.QUEUED, "attempts": tried}
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    self._write(job_id, back, bound, walk.unsent_reports(), route=route, parent=parent)
                )
            raise
        except Exception as exc:
            bound.exception("job crashed")
            result = failed_pass(RouterError(f"internal error: {type(exc).__name__}"), attempts)
            result.reports = walk.unsent_reports()
        finally:
            self.inflight.pop(job_id, None)
            self.slots.pop(job_id, None)

        self.lanes.mark(job_id, result.fields, lane, lane_reason)
        if result.fields["status"] == JobStatus.FAILED:
            delay = self._defer_delay(result, passes, deadline_at)
            if delay is not None:
                deferred = {
                    "status": JobStatus.DEFERRED,
                    "attempts": attempts,
                    "passes": passes + 1 if result.calls_failed else passes,
                }
                await asyncio.shield(self._write(job_id, deferred, bound, result.reports))
                bound.info("job deferred", retry_in_s=round(delay, 3), error=result.fields["error"]["code"])
                raise Retry(defer=delay)

        try:
            released = await asyncio.shield(
                self._write(job_id, result.fields, bound, result.reports, route=route, parent=parent)
            )
        except Retry:
            if result.fields["status"] == JobStatus.SUCCEEDED:
                self.unwritten[job_id] = result.fields
            raise
        if result.fields["status"] == JobStatus.SUCCEEDED:
            bound.debug(
                "job succeeded", provider=result.fields["provider"], cost=result.fields["usage"]["cost"]
            )
        else:
            error = result.fields["error"]
            bound.warning("job failed", error=error["code"], message=error["message"])
        return released

    async def _bounded_walk(self, walk: RouteWalk, now: float) -> PassResult:
        """The walk, bounded by the job's deadline and by arq's job timeout, whichever comes first."""
        left = walk.deadline_at - now
        if left <= 0:
            return failed_pass(
                DeadlineExceeded("the job's deadline passed before it could run"), walk.attempts
            )
        try:
            async with self._deadlines.after(min(left, self._run_budget_s)):
                return await walk.run()
        except TimeoutError:
            if time.time() < walk.deadline_at - 0.05:
                raise RunBudgetSpent from None
            # the calls the deadline cut are paid for, as a cancel's are
            streamed = "".join(walk.publisher.text) if walk.publisher is not None else ""
            cut, usage = walk.cut_short(streamed, "deadline_exceeded")
            walk.attempts.extend(cut)
            result = failed_pass(DeadlineExceeded("the job's deadline passed while it ran"), walk.attempts)
            if usage is not None:
                result.fields["usage"] = usage
                if streamed:
                    result.fields["partial_text"] = streamed
            result.reports = walk.unsent_reports()
            return result

    async def _admit(
        self, dep: Deployment, job_id: str, est_tokens: int, reports: list[BreakerReport], bound: Any
    ) -> Admission:
        """Admission of a deployment reached after the ones before it failed or were busy (off the
        common path), carrying the reports of the calls made since the last admission."""
        policy = self.policies[dep.id]
        try:
            admitted = await self.store.admit(
                dep.id,
                dep.rpm or 0,
                dep.tpm or 0,
                policy.probes,
                job_id,
                est_tokens,
                self._probe_lease_ms,
                concurrency=(policy.conc_initial, policy.conc_max),
                slot_lease_ms=self._slot_lease_ms,
                reports=reports,
            )
        except RedisError:
            # Redis away: call rather than stall (those reports are lost: a few breaker counts, and
            # slots that lapse with their lease); the record write will wait for it
            return Admission(AdmissionState.OK)
        self.room.freed(r.deployment for r in reports if r.slot)
        for t in admitted.transitions:
            bound.warning("breaker state changed", deployment=t.deployment, state=t.state, reason=t.reason)
        return admitted.admission

    async def _call(self, dep: Deployment, request: dict[str, Any], deadline_at: float) -> Completion:
        adapter = ADAPTERS[dep.format]
        call = adapter.build_request(request, dep)
        left = deadline_at - time.time()
        if left <= 0:
            raise DeadlineExceeded("the job's deadline passed while it ran")
        try:
            status, headers, body = await self.provider.send(
                call, self.timeouts[dep.id], deadline_at=deadline_at
            )
        except UpstreamTimeout:
            if time.time() >= deadline_at - 0.05:  # the job's deadline cut the call, not the provider
                raise DeadlineExceeded("the job's deadline passed during a provider call") from None
            raise
        return adapter.parse_response(status, headers, body, request)

    def _stream_for(self, job_id: str, model_id: str, publisher: ChunkPublisher, followed: bool) -> Any:

        async def call(dep: Deployment, request: dict[str, Any], deadline_at: float) -> Completion:
            if not publisher.continuing:  # a continuation goes on under the first call's model
                publisher.model_id = self._model_of(dep, model_id)
            return await stream_call(
                self.session,
                dep,
                request,
                deadline_at=deadline_at,
                limits=self.timeouts[dep.id],
                publisher=publisher,
                followed=followed,
            )

        return call

    def _model_of(self, dep: Deployment, default: str) -> str:
        return self._model_by_deployment.get(dep.id, default)

    def _scrub(self, exc: RouterError) -> None:
        """Keys out of an upstream message (before it is cut, so no key is left half-visible)."""
        exc.message = self._redact(exc.message)
        exc.args = (exc.message,)

    def _redact(self, text: str) -> str:
        return redact(text, self._secrets)[:MAX_ERROR_MESSAGE]

    def _defer_delay(self, result: PassResult, passes: int, deadline_at: float) -> float | None:
        """Seconds until the job should try its route again, or ``None`` to let it fail now.

        A job whose deployments are all open, limited or failing transiently waits (off its worker
        slot) until one is available again or a backoff passes, never earlier than a Retry-After it
        heard, until its deadline.
        """
        if not result.retryable or passes + 1 >= self.settings.retry_passes:
            return None
        now = time.time()
        candidates = []
        if result.available_at is not None:
            candidates.append(result.available_at - now)
        if result.calls_failed:
            candidates.append(
                min(self.settings.retry_backoff_s * 2**passes, self.settings.retry_backoff_max_s)
            )
        delay = max(min(candidates) if candidates else self.settings.retry_backoff_s, 0.05)
        if result.retry_after is not None and result.available_at is None:
            delay = max(delay, min(result.retry_after, self.settings.retry_after_cap_s))
        if now + delay >= deadline_at:
            return None
        return delay

    async def _serve_cached(
        self,
        job_id: str,
        cached: bytes,
        request: dict[str, Any],
        route: list[str],
        attempts: list[dict[str, Any]],
        bound: Any,
        parent: str | None,
    ) -> bool:
        """Answer from the response cache: no provider call, no cost."""
        response = orjson.loads(cached)
        usage = response.get("usage") or {}
        prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        response["usage"] = {**usage, "cost": 0.0}
        if request.get("stream"):
            # exactly what a live stream of this answer publishes (tool-call indexes, finish, usage
            # chunk only when asked): one converter for both
            publisher = ChunkPublisher(
                self.store,
                job_id,
                route[0],
                self.settings.stream_maxlen,
                include_usage=wants_usage(request),
            )
            publisher.add(completion_chunks(response))
            await publisher.drain()
        fields = {
            "status": JobStatus.SUCCEEDED,
            "finished_at": time.time(),
            "attempts": attempts,
            "provider": "cache",
            "model": response.get("model") or route[0],
            "response": response,
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "cost": 0.0,
                "cost_nanos": 0,
            },
            "cached": True,
        }
        released = await asyncio.shield(self._write(job_id, fields, bound, route=route, parent=parent))
        bound.debug("job answered from the cache")
        return released

    def _write(
        self,
        job_id: str,
        fields: dict[str, Any],
        bound: Any,
        reports: list[BreakerReport] | None = None,
        *,
        route: list[str] | None = None,
        parent: str | None = None,
    ) -> Coroutine[Any, Any, bool]:
        """Write a record change and its breaker reports, riding out a Redis restart for a while.

        A change that ends the job settles its cost (once: the script ignores a job that already
        ended) and, for one side of a compare job, hands its parent a summary, and takes the job off
        its queue (``Store.finish``'s ``release``; True then). The first try is sent before this
        returns: callers wait for it in a shield, whose task would have held the write back a turn
        of the event loop.
        """
        observe.recording(fields)
        settlement = None
        summary = b""
        ends = JobStatus(fields["status"]).terminal
        if ends:
            settlement, summary = _settlement(job_id, fields, route, parent)
            if route and fields.get("model") not in (None, route[0]) and not fields.get("cached"):
                # a fallback's answer is not the requested model's: never cache it under that model
                fields = {**fields, "no_cache": 1}
        reports = reports or []
        first = self.store.finish(
            job_id, fields, reports, settlement=settlement, summary=summary, release=ends
        )
        return self._written(job_id, fields, bound, reports, settlement, summary, ends, first)

    async def _written(
        self,
        job_id: str,
        fields: dict[str, Any],
        bound: Any,
        reports: list[BreakerReport],
        settlement: Settlement | None,
        summary: bytes,
        ends: bool,
        first: Awaitable[Finished],
    ) -> bool:
        give_up = time.monotonic() + self.settings.redis_retry_s
        delay = 0.1
        attempt = first
        while True:
            try:
                finished = await attempt
                break
            except RedisError as exc:
                if time.monotonic() + delay > give_up:
                    bound.error(
                        "cannot write record, redis unavailable; the job will run again", error=repr(exc)
                    )
                    raise Retry(defer=1.0) from None
                bound.warning("record write failed, retrying", retry_in_s=delay, error=repr(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                attempt = self.store.finish(
                    job_id, fields, reports, settlement=settlement, summary=summary, release=ends
                )
        if reports:
            self.room.freed(r.deployment for r in reports if r.slot)
        for t in finished.transitions:
            bound.warning("breaker state changed", deployment=t.deployment, state=t.state, reason=t.reason)
        return ends


def _cancelled(attempts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "status": JobStatus.CANCELLED,
        "finished_at": time.time(),
        "attempts": attempts,
        "error": JobCancelled("cancelled by the client").to_dict(),
    }


def _settlement(
    job_id: str, fields: dict[str, Any], route: list[str] | None, parent: str | None
) -> tuple[Settlement, bytes]:
    """What a job that ends pays and, if it is one side of a compare job, the summary its parent shows."""
    usage = fields.get("usage") or {}
    model = fields.get("model") or (route[0] if route else "")
    settle = Settlement(
        cost_nanos=int(usage.get("cost_nanos") or 0),
        model=model,
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
    )
    if parent is None:
        return settle, b""
    calls = [a for a in fields.get("attempts") or () if a.get("latency_ms") is not None]
    response = fields.get("response") or {}
    message = ((response.get("choices") or [{}])[0]).get("message") or {}
    summary = {
        "job_id": split_scoped(job_id)[1],
        "model": route[0] if route else model,
        "status": JobStatus(fields["status"]).value,
        "content": message.get("content"),
        "latency": round(calls[-1]["latency_ms"] / 1000, 4) if calls else None,
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "cost": usage.get("cost", 0.0),
        "provider": fields.get("provider"),
        "error": fields.get("error"),
    }
    return settle, orjson.dumps(summary)


def _interrupted(
    call: dict[str, Any] | None, worker: str | None, *, measured: bool = False
) -> dict[str, Any]:
    """The attempt of a run that was cut short, from what its worker last said it was calling;
    its latency is known only when this process cut it (``measured``), not when a worker died."""
    call = call or {}
    started = call.get("started_at")
    return new_attempt(
        provider=call.get("provider", "unknown"),
        model=call.get("model", "unknown"),
        upstream_model=call.get("upstream_model", "unknown"),
        outcome="interrupted",
        latency_ms=round((time.time() - started) * 1000, 3) if started and measured else None,
        started_at=started or 0.0,
        worker=worker or None,
    )
