"""The Gemini generateContent adapter: pure translation, table-driven, both directions, offline.

Request bodies are checked against the examples of Google's Gemini API documentation (each test
names the page). The docs' REST samples often spell fields as proto names (``system_instruction``,
``inline_data``); the API takes both spellings and we send lowerCamelCase, so the examples are
compared after ``camel()``.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from google.genai import types as gtypes
from openai.types.chat import ChatCompletion

from config.catalog import Deployment
from config.cost import FREE
from llm_router.contract import RESERVED_KEYS, ChatJob
from llm_router.errors import RouterError
from worker.providers import ADAPTERS
from worker.providers import gemini as adapter

DEP = Deployment(
    id="gemini/gemini-2.5-flash",
    provider="gemini",
    format="gemini",
    base_url="https://generativelanguage.googleapis.com",
    upstream_model="gemini-2.5-flash",
    price=FREE,
    api_key="AIza-secret-key-123456",
)
GEMINI3 = Deployment(
    id="gemini/gemini-3-pro-preview",
    provider="gemini",
    format="gemini",
    base_url="https://generativelanguage.googleapis.com",
    upstream_model="gemini-3-pro-preview",
    price=FREE,
    api_key="k",
)
PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
# ai.google.dev/gemini-api/docs/function-calling, the schedule_meeting declaration
MEETING = {
    "name": "schedule_meeting",
    "description": "Schedules a meeting with specified attendees at a given time and date.",
    "parameters": {
        "type": "object",
        "properties": {
            "attendees": {
                "type": "array",
                "items": {"type": "string"},
                "description": "List of people attending the meeting.",
            },
            "date": {"type": "string", "description": "Date of the meeting (e.g., '2024-07-29')"},
            "time": {"type": "string", "description": "Time of the meeting (e.g., '15:00')"},
            "topic": {"type": "string", "description": "The subject or topic of the meeting."},
        },
        "required": ["attendees", "date", "time", "topic"],
    },
}


def camel(value: Any) -> Any:
    """Proto names → lowerCamelCase keys (not inside schemas and args, whose keys are data)."""
    if isinstance(value, list):
        return [camel(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for k, v in value.items():
        name = re.sub(r"_([a-z])", lambda m: m.group(1).upper(), k)
        out[name] = v if name in ("parameters", "args", "response", "properties") else camel(v)
    return out


def body_of(request: dict, dep: Deployment = DEP) -> dict:
    return orjson.loads(adapter.build_request(request, dep).body)


def test_registered_for_its_format_and_needs_image_bytes() -> None:
    wire = ADAPTERS["gemini"]
    assert wire.build_request is adapter.build_request and wire.parse_response is adapter.parse_response
    assert wire.needs_image_bytes is True


def test_call_goes_to_generate_content_with_the_key_in_a_header() -> None:
    # ai.google.dev/api/generate-content: POST v1beta/{model=models/*}:generateContent, x-goog-api-key
    call = adapter.build_request(
        {"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "hi"}]}, DEP
    )
    assert (
        call.url == "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
    )
    assert call.headers["x-goog-api-key"] == "AIza-secret-key-123456"
    assert "key=" not in call.url and "AIza" not in repr(call)


REQUESTS = [
    (
        # ai.google.dev/gemini-api/docs/text-generation, "System instructions" (REST)
        "system-instruction",
        {
            "model": "gemini-2.5-flash",
            "messages": [
                {"role": "system", "content": "You are a cat. Your name is Neko."},
                {"role": "user", "content": "Hello there"},
            ],
        },
        camel(
            {
                "system_instruction": {"parts": [{"text": "You are a cat. Your name is Neko."}]},
                "contents": [{"role": "user", "parts": [{"text": "Hello there"}]}],
            }
        ),
    ),
    (
        # the same page, "Configure text generation": stopSequences, temperature, topP, maxOutputTokens
        "generation-config",
        {
            "model": "gemini-2.5-flash",
            "messages": [{"role": "user", "content": "Explain how AI works"}],
            "stop": ["Title"],
            "temperature": 1.0,
            "top_p": 0.8,
            "max_tokens": 800,
            "seed": 3,
            "n": 2,
            "presence_penalty": 0.1,
            "logit_bias": {"1": 2},
            "user": "u",
            "deadline_s": 60,
        },
        {
            "contents": [{"role": "user", "parts": [{"text": "Explain how AI works"}]}],
            "generationConfig": {
                "stopSequences": ["Title"],
                "temperature": 1.0,
                "topP": 0.8,
                "maxOutputTokens": 800,
                "seed": 3,
                "candidateCount": 2,
                "presencePenalty": 0.1,
            },
        },
    ),
    (
        # ai.google.dev/gemini-api/docs/function-calling: functionDeclarations, forced with ANY
        "function-declarations",
        {
            "model": "gemini-2.5-flash",
            "messages": [
                {
                    "role": "user",
                    "content": "Schedule a meeting with Bob and Alice for 03/27/2025 at 10:00 AM "
                    "about the Q3 planning.",
                }
            ],
            "tools": [{"type": "function", "function": MEETING}],
            "tool_choice": {"type": "function", "function": {"name": "schedule_meeting"}},
        },
        {
            "contents": [
                {
                    "role": "user",
                    "parts": [
                        {
                            "text": "Schedule a meeting with Bob and Alice for 03/27/2025 at 10:00 AM "
                            "about the Q3 planning."
                        }
                    ],
                }
            ],
            "tools": [{"functionDeclarations": [MEETING]}],
            "toolConfig": {
                "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["schedule_meeting"]}
            },
        },
    ),
    (
        # the same page, the multi-turn flow: the model's functionCall, then a user functionResponse
        "multi-turn-function-calling",
        {
            "model": "gemini-2.5-flash",
            "tools": [{"type": "function", "function": MEETING}],
            "messages": [
                {"role": "user", "content": "Schedule it"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "schedule_meeting", "arguments": '{"topic": "Q3 planning"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": '{"status": "scheduled"}'},
                {"role": "tool", "tool_call_id": "call_1", "content": "plain text result"},
                {"role": "assistant", "content": "Done."},
            ],
        },
        {
            "contents": [
                {"role": "user", "parts": [{"text": "Schedule it"}]},
                {
                    "role": "model",
                    "parts": [
                        {"functionCall": {"name": "schedule_meeting", "args": {"topic": "Q3 planning"}}}
                    ],
                },
                {
                    "role": "user",
                    "parts": [
                        {
                            "functionResponse": {
                                "name": "schedule_meeting",
                                "response": {"status": "scheduled"},
                            }
                        },
                        {
                            "functionResponse": {
                                "name": "schedule_meeting",
                                "response": {"output": "plain text result"},
                            }
                        },
                    ],
                },
                {"role": "model", "parts": [{"text": "Done."}]},
            ],
            "tools": [{"functionDeclarations": [MEETING]}],
        },
    ),
    (
        # ai.google.dev/gemini-api/docs/image-understanding, "Passing images inline" (REST)
        "mixed-text-and-images",
        {
            "model": "gemini-2.5-flash",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{PNG_B64}"}},
                        {"type": "text", "text": "Caption this image."},
                        {"type": "image_url", "image_url": {"url": "https://example.com/photo.png"}},
                    ],
                }
            ],
        },
        camel(
            {
                "contents": [
                    {
                        "role": "user",
                        "parts": [
                            {"inline_data": {"mime_type": "image/jpeg", "data": PNG_B64}},
                            {"text": "Caption this image."},
                            {
                                "file_data": {
                                    "mime_type": "image/png",
                                    "file_uri": "https://example.com/photo.png",
                                }
                            },
                        ],
                    }
                ]
            }
        ),
    ),
    (
        # ai.google.dev/gemini-api/docs/structured-output: responseMimeType + responseJsonSchema
        "json-schema-and-thinking",
        {
            "model": "gemini-2.5-flash",
            "messages": [{"role": "user", "content": "List a few cookie recipes"}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "recipes", "schema": {"type": "array", "items": {"type": "string"}}},
            },
            "reasoning_effort": "low",
        },
        {
            "contents": [{"role": "user", "parts": [{"text": "List a few cookie recipes"}]}],
            "generationConfig": {
                "responseMimeType": "application/json",
                "responseJsonSchema": {"type": "array", "items": {"type": "string"}},
                "thinkingConfig": {"thinkingBudget": 1024},
            },
        },
    ),
    (
        "legacy-functions-and-json-schema-keywords-beyond-openapi",
        {
            "model": "gemini-2.5-flash",
            "functions": [
                {
                    "name": "f",
                    "parameters": {
                        "type": "object",
                        "properties": {"a": {"type": "string"}},
                        "additionalProperties": False,
                    },
                },
                {"name": "g", "parameters": {"type": "object", "properties": {}}},
            ],
            "function_call": "auto",
            "messages": [
                {"role": "user", "content": "x"},
                {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}},
                {"role": "function", "name": "f", "content": "ok"},
            ],
        },
        {
            "contents": [
                {"role": "user", "parts": [{"text": "x"}]},
                {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}]},
                {
                    "role": "user",
                    "parts": [{"functionResponse": {"name": "f", "response": {"output": "ok"}}}],
                },
            ],
            "tools": [
                {
                    "functionDeclarations": [
                        {
                            "name": "f",
                            "parametersJsonSchema": {
                                "type": "object",
                                "properties": {"a": {"type": "string"}},
                                "additionalProperties": False,
                            },
                        },
                        {"name": "g"},
                    ]
                }
            ],
            "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
        },
    ),
]


@pytest.mark.parametrize(("name", "request_", "expected"), REQUESTS, ids=[r[0] for r in REQUESTS])
def test_request_translation(name: str, request_: dict, expected: dict) -> None:
    ChatJob.model_validate(request_)
    assert body_of(request_) == expected


def test_gemini_3_history_calls_carry_the_documented_signature_bypass() -> None:
    request = {
        "model": "gemini-3-pro-preview",
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "messages": [
            {"role": "user", "content": "x"},
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                    {"id": "b", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                ],
            },
            {"role": "tool", "tool_call_id": "a", "content": "1"},
            {"role": "tool", "tool_call_id": "b", "content": "2"},
        ],
    }
    parts = body_of(request, GEMINI3)["contents"][1]["parts"]
    assert [p.get("thoughtSignature") for p in parts] == [adapter.SKIP_SIGNATURE, None]


def test_every_job_parameter_has_a_rule() -> None:
    covered = set(adapter.PARAMS) | adapter.DROPPED | adapter.STRUCTURAL
    assert set(ChatJob.model_fields) - RESERVED_KEYS <= covered


def test_a_tool_result_without_its_call_is_refused_naming_the_field() -> None:
    request = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "x"},
            {"role": "tool", "tool_call_id": "nope", "content": "r"},
        ],
    }
    with pytest.raises(RouterError) as info:
        adapter.build_request(request, DEP)
    assert (info.value.code, info.value.param) == ("invalid_request", "messages[1].tool_call_id")


def test_sdk_types_accept_the_body() -> None:
    """google-genai's own request types parse what we send (camelCase aliases)."""
    for _, request, _ in REQUESTS:
        body = body_of(request)
        for content in body["contents"]:
            gtypes.Content.model_validate(content)
        if "generationConfig" in body:
            gtypes.GenerationConfig.model_validate(body["generationConfig"])
        for tool in body.get("tools", ()):
            gtypes.Tool.model_validate(tool)


