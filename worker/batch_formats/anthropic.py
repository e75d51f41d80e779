"""Anthropic's Message Batches (``/v1/messages/batches``) as pure translation: a job's request
(``{custom_id, params}``, the params a synchronous ``/v1/messages`` call would send), the batch's
``processing_status``, and the results JSONL (``succeeded | errored | canceled | expired``) as items.

A ``custom_id`` must match ``^[a-zA-Z0-9_-]{1,64}$``, which a job id (``tenant/id``) need not: an
item's id is its position (``r<n>``), and the batch's order of jobs is kept in Redis.  A Message
Batch has no metadata, so a batch created by a holder that died before recording it cannot be found
again; its successor creates it anew (the orphan's answers are never read)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import orjson

from config.catalog import Deployment
from llm_router.errors import BadResponse
from worker.batch_formats.base import CANCELLED, COMPLETED, EXPIRED, RUNNING, RawItem, Remote
from worker.providers.anthropic import build_request

# error.type -> the HTTP status a synchronous call gets with it (docs.claude.com/en/api/errors)
_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def key(index: int, job_id: str) -> str:
    return f"r{index}"


def item(custom_id: str, request: dict[str, Any], dep: Deployment) -> bytes:
    """One entry of ``requests``: the body of the synchronous call, as ``params``."""
    params = orjson.loads(build_request(request, dep).body)
    return orjson.dumps({"custom_id": custom_id, "params": params})


def create_body(items: list[bytes]) -> bytes:
    return b'{"requests":[' + b",".join(items) + b"]}"


def parse_remote(data: dict[str, Any]) -> Remote:
    status = str(data.get("processing_status"))
    state = RUNNING
    if status == "ended":
        counts = data.get("request_counts") or {}
        if data.get("cancel_initiated_at"):
            state = CANCELLED
        elif counts.get("expired"):
            state = EXPIRED  # the 24 hours passed with requests not run
        else:
            state = COMPLETED
    return Remote(
        id=str(data["id"]),
        state=state,
        cancelling=status == "canceling",
        output=data.get("results_url"),
        raw=data,
    )


def results_url(remote: Remote, dep: Deployment) -> str:
    """Where the results are: the batch's ``results_url``, on the deployment's own origin only (the
    key goes with the request; a URL elsewhere is refused, not followed)."""
    url = remote.output or ""
    if urlsplit(url)[:2] != urlsplit(dep.base_url)[:2]:
        raise BadResponse(f"the batch's results_url is not on {dep.provider}'s origin")
    return url


def items(content: bytes) -> list[RawItem]:
    """The results JSONL's lines."""
    out = []
    for raw in content.splitlines():
        if not raw.strip():
            continue
        line = orjson.loads(raw)
        result = line.get("result") or {}
        kind = str(result.get("type"))
        custom_id = str(line.get("custom_id"))
        if kind == "succeeded":
            out.append(RawItem(custom_id, "succeeded", 200, orjson.dumps(result.get("message"))))
        elif kind == "errored":
            error = result.get("error") or {}
            inner = error.get("error") if isinstance(error.get("error"), dict) else {}
            status = _STATUS.get(str(inner.get("type")), 500)
            out.append(RawItem(custom_id, "errored", status, orjson.dumps(error)))
        else:
            out.append(RawItem(custom_id, "canceled" if kind == "canceled" else "expired"))
    return out
