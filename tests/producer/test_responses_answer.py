"""Records as Responses API ``Response`` objects and recorded job streams as Responses stream events,
offline. Every object is validated by the installed ``openai`` SDK's own types (``Response``, the
``ResponseStreamEvent`` union), and every stream is fed through the SDK's own accumulator, which
must end with the response the record renders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from openai import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from openai.types.responses.response_item import ResponseItem
from pydantic import TypeAdapter

from llm_router.contract import JobRecord, JobStatus, Usage
from llm_router.errors import RouterError
from producer.responses_answer import ResponseEvents, input_items, response_object
from producer.responses_format import input_of, responses_to_chat

RECORDED: dict[str, dict[str, Any]] = json.loads(
    (Path(__file__).parent / "recorded_streams.json").read_text()
)
EVENT = TypeAdapter(ResponseStreamEvent)
WEATHER = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}, "strict": False}


def record(
    request: dict[str, Any],
    *,
    status: JobStatus = JobStatus.SUCCEEDED,
    response: dict[str, Any] | None = None,
    usage: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    job_id: str = "resp_0123abcd",
) -> JobRecord:
    return JobRecord(
        id=job_id,
        status=status,
        request=request,
        model_requested=request["model"],
        route=[request["model"]],
        created_at=1_700_000_000.5,
        deadline_at=1_700_000_600.0,
        finished_at=1_700_000_001.0 if status.terminal else None,
        response=response,
        usage=Usage(**usage) if usage else None,
        error=error,
    )


def completion(content: str | None, calls: list[dict[str, Any]] = (), finish: str = "stop") -> dict[str, Any]:  # type: ignore[assignment]
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if calls:
        message["tool_calls"] = list(calls)
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
    }


USAGE = {"prompt_tokens": 20, "completion_tokens": 7, "total_tokens": 27, "cached_tokens": 4, "cost": 0.0001}


def test_a_completed_record_is_a_response_with_our_usage() -> None:
    request = responses_to_chat(
        {
            "model": "gpt-4o-mini",
            "instructions": "Be brief.",
            "input": "Say hi.",
            "tools": [WEATHER],
            "tool_choice": "auto",
            "max_output_tokens": 50,
            "temperature": 0.5,
            "metadata": {"order": "42"},
            "previous_response_id": "resp_prev",
            "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
        }
    )
    answer = response_object(record(request, response=completion("Hi!"), usage=USAGE))
    parsed = Response.model_validate(answer)
    assert parsed.output_text == "Hi!" and parsed.status == "completed"
    assert parsed.id == "resp_0123abcd" and parsed.output[0].id == "msg_0123abcd"
    assert parsed.instructions == "Be brief." and parsed.previous_response_id == "resp_prev"
    assert parsed.metadata == {"order": "42"}  # our own bookkeeping is not the caller's metadata
    assert parsed.max_output_tokens == 50 and parsed.temperature == 0.5
    assert parsed.tools[0].name == "get_weather" and parsed.tool_choice == "auto"
    assert parsed.text is not None and parsed.text.format.type == "json_schema"
    assert parsed.model == "gpt-4o-mini-2024-07-18"
    usage = parsed.usage
    assert usage is not None and (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (20, 7, 27)
    assert usage.input_tokens_details.cached_tokens == 4
    assert answer["usage"]["cost"] == 0.0001 and parsed.completed_at == 1_700_000_001


def test_tool_calls_are_function_call_items() -> None:
    calls = [
        {
            "id": "call_a",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"A"}'},
        },
        {
            "id": "call_b",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"B"}'},
        },
    ]
    request = responses_to_chat({"model": "gpt-4o-mini", "input": "A and B?", "tools": [WEATHER]})
    parsed = Response.model_validate(
        response_object(record(request, response=completion(None, calls, "tool_calls"), usage=USAGE))
    )
    assert [(i.type, i.id, i.call_id) for i in parsed.output] == [  # type: ignore[union-attr]
        ("function_call", "fc_0123abcd_0", "call_a"),
        ("function_call", "fc_0123abcd_1", "call_b"),
    ]


@pytest.mark.parametrize(
    ("status", "shown"),
    [
        (JobStatus.QUEUED, "queued"),
        (JobStatus.DEFERRED, "queued"),
        (JobStatus.RUNNING, "in_progress"),
        (JobStatus.CANCELLED, "cancelled"),
        (JobStatus.FAILED, "failed"),
    ],
)
def test_every_status_renders(status: JobStatus, shown: str) -> None:
    request = responses_to_chat({"model": "claude-haiku-4-5", "input": "hi", "background": True})
    error = {"code": "all_deployments_failed", "message": "every provider failed", "status": 502}
    rendered = response_object(record(request, status=status, error=error if shown == "failed" else None))
    parsed = Response.model_validate(rendered)
    assert parsed.status == shown and parsed.output == [] and parsed.background is True
    if shown == "failed":
        assert parsed.error is not None and parsed.error.code == "server_error"
        assert parsed.error.type == "all_deployments_failed"  # our stable code
    else:
        assert parsed.error is None


def test_a_length_cut_answer_is_incomplete() -> None:
    request = responses_to_chat({"model": "gpt-4o-mini", "input": "hi", "max_output_tokens": 3})
    parsed = Response.model_validate(
        response_object(record(request, response=completion("Hel", finish="length"), usage=USAGE))
    )
    assert parsed.status == "incomplete"
    assert parsed.incomplete_details is not None and parsed.incomplete_details.reason == "max_output_tokens"


def _run(events: ResponseEvents, chunks: list[dict[str, Any]], final: JobRecord) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for chunk in chunks:
        out += events.chunk(chunk)
    return out + events.finish(final)


def _plain(value: Any) -> Any:
    """A dump of the SDK's parsed response less what its parsing added (``parsed``, ``parsed_arguments``)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if not k.startswith("parsed")}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _accumulate(raw: list[dict[str, Any]], tools: list[dict[str, Any]] = ()) -> Any:  # type: ignore[assignment]
    """The events, validated one by one, through the SDK's own stream state; its final response."""
    state = ResponseStreamState(input_tools=list(tools), text_format=omit)  # type: ignore[arg-type]
    assert [e["sequence_number"] for e in raw] == list(range(len(raw)))
    completed = None
    for data in raw:
        event = EVENT.validate_python(data)
        assert event.type == data["type"]
        for handled in state.handle_event(event):
            if handled.type == "response.completed":
                completed = handled.response
    return completed