# -- answers ----------------------------------------------------------------------------------

# ai.google.dev/api/generate-content#generatecontentresponse, shaped as the docs' sample output
DOC_RESPONSE = {
    "candidates": [
        {
            "content": {"parts": [{"text": "AI learns patterns from data."}], "role": "model"},
            "finishReason": "STOP",
            "index": 0,
        }
    ],
    "usageMetadata": {
        "promptTokenCount": 8,
        "candidatesTokenCount": 7,
        "totalTokenCount": 45,
        "thoughtsTokenCount": 30,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 8}],
    },
    "modelVersion": "gemini-2.5-flash",
    "responseId": "ZfAbaOmxKI2jmtkP5Ne16Ag",
}
CALL_RESPONSE = {
    **DOC_RESPONSE,
    "candidates": [
        {
            "content": {
                "role": "model",
                "parts": [
                    {"text": "thinking...", "thought": True},
                    {"functionCall": {"name": "schedule_meeting", "args": {"topic": "Q3 planning"}}},
                    {
                        "functionCall": {"name": "schedule_meeting", "args": {"topic": "Q4"}},
                        "thoughtSignature": "c2ln",
                    },
                ],
            },
            "finishReason": "STOP",
            "index": 0,
        }
    ],
}


def parse(body: dict, request: dict | None = None):
    return adapter.parse_response(200, {}, orjson.dumps(body), request or {"model": "gemini-2.5-flash"})


