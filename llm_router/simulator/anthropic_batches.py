"""Anthropic's Message Batches as the simulator plays them, on the lanes' book (``batches.LaneBook``:
turnaround, per-item failures, expiry, cancellation, creation failures).

``POST /v1/messages/batches`` (``requests[{custom_id, params}]``), ``GET /v1/messages/batches``,
``GET /v1/messages/batches/{id}`` (``processing_status`` in_progress | canceling | ended,
``request_counts``, ``results_url`` once ended), ``POST .../{id}/cancel`` and ``GET
.../{id}/results`` (JSONL of ``{custom_id, result}``, ``result.type`` succeeded | errored | canceled
| expired). Each request is answered as ``/v1/messages`` would answer it (the same validation and
reply, the prompt cache of the batch's key); ``params`` are checked when the batch runs, so a bad
one is an ``errored`` result, not a refused batch. Time is evaluated when a batch is read."""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from llm_router.simulator.anthropic_format import (
    NO_SAMPLING_VERSION,
    _message_json,
    credential,
    error_body,
    plan,
)
from llm_router.simulator.anthropic_request import validate_messages_request
from llm_router.simulator.state import STATE
from llm_router.simulator.wire import Rejection

if TYPE_CHECKING:
    from llm_router.simulator.batches import LaneBook

