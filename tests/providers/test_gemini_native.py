"""Gemini-native jobs: generateContent bodies into chat jobs, chat.completions back into Gemini answers.

Round trips are checked with google-genai's own types, so the shapes are Google's, not our guess.
"""

from __future__ import annotations

import orjson
import pytest
from google.genai import types as gtypes
from openai.types.chat import ChatCompletion

from config.catalog import Catalog, Deployment
from config.cost import FREE
from config.settings import Settings
from llm_router.contract import ChatJob
from llm_router.errors import InvalidRequest
from producer.gemini_native import chat_completion_to_gemini, gemini_to_chat
from producer.validation import Validator
from worker.providers import gemini as gemini_adapter

PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
DEP = Deployment(
    id="gemini/gemini-2.5-flash",
    provider="gemini",
    format="gemini",
    base_url="http://sim",
    upstream_model="gemini-2.5-flash",
    price=FREE,
    api_key="k",
)
MEETING = {
    "name": "schedule_meeting",
    "description": "Schedules a meeting.",
    "parameters": {"type": "OBJECT", "properties": {"topic": {"type": "STRING"}}, "required": ["topic"]},
}

CASES = [
    (
        # ai.google.dev/gemini-api/docs/text-generation: system instruction and generation config (REST)
        "text-and-config",
        {
            "model": "gemini-2.5-flash",
            "system_instruction": {"parts": [{"text": "You are a cat. Your name is Neko."}]},
            "contents": [{"parts": [{"text": "Hello there"}]}],
            "generationConfig": {
                "stopSequences": ["Title"],
                "temperature": 1.0,
                "topP": 0.8,
                "topK": 10,
                "maxOutputTokens": 800,
                "thinkingConfig": {"thinkingBudget": 1024},
            },
            "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
            "metadata": {"team": "x"},
            "fallbacks": ["gpt-4o"],
        },
        {
            "model": "gemini-2.5-flash",
            "messages": [
                {"role": "system", "content": "You are a cat. Your name is Neko."},
                {"role": "user", "content": "Hello there"},
            ],
            "stop": ["Title"],
            "temperature": 1.0,
            "top_p": 0.8,
            "max_tokens": 800,
            "reasoning_effort": "low",
            "metadata": {"team": "x"},
            "fallbacks": ["gpt-4o"],
            "answer_format": "gemini",
        },
    ),
    (
        # ai.google.dev/gemini-api/docs/function-calling: declarations, the call, the response
        "function-calling",
        {
            "model": "claude-sonnet-4-5",
            "contents": [
                {"role": "user", "parts": [{"text": "Schedule a meeting about Q3."}]},
                {
                    "role": "model",
                    "parts": [{"functionCall": {"name": "schedule_meeting", "args": {"topic": "Q3"}}}],
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
                        {"text": "Thanks!"},
                    ],
                },
            ],
            "tools": [{"functionDeclarations": [MEETING]}],
            "toolConfig": {
                "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["schedule_meeting"]}
            },
        },
        {
            "model": "claude-sonnet-4-5",
            "messages": [
                {"role": "user", "content": "Schedule a meeting about Q3."},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1_0",
                            "type": "function",
                            "function": {"name": "schedule_meeting", "arguments": '{"topic":"Q3"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1_0", "content": '{"status":"scheduled"}'},
                {"role": "user", "content": "Thanks!"},
            ],
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "schedule_meeting",
                        "description": "Schedules a meeting.",
                        "parameters": {
                            "type": "object",
                            "properties": {"topic": {"type": "string"}},
                            "required": ["topic"],
                        },
                    },
                }
            ],
            "tool_choice": {"type": "function", "function": {"name": "schedule_meeting"}},
            "answer_format": "gemini",
        },
    ),
    (
        # ai.google.dev/gemini-api/docs/image-understanding: inline_data (REST) and a file URI
        "images-and-json",
        {
            "model": "gpt-4o",
            "contents": [
                {
                    "parts": [
                        {"inline_data": {"mime_type": "image/png", "data": PNG_B64}},
                        {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/cat.jpg"}},
                        {"text": "Caption these images."},
                    ]
                }
            ],
            "generationConfig": {"responseMimeType": "application/json", "candidateCount": 2},
        },
        {
            "model": "gpt-4o",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
                        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                        {"type": "text", "text": "Caption these images."},
                    ],
                }
            ],
            "n": 2,
            "response_format": {"type": "json_object"},
            "answer_format": "gemini",
        },
    ),
]


@pytest.mark.parametrize(("name", "body", "expected"), CASES, ids=[c[0] for c in CASES])
def test_gemini_body_becomes_a_valid_chat_job(name: str, body: dict, expected: dict) -> None:
    job = gemini_to_chat(body)
    assert job == expected
    ChatJob.model_validate(job)


