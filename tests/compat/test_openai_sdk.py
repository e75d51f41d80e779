"""The official ``openai`` SDK, used as OpenAI's docs show, on our chat front: one model of each
upstream wire format (OpenAI, Anthropic, Gemini) where the format changes what the client sees."""

from __future__ import annotations

import base64
import json
from typing import Any

import openai
import pytest
from pydantic import BaseModel

compat = pytest.mark.compat
FORMATS = ["gpt-4o-mini", "claude-haiku-4-5", "gemini-2.5-flash"]
HI = [{"role": "user", "content": "Say hello."}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def client(front: Any, tenant: str = "compat", **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{front.url}/v1", api_key=front.key(tenant), max_retries=0, **kwargs)


@compat("openai", "chat", "`client.chat.completions.create(...)`, `usage`")
def test_chat(front: Any) -> None:
    answer = client(front).chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=50)
    assert answer.choices[0].message.content and answer.usage.total_tokens > 0


@pytest.mark.parametrize("model", FORMATS)
@compat("openai", "streaming", "the quickstart loop: `chunk.choices[0].delta.content` for every chunk")
def test_quickstart_stream_loop(front: Any, model: str) -> None:
    stream = client(front).chat.completions.create(model=model, messages=HI, stream=True)
    text = ""
    for chunk in stream:
        text += chunk.choices[0].delta.content or ""  # an unasked-for usage chunk raises IndexError here
    assert text


@pytest.mark.parametrize("model", FORMATS)
@compat("openai", "streaming", '`stream_options={"include_usage": True}`: the last chunk has `usage`')
def test_stream_with_usage(front: Any, model: str) -> None:
    stream = client(front).chat.completions.create(
        model=model, messages=HI, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0
    assert all(c.choices for c in chunks[:-1])


@pytest.mark.parametrize("model", FORMATS)
@pytest.mark.parametrize("echo", ["object", "model_dump"])
@compat("openai", "tool calling", "the tool loop: append `resp.choices[0].message`, then the tool result")
def test_tool_loop_appends_the_message_back(front: Any, model: str, echo: str) -> None:
    sdk = client(front)
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = sdk.chat.completions.create(model=model, messages=messages, tools=[WEATHER])
    message = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls" and message.tool_calls
    messages.append(message if echo == "object" else message.model_dump(exclude_none=True))
    for call in message.tool_calls:
        messages.append({"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'})
    second = sdk.chat.completions.create(model=model, messages=messages, tools=[WEATHER])
    assert second.choices[0].message.content


@pytest.mark.parametrize("model", FORMATS)
@compat("openai", "streamed tool calls", "`stream=True` with `tools`: deltas merged by `index`")
def test_streamed_tool_calls(front: Any, model: str) -> None:
    stream = client(front).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Weather in Oslo?"}], tools=[WEATHER], stream=True
    )
    calls: dict[int, dict[str, str]] = {}
    for chunk in stream:
        for call in chunk.choices[0].delta.tool_calls or ():
            entry = calls.setdefault(call.index, {"name": "", "arguments": ""})
            entry["name"] += (call.function and call.function.name) or ""
            entry["arguments"] += (call.function and call.function.arguments) or ""
    assert [c["name"] for c in calls.values()] == ["get_weather"]


@pytest.mark.parametrize("model", FORMATS)
@compat(
    "openai",
    "stream helper",
    "`with client.chat.completions.stream(...) as stream`: events, `tool_calls.function.arguments.done`, "
    "`get_final_completion()`",
)
def test_the_stream_helper_sees_each_tool_call_done(front: Any, model: str) -> None:
    with client(front).chat.completions.stream(
        model=model, messages=[{"role": "user", "content": "Weather in Oslo?"}], tools=[WEATHER]
    ) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    done = [e for e in events if e.type == "tool_calls.function.arguments.done"]
    # the helper reads a chunk's finish reason before its tool calls: a finish in the same chunk as
    # the last call's delta would lose this event
    assert [e.name for e in done] == ["get_weather"], [e.type for e in events]
    call = final.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and done[0].arguments == call.function.arguments
    assert json.loads(done[0].arguments)["city"]
    assert final.choices[0].finish_reason == "tool_calls"


class Weather(BaseModel):
    city: str
    temp_c: int


@pytest.mark.parametrize("model", FORMATS)
@compat("openai", "structured output", "`client.chat.completions.parse(response_format=PydanticModel)`")
def test_parse_with_pydantic(front: Any, model: str) -> None:
    answer = client(front).chat.completions.parse(
        model=model,
        messages=[{"role": "user", "content": "Weather in Rome as JSON"}],
        response_format=Weather,
    )
    assert isinstance(answer.choices[0].message.parsed, Weather)


@compat("openai", "JSON mode", '`response_format={"type": "json_object"}`')
def test_json_mode(front: Any) -> None:
    answer = client(front).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Reply in JSON."}],
        response_format={"type": "json_object"},
    )
    assert answer.choices[0].message.content.startswith("{")


@pytest.mark.parametrize("model", FORMATS)
@compat("openai", "vision", "an `image_url` part with a base64 data URI")
def test_vision_data_uri(front: Any, model: str) -> None:
    image = {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64," + base64.b64encode(PNG).decode()},
    }
    answer = client(front).chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": [{"type": "text", "text": "What is this?"}, image]}],
    )
    assert answer.choices[0].message.content


@compat("openai", "vision", "an `image_url` part with an `http://` URL")
def test_vision_http_url(front: Any) -> None:
    image = {"type": "image_url", "image_url": {"url": "http://images.example.com/cat.png"}}
    answer = client(front).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": [{"type": "text", "text": "What?"}, image]}],
    )
    assert answer.choices[0].message.content


