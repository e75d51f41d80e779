"""One upstream-status table for every wire format (``worker.providers.wire.STATUS_ERRORS``).

Every status, through every format's ``classify_error``, with the bodies a status arrives with when
the format's own error fields say nothing we know: none, a proxy's HTML page, the format's error
envelope without a type, and one with a type we have never seen. The expected codes are written out
here, not read from the table, so changing the table fails this test.
"""

from __future__ import annotations

import orjson
import pytest

from llm_router.errors import ERROR_TABLE
from worker.providers import ADAPTERS

# status → the code every format answers with; what the providers document for each is in wire.py
EXPECTED = {
    400: "upstream_invalid_request",
    401: "auth_failed",
    402: "provider_out_of_credits",
    403: "auth_failed",
    404: "upstream_not_found",
    405: "upstream_invalid_request",
    408: "timeout",
    409: "upstream_invalid_request",
    413: "upstream_invalid_request",
    418: "upstream_invalid_request",
    422: "upstream_invalid_request",
    429: "rate_limited",
    451: "upstream_invalid_request",
    499: "upstream_invalid_request",
    500: "upstream_error",
    501: "upstream_error",
    502: "upstream_error",
    503: "overloaded",
    504: "timeout",
    520: "upstream_error",
    529: "overloaded",
    599: "upstream_error",
}


def _bodies(fmt: str, status: int) -> list[bytes]:
    """The answers a status may come with that carry nothing the format's own tables know."""
    envelope = {
        "openai": lambda kind: {"error": {"message": "it failed", **({"type": kind} if kind else {})}},
        "anthropic": lambda kind: {
            "type": "error",
            "error": {"message": "it failed", **({"type": kind} if kind else {})},
        },
        "gemini": lambda kind: {
            "error": {"code": status, "message": "it failed", **({"status": kind} if kind else {})}
        },
    }[fmt]
    return [
        b"",
        b"<html><body><h1>Bad things happened</h1></body></html>",
        orjson.dumps(envelope(None)),
        orjson.dumps(envelope("something_new_error")),
    ]


@pytest.mark.parametrize("fmt", sorted(ADAPTERS))
@pytest.mark.parametrize(("status", "code"), sorted(EXPECTED.items()))
def test_every_status_means_the_same_in_every_format(fmt: str, status: int, code: str) -> None:
    classify = ADAPTERS[fmt].classify_error
    for body in _bodies(fmt, status):
        error = classify(status, {"retry-after": "2"}, body)
        assert (error.code, error.http_status, error.retry_after) == (code, status, 2.0), body
        assert code in ERROR_TABLE


@pytest.mark.parametrize(
    ("fmt", "status", "body", "code"),
    [
        # the format's own fields come before the status
        (
            "openai",
            429,
            {"error": {"message": "quota", "code": "insufficient_quota"}},
            "provider_out_of_credits",
        ),
        (
            "openai",
            400,
            {"error": {"message": "long", "code": "context_length_exceeded"}},
            "context_length_exceeded",
        ),
        ("anthropic", 500, {"type": "error", "error": {"type": "overloaded_error"}}, "overloaded"),
        ("anthropic", 400, {"type": "error", "error": {"type": "billing_error"}}, "provider_out_of_credits"),
        (
            "gemini",
            400,
            {"error": {"status": "INVALID_ARGUMENT", "details": [{"reason": "API_KEY_INVALID"}]}},
            "auth_failed",
        ),
        ("gemini", 500, {"error": {"status": "UNAVAILABLE"}}, "overloaded"),
    ],
)
def test_the_formats_own_error_fields_come_first(fmt: str, status: int, body: dict, code: str) -> None:
    assert ADAPTERS[fmt].classify_error(status, {}, orjson.dumps(body)).code == code
