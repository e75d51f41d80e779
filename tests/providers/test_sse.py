"""The SSE decoder: the WHATWG event-stream rules (html.spec.whatwg.org/multipage/server-sent-events.html,
"Interpreting an event stream"), fed in every possible split."""

from __future__ import annotations

import pytest

from llm_router.errors import BadResponse
from worker.providers import sse
from worker.providers.sse import SSEDecoder, SSEEvent

# Anthropic's basic stream (docs.claude.com/en/docs/build-with-claude/streaming), with a comment
# line and CRLF endings mixed in as proxies produce them
STREAM = (
    b'event: message_start\r\ndata: {"type": "message_start"}\r\n\r\n'
    b": keep-alive comment\n\n"
    b'event: content_block_delta\ndata: {"type": "content_block_delta", "text": "h\xc3\xa9llo"}\n\n'
    b"data: first line\ndata:second line\ndata: \n\n"
    b"event: ping\rdata: {}\r\r"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    SSEEvent("message_start", '{"type": "message_start"}'),
    SSEEvent("content_block_delta", '{"type": "content_block_delta", "text": "héllo"}'),
    SSEEvent(None, "first line\nsecond line\n"),
    SSEEvent("ping", "{}"),
    SSEEvent(None, "[DONE]"),
]


def decode(pieces: list[bytes]) -> list[SSEEvent]:
    decoder = SSEDecoder()
    return [event for piece in pieces for event in decoder.feed(piece)]


def test_whole_stream_in_one_chunk() -> None:
    assert decode([STREAM]) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 13, 64])
def test_any_split_gives_the_same_events(size: int) -> None:
    # splits fall inside "\r\n" pairs, field names, multi-byte UTF-8 characters and event ends
    assert decode([STREAM[i : i + size] for i in range(0, len(STREAM), size)]) == EXPECTED


def test_every_two_way_split() -> None:
    for cut in range(len(STREAM) + 1):
        assert decode([STREAM[:cut], STREAM[cut:]]) == EXPECTED, cut


def test_events_come_out_as_soon_as_they_complete() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n") == []
    assert decoder.feed(b"\n") == [SSEEvent(None, "a")]
    assert decoder.feed(b"data: b\r") == []
    assert decoder.feed(b"\r") == [SSEEvent(None, "b")]  # CR CR: a blank line, nothing to wait for
    assert decoder.feed(b"\ndata: c\n\n") == [SSEEvent(None, "c")]  # that LF pairs with the CR before it


@pytest.mark.parametrize(
    ("raw", "events"),
    [
        (b"\xef\xbb\xbfdata: x\n\n", [SSEEvent(None, "x")]),  # a leading BOM is dropped
        (b"event: ping\n\n", []),  # no data: nothing to dispatch
        (b"data\n\n", [SSEEvent(None, "")]),  # a field without a colon has an empty value
        (b"data:  two spaces\n\n", [SSEEvent(None, " two spaces")]),  # only one space is stripped
        (b"id: 7\nretry: 10\ndata: x\n\n", [SSEEvent(None, "x")]),
        (b"event:\ndata: x\n\n", [SSEEvent(None, "x")]),  # an empty event name is no name
        (b"data: x\n\nevent: e\n", [SSEEvent(None, "x")]),  # the name does not leak into the next
        (b"data: cut short", []),  # a stream ending mid-event yields nothing of it
    ],
)
def test_field_rules(raw: bytes, events: list[SSEEvent]) -> None:
    assert decode([raw]) == events


def test_event_name_resets_after_dispatch() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"event: error\ndata: 1\n\n") == [SSEEvent("error", "1")]
    assert decoder.feed(b"data: 2\n\n") == [SSEEvent(None, "2")]


def test_a_line_without_end_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sse, "MAX_LINE_BYTES", 100)
    decoder = SSEDecoder()
    decoder.feed(b"data: " + b"x" * 90)
    with pytest.raises(BadResponse):
        decoder.feed(b"x" * 20)
