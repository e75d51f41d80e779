"""The OpenAI-compatible front: ``POST /v1/chat/completions`` and ``GET /v1/models``.

A chat completion is a job on the interactive queue (served before bulk) like any other; the handler
waits for its end through the process's one pub/sub subscription (``ended``), never by polling, and
answers with the record's ``chat.completion`` plus ``usage.cost`` and ``usage.credits_remaining``.
``stream: true`` relays the job's stream as OpenAI SSE. The Gemini endpoint reuses ``start_interactive``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from config.catalog import Catalog
from config.settings import Settings
from llm_router.contract import JobRecord, JobStatus
from llm_router.errors import (
    InvalidRequest,
    ModelNotFound,
    NoWorkers,
    RouterError,
    WaitTimeout,
)
from producer.http.ended import EndedWaiter, follow_stream
from producer.http.errors import (
    SSE_DONE,
    error_body,
    error_response,
    idempotency_key,
    json_response,
    read_json,
    record_error,
    sse_data,
    start_sse,
)
from producer.http.jobs_api import submit_jobs, without_tenant
from producer.producer import JobFailed, Producer

routes = web.RouteTableDef()
JOB_ID_HEADER = "x-llm-router-job-id"
WAIT_SLACK_S = 5.0  # beyond the job's deadline: the worker fails it with deadline_exceeded first


@dataclass(frozen=True, slots=True)
class Started:
    """An interactive job on its way: its id and tenant, when to stop waiting for it, and its end's
    event."""

    job_id: str
    wait_s: float
    ended: asyncio.Event
    tenant: str


@asynccontextmanager
async def start_interactive(
    request: web.Request, job: dict[str, Any], *, id_prefix: str = ""
) -> AsyncIterator[Started]:
    """Submit ``job`` (tenant from the key) to the interactive queue with end notification.

    Refuses with ``no_workers`` when no worker serves the interactive queue (the job would wait for
    nobody). The job's end is watched from before it is submitted until the context exits. A job
    that names no id gets ``id_prefix`` before its key or random id (``resp_``, ``msg_``: the ids
    the Responses and Messages SDKs expect).
    """
    settings: Settings = request.app["settings"]
    producer: Producer = request.app["producer"]
    waiter: EndedWaiter = request.app["ended"]
    if await producer.live_workers(settings.interactive_queue_name) == 0:
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
        result = (await submit_jobs(producer, settings, [job], request["tenant"], interactive=True))[0]
        if isinstance(result, RouterError):
            raise result
        deadline = job.get("deadline_s")
        wait_s = float(deadline if isinstance(deadline, int | float) else settings.interactive_deadline_s)
        yield Started(job_id, wait_s + WAIT_SLACK_S, event, tenant)


async def wait_answer(request: web.Request, started: Started) -> JobRecord:
    """The succeeded record of an interactive job; its error (502 for provider failures) otherwise."""
    waiter: EndedWaiter = request.app["ended"]
    producer: Producer = request.app["producer"]
    record = await waiter.wait(producer.scoped(started.job_id, started.tenant), started.ended, started.wait_s)
    if record.status != JobStatus.SUCCEEDED:
        raise record_error(record.error)
    return record


def completion_with_usage(record: JobRecord) -> dict[str, Any]:
    """The record's ``chat.completion`` with our ``usage.cost`` and ``usage.credits_remaining``."""
    response = dict(record.response or {})
    usage = dict(response.get("usage") or {})
    if record.usage is not None:
        usage["cost"] = record.usage.cost
        usage["credits_remaining"] = record.usage.credits_remaining
    else:
        usage.setdefault("credits_remaining", None)
    response["usage"] = usage
    return response


@routes.post("/v1/chat/completions")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    settings: Settings = request.app["settings"]
    body = await read_json(request, settings.server_max_body_bytes)
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    async with start_interactive(request, body) as started:
        headers = {JOB_ID_HEADER: started.job_id}
        if body.get("stream") is True:
            return await relay_stream(request, started, headers)
        record = await wait_answer(request, started)
    return json_response(completion_with_usage(record), headers=headers)


async def relay_stream(request: web.Request, started: Started, headers: dict[str, str]) -> web.StreamResponse:
    """The job's chunks as OpenAI SSE, then ``data: [DONE]``.

    The response starts with the first chunk, so a job that fails before any token still answers with
    its error status; a failure after tokens went out is an ``error`` data event, as OpenAI sends.
    """
    producer: Producer = request.app["producer"]
    response: web.StreamResponse | None = None
    usage_chunk: dict[str, Any] | None = None
    try:
        async for chunk in follow_stream(
            producer, started.job_id, tenant=started.tenant, timeout_s=started.wait_s
        ):
            if response is None:
                response = await start_sse(request, headers)
            if chunk.get("usage") and not chunk.get("choices"):
                usage_chunk = chunk  # sent last, with the cost, once the record has it
                continue
            await response.write(sse_data(chunk))
        if usage_chunk is not None and response is not None:
            record = await producer.get(started.job_id, tenant=started.tenant)
            usage_chunk["usage"] = completion_with_usage(record)["usage"]
            await response.write(sse_data(usage_chunk))
    except (JobFailed, WaitTimeout) as exc:
        error = record_error(exc.record.error) if isinstance(exc, JobFailed) else exc
        if response is None:
            failed = error_response(error)
            failed.headers.update(headers)
            return failed
        await response.write(sse_data(error_body(error)))
    if response is None:  # ended without a token (an empty answer): still a well-formed stream
        response = await start_sse(request, headers)
    await response.write(SSE_DONE)
    return response


def model_object(catalog: Catalog, model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": catalog.models[model_id].vendor}


@routes.get("/v1/models")
async def list_models(request: web.Request) -> web.Response:
    """The catalog's models in OpenAI's list format, then its routes (``auto``, ``code``, …), which a
    request may name as its model; aliases resolve on use but are not listed. A caller that sends
    its key Google's way (google-genai) gets Gemini's format."""
    from producer.http import gemini_api  # it imports this module

    if gemini_api.is_gemini_request(request):
        return await gemini_api.list_models(request)
    catalog: Catalog = request.app["catalog"]
    data = [model_object(catalog, m) for m in catalog.models]
    data += [route_object(name) for name in catalog.routes]
    return json_response({"object": "list", "data": data})


def route_object(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "llm-router-route"}


@routes.get("/v1/models/{model}")
async def get_model(request: web.Request) -> web.Response:
    from producer.http import gemini_api  # it imports this module

    if gemini_api.is_gemini_request(request):
        return await gemini_api.get_model(request)
    catalog: Catalog = request.app["catalog"]
    name = request.match_info["model"]
    model_id = catalog.resolve(name)
    if model_id is None:
        if name in catalog.routes:
            return json_response(route_object(name))
        raise ModelNotFound(f"Model '{name}' is not available", param="model")
    return json_response(model_object(catalog, model_id))
