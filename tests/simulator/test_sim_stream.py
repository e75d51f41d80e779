"""Streams in all three formats and the mid-stream fault kinds (``cut``, ``stall``, ``stream_error``),
as a raw HTTP client sees them: which events arrive, what ends the stream, how long it goes quiet."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest

from llm_router.simulator import FaultRule, SimServer

KEY = "sk-stream-sim"
PROMPT = "Tell me about streams, please."


@dataclass(frozen=True)
class Format:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    terminal: bytes  # what only the last event of a finished stream carries


FORMATS = {
    "openai": Format(
        "/v1/chat/completions",
        {"Authorization": f"Bearer {KEY}"},
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": PROMPT}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        b"data: [DONE]\n\n",
    ),
    "anthropic": Format(
        "/v1/messages",
        {"x-api-key": KEY, "anthropic-version": "2023-06-01"},
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 256,
            "messages": [{"role": "user", "content": PROMPT}],
            "stream": True,
        },
        b"event: message_stop\n",
    ),
    "gemini": Format(
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        {"x-goog-api-key": KEY},
        {"contents": [{"role": "user", "parts": [{"text": PROMPT}]}]},
        b'"finishReason"',
    ),
}
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-sonnet-4-5", "gemini": "gemini-2.5-flash"}


@asynccontextmanager
async def stream(
    http: aiohttp.ClientSession, sim: SimServer, fmt: str, **body: Any
) -> AsyncIterator[aiohttp.ClientResponse]:
    spec = FORMATS[fmt]
    async with http.post(
        sim.url + spec.path,
        json={**spec.body, **body},
        headers=spec.headers,
        timeout=aiohttp.ClientTimeout(total=10),
    ) as response:
        yield response


async def whole(http: aiohttp.ClientSession, sim: SimServer, fmt: str) -> list[bytes]:
    """The unspoiled stream's events."""
    async with stream(http, sim, fmt) as response:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        return split(await response.read())


def split(raw: bytes) -> list[bytes]:
    return [e + b"\n\n" for e in raw.split(b"\n\n") if e]


async def read_events(response: aiohttp.ClientResponse, n: int) -> list[bytes]:
    return [await response.content.readuntil(b"\n\n") for _ in range(n)]


