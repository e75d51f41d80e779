"""Running one job: read it, walk its route of deployments, write its record.

Redis budget per job beyond arq's own round trips: one script before the call (``start``: mark
running, read the request) and one after (``finish``: write the outcome). The route is the job's
model then its fallbacks, each expanded to its enabled deployments in preference order; the first
answer wins. The error taxonomy decides whether a failure moves on. When every deployment failed
with a transient error and time is left, the job is deferred (by the longest ``Retry-After`` heard,
at least the backoff) and arq runs it again.

A run never lets an exception reach arq other than ``Retry`` and ``CancelledError``: arq drops a
job whose function raised anything else, and our record would never reach a final status.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import structlog
from arq import Retry
from redis.exceptions import RedisError

from config.catalog import Catalog, Deployment
from config.prices import nanos_to_usd
from config.settings import Settings
from llm_router.contract import JobStatus
from llm_router.errors import (
    AllDeploymentsFailed,
    DeadlineExceeded,
    NoDeployment,
    RouterError,
    UpstreamTimeout,
)
from llm_router.redact import redact
from llm_router.store import Store
from worker.http import send
from worker.providers import ADAPTERS, Completion

log = structlog.get_logger("llm_router.worker")

MAX_ERROR_MESSAGE = 1000
# a run stops this long before arq's own job timeout would cancel it (and drop the job)
RUN_MARGIN_S = 5.0


@dataclass(slots=True)
class Outcome:
    """What one pass over the route came to: the record fields to write, and whether to try again."""

    fields: dict[str, Any]
    retryable: bool = False
    retry_after: float | None = None
    errors: list[RouterError] = field(default_factory=list)


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
        self.session = session
        self.worker_id = worker_id
        # the call each running job is making; the lease keeper copies it into the record, so a
        # run that dies mid-call still shows that attempt
        self.inflight: dict[str, dict[str, Any]] = {}
        self._secrets = sorted(
            {d.api_key for m in catalog.models for d in catalog.deployments(m) if d.api_key},
            key=len,
            reverse=True,
        )
        self._run_budget_s = max(settings.job_timeout_s - RUN_MARGIN_S, 1.0)

    async def run(self, job_id: str) -> None:
        """Run one job to a record; raises only ``Retry`` (run again later) or ``CancelledError``."""
        now = time.time()
        try:
            started = await self.store.start(job_id, self.worker_id, now)
        except RedisError as exc:
            log.warning("cannot start job, redis unavailable", job_id=job_id, error=repr(exc))
            raise Retry(defer=1.0) from None
        if started is None:
            log.warning("job record missing (expired or deleted)", job_id=job_id)
            return
        if len(started) == 1:  # already ended: a duplicate delivery, nothing to do
            return
        prev, request_b, route_b, deadline_b, attempts_b, runs, passes_b, inflight_b, prev_worker = started
        request: dict[str, Any] = orjson.loads(request_b)
        route: list[str] = orjson.loads(route_b)
        attempts: list[dict[str, Any]] = orjson.loads(attempts_b) if attempts_b else []
        passes = int(passes_b)
        deadline_at = float(deadline_b)
        bound = log.bind(job_id=job_id, model=route[0], run=runs)
        if prev == b"running":  # the run before this one was cut short: its worker died mid-job
            attempts.append(_interrupted(orjson.loads(inflight_b) if inflight_b else None, prev_worker))
            bound.warning("job resumed after an interrupted run", previous_worker=prev_worker.decode())

        try:
            outcome = await self._bounded_walk(job_id, request, route, attempts, now, deadline_at)
        except RunBudgetSpent:
            await asyncio.shield(
                self._write(job_id, {"status": JobStatus.QUEUED, "attempts": attempts}, bound)
            )
            bound.warning("run reached the worker's job timeout; the job will run again")
            raise Retry(defer=0.1) from None
        except asyncio.CancelledError:
            # stopped (SIGTERM past the grace period): put the job back for another worker; the
            # interrupted call is recorded and none of the job's retry passes is spent
            call = self.inflight.get(job_id)
            back = {
                "status": JobStatus.QUEUED,
                "attempts": [*attempts, _interrupted(call, self.worker_id, measured=True)],
            }
            with contextlib.suppress(Exception):
                await asyncio.shield(self._write(job_id, back, bound))
            raise
        except Exception as exc:
            bound.exception("job crashed")
            outcome = _failed(RouterError(f"internal error: {type(exc).__name__}"), attempts)
        finally:
            self.inflight.pop(job_id, None)

        if outcome.fields["status"] == JobStatus.FAILED and self._should_defer(outcome, passes, deadline_at):
            delay = max(self.settings.retry_backoff_s * 2**passes, outcome.retry_after or 0.0)
            delay = min(delay, max(deadline_at - time.time(), 0.0))
            deferred = {"status": JobStatus.DEFERRED, "attempts": attempts, "passes": passes + 1}
            await asyncio.shield(self._write(job_id, deferred, bound))
            bound.info("job deferred", retry_in_s=round(delay, 3), error=outcome.fields["error"]["code"])
            raise Retry(defer=delay)

        await asyncio.shield(self._write(job_id, outcome.fields, bound))
        if outcome.fields["status"] == JobStatus.SUCCEEDED:
            bound.debug(
                "job succeeded", provider=outcome.fields["provider"], cost=outcome.fields["usage"]["cost"]
            )
        else:
            error = outcome.fields["error"]
            bound.warning("job failed", error=error["code"], message=error["message"])

    async def _bounded_walk(
        self,
        job_id: str,
        request: dict[str, Any],
        route: list[str],
        attempts: list[dict[str, Any]],
        now: float,
        deadline_at: float,
    ) -> Outcome:
        """The walk, bounded by the job's deadline and by arq's job timeout, whichever comes first."""
        left = deadline_at - now
        if left <= 0:
            return _failed(DeadlineExceeded("the job's deadline passed before it could run"), attempts)
        try:
            async with asyncio.timeout(min(left, self._run_budget_s)):
                return await self._walk(job_id, request, route, attempts, deadline_at)
        except TimeoutError:
            if time.time() < deadline_at - 0.05:
                raise RunBudgetSpent from None
            return _failed(DeadlineExceeded("the job's deadline passed while it ran"), attempts)

    async def _walk(
        self,
        job_id: str,
        request: dict[str, Any],
        route: list[str],
        attempts: list[dict[str, Any]],
        deadline_at: float,
    ) -> Outcome:
        errors: list[RouterError] = []
        for model_id in route:
            for dep in self.catalog.deployments(model_id):
                started = time.time()
                t0 = time.perf_counter()
                self.inflight[job_id] = {
                    "provider": dep.provider,
                    "model": model_id,
                    "upstream_model": dep.upstream_model,
                    "started_at": started,
                }
                try:
                    completion = await self._call(dep, request, deadline_at)
                except RouterError as exc:
                    self._scrub(exc)
                    attempts.append(_attempt(dep, model_id, started, t0, exc))
                    errors.append(exc)
                    if not exc.spec.fallback:
                        return _failed(exc, attempts)
                    continue
                attempts.append(_attempt(dep, model_id, started, t0, None))
                return _succeeded(dep, model_id, completion, attempts)
        if not errors:
            raise NoDeployment(
                f"no deployment of {', '.join(route)} is enabled: set a provider key such as AISA_API_KEY"
            )
        if len(errors) == 1:
            return _failed(errors[0], attempts)
        codes = {e.code for e in errors}
        summary = ", ".join(
            f"{a['provider']}/{a['upstream_model']}: {a['error_code']}" for a in attempts[-len(errors) :]
        )
        error = AllDeploymentsFailed(
            f"every deployment failed ({summary}); last: {errors[-1].message}"[:MAX_ERROR_MESSAGE],
            code=codes.pop() if len(codes) == 1 else None,
        )
        outcome = _failed(error, attempts)
        outcome.retryable = any(e.retryable for e in errors)
        outcome.retry_after = max((e.retry_after for e in errors if e.retry_after), default=None)
        return outcome

    async def _call(self, dep: Deployment, request: dict[str, Any], deadline_at: float) -> Completion:
        adapter = ADAPTERS[dep.format]
        call = adapter.build_request(request, dep)
        left = deadline_at - time.time()
        if left <= 0:
            raise DeadlineExceeded("the job's deadline passed while it ran")
        try:
            status, headers, body = await send(
                self.session, call, min(self.settings.call_timeout_s, left), self.settings.connect_timeout_s
            )
        except UpstreamTimeout:
            if time.time() >= deadline_at - 0.05:  # the job's deadline cut the call, not the provider
                raise DeadlineExceeded("the job's deadline passed during a provider call") from None
            raise
        return adapter.parse_response(status, headers, body, request)

    def _scrub(self, exc: RouterError) -> None:
        """Keys out of an upstream message (before it is cut, so no key is left half-visible)."""
        exc.message = redact(exc.message, self._secrets)[:MAX_ERROR_MESSAGE]
        exc.args = (exc.message,)

    def _should_defer(self, outcome: Outcome, passes: int, deadline_at: float) -> bool:
        """Another pass over the route: only after transient failures, with passes and time left."""
        return (
            outcome.retryable
            and passes + 1 < self.settings.retry_passes
            and time.time() + self.settings.retry_backoff_s < deadline_at
        )

    async def _write(self, job_id: str, fields: dict[str, Any], bound: Any) -> None:
        """Write a record change, riding out a Redis restart for up to ``redis_retry_s``."""
        give_up = time.monotonic() + self.settings.redis_retry_s
        delay = 0.1
        while True:
            try:
                await self.store.finish(job_id, fields)
                return
            except RedisError as exc:
                if time.monotonic() + delay > give_up:
                    bound.error(
                        "cannot write record, redis unavailable; the job will run again", error=repr(exc)
                    )
                    raise Retry(defer=1.0) from None
                bound.warning("record write failed, retrying", retry_in_s=delay, error=repr(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)


def _attempt(
    dep: Deployment, model_id: str, started: float, t0: float, exc: RouterError | None
) -> dict[str, Any]:
    return {
        "provider": dep.provider,
        "model": model_id,
        "upstream_model": dep.upstream_model,
        "outcome": "success" if exc is None else "error",
        "error_code": None if exc is None else exc.code,
        "http_status": 200 if exc is None else exc.http_status,
        "latency_ms": round((time.perf_counter() - t0) * 1000, 3),
        "started_at": started,
    }


def _succeeded(
    dep: Deployment, model_id: str, completion: Completion, attempts: list[dict[str, Any]]
) -> Outcome:
    nanos = dep.price.cost_nanos(
        completion.prompt_tokens, completion.completion_tokens, completion.cached_tokens
    )
    cost = nanos_to_usd(nanos)
    response = completion.response
    response["model"] = model_id
    response["usage"]["cost"] = cost
    usage = {
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "total_tokens": completion.prompt_tokens + completion.completion_tokens,
        "cached_tokens": completion.cached_tokens,
        "cache_write_tokens": completion.cache_write_tokens,
        "reasoning_tokens": completion.reasoning_tokens,
        "cost": cost,
        "cost_nanos": nanos,
    }
    return Outcome(
        {
            "status": JobStatus.SUCCEEDED,
            "finished_at": time.time(),
            "attempts": attempts,
            "provider": dep.provider,
            "model": model_id,
            "response": response,
            "usage": usage,
        }
    )


def _failed(exc: RouterError, attempts: list[dict[str, Any]]) -> Outcome:
    fields = {
        "status": JobStatus.FAILED,
        "finished_at": time.time(),
        "attempts": list(attempts),
        "error": exc.to_dict(),
    }
    return Outcome(fields, retryable=exc.retryable, retry_after=exc.retry_after, errors=[exc])


def _interrupted(
    call: dict[str, Any] | None, worker: bytes | str | None, *, measured: bool = False
) -> dict[str, Any]:
    """The attempt of a run that was cut short, from what its worker last said it was calling;
    its latency is known only when this process cut it (``measured``), not when a worker died."""
    call = call or {}
    started = call.get("started_at")
    return {
        "provider": call.get("provider", "unknown"),
        "model": call.get("model", "unknown"),
        "upstream_model": call.get("upstream_model", "unknown"),
        "outcome": "interrupted",
        "error_code": None,
        "http_status": None,
        "latency_ms": round((time.time() - started) * 1000, 3) if started and measured else None,
        "started_at": started or 0.0,
        "worker": worker.decode() if isinstance(worker, bytes) else worker,
    }
