"""Fault details every wire format renders its own way: error codes, HTTP-date Retry-After, a
truncated body, and the content filter."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from llm_router.simulator import FaultRule, SimServer

KEY = "sk-fault-codes"
# format → (path, headers, body)
FORMATS: dict[str, tuple[str, dict[str, str], dict[str, Any]]] = {
    "openai": (
        "/v1/chat/completions",
        {"Authorization": f"Bearer {KEY}"},
        {"model": "m1", "messages": [{"role": "user", "content": "hi"}]},
    ),
    "anthropic": (
        "/v1/messages",
        {"x-api-key": KEY, "anthropic-version": "2023-06-01"},
        {"model": "m1", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]},
    ),
    "gemini": (
        "/v1beta/models/m1:generateContent",
        {"x-goog-api-key": KEY},
        {"contents": [{"parts": [{"text": "hi"}]}]},
    ),
}


async def _post(http: aiohttp.ClientSession, sim: SimServer, fmt: str) -> tuple[int, dict[str, str], bytes]:
    path, headers, body = FORMATS[fmt]
    async with http.post(sim.url + path, json=body, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.read()


@pytest.mark.parametrize(
    ("fmt", "status", "code", "check"),
    [
        ("openai", 400, "context_length_exceeded", lambda b: b["error"]["code"] == "context_length_exceeded"),
        (
            "anthropic",
            400,
            "context_length_exceeded",
            lambda b: b["error"]["message"].startswith("prompt is too long"),
        ),
        ("anthropic", 402, "billing_error", lambda b: b["error"]["type"] == "billing_error"),
        (
            "gemini",
            400,
            "context_length_exceeded",
            lambda b: b["error"]["message"].startswith("The input token count"),
        ),
        ("gemini", 400, "API_KEY_INVALID", lambda b: b["error"]["details"][0]["reason"] == "API_KEY_INVALID"),
    ],
)
async def test_error_codes_take_each_formats_shape(
    sim: SimServer, http: aiohttp.ClientSession, fmt: str, status: int, code: str, check: Any
) -> None:
    sim.add_faults([FaultRule(credential=KEY, kind="status", status=status, error_code=code)])
    got, _, body = await _post(http, sim, fmt)
    assert got == status and check(orjson.loads(body))


@pytest.mark.parametrize("fmt", list(FORMATS))
async def test_retry_after_date_and_truncated_body(
    sim: SimServer, http: aiohttp.ClientSession, fmt: str
) -> None:
    when = "Wed, 21 Oct 2026 07:28:00 GMT"
    sim.add_faults([FaultRule(kind="status", status=429, retry_after_date=when, count=1)])
    status, headers, _ = await _post(http, sim, fmt)
    assert (status, headers["Retry-After"]) == (429, when)
    sim.add_faults([FaultRule(kind="truncated", count=1)])
    with pytest.raises(aiohttp.ClientPayloadError):
        await _post(http, sim, fmt)
    status, _, _ = await _post(http, sim, fmt)  # the rules are used up: a normal answer
    assert status == 200
