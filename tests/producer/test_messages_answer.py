"""Records as Anthropic ``Message`` objects, recorded job streams as Anthropic's stream events, and
our errors in Anthropic's shape, offline. Everything is validated by the installed ``anthropic``
SDK's own types, and every stream is fed through the SDK's own accumulator, which must end with the
message the record renders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from anthropic.types.shared import ErrorResponse
from pydantic import TypeAdapter

from llm_router.contract import JobRecord, JobStatus, Usage
from llm_router.errors import ERROR_TABLE, RouterError
from producer.messages_answer import MessageEvents, anthropic_error, message_object
from producer.messages_format import messages_to_chat

RECORDED: dict[str, dict[str, Any]] = json.loads(
    (Path(__file__).parent / "recorded_streams.json").read_text()
)
EVENT = TypeAdapter(RawMessageStreamEvent)
HI = [{"role": "user", "content": "hi"}]


def record(request: dict[str, Any], response: dict[str, Any], usage: dict[str, Any]) -> JobRecord:
    return JobRecord(
        id="msg_0123abcd",
        status=JobStatus.SUCCEEDED,
        request=request,
        model_requested=request["model"],
        route=[request["model"]],
        created_at=1_700_000_000.0,
        deadline_at=1_700_000_600.0,
        finished_at=1_700_000_001.0,
        response=response,
        usage=Usage(**usage),
    )


def completion(content: str | None, calls: list[dict[str, Any]] = (), finish: str = "stop") -> dict[str, Any]:  # type: ignore[assignment]
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = list(calls)
    return {
        "model": "claude-haiku-4-5",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
    }


USAGE = {"prompt_tokens": 30, "completion_tokens": 7, "total_tokens": 37, "cached_tokens": 10, "cost": 0.0002}


def test_a_record_is_a_message_with_anthropic_usage() -> None:
    request = messages_to_chat({"model": "claude-haiku-4-5", "max_tokens": 50, "messages": HI})
    calls = [
        {
            "id": "toolu_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"A"}'},
        }
    ]
    rendered = message_object(record(request, completion("Checking.", calls, "tool_calls"), USAGE))
    message = Message.model_validate(rendered)
    assert message.id == "msg_0123abcd" and message.stop_reason == "tool_use"
    assert [b.type for b in message.content] == ["text", "tool_use"]
    assert message.content[1].input == {"city": "A"}  # type: ignore[union-attr]
    # Anthropic counts cache reads apart from input_tokens; the total is ours
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (20, 10)
    assert message.usage.output_tokens == 7 and rendered["usage"]["cost"] == 0.0002


@pytest.mark.parametrize(
    ("finish", "stop_reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
    ],
)
def test_stop_reasons(finish: str, stop_reason: str) -> None:
    request = messages_to_chat({"model": "m", "max_tokens": 5, "messages": HI})
    message = Message.model_validate(message_object(record(request, completion("x", finish=finish), USAGE)))
    assert message.stop_reason == stop_reason


def _blocks(blocks: list[Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in b.model_dump().items() if k != "parsed_output"} for b in blocks]


def _accumulate(raw: list[dict[str, Any]]) -> Any:
    """The events, validated one by one, through the SDK's own accumulator; the final message."""
    snapshot = None
    bufs: dict[int, bytes] = {}
    for data in raw:
        if data["type"] == "ping":  # the SDK skips pings before parsing
            continue
        event = EVENT.validate_python(data)
        assert event.type == data["type"]
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=bufs)
    return snapshot


@pytest.mark.parametrize("name", list(RECORDED))
def test_recorded_streams_become_anthropics_event_sequence(name: str) -> None:
    case = RECORDED[name]
    model = name.split("/")[0]
    request = messages_to_chat({"model": model, "max_tokens": 40, "messages": HI, "stream": True})
    final = record(request, case["response"], case["usage"])
    events = MessageEvents("msg_0123abcd", model)
    raw: list[dict[str, Any]] = []
    for chunk in case["chunks"]:
        raw += events.chunk(chunk)
    raw += events.finish(final)
    kinds = [e["type"] for e in raw]
    assert kinds[:3] == ["message_start", "ping", "content_block_start"]
    assert kinds[-4:] == [
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ] or kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    deltas = {e["delta"]["type"] for e in raw if e["type"] == "content_block_delta"}
    assert deltas == ({"text_delta"} if name.endswith("/text") else {"input_json_delta"})
    built = _accumulate(raw)
    expected = Message.model_validate(message_object(final))
    assert _blocks(built.content) == _blocks(expected.content) and built.stop_reason == expected.stop_reason
    assert built.usage.input_tokens == expected.usage.input_tokens
    assert built.usage.output_tokens == expected.usage.output_tokens


def test_text_then_tools_and_what_did_not_stream() -> None:
    request = messages_to_chat({"model": "m", "max_tokens": 40, "messages": HI, "stream": True})
    calls = [
        {"id": "toolu_a", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}},
        {"id": "toolu_b", "type": "function", "function": {"name": "f", "arguments": '{"x":2}'}},
    ]
    final = record(request, completion("Let me see.", calls, "tool_calls"), USAGE)
    events = MessageEvents("msg_0123abcd", "m")
    raw = events.chunk({"choices": [{"index": 0, "delta": {"content": "Let me"}}]})
    raw += events.chunk(
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "id": "toolu_a", "function": {"name": "f"}}]},
                }
            ]
        }
    )
    raw += events.finish(final)  # the first call's arguments and the second call came only in the record
    built = _accumulate(raw)
    assert [b.type for b in built.content] == ["text", "tool_use", "tool_use"]
    assert built.content[0].text == "Let me"  # what streamed of a closed block stays what it was
    assert [b.input for b in built.content[1:]] == [{"x": 1}, {"x": 2}]
    starts = [e["index"] for e in raw if e["type"] == "content_block_start"]
    stops = [e["index"] for e in raw if e["type"] == "content_block_stop"]
    assert starts == stops == [0, 1, 2]  # one block open at a time, in order


def test_a_failure_after_tokens_is_an_error_event() -> None:
    events = MessageEvents("msg_1", "m")
    raw = events.chunk({"choices": [{"index": 0, "delta": {"content": "Hel"}}]})
    raw += events.fail(RouterError("the stream broke", code="stream_interrupted"))
    assert raw[-1]["type"] == "error"
    assert ErrorResponse.model_validate(raw[-1]).error.type == "api_error"


ANTHROPIC_TYPES = {
    "invalid_request_error",
    "authentication_error",
    "billing_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "overloaded_error",
    "timeout_error",
}


@pytest.mark.parametrize("code", sorted(ERROR_TABLE))
def test_every_error_code_has_an_anthropic_status_and_type(code: str) -> None:
    status, body = anthropic_error(RouterError("m", code=code, param="p"))
    assert body["type"] == "error" and body["error"]["type"] in ANTHROPIC_TYPES
    assert body["error"]["code"] == code and body["error"]["param"] == "p"
    if body["error"]["type"] != "request_too_large":  # Anthropic's documented type the SDK lacks
        ErrorResponse.model_validate(body)
    expected = {
        "invalid_request": (400, "invalid_request_error"),
        "invalid_api_key": (401, "authentication_error"),
        "insufficient_credits": (402, "billing_error"),
        "model_not_found": (404, "not_found_error"),
        "payload_too_large": (413, "request_too_large"),
        "too_many_queued": (429, "rate_limit_error"),
        "all_deployments_failed": (500, "api_error"),
        "overloaded": (529, "overloaded_error"),
        "no_workers": (529, "overloaded_error"),
    }
    if code in expected:
        assert (status, body["error"]["type"]) == expected[code]