_JSON = "application/json"
_ROOT = "/v1/messages/batches"
_WINDOW_S = 24 * 3600  # a batch expires 24 hours after creation
_MAX_REQUESTS = 100_000
_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def _stamp(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


@dataclass(slots=True)
class MessageBatch:
    id: str
    requests: list[dict[str, Any]]
    credential: str
    sampling: bool  # the anthropic-version it was created with still takes sampling parameters
    created_at: float
    done_at: float
    expires_at: float
    cancel_at: float | None = None
    ended_at: float | None = None
    results: list[dict[str, Any]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        if self.ended_at is None:
            out["processing"] = len(self.requests)
        for r in self.results:
            out[r["result"]["type"]] += 1
        return out

    def obj(self, origin: str) -> dict[str, Any]:
        if self.ended_at is not None:
            status = "ended"
        else:
            status = "canceling" if self.cancel_at is not None else "in_progress"
        return {
            "id": self.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": self.counts(),
            "ended_at": _stamp(self.ended_at),
            "created_at": _stamp(self.created_at),
            "expires_at": _stamp(self.expires_at),
            "archived_at": None,
            "cancel_initiated_at": _stamp(self.cancel_at),
            "results_url": f"{origin}{_ROOT}/{self.id}/results" if self.ended_at is not None else None,
        }


def settle(book: LaneBook, batch: MessageBatch, now: float, cache: Any) -> None:
    """Move a batch on to where its clock says it is now."""
    if batch.ended_at is not None:
        return
    if batch.cancel_at is not None:
        _end(batch, now, lambda r: {"type": "canceled"})
    elif now >= batch.done_at and batch.done_at <= batch.expires_at:
        _end(batch, now, lambda r: _result(book, r["params"], batch, cache))
    elif now >= batch.expires_at:
        _end(batch, now, lambda r: {"type": "expired"})


def _end(batch: MessageBatch, now: float, outcome: Any) -> None:
    batch.results = [{"custom_id": r["custom_id"], "result": outcome(r)} for r in batch.requests]
    batch.ended_at = now


def _errored(kind: str, message: str) -> dict[str, Any]:
    error = {
        "type": "error",
        "error": {"type": kind, "message": message},
        "request_id": f"req_{secrets.token_hex(12)}",
    }
    return {"type": "errored", "error": error}


def _result(book: LaneBook, params: Any, batch: MessageBatch, cache: Any) -> dict[str, Any]:
    """One request's result: what ``/v1/messages`` answers, or its error."""
    if book.item_fails():
        return _errored("api_error", "Internal server error")
    try:
        req = validate_messages_request(params, sampling=batch.sampling)
        if req.stream:
            raise Rejection(400, "params.stream: streaming is not supported in a message batch")
    except Rejection as exc:
        return _errored("invalid_request_error", exc.message or "Invalid request.")
    return {"type": "succeeded", "message": _message_json(plan(req, batch.credential, cache))}


def add_routes(app: web.Application, book: LaneBook) -> None:
    r = app.router
    r.add_post(_ROOT, _handler(book, _create))
    r.add_get(_ROOT, _handler(book, _list))
    r.add_get(_ROOT + "/{batch_id}", _handler(book, _retrieve))
    r.add_post(_ROOT + "/{batch_id}/cancel", _handler(book, _cancel))
    r.add_get(_ROOT + "/{batch_id}/results", _handler(book, _results))


def _handler(book: LaneBook, fn: Any) -> Any:
    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            key = credential(request)
            if not request.headers.get("anthropic-version"):
                raise Rejection(400, "anthropic-version: header is required")
            return await fn(book, request, key)
        except Rejection as exc:
            body = orjson.dumps(error_body(exc))
            return web.Response(status=exc.status, body=body, content_type=_JSON)

    return handle


def _count(raw: str, name: str) -> int:
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise Rejection(400, f"{name}: must be an integer from 1 to 1000")
    return int(raw)


def _ok(data: Any) -> web.Response:
    return web.Response(body=orjson.dumps(data), content_type=_JSON)


def _batches(book: LaneBook) -> dict[str, MessageBatch]:
    return book.others.setdefault("anthropic", {})  # type: ignore[no-any-return]


def _find(book: LaneBook, request: web.Request, key: str) -> MessageBatch:
    batch = _batches(book).get(request.match_info["batch_id"])
    if batch is None or batch.credential != key:
        raise Rejection(404, f"message_batch {request.match_info['batch_id']} not found")
    settle(book, batch, time.time(), request.app[STATE].prompt_cache)
    return batch


async def _create(book: LaneBook, request: web.Request, key: str) -> web.Response:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise Rejection(400, "There was an error parsing the body of your request as JSON.") from None
    requests = body.get("requests") if isinstance(body, dict) else None
    if not isinstance(requests, list) or not 1 <= len(requests) <= _MAX_REQUESTS:
        raise Rejection(400, f"requests: must be a list of 1 to {_MAX_REQUESTS} requests")
    seen = set()
    for i, entry in enumerate(requests):
        if not isinstance(entry, dict) or set(entry) - {"custom_id", "params"}:
            raise Rejection(400, f"requests.{i}: must be an object with custom_id and params")
        custom_id = entry.get("custom_id")
        if not isinstance(custom_id, str) or not _CUSTOM_ID.match(custom_id):
            raise Rejection(400, f"requests.{i}.custom_id: must match ^[a-zA-Z0-9_-]{{1,64}}$")
        if custom_id in seen:
            raise Rejection(400, f"requests.{i}.custom_id: {custom_id} is not unique in the batch")
        seen.add(custom_id)
        if not isinstance(entry.get("params"), dict):
            raise Rejection(400, f"requests.{i}.params: Field required")
    if not book.created(len(requests)):
        raise Rejection(500, "Internal server error")
    now = time.time()
    done_at, expires_at = book.schedule(now, _WINDOW_S)
    sampling = request.headers["anthropic-version"] < NO_SAMPLING_VERSION
    batch_id = f"msgbatch_{secrets.token_hex(12)}"
    batch = MessageBatch(batch_id, requests, key, sampling, now, done_at, expires_at)
    _batches(book)[batch.id] = batch
    return _ok(batch.obj(str(request.url.origin())))


async def _list(book: LaneBook, request: web.Request, key: str) -> web.Response:
    now, cache = time.time(), request.app[STATE].prompt_cache
    mine = [b for b in _batches(book).values() if b.credential == key]
    data = []
    for batch in sorted(mine, key=lambda b: b.created_at, reverse=True)[
        : _count(request.query.get("limit", "20"), "limit")
    ]:
        settle(book, batch, now, cache)
        data.append(batch.obj(str(request.url.origin())))
    first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
    return _ok({"data": data, "has_more": False, "first_id": first, "last_id": last})


async def _retrieve(book: LaneBook, request: web.Request, key: str) -> web.Response:
    return _ok(_find(book, request, key).obj(str(request.url.origin())))


async def _cancel(book: LaneBook, request: web.Request, key: str) -> web.Response:
    batch = _find(book, request, key)
    if batch.ended_at is None and batch.cancel_at is None:
        batch.cancel_at = time.time()
        book.counters["batches_cancelled"] += 1
    return _ok(batch.obj(str(request.url.origin())))


async def _results(book: LaneBook, request: web.Request, key: str) -> web.Response:
    batch = _find(book, request, key)
    if batch.ended_at is None:
        raise Rejection(400, f"Batch {batch.id} has not finished processing; its results are not ready.")
    content = b"".join(orjson.dumps(r) + b"\n" for r in batch.results)
    return web.Response(body=content, content_type="application/binary")
