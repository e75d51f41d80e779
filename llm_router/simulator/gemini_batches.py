"""Gemini's batch mode as the simulator plays it, on the lanes' book (``batches.LaneBook``:
turnaround, per-item failures, expiry, cancellation, creation failures).

``POST /v1beta/models/{model}:batchGenerateContent`` with inline requests (``batch.inputConfig
.requests.requests[{request, metadata}]``) answers a long-running operation named ``batches/{id}``
whose ``metadata`` is the batch (``state`` BATCH_STATE_PENDING | RUNNING | SUCCEEDED | FAILED |
CANCELLED | EXPIRED, ``batchStats``); ``GET /v1beta/batches/{id}`` reads it, with ``done`` and the
output (``inlinedResponses``, in request order, each a ``response`` or a ``google.rpc.Status``
``error``) once it succeeded; ``POST /v1beta/batches/{id}:cancel``; ``GET /v1beta/batches`` lists.
Each request is answered as ``generateContent`` would answer it (the same validation and reply).
Time is evaluated when a batch is read."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from llm_router.simulator.gemini_format import GEMINI, answer, error_body
from llm_router.simulator.gemini_request import validate_generate_request
from llm_router.simulator.state import STATE
from llm_router.simulator.wire import Rejection

if TYPE_CHECKING:
    from llm_router.simulator.batches import LaneBook

_JSON = "application/json"
_WINDOW_S = 48 * 3600  # a batch still pending or running after 48 hours expires
_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1beta."
_ENDED = frozenset(
    {"BATCH_STATE_SUCCEEDED", "BATCH_STATE_FAILED", "BATCH_STATE_CANCELLED", "BATCH_STATE_EXPIRED"}
)


def _stamp(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


@dataclass(slots=True)
class GeminiBatch:
    name: str
    model: str
    display_name: str
    requests: list[dict[str, Any]]
    credential: str
    created_at: float
    done_at: float
    expires_at: float
    state: str = "BATCH_STATE_PENDING"
    updated_at: float = 0.0
    ended_at: float | None = None
    responses: list[dict[str, Any]] = field(default_factory=list)

    def operation(self) -> dict[str, Any]:
        ok = sum(1 for r in self.responses if "response" in r)
        failed = len(self.responses) - ok
        stats = {
            "requestCount": str(len(self.requests)),
            "successfulRequestCount": str(ok),
            "failedRequestCount": str(failed),
            "pendingRequestCount": str(0 if self.ended_at is not None else len(self.requests)),
        }
        meta: dict[str, Any] = {
            "@type": _TYPE + "GenerateContentBatch",
            "model": f"models/{self.model}",
            "displayName": self.display_name,
            "createTime": _stamp(self.created_at),
            "updateTime": _stamp(self.updated_at or self.created_at),
            "batchStats": stats,
            "state": self.state,
            "name": self.name,
        }
        out: dict[str, Any] = {"name": self.name, "metadata": meta}
        if self.ended_at is not None:
            meta["endTime"] = _stamp(self.ended_at)
            out["done"] = True
        if self.state == "BATCH_STATE_SUCCEEDED":
            output = {"inlinedResponses": {"inlinedResponses": self.responses}}
            meta["output"] = output
            out["response"] = {"@type": _TYPE + "GenerateContentBatchOutput", **output}
        return out


def settle(book: LaneBook, batch: GeminiBatch, now: float, cache: Any) -> None:
    """Move a batch on to where its clock says it is now."""
    if batch.state in _ENDED:
        return
    if now >= batch.done_at and batch.done_at <= batch.expires_at:
        batch.responses = [_response(book, batch, r, cache) for r in batch.requests]
        _end(batch, now, "BATCH_STATE_SUCCEEDED")
    elif now >= batch.expires_at:
        _end(batch, now, "BATCH_STATE_EXPIRED")
    elif batch.state == "BATCH_STATE_PENDING":
        batch.state, batch.updated_at = "BATCH_STATE_RUNNING", now


def _end(batch: GeminiBatch, now: float, state: str) -> None:
    batch.state, batch.ended_at, batch.updated_at = state, now, now


def _response(book: LaneBook, batch: GeminiBatch, entry: dict[str, Any], cache: Any) -> dict[str, Any]:
    """One inline request's answer as ``generateContent`` gives it, or its error."""
    out: dict[str, Any] = {}
    if entry.get("metadata") is not None:
        out["metadata"] = entry["metadata"]
    if book.item_fails():
        return {**out, "error": {"code": 13, "message": "Internal error encountered."}}
    body = {k: v for k, v in (entry.get("request") or {}).items() if k != "model"}
    try:
        req = validate_generate_request(batch.model, body)
    except Rejection as exc:
        return {
            **out,
            "error": {"code": 3, "message": exc.message or "Request contains an invalid argument."},
        }
    return {**out, "response": answer(req, batch.credential, cache)}


