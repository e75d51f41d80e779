"""The official ``anthropic`` SDK, used as Anthropic's docs show, on our Messages front (the key as
``x-api-key``, the base URL our host): one model of each upstream wire format (OpenAI, Anthropic,
Gemini), every message a job on the same path."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest

compat = pytest.mark.compat
FORMATS = ["gpt-4o-mini", "claude-haiku-4-5", "gemini-2.5-flash"]
HI = [{"role": "user", "content": "Hello, Claude"}]
WEATHER = {
    "name": "get_weather",
    "description": "Get the current weather in a given location",
    "input_schema": {
        "type": "object",
        "properties": {"location": {"type": "string", "description": "The city and state"}},
        "required": ["location"],
    },
}
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def client(front: Any, tenant: str = "compat") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=front.url, api_key=front.key(tenant), max_retries=0)


@pytest.mark.parametrize("model", FORMATS)
@compat(
    "anthropic",
    "chat",
    "`client.messages.create(model=..., max_tokens=..., system=..., messages=...)`, `usage`",
)
def test_messages_create(front: Any, model: str) -> None:
    message = client(front).messages.create(model=model, max_tokens=256, system="Be brief.", messages=HI)
    assert message.id.startswith("msg_") and message.stop_reason == "end_turn"
    assert message.content[0].type == "text" and message.content[0].text
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0


@pytest.mark.parametrize("model", FORMATS)
@compat(
    "anthropic",
    "streaming",
    "`with client.messages.stream(...) as stream`: `text_stream`, `get_final_message()`",
)
def test_messages_stream(front: Any, model: str) -> None:
    with client(front).messages.stream(model=model, max_tokens=256, messages=HI) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].text == text  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0


@pytest.mark.parametrize("model", FORMATS)
@compat(
    "anthropic",
    "streaming",
    "`client.messages.create(..., stream=True)`: the raw events, tool input as `input_json_delta`",
)
def test_messages_create_stream(front: Any, model: str) -> None:
    events = list(
        client(front).messages.create(
            model=model,
            max_tokens=256,
            tools=[WEATHER],
            messages=[{"role": "user", "content": "What's the weather like in San Francisco?"}],
            stream=True,
        )
    )
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert any(e.type == "content_block_delta" and e.delta.type == "input_json_delta" for e in events)
    assert events[-2].delta.stop_reason == "tool_use"  # type: ignore[union-attr]


@pytest.mark.parametrize("model", FORMATS)
@compat(
    "anthropic", "tool calling", "the tool-use round trip: the `tool_use` content back, then a `tool_result`"
)
def test_tool_round_trip(front: Any, model: str) -> None:
    sdk = client(front)
    messages: list[Any] = [{"role": "user", "content": "What's the weather like in San Francisco?"}]
    first = sdk.messages.create(model=model, max_tokens=1024, tools=[WEATHER], messages=messages)
    assert first.stop_reason == "tool_use"
    uses = [block for block in first.content if block.type == "tool_use"]
    assert uses and uses[0].name == "get_weather" and "location" in uses[0].input
    messages.append({"role": "assistant", "content": first.content})
    messages.append(
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": use.id, "content": "15 degrees"} for use in uses
            ],
        }
    )
    second = sdk.messages.create(model=model, max_tokens=1024, tools=[WEATHER], messages=messages)
    assert second.stop_reason == "end_turn" and second.content[0].text  # type: ignore[union-attr]


@pytest.mark.parametrize("model", FORMATS)
@compat("anthropic", "vision", "an `image` block with a `base64` source")
def test_image_base64(front: Any, model: str) -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    message = client(front).messages.create(
        model=model,
        max_tokens=256,
        messages=[{"role": "user", "content": [image, {"type": "text", "text": "Describe this image."}]}],
    )
    assert message.content[0].text  # type: ignore[union-attr]


# a URL image reaches a Gemini model only as bytes the worker fetches, from the internet: not here
@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku-4-5"])
@compat("anthropic", "vision", "an `image` block with a `url` source")
def test_image_url(front: Any, model: str) -> None:
    image = {"type": "image", "source": {"type": "url", "url": "https://images.example.com/ant.jpg"}}
    message = client(front).messages.create(
        model=model,
        max_tokens=256,
        messages=[{"role": "user", "content": [image, {"type": "text", "text": "Describe this image."}]}],
    )
    assert message.content[0].text  # type: ignore[union-attr]


@compat(
    "anthropic", "async", "`AsyncAnthropic`: `await client.messages.create(...)` and `messages.stream(...)`"
)
async def test_async_client(front: Any) -> None:
    sdk = anthropic.AsyncAnthropic(base_url=front.url, api_key=front.key(), max_retries=0)
    message = await sdk.messages.create(model="gemini-2.5-flash", max_tokens=64, messages=HI)
    assert message.content[0].text  # type: ignore[union-attr]
    async with sdk.messages.stream(model="gpt-4o-mini", max_tokens=64, messages=HI) as stream:
        text = "".join([t async for t in stream.text_stream])
    assert text
    await sdk.close()


@compat(
    "anthropic",
    "errors",
    "401 `AuthenticationError`, 402 `APIStatusError` (`billing_error`), 404 `NotFoundError`, "
    "429 `RateLimitError`, 400 `BadRequestError`",
)
def test_errors_are_the_sdks_typed_exceptions(front: Any) -> None:
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=front.url, api_key="lr-not-a-key", max_retries=0).messages.create(
            model="gpt-4o-mini", max_tokens=16, messages=HI
        )
    with pytest.raises(anthropic.APIStatusError) as broke:
        client(front, "compat-broke").messages.create(model="gpt-4o-mini", max_tokens=16, messages=HI)
    assert broke.value.status_code == 402 and broke.value.body["error"]["type"] == "billing_error"  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError):
        client(front).messages.create(model="no-such-model", max_tokens=16, messages=HI)
    with pytest.raises(anthropic.RateLimitError) as busy:
        client(front, "compat-busy").messages.create(model="gpt-4o-mini", max_tokens=16, messages=HI)
    assert busy.value.response.headers.get("retry-after")
    with pytest.raises(anthropic.BadRequestError) as bad:
        client(front).messages.create(
            model="gpt-4o-mini", max_tokens=16, messages=[{"role": "user", "content": []}]
        )
    assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
