"""Responses API bodies into chat jobs, offline and table-driven; every job the translator builds must
pass the job contract, and every refusal names the Responses field."""

from __future__ import annotations

from typing import Any

import pytest

from llm_router.contract import ChatJob
from llm_router.errors import InvalidRequest
from producer.responses_format import (
    FRONT_KEY,
    conversation_of,
    responses_param,
    responses_to_chat,
)

PNG = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": True,
}
CHAT_WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": WEATHER["parameters"],
        "strict": True,
    },
}
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
}

CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        # developers.openai.com/api/docs/guides/text: instructions and a string input
        "text-and-parameters",
        {
            "model": "gpt-4o-mini",
            "instructions": "Talk like a pirate.",
            "input": "Are semicolons optional in JavaScript?",
            "temperature": 0.2,
            "top_p": 0.9,
            "max_output_tokens": 64,
            "user": "u-1",
            "store": True,
            "service_tier": "auto",
            "parallel_tool_calls": False,
            "include": ["message.output_text.logprobs"],
            "truncation": "disabled",
            "reasoning": {"effort": "low", "summary": "auto"},
            "text": {"verbosity": "low"},
            "metadata": {"order": "42"},
            "fallbacks": ["claude-haiku-4-5"],
        },
        {
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "Talk like a pirate."},
                {"role": "user", "content": "Are semicolons optional in JavaScript?"},
            ],
            "temperature": 0.2,
            "top_p": 0.9,
            "max_tokens": 64,
            "user": "u-1",
            "store": True,
            "service_tier": "auto",
            "parallel_tool_calls": False,
            "reasoning_effort": "low",
            "verbosity": "low",
            "metadata": {"order": "42", FRONT_KEY: {"instructions": True}},
            "fallbacks": ["claude-haiku-4-5"],
            "answer_format": "responses",
        },
    ),
    (
        # developers.openai.com/api/docs/guides/images-vision: input_text + input_image (URL and data)
        "image-parts",
        {
            "model": "gpt-4o-mini",
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "What is in these images?"},
                        {"type": "input_image", "image_url": "https://example.com/cat.png", "detail": "low"},
                        {"type": "input_image", "image_url": PNG},
                    ],
                }
            ],
        },
        {
            "model": "gpt-4o-mini",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is in these images?"},
                        {
                            "type": "image_url",
                            "image_url": {"url": "https://example.com/cat.png", "detail": "low"},
                        },
                        {"type": "image_url", "image_url": {"url": PNG}},
                    ],
                }
            ],
            "answer_format": "responses",
        },
    ),
    (
        # the function-calling guide's loop: the output items appended back, then the result
        "tool-loop-items",
        {
            "model": "claude-haiku-4-5",
            "tools": [WEATHER],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "input": [
                {"role": "developer", "content": "Use tools."},
                {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "status": "completed",
                    "content": [
                        {"type": "output_text", "text": "Checking.", "annotations": [], "logprobs": []}
                    ],
                },
                {
                    "type": "function_call",
                    "id": "fc_1",
                    "call_id": "call_1",
                    "name": "get_weather",
                    "arguments": '{"city":"Paris"}',
                    "status": "completed",
                },
                {"type": "function_call_output", "call_id": "call_1", "output": '{"temp_c": 21}'},
            ],
        },
        {
            "model": "claude-haiku-4-5",
            "tools": [CHAT_WEATHER],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "messages": [
                {"role": "developer", "content": "Use tools."},
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "Checking.", "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'},
            ],
            "answer_format": "responses",
        },
    ),
    (
        "calls-without-text-and-list-output",
        {
            "model": "gemini-2.5-flash",
            "tools": [WEATHER],
            "input": [
                {"type": "message", "role": "user", "content": "Paris and Rome?"},
                {
                    "type": "function_call",
                    "call_id": "call_1",
                    "name": "get_weather",
                    "arguments": '{"city":"Paris"}',
                },
                {
                    "type": "function_call",
                    "call_id": "call_2",
                    "name": "get_weather",
                    "arguments": '{"city":"Rome"}',
                },
                {"type": "function_call_output", "call_id": "call_1", "output": "21"},
                {
                    "type": "function_call_output",
                    "call_id": "call_2",
                    "output": [{"type": "input_text", "text": "2"}, {"type": "input_text", "text": "5"}],
                },
            ],
        },
        {
            "model": "gemini-2.5-flash",
            "tools": [CHAT_WEATHER],
            "messages": [
                {"role": "user", "content": "Paris and Rome?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        CALL,
                        {
                            "id": "call_2",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "21"},
                {"role": "tool", "tool_call_id": "call_2", "content": "25"},
            ],
            "answer_format": "responses",
        },
    ),
    (
        # allowed_tools narrows the list the model sees, in its mode
        "allowed-tools",
        {
            "model": "gpt-4o-mini",
            "input": "hi",
            "tools": [WEATHER, {**WEATHER, "name": "get_time"}],
            "tool_choice": {
                "type": "allowed_tools",
                "mode": "required",
                "tools": [{"type": "function", "name": "get_time"}],
            },
        },
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {**CHAT_WEATHER["function"], "name": "get_time"}}],
            "tool_choice": "required",
            "answer_format": "responses",
        },
    ),
    (
        # developers.openai.com/api/docs/guides/structured-outputs: text.format json_schema
        "structured-output",
        {
            "model": "gpt-4o-mini",
            "input": "Alice and Bob go to a science fair on Friday.",
            "text": {
                "format": {
                    "type": "json_schema",
                    "name": "calendar_event",
                    "schema": {
                        "type": "object",
                        "properties": {"name": {"type": "string"}},
                        "required": ["name"],
                    },
                    "strict": True,
                }
            },
            "stream": True,
            "background": False,
        },
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "Alice and Bob go to a science fair on Friday."}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "calendar_event",
                    "schema": {
                        "type": "object",
                        "properties": {"name": {"type": "string"}},
                        "required": ["name"],
                    },
                    "strict": True,
                },
            },
            "stream": True,
            "metadata": {FRONT_KEY: {"background": False}},
            "answer_format": "responses",
        },
    ),
    (
        "json-object-and-text-formats",
        {"model": "gpt-4o-mini", "input": "JSON please", "text": {"format": {"type": "json_object"}}},
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "JSON please"}],
            "response_format": {"type": "json_object"},
            "answer_format": "responses",
        },
    ),
]