def add_routes(app: web.Application, book: LaneBook) -> None:
    r = app.router
    r.add_post("/v1beta/models/{model}:batchGenerateContent", _handler(book, _create))
    r.add_get("/v1beta/batches", _handler(book, _list))
    r.add_post("/v1beta/batches/{batch_id}:cancel", _handler(book, _cancel))
    r.add_get("/v1beta/batches/{batch_id}", _handler(book, _get))


def _handler(book: LaneBook, fn: Any) -> Any:
    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            return await fn(book, request, GEMINI.authenticate(request))
        except Rejection as exc:
            return web.Response(status=exc.status, body=orjson.dumps(error_body(exc)), content_type=_JSON)

    return handle


def _page_size(raw: str) -> int:
    if not raw.isdigit():
        raise _invalid(f"Invalid value at 'page_size' (TYPE_INT32), \"{raw}\"")
    return int(raw)


def _ok(data: Any) -> web.Response:
    return web.Response(body=orjson.dumps(data), content_type=_JSON)


def _batches(book: LaneBook) -> dict[str, GeminiBatch]:
    return book.others.setdefault("gemini", {})  # type: ignore[no-any-return]


def _find(book: LaneBook, request: web.Request, key: str) -> GeminiBatch:
    name = f"batches/{request.match_info['batch_id']}"
    batch = _batches(book).get(name)
    if batch is None or batch.credential != key:
        raise Rejection(404, f"Requested entity was not found: {name}")
    settle(book, batch, time.time(), request.app[STATE].prompt_cache)
    return batch


def _invalid(message: str) -> Rejection:
    return Rejection(400, message)


async def _create(book: LaneBook, request: web.Request, key: str) -> web.Response:
    model = request.match_info["model"].removeprefix("models/")
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise _invalid(f"Invalid JSON payload received. {exc}") from None
    batch = body.get("batch") if isinstance(body, dict) else None
    if not isinstance(batch, dict):
        raise _invalid("* BatchGenerateContentRequest.batch: batch is not specified")
    source = ((batch.get("inputConfig") or {}).get("requests") or {}).get("requests")
    if not isinstance(source, list) or not source:
        raise _invalid(
            "* GenerateContentBatch.input_config: requests are not specified (inline requests only)"
        )
    for i, entry in enumerate(source):
        if not isinstance(entry, dict) or not isinstance(entry.get("request"), dict):
            raise _invalid(f"* input_config.requests.requests[{i}].request: request is not specified")
        if entry.get("metadata") is not None and not isinstance(entry["metadata"], dict):
            raise _invalid(f"Invalid value at 'input_config.requests.requests[{i}].metadata'")
    if not book.created(len(source)):
        raise Rejection(500, "An internal error has occurred.")
    now = time.time()
    done_at, expires_at = book.schedule(now, _WINDOW_S)
    created = GeminiBatch(
        name=f"batches/{secrets.token_hex(12)}",
        model=model,
        display_name=str(batch.get("displayName") or ""),
        requests=source,
        credential=key,
        created_at=now,
        done_at=done_at,
        expires_at=expires_at,
    )
    _batches(book)[created.name] = created
    return _ok(created.operation())


async def _get(book: LaneBook, request: web.Request, key: str) -> web.Response:
    return _ok(_find(book, request, key).operation())


async def _cancel(book: LaneBook, request: web.Request, key: str) -> web.Response:
    batch = _find(book, request, key)
    if batch.state not in _ENDED:
        _end(batch, time.time(), "BATCH_STATE_CANCELLED")
        book.counters["batches_cancelled"] += 1
    return _ok({})


async def _list(book: LaneBook, request: web.Request, key: str) -> web.Response:
    now, cache = time.time(), request.app[STATE].prompt_cache
    mine = sorted((b for b in _batches(book).values() if b.credential == key), key=lambda b: -b.created_at)
    ops = []
    for batch in mine[: _page_size(request.query.get("pageSize", "50"))]:
        settle(book, batch, now, cache)
        ops.append(batch.operation())
    return _ok({"operations": ops})