@pytest.mark.parametrize("name", list(RECORDED))
def test_recorded_streams_become_the_documented_events(name: str) -> None:
    case = RECORDED[name]
    tools = [WEATHER] if name.endswith("/tools") else []
    model = name.split("/")[0]
    request = responses_to_chat({"model": model, "input": "x", "tools": tools, "stream": True})
    final = record(request, response=case["response"], usage=case["usage"])
    events = ResponseEvents(record(request, status=JobStatus.RUNNING))
    raw = _run(events, case["chunks"], final)
    kinds = [e["type"] for e in raw]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    if name.endswith("/text"):
        assert kinds[2:4] == ["response.output_item.added", "response.content_part.added"]
        assert "response.output_text.delta" in kinds
        assert kinds[-4:-1] == [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
        ]
    else:
        assert "response.function_call_arguments.delta" in kinds
        assert kinds[-3:-1] == ["response.function_call_arguments.done", "response.output_item.done"]
    completed = _accumulate(raw, tools)
    assert completed is not None
    assert _plain(completed.model_dump()) == Response.model_validate(response_object(final)).model_dump()
    deltas = "".join(e.get("delta", "") for e in raw if e["type"].endswith(".delta"))
    item = completed.output[0]
    assert deltas == (item.content[0].text if item.type == "message" else item.arguments)


