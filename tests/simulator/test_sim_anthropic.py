"""The simulator's Anthropic Messages format: the official ``anthropic`` SDK against it, strict
validation in Anthropic's wording, its error bodies, faults by credential and model, prompt caching.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import anthropic
import orjson
import pytest

from llm_router.simulator import FaultRule, SimServer
from llm_router.simulator.tokens import count_text_tokens

KEY = "sk-ant-sim-test"
PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
WEATHER = {
    "name": "get_weather",
    "description": "Get the current weather in a given location",
    "input_schema": {
        "type": "object",
        "properties": {"location": {"type": "string"}},
        "required": ["location"],
    },
}


def client(sim: SimServer, key: str = KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=sim.url, api_key=key, max_retries=0)


async def create(sim: SimServer, key: str = KEY, **kwargs: Any) -> Any:
    """The sync SDK call, off the event loop that runs the in-process simulator."""
    kwargs.setdefault("model", "claude-sonnet-4-6")
    kwargs.setdefault("max_tokens", 256)
    return await asyncio.to_thread(client(sim, key).messages.create, **kwargs)


async def post(
    http: aiohttp.ClientSession, sim: SimServer, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    if headers is None:
        headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    async with http.post(f"{sim.url}/v1/messages", json=body, headers=headers) as resp:
        return resp.status, orjson.loads(await resp.read())


async def test_sdk_message_create_parses_a_deterministic_answer(sim: SimServer) -> None:
    messages = [{"role": "user", "content": "Hello, Claude"}]
    first = await create(sim, messages=messages)
    again = await create(sim, messages=messages)
    assert isinstance(first, anthropic.types.Message)
    assert first.content[0].type == "text" and first.content[0].text == again.content[0].text
    assert first.stop_reason == "end_turn" and first.role == "assistant"
    # the documented token rule: 3 priming + 4 per message + text
    assert first.usage.input_tokens == 3 + 4 + count_text_tokens("Hello, Claude")
    assert first.usage.output_tokens == count_text_tokens(first.content[0].text)
    assert sim.calls()["calls"] == [
        {"credential": KEY, "model": "claude-sonnet-4-6", "count": 2, "statuses": {"200": 2}}
    ]


async def test_sdk_tool_use_round_trip(sim: SimServer) -> None:
    ask = [{"role": "user", "content": "What is the weather like in San Francisco?"}]
    first = await create(sim, tools=[WEATHER], messages=ask)
    assert first.stop_reason == "tool_use"
    use = first.content[-1]
    assert use.type == "tool_use" and use.name == "get_weather" and isinstance(use.input["location"], str)
    follow = [
        *ask,
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "15 degrees"}],
        },
    ]
    second = await create(sim, tools=[WEATHER], messages=follow)
    assert second.stop_reason == "end_turn" and second.content[0].type == "text"


async def test_sdk_image_and_thinking_and_stop_sequence(sim: SimServer) -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}}
    answer = await create(
        sim,
        max_tokens=2048,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": [image, {"type": "text", "text": "Describe this image."}]}],
    )
    kinds = [b.type for b in answer.content]
    assert kinds == ["thinking", "text"]
    thought, text = answer.content
    assert answer.usage.output_tokens == count_text_tokens(thought.thinking) + count_text_tokens(text.text)
    assert answer.usage.input_tokens == 3 + 4 + 765 + count_text_tokens("Describe this image.")
    cut = await create(sim, stop_sequences=["reply"], messages=[{"role": "user", "content": "Hello, Claude"}])
    assert cut.stop_reason == "stop_sequence" and cut.stop_sequence == "reply"
    assert cut.content[0].text == "Simulated "


async def test_sdk_stream_carries_the_same_answer(sim: SimServer) -> None:
    messages = [{"role": "user", "content": "stream please"}]
    plain = await create(sim, messages=messages)

    def stream() -> Any:
        with client(sim).messages.stream(model="claude-sonnet-4-6", max_tokens=256, messages=messages) as s:
            return s.get_final_message()

    streamed = await asyncio.to_thread(stream)
    assert streamed.content[0].text == plain.content[0].text
    assert streamed.usage.output_tokens == plain.usage.output_tokens


async def test_prompt_caching_writes_then_reads(sim: SimServer) -> None:
    system = [{"type": "text", "text": "policy " * 1200, "cache_control": {"type": "ephemeral"}}]
    messages = [{"role": "user", "content": "question one"}]
    first = await create(sim, system=system, messages=messages)
    second = await create(sim, system=system, messages=[{"role": "user", "content": "question two"}])
    prefix = 3 + 4 + count_text_tokens("policy " * 1200)
    assert (first.usage.cache_creation_input_tokens, first.usage.cache_read_input_tokens) == (prefix, 0)
    assert (second.usage.cache_creation_input_tokens, second.usage.cache_read_input_tokens) == (0, prefix)
    assert second.usage.input_tokens == 4 + count_text_tokens("question two")
    other_key = await create(sim, key="sk-other", system=system, messages=messages)
    assert other_key.usage.cache_read_input_tokens == 0  # caches are per key


async def test_sdk_version_refuses_sampling_parameters(sim: SimServer) -> None:
    # the SDK sends anthropic-version 2026-10-21, where temperature is no longer a request field
    with pytest.raises(anthropic.BadRequestError) as info:
        await create(sim, messages=[{"role": "user", "content": "hi"}], extra_body={"temperature": 0.5})
    assert info.value.body["error"] == {
        "type": "invalid_request_error",
        "message": "temperature: Extra inputs are not permitted",
    }


async def test_injected_faults_by_credential_and_model_take_anthropics_shape(sim: SimServer) -> None:
    sim.add_faults(
        [
            FaultRule(credential="sk-busy", model="claude-opus-4-1", kind="status", status=529),
            FaultRule(credential="sk-slow", kind="status", status=429, retry_after=7),
        ]
    )
    with pytest.raises(anthropic.APIStatusError) as info:
        await create(
            sim, key="sk-busy", model="claude-opus-4-1", messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.status_code == 529
    assert info.value.body["error"] == {"type": "overloaded_error", "message": "Overloaded"}
    ok = await create(
        sim, key="sk-busy", model="claude-haiku-4-5", messages=[{"role": "user", "content": "hi"}]
    )
    assert ok.stop_reason == "end_turn"
    with pytest.raises(anthropic.RateLimitError) as limited:
        await create(sim, key="sk-slow", messages=[{"role": "user", "content": "hi"}])
    assert limited.value.response.headers["retry-after"] == "7"


async def test_content_filter_fault_is_a_refusal(sim: SimServer) -> None:
    sim.add_faults([FaultRule(kind="content_filter")])
    answer = await create(sim, messages=[{"role": "user", "content": "hi"}])
    assert (answer.stop_reason, answer.content) == ("refusal", [])


USER = [{"role": "user", "content": "hi"}]
BASE = {"model": "claude-sonnet-4-6", "max_tokens": 10, "messages": USER}
TOOL_TURN = [
    {"role": "user", "content": "weather?"},
    {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}],
    },
]
# (body, message): Anthropic's "<path>: <problem>" wording
INVALID = [
    ({"model": "claude-sonnet-4-6", "messages": USER}, "max_tokens: Field required"),
    ({**BASE, "max_tokens": "10"}, "max_tokens: Input should be a valid integer"),
    ({**BASE, "temperature": 1.5}, "temperature: Input should be less than or equal to 1"),
    ({**BASE, "n": 2}, "n: Extra inputs are not permitted"),
    ({**BASE, "messages": []}, "messages: at least one message is required"),
    (
        {**BASE, "messages": [{"role": "system", "content": "x"}]},
        "messages.0.role: Input should be 'user', 'assistant'",
    ),
    (
        {**BASE, "messages": [{"role": "user", "content": ""}]},
        "messages.0: all messages must have non-empty content except for the optional final "
        "assistant message",
    ),
    (
        {
            **BASE,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/bmp", "data": "AA=="},
                        }
                    ],
                }
            ],
        },
        "messages.0.content.0.source.media_type: Input should be "
        "'image/jpeg', 'image/png', 'image/gif', 'image/webp'",
    ),
    (
        {
            **BASE,
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x"}}]}
            ],
        },
        "messages.0.content.0.type: Input tag 'image_url' found using 'type' does not match any of the "
        "expected tags for role 'user': 'text', 'image', 'document', 'tool_result', 'search_result'",
    ),
    (
        {**BASE, "tools": [WEATHER], "messages": [*TOOL_TURN, {"role": "user", "content": "and?"}]},
        "messages.2: `tool_use` ids were found without `tool_result` blocks immediately after: toolu_1. Each "
        "`tool_use` block must have a corresponding `tool_result` block in the next message.",
    ),
    (
        {
            **BASE,
            "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_9"}]}],
        },
        "messages.0.content.0: unexpected `tool_use_id` found in `tool_result` blocks: toolu_9. Each "
        "`tool_result` block must have a corresponding `tool_use` block in the previous message.",
    ),
    ({**BASE, "tools": [{"name": "f"}]}, "tools.0.input_schema: Field required"),
    (
        {**BASE, "tool_choice": {"type": "any"}},
        "tool_choice: tool_choice may only be specified while providing tools.",
    ),
    (
        {**BASE, "thinking": {"type": "enabled", "budget_tokens": 2000}},
        "max_tokens: `max_tokens` must be greater than `thinking.budget_tokens`.",
    ),
]


@pytest.mark.parametrize(("body", "message"), INVALID)
async def test_strict_validation_answers_400_invalid_request_error(
    sim: SimServer, http: aiohttp.ClientSession, body: dict, message: str
) -> None:
    status, data = await post(http, sim, body)
    assert status == 400
    assert data["type"] == "error" and data["request_id"].startswith("req_")
    assert data["error"] == {"type": "invalid_request_error", "message": message}


async def test_key_and_version_headers_are_required(sim: SimServer, http: aiohttp.ClientSession) -> None:
    status, data = await post(http, sim, BASE, headers={"anthropic-version": "2023-06-01"})
    assert (status, data["error"]["type"]) == (401, "authentication_error")
    status, data = await post(http, sim, BASE, headers={"x-api-key": KEY})
    assert (status, data["error"]["message"]) == (400, "anthropic-version: header is required")
    status, _ = await post(
        http, sim, BASE, headers={"Authorization": f"Bearer {KEY}", "anthropic-version": "2023-06-01"}
    )
    assert status == 200
