"""Strict request validation: what OpenAI refuses, the simulator refuses, with the same shape."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from llm_router.simulator import SimConfig, SimServer, start_simulator

Chat = Callable[..., Awaitable[Any]]  # the `chat` fixture; returns a read reply
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}


def user(text: str = "Hello there") -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def body(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": user(), **extra}


def without(key: str) -> dict[str, Any]:
    request = body()
    del request[key]
    return request


# (case, request body, expected error.param, expected error.code or ... for "don't care")
INVALID: list[tuple[str, Any, str | None, Any]] = [
    ("not an object", [1, 2], None, ...),
    ("missing model", without("model"), "model", "missing_required_parameter"),
    ("empty model", body(model=""), "model", ...),
    ("model not a string", body(model=4), "model", "invalid_type"),
    ("missing messages", without("messages"), "messages", "missing_required_parameter"),
    ("empty messages", body(messages=[]), "messages", "empty_array"),
    ("messages not a list", body(messages="hi"), "messages", "invalid_type"),
    ("message not an object", body(messages=["hi"]), "messages[0]", "invalid_type"),
    ("missing role", body(messages=[{"content": "hi"}]), "messages[0].role", "missing_required_parameter"),
    ("bad role", body(messages=[{"role": "robot", "content": "x"}]), "messages[0].role", "invalid_value"),
    (
        "missing content",
        body(messages=[{"role": "user"}]),
        "messages[0].content",
        "missing_required_parameter",
    ),
    (
        "null user content",
        body(messages=[{"role": "user", "content": None}]),
        "messages[0].content",
        "invalid_type",
    ),
    (
        "content a number",
        body(messages=[{"role": "user", "content": 5}]),
        "messages[0].content",
        "invalid_type",
    ),
    ("empty parts", body(messages=[{"role": "user", "content": []}]), "messages[0].content", "empty_array"),
    (
        "bad part type",
        body(messages=[{"role": "user", "content": [{"type": "video", "video": {}}]}]),
        "messages[0].content[0].type",
        "invalid_value",
    ),
    (
        "text part without text",
        body(messages=[{"role": "user", "content": [{"type": "text"}]}]),
        "messages[0].content[0].text",
        "missing_required_parameter",
    ),
    (
        "image_url as a string",
        body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": "http://x/y.png"}]}]),
        "messages[0].content[0].image_url",
        "invalid_type",
    ),
    (
        "image in a system message",
        body(messages=[{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]),
        "messages[0].content[0].type",
        "invalid_value",
    ),
    (
        "unknown message key",
        body(messages=[{"role": "user", "content": "hi", "cache_control": {"type": "ephemeral"}}]),
        "messages[0].cache_control",
        ...,
    ),
    (
        "tool message without tool_call_id",
        body(
            messages=[*user(), {"role": "assistant", "tool_calls": [CALL]}, {"role": "tool", "content": "1"}]
        ),
        "messages[2].tool_call_id",
        "missing_required_parameter",
    ),
    (
        "tool result without a preceding call",
        body(messages=[*user(), {"role": "tool", "tool_call_id": "call_1", "content": "1"}]),
        "messages[1].role",
        ...,
    ),
    (
        "tool call never answered",
        body(messages=[*user(), {"role": "assistant", "tool_calls": [CALL]}, *user("and?")]),
        "messages[1].tool_calls",
        ...,
    ),
    (
        "tool call arguments as an object",
        body(
            messages=[
                *user(),
                {
                    "role": "assistant",
                    "tool_calls": [{**CALL, "function": {"name": "lookup", "arguments": {}}}],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "1"},
            ]
        ),
        "messages[1].tool_calls[0].function.arguments",
        "invalid_type",
    ),
    (
        "empty tool_calls",
        body(messages=[*user(), {"role": "assistant", "content": "x", "tool_calls": []}]),
        "messages[1].tool_calls",
        "empty_array",
    ),
    (
        "assistant without content or calls",
        body(messages=[*user(), {"role": "assistant", "content": None}, *user()]),
        "messages[1].content",
        "invalid_type",
    ),
    ("temperature too high", body(temperature=2.5), "temperature", "decimal_above_max_value"),
    ("temperature a string", body(temperature="hot"), "temperature", "invalid_type"),
    ("temperature a boolean", body(temperature=True), "temperature", "invalid_type"),
    ("top_p above 1", body(top_p=1.5), "top_p", "decimal_above_max_value"),
    ("n zero", body(n=0), "n", "integer_below_min_value"),
    ("n a float", body(n=1.5), "n", "invalid_type"),
    ("max_tokens zero", body(max_tokens=0), "max_tokens", "integer_below_min_value"),
    (
        "max_completion_tokens a string",
        body(max_completion_tokens="9"),
        "max_completion_tokens",
        "invalid_type",
    ),
    ("stop too long", body(stop=["a", "b", "c", "d", "e"]), "stop", "array_above_max_length"),
    ("stop a number", body(stop=3), "stop", "invalid_type"),
    ("frequency_penalty low", body(frequency_penalty=-3), "frequency_penalty", "decimal_below_min_value"),
    ("presence_penalty high", body(presence_penalty=2.1), "presence_penalty", "decimal_above_max_value"),
    ("unknown argument", body(foo=1), "foo", None),
    ("openrouter-only argument", body(provider={"order": ["x"]}), "provider", None),
    ("stream not a boolean", body(stream="yes"), "stream", "invalid_type"),
    ("stream_options without stream", body(stream_options={"include_usage": True}), "stream_options", ...),
    ("stream_options unknown key", body(stream=True, stream_options={"x": True}), "stream_options.x", None),
    ("empty tools", body(tools=[]), "tools", "empty_array"),
    ("tool without type", body(tools=[{"function": TOOL["function"]}]), "tools[0].type", ...),
    (
        "tool with a bad name",
        body(tools=[{"type": "function", "function": {"name": "a b"}}]),
        "tools[0].function.name",
        ...,
    ),
    (
        "tool parameters a string",
        body(tools=[{"type": "function", "function": {"name": "x", "parameters": "{}"}}]),
        "tools[0].function.parameters",
        "invalid_type",
    ),
    ("tool_choice without tools", body(tool_choice="auto"), "tool_choice", ...),
    ("tool_choice bad string", body(tools=[TOOL], tool_choice="always"), "tool_choice", "invalid_value"),
    (
        "tool_choice names an unknown tool",
        body(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "other"}}),
        "tool_choice",
        ...,
    ),
    ("parallel_tool_calls without tools", body(parallel_tool_calls=True), "parallel_tool_calls", ...),
    ("function_call without functions", body(function_call="auto"), "function_call", ...),
    (
        "response_format bad type",
        body(response_format={"type": "xml"}),
        "response_format.type",
        "invalid_value",
    ),
    ("response_format a string", body(response_format="json"), "response_format", "invalid_type"),
    ("json_object without the word json", body(response_format={"type": "json_object"}), "messages", ...),
    (
        "json_schema without a name",
        body(response_format={"type": "json_schema", "json_schema": {"schema": {}}}),
        "response_format.json_schema.name",
        "missing_required_parameter",
    ),
    ("seed a string", body(seed="7"), "seed", "invalid_type"),
    ("user a number", body(user=7), "user", "invalid_type"),
    ("top_logprobs without logprobs", body(top_logprobs=3), "top_logprobs", ...),
    ("reasoning_effort unknown", body(reasoning_effort="extreme"), "reasoning_effort", "invalid_value"),
]


@pytest.mark.parametrize(
    ("request_body", "param", "code"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
async def test_invalid_requests_get_openai_400(
    chat: Chat, request_body: Any, param: str | None, code: Any
) -> None:
    reply = await chat(request_body)
    assert reply.status == 400, reply.body
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert isinstance(error["message"], str) and error["message"]
    if code is not ...:
        assert error["code"] == code


async def test_unrecognized_argument_message(chat: Chat) -> None:
    error = (await chat(body(foo=1))).json()["error"]
    assert error["message"] == "Unrecognized request argument supplied: foo"


async def test_body_that_is_not_json(sim: SimServer, http: aiohttp.ClientSession) -> None:
    async with http.post(
        f"{sim.url}/v1/chat/completions", data=b"{nope", headers={"Authorization": "Bearer k"}
    ) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["type"] == "invalid_request_error" and "JSON" in error["message"]


@pytest.mark.parametrize("key", [None, "", "   "])
async def test_missing_key_is_401(chat: Chat, key: str | None) -> None:
    reply = await chat(body(), key=key)
    assert reply.status == 401
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and "API key" in error["message"]


async def test_auth_is_checked_before_the_body(chat: Chat) -> None:
    assert (await chat(body(foo=1), key=None)).status == 401


async def test_models_endpoint_needs_a_key(sim: SimServer, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{sim.url}/v1/models") as response:
        assert response.status == 401


async def test_unknown_model_is_404_when_models_are_configured(http: aiohttp.ClientSession) -> None:
    async with await start_simulator(SimConfig(models=["gpt-4o-mini", "gpt-4o"])) as sim:
        headers = {"Authorization": "Bearer k"}
        url = f"{sim.url}/v1/chat/completions"
        async with http.post(url, json=body(model="gpt-9"), headers=headers) as response:
            assert response.status == 404
            error = (await response.json())["error"]
        async with http.post(url, json=body(model="gpt-4o"), headers=headers) as response:
            assert response.status == 200
        async with http.get(f"{sim.url}/v1/models", headers=headers) as response:
            listed = [m["id"] for m in (await response.json())["data"]]
    assert error["code"] == "model_not_found" and "gpt-9" in error["message"]
    assert listed == ["gpt-4o-mini", "gpt-4o"]


# Requests OpenAI accepts must pass too: strictness must not reject what is valid.
VALID: dict[str, dict[str, Any]] = {
    "nulls mean not given": body(temperature=None, tools=None, stop=None, n=None, user=None),
    "developer and named messages": body(
        messages=[{"role": "developer", "content": "rules"}, {"role": "user", "content": "hi", "name": "ann"}]
    ),
    "full tool round trip": body(
        tools=[TOOL],
        tool_choice="auto",
        parallel_tool_calls=False,
        messages=[
            *user(),
            {"role": "assistant", "content": None, "tool_calls": [CALL, {**CALL, "id": "call_2"}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "one"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "two"}]},
            {"role": "assistant", "content": "done"},
            *user("thanks"),
        ],
    ),
    "legacy function turn": body(
        functions=[TOOL["function"]],
        function_call={"name": "lookup"},
        messages=[
            *user(),
            {"role": "assistant", "content": None, "function_call": {"name": "lookup", "arguments": "{}"}},
            {"role": "function", "name": "lookup", "content": "42"},
        ],
    ),
    "well-known extras": body(
        logprobs=True,
        top_logprobs=2,
        logit_bias={"50256": -100},
        reasoning_effort="low",
        service_tier="auto",
        metadata={"k": "v"},
        store=False,
        seed=1,
        max_completion_tokens=50,
        stream=False,
    ),
    "audio and file parts": body(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
                    {"type": "file", "file": {"file_id": "file-1"}},
                ],
            }
        ]
    ),
}


@pytest.mark.parametrize("name", list(VALID))
async def test_valid_requests_are_accepted(chat: Chat, name: str) -> None:
    reply = await chat(VALID[name])
    assert reply.status == 200, reply.body
