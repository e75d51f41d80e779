"""The official openai SDK against the simulator, plus raw responses checked by the SDK's types."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletion

from llm_router.simulator import SimServer, count_prompt_tokens, count_text_tokens

KEY = "sk-sim-test"
Chat = Callable[..., Awaitable[Any]]  # the `chat` fixture; returns a read reply


def user(text: str = "Hello there") -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def body(text: str = "Hello there", **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": user(text), **extra}


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "minLength": 3},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
                "lat": {"type": "number"},
                "metric": {"type": "boolean"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
                "where": {
                    "type": "object",
                    "properties": {"country": {"type": "string"}, "zip": {"type": ["string", "null"]}},
                    "required": ["country"],
                },
                "optional": {"type": "string"},
            },
            "required": ["city", "days", "lat", "metric", "unit", "tags", "where"],
        },
    },
}
LOOKUP_TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}


@pytest.fixture
async def client(sim: SimServer) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=sim.url + "/v1", api_key=KEY, max_retries=0) as c:
        yield c


async def test_plain_completion(client: AsyncOpenAI) -> None:
    messages = user("What is the capital of France?")
    completion = await client.chat.completions.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
    choice = completion.choices[0]
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4o-mini"
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert "gpt-4o-mini" in (choice.message.content or "")
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == count_prompt_tokens(messages)
    assert completion.usage.completion_tokens == count_text_tokens(choice.message.content or "")
    assert (
        completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    assert 20 <= completion.usage.completion_tokens <= 80


async def test_tool_call_arguments_satisfy_the_schema(client: AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="gpt-4o",
        messages=user("Weather in Paris?"),
        tools=[WEATHER_TOOL],  # type: ignore[arg-type,list-item]
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert set(args) == {"city", "days", "lat", "metric", "unit", "tags", "where"}
    assert isinstance(args["city"], str) and len(args["city"]) >= 3
    assert isinstance(args["days"], int) and 1 <= args["days"] <= 7
    assert isinstance(args["lat"], int | float)
    assert isinstance(args["metric"], bool)
    assert args["unit"] in ("celsius", "fahrenheit")
    assert isinstance(args["tags"], list) and len(args["tags"]) >= 2
    assert isinstance(args["where"]["country"], str)
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == count_prompt_tokens(user("Weather in Paris?"), [WEATHER_TOOL])
    expected = count_text_tokens("get_weather") + count_text_tokens(call.function.arguments)
    assert completion.usage.completion_tokens == expected


async def test_named_tool_choice_and_tool_result_turn(client: AsyncOpenAI) -> None:
    tools: Any = [WEATHER_TOOL, LOOKUP_TOOL]
    named = await client.chat.completions.create(
        model="gpt-4o",
        messages=user("look it up"),  # type: ignore[arg-type]
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "lookup"}},
    )
    (call,) = named.choices[0].message.tool_calls or []
    assert call.function.name == "lookup"
    assert json.loads(call.function.arguments) == {}

    history: Any = [
        *user("look it up"),
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "42"},
    ]
    answer = await client.chat.completions.create(model="gpt-4o", messages=history, tools=tools)
    assert answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.content
    assert not answer.choices[0].message.tool_calls

    none = await client.chat.completions.create(
        model="gpt-4o",
        messages=user("hi"),
        tools=tools,
        tool_choice="none",  # type: ignore[arg-type]
    )
    assert none.choices[0].finish_reason == "stop"


async def test_n_choices_differ(client: AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(model="gpt-4o-mini", messages=user(), n=2)  # type: ignore[arg-type]
    assert [c.index for c in completion.choices] == [0, 1]
    first, second = (c.message.content or "" for c in completion.choices)
    assert first != second
    assert completion.usage is not None
    assert completion.usage.completion_tokens == count_text_tokens(first) + count_text_tokens(second)


@pytest.mark.parametrize("param", ["max_tokens", "max_completion_tokens"])
async def test_max_tokens_truncates_with_finish_reason_length(client: AsyncOpenAI, param: str) -> None:
    completion = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=user(),
        **{param: 5},  # type: ignore[call-overload]
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "length"
    assert count_text_tokens(choice.message.content or "") <= 5
    assert completion.usage is not None and completion.usage.completion_tokens <= 5


async def test_json_object_content_is_json(client: AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=user("Reply in JSON please"),  # type: ignore[arg-type]
        response_format={"type": "json_object"},
    )
    data = json.loads(completion.choices[0].message.content or "")
    assert isinstance(data, dict) and data["model"] == "gpt-4o-mini"


async def test_json_schema_content_follows_the_schema(client: AsyncOpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 18}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    completion = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=user("Make a person"),  # type: ignore[arg-type]
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": schema, "strict": True},
        },
    )
    data = json.loads(completion.choices[0].message.content or "")
    assert set(data) == {"name", "age"} and data["age"] >= 18


async def test_stream_with_usage_matches_the_plain_answer(client: AsyncOpenAI) -> None:
    messages: Any = user("Stream me something")
    plain = await client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=messages, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) >= 3
    text = "".join(c.choices[0].delta.content or "" for c in content_chunks)
    assert text == plain.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and plain.usage is not None
    assert chunks[-1].usage.model_dump() == plain.usage.model_dump()


async def test_stream_tool_call_deltas_reassemble(client: AsyncOpenAI) -> None:
    messages: Any = user("Weather?")
    tools: Any = [WEATHER_TOOL]
    plain = await client.chat.completions.create(model="gpt-4o", messages=messages, tools=tools)
    stream = await client.chat.completions.create(model="gpt-4o", messages=messages, tools=tools, stream=True)
    name, arguments, finish = "", "", None
    async for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                name += (delta.function and delta.function.name) or ""
                arguments += (delta.function and delta.function.arguments) or ""
            finish = choice.finish_reason or finish
    (call,) = plain.choices[0].message.tool_calls or []
    assert (name, arguments, finish) == (call.function.name, call.function.arguments, "tool_calls")


async def test_models_list(client: AsyncOpenAI) -> None:
    models = [m.id async for m in client.models.list()]
    assert "gpt-4o-mini" in models
    model = await client.models.retrieve("gpt-4o-mini")
    assert model.id == "gpt-4o-mini" and model.object == "model"


async def test_api_v1_prefix_with_the_sdk(sim: SimServer) -> None:
    async with AsyncOpenAI(base_url=sim.url + "/api/v1", api_key=KEY, max_retries=0) as c:
        completion = await c.chat.completions.create(model="openai/gpt-4o", messages=user())  # type: ignore[arg-type]
    assert completion.model == "openai/gpt-4o"


@pytest.mark.parametrize("prefix", ["/v1", "/api/v1", "", "/openai/v1"])
async def test_any_prefix(chat: Chat, prefix: str) -> None:
    response = await chat(body(), prefix=prefix)
    assert response.status == 200
    ChatCompletion.model_validate(response.json())


RAW_BODIES = {
    "plain": body(),
    "tools": body(tools=[WEATHER_TOOL]),
    "n=3": body(n=3, temperature=0.2, top_p=0.9, seed=7, user="u-1"),
    "legacy functions": body(functions=[WEATHER_TOOL["function"]], function_call="auto"),
    "json_object": body("answer in json", response_format={"type": "json_object"}),
    "stop": body(stop=["reply"]),
    "image": {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"},
                    },
                ],
            },
        ],
    },
}


@pytest.mark.parametrize("name", list(RAW_BODIES))
async def test_raw_responses_validate_as_chat_completion(chat: Chat, name: str) -> None:
    request = RAW_BODIES[name]
    response = await chat(request)
    assert response.status == 200, response.body
    assert response.content_type == "application/json"
    completion = ChatCompletion.model_validate(response.json())
    assert completion.model == request["model"]
    assert completion.usage is not None
    offered = request.get("tools") or request.get("functions")
    assert completion.usage.prompt_tokens == count_prompt_tokens(request["messages"], offered)


async def test_legacy_function_call_and_stop(chat: Chat) -> None:
    fn = await chat(RAW_BODIES["legacy functions"])
    choice = fn.json()["choices"][0]
    assert choice["finish_reason"] == "function_call"
    assert choice["message"]["function_call"]["name"] == "get_weather"
    stopped = await chat(RAW_BODIES["stop"])
    content = stopped.json()["choices"][0]["message"]["content"]
    assert content == "Simulated "
    assert stopped.json()["choices"][0]["finish_reason"] == "stop"


async def test_image_parts_count_fixed_tokens(chat: Chat) -> None:
    request = copy.deepcopy(RAW_BODIES["image"])
    usage = (await chat(request)).json()["usage"]
    text_only = 3 + (4 + count_text_tokens("be brief")) + (4 + count_text_tokens("what is this?"))
    assert usage["prompt_tokens"] == text_only + 85
    request["messages"][1]["content"][1]["image_url"]["detail"] = "high"
    usage = (await chat(request)).json()["usage"]
    assert usage["prompt_tokens"] == text_only + 765


async def test_deterministic_content(chat: Chat) -> None:
    first = (await chat(body("same question"))).json()
    again = (await chat(body("same question"))).json()
    other = (await chat(body("another question"))).json()
    assert first["id"] == again["id"]
    assert first["choices"] == again["choices"]
    assert first["choices"][0]["message"]["content"] != other["choices"][0]["message"]["content"]