@compat(
    "openai",
    "request fields",
    "`store`, `service_tier`, `prompt_cache_key`, `safety_identifier`, `verbosity`, `metadata`",
)
def test_newer_request_fields_are_accepted(front: Any) -> None:
    answer = client(front).chat.completions.create(
        model="gpt-4o-mini",
        messages=HI,
        store=True,
        service_tier="flex",
        prompt_cache_key="conversation-7",
        safety_identifier="user-hash",
        verbosity="low",
        metadata={"order": "42"},
    )
    assert answer.choices[0].message.content


@compat("openai", "async", "`AsyncOpenAI` create and stream")
async def test_async_client(front: Any) -> None:
    sdk = openai.AsyncOpenAI(base_url=f"{front.url}/v1", api_key=front.key(), max_retries=0)
    answer = await sdk.chat.completions.create(model="claude-haiku-4-5", messages=HI)
    assert answer.choices[0].message.content
    text = ""
    async for chunk in await sdk.chat.completions.create(model="gemini-2.5-flash", messages=HI, stream=True):
        text += chunk.choices[0].delta.content or ""
    assert text
    await sdk.close()


@compat("openai", "models", "`client.models.list()`, `client.models.retrieve(...)`")
def test_models(front: Any) -> None:
    sdk = client(front)
    assert "gpt-4o-mini" in {m.id for m in sdk.models.list()}
    assert sdk.models.retrieve("claude-haiku-4-5").id == "claude-haiku-4-5"


@compat(
    "openai",
    "errors",
    "401 `AuthenticationError`, 402 `APIStatusError`, 404 `NotFoundError`, 429 `RateLimitError`",
)
def test_errors_are_the_sdks_typed_exceptions(front: Any) -> None:
    bad_key = openai.OpenAI(base_url=f"{front.url}/v1", api_key="lr-not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_key.chat.completions.create(model="gpt-4o-mini", messages=HI)
    with pytest.raises(openai.APIStatusError) as broke:
        client(front, "compat-broke").chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert broke.value.status_code == 402 and broke.value.body["code"] == "insufficient_credits"
    with pytest.raises(openai.NotFoundError) as missing:
        client(front).chat.completions.create(model="no-such-model", messages=HI)
    assert missing.value.body["code"] == "model_not_found"
    with pytest.raises(openai.RateLimitError) as busy:
        client(front, "compat-busy").chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert busy.value.response.headers.get("retry-after")