@pytest.mark.parametrize(("name", "body", "expected"), CASES, ids=[c[0] for c in CASES])
def test_responses_body_becomes_the_chat_job(
    name: str, body: dict[str, Any], expected: dict[str, Any]
) -> None:
    job = responses_to_chat(body)
    assert job == expected
    ChatJob.model_validate(job)  # what the translator builds, the contract takes


def test_previous_response_continues_its_conversation_without_its_instructions() -> None:
    first = responses_to_chat(
        {
            "model": "gpt-4o-mini",
            "instructions": "Be terse.",
            "input": "Weather in Paris?",
            "tools": [WEATHER],
        }
    )
    answer = {
        "choices": [
            {
                "message": {"role": "assistant", "content": None, "refusal": None, "tool_calls": [CALL]},
                "finish_reason": "tool_calls",
            }
        ]
    }
    history = conversation_of(first, answer)
    assert history == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
    ]
    second = responses_to_chat(
        {
            "model": "gpt-4o-mini",
            "instructions": "Answer in French.",
            "previous_response_id": "resp_1",
            "tools": [WEATHER],
            "input": [{"type": "function_call_output", "call_id": "call_1", "output": "21"}],
        },
        history=history,
    )
    assert second["messages"] == [
        {"role": "system", "content": "Answer in French."},
        *history,
        {"role": "tool", "tool_call_id": "call_1", "content": "21"},
    ]
    # the front keeps how many messages came before this response's own input (its input items)
    assert second["metadata"][FRONT_KEY] == {
        "instructions": True,
        "previous_response_id": "resp_1",
        "history": 2,
    }
    ChatJob.model_validate(second)
    # a third turn chains from the second's record: its instructions drop out, the first's stay out
    third = conversation_of(
        second, {"choices": [{"message": {"role": "assistant", "content": "Il fait 21."}}]}
    )
    assert third == [*second["messages"][1:], {"role": "assistant", "content": "Il fait 21."}]


