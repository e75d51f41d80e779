"""The simulator's failover faults and its prefill, as a real client sees them (in-process simulator)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from llm_router.simulator import FaultRule, SimServer, start_simulator

HI = [{"role": "user", "content": "tell me about prefills"}]
OPENAI = {"Authorization": "Bearer sk-test"}
ANTHROPIC = {"x-api-key": "sk-test", "anthropic-version": "2023-06-01"}
GEMINI = {"x-goog-api-key": "sk-test"}


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    server = await start_simulator()
    yield server
    await server.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(
    http: aiohttp.ClientSession, sim: SimServer, path: str, body: dict[str, Any], headers: dict[str, str]
) -> tuple[int, Any]:
    async with http.post(f"{sim.url}{path}", json=body, headers=headers) as r:
        raw = await r.read()
        return r.status, (orjson.loads(raw) if r.content_type == "application/json" else raw)


def openai_text(data: Any) -> str:
    return data["choices"][0]["message"]["content"]


async def test_a_prefix_message_is_continued_to_the_answer_it_would_have_been(http, sim) -> None:
    body = {"model": "gpt-4o", "messages": HI}
    _, whole = await post(http, sim, "/v1/chat/completions", body, OPENAI)
    text = openai_text(whole)
    prefill = {"role": "assistant", "content": text[:30], "prefix": True}
    _, rest = await post(http, sim, "/v1/chat/completions", {**body, "messages": [*HI, prefill]}, OPENAI)
    assert text[:30] + openai_text(rest) == text
    # without the flag, OpenAI's format has no prefill: a final assistant message is just history
    plain = {**prefill, "prefix": False}
    _, again = await post(http, sim, "/v1/chat/completions", {**body, "messages": [*HI, plain]}, OPENAI)
    assert openai_text(again) != text[30:]


async def test_anthropic_continues_a_final_assistant_message_and_refuses_it_as_anthropic_does(
    http, sim
) -> None:
    body = {"model": "claude-sim", "max_tokens": 200, "messages": HI}
    _, whole = await post(http, sim, "/v1/messages", body, ANTHROPIC)
    text = whole["content"][0]["text"]
    cut = text.index(" ", 20)  # the prefill ends just before a space
    turn = {"role": "assistant", "content": text[:cut]}
    _, rest = await post(http, sim, "/v1/messages", {**body, "messages": [*HI, turn]}, ANTHROPIC)
    assert text[:cut] + rest["content"][0]["text"] == text
    spaced = {"role": "assistant", "content": text[: cut + 1]}
    status, error = await post(http, sim, "/v1/messages", {**body, "messages": [*HI, spaced]}, ANTHROPIC)
    assert status == 400 and "trailing whitespace" in error["error"]["message"]
    thinking = {**body, "max_tokens": 4000, "thinking": {"type": "enabled", "budget_tokens": 1024}}
    status, _ = await post(http, sim, "/v1/messages", {**thinking, "messages": [*HI, turn]}, ANTHROPIC)
    assert status == 400


async def test_gemini_continues_a_final_model_turn(http, sim) -> None:
    path = "/v1beta/models/gemini-sim:generateContent"
    contents = [{"role": "user", "parts": [{"text": "tell me about prefills"}]}]
    _, whole = await post(http, sim, path, {"contents": contents}, GEMINI)
    text = whole["candidates"][0]["content"]["parts"][0]["text"]
    turn = {"role": "model", "parts": [{"text": text[:25]}]}
    _, rest = await post(http, sim, path, {"contents": [*contents, turn]}, GEMINI)
    assert text[:25] + rest["candidates"][0]["content"]["parts"][0]["text"] == text


async def test_refuse_prefill_answers_only_a_prefilled_request(http, sim) -> None:
    sim.add_faults([FaultRule(kind="refuse_prefill")])
    body = {"model": "claude-sim", "max_tokens": 200, "messages": HI}
    status, _ = await post(http, sim, "/v1/messages", body, ANTHROPIC)
    assert status == 200
    turn = {"role": "assistant", "content": "Simulated"}
    status, error = await post(http, sim, "/v1/messages", {**body, "messages": [*HI, turn]}, ANTHROPIC)
    assert status == 400 and "does not support assistant message prefill" in error["error"]["message"]


async def test_a_malformed_event_goes_in_and_the_stream_goes_on(http, sim) -> None:
    body = {"model": "gpt-4o", "messages": HI, "stream": True}
    _, clean = await post(http, sim, "/v1/chat/completions", body, OPENAI)
    sim.add_faults([FaultRule(kind="malformed_event", after_chunks=2)])
    _, spoiled = await post(http, sim, "/v1/chat/completions", body, OPENAI)
    events = spoiled.split(b"\n\n")
    assert events[2].startswith(b'data: {"id": "chatcmpl-garbled"')  # after two intact events
    assert spoiled.replace(events[2] + b"\n\n", b"") == clean  # the rest intact


@pytest.mark.parametrize(
    ("rule", "streamed_hit", "plain_hit"),
    [
        ({"kind": "status", "status": 503, "stream": True}, True, False),
        ({"kind": "status", "status": 503, "stream": False}, False, True),
        ({"kind": "status", "status": 503}, True, True),
        ({"kind": "cut", "after_chunks": 1}, True, False),  # a stream fault passes plain requests by
    ],
)
async def test_the_stream_matcher(
    http, sim, rule: dict[str, Any], streamed_hit: bool, plain_hit: bool
) -> None:
    sim.add_faults([FaultRule(**rule)])
    body = {"model": "gpt-4o", "messages": HI}
    plain, _ = await post(http, sim, "/v1/chat/completions", body, OPENAI)
    assert (plain != 200) == plain_hit
    async with http.post(
        f"{sim.url}/v1/chat/completions", json={**body, "stream": True}, headers=OPENAI
    ) as r:
        try:
            raw = await r.read()
            hit = r.status != 200 or not raw.endswith(b"data: [DONE]\n\n")
        except aiohttp.ClientPayloadError:
            hit = True
    assert hit == streamed_hit


async def test_stream_faults_aimed_at_plain_requests_spoil_the_body(http, sim) -> None:
    body = {"model": "gpt-4o", "messages": HI}
    sim.add_faults([FaultRule(kind="cut", stream=False, count=1)])
    with pytest.raises(aiohttp.ClientPayloadError):
        await post(http, sim, "/v1/chat/completions", body, OPENAI)
    sim.add_faults([FaultRule(kind="stall", stream=False, stall_s=0.3, count=1)])
    t0 = time.monotonic()
    status, data = await post(http, sim, "/v1/chat/completions", body, OPENAI)
    assert status == 200 and openai_text(data) and time.monotonic() - t0 >= 0.3  # late, then whole
    sim.add_faults([FaultRule(kind="malformed_event", stream=False, count=1)])
    async with http.post(f"{sim.url}/v1/chat/completions", json=body, headers=OPENAI) as r:
        with pytest.raises(ValueError):
            orjson.loads(await r.read())
