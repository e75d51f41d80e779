"""LangChain's ``ChatOpenAI`` (``langchain-openai``), used as LangChain's docs show, on our chat front."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from pydantic import BaseModel, Field

compat = pytest.mark.compat
FORMATS = ["gpt-4o-mini", "claude-haiku-4-5", "gemini-2.5-flash"]


def chat_model(front: Any, model: str = "gpt-4o-mini", tenant: str = "compat", **kwargs: Any) -> Any:
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        model=model, base_url=f"{front.url}/v1", api_key=front.key(tenant), max_retries=0, **kwargs
    )


@pytest.mark.parametrize("model", FORMATS)
@compat("langchain", "chat", "`ChatOpenAI(...).invoke(...)`, `usage_metadata`")
def test_invoke(front: Any, model: str) -> None:
    answer = chat_model(front, model).invoke("Say hello.")
    assert answer.content and answer.usage_metadata["total_tokens"] > 0


@pytest.mark.parametrize("model", FORMATS)
@compat("langchain", "streaming", "`for chunk in llm.stream(...)`; `stream_usage=True` for the usage")
def test_stream(front: Any, model: str) -> None:
    text = "".join(str(chunk.content) for chunk in chat_model(front, model).stream("Say hello."))
    assert text
    chunks = list(chat_model(front, model, stream_usage=True).stream("Say hello."))
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole += chunk
    assert whole.content and whole.usage_metadata["total_tokens"] > 0


def _weather_tool() -> Any:
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    return get_weather


@pytest.mark.parametrize("model", FORMATS)
@compat("langchain", "tool calling", "`llm.bind_tools([tool])`, then the `ToolMessage` turn")
def test_bind_tools_agent_loop(front: Any, model: str) -> None:
    from langchain_core.messages import HumanMessage

    get_weather = _weather_tool()
    llm = chat_model(front, model).bind_tools([get_weather])
    messages: list[Any] = [HumanMessage("What is the weather in Paris?")]
    first = llm.invoke(messages)
    assert first.tool_calls and first.tool_calls[0]["name"] == "get_weather"
    messages.append(first)
    for call in first.tool_calls:
        messages.append(get_weather.invoke(call))  # a ToolMessage answering the call
    second = llm.invoke(messages)
    assert second.content and not second.tool_calls


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku-4-5"])
@compat("langchain", "streamed tool calls", "`llm.bind_tools([tool]).stream(...)`: chunks merged by index")
def test_streamed_tool_calls(front: Any, model: str) -> None:
    llm = chat_model(front, model).bind_tools([_weather_tool()])
    chunks = list(llm.stream("Weather in Oslo?"))
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole += chunk
    assert [c["name"] for c in whole.tool_calls] == ["get_weather"]


class Person(BaseModel):
    """Someone mentioned in the text."""

    name: str = Field(description="the person's name")
    age: int = Field(description="the person's age")


@pytest.mark.parametrize("method", ["function_calling", "json_schema"])
@pytest.mark.parametrize("model", FORMATS)
@compat("langchain", "structured output", "`llm.with_structured_output(Model, method=...)`")
def test_with_structured_output(front: Any, model: str, method: str) -> None:
    person = chat_model(front, model).with_structured_output(Person, method=method).invoke("Ada is 36.")
    assert isinstance(person, Person)


@compat("langchain", "async", "`await llm.ainvoke(...)`, `async for chunk in llm.astream(...)`")
async def test_async(front: Any) -> None:
    llm = chat_model(front, "claude-haiku-4-5")
    assert (await llm.ainvoke("Hi")).content
    text = "".join([str(chunk.content) async for chunk in llm.astream("Hi")])
    assert text


@compat("langchain", "errors", "the `openai` SDK's typed exceptions through `invoke` (401, 402, 404, 429)")
def test_errors(front: Any) -> None:
    from langchain_openai import ChatOpenAI

    bad = ChatOpenAI(model="gpt-4o-mini", base_url=f"{front.url}/v1", api_key="lr-not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.invoke("Hi")
    with pytest.raises(openai.APIStatusError) as broke:
        chat_model(front, tenant="compat-broke").invoke("Hi")
    assert broke.value.status_code == 402
    with pytest.raises(openai.NotFoundError):
        chat_model(front, "no-such-model").invoke("Hi")
    with pytest.raises(openai.RateLimitError):
        chat_model(front, tenant="compat-busy").invoke("Hi")
