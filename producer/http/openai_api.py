"""The OpenAI-compatible front: ``POST /v1/chat/completions`` and ``GET /v1/models``.

A chat completion is a job on the interactive queue (served before bulk) like any other; the handler
waits for its end through the process's one pub/sub subscription (``ended``), never by polling, and
answers with the record's ``chat.completion`` plus ``usage.cost`` and ``usage.credits_remaining``.
``stream: true`` relays the job's stream as OpenAI SSE. Submitting, naming the job in every answer and
cancelling the job of a client that leaves are ``interactive``'s, shared with the other fronts.
"""

from __future__ import annotations

from typing import Any

import orjson
import structlog
from aiohttp import web
from redis.exceptions import RedisError

from config.catalog import Catalog
from config.cost import nanos_to_usd
from config.settings import Settings
from llm_router.contract import JobRecord, JobStatus
from llm_router.errors import InvalidRequest, ModelNotFound, RouterError
from llm_router.store import ended_field
from producer.http.ended import is_outage, unavailable
from producer.http.errors import (
    JOB_ID_HEADER,
    SSE_DONE,
    error_body,
    error_response,
    json_response,
    read_json,
    record_error,
    sse_data,
    start_sse,
)

# the interactive helpers lived here first; fronts may import them from either module
from producer.http.interactive import Started, follow, start_interactive, wait_answer, wait_ended
from producer.producer import JobFailed, Producer

__all__ = ["JOB_ID_HEADER", "Started", "follow", "start_interactive", "wait_answer"]

routes = web.RouteTableDef()
log = structlog.get_logger("producer.http")


def completion_with_usage(record: JobRecord) -> dict[str, Any]:
    """The record's ``chat.completion`` with our ``usage.cost`` and ``usage.credits_remaining``."""
    usage = record.usage
    paid = None if usage is None else (usage.cost, usage.credits_remaining)
    return _with_usage(record.response or {}, paid)


def completion_of_fields(fields: list[bytes]) -> dict[str, Any] | None:
    """``completion_with_usage`` of a succeeded job's end as its message brought the record
    (``Ended.fields``), from the two or three fields it needs: decoding the whole record (its
    attempts, its request, the model's validation) was most of the server's work on a request's way
    back, ten times more on a server that had been idle. ``None`` for any other end."""
    if ended_field(fields, b"status") != b"succeeded":
        return None
    response = ended_field(fields, b"response")
    if response is None:
        return None
    raw_usage, credits = ended_field(fields, b"usage"), ended_field(fields, b"credits_remaining")
    usage: dict[str, Any] | None = orjson.loads(raw_usage) if raw_usage else None
    if credits is not None:  # as the record reads it (``store.decode_record``)
        usage = {**(usage or {}), "credits_remaining": nanos_to_usd(int(credits))}
    paid = None
    if usage is not None:  # numbers as the record's model makes them: floats
        left = usage.get("credits_remaining")
        paid = (float(usage.get("cost", 0.0)), None if left is None else float(left))
    return _with_usage(orjson.loads(response) or {}, paid)


def _with_usage(response: dict[str, Any], paid: tuple[float, float | None] | None) -> dict[str, Any]:
    response = dict(response)
    usage = dict(response.get("usage") or {})
    if paid is not None:
        usage["cost"], usage["credits_remaining"] = paid
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
    stream = body.get("stream") is True
    async with start_interactive(request, body, notify=not stream) as started:
        headers = {JOB_ID_HEADER: started.job_id}
        if stream:
            return await relay_stream(request, started, headers)
        ended = await wait_ended(request, started)
        answer = completion_of_fields(ended) if isinstance(ended, list) else None
        if answer is None:  # read, or not succeeded: from the record (its error, for a failure)
            record = ended if isinstance(ended, JobRecord) else await wait_answer(request, started)
            if record.status != JobStatus.SUCCEEDED:
                raise record_error(record.error)
            answer = completion_with_usage(record)
    return json_response(answer, headers=headers)


async def relay_stream(request: web.Request, started: Started, headers: dict[str, str]) -> web.StreamResponse:
    """The job's chunks as OpenAI SSE, then ``data: [DONE]``.

    The response starts with the first chunk, so a job that fails before any token still answers with
    its error status; a failure after tokens went out is an ``error`` data event, as OpenAI sends.
    """
    producer: Producer = request.app["producer"]
    response: web.StreamResponse | None = None
    usage_chunk: dict[str, Any] | None = None
    try:
        async for chunk in follow(request, started):
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
    except (RouterError, RedisError) as exc:  # the job failed, the wait gave up, Redis went away
        error = stream_error(exc)
        if response is None:
            failed = error_response(error)
            failed.headers.update(headers)
            return failed
        await response.write(sse_data(error_body(error)))
    if response is None:  # ended without a token (an empty answer): still a well-formed stream
        response = await start_sse(request, headers)
    await response.write(SSE_DONE)
    return response


def stream_error(exc: RouterError | RedisError) -> RouterError:
    """What a relay tells its client when following the job stopped: the job's error, or why the
    following stopped (a wait timeout, Redis unavailable)."""
    if isinstance(exc, JobFailed):
        return record_error(exc.record.error)
    if isinstance(exc, RouterError):
        return exc
    if is_outage(exc):
        return unavailable(exc)
    log.error("relay failed", error=repr(exc))
    return RouterError("internal server error")


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
