"""The Anthropic Messages front: ``POST /v1/messages``.

A message is a chat job (``producer.messages_format`` translates the body; the record renders back
through ``producer.messages_answer``) whose id is ``msg_…``, run on the interactive queue like a
chat completion (``start_interactive``: ``Idempotency-Key``, credits, end notification), on any
catalog model. The key comes as ``x-api-key`` (Anthropic's clients) or ``Authorization: Bearer``;
``anthropic-version`` and ``anthropic-beta`` are accepted and not needed. Every answer on this path
is Anthropic's: errors (authentication and body limits included: ``anthropic_errors``) are
``{"type": "error", "error": {"type", "message"}}`` with Anthropic's status codes, our stable
``code`` and ``param`` beside them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator

import structlog
from aiohttp import web

from config.settings import Settings
from llm_router.errors import InvalidRequest, PayloadTooLarge, ResourceNotFound, RouterError
from producer.http.errors import JOB_ID_HEADER, json_response, read_json, retry_after
from producer.http.front_stream import relay_events
from producer.http.interactive import start_interactive, wait_answer
from producer.messages_answer import MessageEvents, anthropic_error, message_object
from producer.messages_format import MESSAGE_PREFIX, messages_param, messages_to_chat

routes = web.RouteTableDef()
log = structlog.get_logger("producer.http")
PATH = "/v1/messages"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_messages_path(path: str) -> bool:
    return path == PATH or path.startswith(PATH + "/")


def anthropic_error_response(exc: RouterError) -> web.Response:
    status, body = anthropic_error(exc)
    return json_response(body, status=status, headers=retry_after(exc))


async def anthropic_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors on the Messages path in Anthropic's shape (``app.front_errors`` calls it for that path,
    inside the app's error middleware and outside authentication and the body limit, which it
    applies itself so a refusal is Anthropic's too)."""
    try:
        limit = request.app["settings"].server_max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            response = anthropic_error_response(
                PayloadTooLarge(f"the body is {request.content_length} bytes; the limit is {limit} bytes")
            )
            response.force_close()  # the unread body must not be parsed as the next request
            return response
        return await handler(request)
    except RouterError as exc:
        return anthropic_error_response(exc)
    except web.HTTPNotFound:
        return anthropic_error_response(ResourceNotFound(f"no route {request.method} {request.path}"))
    except web.HTTPMethodNotAllowed as exc:
        response = anthropic_error_response(
            RouterError(f"{request.method} is not allowed on {request.path}", code="method_not_allowed")
        )
        response.headers["Allow"] = ",".join(sorted(exc.allowed_methods))
        return response
    except (ConnectionResetError, asyncio.CancelledError):
        raise  # the client went away mid-answer: nothing to answer, nothing to log
    except Exception:
        log.exception("unhandled error", method=request.method, path=request.path)
        return anthropic_error_response(RouterError("internal server error"))


@contextlib.contextmanager
def messages_names() -> Iterator[None]:
    """Errors about the chat job name the Messages fields the client sent."""
    try:
        yield
    except RouterError as exc:
        if exc.param:
            exc.param = messages_param(exc.param)
        raise


@routes.post(PATH)
async def create_message(request: web.Request) -> web.StreamResponse:
    settings: Settings = request.app["settings"]
    body = await read_json(request, settings.server_max_body_bytes)
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    with messages_names():
        job = messages_to_chat(body)
        async with start_interactive(request, job, id_prefix=MESSAGE_PREFIX) as started:
            headers = {JOB_ID_HEADER: started.job_id, "request-id": started.job_id}
            if job.get("stream") is True:
                events = MessageEvents(started.job_id, str(job["model"]))
                return await relay_events(request, started, events, headers)
            record = await wait_answer(request, started)
    return json_response(message_object(record), headers=headers)