def test_text_then_parallel_calls_close_each_item_before_the_next() -> None:
    def chunk(delta: dict[str, Any]) -> dict[str, Any]:
        return {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}

    def call(index: int, **fields: Any) -> dict[str, Any]:
        return chunk({"tool_calls": [{"index": index, **fields}]})

    chunks = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Let me check."}),
        call(0, id="call_a", type="function", function={"name": "get_weather", "arguments": ""}),
        call(0, function={"arguments": '{"city":'}),
        call(1, id="call_b", type="function", function={"name": "get_weather", "arguments": '{"city":"B"}'}),
        call(0, function={"arguments": '"A"}'}),
    ]
    calls = [
        {
            "id": "call_a",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"A"}'},
        },
        {
            "id": "call_b",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"B"}'},
        },
    ]
    request = responses_to_chat({"model": "gpt-4o-mini", "input": "x", "tools": [WEATHER], "stream": True})
    final = record(request, response=completion("Let me check.", calls, "tool_calls"), usage=USAGE)
    raw = _run(ResponseEvents(record(request, status=JobStatus.RUNNING)), chunks, final)
    done = [(e["output_index"], e["item"]["type"]) for e in raw if e["type"] == "response.output_item.done"]
    assert done == [(0, "message"), (1, "function_call"), (2, "function_call")]
    completed = _accumulate(raw, [WEATHER])
    assert [i.type for i in completed.output] == ["message", "function_call", "function_call"]
    assert completed.output[1].arguments == '{"city":"A"}'  # its late delta is in the final answer


def test_an_answer_that_did_not_stream_is_sent_whole_at_the_end() -> None:
    calls = [{"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]
    request = responses_to_chat(
        {"model": "gpt-4o-mini", "input": "x", "tools": [WEATHER], "background": True}
    )
    final = record(request, response=completion("Sure.", calls, "tool_calls"), usage=USAGE)
    raw = ResponseEvents(record(request, status=JobStatus.QUEUED)).finish(final)
    assert [e["type"] for e in raw] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert _accumulate(raw, [WEATHER]).output_text == "Sure."


def test_a_failure_after_tokens_is_response_failed() -> None:
    request = responses_to_chat({"model": "gpt-4o-mini", "input": "x", "stream": True})
    events = ResponseEvents(record(request, status=JobStatus.RUNNING))
    raw = events.chunk({"choices": [{"index": 0, "delta": {"content": "Hel"}}]})
    raw += events.fail(RouterError("the stream broke", code="stream_interrupted"))
    last = EVENT.validate_python(raw[-1])
    assert last.type == "response.failed" and last.response.status == "failed"
    assert last.response.error is not None and last.response.error.type == "stream_interrupted"
    assert [e["sequence_number"] for e in raw] == list(range(len(raw)))


def test_input_items_are_the_sdks_response_items() -> None:
    history = [
        {"role": "user", "content": "earlier"},
        {"role": "assistant", "content": "before"},
    ]
    body = {
        "model": "gpt-4o-mini",
        "instructions": "Be terse.",
        "input": [
            {"role": "user", "content": [
                {"type": "input_text", "text": "Look:"},
                {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"},
            ]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "42"},
            {"role": "assistant", "content": [{"type": "output_text", "text": "It is 42."}]},
        ],
    }  # fmt: skip
    job = responses_to_chat(body, history=history)
    items = input_items("resp_abc", input_of(job))
    read = TypeAdapter(list[ResponseItem]).validate_python(items)
    assert [i.type for i in read] == ["message", "function_call", "function_call_output", "message"]
    assert read[0].content[1].type == "input_image" and read[0].content[1].detail == "low"
    assert (read[1].call_id, read[2].output) == ("c1", "42") and read[3].role == "assistant"
    assert len({i["id"] for i in items}) == len(items)
