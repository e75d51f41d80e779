"""OpenAI's Files and Batch APIs, and the flex tier, as the simulator plays them.

Files: ``POST {prefix}files`` (multipart ``purpose`` + ``file``), ``GET files/{id}``, ``GET
files/{id}/content``. Batches: ``POST batches`` (``input_file_id``, ``endpoint``,
``completion_window``, ``metadata``), ``GET batches``, ``GET batches/{id}``, ``POST
batches/{id}/cancel``. A batch answers its lines with the same replies a synchronous call gets,
after a turnaround drawn from ``LaneSimConfig.turnaround_s``; some lines fail
(``item_failure``), some batches never complete and expire (``never_complete``, ``expiry_s``), some
creations fail (``create_failure``).
Time is evaluated lazily when a batch is read: nothing runs in the background.

The flex tier (``service_tier: "flex"`` on chat completions): slower (``flex_latency_ms``) and
sometimes refused with 429 ``resource unavailable`` (``flex_unavailable``).

Anthropic's Message Batches (``anthropic_batches``) and Gemini's batch mode (``gemini_batches``) run
on the same book, with the same controls.

``POST /_sim/lanes`` replaces the configuration; ``GET /_sim/lanes`` reads it and the counters.
"""

from __future__ import annotations

import random
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError

from llm_router.simulator.openai_reply import completion_body, plan_reply
from llm_router.simulator.openai_request import validate_chat_request
from llm_router.simulator.wire import Rejection

_JSON = "application/json"
_ANY_PREFIX = "/{prefix:(?:.*/)?}"
_ENDPOINTS = frozenset({"/v1/chat/completions"})
_WINDOWS = {"24h": 24 * 3600}


class LaneSimConfig(BaseModel):
    """How the flex tier and the batch API behave (times in seconds unless named ``_ms``)."""

    model_config = ConfigDict(extra="forbid")

    flex_latency_ms: tuple[float, float] = (0, 0)
    flex_unavailable: float = 0.0  # share of flex calls refused with 429 resource unavailable
    turnaround_s: tuple[float, float] = (1.0, 2.0)
    item_failure: float = 0.0  # share of a batch's lines answered with an error
    never_complete: float = 0.0  # share of batches that stay in progress until they expire
    expiry_s: float | None = None  # None: the completion window (24h)
    create_failure: float = 0.0  # share of batch creations answered 500
    seed: int | None = None


