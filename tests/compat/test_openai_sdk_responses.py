"""The official ``openai`` SDK's Responses API, used as OpenAI's docs show, on our Responses front: one
model of each upstream wire format (OpenAI, Anthropic, Gemini), every answer a job on the same path."""

from __future__ import annotations

import time
from typing import Any

import openai
import pytest
from pydantic import BaseModel

compat = pytest.mark.compat
FORMATS = ["gpt-4o-mini", "claude-haiku-4-5", "gemini-2.5-flash"]
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
SLOW_MS = 4000  # how long the simulator holds the call a cancel test cancels


def client(front: Any, tenant: str = "compat") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{front.url}/v1", api_key=front.key(tenant), max_retries=0)


@pytest.mark.parametrize("model", FORMATS)
@compat(
    "openai",
    "Responses API",
    "`client.responses.create(model=..., instructions=..., input=...)`, `output_text`, `usage`",
)
def test_responses_create(front: Any, model: str) -> None:
    response = client(front).responses.create(
        model=model, instructions="You are a coding assistant.", input="Are semicolons optional?"
    )
    assert response.status == "completed" and response.output_text
    assert response.id.startswith("resp_") and response.usage and response.usage.total_tokens > 0


@pytest.mark.parametrize("model", FORMATS)
@compat("openai", "Responses API", "an `input_image` part with a base64 data URI")
def test_responses_image(front: Any, model: str) -> None:
    image = {"type": "input_image", "image_url": f"data:image/png;base64,{PNG}"}
    response = client(front).responses.create(
        model=model,
        input=[{"role": "user", "content": [{"type": "input_text", "text": "What is this?"}, image]}],
    )
    assert response.output_text


@pytest.mark.parametrize("model", FORMATS)
@compat(
    "openai",
    "Responses streaming",
    "`with client.responses.stream(...) as stream`: events, `get_final_response()`",
)
def test_responses_stream(front: Any, model: str) -> None:
    text = ""
    kinds: list[str] = []
    with client(front).responses.stream(model=model, input="Say hello.") as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                text += event.delta
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert text and text == final.output_text and final.usage and final.usage.output_tokens > 0


@pytest.mark.parametrize("model", FORMATS)
@compat("openai", "Responses streaming", "`client.responses.create(..., stream=True)`: the raw events")
def test_responses_create_stream(front: Any, model: str) -> None:
    events = list(
        client(front).responses.create(model=model, input="Weather in Oslo?", tools=[WEATHER], stream=True)
    )
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds and kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))


@pytest.mark.parametrize("model", FORMATS)
@compat(
    "openai",
    "Responses tool calling",
    "the function-calling loop: `input += response.output`, then `function_call_output`",
)
def test_responses_tool_loop(front: Any, model: str) -> None:
    sdk = client(front)
    inputs: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = sdk.responses.create(model=model, input=inputs, tools=[WEATHER])
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather"
    inputs += first.output
    for call in calls:
        inputs.append({"type": "function_call_output", "call_id": call.call_id, "output": '{"temp_c": 21}'})
    second = sdk.responses.create(model=model, input=inputs, tools=[WEATHER])
    assert second.output_text


@pytest.mark.parametrize("model", FORMATS)
@compat(
    "openai", "Responses conversation state", "`previous_response_id`: turns and a tool result chained by id"
)
def test_previous_response_id(front: Any, model: str) -> None:
    sdk = client(front)
    first = sdk.responses.create(model=model, input="What is the weather in Paris?", tools=[WEATHER])
    call = next(item for item in first.output if item.type == "function_call")
    second = sdk.responses.create(
        model=model,
        previous_response_id=first.id,
        tools=[WEATHER],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"temp_c": 21}'}],
    )
    third = sdk.responses.create(model=model, previous_response_id=second.id, input="And in Rome?")
    assert second.output_text and third.output_text and third.previous_response_id == second.id


@pytest.mark.parametrize("model", FORMATS)
@compat(
    "openai", "Responses background", "`background=True`, then `client.responses.retrieve(id)` until done"
)
def test_background_and_retrieve(front: Any, model: str) -> None:
    sdk = client(front)
    response = sdk.responses.create(model=model, input="Write a haiku.", background=True)
    assert response.status in ("queued", "in_progress", "completed")
    deadline = time.monotonic() + 20
    while response.status in ("queued", "in_progress"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
        response = sdk.responses.retrieve(response.id)
    assert response.status == "completed" and response.output_text


@pytest.mark.parametrize("model", FORMATS)
@compat("openai", "Responses background", "`client.responses.cancel(id)` while it waits or runs")
async def test_background_cancel(front: Any, sim: Any, model: str) -> None:
    await sim.faults({"model": model, "kind": "latency", "latency_ms": SLOW_MS, "count": 1}, replace=False)
    try:
        sdk = client(front)
        response = sdk.responses.create(model=model, input="Write a long story.", background=True)
        started = time.monotonic()
        cancelled = sdk.responses.cancel(response.id)
        assert cancelled.status == "cancelled" and time.monotonic() - started < SLOW_MS / 1000
        assert sdk.responses.retrieve(response.id).status == "cancelled"
    finally:
        await sim.faults()


class Event(BaseModel):
    name: str
    participants: list[str]


@pytest.mark.parametrize("model", FORMATS)
@compat("openai", "Responses structured output", "`client.responses.parse(text_format=PydanticModel)`")
def test_responses_parse(front: Any, model: str) -> None:
    response = client(front).responses.parse(
        model=model, input="Alice and Bob go to a science fair on Friday.", text_format=Event
    )
    assert isinstance(response.output_parsed, Event)


@compat(
    "openai",
    "Responses errors",
    "401 `AuthenticationError`, 402 `APIStatusError`, 404 `NotFoundError`, 429 `RateLimitError`",
)
def test_responses_errors(front: Any) -> None:
    bad_key = openai.OpenAI(base_url=f"{front.url}/v1", api_key="lr-not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_key.responses.create(model="gpt-4o-mini", input="hi")
    with pytest.raises(openai.APIStatusError) as broke:
        client(front, "compat-broke").responses.create(model="gpt-4o-mini", input="hi")
    assert broke.value.status_code == 402 and broke.value.body["code"] == "insufficient_credits"
    with pytest.raises(openai.NotFoundError):
        client(front).responses.create(model="no-such-model", input="hi")
    with pytest.raises(openai.NotFoundError):
        client(front).responses.retrieve("resp_unknown")
    with pytest.raises(openai.RateLimitError):
        client(front, "compat-busy").responses.create(model="gpt-4o-mini", input="hi")


@compat("openai", "Responses API", "`AsyncOpenAI`: `await client.responses.create(...)` and `stream=True`")
async def test_async_responses(front: Any) -> None:
    sdk = openai.AsyncOpenAI(base_url=f"{front.url}/v1", api_key=front.key(), max_retries=0)
    answer = await sdk.responses.create(model="claude-haiku-4-5", input="Say hello.")
    assert answer.output_text
    text = ""
    async for event in await sdk.responses.create(model="gemini-2.5-flash", input="Say hello.", stream=True):
        if event.type == "response.output_text.delta":
            text += event.delta
    assert text
    await sdk.close()
