"""The Gemini front: ``:generateContent``, ``:streamGenerateContent``, ``models.list`` and ``models.get``
under ``/v1beta`` (Google's default, what LiteLLM's ``gemini/`` provider calls) and ``/v1`` (what
google-genai calls on a custom host). ``GET /v1/models[/{model}]`` is the OpenAI front's, but a caller
sending its key Google's way is answered here (``is_gemini_request``).

It answers like Google's API, so Google's clients need nothing changed: the key may come as
``x-goog-api-key`` or ``?key=`` (besides ``Authorization: Bearer``) on every route; errors are
``{"error": {"code": 404, "message": ..., "status": "NOT_FOUND", "details": [ErrorInfo]}}`` (our
stable code is the ErrorInfo's ``reason``, its field in ``metadata.param``); models are listed as
Gemini ``Model`` objects.

A Gemini ``generateContent`` body becomes our chat job (``producer.gemini_native.gemini_to_chat``), runs
on any catalog model like a chat completion, and its record's ``chat.completion`` goes back out as a
``GenerateContentResponse`` (``chat_completion_to_gemini``). Streams follow Google's two wire shapes:
``?alt=sse`` gives SSE events, otherwise one JSON array written as it grows. Text streams chunk by
chunk; the last event carries what only the final record knows (function calls, finish reason,
token counts), built by the same translator.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from redis.exceptions import RedisError

from config.catalog import Catalog
from config.settings import Settings
from llm_router.contract import JobRecord
from llm_router.errors import InvalidRequest, ModelNotFound, ResourceNotFound, RouterError
from producer.gemini_native import chat_completion_to_gemini, gemini_to_chat
from producer.http.errors import ANSWER_STARTED, JOB_ID_HEADER, json_response, read_json, retry_after
from producer.http.interactive import follow, start_interactive, wait_answer
from producer.http.openai_api import stream_error
from producer.producer import Producer

routes = web.RouteTableDef()
PREFIXES = ("/v1beta", "/v1")
GENERATE_SUFFIXES = (":generateContent", ":streamGenerateContent")
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
ERROR_DOMAIN = "llm-router"

# HTTP status → google.rpc.Code name, as Google's API pairs them
GOOGLE_STATUS: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    402: "FAILED_PRECONDITION",  # Google's word for "billing is not set up"
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def is_gemini_path(path: str) -> bool:
    """A route of the Gemini front (its key headers and its error shape apply)."""
    return path.startswith("/v1beta/") or path == "/v1beta" or path.endswith(GENERATE_SUFFIXES)


def uses_google_key(request: web.Request) -> bool:
    """The caller sends its key Google's way (``x-goog-api-key`` or ``?key=``) and no other way."""
    if "Authorization" in request.headers or "x-api-key" in request.headers:
        return False
    return bool(request.headers.get("x-goog-api-key") or request.query.get("key"))


def is_gemini_request(request: web.Request) -> bool:
    """A request the Gemini front answers: its routes, and any ``/v1/`` request from a caller using
    Google's key (google-genai with a custom host calls ``/v1/...``: the model list, which the front
    answers, and methods it has not, which it refuses in Google's shape; the OpenAI front answers
    everyone else there)."""
    if is_gemini_path(request.path):
        return True
    return request.path.startswith("/v1/") and uses_google_key(request)


def _google_method(request: web.Request) -> bool:
    """A route of the Gemini front's own, or the model list google-genai reads under ``/v1``."""
    return is_gemini_path(request.path) or (request.method == "GET" and request.path.startswith("/v1/models"))


def gemini_error_body(exc: RouterError) -> dict[str, Any]:
    """Google's error object for ``exc``; our code and param ride in an ``ErrorInfo`` detail."""
    metadata = {"code": exc.code, **({"param": exc.param} if exc.param else {})}
    return {
        "error": {
            "code": exc.status,
            "message": exc.message,
            "status": GOOGLE_STATUS.get(exc.status, "UNKNOWN"),
            "details": [
                {
                    "@type": ERROR_INFO,
                    "reason": exc.code.upper(),
                    "domain": ERROR_DOMAIN,
                    "metadata": metadata,
                }
            ],
        }
    }


