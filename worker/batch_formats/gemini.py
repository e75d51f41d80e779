"""Gemini's batch mode (``models/{model}:batchGenerateContent`` with inline requests) as pure
translation: a job's request (the ``GenerateContentRequest`` a synchronous call would send), the
batch's long-running operation and its ``state`` (``BATCH_STATE_*``), and ``inlinedResponses``
(each a response or a ``google.rpc.Status`` error) as items.

Inline responses come in the order of the requests (the API documents it; their ``metadata`` is
not always echoed), so an item's key is its position. The batch's ``displayName`` is our batch id:
a batch created by a holder that died before recording it is found again by listing."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import orjson

from config.catalog import Deployment
from worker.batch_formats.base import CANCELLED, COMPLETED, EXPIRED, FAILED, RUNNING, RawItem, Remote
from worker.providers.gemini import build_request

_STATES = {
    "BATCH_STATE_SUCCEEDED": COMPLETED,
    "BATCH_STATE_FAILED": FAILED,
    "BATCH_STATE_CANCELLED": CANCELLED,
    "BATCH_STATE_EXPIRED": EXPIRED,
    "JOB_STATE_SUCCEEDED": COMPLETED,
    "JOB_STATE_FAILED": FAILED,
    "JOB_STATE_CANCELLED": CANCELLED,
    "JOB_STATE_EXPIRED": EXPIRED,
}
# google.rpc.Code -> (HTTP status, status string): what a synchronous call's error would carry
_CODES = {
    1: (499, "CANCELLED"),
    2: (500, "UNKNOWN"),
    3: (400, "INVALID_ARGUMENT"),
    4: (504, "DEADLINE_EXCEEDED"),
    5: (404, "NOT_FOUND"),
    6: (409, "ALREADY_EXISTS"),
    7: (403, "PERMISSION_DENIED"),
    8: (429, "RESOURCE_EXHAUSTED"),
    9: (400, "FAILED_PRECONDITION"),
    10: (409, "ABORTED"),
    11: (400, "OUT_OF_RANGE"),
    12: (501, "UNIMPLEMENTED"),
    13: (500, "INTERNAL"),
    14: (503, "UNAVAILABLE"),
    15: (500, "DATA_LOSS"),
    16: (401, "UNAUTHENTICATED"),
}


def key(index: int, job_id: str) -> str:
    return str(index)


def model_path(dep: Deployment) -> str:
    return "models/" + quote(dep.upstream_model.removeprefix("models/"), safe="-._~")


def item(position: str, request: dict[str, Any], dep: Deployment) -> bytes:
    """One inline request: the synchronous call's body, with its model, and our key as metadata."""
    body = orjson.loads(build_request(request, dep).body)
    return orjson.dumps({"request": {"model": model_path(dep), **body}, "metadata": {"key": position}})


def create_body(batch_id: str, items: list[bytes]) -> bytes:
    head = b'{"batch":{"displayName":' + orjson.dumps(batch_id) + b',"inputConfig":{"requests":{"requests":['
    return head + b",".join(items) + b"]}}}}"


def parse_remote(operation: dict[str, Any]) -> Remote:
    meta = operation.get("metadata") or {}
    name = str(operation.get("name") or meta.get("name"))
    return Remote(id=name, state=_STATES.get(str(meta.get("state")), RUNNING), raw=operation)


def find(listing: dict[str, Any], batch_id: str) -> Remote | None:
    """The batch of a ``GET batches`` page whose ``displayName`` is ``batch_id``, if any."""
    for operation in listing.get("operations") or ():
        if (operation.get("metadata") or {}).get("displayName") == batch_id:
            return parse_remote(operation)
    return None


def items(remote: Remote) -> list[RawItem]:
    """The inline responses of an ended batch (in request order)."""
    meta = remote.raw.get("metadata") or {}
    output = meta.get("output") or remote.raw.get("response") or {}
    inlined = (output.get("inlinedResponses") or {}).get("inlinedResponses") or []
    out = []
    for position, entry in enumerate(inlined):
        name = str(((entry.get("metadata") or {}).get("key")) or position)
        if entry.get("response") is not None:
            out.append(RawItem(name, "succeeded", 200, orjson.dumps(entry["response"])))
            continue
        error = entry.get("error") or {}
        status, state = _CODES.get(int(error.get("code") or 2), (500, "UNKNOWN"))
        body = {"error": {"code": status, "message": error.get("message") or state, "status": state}}
        if error.get("details"):
            body["error"]["details"] = error["details"]
        out.append(RawItem(name, "errored", status, orjson.dumps(body)))
    return out
