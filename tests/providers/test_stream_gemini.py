"""The Gemini format's stream parser, offline, on recorded streams translated to OpenAI chunks.

Each event is a ``GenerateContentResponse`` (the REST example ``:streamGenerateContent?alt=sse`` of
ai.google.dev/api/generate-content#method:-models.streamgeneratecontent): the new parts of each
candidate, the prompt's usage on every event and the whole usage with the ``finishReason`` on the
last. Function calls come
whole (ai.google.dev/gemini-api/docs/function-calling); Gemini 3 ends a stream with an empty text
part carrying the ``thoughtSignature`` (ai.google.dev/gemini-api/docs/thought-signatures).
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from google.genai import types as gtypes
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from config.catalog import Deployment
from config.cost import FREE
from llm_router.errors import BadResponse, RouterError
from worker.providers import ADAPTERS
from worker.providers.sse import SSEDecoder

adapter = ADAPTERS["gemini"]

DEP = Deployment(
    id="google/gemini-2.5-flash",
    provider="google",
    format="gemini",
    base_url="https://generativelanguage.googleapis.com",
    upstream_model="gemini-2.5-flash",
    price=FREE,
    api_key="AIza-secret",
)
REQUEST: dict[str, Any] = {"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "Hi"}]}
PROMPT_USAGE = {
    "promptTokenCount": 11,
    "totalTokenCount": 11,
    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 11}],
}


def response(candidates: list[dict[str, Any]], usage: dict[str, Any] = PROMPT_USAGE) -> dict[str, Any]:
    return {
        "candidates": candidates,
        "usageMetadata": usage,
        "modelVersion": "gemini-2.5-flash",
        "responseId": "tTCwacuEBMvnitYP06qsgQY",
    }


def candidate(*parts: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"content": {"parts": list(parts), "role": "model"}, **extra}
    if finish:
        out["finishReason"] = finish
    return out


def sse(*events: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + orjson.dumps(e) + b"\r\n\r\n" for e in events)  # Google ends lines in CRLF


FINAL_USAGE = {"promptTokenCount": 11, "candidatesTokenCount": 9, "totalTokenCount": 20}
TEXT = [
    response([candidate({"text": "The capital"})]),
    response([candidate({"text": " of France is"})]),
    response([candidate({"text": " Paris."})]),
    response([candidate({"text": "", "thoughtSignature": "AY89a18iOcFus5wr"}, finish="STOP")], FINAL_USAGE),
]
MEETING_ARGS = {"attendees": ["Bob", "Alice"], "topic": "Q3 planning"}
CALLS = [
    response(
        [
            candidate(
                {"text": "Scheduling it.", "thought": True},
                {"functionCall": {"name": "schedule_meeting", "args": MEETING_ARGS}},
                {"functionCall": {"name": "schedule_meeting", "args": {"topic": "Q4"}}},
                finish="STOP",
            )
        ],
        {**FINAL_USAGE, "thoughtsTokenCount": 30, "cachedContentTokenCount": 4},
    )
]


def feed(events: list[dict[str, Any]], request: dict[str, Any] = REQUEST) -> tuple[Any, list[dict[str, Any]]]:
    for event in events:
        gtypes.GenerateContentResponse.model_validate(event)  # the recorded shapes are real ones
    parser = adapter.stream_parser(request, DEP)
    chunks: list[dict[str, Any]] = []
    for event in SSEDecoder().feed(sse(*events)):
        chunks += parser.feed(event)
    for c in chunks:
        ChatCompletionChunk.model_validate(c)
    return parser, chunks


def whole(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The same answer not streamed: each candidate's parts joined, the last event's usage."""
    merged: dict[int, dict[str, Any]] = {}
    for event in events:
        for pos, cand in enumerate(event["candidates"]):
            into = merged.setdefault(cand.get("index", pos), candidate(index=cand.get("index", pos)))
            into["content"]["parts"].extend(cand["content"]["parts"])
            if "finishReason" in cand:
                into["finishReason"] = cand["finishReason"]
    return {**events[-1], "candidates": [merged[i] for i in sorted(merged)]}


def test_stream_request_goes_to_stream_generate_content_as_sse() -> None:
    request = {**REQUEST, "stream": True, "stream_options": {"include_usage": True}}
    call = adapter.build_stream_request(request, DEP)
    assert call.url == (
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    )
    assert call.headers["x-goog-api-key"] == "AIza-secret" and "key=" not in call.url
    assert call.body == adapter.build_request(request, DEP).body