def test_doc_response_becomes_a_chat_completion_with_thoughts_billed_as_output() -> None:
    gtypes.GenerateContentResponse.model_validate(DOC_RESPONSE)  # the sample is a real response shape
    done = parse(DOC_RESPONSE)
    ChatCompletion.model_validate(done.response)
    assert done.response["choices"][0]["message"]["content"] == "AI learns patterns from data."
    assert done.response["choices"][0]["finish_reason"] == "stop"
    assert (done.prompt_tokens, done.completion_tokens, done.reasoning_tokens, done.cached_tokens) == (
        8,
        37,
        30,
        0,
    )
    assert done.response["usage"]["completion_tokens_details"] == {"reasoning_tokens": 30}
    assert done.response["usage"]["total_tokens"] == 45


def test_function_calls_become_tool_calls_with_stable_ids() -> None:
    gtypes.GenerateContentResponse.model_validate(CALL_RESPONSE)
    done = parse(CALL_RESPONSE)
    ChatCompletion.model_validate(done.response)
    choice = done.response["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None  # the thought is not the answer
    calls = choice["message"]["tool_calls"]
    assert [c["function"] for c in calls] == [
        {"name": "schedule_meeting", "arguments": '{"topic":"Q3 planning"}'},
        {"name": "schedule_meeting", "arguments": '{"topic":"Q4"}'},
    ]
    assert len({c["id"] for c in calls}) == 2
    assert calls == parse(CALL_RESPONSE).response["choices"][0]["message"]["tool_calls"]


def test_function_call_on_a_legacy_request_becomes_function_call() -> None:
    done = parse(CALL_RESPONSE, {"model": "m", "functions": [MEETING]})
    choice = done.response["choices"][0]
    assert choice["finish_reason"] == "function_call"
    assert choice["message"]["function_call"]["name"] == "schedule_meeting"
    ChatCompletion.model_validate(done.response)


def test_cached_tokens_are_part_of_the_prompt() -> None:
    usage = {**DOC_RESPONSE["usageMetadata"], "promptTokenCount": 2000, "cachedContentTokenCount": 1500}
    done = parse({**DOC_RESPONSE, "usageMetadata": usage})
    assert (done.prompt_tokens, done.cached_tokens) == (2000, 1500)
    assert done.response["usage"]["prompt_tokens_details"] == {"cached_tokens": 1500}


@pytest.mark.parametrize(
    ("reason", "finish"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("MALFORMED_FUNCTION_CALL", "stop"),
        ("OTHER", "stop"),
        ("SOMETHING_NEW", "stop"),
    ],
)
def test_finish_reasons(reason: str, finish: str) -> None:
    candidate = {**DOC_RESPONSE["candidates"][0], "finishReason": reason}
    assert (
        parse({**DOC_RESPONSE, "candidates": [candidate]}).response["choices"][0]["finish_reason"] == finish
    )


@pytest.mark.parametrize(
    "body",
    [
        {
            "promptFeedback": {"blockReason": "SAFETY"},
            "usageMetadata": {"promptTokenCount": 5, "totalTokenCount": 5},
        },
        {**DOC_RESPONSE, "candidates": [{"finishReason": "SAFETY", "index": 0}]},
    ],
    ids=["blocked-prompt", "withheld-answer"],
)
def test_blocked_prompts_and_withheld_answers_are_content_filtered(body: dict) -> None:
    with pytest.raises(RouterError) as info:
        parse(body)
    assert info.value.code == "content_filtered"


def _google_error(code: int, status: str, message: str, details: list | None = None) -> dict:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details is not None:
        error["details"] = details
    return {"error": error}


# (http status, headers, body, code, retry_after)
# bodies as ai.google.dev/gemini-api/docs/troubleshooting shows them
ERRORS = [
    (
        429,
        {},
        _google_error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
        "rate_limited",
        None,
    ),
    (
        429,
        {},
        _google_error(
            429,
            "RESOURCE_EXHAUSTED",
            "You exceeded your current quota.",
            [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "26s"}],
        ),
        "rate_limited",
        26.0,
    ),
    (
        503,
        {},
        _google_error(503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
        "overloaded",
        None,
    ),
    (
        403,
        {},
        _google_error(403, "PERMISSION_DENIED", "The caller does not have permission"),
        "auth_failed",
        None,
    ),
    (
        401,
        {},
        _google_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials."),
        "auth_failed",
        None,
    ),
    (
        400,
        {},
        _google_error(
            400,
            "INVALID_ARGUMENT",
            "API key not valid. Please pass a valid API key.",
            [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                }
            ],
        ),
        "auth_failed",
        None,
    ),
    (
        404,
        {},
        _google_error(404, "NOT_FOUND", "models/gemini-9 is not found for API version v1beta"),
        "upstream_not_found",
        None,
    ),
    (
        400,
        {},
        _google_error(400, "INVALID_ARGUMENT", "Request contains an invalid argument."),
        "upstream_invalid_request",
        None,
    ),
    (
        400,
        {},
        _google_error(
            400,
            "INVALID_ARGUMENT",
            "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
        ),
        "context_length_exceeded",
        None,
    ),
    (504, {}, _google_error(504, "DEADLINE_EXCEEDED", "The request timed out."), "timeout", None),
    (500, {}, _google_error(500, "INTERNAL", "An internal error has occurred."), "upstream_error", None),
    (502, {"retry-after": "3"}, b"<html>bad gateway</html>", "upstream_error", 3.0),
    (
        400,
        {},
        [_google_error(400, "FAILED_PRECONDITION", "User location is not supported for the API use.")],
        "upstream_invalid_request",
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
        orjson.dumps({**DOC_RESPONSE, "candidates": []}),
        orjson.dumps({**DOC_RESPONSE, "usageMetadata": None}),
        orjson.dumps({**DOC_RESPONSE, "usageMetadata": {"promptTokenCount": -1}}),
    ],
)
def test_malformed_answers_are_bad_response(body: bytes) -> None:
    with pytest.raises(RouterError) as info:
        adapter.parse_response(200, {}, body, {})
    assert info.value.code == "bad_response"
