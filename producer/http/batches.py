"""OpenAI's Batch API over the job queue: ``/v1/batches`` and, for its files, ``/v1/files``.

The shapes are OpenAI's, so the official SDK works unchanged (``files.create`` → ``batches.create`` →
``batches.retrieve`` → ``files.content``). Unlike OpenAI's, a batch here runs on any provider of the
catalog with fallback, and each of its lines is also a job (``GET /v1/jobs/{batch_id}-{line index}``
shows its record, attempts, lane and cost). Lines run on lane ``auto`` (``batch_runner``): in the
providers' own batches at their batch price when the window leaves room, back on `now` before the
window ends when a provider batch is late; the files and counts stay OpenAI's. A line the producer
refuses goes to the error file; it does not fail the batch. A batch, like its files, belongs to the
API key's tenant: another tenant's id answers 404, as an unknown one does. ``batch_runner`` holds
the state and the work; ``setup(app)`` adds the routes and the tracker task that advances batches in
the background.

``POST /v1/batches`` honours an ``Idempotency-Key`` header: the same key (per tenant) names the same
batch, so a retried creation returns it instead of making another one. It also takes ``webhook``
(our extension: ``{"url": ...}``, or ``false`` for none): the batch's end is delivered there as a
signed ``batch.completed`` / ``failed`` / ``expired`` / ``cancelled`` event (``llm_router.webhooks``);
without it, to the tenant's default endpoint if it has one. Its lines report nothing themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import structlog
from aiohttp import web

from llm_router.errors import IdempotencyConflict, InvalidRequest, RouterError
from llm_router.webhooks import spec as webhook_spec
from producer.http.batch_runner import COMPLETION_WINDOWS, ENDPOINTS, WINDOW_LANES, BatchRunner, batch_object
from producer.http.errors import json_response, read_json
from producer.http.files import FILES, FileStore, list_object, setup_files

log = structlog.get_logger("producer.http.batches")

RUNNER = web.AppKey("llm_router.batch_runner", BatchRunner)
TICK_S = 0.5
SWEEP_EVERY_S = 60.0  # how often disk files whose metadata expired are removed
MAX_CREATE_BODY = 64 * 1024
METADATA_KEYS = 16


def check_create(body: Any) -> tuple[str, str, str, dict[str, str] | None]:
    """The fields of a ``POST /v1/batches`` body, checked: input file id, endpoint, window, metadata."""
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    input_file_id = body.get("input_file_id")
    if not isinstance(input_file_id, str) or not input_file_id:
        raise InvalidRequest("Missing required parameter: 'input_file_id'", param="input_file_id")
    endpoint = body.get("endpoint")
    if endpoint not in ENDPOINTS:
        raise InvalidRequest(
            f"endpoint must be one of {sorted(ENDPOINTS)}; got {endpoint!r}", param="endpoint"
        )
    window = body.get("completion_window")
    if window not in COMPLETION_WINDOWS:
        raise InvalidRequest(
            f"completion_window must be one of {sorted(COMPLETION_WINDOWS)}; got {window!r}",
            param="completion_window",
        )
    metadata = body.get("metadata")
    if metadata is not None and not (
        isinstance(metadata, dict)
        and len(metadata) <= METADATA_KEYS
        and all(isinstance(k, str) and len(k) <= 64 for k in metadata)
        and all(isinstance(v, str) and len(v) <= 512 for v in metadata.values())
    ):
        raise InvalidRequest(
            f"metadata holds at most {METADATA_KEYS} string values (keys ≤ 64, values ≤ 512 characters)",
            param="metadata",
        )
    return input_file_id, endpoint, window, metadata


def batch_id_for(tenant: str, idempotency_key: str | None) -> str:
    """A new batch id; derived from the tenant and the key when the caller sent ``Idempotency-Key``."""
    if idempotency_key:
        raw = f"{tenant}\0{idempotency_key}".encode("utf-8", "surrogateescape")  # as ``idempotency_key``
        digest = hashlib.blake2b(raw, digest_size=16).hexdigest()
        return "batch_" + digest
    return "batch_" + secrets.token_hex(16)


async def create_batch(request: web.Request) -> web.Response:
    """``POST /v1/batches``: answers at once with status ``validating``; lines are enqueued behind it."""
    runner = request.app[RUNNER]
    tenant: str = request["tenant"]
    body = await read_json(request, MAX_CREATE_BODY)  # a few fields: no need for the server's limit
    input_file_id, endpoint, window, metadata = check_create(body)
    webhook = await _webhook_of(runner, tenant, body.get("webhook"))
    file = await request.app[FILES].meta(tenant, input_file_id)  # 404 for another tenant's file
    if file["purpose"] != "batch":
        raise InvalidRequest(
            f"file '{input_file_id}' has purpose '{file['purpose']}', not 'batch'", param="input_file_id"
        )
    batch_id = batch_id_for(tenant, request.headers.get("Idempotency-Key"))
    now = int(time.time())
    fields: dict[str, Any] = {
        "id": batch_id,
        "tenant": tenant,
        "status": "validating",
        "endpoint": endpoint,
        "input_file_id": input_file_id,
        "completion_window": window,
        "created_at": now,
        "expires_at": now + COMPLETION_WINDOWS[window],
        "total": 0,
        "completed": 0,
        "failed": 0,
    }
    if metadata is not None:
        fields["metadata"] = metadata
    lane = await _lane_of(runner, tenant, window)
    if lane is not None:
        fields["lane"] = lane
    if webhook:
        fields["webhook"] = orjson.loads(webhook)
    if not await runner.create(batch_id, tenant, fields):
        existing = await runner.owned(tenant, batch_id)
        if (existing["input_file_id"], existing["endpoint"]) != (input_file_id, endpoint):
            raise IdempotencyConflict(
                "Idempotency-Key was used for a batch of another input file or endpoint",
                param="input_file_id",
            )
        return json_response(batch_object(existing))
    runner.spawn(batch_id, "ingest")
    return json_response(batch_object(fields))


async def _lane_of(runner: BatchRunner, tenant: str, window: str) -> str | None:
    """The lane of the batch's lines that name none: the tenant's ``default_lane`` when it set one
    (say ``now``, to keep its data out of providers' batch storage), else the window's."""
    policy = await runner.producer.policies.get(tenant)
    if "default_lane" in policy.stored:
        return str(policy.get("default_lane"))
    return WINDOW_LANES.get(window)


async def _webhook_of(runner: BatchRunner, tenant: str, raw: Any) -> bytes | None:
    """The batch's webhook: its own (checked like a job's), else its tenant's default endpoint."""
    producer = runner.producer
    webhook = webhook_spec.of_batch(raw, producer.validator.webhook_guard)
    if webhook is None:
        url = (await producer.policies.get(tenant)).get("webhook_url")
        webhook = webhook_spec.encode(url) if url else None
    return webhook


