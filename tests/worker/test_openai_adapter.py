"""The OpenAI-format adapter: pure translation, tested offline with recorded bodies."""

from __future__ import annotations

import orjson
import pytest
from openai.types.chat import ChatCompletion

from config.catalog import Deployment
from config.cost import FREE
from llm_router.errors import RouterError
from worker.providers import openai as adapter

DEP = Deployment(
    id="aisa/gpt-4o",
    provider="aisa",
    format="openai",
    base_url="http://sim:1/v1",
    upstream_model="gpt-4o-up",
    price=FREE,
    api_key="sk-secret-key-123456",
)
OK_BODY = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-up",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
    "usage": {
        "prompt_tokens": 10,
        "completion_tokens": 2,
        "total_tokens": 12,
        "prompt_tokens_details": {"cached_tokens": 4},
    },
}


def test_build_request_drops_reserved_keys_and_sets_upstream_model() -> None:
    request = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.3,
        "fallbacks": ["x"],
        "metadata": {"a": 1},
        "tenant": "t",
        "deadline_s": 5,
    }
    call = adapter.build_request(request, DEP)
    body = orjson.loads(call.body)
    assert call.method == "POST"
    assert call.url == "http://sim:1/v1/chat/completions"
    assert call.headers["Authorization"] == "Bearer sk-secret-key-123456"
    assert body == {"model": "gpt-4o-up", "messages": request["messages"], "temperature": 0.3}
    assert "sk-secret" not in repr(call) and "sk-secret" not in repr(DEP)


def test_legacy_functions_go_up_as_tools_and_come_back_as_function_call() -> None:
    fn = {"name": "get_weather", "parameters": {"type": "object"}}
    request = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "hi"}],
        "functions": [fn],
        "function_call": {"name": "get_weather"},
    }
    body = orjson.loads(adapter.build_request(request, DEP).body)
    assert body["tools"] == [{"type": "function", "function": fn}]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert "functions" not in body and "function_call" not in body
    answer = {
        **OK_BODY,
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": "{}"},
                        }
                    ],
                },
            }
        ],
    }
    done = adapter.parse_response(200, {}, orjson.dumps(answer), request)
    choice = done.response["choices"][0]
    assert choice["message"]["function_call"] == {"name": "get_weather", "arguments": "{}"}
    assert "tool_calls" not in choice["message"]
    assert choice["finish_reason"] == "function_call"
    ChatCompletion.model_validate(done.response)


def test_parse_response_reads_usage() -> None:
    done = adapter.parse_response(200, {}, orjson.dumps(OK_BODY), {"model": "gpt-4o"})
    assert (done.prompt_tokens, done.completion_tokens, done.cached_tokens) == (10, 2, 4)
    ChatCompletion.model_validate(done.response)


# (status, headers, body, code, retry_after)
ERRORS = [
    (
        429,
        {"retry-after": "7"},
        {"error": {"message": "slow down", "type": "rate_limit_error"}},
        "rate_limited",
        7.0,
    ),
    (429, {"retry-after-ms": "1500"}, {"error": {"message": "slow"}}, "rate_limited", 1.5),
    (429, {}, {"error": {"message": "quota", "code": "insufficient_quota"}}, "provider_out_of_credits", None),
    (500, {}, {"error": {"message": "boom"}}, "upstream_error", None),
    (502, {}, b"<html>bad gateway</html>", "upstream_error", None),
    (503, {}, {"error": {"message": "busy"}}, "overloaded", None),
    (529, {}, {"error": {"message": "overloaded"}}, "overloaded", None),
    (504, {}, {}, "timeout", None),
    (
        401,
        {},
        {"error": {"message": "Incorrect API key provided: sk-abcdefghijklmnop", "code": "invalid_api_key"}},
        "auth_failed",
        None,
    ),
    (403, {}, {"error": {"message": "forbidden"}}, "auth_failed", None),
    (402, {}, {"error": {"message": "no credits"}}, "provider_out_of_credits", None),
    (404, {}, {"error": {"message": "no such model", "code": "model_not_found"}}, "upstream_not_found", None),
    (
        400,
        {},
        {"error": {"message": "too long", "code": "context_length_exceeded"}},
        "context_length_exceeded",
        None,
    ),
    (
        400,
        {},
        {"error": {"message": "flagged", "code": "content_policy_violation"}},
        "content_filtered",
        None,
    ),
    (
        400,
        {},
        {"error": {"message": "bad temperature", "param": "temperature"}},
        "upstream_invalid_request",
        None,
    ),
    (418, {}, {}, "upstream_invalid_request", None),
]