def test_gemini_to_chat_to_gemini_keeps_the_conversation() -> None:
    """Through our adapter and back: the contents Google would get match what the caller sent."""
    body = CASES[1][1]
    sent = orjson.loads(gemini_adapter.build_request(gemini_to_chat(body), DEP).body)
    assert sent["contents"][:2] == body["contents"][:2]
    assert sent["contents"][2] == {
        "role": "user",
        "parts": [
            {"functionResponse": {"name": "schedule_meeting", "response": {"status": "scheduled"}}},
            {"text": "Thanks!"},
        ],
    }
    assert sent["toolConfig"] == body["toolConfig"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"contents": [{"parts": [{"text": "x"}]}], "prompt": "y"}, "prompt"),
        ({"contents": []}, "contents"),
        ({"contents": [{"parts": [{"text": "x"}]}], "cachedContent": "cachedContents/abc"}, "cachedContent"),
        ({"contents": [{"role": "system", "parts": [{"text": "x"}]}]}, "contents[0].role"),
        (
            {"contents": [{"parts": [{"inlineData": {"mimeType": "audio/mp3", "data": "AAAA"}}]}]},
            "contents[0].parts[0].inlineData.mimeType",
        ),
        (
            {"contents": [{"parts": [{"fileData": {"fileUri": "gs://b/o.png"}}]}]},
            "contents[0].parts[0].fileData.fileUri",
        ),
        (
            {"contents": [{"parts": [{"functionResponse": {"name": "f", "response": {}}}]}]},
            "contents[0].parts[0].functionResponse",
        ),
        ({"contents": [{"parts": [{"executableCode": {"code": "1"}}]}]}, "contents[0].parts[0]"),
        (
            {"contents": [{"parts": [{"text": "x"}]}], "tools": [{"googleSearch": {}}]},
            "tools[0].googleSearch",
        ),
        (
            {"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"stopSequences": list("abcde")}},
            "generationConfig.stopSequences",
        ),
        (
            {"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"colour": 1}},
            "generationConfig.colour",
        ),
    ],
)
def test_bad_gemini_input_is_refused_with_the_gemini_field_path(body: dict, param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        gemini_to_chat({"model": "gemini-2.5-flash", **body})
    assert info.value.param == param


def test_validator_takes_gemini_bodies(sim_catalog: Catalog) -> None:
    validator = Validator(sim_catalog, Settings(_env_file=None))
    prepared = validator.prepare(CASES[0][1], now=1000.0)
    request = orjson.loads(prepared.request)
    assert request["answer_format"] == "gemini" and request["messages"][1]["content"] == "Hello there"
    assert prepared.route[:2] == ["gemini-2.5-flash", "gpt-4o"]
    with pytest.raises(InvalidRequest) as info:
        validator.prepare({"model": "gemini-2.5-flash", "contents": [{"parts": [{"nope": 1}]}]}, now=1000.0)
    assert info.value.param == "contents[0].parts[0]"


# -- answers back in Gemini's format ----------------------------------------------------------

COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "claude-sonnet-4-5",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello, I am Neko.", "refusal": None},
            "logprobs": None,
            "finish_reason": "length",
        },
        {
            "index": 1,
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_9",
                        "type": "function",
                        "function": {"name": "schedule_meeting", "arguments": '{"topic":"Q3"}'},
                    }
                ],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        },
    ],
    "usage": {
        "prompt_tokens": 2000,
        "completion_tokens": 50,
        "total_tokens": 2050,
        "prompt_tokens_details": {"cached_tokens": 1500},
        "completion_tokens_details": {"reasoning_tokens": 20},
        "cost": 0.001,
    },
}


def test_chat_completion_becomes_a_gemini_response_google_types_accept() -> None:
    ChatCompletion.model_validate(COMPLETION)
    answer = chat_completion_to_gemini(COMPLETION)
    parsed = gtypes.GenerateContentResponse.model_validate(answer)
    assert parsed.candidates[0].content.parts[0].text == "Hello, I am Neko."
    assert parsed.candidates[0].finish_reason == gtypes.FinishReason.MAX_TOKENS
    (call,) = parsed.candidates[1].content.parts
    assert (call.function_call.id, call.function_call.name, call.function_call.args) == (
        "call_9",
        "schedule_meeting",
        {"topic": "Q3"},
    )
    usage = parsed.usage_metadata
    assert (usage.prompt_token_count, usage.candidates_token_count, usage.thoughts_token_count) == (
        2000,
        30,
        20,
    )
    assert (usage.cached_content_token_count, usage.total_token_count) == (1500, 2050)
    assert (parsed.model_version, parsed.response_id) == ("claude-sonnet-4-5", "chatcmpl-1")


def test_gemini_answer_through_our_adapter_and_back_is_the_same_answer() -> None:
    original = {
        "candidates": [
            {
                "content": {"role": "model", "parts": [{"text": "AI learns patterns."}]},
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": 8,
            "candidatesTokenCount": 4,
            "thoughtsTokenCount": 30,
            "cachedContentTokenCount": 2,
            "totalTokenCount": 42,
        },
        "modelVersion": "gemini-2.5-flash",
        "responseId": "r1",
    }
    completion = gemini_adapter.parse_response(200, {}, orjson.dumps(original), {"model": "gemini-2.5-flash"})
    back = chat_completion_to_gemini(completion.response)
    assert back["candidates"] == original["candidates"]
    assert back["usageMetadata"] == original["usageMetadata"]
    gtypes.GenerateContentResponse.model_validate(back)