async def get_batch(request: web.Request) -> web.Response:
    """``GET /v1/batches/{id}``: the batch, advanced from its jobs' records as it is read."""
    runner = request.app[RUNNER]
    batch_id = request.match_info["batch_id"]
    await runner.owned(request["tenant"], batch_id)
    batch = await runner.advance(batch_id) or await runner.owned(request["tenant"], batch_id)
    return json_response(batch_object(batch))


async def list_batches(request: web.Request) -> web.Response:
    """``GET /v1/batches?limit=&after=``: the tenant's batches, newest first, as OpenAI pages them."""
    raw_limit = request.query.get("limit") or "20"
    try:
        limit = int(raw_limit)
    except ValueError:
        raise InvalidRequest("limit must be an integer", param="limit") from None
    if not 1 <= limit <= 100:
        raise InvalidRequest("limit must be between 1 and 100", param="limit")
    batches, has_more = await request.app[RUNNER].list(
        request["tenant"], limit=limit, after=request.query.get("after") or None
    )
    return json_response(list_object([batch_object(b) for b in batches], has_more))


async def cancel_batch(request: web.Request) -> web.Response:
    """``POST /v1/batches/{id}/cancel``: ``cancelling`` now; queued lines are cancelled, running ones
    aborted, and the batch ends ``cancelled`` with what finished in its output and error files."""
    runner = request.app[RUNNER]
    tenant: str = request["tenant"]
    batch_id = request.match_info["batch_id"]
    await runner.owned(tenant, batch_id)
    moved = await runner.update(
        batch_id, ["validating", "in_progress"], {"status": "cancelling", "cancelling_at": int(time.time())}
    )
    if moved not in (1, "cancelling", "cancelled"):
        raise RouterError(
            f"batch '{batch_id}' is {moved}; only a validating or in-progress batch can be cancelled",
            code="job_not_cancellable",
        )
    if moved == 1:
        runner.spawn(batch_id, "advance")  # cancelling thousands of queued jobs takes a moment
    return json_response(batch_object(await runner.owned(tenant, batch_id)))


async def _track(runner: BatchRunner, files: FileStore) -> None:
    """The tracker: advance every active batch each tick; sweep expired disk files now and then."""
    last_sweep = 0.0
    while True:
        try:
            await runner.tick()
            if files.files_dir is not None and time.monotonic() - last_sweep > SWEEP_EVERY_S:
                last_sweep = time.monotonic()
                await files.sweep()
        except asyncio.CancelledError:
            raise
        except Exception:  # Redis away, say: the next tick tries again
            log.exception("batch tracker tick failed")
        await asyncio.sleep(TICK_S)


def _tracker(runner: BatchRunner, files: FileStore) -> Callable[[web.Application], AsyncIterator[None]]:
    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(_track(runner, files))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await runner.close()

    return lifecycle


def setup(app: web.Application) -> None:
    """Add ``/v1/files``, ``/v1/batches`` and the batch tracker (a task per server process) to ``app``."""
    settings = app["settings"]
    files = FileStore(app["redis"], ttl_s=settings.record_ttl_s, files_dir=settings.files_dir)
    runner = BatchRunner(app["redis"], app["producer"], files, ttl_s=settings.record_ttl_s)
    app[RUNNER] = runner
    setup_files(app, files)
    app.cleanup_ctx.append(_tracker(runner, files))
    app.router.add_post("/v1/batches", create_batch)
    app.router.add_get("/v1/batches", list_batches)
    app.router.add_get("/v1/batches/{batch_id}", get_batch)
    app.router.add_post("/v1/batches/{batch_id}/cancel", cancel_batch)
