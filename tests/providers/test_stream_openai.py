"""The OpenAI format's stream parser, offline, on recorded streams.

Streams are the examples of OpenAI's documentation: the chunk object of the API reference
(platform.openai.com/docs/api-reference/chat-streaming/streaming), ``stream_options.include_usage``
(platform.openai.com/docs/api-reference/chat/create#chat-create-stream_options), and the tool-call
deltas of the function-calling guide (platform.openai.com/docs/guides/function-calling, "Streaming").
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from config.catalog import Deployment
from config.cost import FREE
from llm_router.errors import BadResponse, RouterError
from worker.providers import openai as adapter
from worker.providers.sse import SSEDecoder

DEP = Deployment(
    id="openai/gpt-4o-mini",
    provider="openai",
    format="openai",
    base_url="https://api.openai.com/v1",
    upstream_model="gpt-4o-mini",
    price=FREE,
    api_key="sk-secret",
)
REQUEST: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello!"}]}
HEAD = {
    "id": "chatcmpl-123",
    "object": "chat.completion.chunk",
    "created": 1694268190,
    "model": "gpt-4o-mini",
    "system_fingerprint": "fp_44709d6fcb",
}
USAGE = {
    "prompt_tokens": 9,
    "completion_tokens": 12,
    "total_tokens": 21,
    "prompt_tokens_details": {"cached_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0},
}


def sse(*chunks: Any) -> bytes:
    return b"".join(b"data: " + (c if isinstance(c, bytes) else orjson.dumps(c)) + b"\n\n" for c in chunks)


def chunk(delta: dict[str, Any], finish: str | None = None, index: int = 0, **extra: Any) -> dict[str, Any]:
    choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
    return {**HEAD, "choices": [choice], "usage": None, **extra}


def usage_chunk(usage: dict[str, Any] = USAGE) -> dict[str, Any]:
    return {**HEAD, "choices": [], "usage": usage}


DONE = b"[DONE]"
TEXT = sse(
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Hello"}),
    chunk({"content": "! How can I help?"}),
    chunk({}, "stop"),
    usage_chunk(),
    DONE,
)
# the guide's deltas for get_weather("Paris, France")
ARGUMENT_PIECES = ['{"', "location", '":"', "Paris", ",", " France", '"}']
TOOL = sse(
    chunk(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_DdmO9pD3xa9XTPNJ32zg2hcA",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ],
        }
    ),
    *(chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}) for p in ARGUMENT_PIECES),
    chunk({}, "tool_calls"),
    usage_chunk(),
    DONE,
)


def feed(raw: bytes, request: dict[str, Any] = REQUEST) -> tuple[Any, list[dict[str, Any]]]:
    parser = adapter.stream_parser(request, DEP)
    chunks: list[dict[str, Any]] = []
    for event in SSEDecoder().feed(raw):
        chunks += parser.feed(event)
    for c in chunks:
        ChatCompletionChunk.model_validate(c)
    return parser, chunks


def test_stream_request_asks_for_usage_and_keeps_the_body() -> None:
    request = {**REQUEST, "stream": True, "stream_options": {"include_obfuscation": False}, "max_tokens": 5}
    call = adapter.build_stream_request(request, DEP)
    body = orjson.loads(call.body)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 5 and call.url == "https://api.openai.com/v1/chat/completions"
    plain = orjson.loads(adapter.build_request(request, DEP).body)
    assert "stream" not in plain and "stream_options" not in plain
    assert {k: v for k, v in body.items() if not k.startswith("stream")} == plain


def test_text_stream_becomes_the_completion() -> None:
    parser, chunks = feed(TEXT)
    assert parser.done and parser.started
    assert len(chunks) == 5 and chunks[-1]["usage"] == USAGE
    done = parser.completion()
    ChatCompletion.model_validate(done.response)
    assert done.response["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello! How can I help?", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert done.response["system_fingerprint"] == "fp_44709d6fcb"
    assert (done.prompt_tokens, done.completion_tokens) == (9, 12)
    assert parser.partial_text() == "Hello! How can I help?"


PARIS_CALL = {
    "id": "call_DdmO9pD3xa9XTPNJ32zg2hcA",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"location":"Paris, France"}'},
}
# the same answer, not streamed
WHOLE_TOOL = {
    **HEAD,
    "object": "chat.completion",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": None, "refusal": None, "tool_calls": [PARIS_CALL]},
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ],
    "usage": USAGE,
}


def test_completion_equals_parse_response_of_the_same_answer() -> None:
    streamed = feed(TOOL)[0].completion()
    assert streamed == adapter.parse_response(200, {}, orjson.dumps(WHOLE_TOOL), REQUEST)


def test_tool_call_deltas_are_reassembled() -> None:
    parser, _ = feed(TOOL)
    choice = parser.completion().response["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [PARIS_CALL]
    assert parser.started and parser.partial_text() == ""


def test_parallel_tool_calls_interleaved_by_index() -> None:
    def opening(i: int, name: str) -> dict[str, Any]:
        return {
            "index": i,
            "id": f"call_{i}",
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }

    def args(i: int, piece: str) -> dict[str, Any]:
        # some servers repeat id and type (null or not) on every delta
        return {"index": i, "id": None, "type": None, "function": {"name": None, "arguments": piece}}

    raw = sse(
        chunk({"role": "assistant", "tool_calls": [opening(0, "a"), opening(1, "b")]}),
        chunk({"tool_calls": [args(1, '{"y":'), args(0, '{"x":')]}),
        chunk({"tool_calls": [args(0, "1}")]}),
        chunk({"tool_calls": [args(1, "2}")]}),
        chunk({}, "tool_calls"),
        usage_chunk(),
        DONE,
    )
    calls = feed(raw)[0].completion().response["choices"][0]["message"]["tool_calls"]
    assert [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        ("call_0", "a", '{"x":1}'),
        ("call_1", "b", '{"y":2}'),
    ]


def test_legacy_functions_request_streams_and_records_function_call() -> None:
    request = {**REQUEST, "functions": [{"name": "get_weather", "parameters": {"type": "object"}}]}
    parser, chunks = feed(TOOL, request)
    assert chunks[0]["choices"][0]["delta"]["function_call"] == {"name": "get_weather", "arguments": ""}
    assert all("tool_calls" not in c["choices"][0]["delta"] for c in chunks if c["choices"])
    assert chunks[-2]["choices"][0]["finish_reason"] == "function_call"
    choice = parser.completion().response["choices"][0]
    assert choice["message"]["function_call"] == {
        "name": "get_weather",
        "arguments": '{"location":"Paris, France"}',
    }
    assert "tool_calls" not in choice["message"] and choice["finish_reason"] == "function_call"
    assert parser.completion() == adapter.parse_response(200, {}, orjson.dumps(WHOLE_TOOL), request)


def test_n_choices_cached_and_reasoning_tokens() -> None:
    usage = {
        **USAGE,
        "prompt_tokens": 2000,
        "prompt_tokens_details": {"cached_tokens": 1920},
        "completion_tokens_details": {"reasoning_tokens": 7},
    }
    raw = sse(
        chunk({"role": "assistant", "content": "one"}),
        chunk({"role": "assistant", "content": "two"}, index=1),
        chunk({}, "stop", index=1),
        chunk({}, "length"),
        usage_chunk(usage),
        DONE,
    )
    done = feed(raw)[0].completion()
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in done.response["choices"]] == [
        (0, "one", "length"),
        (1, "two", "stop"),
    ]
    assert (done.prompt_tokens, done.cached_tokens, done.reasoning_tokens) == (2000, 1920, 7)


@pytest.mark.parametrize(
    ("raw", "done"),
    [
        (TEXT, True),
        (TEXT.replace(b"data: [DONE]\n\n", b""), True),  # a usage chunk after the finish ends it too
        (sse(chunk({"content": "a"}, "stop", usage=USAGE)), True),  # usage riding on the last chunk
        (sse(chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"})), False),
        (sse(chunk({"content": "Hello"}), chunk({}, "stop")), False),  # finish but neither usage nor DONE
        (sse(usage_chunk()), False),  # usage before any finish is not the end
    ],
)
def test_done_only_on_a_terminal_event(raw: bytes, done: bool) -> None:
    assert feed(raw)[0].done is done


def test_cut_stream_keeps_partial_text_and_started() -> None:
    parser, _ = feed(TEXT[: TEXT.index(b"How")])
    assert not parser.done and parser.started
    assert parser.partial_text() == "Hello"
    parser, _ = feed(sse(chunk({"role": "assistant", "content": ""})))
    assert not parser.started  # the role chunk carries no token: a failure now may still fall back


def test_done_without_usage_is_a_bad_response() -> None:
    parser, _ = feed(sse(chunk({"content": "hi"}), chunk({}, "stop"), DONE))
    assert parser.done
    with pytest.raises(BadResponse, match="no usage"):
        parser.completion()


def test_events_after_done_and_keepalives_are_ignored() -> None:
    parser, chunks = feed(b": ping\n\ndata: \n\n" + TEXT + sse(chunk({"content": "late"})))
    assert len(chunks) == 5 and parser.partial_text() == "Hello! How can I help?"


def test_obfuscation_padding_is_not_published() -> None:
    _, chunks = feed(sse(chunk({"content": "Hi"}, obfuscation="xK3v")))
    assert "obfuscation" not in chunks[0]


# mid-stream error objects: OpenAI's own shape, OpenRouter's (a numeric code on a chunk whose
# finish_reason is "error"), and an ``event: error``
ERRORS = [
    (
        {"error": {"message": "The server had an error", "type": "server_error", "code": None}},
        None,
        "upstream_error",
    ),
    (
        {"error": {"message": "Rate limit", "type": "requests", "code": "rate_limit_exceeded"}},
        None,
        "rate_limited",
    ),
    (
        {"error": {"message": "overloaded", "type": "server_error", "code": "service_unavailable"}},
        None,
        "overloaded",
    ),
    (
        {
            **HEAD,
            "error": {"code": 502, "message": "Provider disconnected"},
            "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
        },
        None,
        "upstream_error",
    ),
    ({"error": {"code": 429, "message": "slow down"}}, None, "rate_limited"),
    ({"message": "boom", "type": "server_error"}, "error", "upstream_error"),
]


@pytest.mark.parametrize(("payload", "name", "code"), ERRORS)
def test_error_events_are_classified(payload: dict[str, Any], name: str | None, code: str) -> None:
    parser = adapter.stream_parser(REQUEST, DEP)
    parser.feed(SSEDecoder().feed(sse(chunk({"content": "Hel"})))[0])
    event = SSEDecoder().feed((f"event: {name}\n" if name else "").encode() + sse(payload))[0]
    with pytest.raises(RouterError) as info:
        parser.feed(event)
    assert info.value.code == code
    assert info.value.http_status == 200  # the answer itself was a 200
    assert parser.partial_text() == "Hel"


# one chunk that is not what OpenAI sends: skipped (counted), the stream goes on
MALFORMED = [
    b'data: {"id": "chatcmpl-1", "choices": [{"delta": {"cont\n\n',
    b"data: [1, 2]\n\n",
    b'data: {"choices": {"0": {}}}\n\n',
    b'data: {"choices": [{"delta": "text"}]}\n\n',
    b'data: {"choices": [{"index": 0, "delta": {"tool_calls": ["x"]}}]}\n\n',
]


@pytest.mark.parametrize("bad", MALFORMED)
def test_a_malformed_chunk_is_skipped_and_the_stream_goes_on(bad: bytes) -> None:
    cut = TEXT.index(b"data: ", 10)  # after the first chunk
    parser, chunks = feed(TEXT[:cut] + bad + TEXT[cut:])
    assert parser.skipped == 1 and parser.done
    assert parser.completion().response == feed(TEXT)[0].completion().response
    assert [c["choices"] for c in chunks] == [c["choices"] for c in feed(TEXT)[1]]  # nothing lost


def test_malformed_chunks_in_a_row_fail_the_stream() -> None:
    with pytest.raises(BadResponse, match="3 malformed events in a row"):
        feed(MALFORMED[0] * 3)