def test_text_stream_as_openai_chunks() -> None:
    parser, chunks = feed(TEXT)
    assert parser.done and parser.started
    deltas = [(c["choices"][0]["delta"], c["choices"][0]["finish_reason"]) for c in chunks if c["choices"]]
    assert deltas == [
        ({"role": "assistant", "content": "The capital"}, None),
        ({"content": " of France is"}, None),
        ({"content": " Paris."}, None),
        ({}, "stop"),  # the signature-only part is no token
    ]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 20
    done = parser.completion()
    ChatCompletion.model_validate(done.response)
    assert done.response["choices"][0]["message"]["content"] == "The capital of France is Paris."
    assert (done.prompt_tokens, done.completion_tokens) == (11, 9)


@pytest.mark.parametrize("events", [TEXT, CALLS], ids=["text", "calls"])
@pytest.mark.parametrize("legacy", [False, True])
def test_completion_equals_parse_response_of_the_same_answer(
    events: list[dict[str, Any]], legacy: bool
) -> None:
    request = {**REQUEST, "functions": [{"name": "schedule_meeting"}]} if legacy else REQUEST
    streamed = feed(events, request)[0].completion()
    plain = adapter.parse_response(200, {}, orjson.dumps(whole(events)), request)
    streamed.response["created"] = plain.response["created"]
    assert streamed == plain


def test_function_calls_arrive_whole_with_stable_ids() -> None:
    parser, chunks = feed(CALLS)
    calls = chunks[0]["choices"][0]["delta"]["tool_calls"]
    assert [(c["index"], c["function"]["name"]) for c in calls] == [
        (0, "schedule_meeting"),
        (1, "schedule_meeting"),
    ]
    assert orjson.loads(calls[0]["function"]["arguments"]) == MEETING_ARGS
    done = parser.completion()
    choice = done.response["choices"][0]
    assert (
        choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    )  # the thought is skipped
    assert [c["id"] for c in choice["message"]["tool_calls"]] == [c["id"] for c in calls]
    assert (done.completion_tokens, done.reasoning_tokens, done.cached_tokens) == (39, 30, 4)


def test_text_parts_before_a_call_do_not_change_its_id() -> None:
    # the whole answer has the call at part 2, the stream at part 0 of its event: same id
    events = [response([candidate({"text": "Let me "})]), response([candidate({"text": "check."})]), *CALLS]
    streamed = feed(events)[0].completion().response["choices"][0]["message"]["tool_calls"]
    plain = adapter.parse_response(200, {}, orjson.dumps(whole(events)), REQUEST)
    assert streamed == plain.response["choices"][0]["message"]["tool_calls"]


def test_two_candidates_done_when_both_finished() -> None:
    request = {**REQUEST, "n": 2}
    events = [
        response([candidate({"text": "A1"}, index=0), candidate({"text": "B1"}, index=1)]),
        response([candidate({"text": "A2"}, index=0, finish="STOP")]),
        response([candidate({"text": "B2"}, index=1, finish="MAX_TOKENS")], FINAL_USAGE),
    ]
    parser = adapter.stream_parser(request, DEP)
    decoded = SSEDecoder().feed(sse(*events))
    parser.feed(decoded[0])
    parser.feed(decoded[1])
    assert not parser.done  # one of two candidates finished
    parser.feed(decoded[2])
    assert parser.done
    choices = parser.completion().response["choices"]
    assert [(c["message"]["content"], c["finish_reason"]) for c in choices] == [
        ("A1A2", "stop"),
        ("B1B2", "length"),
    ]


@pytest.mark.parametrize(
    ("events", "done"),
    [
        (TEXT, True),
        (TEXT[:-1], False),  # no finishReason: a cut stream
        ([response([candidate({"text": "x"}, finish="STOP")])], True),  # usage of the prompt only
    ],
)
def test_done_only_on_a_finish_reason(events: list[dict[str, Any]], done: bool) -> None:
    assert feed(events)[0].done is done