@dataclass(slots=True)
class _File:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int

    def obj(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


@dataclass(slots=True)
class _Batch:
    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None
    created_at: float
    done_at: float  # inf: never completes
    expires_at: float
    status: str = "in_progress"
    times: dict[str, int] = field(default_factory=dict)
    output_file_id: str | None = None
    error_file_id: str | None = None
    counts: dict[str, int] = field(default_factory=lambda: {"total": 0, "completed": 0, "failed": 0})
    errors: list[dict[str, Any]] | None = None
    model: str | None = None

    def obj(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": int(self.created_at),
            "in_progress_at": int(self.created_at),
            "expires_at": int(self.expires_at),
            "request_counts": dict(self.counts),
            "metadata": self.metadata,
            "model": self.model,
        }
        for name in (
            "finalizing_at",
            "completed_at",
            "failed_at",
            "expired_at",
            "cancelling_at",
            "cancelled_at",
        ):
            out[name] = self.times.get(name)
        return out


@dataclass(slots=True)
class LaneBook:
    """The simulator's files, batches, lane configuration and counters (one per app)."""

    config: LaneSimConfig = field(default_factory=LaneSimConfig)
    files: dict[str, _File] = field(default_factory=dict)
    batches: dict[str, _Batch] = field(default_factory=dict)
    # Anthropic's Message Batches and Gemini's batch jobs (``anthropic_batches``, ``gemini_batches``)
    others: dict[str, Any] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)
    counters: dict[str, int] = field(
        default_factory=lambda: {
            "batches_created": 0,
            "batches_cancelled": 0,
            "batch_lines": 0,
            "flex_calls": 0,
            "flex_429": 0,
        }
    )

    def configure(self, config: LaneSimConfig) -> None:
        self.config = config
        if config.seed is not None:
            self.rng.seed(config.seed)

    def flex_decision(self) -> tuple[float, bool]:
        """A flex call's extra latency (s) and whether it is refused (429 resource unavailable)."""
        self.counters["flex_calls"] += 1
        if self.rng.random() < self.config.flex_unavailable:
            self.counters["flex_429"] += 1
            return 0.0, True
        lo, hi = self.config.flex_latency_ms
        return self.rng.uniform(lo, hi) / 1000, False

    def schedule(self, now: float, window_s: float) -> tuple[float, float]:
        """A new batch's (completion time, expiry time): inf for one that never completes."""
        cfg = self.config
        lo, hi = cfg.turnaround_s
        never = self.rng.random() < cfg.never_complete
        expires = now + (cfg.expiry_s if cfg.expiry_s is not None else window_s)
        return (float("inf") if never else now + self.rng.uniform(lo, hi)), expires

    def created(self, requests: int) -> bool:
        """Counts a batch creation, unless it is one that fails (``create_failure``)."""
        if self.rng.random() < self.config.create_failure:
            return False
        self.counters["batches_created"] += 1
        self.counters["batch_lines"] += requests
        return True

    def item_fails(self) -> bool:
        return self.rng.random() < self.config.item_failure

    def add_file(self, filename: str, purpose: str, content: bytes) -> _File:
        f = _File(f"file-{secrets.token_hex(12)}", filename, purpose, content, int(time.time()))
        self.files[f.id] = f
        return f

    def settle(self, batch: _Batch, now: float) -> None:
        """Move a batch on to where its clock says it is now."""
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return
        if batch.status == "cancelling":
            self._finish(batch, now, "cancelled", unfinished="batch_cancelled")
        elif now >= batch.done_at and batch.done_at <= batch.expires_at:
            self._finish(batch, now, "completed")
        elif now >= batch.expires_at:
            self._finish(batch, now, "expired", unfinished="batch_expired")

    def _finish(self, batch: _Batch, now: float, status: str, unfinished: str | None = None) -> None:
        lines = self.files[batch.input_file_id].content.splitlines()
        out, err = [], []
        for raw in lines:
            if not raw.strip():
                continue
            line = orjson.loads(raw)
            custom_id = line["custom_id"]
            req_id = f"req_{secrets.token_hex(8)}"
            if unfinished is not None:
                err.append(_error_line(custom_id, None, {"code": unfinished, "message": f"{unfinished}"}))
                continue
            if self.rng.random() < self.config.item_failure:
                body = {
                    "error": {
                        "message": "The server had an error processing the request",
                        "type": "server_error",
                    }
                }
                err.append(
                    _error_line(custom_id, {"status_code": 500, "request_id": req_id, "body": body}, None)
                )
                continue
            try:
                reply = orjson.loads(completion_body(plan_reply(validate_chat_request(line["body"]))))
            except Rejection as exc:
                body = {
                    "error": {"message": exc.message or "invalid request", "type": "invalid_request_error"}
                }
                err.append(
                    _error_line(custom_id, {"status_code": 400, "request_id": req_id, "body": body}, None)
                )
                continue
            resp = {"status_code": 200, "request_id": req_id, "body": reply}
            out.append(
                {
                    "id": f"batch_req_{secrets.token_hex(8)}",
                    "custom_id": custom_id,
                    "response": resp,
                    "error": None,
                }
            )
        batch.counts = {"total": len(out) + len(err), "completed": len(out), "failed": len(err)}
        if out:
            batch.output_file_id = self.add_file(f"{batch.id}_output.jsonl", "batch_output", _jsonl(out)).id
        if err:
            batch.error_file_id = self.add_file(f"{batch.id}_error.jsonl", "batch_output", _jsonl(err)).id
        batch.status = status
        stamp = int(now)
        if status == "completed":
            batch.times.update(finalizing_at=stamp, completed_at=stamp)
        else:
            batch.times[f"{status}_at"] = stamp


def _error_line(
    custom_id: str, response: dict[str, Any] | None, error: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "id": f"batch_req_{secrets.token_hex(8)}",
        "custom_id": custom_id,
        "response": response,
        "error": error,
    }


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


LANES = web.AppKey("llm_router_simulator_lanes", LaneBook)


def add_lane_routes(app: web.Application, config: LaneSimConfig | None = None) -> None:
    """Mount the Files and Batch APIs and ``/_sim/lanes`` on ``app`` (``app.py`` mounts Anthropic's
    and Gemini's batches on the same book; their exact paths win over the any-prefix ones here)."""
    book = LaneBook()
    book.configure(config or LaneSimConfig())
    app[LANES] = book
    r = app.router
    r.add_post("/_sim/lanes", _configure)
    r.add_get("/_sim/lanes", _describe)
    r.add_post(_ANY_PREFIX + "files", _upload)
    r.add_get(_ANY_PREFIX + "files/{file_id}/content", _file_content)
    r.add_get(_ANY_PREFIX + "files/{file_id}", _file)
    r.add_post(_ANY_PREFIX + "batches", _create)
    r.add_get(_ANY_PREFIX + "batches", _list)
    r.add_get(_ANY_PREFIX + "batches/{batch_id}", _retrieve)
    r.add_post(_ANY_PREFIX + "batches/{batch_id}/cancel", _cancel)


def _error(status: int, message: str, param: str | None = None, code: str | None = None) -> web.Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.Response(status=status, body=orjson.dumps(body), content_type=_JSON)


def _ok(data: Any) -> web.Response:
    return web.Response(body=orjson.dumps(data), content_type=_JSON)


def _authorized(request: web.Request) -> bool:
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and bool(key.strip())


async def _configure(request: web.Request) -> web.Response:
    try:
        config = LaneSimConfig.model_validate_json(await request.read())
    except ValidationError as exc:
        return _error(400, str(exc))
    request.app[LANES].configure(config)
    return _ok(config.model_dump())


