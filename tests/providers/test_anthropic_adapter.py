"""The Anthropic Messages adapter: pure translation, table-driven, both directions, offline.

Request bodies are checked against the examples of Anthropic's own API documentation (each test
names the page), not only against our simulator.
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion

from config.catalog import Deployment
from config.cost import FREE
from llm_router.contract import ChatJob
from llm_router.errors import RouterError
from worker.providers import ADAPTERS
from worker.providers import anthropic as adapter
from worker.providers.anthropic import json_answer_wrapped
from worker.providers.anthropic_stream import _Unwrap

DEP = Deployment(
    id="anthropic/claude-sonnet-4-5",
    provider="anthropic",
    format="anthropic",
    base_url="https://api.anthropic.com",
    upstream_model="claude-sonnet-4-5",
    price=FREE,
    api_key="sk-ant-secret-123456",
    headers={"anthropic-version": "2023-06-01"},
    max_output=64000,
)
REASONING_DEP = Deployment(
    id="anthropic/claude-opus-5",
    provider="anthropic",
    format="anthropic",
    base_url="https://api.anthropic.com",
    upstream_model="claude-opus-5",
    price=FREE,
    api_key="k",
    dialect="anthropic-reasoning",
    max_output=64000,
)
WEATHER_FN = {
    "name": "get_weather",
    "description": "Get the current weather in a given location",
    "parameters": {
        "type": "object",
        "properties": {
            "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"}
        },
        "required": ["location"],
    },
}
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Get the current weather in a given location",
    "input_schema": WEATHER_FN["parameters"],
}
PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def body_of(request: dict, dep: Deployment = DEP) -> dict:
    return orjson.loads(adapter.build_request(request, dep).body)


def test_registered_for_its_format_and_takes_urls_itself() -> None:
    wire = ADAPTERS["anthropic"]
    assert wire.build_request is adapter.build_request and wire.parse_response is adapter.parse_response
    assert wire.needs_image_bytes is False


def test_call_goes_to_v1_messages_with_key_and_version_headers() -> None:
    # docs.claude.com/en/api/messages: POST /v1/messages, x-api-key, anthropic-version: 2023-06-01
    call = adapter.build_request(
        {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]}, DEP
    )
    assert (call.method, call.url) == ("POST", "https://api.anthropic.com/v1/messages")
    assert call.headers["x-api-key"] == "sk-ant-secret-123456"
    assert call.headers["anthropic-version"] == "2023-06-01"
    assert call.headers["Content-Type"] == "application/json"
    assert "sk-ant" not in repr(call)


# (name, OpenAI-format job, the Anthropic body expected; the doc example it mirrors in the comment)
REQUESTS = [
    (
        # docs.claude.com/en/api/messages, "Example": a single user turn
        "hello-world",
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "messages": [{"role": "user", "content": "Hello, world"}],
        },
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "messages": [{"role": "user", "content": "Hello, world"}],
        },
    ),
    (
        # docs.claude.com/en/docs/build-with-claude/prompt-engineering/system-prompts: system is top-level
        "system-lifted-max-tokens-default-stop-and-params",
        {
            "model": "claude-sonnet-4-5",
            "messages": [
                {"role": "system", "content": "You are a seasoned data scientist at a Fortune 500 company."},
                {"role": "developer", "content": "Answer in English."},
                {"role": "user", "content": "Analyze this dataset for anomalies"},
            ],
            "temperature": 1.6,
            "top_p": 0.9,
            "stop": "END",
            "user": "user-42",
            "seed": 7,
            "frequency_penalty": 0.5,
            "metadata": {"ours": True},
            "tenant": "t1",
            "fallbacks": ["gpt-4o"],
        },
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 64000,  # required by Anthropic: the catalog's max output
            "system": [
                {"type": "text", "text": "You are a seasoned data scientist at a Fortune 500 company."},
                {"type": "text", "text": "Answer in English."},
            ],
            "messages": [{"role": "user", "content": "Analyze this dataset for anomalies"}],
            "temperature": 1.0,  # clamped to Anthropic's 0..1
            "top_p": 0.9,
            "stop_sequences": ["END"],
            "metadata": {"user_id": "user-42"},
        },
    ),
    (
        # docs.claude.com/en/docs/agents-and-tools/tool-use/implement-tool-use: the get_weather tool
        "tools-and-choice",
        {
            "model": "claude-sonnet-4-5",
            "max_completion_tokens": 1024,
            "max_tokens": 5,
            "tools": [{"type": "function", "function": WEATHER_FN}],
            "tool_choice": "required",
            "parallel_tool_calls": False,
            "messages": [{"role": "user", "content": "What is the weather like in San Francisco?"}],
        },
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "tools": [WEATHER_TOOL],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
            "messages": [{"role": "user", "content": "What is the weather like in San Francisco?"}],
        },
    ),
    (
        # the same page, "Handling results from client tools": tool_use then tool_result in a user turn
        "multi-turn-tool-use",
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "tools": [{"type": "function", "function": WEATHER_FN}],
            "messages": [
                {"role": "user", "content": "What's the weather like in San Francisco?"},
                {
                    "role": "assistant",
                    "content": "I need to use get_weather.",
                    "tool_calls": [
                        {
                            "id": "toolu_01A09q90qw90lq917835lq9",
                            "type": "function",
                            "function": {
                                "name": "get_weather",
                                "arguments": '{"location": "San Francisco, CA", "unit": "celsius"}',
                            },
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "toolu_01A09q90qw90lq917835lq9", "content": "15 degrees"},
                {"role": "user", "content": "And tomorrow?"},
            ],
        },
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "tools": [WEATHER_TOOL],
            "messages": [
                {"role": "user", "content": "What's the weather like in San Francisco?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "I need to use get_weather."},
                        {
                            "type": "tool_use",
                            "id": "toolu_01A09q90qw90lq917835lq9",
                            "name": "get_weather",
                            "input": {"location": "San Francisco, CA", "unit": "celsius"},
                        },
                    ],
                },
                {
                    "role": "user",  # the tool result and the next user turn merged, result first
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_01A09q90qw90lq917835lq9",
                            "content": "15 degrees",
                        },
                        {"type": "text", "text": "And tomorrow?"},
                    ],
                },
            ],
        },
    ),
    (
        # docs.claude.com/en/docs/build-with-claude/vision: base64 and URL image sources
        "mixed-text-and-images",
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Image 1:"},
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
                        {"type": "text", "text": "Image 2:"},
                        {
                            "type": "image_url",
                            "image_url": {
                                "url": "https://upload.wikimedia.org/wikipedia/commons/a/a7/Camponotus_flavomarginatus_ant.jpg",
                                "detail": "high",
                            },
                        },
                        {"type": "text", "text": "How are these images different?"},
                    ],
                }
            ],
        },
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Image 1:"},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64},
                        },
                        {"type": "text", "text": "Image 2:"},
                        {
                            "type": "image",
                            "source": {
                                "type": "url",
                                "url": "https://upload.wikimedia.org/wikipedia/commons/a/a7/Camponotus_flavomarginatus_ant.jpg",
                            },
                        },
                        {"type": "text", "text": "How are these images different?"},
                    ],
                }
            ],
        },
    ),
    (
        "legacy-functions-and-function-results",
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 100,
            "functions": [WEATHER_FN],
            "function_call": {"name": "get_weather"},
            "messages": [
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "content": None,
                    "function_call": {"name": "get_weather", "arguments": "{}"},
                },
                {"role": "function", "name": "get_weather", "content": "sunny"},
            ],
        },
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 100,
            "tools": [WEATHER_TOOL],
            "tool_choice": {"type": "tool", "name": "get_weather"},
            "messages": [
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "tool_use", "id": "toolu_fn1_ID", "name": "get_weather", "input": {}}
                    ],
                },
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "toolu_fn1_ID", "content": "sunny"}],
                },
            ],
        },
    ),
    (
        # docs.claude.com/en/docs/build-with-claude/extended-thinking: thinking with budget_tokens
        "reasoning-effort-is-thinking",
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 16000,
            "temperature": 0.2,
            "reasoning_effort": "medium",
            "messages": [{"role": "user", "content": "Are there an infinite number of prime numbers?"}],
        },
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 16000,
            "thinking": {"type": "enabled", "budget_tokens": 4096},
            "messages": [{"role": "user", "content": "Are there an infinite number of prime numbers?"}],
        },
    ),
    (
        "json-schema-is-a-forced-tool",
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 200,
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "person",
                    "schema": {"type": "object", "properties": {"n": {"type": "string"}}},
                },
            },
            "messages": [{"role": "user", "content": "a person"}],
        },
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 200,
            "tools": [
                {
                    "name": "person",
                    "description": "Respond with the answer as this tool's input.",
                    "input_schema": {"type": "object", "properties": {"n": {"type": "string"}}},
                }
            ],
            "tool_choice": {"type": "tool", "name": "person"},
            "messages": [{"role": "user", "content": "a person"}],
        },
    ),
]


@pytest.mark.parametrize(("name", "request_", "expected"), REQUESTS, ids=[r[0] for r in REQUESTS])
def test_request_translation(name: str, request_: dict, expected: dict) -> None:
    ChatJob.model_validate(request_)  # every input is a valid job
    got = body_of(request_)
    if name.startswith("legacy"):  # the synthetic id of a legacy call is derived; pair it, then compare
        call_id = got["messages"][1]["content"][0]["id"]
        assert got["messages"][2]["content"][0]["tool_use_id"] == call_id
        expected = orjson.loads(orjson.dumps(expected).replace(b"toolu_fn1_ID", call_id.encode()))
    assert got == expected


def test_models_that_refuse_sampling_parameters_get_effort_instead() -> None:
    request = {
        "model": "claude-opus-5",
        "temperature": 0.3,
        "top_p": 0.5,
        "reasoning_effort": "high",
        "messages": [{"role": "user", "content": "hi"}],
    }
    assert body_of(request, REASONING_DEP) == {
        "model": "claude-opus-5",
        "max_tokens": 64000,
        "output_config": {"effort": "high"},
        "messages": [{"role": "user", "content": "hi"}],
    }


def test_every_job_parameter_has_a_rule() -> None:
    covered = set(adapter.PARAMS) | adapter.DROPPED | adapter.STRUCTURAL
    from llm_router.contract import RESERVED_KEYS

    assert set(ChatJob.model_fields) - RESERVED_KEYS <= covered


@pytest.mark.parametrize(
    ("request_", "param"),
    [
        ({"n": 2}, "n"),
        (
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "[1]"}}
                        ],
                    },
                    {"role": "tool", "tool_call_id": "c1", "content": "r"},
                ],
                "tools": [{"type": "function", "function": {"name": "f"}}],
            },
            "messages[1].tool_calls[0].function.arguments",
        ),
    ],
)
def test_requests_anthropic_cannot_take_are_refused_naming_the_field(request_: dict, param: str) -> None:
    request = {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}], **request_}
    with pytest.raises(RouterError) as info:
        adapter.build_request(request, DEP)
    assert (info.value.code, info.value.param) == ("invalid_request", param)


def test_foreign_tool_ids_get_a_stable_valid_stand_in() -> None:
    request = {
        "model": "m",
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "messages": [
            {"role": "user", "content": "x"},
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "call|1=", "type": "function", "function": {"name": "f", "arguments": ""}}
                ],
            },
            {"role": "tool", "tool_call_id": "call|1=", "content": "r"},
        ],
    }
    msgs = body_of(request)["messages"]
    call_id = msgs[1]["content"][0]["id"]
    assert call_id.startswith("toolu_") and msgs[2]["content"][0]["tool_use_id"] == call_id


# -- answers ----------------------------------------------------------------------------------

# docs.claude.com/en/api/messages, the example response
DOC_RESPONSE = {
    "content": [{"text": "Hi! My name is Claude.", "type": "text"}],
    "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
    "model": "claude-sonnet-4-5-20250929",
    "role": "assistant",
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "type": "message",
    "usage": {"input_tokens": 2095, "output_tokens": 503},
}
TOOL_RESPONSE = {
    **DOC_RESPONSE,
    "content": [
        {"type": "text", "text": "I'll check."},
        {
            "type": "tool_use",
            "id": "toolu_01",
            "name": "get_weather",
            "input": {"location": "San Francisco, CA"},
        },
    ],
    "stop_reason": "tool_use",
}


def parse(body: dict, request: dict | None = None):
    return adapter.parse_response(200, {}, orjson.dumps(body), request or {"model": "claude-sonnet-4-5"})


def test_doc_response_becomes_a_valid_chat_completion() -> None:
    done = parse(DOC_RESPONSE)
    ChatCompletion.model_validate(done.response)
    assert done.response["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hi! My name is Claude.", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert (done.prompt_tokens, done.completion_tokens, done.cached_tokens, done.cache_write_tokens) == (
        2095,
        503,
        0,
        0,
    )
    assert done.response["usage"]["total_tokens"] == 2598


def test_tool_use_becomes_tool_calls() -> None:
    done = parse(TOOL_RESPONSE)
    ChatCompletion.model_validate(done.response)
    choice = done.response["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "I'll check."
    assert choice["message"]["tool_calls"] == [
        {
            "id": "toolu_01",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"location":"San Francisco, CA"}'},
        }
    ]


def test_tool_use_on_a_legacy_request_becomes_function_call() -> None:
    done = parse(TOOL_RESPONSE, {"model": "m", "functions": [WEATHER_FN]})
    ChatCompletion.model_validate(done.response)
    choice = done.response["choices"][0]
    assert choice["finish_reason"] == "function_call"
    assert choice["message"]["function_call"] == {
        "name": "get_weather",
        "arguments": '{"location":"San Francisco, CA"}',
    }
    assert "tool_calls" not in choice["message"]


def test_forced_json_tool_answer_becomes_content() -> None:
    request = {
        "model": "m",
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": {"type": "object"}},
        },
    }
    body = {
        **TOOL_RESPONSE,
        "content": [{"type": "tool_use", "id": "t", "name": "person", "input": {"n": "Ada"}}],
    }
    done = parse(body, request)
    assert done.response["choices"][0]["message"]["content"] == '{"n":"Ada"}'
    assert done.response["choices"][0]["finish_reason"] == "stop"


def test_thinking_blocks_are_not_the_answer() -> None:
    body = {
        **DOC_RESPONSE,
        "content": [{"type": "thinking", "thinking": "hmm", "signature": "s"}, *DOC_RESPONSE["content"]],
    }
    assert parse(body).response["choices"][0]["message"]["content"] == "Hi! My name is Claude."


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("pause_turn", "stop"),
        ("model_context_window_exceeded", "length"),
        ("refusal", "content_filter"),
        ("something_new", "stop"),
    ],
)
def test_stop_reasons(stop_reason: str, finish: str) -> None:
    assert (
        parse({**DOC_RESPONSE, "stop_reason": stop_reason}).response["choices"][0]["finish_reason"] == finish
    )


def test_refusal_without_content_is_content_filtered() -> None:
    with pytest.raises(RouterError) as info:
        parse({**DOC_RESPONSE, "content": [], "stop_reason": "refusal"})
    assert info.value.code == "content_filtered"


def test_cache_usage_sums_into_prompt_tokens() -> None:
    # docs.claude.com/en/docs/build-with-claude/prompt-caching, the usage of a cache write and a read
    usage = {
        "input_tokens": 21,
        "cache_creation_input_tokens": 188086,
        "cache_read_input_tokens": 0,
        "output_tokens": 393,
    }
    written = parse({**DOC_RESPONSE, "usage": usage})
    assert (written.prompt_tokens, written.cache_write_tokens, written.cached_tokens) == (188107, 188086, 0)
    read = parse(
        {
            **DOC_RESPONSE,
            "usage": {**usage, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 188086},
        }
    )
    assert (read.prompt_tokens, read.cache_write_tokens, read.cached_tokens) == (188107, 0, 188086)
    details = read.response["usage"]["prompt_tokens_details"]
    assert details == {"cached_tokens": 188086, "cache_write_tokens": 0}
    ChatCompletion.model_validate(read.response)


# (status, headers, body, code, retry_after)
ERRORS = [
    (
        529,
        {},
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        "overloaded",
        None,
    ),
    (
        429,
        {"retry-after": "12"},
        {"type": "error", "error": {"type": "rate_limit_error", "message": "slow"}},
        "rate_limited",
        12.0,
    ),
    (
        401,
        {},
        {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}},
        "auth_failed",
        None,
    ),
    (403, {}, {"type": "error", "error": {"type": "permission_error", "message": "no"}}, "auth_failed", None),
    (
        404,
        {},
        {"type": "error", "error": {"type": "not_found_error", "message": "model: x"}},
        "upstream_not_found",
        None,
    ),
    (
        400,
        {},
        {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"},
        },
        "upstream_invalid_request",
        None,
    ),
    (
        400,
        {},
        {
            "type": "error",
            "error": {
                "type": "invalid_request_error",
                "message": "prompt is too long: 208310 tokens > 200000 maximum",
            },
        },
        "context_length_exceeded",
        None,
    ),
    (
        400,
        {},
        {
            "type": "error",
            "error": {
                "type": "invalid_request_error",
                "message": "input length and `max_tokens` exceed context limit: 188240 + 21333 > 200000",
            },
        },
        "context_length_exceeded",
        None,
    ),
    (
        402,
        {},
        {"type": "error", "error": {"type": "billing_error", "message": "credit balance too low"}},
        "provider_out_of_credits",
        None,
    ),
    (
        413,
        {},
        {"type": "error", "error": {"type": "request_too_large", "message": "too big"}},
        "upstream_invalid_request",
        None,
    ),
    (
        500,
        {},
        {"type": "error", "error": {"type": "api_error", "message": "Internal server error"}},
        "upstream_error",
        None,
    ),
    (504, {}, {"type": "error", "error": {"type": "timeout_error", "message": "timeout"}}, "timeout", None),
    (502, {}, b"<html>bad gateway</html>", "upstream_error", None),
    (529, {}, b"", "overloaded", None),
    (
        200,
        {},
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        "overloaded",
        None,
    ),
]


@pytest.mark.parametrize(("status", "headers", "body", "code", "retry_after"), ERRORS)
def test_errors_map_through_the_table(status, headers, body, code, retry_after) -> None:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    with pytest.raises(RouterError) as info:
        adapter.parse_response(status, headers, raw, {})
    assert info.value.code == code
    assert info.value.retry_after == retry_after


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        orjson.dumps({**DOC_RESPONSE, "content": None}),
        orjson.dumps({**DOC_RESPONSE, "usage": None}),
        orjson.dumps({**DOC_RESPONSE, "usage": {"output_tokens": 1}}),
        orjson.dumps({**DOC_RESPONSE, "usage": {"input_tokens": "3"}}),
    ],
)
def test_malformed_answers_are_bad_response(body: bytes) -> None:
    with pytest.raises(RouterError) as info:
        adapter.parse_response(200, {}, body, {})
    assert info.value.code == "bad_response"


@given(
    value=st.sampled_from(['[{"a":1},{"b":[2,3]}]', "42", '"a } brace "', '{"x":{"y":"}"}}', "[]", "null"]),
    spacing=st.sampled_from([("", ""), (" ", " "), ("\n", "\n")]),
    cuts=st.lists(st.integers(min_value=1, max_value=60), max_size=8),
)
def test_a_wrapped_answer_streams_as_the_answer_alone(
    value: str, spacing: tuple[str, str], cuts: list[int]
) -> None:
    # the forced answer tool of a schema whose root is not an object takes {"value": answer}; its
    # input arrives in pieces cut anywhere, and the client must see the answer's JSON alone
    full = '{"value":' + spacing[0] + value + spacing[1] + "}"
    points = sorted({c for c in cuts if c < len(full)})
    pieces = [full[i:j] for i, j in zip([0, *points], [*points, len(full)], strict=True)]
    unwrap = _Unwrap()
    assert "".join(unwrap.feed(p) for p in pieces) + unwrap.end() == value


def test_a_structured_answer_whose_schema_is_not_an_object_goes_through_a_wrapped_tool() -> None:
    schema = {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}}
    request = {
        "model": "claude-haiku-4-5",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "list"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "recipes", "schema": schema}},
    }
    assert json_answer_wrapped(request)
    assert not json_answer_wrapped({**request, "response_format": {"type": "json_schema", "json_schema": {
        "name": "r", "schema": {"type": "object", "properties": {}}}}})  # fmt: skip
    # Anthropic takes only an object as a tool's input: the answer goes under "value"
    (tool,) = body_of(request)["tools"]
    assert tool["input_schema"] == {"type": "object", "properties": {"value": schema}, "required": ["value"]}
    answer = [{"name": "shortbread"}]
    body = {
        **TOOL_RESPONSE,
        "content": [{"type": "tool_use", "id": "t", "name": "recipes", "input": {"value": answer}}],
    }
    done = parse(body, request)
    assert orjson.loads(done.response["choices"][0]["message"]["content"]) == answer
    assert done.response["choices"][0]["finish_reason"] == "stop"
