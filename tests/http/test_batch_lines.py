"""Batch files line by line, offline: what an input line becomes, and the lines a job ends as."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from llm_router.contract import JobRecord
from producer.http.batch_lines import job_for, parse_lines, record_line

ENDPOINT = "/v1/chat/completions"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
GOOD = {"custom_id": "a", "method": "POST", "url": ENDPOINT, "body": BODY}


def one(raw: Any) -> tuple[str | None, str | None, str | None]:
    """(custom_id, error code, error param) of a file holding ``GOOD`` and then ``raw``."""
    content = orjson.dumps(GOOD) + b"\n" + (raw if isinstance(raw, bytes) else orjson.dumps(raw))
    lines = parse_lines(content, ENDPOINT)
    assert len(lines) == 2 and lines[0].error is None
    err = lines[1].error or {}
    return lines[1].custom_id, err.get("code"), err.get("param")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({**GOOD, "custom_id": "b"}, ("b", None, None)),
        (b"{oops", (None, "invalid_json", None)),
        (b"[1, 2]", (None, "invalid_json", None)),
        ({**GOOD, "custom_id": ""}, (None, "missing_custom_id", "custom_id")),
        ({**GOOD, "custom_id": 7}, (None, "missing_custom_id", "custom_id")),
        ({**GOOD, "custom_id": "x" * 513}, (None, "missing_custom_id", "custom_id")),
        (GOOD, ("a", "duplicate_custom_id", "custom_id")),
        ({**GOOD, "custom_id": "b", "method": "post"}, ("b", "invalid_method", "method")),
        ({**GOOD, "custom_id": "b", "url": "/v1/embeddings"}, ("b", "invalid_url", "url")),
        ({**GOOD, "custom_id": "b", "body": [BODY]}, ("b", "invalid_body", "body")),
        ({k: v for k, v in GOOD.items() if k != "body"} | {"custom_id": "b"}, ("b", "invalid_body", "body")),
    ],
)
def test_input_lines(raw: Any, expected: tuple[str | None, str | None, str | None]) -> None:
    assert one(raw) == expected


def test_blank_lines_crlf_and_a_bom_are_not_requests() -> None:
    content = (
        b"\xef\xbb\xbf" + orjson.dumps(GOOD) + b"\r\n\r\n  \n" + orjson.dumps({**GOOD, "custom_id": "b"})
    )
    lines = parse_lines(content, ENDPOINT)
    assert [(ln.index, ln.custom_id, ln.error) for ln in lines] == [(0, "a", None), (3, "b", None)]


def test_a_line_becomes_a_job_with_a_stable_id_and_its_custom_id() -> None:
    (ln,) = parse_lines(
        orjson.dumps({**GOOD, "body": {**BODY, "tenant": "evil", "metadata": {"k": "v"}}}), ENDPOINT
    )
    job = job_for("batch_x", ln, 86400)
    assert job["job_id"] == "batch_x-0" and "tenant" not in job  # the API key decides the tenant
    assert job["metadata"] == {"k": "v", "batch_id": "batch_x", "custom_id": "a"}
    assert job["deadline_s"] == 86400
    assert job_for("batch_x", ln, 86400) == job  # the same on every enqueue: the idempotency digest
    (short,) = parse_lines(orjson.dumps({**GOOD, "body": {**BODY, "deadline_s": 5}}), ENDPOINT)
    assert job_for("batch_x", short, 86400)["deadline_s"] == 5


def record(status: str, **extra: Any) -> JobRecord:
    base = {"id": "batch_x-4", "status": status, "request": BODY, "model_requested": "gpt-4o-mini"}
    return JobRecord.model_validate(
        {**base, "route": ["gpt-4o-mini"], "created_at": 1, "deadline_at": 2, **extra}
    )


CANCELLED = {"code": "batch_cancelled", "message": "cancelled", "param": None}
ERROR = {"code": "timeout", "status": 502, "message": "slow", "type": "upstream_error", "param": None}


def test_the_lines_a_job_ends_as() -> None:
    answer = {"id": "chatcmpl-1", "object": "chat.completion", "usage": {"cost": 0.001}}
    ok, out = record_line("batch_x", 4, "c", record("succeeded", response=answer), None)
    assert ok and out["response"] == {"status_code": 200, "request_id": "batch_x-4", "body": answer}
    assert out["error"] is None and out["custom_id"] == "c" and out["id"].startswith("batch_req_")

    ok, failed = record_line("batch_x", 4, "c", record("failed", error=ERROR), None)
    assert not ok and failed["response"]["status_code"] == 502
    assert failed["response"]["body"]["error"]["code"] == "timeout"
    assert failed["error"] == {"code": "timeout", "message": "slow"}

    # cancelled with its batch, or never finished: no response, the batch's reason
    for rec in (record("cancelled", error={**ERROR, "code": "cancelled"}), record("running"), None):
        ok, cut = record_line("batch_x", 4, "c", rec, CANCELLED)
        assert not ok and cut["response"] is None and cut["error"]["code"] == "batch_cancelled"
    # cancelled on its own, in a batch that completed: the job's own error
    ok, own = record_line("batch_x", 4, "c", record("cancelled", error={**ERROR, "code": "cancelled"}), None)
    assert own["error"]["code"] == "cancelled"