async def _describe(request: web.Request) -> web.Response:
    book = request.app[LANES]
    return _ok({"config": book.config.model_dump(), "counters": book.counters, "batches": len(book.batches)})


async def _upload(request: web.Request) -> web.Response:
    if not _authorized(request):
        return _error(401, "You didn't provide an API key.")
    form = await request.post()
    purpose, upload = form.get("purpose"), form.get("file")
    if not isinstance(purpose, str) or purpose not in (
        "batch",
        "user_data",
        "assistants",
        "fine-tune",
        "vision",
    ):
        return _error(400, "purpose is required (batch, ...)", param="purpose")
    if not isinstance(upload, web.FileField):
        return _error(400, "file is required", param="file")
    content = upload.file.read()
    if purpose == "batch":
        for n, raw in enumerate(content.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                return _error(400, f"line {n} of the file is not JSON", param="file")
            if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str):
                return _error(400, f"line {n} has no custom_id", param="file")
    f = request.app[LANES].add_file(upload.filename or "upload.jsonl", purpose, content)
    return _ok(f.obj())


async def _file(request: web.Request) -> web.Response:
    f = request.app[LANES].files.get(request.match_info["file_id"])
    if f is None or not _authorized(request):
        return _error(404, "No such File object", code="not_found")
    return _ok(f.obj())


async def _file_content(request: web.Request) -> web.Response:
    f = request.app[LANES].files.get(request.match_info["file_id"])
    if f is None or not _authorized(request):
        return _error(404, "No such File object", code="not_found")
    return web.Response(body=f.content, content_type="application/octet-stream")


async def _create(request: web.Request) -> web.Response:
    if not _authorized(request):
        return _error(401, "You didn't provide an API key.")
    book = request.app[LANES]
    if book.rng.random() < book.config.create_failure:
        return _error(500, "The server had an error while processing your request.")
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return _error(400, "We could not parse the JSON body of your request.")
    source = book.files.get(body.get("input_file_id") or "")
    if source is None or source.purpose != "batch":
        return _error(
            400, "input_file_id must name a file uploaded with purpose batch", param="input_file_id"
        )
    if body.get("endpoint") not in _ENDPOINTS:
        return _error(400, "endpoint must be /v1/chat/completions", param="endpoint")
    window = body.get("completion_window")
    if window not in _WINDOWS:
        return _error(400, "completion_window must be 24h", param="completion_window")
    models = set()
    for raw in source.content.splitlines():
        if raw.strip():
            line = orjson.loads(raw)
            if line.get("url") != body["endpoint"] or line.get("method") != "POST":
                return _error(400, "every line must POST to the batch's endpoint", param="input_file_id")
            models.add((line.get("body") or {}).get("model"))
    cfg, now = book.config, time.time()
    lo, hi = cfg.turnaround_s
    never = book.rng.random() < cfg.never_complete
    expires = now + (cfg.expiry_s if cfg.expiry_s is not None else _WINDOWS[window])
    batch = _Batch(
        id=f"batch_{secrets.token_hex(12)}",
        input_file_id=source.id,
        endpoint=body["endpoint"],
        completion_window=window,
        metadata=body.get("metadata"),
        created_at=now,
        done_at=float("inf") if never else now + book.rng.uniform(lo, hi),
        expires_at=expires,
        model=next(iter(models)) if len(models) == 1 else None,
    )
    batch.counts["total"] = sum(1 for raw in source.content.splitlines() if raw.strip())
    book.batches[batch.id] = batch
    book.counters["batches_created"] += 1
    book.counters["batch_lines"] += batch.counts["total"]
    return _ok(batch.obj())


async def _list(request: web.Request) -> web.Response:
    if not _authorized(request):
        return _error(401, "You didn't provide an API key.")
    book, now = request.app[LANES], time.time()
    data = []
    for batch in sorted(book.batches.values(), key=lambda b: b.created_at, reverse=True)[:100]:
        book.settle(batch, now)
        data.append(batch.obj())
    return _ok({"object": "list", "data": data, "has_more": False})


async def _retrieve(request: web.Request) -> web.Response:
    book = request.app[LANES]
    batch = book.batches.get(request.match_info["batch_id"])
    if batch is None or not _authorized(request):
        return _error(404, "No such Batch object", code="not_found")
    book.settle(batch, time.time())
    return _ok(batch.obj())


async def _cancel(request: web.Request) -> web.Response:
    book = request.app[LANES]
    batch = book.batches.get(request.match_info["batch_id"])
    if batch is None or not _authorized(request):
        return _error(404, "No such Batch object", code="not_found")
    book.settle(batch, time.time())
    if batch.status in ("validating", "in_progress", "finalizing"):
        batch.status = "cancelling"
        batch.times["cancelling_at"] = int(time.time())
        book.counters["batches_cancelled"] += 1
    elif batch.status != "cancelling":
        return _error(409, f"Cannot cancel a batch with status {batch.status}.")
    return _ok(batch.obj())
