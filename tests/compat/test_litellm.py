"""LiteLLM as a client (``litellm.completion``), used as its docs show: its ``openai/`` provider on our
chat front, and its ``gemini/`` provider on our Gemini front at Google's default path (``/v1beta``).

LiteLLM is imported here, after the suite's conftest set ``LITELLM_LOCAL_MODEL_COST_MAP`` (its price
map loads from its own copy instead of the internet)."""

from __future__ import annotations

from typing import Any

import pytest

compat = pytest.mark.compat
HI = [{"role": "user", "content": "Say hello."}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def _litellm() -> Any:
    import litellm

    litellm.telemetry = False
    return litellm


def openai_kwargs(front: Any, model: str = "gpt-4o-mini", tenant: str = "compat") -> dict[str, Any]:
    return {
        "model": f"openai/{model}",
        "api_base": f"{front.url}/v1",
        "api_key": front.key(tenant),
        "num_retries": 0,
        "max_retries": 0,
    }


def gemini_kwargs(front: Any, model: str = "gemini-2.5-flash", tenant: str = "compat") -> dict[str, Any]:
    # Google's default path: what LiteLLM's gemini/ provider calls on generativelanguage.googleapis.com
    return {"model": f"gemini/{model}", "api_base": f"{front.url}/v1beta", "api_key": front.key(tenant)}


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku-4-5", "gemini-2.5-flash"])
@compat("litellm", "chat", '`litellm.completion(model="openai/...", api_base=...)`')
def test_completion(front: Any, model: str) -> None:
    answer = _litellm().completion(messages=HI, **openai_kwargs(front, model))
    assert answer.choices[0].message.content and answer.usage.total_tokens > 0


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku-4-5", "gemini-2.5-flash"])
@compat("litellm", "streaming", "`completion(..., stream=True)`: `chunk.choices[0].delta.content`")
def test_completion_streamed(front: Any, model: str) -> None:
    text = ""
    for chunk in _litellm().completion(messages=HI, stream=True, **openai_kwargs(front, model)):
        text += chunk.choices[0].delta.content or ""
    assert text


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku-4-5"])
@compat(
    "litellm", "tool calling", "the tool loop: append `response.choices[0].message`, then the tool result"
)
def test_tool_loop(front: Any, model: str) -> None:
    litellm = _litellm()
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = litellm.completion(messages=messages, tools=[WEATHER], **openai_kwargs(front, model))
    message = first.choices[0].message
    assert message.tool_calls
    messages.append(message)
    for call in message.tool_calls:
        messages.append({"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'})
    second = litellm.completion(messages=messages, tools=[WEATHER], **openai_kwargs(front, model))
    assert second.choices[0].message.content


@pytest.mark.parametrize("model", ["gemini-2.5-flash", "gpt-4o-mini"])
@compat(
    "litellm",
    "`gemini/` provider",
    '`completion(model="gemini/...", api_base=".../v1beta")`, plain and streamed',
)
def test_gemini_provider_at_the_default_path(front: Any, model: str) -> None:
    litellm = _litellm()
    answer = litellm.completion(messages=HI, **gemini_kwargs(front, model))
    assert answer.choices[0].message.content
    text = ""
    for chunk in litellm.completion(messages=HI, stream=True, **gemini_kwargs(front, model)):
        text += chunk.choices[0].delta.content or ""
    assert text


@compat("litellm", "async", "`await litellm.acompletion(...)`")
async def test_acompletion(front: Any) -> None:
    answer = await _litellm().acompletion(messages=HI, **openai_kwargs(front, "claude-haiku-4-5"))
    assert answer.choices[0].message.content


@compat("litellm", "errors", "LiteLLM's typed exceptions: 401, 402, 404 and 429 (`openai/` and `gemini/`)")
def test_errors(front: Any) -> None:
    litellm = _litellm()
    for kwargs in (openai_kwargs, gemini_kwargs):
        bad = {**kwargs(front), "api_key": "lr-not-a-key"}
        with pytest.raises(litellm.AuthenticationError):
            litellm.completion(messages=HI, **bad)
        with pytest.raises(litellm.NotFoundError):
            litellm.completion(messages=HI, **kwargs(front, "no-such-model"))
        with pytest.raises(litellm.RateLimitError):
            litellm.completion(messages=HI, **kwargs(front, tenant="compat-busy"))
        # LiteLLM's class for a 402 depends on its provider module
        with pytest.raises((litellm.PaymentRequiredError, litellm.APIError)) as broke:
            litellm.completion(messages=HI, **kwargs(front, tenant="compat-broke"))
        assert broke.value.status_code == 402
