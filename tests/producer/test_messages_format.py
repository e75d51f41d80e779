"""Anthropic Messages bodies into chat jobs, offline and table-driven; every job the translator builds
must pass the job contract, and every refusal names the Messages field."""

from __future__ import annotations

from typing import Any

import pytest

from llm_router.contract import ChatJob
from llm_router.errors import InvalidRequest
from producer.messages_format import messages_param, messages_to_chat
from worker.providers.anthropic import THINKING_BUDGET as ANTHROPIC_THINKING_BUDGET

PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
WEATHER_SCHEMA = {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}
CALL = {
    "id": "toolu_01A",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"location":"San Francisco, CA"}'},
}

CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        # docs.anthropic.com/en/api/messages: system, sampling, stop sequences, metadata
        "text-and-parameters",
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "system": [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": "Hello, Claude"}],
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 40,
            "stop_sequences": ["\n\nHuman:"],
            "metadata": {"user_id": "user-7"},
            "service_tier": "auto",
            "thinking": {"type": "enabled", "budget_tokens": 2048},
            "fallbacks": ["gpt-4o-mini"],
        },
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Hello, Claude"},
            ],
            "temperature": 0.5,
            "top_p": 0.9,
            "stop": ["\n\nHuman:"],
            "user": "user-7",
            "reasoning_effort": "low",  # 2,048: low's 1,024 is the largest budget that fits
            "fallbacks": ["gpt-4o-mini"],
            "answer_format": "anthropic",
        },
    ),
    (
        # the vision guide: base64 and url image sources beside text
        "images",
        {
            "model": "gpt-4o-mini",
            "max_tokens": 100,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64},
                        },
                        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                        {"type": "text", "text": "Describe these."},
                    ],
                }
            ],
        },
        {
            "model": "gpt-4o-mini",
            "max_tokens": 100,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
                        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                        {"type": "text", "text": "Describe these."},
                    ],
                }
            ],
            "answer_format": "anthropic",
        },
    ),
    (
        # the tool-use guide's round trip: tool_use in the assistant turn, tool_result in the next
        "tool-round-trip",
        {
            "model": "gemini-2.5-flash",
            "max_tokens": 1024,
            "tools": [
                {"name": "get_weather", "description": "Get the weather", "input_schema": WEATHER_SCHEMA}
            ],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
            "messages": [
                {"role": "user", "content": "What's the weather like in San Francisco?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "I should call it.", "signature": "sig"},
                        {"type": "text", "text": "I'll check."},
                        {
                            "type": "tool_use",
                            "id": "toolu_01A",
                            "name": "get_weather",
                            "input": {"location": "San Francisco, CA"},
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "15 degrees"},
                        {"type": "text", "text": "And tomorrow?"},
                    ],
                },
            ],
        },
        {
            "model": "gemini-2.5-flash",
            "max_tokens": 1024,
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "description": "Get the weather",
                        "parameters": WEATHER_SCHEMA,
                    },
                }
            ],
            "tool_choice": "required",
            "parallel_tool_calls": False,
            "messages": [
                {"role": "user", "content": "What's the weather like in San Francisco?"},
                {"role": "assistant", "content": "I'll check.", "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "toolu_01A", "content": "15 degrees"},
                {"role": "user", "content": "And tomorrow?"},
            ],
            "answer_format": "anthropic",
        },
    ),
    (
        # a result with blocks and an image (a screenshot tool), flagged as an error
        "tool-result-blocks",
        {
            "model": "gpt-4o-mini",
            "max_tokens": 10,
            "tools": [{"name": "get_weather", "input_schema": WEATHER_SCHEMA}],
            "tool_choice": {"type": "tool", "name": "get_weather"},
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Go"}]},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t1",
                            "is_error": True,
                            "content": [
                                {"type": "text", "text": "timeout"},
                                {
                                    "type": "image",
                                    "source": {"type": "url", "url": "https://example.com/s.png"},
                                },
                            ],
                        }
                    ],
                },
            ],
        },
        {
            "model": "gpt-4o-mini",
            "max_tokens": 10,
            "tools": [
                {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA}}
            ],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "messages": [
                {"role": "user", "content": "Go"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "t1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": "{}"},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "t1", "content": "Error: timeout"},
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "https://example.com/s.png"}}],
                },
            ],
            "answer_format": "anthropic",
        },
    ),
    (
        # structured outputs and effort: output_config
        "output-config",
        {
            "model": "claude-opus-4-5",
            "max_tokens": 512,
            "stream": True,
            "messages": [{"role": "user", "content": "Extract"}],
            "output_config": {"effort": "high", "format": {"type": "json_schema", "schema": WEATHER_SCHEMA}},
        },
        {
            "model": "claude-opus-4-5",
            "max_tokens": 512,
            "stream": True,
            "messages": [{"role": "user", "content": "Extract"}],
            "reasoning_effort": "high",
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": WEATHER_SCHEMA},
            },
            "answer_format": "anthropic",
        },
    ),
]


