"""The official SDKs consume the simulator's streams: ``openai`` (``chat.completions.create(stream=True)``),
``anthropic`` (``messages.stream`` / ``get_final_message``) and ``google-genai``
(``models.generate_content_stream``): the same answer as the plain call, and mid-stream errors raised
as each SDK raises them."""

from __future__ import annotations

import asyncio
from typing import Any

import anthropic
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from llm_router.simulator import FaultRule, SimServer

KEY = "sk-sdk-stream"
QUESTION = "What is the weather like in San Francisco?"
WEATHER = {
    "name": "get_weather",
    "description": "Get the current weather in a given location",
    "input_schema": {
        "type": "object",
        "properties": {"location": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
        "required": ["location", "unit"],
    },
}


# -- openai -----------------------------------------------------------------------------------


async def test_openai_stream_with_usage_and_tools(sim: SimServer) -> None:
    tools: Any = [
        {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER["input_schema"]}}
    ]
    messages: Any = [{"role": "user", "content": QUESTION}]
    async with openai.AsyncOpenAI(base_url=sim.url + "/v1", api_key=KEY, max_retries=0) as client:
        plain = await client.chat.completions.create(model="gpt-4o", messages=messages, tools=tools)
        stream = await client.chat.completions.create(
            model="gpt-4o",
            messages=messages,
            tools=tools,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
    arguments = "".join(
        d.function.arguments or ""
        for c in chunks
        for choice in c.choices
        for d in choice.delta.tool_calls or ()
        if d.function
    )
    (call,) = plain.choices[0].message.tool_calls or []
    assert arguments == call.function.arguments  # type: ignore[union-attr]
    assert chunks[-1].usage == plain.usage


async def test_openai_sdk_raises_the_mid_stream_error(sim: SimServer) -> None:
    sim.add_faults([FaultRule(kind="stream_error", credential=KEY, status=503, after_chunks=2)])
    messages: Any = [{"role": "user", "content": QUESTION}]
    async with openai.AsyncOpenAI(base_url=sim.url + "/v1", api_key=KEY, max_retries=0) as client:
        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True)
        seen = []
        with pytest.raises(openai.APIError, match="overloaded"):
            async for chunk in stream:
                seen.append(chunk)
    assert len(seen) == 2


# -- anthropic --------------------------------------------------------------------------------


def anthropic_client(sim: SimServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=sim.url, api_key=KEY, max_retries=0)


async def test_anthropic_stream_final_message_equals_the_plain_one(sim: SimServer) -> None:
    kwargs: Any = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 2048,
        "tools": [WEATHER],
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": [{"role": "user", "content": QUESTION}],
    }

    def run() -> tuple[Any, Any, list[str]]:
        client = anthropic_client(sim)
        plain = client.messages.create(**kwargs)
        with client.messages.stream(**kwargs) as stream:
            kinds = [event.type for event in stream]
            final = stream.get_final_message()
        return plain, final, kinds

    plain, final, kinds = await asyncio.to_thread(run)
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "input_json" in kinds and "thinking" in kinds
    assert final.content == plain.content  # thinking, then the tool_use with its parsed input
    assert final.stop_reason == "tool_use" and final.usage == plain.usage


async def test_anthropic_sdk_raises_the_overloaded_error_event(sim: SimServer) -> None:
    sim.add_faults([FaultRule(kind="stream_error", credential=KEY, status=529, after_chunks=4)])

    def run() -> str:
        with anthropic_client(sim).messages.stream(
            model="claude-sonnet-4-6", max_tokens=256, messages=[{"role": "user", "content": QUESTION}]
        ) as stream:
            text = ""
            with pytest.raises(anthropic.APIStatusError, match="overloaded_error"):
                for piece in stream.text_stream:
                    text += piece
            return text

    assert await asyncio.to_thread(run)  # the first text delta came before the error


# -- google-genai -----------------------------------------------------------------------------


def genai_stream(sim: SimServer, **kwargs: Any) -> list[types.GenerateContentResponse]:
    with genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=sim.url)) as client:
        return list(client.models.generate_content_stream(model="gemini-2.5-flash", **kwargs))


def genai_plain(sim: SimServer, **kwargs: Any) -> types.GenerateContentResponse:
    with genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=sim.url)) as client:
        return client.models.generate_content(model="gemini-2.5-flash", **kwargs)


async def test_genai_stream_text_and_usage_equal_the_plain_answer(sim: SimServer) -> None:
    config = types.GenerateContentConfig(thinking_config=types.ThinkingConfig(thinking_budget=512))
    chunks = await asyncio.to_thread(genai_stream, sim, contents=QUESTION, config=config)
    plain = await asyncio.to_thread(genai_plain, sim, contents=QUESTION, config=config)
    assert len(chunks) >= 3
    assert "".join(c.text or "" for c in chunks) == plain.text
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP  # type: ignore[index]
    assert chunks[-1].usage_metadata == plain.usage_metadata
    assert chunks[0].usage_metadata.candidates_token_count is None  # type: ignore[union-attr]


async def test_genai_stream_function_call(sim: SimServer) -> None:
    tool = types.Tool(
        function_declarations=[
            types.FunctionDeclaration(
                name="get_weather", parameters_json_schema=WEATHER["input_schema"], description="weather"
            )
        ]
    )
    config = types.GenerateContentConfig(tools=[tool])
    chunks = await asyncio.to_thread(genai_stream, sim, contents=QUESTION, config=config)
    plain = await asyncio.to_thread(genai_plain, sim, contents=QUESTION, config=config)
    calls = [call for c in chunks for call in c.function_calls or ()]
    assert calls == plain.function_calls and calls[0].name == "get_weather"


async def test_genai_sdk_raises_the_mid_stream_error(sim: SimServer) -> None:
    sim.add_faults([FaultRule(kind="stream_error", credential=KEY, status=503, after_chunks=2)])
    with pytest.raises(genai_errors.ServerError) as info:
        await asyncio.to_thread(genai_stream, sim, contents=QUESTION)
    assert info.value.code == 503 and info.value.status == "UNAVAILABLE"
