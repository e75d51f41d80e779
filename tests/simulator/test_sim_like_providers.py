"""The simulator answers the way the providers' documented payloads do, in the fields clients trip
over when a test double leaves them out: OpenAI's ``refusal``/``annotations``, ``system_fingerprint``,
``service_tier``, usage details and the usage chunk only on request; Anthropic's ``ping`` events,
``thinking`` blocks and ``stop_sequence``; Gemini's ``usageMetadata`` (thoughts, cached counts),
``modelVersion`` and ``responseId``. Each is read through the official SDK's own types."""

from __future__ import annotations

from typing import Any

import orjson
from google import genai
from google.genai import types as gtypes
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from llm_router.simulator import SimServer

KEY = "sk-sim-test"
HELLO = [{"role": "user", "content": "Hello there"}]


def _events(body: bytes) -> list[Any]:
    return [
        orjson.loads(line[6:]) if line[6:] != b"[DONE]" else "[DONE]"
        for line in body.split(b"\n")
        if line.startswith(b"data: ")
    ]


async def test_openai_answer_carries_refusal_annotations_fingerprint_and_tier(chat) -> None:
    reply = await chat({"model": "gpt-4o-mini", "messages": HELLO, "service_tier": "flex"})
    data = reply.json()
    answer = ChatCompletion.model_validate(data)
    message = data["choices"][0]["message"]
    assert message["refusal"] is None and message["annotations"] == []
    assert answer.system_fingerprint and answer.service_tier == "flex"
    assert data["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert data["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0
    default = (await chat({"model": "gpt-4o-mini", "messages": HELLO})).json()
    assert default["service_tier"] == "default"


async def test_openai_stream_has_a_usage_chunk_only_when_asked(chat) -> None:
    plain = _events((await chat({"model": "gpt-4o-mini", "messages": HELLO, "stream": True})).body)
    assert plain[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate(c) for c in plain[:-1]]
    assert all(c.choices for c in chunks) and all("usage" not in c for c in plain[:-1])
    assert {c.service_tier for c in chunks} == {"default"}
    asked = _events(
        (
            await chat(
                {
                    "model": "gpt-4o-mini",
                    "messages": HELLO,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                }
            )
        ).body
    )
    assert asked[-2]["choices"] == [] and asked[-2]["usage"]["total_tokens"] > 0
    assert all(c["usage"] is None for c in asked[:-2])  # "usage": null on every other chunk


async def test_openai_takes_an_answer_echoed_back(sim: SimServer) -> None:
    client = AsyncOpenAI(base_url=f"{sim.url}/v1", api_key=KEY, max_retries=0)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    first = await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, tools=tools)
    message = first.choices[0].message
    history = [*HELLO, message, {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": "42"}]
    second = await client.chat.completions.create(model="gpt-4o-mini", messages=history, tools=tools)
    assert second.choices[0].message.content
    await client.close()


async def test_anthropic_stream_has_ping_thinking_and_stop_sequence(sim: SimServer, http) -> None:
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 4000,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "stop_sequences": ["reply"],
        "messages": HELLO,
        "stream": True,
    }
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    async with http.post(f"{sim.url}/v1/messages", json=body, headers=headers) as response:
        raw = await response.read()
    events = _events(raw)
    kinds = [e["type"] for e in events]
    assert "ping" in kinds  # the SDK skips it; a client reading the wire must too
    starts = [e["content_block"]["type"] for e in events if e["type"] == "content_block_start"]
    assert starts[0] == "thinking"
    delta = next(e["delta"] for e in events if e["type"] == "message_delta")
    assert delta == {"stop_reason": "stop_sequence", "stop_sequence": "reply"}


async def test_gemini_usage_metadata_model_version_and_response_id(sim: SimServer) -> None:
    client = genai.Client(api_key=KEY, http_options=gtypes.HttpOptions(base_url=sim.url))
    config = gtypes.GenerateContentConfig(thinking_config=gtypes.ThinkingConfig(thinking_budget=512))
    long_turn = gtypes.Content(role="user", parts=[gtypes.Part.from_text(text="context " * 700)])
    ack = gtypes.Content(role="model", parts=[gtypes.Part.from_text(text="ok")])
    model = "gemini-2.5-flash"
    first = await client.aio.models.generate_content(
        model=model, contents=[long_turn, ack, "one"], config=config
    )
    again = await client.aio.models.generate_content(
        model=model, contents=[long_turn, ack, "two"], config=config
    )
    assert first.model_version == "gemini-2.5-flash" and first.response_id
    assert first.usage_metadata.thoughts_token_count and first.usage_metadata.prompt_token_count
    assert again.usage_metadata.cached_content_token_count  # the repeated prefix is read from cache