REFUSALS: list[tuple[str, dict[str, Any], str]] = [
    ("no-model", {"input": "hi"}, "model"),
    ("no-input", {"model": "m"}, "input"),
    ("unknown-field", {"model": "m", "input": "hi", "temprature": 1}, "temprature"),
    ("conversation", {"model": "m", "input": "hi", "conversation": "conv_1"}, "conversation"),
    ("prompt-template", {"model": "m", "input": "hi", "prompt": {"id": "pmpt_1"}}, "prompt"),
    ("input-not-list", {"model": "m", "input": 3}, "input"),
    ("hosted-tool", {"model": "m", "input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ("hosted-item", {"model": "m", "input": [{"type": "web_search_call", "id": "ws"}]}, "input[0].type"),
    ("item-reference", {"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ("bad-role", {"model": "m", "input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
    (
        "file-input",
        {"model": "m", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
        "input[0].content[0].type",
    ),
    (
        "image-by-file-id",
        {"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
        "input[0].content[0].file_id",
    ),
    (
        "image-in-system",
        {"model": "m", "input": [{"role": "system", "content": [{"type": "input_image", "image_url": PNG}]}]},
        "input[0].content[0]",
    ),
    (
        "output-for-no-call",
        {"model": "m", "input": [{"type": "function_call_output", "call_id": "call_9", "output": "x"}]},
        "input[0].call_id",
    ),
    (
        "call-without-name",
        {"model": "m", "input": [{"type": "function_call", "call_id": "c", "arguments": "{}"}]},
        "input[0].name",
    ),
    ("bad-tool-choice", {"model": "m", "input": "hi", "tool_choice": {"type": "mcp"}}, "tool_choice"),
    ("bad-format", {"model": "m", "input": "hi", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
    (
        "schema-missing",
        {"model": "m", "input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}},
        "text.format.schema",
    ),
    ("instructions-not-text", {"model": "m", "input": "hi", "instructions": ["x"]}, "instructions"),
    (
        "reserved-metadata",
        {"model": "m", "input": "hi", "metadata": {FRONT_KEY: "x"}},
        f"metadata.{FRONT_KEY}",
    ),
    ("background-not-bool", {"model": "m", "input": "hi", "background": "yes"}, "background"),
    ("metadata-not-strings", {"model": "m", "input": "hi", "metadata": {"n": 1}}, "metadata.n"),
    (
        "metadata-too-many",
        {"model": "m", "input": "hi", "metadata": {str(i): "v" for i in range(17)}},
        "metadata",
    ),
]


@pytest.mark.parametrize(("name", "body", "param"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_what_cannot_run_is_refused_naming_the_field(name: str, body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        responses_to_chat(body)
    assert refused.value.param == param


@pytest.mark.parametrize(
    ("chat", "responses"),
    [
        ("max_tokens", "max_output_tokens"),
        ("response_format.json_schema.schema", "text.format.schema"),
        ("tools[1].function.parameters", "tools[1].parameters"),
        ("reasoning_effort", "reasoning.effort"),
        ("messages[3].content[1].image_url.url", "input"),
        ("temperature", "temperature"),
        (None, None),
    ],
)
def test_errors_on_the_chat_job_name_the_responses_fields(chat: str | None, responses: str | None) -> None:
    assert responses_param(chat) == responses
