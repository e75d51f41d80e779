"""OpenAI batch files, line by line (pure): parsing input lines; output, error and refusal lines; a
batch's ``errors`` list and ``usage`` totals.

An input line is ``{"custom_id", "method": "POST", "url": <the batch's endpoint>, "body": {...}}``. A
line that breaks these rules (or whose body the producer refuses) goes to the batch's error file by
its ``custom_id``; it does not fail the batch. Each valid line becomes a job whose id is derived from
the batch id and the line's index, so enqueuing the same batch again creates nothing new.

A line runs on its batch's lane (``auto`` for the ``24h`` window: a provider batch at about half the
price when its deadline, the window's end, leaves room, with re-dispatch to `now` before it) unless
it names one itself: its own ``lane``, or a ``service_tier`` (``flex`` is the flex lane; ``default``,
``priority``, ``scale`` and ``fast`` are synchronous tiers, so `now`). A streamed line is refused, as
OpenAI refuses it: nobody reads a batch line's stream.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from config.cost import nanos_to_usd
from llm_router.contract import JobRecord, JobStatus

MAX_CUSTOM_ID = 512
MAX_LISTED_ERRORS = 100  # refused lines named in a batch's ``errors`` (all are in the error file)
# service tiers that ask for a synchronous tier by name: the line runs `now`, not on its batch's lane
SYNCHRONOUS_TIERS = frozenset({"default", "priority", "scale", "fast"})


@dataclass(slots=True)
class Line:
    """One non-blank input line: its 0-based index in the file, and its body or why it was refused."""

    index: int
    custom_id: str | None
    body: dict[str, Any] | None = None
    error: dict[str, Any] | None = None  # {code, message, param}


def line_error(code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param}


def parse_lines(content: bytes, endpoint: str) -> list[Line]:
    """Every non-blank line of a JSONL batch file, each with its body or its error."""
    if content.startswith(b"\xef\xbb\xbf"):  # a UTF-8 BOM some editors write
        content = content[3:]
    seen: set[str] = set()
    out: list[Line] = []
    for index, raw in enumerate(content.split(b"\n")):
        if not raw.strip():
            continue
        out.append(_parse_line(index, raw, endpoint, seen))
    return out


def _parse_line(index: int, raw: bytes, endpoint: str, seen: set[str]) -> Line:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Line(index, None, error=line_error("invalid_json", f"the line is not valid JSON: {exc}"))
    if not isinstance(obj, dict):
        return Line(index, None, error=line_error("invalid_json", "a line must be a JSON object"))
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > MAX_CUSTOM_ID:
        return Line(
            index,
            None,
            error=line_error(
                "missing_custom_id",
                f"custom_id must be a string of 1-{MAX_CUSTOM_ID} characters",
                "custom_id",
            ),
        )
    if custom_id in seen:
        return Line(
            index,
            custom_id,
            error=line_error(
                "duplicate_custom_id", f"custom_id '{custom_id}' is used by an earlier line", "custom_id"
            ),
        )
    seen.add(custom_id)
    if obj.get("method") != "POST":
        return Line(index, custom_id, error=line_error("invalid_method", "method must be 'POST'", "method"))
    if obj.get("url") != endpoint:
        return Line(
            index,
            custom_id,
            error=line_error("invalid_url", f"url must be the batch's endpoint '{endpoint}'", "url"),
        )
    body = obj.get("body")
    if not isinstance(body, dict):
        return Line(index, custom_id, error=line_error("invalid_body", "body must be a JSON object", "body"))
    if body.get("stream"):
        return Line(
            index,
            custom_id,
            error=line_error("invalid_request", "stream is not supported in a batch", "body.stream"),
        )
    return Line(index, custom_id, body=body)


def job_id_for(batch_id: str, index: int) -> str:
    """The job of line ``index``: deterministic, so a retried enqueue finds the job it made before."""
    return f"{batch_id}-{index}"


def job_for(batch_id: str, line: Line, deadline_s: float, lane: str | None = None) -> dict[str, Any]:
    """The job a valid line becomes: its body, our id, and the batch and ``custom_id`` in metadata.

    ``deadline_s`` is what is left of the batch's window: a line's own ``deadline_s`` counts only
    when it is sooner (the batch ends at its window's end). ``lane`` is the batch's lane, for a line
    that names none (module docstring).
    """
    assert line.body is not None
    job = {k: v for k, v in line.body.items() if k != "tenant"}  # the API key decides the tenant
    meta = job.get("metadata")
    base = meta if isinstance(meta, dict) else {}
    if meta is None or isinstance(meta, dict):  # a malformed one is left for validation to name
        job["metadata"] = {**base, "batch_id": batch_id, "custom_id": line.custom_id}
    job["job_id"] = job_id_for(batch_id, line.index)
    own = job.get("deadline_s")
    number = isinstance(own, int | float) and not isinstance(own, bool)
    if own is None or (number and own > deadline_s):  # a malformed one is left for validation to name
        job["deadline_s"] = deadline_s
    tier = job.get("service_tier")
    if lane is not None and job.get("lane") is None:
        if tier in SYNCHRONOUS_TIERS:
            job["lane"] = "now"
        elif tier != "flex":  # flex is the flex lane: validation says so (and refuses a clash)
            job["lane"] = lane
    return job


def request_id(job_id: str) -> str:
    """The ``batch_req_…`` id of an output line (stable for a job)."""
    return "batch_req_" + hashlib.blake2b(job_id.encode(), digest_size=12).hexdigest()


def output_line(custom_id: str | None, record: JobRecord) -> dict[str, Any]:
    """A succeeded job's line in the output file: the ``chat.completion`` (with ``usage.cost``)."""
    return {
        "id": request_id(record.id),
        "custom_id": custom_id,
        "response": {"status_code": 200, "request_id": record.id, "body": record.response},
        "error": None,
    }


def failed_line(custom_id: str | None, record: JobRecord) -> dict[str, Any]:
    """A failed job's line in the error file: OpenAI's error response, its status, and the error."""
    err = record.error or {"code": "internal_error", "message": "the job failed", "status": 500}
    status = int(err.get("status") or 500)
    body = {"error": {k: err.get(k) for k in ("code", "message", "type", "param")}}
    return {
        "id": request_id(record.id),
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": record.id, "body": body},
        "error": {"code": err.get("code"), "message": err.get("message")},
    }


def refused_line(batch_id: str, index: int, custom_id: str | None, error: dict[str, Any]) -> dict[str, Any]:
    """A line that never ran (refused, or cut short by cancel or expiry): no response, only the error."""
    return {
        "id": request_id(job_id_for(batch_id, index)),
        "custom_id": custom_id,
        "response": None,
        "error": {"code": error.get("code"), "message": error.get("message")},
    }


def record_line(
    batch_id: str, index: int, custom_id: str | None, record: JobRecord | None, cut: dict[str, Any] | None
) -> tuple[bool, dict[str, Any]]:
    """The line of one job at finalization: (succeeded, line). ``cut`` is the error of a job the
    batch gave up on, when it was cancelled or expired (its jobs were cancelled with it)."""
    if record is not None and record.status == JobStatus.SUCCEEDED:
        return True, output_line(custom_id, record)
    if record is None or not record.status.terminal or (cut and record.status == JobStatus.CANCELLED):
        gone = line_error("batch_expired", "the job's record expired before the batch ended")
        return False, refused_line(batch_id, index, custom_id, cut or gone)
    return False, failed_line(custom_id, record)


def batch_errors(refused: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """OpenAI's ``errors`` list for refused lines (1-based ``line``), capped; None when there are none."""
    if not refused:
        return None
    data = [{k: r[k] for k in ("code", "message", "param", "line")} for r in refused[:MAX_LISTED_ERRORS]]
    return {"object": "list", "data": data}


class UsageSum:
    """The batch's ``usage``: OpenAI's token totals, plus ``cost`` in USD as our completions carry."""

    def __init__(self) -> None:
        self.prompt = self.completion = self.cached = self.reasoning = self.cost_nanos = 0

    def add(self, record: JobRecord) -> None:
        u = record.usage
        if u is None:
            return
        self.prompt += u.prompt_tokens
        self.completion += u.completion_tokens
        self.cached += u.cached_tokens
        self.reasoning += u.reasoning_tokens
        self.cost_nanos += u.cost_nanos

    def batch_usage(self) -> dict[str, Any]:
        return {
            "input_tokens": self.prompt,
            "input_tokens_details": {"cached_tokens": self.cached},
            "output_tokens": self.completion,
            "output_tokens_details": {"reasoning_tokens": self.reasoning},
            "total_tokens": self.prompt + self.completion,
            "cost": nanos_to_usd(self.cost_nanos),
        }


def batch_error(code: str, message: str) -> dict[str, Any]:
    """An error of the batch as a whole (or of every line it cut short): no line, no param."""
    return {"code": code, "message": message, "param": None, "line": None}


def refusal(index: int, custom_id: str | None, error: dict[str, Any] | None) -> dict[str, Any]:
    """What the batch keeps of a line that never became a job: its 1-based line, id and error."""
    err = error or {}
    return {
        "line": index + 1,
        "custom_id": custom_id,
        "code": err.get("code"),
        "message": err.get("message"),
        "param": err.get("param"),
    }