@pytest.mark.parametrize(("name", "body", "expected"), CASES, ids=[c[0] for c in CASES])
def test_messages_body_becomes_the_chat_job(
    name: str, body: dict[str, Any], expected: dict[str, Any]
) -> None:
    job = messages_to_chat(body)
    assert job == expected
    ChatJob.model_validate(job)


HI = [{"role": "user", "content": "hi"}]
REFUSALS: list[tuple[str, dict[str, Any], str]] = [
    ("no-max-tokens", {"model": "m", "messages": HI}, "max_tokens"),
    ("no-model", {"max_tokens": 5, "messages": HI}, "model"),
    ("no-messages", {"model": "m", "max_tokens": 5}, "messages"),
    ("unknown-field", {"model": "m", "max_tokens": 5, "messages": HI, "n": 2}, "n"),
    ("container", {"model": "m", "max_tokens": 5, "messages": HI, "container": "c"}, "container"),
    ("mcp", {"model": "m", "max_tokens": 5, "messages": HI, "mcp_servers": [{}]}, "mcp_servers"),
    (
        "five-stops",
        {"model": "m", "max_tokens": 5, "messages": HI, "stop_sequences": list("abcde")},
        "stop_sequences",
    ),
    (
        "bad-role",
        {"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
        "messages[0].role",
    ),
    (
        "server-tool",
        {
            "model": "m",
            "max_tokens": 5,
            "messages": HI,
            "tools": [{"type": "web_search_20250305", "name": "w"}],
        },
        "tools[0].type",
    ),
    (
        "document",
        {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "document"}]}]},
        "messages[0].content[0].type",
    ),
    (
        "file-source",
        {
            "model": "m",
            "max_tokens": 5,
            "messages": [
                {"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}
            ],
        },
        "messages[0].content[0].source.type",
    ),
    (
        "tool-use-from-user",
        {
            "model": "m",
            "max_tokens": 5,
            "messages": [
                {"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "n", "input": {}}]}
            ],
        },
        "messages[0].content[0].type",
    ),
    (
        "result-without-id",
        {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "tool_result"}]}]},
        "messages[0].content[0].tool_use_id",
    ),
    (
        "bad-tool-choice",
        {"model": "m", "max_tokens": 5, "messages": HI, "tool_choice": {"type": "x"}},
        "tool_choice.type",
    ),
    (
        "bad-budget",
        {
            "model": "m",
            "max_tokens": 5,
            "messages": HI,
            "thinking": {"type": "enabled", "budget_tokens": "many"},
        },
        "thinking.budget_tokens",
    ),
    (
        "result-for-no-call",
        {
            "model": "m",
            "max_tokens": 5,
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "toolu_9", "content": "x"}],
                }
            ],
        },
        "messages[0].content[0].tool_use_id",
    ),
    (
        "system-image",
        {"model": "m", "max_tokens": 5, "messages": HI, "system": [{"type": "image"}]},
        "system[0]",
    ),
]


@pytest.mark.parametrize(("name", "body", "param"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_what_cannot_run_is_refused_naming_the_field(name: str, body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        messages_to_chat(body)
    assert refused.value.param == param


@pytest.mark.parametrize(
    ("chat", "messages"),
    [
        ("stop", "stop_sequences"),
        ("tools[0].function.parameters", "tools[0].input_schema"),
        ("tools[0].function.name", "tools[0].name"),
        ("user", "metadata.user_id"),
        ("messages[2].content", "messages"),
        ("max_tokens", "max_tokens"),
    ],
)
def test_errors_on_the_chat_job_name_the_messages_fields(chat: str, messages: str) -> None:
    assert messages_param(chat) == messages


@pytest.mark.parametrize(
    ("budget", "effort"),
    [(1024, "low"), (2048, "low"), (4095, "low"), (4096, "medium"), (16383, "medium"), (16384, "high"),
     (32768, "xhigh"), (100_000, "xhigh")],
)  # fmt: skip
def test_a_thinking_budget_becomes_the_largest_effort_that_fits_in_it(budget: int, effort: str) -> None:
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": budget + 1,
        "messages": [{"role": "user", "content": "hi"}],
        "thinking": {"type": "enabled", "budget_tokens": budget},
    }
    job = messages_to_chat(body)
    assert job["reasoning_effort"] == effort
    # the Anthropic adapter's budget for it stays under the request's max_tokens: thinking stays on
    assert ANTHROPIC_THINKING_BUDGET[effort] <= budget < body["max_tokens"]
