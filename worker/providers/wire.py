"""What every wire format shares: reading a provider's JSON answer, its ``Retry-After``, and what an
HTTP error status means when the answer's own error fields do not say."""

from __future__ import annotations

from collections.abc import Callable
from email.utils import parsedate_to_datetime
from time import time
from typing import Any

import orjson

from llm_router.errors import (
    AuthFailed,
    BadResponse,
    Overloaded,
    ProviderOutOfCredits,
    RateLimited,
    RouterError,
    UpstreamError,
    UpstreamInvalidRequest,
    UpstreamNotFound,
    UpstreamTimeout,
)

Classify = Callable[[int, dict[str, str], bytes], RouterError]

# HTTP status → error class, one table for every format. Each format's own error fields come first
# (OpenAI's error.code, Anthropic's error.type, Gemini's status string and ErrorInfo reason); this
# table decides when they are missing or unknown: an HTML page from a proxy, an empty 502. What the
# providers document for each status agrees with it:
# - OpenAI (platform.openai.com/docs/guides/error-codes): 401 bad key or organisation, 403 region not
#   supported, 429 rate limit (or insufficient_quota: its error.code says which), 500 server error,
#   503 overloaded; its SDK names 400, 404, 409 and 422 too. OpenAI-compatible gateways add 402 out
#   of credits, 408 timed out, 502 model down and 504 timeout (OpenRouter).
# - Anthropic (docs.claude.com/en/api/errors): 400 invalid_request_error, 401 authentication_error,
#   402 billing_error, 403 permission_error, 404 not_found_error, 413 request_too_large, 429
#   rate_limit_error, 500 api_error, 504 timeout_error, 529 overloaded_error.
# - Gemini (ai.google.dev/gemini-api/docs/troubleshooting): 400 INVALID_ARGUMENT and
#   FAILED_PRECONDITION, 403 PERMISSION_DENIED, 404 NOT_FOUND, 429 RESOURCE_EXHAUSTED, 500 INTERNAL,
#   503 UNAVAILABLE, 504 DEADLINE_EXCEEDED. It documents no 401, 402, 408, 413, 502 or 529: when one
#   comes (from a load balancer or proxy in front of it) it means what it means in HTTP.
# No provider gives a status a meaning that differs from the others', so no format overrides the
# table; 504 is a timeout everywhere (the OpenAI adapter used to call it upstream_error).
STATUS_ERRORS: dict[int, type[RouterError]] = {
    400: UpstreamInvalidRequest,
    401: AuthFailed,
    402: ProviderOutOfCredits,
    403: AuthFailed,
    404: UpstreamNotFound,
    408: UpstreamTimeout,
    413: UpstreamInvalidRequest,
    422: UpstreamInvalidRequest,
    429: RateLimited,
    500: UpstreamError,
    502: UpstreamError,
    503: Overloaded,
    504: UpstreamTimeout,
    529: Overloaded,
}


def status_error(status: int) -> type[RouterError]:
    """The error class of a failed answer's HTTP status (``STATUS_ERRORS``): any other 5xx is the
    provider's error, any other status the caller's request refused."""
    return STATUS_ERRORS.get(status) or (UpstreamError if status >= 500 else UpstreamInvalidRequest)


def json_answer(status: int, headers: dict[str, str], body: bytes, classify: Classify) -> dict[str, Any]:
    """The answer as a JSON object; an error status goes through the format's ``classify`` table."""
    if status >= 400:
        raise classify(status, headers, body)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadResponse(
            f"malformed JSON in a {status} answer ({len(body)} bytes)", http_status=status
        ) from None
    if not isinstance(data, dict):
        raise BadResponse("the answer is not a JSON object", http_status=status)
    return data


def retry_after(headers: dict[str, str]) -> float | None:
    """Seconds to wait from ``retry-after`` (seconds or HTTP date) or ``retry-after-ms`` (lower-case keys)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(float(ms) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        return max(parsedate_to_datetime(value).timestamp() - time(), 0.0)
    except (TypeError, ValueError):
        return None
