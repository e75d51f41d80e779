"""The events a delivery carries, and their ``webhook-id``.

Bodies follow Standard Webhooks' recommended shape, ``{"type", "timestamp", "data"}``:

* ``job.succeeded`` | ``job.failed`` | ``job.cancelled``: ``data`` is the job's summary (``id``,
  ``status``, ``model_requested``, ``model``, ``provider``, ``cost`` in USD, ``usage``, ``error``,
  ``metadata``, ``created_at``, ``finished_at``) and its whole ``response`` when the webhook's
  ``include`` asks for it. Built from the record when delivered: a record does not change once it
  ended, so every attempt and replay sends the same bytes.
* ``batch.completed`` | ``batch.failed`` | ``batch.expired`` | ``batch.cancelled``: ``data`` is the
  batch object as ``GET /v1/batches/{id}`` shows it, written with the batch's end
  (``producer.http.batch_runner``).

Nothing else goes in: not the request, not the attempts (which name workers), not another job's
anything. ``webhook-id`` is derived from the job (or batch) and its creation time, so retries and
replays share it and receivers can deduplicate on it.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import orjson

JOB_EVENTS = {"succeeded": "job.succeeded", "failed": "job.failed", "cancelled": "job.cancelled"}
BATCH_EVENTS = {
    "completed": "batch.completed",
    "failed": "batch.failed",
    "expired": "batch.expired",
    "cancelled": "batch.cancelled",
}

# the record fields a job's body is made of, in the order the outbox reads them
JOB_FIELDS = (
    "status",
    "webhook",
    "tenant",
    "created_at",
    "finished_at",
    "model_requested",
    "model",
    "provider",
    "usage",
    "error",
    "metadata",
    "response",
)
# the batch fields a delivery needs (its body was written with its end), and when it ended
BATCH_FIELDS = (
    "status",
    "webhook",
    "tenant",
    "created_at",
    "webhook_event",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelled_at",
)


def webhook_id(kind: str, ref: str, created_at: bytes | str | None) -> str:
    """The delivery's ``webhook-id``: the same for every attempt and replay of one job's (or batch's)
    end, and different for a later job that reuses the id after the first one's record expired."""
    created = created_at.decode() if isinstance(created_at, bytes) else created_at or ""
    digest = hashlib.blake2b(f"{kind}|{ref}|{created}".encode(), digest_size=16).hexdigest()
    return "msg_" + digest


def iso(ts: float) -> str:
    """Unix seconds as Standard Webhooks' ``timestamp``: ISO 8601, UTC, milliseconds."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json(raw: bytes | None) -> Any:
    return orjson.Fragment(raw) if raw else None  # already JSON in the record: not parsed again


def job_body(job_id: str, fields: list[bytes | None], include: list[str]) -> tuple[str, bytes]:
    """(event type, body) of a job that ended, from its ``JOB_FIELDS``."""
    (status, _, _, created_at, finished_at, requested, model, provider, usage, error, metadata, response) = (
        fields
    )
    state = (status or b"").decode()
    finished = float(finished_at) if finished_at else 0.0
    cost = orjson.loads(usage).get("cost") if usage else None
    data: dict[str, Any] = {
        "object": "job",
        "id": job_id,
        "status": state,
        "model_requested": requested.decode() if requested else None,
        "model": model.decode() if model else None,
        "provider": provider.decode() if provider else None,
        "cost": cost or 0.0,
        "usage": _json(usage),
        "error": _json(error),
        "metadata": _json(metadata),
        "created_at": float(created_at) if created_at else None,
        "finished_at": finished or None,
    }
    if "response" in include:
        data["response"] = _json(response)
    event = JOB_EVENTS.get(state, f"job.{state}")
    return event, orjson.dumps({"type": event, "timestamp": iso(finished), "data": data})


def batch_body(batch: dict[str, Any], ended_at: float) -> bytes:
    """The body of a batch's end: ``batch`` is the batch object as the API shows it."""
    event = BATCH_EVENTS.get(batch["status"], f"batch.{batch['status']}")
    return orjson.dumps({"type": event, "timestamp": iso(ended_at), "data": batch})