@pytest.mark.parametrize(("status", "headers", "body", "code", "retry_after"), ERRORS)
def test_errors_are_classified_by_status_and_code(status, headers, body, code, retry_after) -> None:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    with pytest.raises(RouterError) as info:
        adapter.parse_response(status, headers, raw, {})
    assert info.value.code == code
    assert info.value.http_status == status
    assert info.value.retry_after == retry_after


@pytest.mark.parametrize(
    "body",
    [
        b'{"id": "chatcmpl-1", "choi',
        b"[]",
        b'{"choices": []}',
        b'{"choices": [{"index": 0}]}',
        orjson.dumps({**OK_BODY, "usage": None}),
    ],
)
def test_malformed_answers_are_bad_response(body: bytes) -> None:
    with pytest.raises(RouterError) as info:
        adapter.parse_response(200, {}, body, {})
    assert info.value.code == "bad_response"
    assert info.value.spec.fallback and info.value.spec.breaker


def test_retry_after_http_date() -> None:
    from email.utils import formatdate
    from time import time

    value = adapter.retry_after({"retry-after": formatdate(time() + 30, usegmt=True)})
    assert value is not None and 25 < value <= 30


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": 10, "completion_tokens": "7"},
        {"prompt_tokens": -1, "completion_tokens": 2},
        {"prompt_tokens": True, "completion_tokens": 2},
        {"prompt_tokens": 1.5, "completion_tokens": 2},
        {"completion_tokens": 2},
    ],
)
def test_usage_with_invalid_token_counts_is_bad_response(usage) -> None:
    with pytest.raises(RouterError) as info:
        adapter.parse_response(200, {}, orjson.dumps({**OK_BODY, "usage": usage}), {})
    assert info.value.code == "bad_response"


def test_malformed_tool_call_on_a_legacy_request_is_bad_response() -> None:
    answer = {
        **OK_BODY,
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {"role": "assistant", "content": None, "tool_calls": [{"id": 1}]},
            }
        ],
    }
    with pytest.raises(RouterError) as info:
        adapter.parse_response(200, {}, orjson.dumps(answer), {"functions": [{"name": "f"}]})
    assert info.value.code == "bad_response"


def test_reasoning_dialect_renames_max_tokens_and_drops_sampling() -> None:
    from dataclasses import replace

    request = {
        "model": "o1",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 50,
        "temperature": 0.2,
        "top_p": 0.5,
        "seed": 3,
    }
    plain = orjson.loads(adapter.build_request(request, DEP).body)
    assert plain["max_tokens"] == 50 and plain["temperature"] == 0.2
    reasoning = orjson.loads(adapter.build_request(request, replace(DEP, dialect="openai-reasoning")).body)
    assert reasoning["max_completion_tokens"] == 50 and reasoning["seed"] == 3
    assert not {"max_tokens", "temperature", "top_p"} & reasoning.keys()


def test_error_messages_are_not_cut_before_the_worker_redacts_them() -> None:
    key = "sk-" + "a" * 40
    body = orjson.dumps({"error": {"message": "x" * 990 + f" bad key {key}"}})
    with pytest.raises(RouterError) as info:
        adapter.parse_response(401, {}, body, {})
    assert key in info.value.message  # whole: the runner's redaction can find it