def gemini_error_response(exc: RouterError) -> web.Response:
    return json_response(gemini_error_body(exc), status=exc.status, headers=retry_after(exc))


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def gemini_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors on the Gemini front's routes in Google's shape (``app.front_errors`` calls it for those
    routes, inside the app's error middleware)."""
    try:
        if not _google_method(request):  # an OpenAI route, or a Gemini method the front has not
            raise ResourceNotFound(
                f"{request.method} {request.path} is not a method of this Gemini API: it answers "
                "generateContent, streamGenerateContent and the model list"
            )
        return await handler(request)
    except RouterError as exc:
        return gemini_error_response(exc)
    except web.HTTPNotFound:
        return gemini_error_response(ResourceNotFound(f"no route {request.method} {request.path}"))
    except web.HTTPMethodNotAllowed as exc:
        body = {
            "error": {
                "code": 405,
                "message": f"{request.method} is not allowed on {request.path}",
                "status": GOOGLE_STATUS[405],
            }
        }
        return json_response(body, status=405, headers={"Allow": ",".join(sorted(exc.allowed_methods))})


async def _job(request: web.Request, *, stream: bool) -> dict[str, Any]:
    settings: Settings = request.app["settings"]
    body = await read_json(request, settings.server_max_body_bytes)
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a GenerateContentRequest object")
    # Google's clients may prefix the path's model with "models/"; the path decides the model
    model = request.match_info["model"].removeprefix("models/")
    job = gemini_to_chat({**{k: v for k, v in body.items() if k != "model"}, "model": model})
    if stream:
        job["stream"] = True
    return job


async def generate_content(request: web.Request) -> web.Response:
    job = await _job(request, stream=False)
    async with start_interactive(request, job) as started:
        record = await wait_answer(request, started)
    return json_response(
        chat_completion_to_gemini(record.response or {}), headers={JOB_ID_HEADER: started.job_id}
    )


def chunk_to_gemini(chunk: dict[str, Any]) -> dict[str, Any] | None:
    """A ``chat.completion.chunk``'s text as a partial ``GenerateContentResponse`` (None if it has none)."""
    candidates = [
        {"content": {"role": "model", "parts": [{"text": text}]}, "index": choice.get("index") or 0}
        for choice in chunk.get("choices") or ()
        if (text := (choice.get("delta") or {}).get("content"))
    ]
    if not candidates:
        return None
    return {"candidates": candidates, "modelVersion": chunk.get("model"), "responseId": chunk.get("id")}


def final_event(record: JobRecord) -> dict[str, Any]:
    """The last streamed response: the full answer's translation less the text already streamed."""
    answer = chat_completion_to_gemini(record.response or {})
    for candidate in answer["candidates"]:
        parts = [p for p in candidate["content"]["parts"] if "text" not in p]
        candidate["content"]["parts"] = parts or [{"text": ""}]
    return answer


class _Writer:
    """Google's two stream shapes: SSE events (``alt=sse``) or one JSON array written piece by piece."""

    def __init__(self, request: web.Request, headers: dict[str, str]) -> None:
        self.request = request
        self.sse = request.query.get("alt") == "sse"
        self.headers = headers
        self.response: web.StreamResponse | None = None
        self._first = True

    async def write(self, obj: dict[str, Any]) -> None:
        if self.response is None:
            content_type = "text/event-stream" if self.sse else "application/json"
            self.response = web.StreamResponse(
                headers={"Content-Type": content_type, "Cache-Control": "no-cache", **self.headers}
            )
            await self.response.prepare(self.request)
            self.request[ANSWER_STARTED] = True
        if self.sse:
            await self.response.write(b"data: " + orjson.dumps(obj) + b"\r\n\r\n")
        else:
            await self.response.write((b"[" if self._first else b",\r\n") + orjson.dumps(obj))
        self._first = False

    async def close(self) -> web.StreamResponse:
        assert self.response is not None
        if not self.sse:
            await self.response.write(b"]")
        await self.response.write_eof()
        return self.response


async def stream_generate_content(request: web.Request) -> web.StreamResponse:
    job = await _job(request, stream=True)
    producer: Producer = request.app["producer"]
    async with start_interactive(request, job, notify=False) as started:  # it relays the stream
        writer = _Writer(request, {JOB_ID_HEADER: started.job_id})
        try:
            async for chunk in follow(request, started):
                piece = chunk_to_gemini(chunk)
                if piece is not None:
                    await writer.write(piece)
            record = await producer.get(started.job_id, tenant=started.tenant)
        except (RouterError, RedisError) as exc:  # the job failed, the wait gave up, Redis went away
            error = stream_error(exc)
            if writer.response is None:
                return gemini_error_response(error)  # nothing streamed yet: an error with its status
            await writer.write(gemini_error_body(error))
            return await writer.close()
        await writer.write(final_event(record))
        return await writer.close()


# -- models.list / models.get -----------------------------------------------------------------

_METHODS = ["generateContent", "streamGenerateContent"]


def gemini_model(catalog: Catalog, name: str) -> dict[str, Any]:
    """A catalog model (or route) as Gemini's ``Model`` resource."""
    spec = catalog.models.get(name)
    base: dict[str, Any] = {
        "name": f"models/{name}",
        "baseModelId": name,
        "version": "llm-router",
        "displayName": name,
        "supportedGenerationMethods": _METHODS,
    }
    if spec is None:  # a route: it resolves to a model per request
        return {**base, "description": "an llm-router route (resolves to a catalog model per request)"}
    caps = spec.capabilities
    return {
        **base,
        "description": f"{spec.vendor} model served through llm-router",
        "inputTokenLimit": caps.context_window,
        "outputTokenLimit": caps.max_output,
        "thinking": caps.reasoning,
    }


async def list_models(request: web.Request) -> web.Response:
    """``models.list``: every catalog model and route, paged by ``pageSize``/``pageToken`` as Google
    pages (the token is the offset of the next page)."""
    catalog: Catalog = request.app["catalog"]
    names = [*catalog.models, *catalog.routes]
    try:
        size = int(request.query.get("pageSize") or 1000)
        start = int(request.query.get("pageToken") or 0)
    except ValueError:
        raise InvalidRequest("pageSize and pageToken must be integers", param="pageSize") from None
    size = min(max(size, 1), 1000)
    page = names[start : start + size]
    body: dict[str, Any] = {"models": [gemini_model(catalog, n) for n in page]}
    if start + size < len(names):
        body["nextPageToken"] = str(start + size)
    return json_response(body)


async def get_model(request: web.Request) -> web.Response:
    """``models.get``: one model (an alias answers as the model it names)."""
    catalog: Catalog = request.app["catalog"]
    name = request.match_info["model"].removeprefix("models/")
    model_id = catalog.resolve(name)
    if model_id is None and name not in catalog.routes:  # routes are listed as models too
        raise ModelNotFound(f"Model '{name}' is not available", param="model")
    return json_response(gemini_model(catalog, model_id or name))


for _prefix in PREFIXES:
    routes.post(_prefix + "/models/{model}:generateContent")(generate_content)
    routes.post(_prefix + "/models/{model}:streamGenerateContent")(stream_generate_content)
routes.get("/v1beta/models")(list_models)
routes.get("/v1beta/models/{model}")(get_model)
