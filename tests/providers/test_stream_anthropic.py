"""The Anthropic format's stream parser, offline, on recorded streams translated to OpenAI chunks.

The streams are the examples of Anthropic's streaming documentation
(docs.claude.com/en/docs/build-with-claude/streaming): "Basic streaming request", "Streaming
request with tool use", "Streaming request with extended thinking" and "Error events".
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from config.catalog import Deployment
from config.cost import FREE
from llm_router.errors import BadResponse, RouterError
from worker.providers import ADAPTERS
from worker.providers.sse import SSEDecoder

adapter = ADAPTERS["anthropic"]

DEP = Deployment(
    id="anthropic/claude-opus-4-6",
    provider="anthropic",
    format="anthropic",
    base_url="https://api.anthropic.com",
    upstream_model="claude-opus-4-6",
    price=FREE,
    api_key="sk-ant-secret",
    max_output=64000,
)
REQUEST: dict[str, Any] = {"model": "claude-opus-4-6", "messages": [{"role": "user", "content": "Hello"}]}


def ev(name: str, **data: Any) -> bytes:
    return f"event: {name}\ndata: ".encode() + orjson.dumps({"type": name, **data}) + b"\n\n"


def start(msg_id: str, usage: dict[str, Any]) -> bytes:
    message = {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": "claude-opus-4-6",
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }
    return ev("message_start", message=message)


def text_delta(index: int, text: str) -> bytes:
    return ev("content_block_delta", index=index, delta={"type": "text_delta", "text": text})


def json_delta(index: int, piece: str) -> bytes:
    return ev("content_block_delta", index=index, delta={"type": "input_json_delta", "partial_json": piece})


def end(stop_reason: str, output_tokens: int) -> bytes:
    delta = {"stop_reason": stop_reason, "stop_sequence": None}
    return ev("message_delta", delta=delta, usage={"output_tokens": output_tokens}) + ev("message_stop")


# "Basic streaming request"
BASIC = (
    start("msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", {"input_tokens": 25, "output_tokens": 1})
    + ev("content_block_start", index=0, content_block={"type": "text", "text": ""})
    + ev("ping")
    + text_delta(0, "Hello")
    + text_delta(0, "!")
    + ev("content_block_stop", index=0)
    + end("end_turn", 15)
)
# "Streaming request with tool use" (its partial_json pieces keep the model's own spacing)
TOOL_PIECES = ["", '{"location":', ' "San', " Francisc", "o,", ' CA"', ", ", '"unit": "fah', 'renheit"}']
TOOL_USE = (
    start("msg_014p7gG3wDgGV9EUtLvnow3U", {"input_tokens": 472, "output_tokens": 2})
    + ev("content_block_start", index=0, content_block={"type": "text", "text": ""})
    + ev("ping")
    + b"".join(
        text_delta(0, t) for t in ["Okay", ",", " let", "'s", " check the weather for San Francisco, CA:"]
    )
    + ev("content_block_stop", index=0)
    + ev(
        "content_block_start",
        index=1,
        content_block={
            "type": "tool_use",
            "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
            "name": "get_weather",
            "input": {},
        },
    )
    + b"".join(json_delta(1, p) for p in TOOL_PIECES)
    + ev("content_block_stop", index=1)
    + end("tool_use", 89)
)
# "Streaming request with extended thinking"
THINKING = (
    start("msg_01", {"input_tokens": 40, "output_tokens": 1})
    + ev("content_block_start", index=0, content_block={"type": "thinking", "thinking": "", "signature": ""})
    + ev(
        "content_block_delta",
        index=0,
        delta={"type": "thinking_delta", "thinking": "I need to find 27 * 453"},
    )
    + ev(
        "content_block_delta",
        index=0,
        delta={"type": "signature_delta", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA"},
    )
    + ev("content_block_stop", index=0)
    + ev("content_block_start", index=1, content_block={"type": "text", "text": ""})
    + text_delta(1, "27 * 453 = 12,231")
    + ev("content_block_stop", index=1)
    + end("end_turn", 120)
)
ERROR = (
    b"event: error\n"
    b'data: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}\n\n'
)


def feed(raw: bytes, request: dict[str, Any] = REQUEST) -> tuple[Any, list[dict[str, Any]]]:
    parser = adapter.stream_parser(request, DEP)
    chunks: list[dict[str, Any]] = []
    for event in SSEDecoder().feed(raw):
        chunks += parser.feed(event)
    for c in chunks:
        ChatCompletionChunk.model_validate(c)
    return parser, chunks


def whole(raw: bytes) -> dict[str, Any]:
    """The same answer as a non-streamed Message, rebuilt from the events (as the API would send it)."""
    message: dict[str, Any] = {}
    inputs: dict[int, str] = {}
    for event in SSEDecoder().feed(raw):
        data = orjson.loads(event.data)
        if data["type"] == "message_start":
            message = data["message"]
        elif data["type"] == "content_block_start":
            message["content"].append(dict(data["content_block"]))
        elif data["type"] == "content_block_delta" and data["delta"]["type"] == "text_delta":
            message["content"][data["index"]]["text"] += data["delta"]["text"]
        elif data["type"] == "content_block_delta" and data["delta"]["type"] == "input_json_delta":
            inputs[data["index"]] = inputs.get(data["index"], "") + data["delta"]["partial_json"]
        elif data["type"] == "message_delta":
            message.update(data["delta"])
            message["usage"] = {**message["usage"], **data["usage"]}
    for index, text in inputs.items():
        message["content"][index]["input"] = orjson.loads(text)
    return message


def test_stream_request_is_the_same_call_with_stream_on() -> None:
    request = {**REQUEST, "stream": True, "stream_options": {"include_usage": True}, "temperature": 0.5}
    call = adapter.build_stream_request(request, DEP)
    body = orjson.loads(call.body)
    assert body["stream"] is True and "stream_options" not in body
    assert (
        call.url == "https://api.anthropic.com/v1/messages" and call.headers["x-api-key"] == "sk-ant-secret"
    )
    assert {k: v for k, v in body.items() if k != "stream"} == orjson.loads(
        adapter.build_request(request, DEP).body
    )


def test_basic_stream_as_openai_chunks() -> None:
    parser, chunks = feed(BASIC)
    assert parser.done and parser.started
    deltas = [(c["choices"][0]["delta"], c["choices"][0]["finish_reason"]) for c in chunks if c["choices"]]
    assert deltas == [
        ({"role": "assistant"}, None),
        ({"content": "Hello"}, None),
        ({"content": "!"}, None),
        ({}, "stop"),
    ]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 40
    assert {c["id"] for c in chunks} == {"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY"}
    done = parser.completion()
    ChatCompletion.model_validate(done.response)
    assert done.response["choices"][0]["message"]["content"] == "Hello!"
    assert (done.prompt_tokens, done.completion_tokens) == (25, 15)


@pytest.mark.parametrize("raw", [BASIC, TOOL_USE, THINKING], ids=["basic", "tool_use", "thinking"])
def test_completion_equals_parse_response_of_the_same_message(raw: bytes) -> None:
    streamed = feed(raw)[0].completion()
    plain = adapter.parse_response(200, {}, orjson.dumps(whole(raw)), REQUEST)
    streamed.response["created"] = plain.response["created"]
    if raw is TOOL_USE:  # the stream keeps the model's own JSON spacing; the Message is re-serialised
        call = streamed.response["choices"][0]["message"]["tool_calls"][0]["function"]
        assert orjson.loads(call["arguments"]) == {"location": "San Francisco, CA", "unit": "fahrenheit"}
        call["arguments"] = orjson.dumps(orjson.loads(call["arguments"])).decode()
    assert streamed == plain


def test_tool_use_deltas_are_reassembled() -> None:
    parser, chunks = feed(TOOL_USE)
    opening = next(c for c in chunks if c["choices"] and "tool_calls" in c["choices"][0]["delta"])
    assert opening["choices"][0]["delta"]["tool_calls"] == [
        {
            "index": 0,
            "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
            "type": "function",
            "function": {"name": "get_weather", "arguments": ""},
        }
    ]
    choice = parser.completion().response["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Okay, let's check the weather for San Francisco, CA:"
    assert choice["message"]["tool_calls"][0]["function"]["arguments"] == "".join(TOOL_PIECES)


def test_legacy_functions_request_gets_function_call() -> None:
    request = {**REQUEST, "functions": [{"name": "get_weather", "parameters": {"type": "object"}}]}
    parser, chunks = feed(TOOL_USE, request)
    assert any("function_call" in c["choices"][0]["delta"] for c in chunks if c["choices"])
    choice = parser.completion().response["choices"][0]
    assert choice["finish_reason"] == "function_call"
    assert choice["message"]["function_call"]["name"] == "get_weather"
    assert "tool_calls" not in choice["message"]


def test_thinking_is_not_the_answer_and_no_token_until_the_text() -> None:
    parser = adapter.stream_parser(REQUEST, DEP)
    events = SSEDecoder().feed(THINKING)
    before = [c for event in events[:5] for c in parser.feed(event)]  # message_start, the thinking block
    assert [c["choices"][0]["delta"] for c in before] == [{"role": "assistant"}]
    assert not parser.started
    for event in events[5:]:
        parser.feed(event)
    assert parser.completion().response["choices"][0]["message"]["content"] == "27 * 453 = 12,231"


def test_structured_output_tool_streams_as_content() -> None:
    request = {
        **REQUEST,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": {"type": "object"}},
        },
    }
    raw = (
        start("msg_2", {"input_tokens": 10, "output_tokens": 1})
        + ev(
            "content_block_start",
            index=0,
            content_block={"type": "tool_use", "id": "toolu_9", "name": "answer", "input": {}},
        )
        + json_delta(0, '{"city": ')
        + json_delta(0, '"Paris"}')
        + ev("content_block_stop", index=0)
        + end("tool_use", 12)
    )
    parser, chunks = feed(raw, request)
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:3]] == ['{"city": ', '"Paris"}']
    choice = parser.completion().response["choices"][0]
    assert choice["message"]["content"] == '{"city": "Paris"}' and choice["finish_reason"] == "stop"
    assert "tool_calls" not in choice["message"]


def test_tool_without_input_gets_empty_object_arguments() -> None:
    raw = (
        start("msg_3", {"input_tokens": 10, "output_tokens": 1})
        + ev(
            "content_block_start",
            index=0,
            content_block={"type": "tool_use", "id": "toolu_1", "name": "now", "input": {}},
        )
        + ev("content_block_stop", index=0)
        + end("tool_use", 5)
    )
    calls = feed(raw)[0].completion().response["choices"][0]["message"]["tool_calls"]
    assert calls[0]["function"] == {"name": "now", "arguments": "{}"}


def test_cache_counts_and_cumulative_delta_usage() -> None:
    usage = {
        "input_tokens": 5,
        "cache_creation_input_tokens": 2000,
        "cache_read_input_tokens": 0,
        "output_tokens": 1,
    }
    later = {
        "input_tokens": 5,
        "cache_creation_input_tokens": 2000,
        "cache_read_input_tokens": 0,
        "output_tokens": 30,
    }
    raw = BASIC.replace(b'"input_tokens":25,"output_tokens":1', orjson.dumps(usage)[1:-1]).replace(
        b'{"output_tokens":15}', orjson.dumps(later)
    )
    done = feed(raw)[0].completion()
    assert (done.prompt_tokens, done.cache_write_tokens, done.cached_tokens, done.completion_tokens) == (
        2005,
        2000,
        0,
        30,
    )
    assert done.response["usage"]["prompt_tokens_details"] == {"cached_tokens": 0, "cache_write_tokens": 2000}


@pytest.mark.parametrize(
    ("raw", "done"),
    [
        (BASIC, True),
        (BASIC.replace(ev("message_stop"), b""), False),  # message_delta alone is not the end
        (BASIC[: BASIC.index(b"event: content_block_stop")], False),
        (b"", False),
    ],
)
def test_done_only_on_message_stop(raw: bytes, done: bool) -> None:
    assert feed(raw)[0].done is done


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        ("overloaded_error", "overloaded"),
        ("api_error", "upstream_error"),
        ("rate_limit_error", "rate_limited"),
        ("timeout_error", "timeout"),
        ("some_new_error", "upstream_error"),
    ],
)
def test_error_events_are_classified(kind: str, code: str) -> None:
    raw = BASIC[: BASIC.index(b"event: content_block_stop")] + ERROR.replace(
        b"overloaded_error", kind.encode()
    )
    parser = adapter.stream_parser(REQUEST, DEP)
    events = SSEDecoder().feed(raw)
    for event in events[:-1]:
        parser.feed(event)
    with pytest.raises(RouterError) as info:
        parser.feed(events[-1])
    assert info.value.code == code and info.value.http_status == 200
    assert parser.started and parser.partial_text() == "Hello!"


def test_refusal_without_content_is_content_filtered() -> None:
    raw = start("msg_4", {"input_tokens": 10, "output_tokens": 1}) + end("refusal", 0)
    with pytest.raises(RouterError) as info:
        feed(raw)
    assert info.value.code == "content_filtered"


# one event that is not what Anthropic sends: skipped (counted), the stream goes on
MALFORMED = [
    b"event: message_start\ndata: {not json}\n\n",
    ev("message_start", message="nope"),
    ev("content_block_start", index=0, content_block={"type": "tool_use", "id": "t", "input": {}}),
    ev("content_block_delta", index=[0], delta={"type": "text_delta", "text": "x"}),
]


@pytest.mark.parametrize("bad", MALFORMED)
def test_a_malformed_event_is_skipped_and_the_stream_goes_on(bad: bytes) -> None:
    cut = BASIC.index(b"event: content_block_delta")
    parser, chunks = feed(BASIC[:cut] + bad + BASIC[cut:])
    assert parser.skipped == 1 and parser.done
    assert parser.completion().response == feed(BASIC)[0].completion().response
    assert [c["choices"] for c in chunks] == [c["choices"] for c in feed(BASIC)[1]]  # nothing lost


def test_malformed_events_in_a_row_fail_the_stream() -> None:
    with pytest.raises(BadResponse, match="3 malformed events in a row"):
        feed(BASIC[:200] + MALFORMED[0] * 3)


@pytest.mark.parametrize(
    "raw",
    [
        start("m", {"input_tokens": 1, "output_tokens": 1})
        + ev(
            "content_block_start",
            index=0,
            content_block={"type": "tool_use", "id": "t", "name": "f", "input": {}},
        )
        + json_delta(0, '{"a": ')
        + ev("content_block_stop", index=0),
        start("m", {"output_tokens": 1}) + end("end_turn", 3),  # no input_tokens
    ],
)
def test_a_broken_answer_is_bad_response(raw: bytes) -> None:
    with pytest.raises(BadResponse):
        feed(raw)