def fault(fmt: str, kind: str, **fields: Any) -> FaultRule:
    return FaultRule(kind=kind, credential=KEY, model=MODELS[fmt], **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", list(FORMATS))
async def test_unspoiled_stream_ends_with_its_terminal_event(
    sim: SimServer, http: aiohttp.ClientSession, fmt: str
) -> None:
    events = await whole(http, sim, fmt)
    assert len(events) >= 4
    assert FORMATS[fmt].terminal in events[-1]
    assert not any(FORMATS[fmt].terminal in e for e in events[:-1])


@pytest.mark.parametrize("fmt", list(FORMATS))
async def test_cut_closes_after_n_events_without_the_terminal_one(
    sim: SimServer, http: aiohttp.ClientSession, fmt: str
) -> None:
    events = await whole(http, sim, fmt)
    sim.add_faults([fault(fmt, "cut", after_chunks=3)])
    async with stream(http, sim, fmt) as response:
        assert response.status == 200
        assert await read_events(response, 3) == events[:3]
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    assert sim.calls()["calls"][0]["statuses"] == {"200": 1, "cut": 1}


@pytest.mark.parametrize("fmt", list(FORMATS))
async def test_cut_before_the_first_event(sim: SimServer, http: aiohttp.ClientSession, fmt: str) -> None:
    sim.add_faults([fault(fmt, "cut")])
    async with stream(http, sim, fmt) as response:
        assert response.status == 200  # the headers went out: the failure is in the body
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()


@pytest.mark.parametrize("fmt", list(FORMATS))
async def test_stall_goes_quiet_then_continues(sim: SimServer, http: aiohttp.ClientSession, fmt: str) -> None:
    events = await whole(http, sim, fmt)
    sim.add_faults([fault(fmt, "stall", after_chunks=2, stall_s=0.3)])
    async with stream(http, sim, fmt) as response:
        assert await read_events(response, 2) == events[:2]
        quiet_from = time.monotonic()
        rest = await response.read()
        assert time.monotonic() - quiet_from >= 0.25
    assert split(rest) == events[2:]


@pytest.mark.parametrize("fmt", list(FORMATS))
async def test_stall_then_close(sim: SimServer, http: aiohttp.ClientSession, fmt: str) -> None:
    events = await whole(http, sim, fmt)
    sim.add_faults([fault(fmt, "stall", after_chunks=1, stall_s=0.2, stall_then="close")])
    async with stream(http, sim, fmt) as response:
        assert await read_events(response, 1) == events[:1]
        quiet_from = time.monotonic()
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
        assert time.monotonic() - quiet_from >= 0.15


async def test_a_long_stall_lets_go_when_the_client_leaves(
    sim: SimServer, http: aiohttp.ClientSession
) -> None:
    sim.add_faults([fault("openai", "stall", after_chunks=1, stall_s=3600)])
    async with stream(http, sim, "openai") as response:
        await read_events(response, 1)
        response.close()
    await asyncio.wait_for(sim.close(), 3)  # nothing held the server hostage


# the error event each format sends for an injected status, and what it says
ERROR_EVENTS = {
    "openai": (
        503,
        lambda e: orjson.loads(e.removeprefix(b"data: "))["error"]["code"],
        "service_unavailable",
    ),
    "anthropic": (
        529,
        lambda e: (
            orjson.loads(e.split(b"data: ", 1)[1])["error"]["type"]
            if e.startswith(b"event: error\n")
            else None
        ),
        "overloaded_error",
    ),
    "gemini": (503, lambda e: orjson.loads(e.removeprefix(b"data: "))["error"]["status"], "UNAVAILABLE"),
}


@pytest.mark.parametrize("fmt", list(FORMATS))
async def test_stream_error_sends_the_formats_error_event_and_ends(
    sim: SimServer, http: aiohttp.ClientSession, fmt: str
) -> None:
    status, read, expected = ERROR_EVENTS[fmt]
    events = await whole(http, sim, fmt)
    sim.add_faults([fault(fmt, "stream_error", after_chunks=3, status=status)])
    async with stream(http, sim, fmt) as response:
        got = split(await response.read())  # a clean end of the body: the error event is the last word
    assert got[:3] == events[:3] and len(got) == 4
    assert read(got[3]) == expected
    assert sim.calls()["calls"][0]["statuses"] == {"200": 1, "stream_error": 1}


async def test_stream_error_with_a_vendor_code(sim: SimServer, http: aiohttp.ClientSession) -> None:
    sim.add_faults([fault("openai", "stream_error", status=429, error_code="rate_limit_exceeded")])
    async with stream(http, sim, "openai") as response:
        (event,) = split(await response.read())
    assert orjson.loads(event.removeprefix(b"data: "))["error"]["code"] == "rate_limit_exceeded"


async def test_stream_faults_pass_plain_requests_by(sim: SimServer, http: aiohttp.ClientSession) -> None:
    sim.add_faults([fault("openai", "cut", count=1)])
    async with stream(http, sim, "openai", stream=False, stream_options=None) as response:
        assert response.status == 200 and response.content_type == "application/json"
        await response.json()
    assert sim.state.faults.describe()[0]["fired"] == 0  # its one use is still there for a stream
    async with stream(http, sim, "openai") as response:
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()


async def test_stream_faults_are_keyed_by_credential_and_model(
    sim: SimServer, http: aiohttp.ClientSession
) -> None:
    sim.add_faults([fault("openai", "cut"), FaultRule(kind="cut", credential="sk-other")])
    async with stream(http, sim, "openai", model="gpt-4o") as response:  # same key, another model
        events = split(await response.read())
    assert FORMATS["openai"].terminal in events[-1]


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize(
    ("kind", "fields"), [("status", {"status": 429}), ("reset", {}), ("hang", {"hang_s": 0.1})]
)
async def test_faults_before_the_stream_still_work(
    sim: SimServer, http: aiohttp.ClientSession, fmt: str, kind: str, fields: dict[str, Any]
) -> None:
    sim.add_faults([fault(fmt, kind, **fields)])
    if kind == "status":
        async with stream(http, sim, fmt) as response:
            assert response.status == 429 and response.content_type == "application/json"
            assert "error" in await response.json()
        return
    with pytest.raises(aiohttp.ClientConnectionError):
        async with stream(http, sim, fmt) as response:
            await response.read()


@pytest.mark.parametrize("fmt", list(FORMATS))
async def test_malformed_stream_has_a_broken_first_event(
    sim: SimServer, http: aiohttp.ClientSession, fmt: str
) -> None:
    sim.add_faults([fault(fmt, "malformed")])
    async with stream(http, sim, fmt) as response:
        assert response.status == 200 and response.content_type == "text/event-stream"
        (event,) = split(await response.read())
    data = event.split(b"data: ", 1)[1]
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(data)


@pytest.mark.parametrize("fmt", ["anthropic", "gemini"])
async def test_content_filter_on_a_stream_is_an_event_stream(
    sim: SimServer, http: aiohttp.ClientSession, fmt: str
) -> None:
    sim.add_faults([fault(fmt, "content_filter")])
    async with stream(http, sim, fmt) as response:
        assert response.content_type == "text/event-stream"
        raw = await response.read()
    assert (b'"stop_reason":"refusal"' if fmt == "anthropic" else b'"blockReason":"SAFETY"') in raw


async def test_gemini_stream_without_sse_is_one_json_array(
    sim: SimServer, http: aiohttp.ClientSession
) -> None:
    events = await whole(http, sim, "gemini")
    spec = FORMATS["gemini"]
    url = sim.url + spec.path.removesuffix("?alt=sse")
    async with http.post(url, json=spec.body, headers=spec.headers) as response:
        assert response.content_type == "application/json"
        array = orjson.loads(await response.read())
    assert array == [orjson.loads(e.removeprefix(b"data: ")) for e in events]


async def test_control_api_takes_the_new_kinds(sim: SimServer, http: aiohttp.ClientSession) -> None:
    rule = {"kind": "stall", "after_chunks": 2, "stall_s": 1.5, "stall_then": "close"}
    async with http.post(f"{sim.url}/_sim/faults", json={"rules": [rule]}) as response:
        assert response.status == 200
        (described,) = (await response.json())["rules"]
    assert {k: described[k] for k in rule} == rule
    bad = {"kind": "cut", "after_chunks": -1}
    async with http.post(f"{sim.url}/_sim/faults", json={"rules": [bad]}) as response:
        assert response.status == 400
