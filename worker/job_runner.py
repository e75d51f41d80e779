"""Running one job: read it, walk its route of deployments, write its record.

Redis budget per job beyond arq's own round trips: one script before the call (``start``: mark
running, read the request) and one after (``finish``: write the outcome). The route is the job's
model then its fallbacks, each expanded to its enabled deployments in preference order; the first
answer wins. Errors decide from the taxonomy's table whether to move on. When every deployment
failed with a retryable error and time is left, the job is deferred and arq runs it again later.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
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

    async def run(self, job_id: str) -> None:
        """Run one job to a record; raises only ``Retry`` (run again later) or ``CancelledError``.

        Anything else escaping an arq job makes arq drop the job, so it never does: Redis errors
        become a retry, and a bug of ours fails the job visibly with ``internal_error``.
        """
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

        fields: dict[str, Any]
        try:
            if deadline_at - now <= 0:
                raise DeadlineExceeded("the job's deadline passed before it could run")
            async with asyncio.timeout(deadline_at - now):
                fields = await self._walk(job_id, request, route, attempts, deadline_at)
        except TimeoutError:
            fields = _failed(DeadlineExceeded("the job's deadline passed while it ran"), attempts)
        except RouterError as exc:
            fields = _failed(exc, attempts)
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
            fields = _failed(
                RouterError(f"internal error: {type(exc).__name__}", code="internal_error"), attempts
            )
        finally:
            self.inflight.pop(job_id, None)

        if fields["status"] == JobStatus.FAILED and _should_defer(fields, passes, deadline_at, self.settings):
            delay = min(self.settings.retry_backoff_s * 2**passes, max(deadline_at - time.time(), 0))
            deferred = {"status": JobStatus.DEFERRED, "attempts": attempts, "passes": passes + 1}
            await asyncio.shield(self._write(job_id, deferred, bound))
            bound.info("job deferred", retry_in_s=round(delay, 3), error=fields["error"]["code"])
            raise Retry(defer=delay)

        await asyncio.shield(self._write(job_id, fields, bound))
        if fields["status"] == JobStatus.SUCCEEDED:
            bound.debug("job succeeded", provider=fields["provider"], cost=fields["usage"]["cost"])
        else:
            bound.warning("job failed", error=fields["error"]["code"], message=fields["error"]["message"])

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

    async def _walk(
        self,
        job_id: str,
        request: dict[str, Any],
        route: list[str],
        attempts: list[dict[str, Any]],
        deadline_at: float,
    ) -> dict[str, Any]:
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
                    exc.message = redact(exc.message, self._secrets)
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
        codes = {e.code for e in errors}
        if len(codes) == 1 and len(errors) == 1:
            return _failed(errors[0], attempts)
        last = errors[-1]
        code = codes.pop() if len(codes) == 1 else None
        summary = ", ".join(
            f"{a['provider']}/{a['upstream_model']}: {a['error_code']}" for a in attempts[-len(errors) :]
        )
        return _failed(
            AllDeploymentsFailed(f"every deployment failed ({summary}); last: {last.message}", code=code),
            attempts,
            retryable=any(e.retryable for e in errors),
        )

    async def _call(self, dep: Deployment, request: dict[str, Any], deadline_at: float) -> Completion:
        adapter = ADAPTERS[dep.format]
        call = adapter.build_request(request, dep)
        left = deadline_at - time.time()
        if left <= 0:
            raise DeadlineExceeded("the job's deadline passed while it ran")
        try:
            status, headers, body = await send(self.session, call, min(self.settings.call_timeout_s, left))
        except UpstreamTimeout:
            if left < self.settings.call_timeout_s:  # cut short by the job's deadline, not the provider
                raise DeadlineExceeded("the job's deadline passed during a provider call") from None
            raise
        return adapter.parse_response(status, headers, body, request)


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
) -> dict[str, Any]:
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
        "cost": cost,
        "cost_nanos": nanos,
    }
    return {
        "status": JobStatus.SUCCEEDED,
        "finished_at": time.time(),
        "attempts": attempts,
        "provider": dep.provider,
        "model": model_id,
        "response": response,
        "usage": usage,
    }


def _failed(
    exc: RouterError, attempts: list[dict[str, Any]], *, retryable: bool | None = None
) -> dict[str, Any]:
    return {
        "status": JobStatus.FAILED,
        "finished_at": time.time(),
        "attempts": attempts,
        "error": exc.to_dict(),
        "_retryable": exc.retryable if retryable is None else retryable,
    }


def _should_defer(fields: dict[str, Any], passes: int, deadline_at: float, settings: Settings) -> bool:
    """Whether a failed pass over the route earns another: only transient failures, with passes and
    time left."""
    retryable = fields.pop("_retryable", False)
    return (
        bool(retryable)
        and passes + 1 < settings.retry_passes
        and time.time() + settings.retry_backoff_s < deadline_at
    )


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
