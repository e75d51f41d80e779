"""The edges of every handler: request bodies in (bounded in size and in time), error responses
and JSON out.

Errors are the foundation's error object in the product's shape, ``{"error": {"code", "message",
"type", "param"}}`` with ``exc.status`` and, when the error says when to come back
(``too_many_queued``, ``redis_unavailable``), ``Retry-After`` in whole seconds. Once a request has
a job (an interactive call, after its submit), every answer carries the job's id in
``x-llm-router-job-id``: a handler records it with ``name_job`` and the app's error middleware adds
it to whatever answer goes out, errors included.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from typing import Any

import orjson
from aiohttp import web
from aiohttp.streams import StreamReader

from llm_router.contract import JOB_ID_RE
from llm_router.errors import InvalidRequest, PayloadTooLarge, RequestTimeout, RouterError
from producer.http.limits import LARGE, LIMITS

JSON = "application/json"
JOB_ID_HEADER = "x-llm-router-job-id"
JOB_ID_KEY = "llm_router.job_id"  # request key: the job this request answers for


def name_job(request: web.Request, job_id: str | None) -> None:
    """Every answer to ``request`` from now on names ``job_id`` (``None``: none does)."""
    if job_id is None:
        request.pop(JOB_ID_KEY, None)
    else:
        request[JOB_ID_KEY] = job_id


def with_job_id(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """``response`` with the request's job id header, when it has a job and nothing was sent yet."""
    job_id = request.get(JOB_ID_KEY)
    if job_id is not None and not response.prepared and JOB_ID_HEADER not in response.headers:
        response.headers[JOB_ID_HEADER] = job_id
    return response


def error_body(exc: RouterError) -> dict[str, Any]:
    return {"error": {"code": exc.code, "message": exc.message, "type": exc.type, "param": exc.param}}


def error_response(exc: RouterError) -> web.Response:
    """The HTTP answer for ``exc``: its status, the error object, ``Retry-After`` when known."""
    return web.Response(
        status=exc.status, body=orjson.dumps(error_body(exc)), content_type=JSON, headers=retry_after(exc)
    )


def retry_after(exc: RouterError) -> dict[str, str]:
    """``Retry-After`` (whole seconds, at least 1) when the error says when to come back."""
    if exc.retry_after is None:
        return {}
    return {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}


def record_error(error: dict[str, Any] | None) -> RouterError:
    """A failed job's error object (from its record) as the error to answer with."""
    return RouterError.from_dict(error or {"code": "internal_error", "message": "the job failed"})


def json_response(obj: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """orjson-encoded JSON (aiohttp's json_response goes through the slower stdlib encoder)."""
    return web.Response(status=status, body=orjson.dumps(obj), content_type=JSON, headers=headers)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, refused with ``payload_too_large`` as soon as it passes ``limit`` bytes,
    and with ``request_timeout`` when it has not arrived whole within ``server_body_timeout_s``.

    A declared ``Content-Length`` over the limit is refused before reading anything; a chunked body
    is read only up to the limit, never whole. A body over ``server_large_body_bytes`` is read while
    its tenant holds one of its large-body slots (``limits.TenantLimits.large``).
    """
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the body is {request.content_length} bytes; the limit is {limit} bytes")
    settings = request.app["settings"]
    large = settings.server_large_body_bytes
    if request.content_length is not None and request.content_length > large and "tenant" in request:
        async with request.app[LIMITS].large(request["tenant"]):
            return await _read(request, limit, settings.server_body_timeout_s)
    return await _read(request, limit, settings.server_body_timeout_s)


async def _read(request: web.Request, limit: int, timeout_s: float) -> bytes:
    content = request.content
    if content.is_eof() and content.exception() is None:
        # the whole body came with the request's head (a chat request, most often): taken as it is,
        # without a timer and an iteration that cost a cold request a tenth of a millisecond
        body = content.read_nowait()
    else:
        body = await _read_arriving(content, limit, timeout_s)
    if len(body) > limit:
        raise PayloadTooLarge(f"the body is over the limit of {limit} bytes")
    if len(body) > request.app["settings"].server_large_body_bytes:
        request[LARGE] = True
    return body


async def _read_arriving(content: StreamReader, limit: int, timeout_s: float) -> bytes:
    """A body still arriving, read as it comes: no more than just past ``limit``, within ``timeout_s``."""
    buf = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in content.iter_any():
                buf += chunk
                if len(buf) > limit:
                    break  # not a byte more is read: the caller refuses it
    except TimeoutError:
        raise RequestTimeout(
            f"the request body did not arrive within {timeout_s:g} s ({len(buf)} bytes came)"
        ) from None
    return bytes(buf)


async def read_json(request: web.Request, limit: int) -> Any:
    """The body as JSON (any JSON value; callers check its shape), bounded like ``read_body``; a large
    body is parsed off the event loop, in its tenant's large-body slot."""
    body = await read_body(request, limit)
    if not body.strip():
        raise InvalidRequest("the request body is empty; send a JSON object")
    try:
        if request.get(LARGE) and "tenant" in request:
            limits = request.app[LIMITS]
            async with limits.large(request["tenant"]):
                return await limits.off_loop(orjson.loads, body)
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"malformed JSON: {exc}") from None


IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_KEY_AS_ID = 100  # room for "-<line>" after it in a bulk request


def idempotency_key(request: web.Request) -> str | None:
    """The job id an ``Idempotency-Key`` header names in the caller's tenant, or ``None``.

    A key that is a valid job id is used as it is, so the client can read the job by it; any other
    key names the job by its digest.
    """
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if not key:
        return None
    if len(key) <= MAX_KEY_AS_ID and JOB_ID_RE.fullmatch(key):
        return key
    # a header's bytes that are not UTF-8 come as surrogates (aiohttp): hashed as they came
    return "key-" + hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()


# set on a request once its answer has begun (its headers are out): a client that leaves after this
# has dropped its answer, not timed out waiting for one (``interactive.GoneWatch``)
ANSWER_STARTED = "answer_started"


async def start_sse(request: web.Request, headers: dict[str, str] | None = None) -> web.StreamResponse:
    """An open server-sent-events response (proxies told not to buffer it)."""
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            **(headers or {}),
        }
    )
    await response.prepare(request)
    request[ANSWER_STARTED] = True
    return response


def sse_data(obj: Any, event: str | None = None) -> bytes:
    """One SSE event carrying ``obj`` as JSON."""
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(obj) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"
