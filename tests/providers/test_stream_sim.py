"""Streams against the simulator: for every format and a table of requests, the completion assembled
from the simulator's event stream equals ``parse_response`` of its plain answer to the same request
(ids and ``created`` aside), and every chunk published on the way is a valid OpenAI chunk."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from config.catalog import Deployment
from config.cost import FREE
from llm_router.simulator import FaultRule, SimServer, start_simulator
from worker.providers import ADAPTERS
from worker.providers.base import Completion, HttpCall
from worker.providers.sse import SSEDecoder
from worker.providers.stream import ChunkAssembler, completion_chunks

KEY = "sk-stream-test"
WEATHER = {
    "name": "get_weather",
    "description": "Get the current weather in a given location",
    "parameters": {
        "type": "object",
        "properties": {"location": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
        "required": ["location", "unit"],
    },
}
ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]
CALLED = [
    *ASK,
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees and sunny"},
]
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}

# name → (formats it applies to, request)
REQUESTS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "text": (("openai", "anthropic", "gemini"), {"messages": ASK}),
    "system and sampling": (
        ("openai", "anthropic", "gemini"),
        {"messages": [{"role": "system", "content": "Be brief."}, *ASK], "temperature": 0.2, "top_p": 0.9},
    ),
    "tool call": (
        ("openai", "anthropic", "gemini"),
        {"messages": ASK, "tools": [{"type": "function", "function": WEATHER}]},
    ),
    "tool result answered": (
        ("openai", "anthropic", "gemini"),
        {"messages": CALLED, "tools": [{"type": "function", "function": WEATHER}]},
    ),
    "legacy functions": (("openai", "anthropic", "gemini"), {"messages": ASK, "functions": [WEATHER]}),
    "max tokens cut": (("openai", "anthropic", "gemini"), {"messages": ASK, "max_tokens": 5}),
    "stop sequence": (("openai", "anthropic", "gemini"), {"messages": ASK, "stop": ["reply"]}),
    "json schema": (
        ("openai", "anthropic", "gemini"),
        {
            "messages": ASK,
            "response_format": {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA}},
        },
    ),
    "two choices": (("openai", "gemini"), {"messages": ASK, "n": 2}),
    "reasoning": (("anthropic", "gemini"), {"messages": ASK, "reasoning_effort": "low"}),
}
CASES = [(fmt, name) for name, (formats, _) in REQUESTS.items() for fmt in formats]


@pytest.fixture(scope="module")
async def local_sim() -> AsyncIterator[SimServer]:
    server = await start_simulator()
    yield server
    await server.close()


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def deployment(fmt: str, sim: SimServer) -> Deployment:
    model, base = {
        "openai": ("gpt-4o-mini", f"{sim.url}/v1"),
        "anthropic": ("claude-sonnet-4-5", sim.url),
        "gemini": ("gemini-2.5-flash", sim.url),
    }[fmt]
    return Deployment(
        id=f"{fmt}/{model}",
        provider=fmt,
        format=fmt,  # type: ignore[arg-type]
        base_url=base,
        upstream_model=model,
        price=FREE,
        api_key=KEY,
        max_output=4096,
    )


async def send(http: aiohttp.ClientSession, call: HttpCall) -> tuple[int, dict[str, str], bytes]:
    async with http.request(call.method, call.url, data=call.body, headers=call.headers) as resp:
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.read()


async def plain_and_streamed(
    http: aiohttp.ClientSession, sim: SimServer, fmt: str, request: dict[str, Any]
) -> tuple[Completion, Any, list[dict[str, Any]]]:
    adapter: Any = ADAPTERS[fmt]
    dep = deployment(fmt, sim)
    status, headers, body = await send(http, adapter.build_request(request, dep))
    plain = adapter.parse_response(status, headers, body, request)
    status, headers, body = await send(http, adapter.build_stream_request(request, dep))
    assert status == 200 and headers["content-type"].startswith("text/event-stream"), body[:300]
    parser = adapter.stream_parser(request, dep)
    decoder = SSEDecoder()
    chunks: list[dict[str, Any]] = []
    for k in range(0, len(body), 37):  # the bytes as a network would hand them over: in odd pieces
        for event in decoder.feed(body[k : k + 37]):
            chunks += parser.feed(event)
    return plain, parser, chunks


def comparable(done: Completion) -> Completion:
    response = {k: v for k, v in done.response.items() if k not in ("id", "created")}
    return Completion(
        response,
        done.prompt_tokens,
        done.completion_tokens,
        done.cached_tokens,
        done.cache_write_tokens,
        done.reasoning_tokens,
    )


@pytest.mark.parametrize(("fmt", "name"), CASES)
async def test_streamed_completion_equals_the_plain_answer(
    local_sim: SimServer, http: aiohttp.ClientSession, fmt: str, name: str
) -> None:
    request = {"model": "m", **REQUESTS[name][1]}
    plain, parser, chunks = await plain_and_streamed(http, local_sim, fmt, request)
    assert parser.done and parser.started
    streamed = parser.completion()
    ChatCompletion.model_validate(streamed.response)
    for c in chunks:
        ChatCompletionChunk.model_validate(c)
    assert comparable(streamed) == comparable(plain)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == streamed.response["usage"]
    assert parser.partial_text() == (plain.response["choices"][0]["message"]["content"] or "")
    if "functions" in request:  # followers of a legacy request see function_call deltas too
        assert any("function_call" in c["choices"][0]["delta"] for c in chunks if c["choices"])


@pytest.mark.parametrize("fmt", ["openai", "anthropic", "gemini"])
async def test_completion_chunks_round_trip(
    local_sim: SimServer, http: aiohttp.ClientSession, fmt: str
) -> None:
    request = {"model": "m", "messages": ASK, "tools": [{"type": "function", "function": WEATHER}]}
    plain, _, _ = await plain_and_streamed(http, local_sim, fmt, request)
    assembler = ChunkAssembler()
    for c in completion_chunks(plain.response):
        ChatCompletionChunk.model_validate(c)
        assembler.add(c)
    assert assembler.completion() == plain


@pytest.mark.parametrize("fmt", ["openai", "anthropic", "gemini"])
async def test_simulated_cut_leaves_the_parser_unfinished(
    local_sim: SimServer, http: aiohttp.ClientSession, fmt: str
) -> None:
    adapter: Any = ADAPTERS[fmt]
    dep = deployment(fmt, local_sim)
    key = f"sk-cut-{fmt}"
    local_sim.add_faults([FaultRule(kind="cut", credential=key, after_chunks=4)])
    request = {"model": "m", "messages": ASK}
    call = adapter.build_stream_request(request, Deployment(**{**vars_of(dep), "api_key": key}))
    parser = adapter.stream_parser(request, dep)
    decoder = SSEDecoder()
    async with http.request(call.method, call.url, data=call.body, headers=call.headers) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            async for data in resp.content.iter_any():
                for event in decoder.feed(data):
                    parser.feed(event)
    assert not parser.done
    assert parser.partial_text()  # four events in, every format has said something


@pytest.mark.parametrize(
    ("fmt", "status", "code"),
    [("openai", 503, "overloaded"), ("anthropic", 529, "overloaded"), ("gemini", 429, "rate_limited")],
)
async def test_simulated_stream_error_is_classified(
    local_sim: SimServer, http: aiohttp.ClientSession, fmt: str, status: int, code: str
) -> None:
    adapter: Any = ADAPTERS[fmt]
    key = f"sk-err-{fmt}"
    local_sim.add_faults([FaultRule(kind="stream_error", credential=key, status=status, after_chunks=3)])
    dep = Deployment(**{**vars_of(deployment(fmt, local_sim)), "api_key": key})
    request = {"model": "m", "messages": ASK}
    status_, _, body = await send(http, adapter.build_stream_request(request, dep))
    assert status_ == 200
    parser = adapter.stream_parser(request, dep)
    with pytest.raises(Exception) as info:
        for event in SSEDecoder().feed(body):
            parser.feed(event)
    assert getattr(info.value, "code", None) == code
    assert not parser.done


def vars_of(dep: Deployment) -> dict[str, Any]:
    return {name: getattr(dep, name) for name in Deployment.__dataclass_fields__}
