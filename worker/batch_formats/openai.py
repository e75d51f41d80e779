"""OpenAI's Batch API (Files + ``/v1/batches`` JSONL) as pure translation: a job's line, the batch
object's state, and the output and error files' lines as items. OpenAI-compatible gateways that
offer batches speak it too."""

from __future__ import annotations

from typing import Any

import orjson

from config.catalog import Deployment
from worker.batch_formats.base import CANCELLED, COMPLETED, EXPIRED, FAILED, RUNNING, RawItem, Remote
from worker.providers.openai import build_request

ENDPOINT = "/v1/chat/completions"
META = "llm_router_batch"  # the batch's metadata key naming our batch id
_STATES = {"completed": COMPLETED, "failed": FAILED, "expired": EXPIRED, "cancelled": CANCELLED}
# the error codes OpenAI gives the lines a batch never ran
_NOT_RUN = {"batch_expired": "expired", "batch_cancelled": "canceled"}


def key(index: int, job_id: str) -> str:
    """A line's ``custom_id``: the job id itself (OpenAI takes any string)."""
    return job_id


def item(custom_id: str, request: dict[str, Any], dep: Deployment) -> bytes:
    """One JSONL line: the body a synchronous call to ``dep`` would send."""
    body = orjson.loads(build_request(request, dep).body)
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}) + b"\n"


def create_body(input_file_id: str, window: str, batch_id: str) -> dict[str, Any]:
    return {
        "input_file_id": input_file_id,
        "endpoint": ENDPOINT,
        "completion_window": window,
        "metadata": {META: batch_id},
    }


def parse_remote(data: dict[str, Any]) -> Remote:
    status = str(data.get("status"))
    return Remote(
        id=str(data["id"]),
        state=_STATES.get(status, RUNNING),
        cancelling=status == "cancelling",
        output=data.get("output_file_id"),
        errors=data.get("error_file_id"),
        raw=data,
    )


def find(listing: dict[str, Any], batch_id: str) -> Remote | None:
    """The batch of a ``GET /batches`` page whose metadata names ``batch_id``, if any."""
    for batch in listing.get("data") or ():
        if (batch.get("metadata") or {}).get(META) == batch_id:
            return parse_remote(batch)
    return None


def items(content: bytes) -> list[RawItem]:
    """The lines of an output or error file."""
    out = []
    for raw in content.splitlines():
        if not raw.strip():
            continue
        line = orjson.loads(raw)
        custom_id = str(line.get("custom_id"))
        response = line.get("response")
        if isinstance(response, dict) and response.get("status_code") is not None:
            status = int(response["status_code"])
            body = orjson.dumps(response.get("body"))
            out.append(RawItem(custom_id, "succeeded" if status == 200 else "errored", status, body))
            continue
        error = line.get("error") or {}
        not_run = _NOT_RUN.get(str(error.get("code")))
        if not_run is not None:
            out.append(RawItem(custom_id, not_run))
        else:  # an error without a response: a server-side failure of the line
            out.append(RawItem(custom_id, "errored", 500, orjson.dumps({"error": error})))
    return out
