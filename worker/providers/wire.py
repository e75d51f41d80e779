"""What every wire format shares: reading a provider's JSON answer and its ``Retry-After``."""

from __future__ import annotations

from collections.abc import Callable
from email.utils import parsedate_to_datetime
from time import time
from typing import Any

import orjson

from llm_router.errors import BadResponse, RouterError

Classify = Callable[[int, dict[str, str], bytes], RouterError]


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