def test_cut_stream_keeps_partial_text() -> None:
    parser, _ = feed(TEXT[:2])
    assert parser.started and not parser.done
    assert parser.partial_text() == "The capital of France is"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (
            {
                "code": 503,
                "message": "The model is overloaded. Please try again later.",
                "status": "UNAVAILABLE",
            },
            "overloaded",
        ),
        (
            {"code": 429, "message": "Resource has been exhausted", "status": "RESOURCE_EXHAUSTED"},
            "rate_limited",
        ),
        ({"code": 500, "message": "An internal error has occurred.", "status": "INTERNAL"}, "upstream_error"),
        ({"message": "no code, no status"}, "upstream_error"),
    ],
)
def test_error_events_are_classified(error: dict[str, Any], code: str) -> None:
    parser = adapter.stream_parser(REQUEST, DEP)
    first, err = SSEDecoder().feed(sse(TEXT[0], {"error": error}))
    parser.feed(first)
    with pytest.raises(RouterError) as info:
        parser.feed(err)
    assert info.value.code == code and info.value.http_status == 200
    assert parser.partial_text() == "The capital"


@pytest.mark.parametrize(
    "event",
    [
        {
            "promptFeedback": {"blockReason": "SAFETY"},
            "usageMetadata": PROMPT_USAGE,
            "modelVersion": "gemini-2.5-flash",
        },
        response([candidate(finish="SAFETY")], FINAL_USAGE),
    ],
)
def test_blocked_prompt_or_withheld_answer_is_content_filtered(event: dict[str, Any]) -> None:
    with pytest.raises(RouterError) as info:
        feed([event])
    assert info.value.code == "content_filtered"


# one event that is not what Gemini sends: skipped (counted), the stream goes on
MALFORMED = [
    b'data: {"candidates": [{"content": \n\n',
    b'data: {"candidates": {"0": 1}}\n\n',
    b'data: {"promptFeedback": "blocked"}\n\n',
]


def feed_raw(raw: bytes) -> Any:
    parser = adapter.stream_parser(REQUEST, DEP)
    for event in SSEDecoder().feed(raw):
        parser.feed(event)
    return parser


@pytest.mark.parametrize("bad", MALFORMED)
def test_a_malformed_event_is_skipped_and_the_stream_goes_on(bad: bytes) -> None:
    raw = sse(*TEXT)
    cut = raw.index(b"data: ", 10)  # after the first event
    parser = feed_raw(raw[:cut] + bad + raw[cut:])
    assert parser.skipped == 1 and parser.done
    # the same answer; ``created`` is each parser's clock, which may have ticked a second between them
    answer, clean = parser.completion().response, feed(TEXT)[0].completion().response
    assert {**answer, "created": 0} == {**clean, "created": 0}


def test_malformed_events_in_a_row_fail_the_stream() -> None:
    with pytest.raises(BadResponse, match="3 malformed events in a row"):
        feed_raw(MALFORMED[0] * 3)


@pytest.mark.parametrize(
    "raw",
    [
        b'data: {"candidates": [{"content": {"parts": [{"functionCall": {"args": {}}}]}}]}\n\n',
        b'data: {"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": "STOP"}],'
        b' "usageMetadata": {"promptTokenCount": "many"}}\n\n',
    ],
)
def test_a_broken_answer_is_bad_response(raw: bytes) -> None:
    with pytest.raises(BadResponse):
        feed_raw(raw).completion()


def test_a_null_candidate_index_means_the_lone_candidate_and_a_bad_one_is_refused() -> None:
    """Found by the fuzzing in tests/core/test_fuzz_contract.py: ``"index": null`` crashed assembly."""
    parser = adapter.stream_parser({"model": "gemini-2.5-flash", "messages": []}, DEP)
    decoder = SSEDecoder()
    events = decoder.feed(
        b'data: {"candidates":[{"content":null}],"usageMetadata":{}}\n\n'
        b'data: {"candidates":[{"content":null,"finishReason":"STOP","index":null}]}\n\n'
    )
    for event in events:
        parser.feed(event)
    assert parser.done
    try:
        parser.completion()
    except RouterError as exc:
        assert exc.code == "bad_response"
    bad = adapter.stream_parser({"model": "gemini-2.5-flash", "messages": []}, DEP)
    for event in SSEDecoder().feed(b'data: {"candidates":[{"index":"x","content":{}}]}\n\n'):
        assert bad.feed(event) == []  # a malformed event: skipped
    assert bad.skipped == 1
