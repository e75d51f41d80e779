"""``/v1/jobs``: submit jobs (one or in bulk), read a record, follow its stream, cancel it.

The tenant is the API key's (``request["tenant"]``): a ``tenant`` in a body is dropped, and a job of
another tenant answers 404 ``not_found`` exactly like an unknown id, so ids leak nothing. Jobs that
arrive over HTTP may not name local image files.
"""

from __future__ import annotations

import os
import time
from typing import Any

from aiohttp import web

from config.settings import Settings
from llm_router.contract import JobRecord
from llm_router.errors import InvalidRequest, JobNotFound, ResourceNotFound, RouterError, TooManyQueued
from llm_router.store import NewJob
from producer.http.ended import follow_stream
from producer.http.errors import (
    SSE_DONE,
    error_body,
    error_response,
    idempotency_key,
    json_response,
    read_json,
    retry_after,
    sse_data,
    start_sse,
)
from producer.http.limits import LARGE, LIMITS
from producer.producer import JobFailed, Producer, Submitted

routes = web.RouteTableDef()


def without_tenant(job: dict[str, Any]) -> dict[str, Any]:
    """The job as the server submits it: the key decides the tenant, never the body."""
    return {k: v for k, v in job.items() if k != "tenant"} if "tenant" in job else job


async def submit_jobs(
    producer: Producer,
    settings: Settings,
    jobs: list[Any],
    tenant: str,
    *,
    request: web.Request | None = None,
    **kwargs: Any,
) -> list[Submitted | RouterError]:
    """Submit jobs for ``tenant`` under its queue limit; one result per input, in order.

    Given the ``request`` they came in, the jobs of a large body are validated off the event loop
    (``limits``), in the tenant's large-body slot."""
    results: list[Submitted | RouterError | None] = []
    valid: list[dict[str, Any] | NewJob] = []
    for job in jobs:
        if isinstance(job, dict):
            results.append(None)
            valid.append(without_tenant(job))
        else:
            results.append(InvalidRequest("a job must be a JSON object"))
    if valid and request is not None and request.get(LARGE):
        limits = request.app[LIMITS]
        interactive = bool(kwargs.get("interactive"))
        async with limits.large(tenant):
            prepared = await limits.off_loop(_prepare_all, producer, valid, interactive)
        slots = [k for k, r in enumerate(results) if r is None]
        for slot, outcome in zip(slots, prepared, strict=True):
            if isinstance(outcome, RouterError):
                results[slot] = outcome
        valid = [p for p in prepared if isinstance(p, NewJob)]
    max_queued = (await producer.policies.get(tenant)).get("max_queued") if valid else 0
    submitted = iter(
        await producer.submit_many(valid, tenant=tenant, max_queued=max_queued, **kwargs) if valid else []
    )
    return [r if r is not None else next(submitted) for r in results]


def _prepare_all(producer: Producer, jobs: list[Any], interactive: bool) -> list[NewJob | RouterError]:
    """Validate jobs (on the parse pool: this is the CPU a large body costs)."""
    out: list[NewJob | RouterError] = []
    for job in jobs:
        try:
            out.append(
                producer.validator.prepare(
                    job, now=time.time(), interactive=interactive, new_id=os.urandom(16).hex()
                )
            )
        except RouterError as exc:
            out.append(exc)
    return out


async def owned_record(request: web.Request, job_id: str) -> JobRecord:
    """The record of ``job_id`` in the caller's tenant; else 404 ``not_found`` (another tenant's job
    is one this tenant does not have)."""
    producer: Producer = request.app["producer"]
    try:
        return await producer.get(job_id, tenant=request["tenant"])
    except JobNotFound:
        raise ResourceNotFound(f"no job '{job_id}'", param="id") from None


def record_json(record: JobRecord) -> dict[str, Any]:
    return record.model_dump(mode="json")


@routes.post("/v1/jobs")
async def post_jobs(request: web.Request) -> web.Response:
    """One job object, or ``{"jobs": [...]}``: per-line ids or errors, in input order."""
    settings: Settings = request.app["settings"]
    producer: Producer = request.app["producer"]
    body = await read_json(request, settings.server_max_body_bytes)
    tenant: str = request["tenant"]
    if isinstance(body, dict) and "jobs" in body:
        jobs = body["jobs"]
        if set(body) != {"jobs"}:
            extra = sorted(set(body) - {"jobs"})[0]
            raise InvalidRequest(f'a bulk request holds only "jobs"; got {extra!r}', param=extra)
        if not isinstance(jobs, list) or not jobs:
            raise InvalidRequest("jobs must be a non-empty list of job objects", param="jobs")
        if len(jobs) > settings.server_max_jobs_per_request:
            raise InvalidRequest(
                f"{len(jobs)} jobs in one request; the limit is {settings.server_max_jobs_per_request}",
                param="jobs",
            )
        key = idempotency_key(request)
        if key is not None:  # a retried bulk request names the same jobs: line i is <key>-<i>
            jobs = [
                {**job, "job_id": f"{key}-{i}"} if isinstance(job, dict) and "job_id" not in job else job
                for i, job in enumerate(jobs)
            ]
        results = await submit_jobs(producer, settings, jobs, tenant, request=request)
        lines = [
            {"id": r.job_id, "created": r.created}
            if isinstance(r, Submitted)
            else {"error": {**error_body(r)["error"], "status": r.status}}
            for r in results
        ]
        full = [r for r in results if isinstance(r, TooManyQueued)]
        if full and not any(isinstance(r, Submitted) for r in results):
            return error_response(full[0])  # nothing accepted: the whole request is backpressure
        return json_response(
            {"object": "list", "data": lines}, headers=retry_after(full[0]) if full else None
        )
    if not isinstance(body, dict):
        raise InvalidRequest('send a job object or {"jobs": [...]}')
    key = idempotency_key(request)
    if key is not None:
        if body.get("job_id", key) != key:
            raise InvalidRequest("job_id and the Idempotency-Key header name different jobs", param="job_id")
        body = {**body, "job_id": key}
    result = (await submit_jobs(producer, settings, [body], tenant, request=request))[0]
    if isinstance(result, RouterError):
        raise result
    return json_response(
        {"id": result.job_id, "created": result.created}, status=201 if result.created else 200
    )


@routes.get("/v1/jobs/{id}")
async def get_job(request: web.Request) -> web.Response:
    return json_response(record_json(await owned_record(request, request.match_info["id"])))


@routes.delete("/v1/jobs/{id}")
async def delete_job(request: web.Request) -> web.Response:
    """Cancel: a queued job ends ``cancelled`` now; a running one is aborted and ends so shortly."""
    job_id = request.match_info["id"]
    await owned_record(request, job_id)
    producer: Producer = request.app["producer"]
    return json_response(record_json(await producer.cancel(job_id, tenant=request["tenant"])))


@routes.get("/v1/jobs/{id}/events")
async def job_events(request: web.Request) -> web.StreamResponse:
    """The job's ``chat.completion.chunk`` objects from the start as SSE ``data:`` events, then an
    ``end`` event with the outcome (id, status, error, usage), then ``data: [DONE]``."""
    job_id = request.match_info["id"]
    await owned_record(request, job_id)
    producer: Producer = request.app["producer"]
    response = await start_sse(request)
    try:
        async for chunk in follow_stream(producer, job_id, tenant=request["tenant"]):
            await response.write(sse_data(chunk))
        record = await producer.get(job_id, tenant=request["tenant"])
    except JobFailed as exc:
        record = exc.record
    except RouterError as exc:  # expired while we followed it
        await response.write(sse_data(error_body(exc), event="error"))
        await response.write(SSE_DONE)
        return response
    outcome = {
        "id": record.id,
        "status": record.status.value,
        "error": record.error,
        "usage": record.usage.model_dump(mode="json") if record.usage else None,
    }
    await response.write(sse_data(outcome, event="end"))
    await response.write(SSE_DONE)
    return response
