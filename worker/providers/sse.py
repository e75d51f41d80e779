"""Decoding server-sent events incrementally, as the WHATWG event-stream rules say.

Bytes arrive in arbitrary pieces: an event, a line, a ``\\r\\n`` pair or a UTF-8 character may be
split across them. ``SSEDecoder.feed`` keeps what is incomplete and returns the events completed by
each piece. Lines end in ``\\n``, ``\\r\\n`` or ``\\r``; ``:`` lines are comments (keep-alives);
several ``data:`` lines make one event, joined by ``\\n``; an event with no data is dropped, as is an
event left incomplete when the stream ends (so a cut stream never yields a half event).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from llm_router.errors import BadResponse

_EOL = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"
# a line longer than this is a broken or hostile upstream, not a token stream
MAX_LINE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event: its ``event:`` name (None when absent) and its ``data`` text."""

    event: str | None
    data: str


class SSEDecoder:
    """Turns chunks of an event stream into ``SSEEvent``s; one decoder per stream."""

    def __init__(self) -> None:
        self._buffer = b""
        self._skip_lf = False  # the last chunk ended in "\r": a "\n" opening the next is its pair
        self._first = True
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """The events completed by ``chunk`` (possibly none)."""
        if self._skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._skip_lf = False
        buffer = self._buffer + chunk if self._buffer else chunk
        if self._first:
            if len(buffer) < len(_BOM) and _BOM.startswith(buffer):
                self._buffer = buffer  # could still be a BOM: wait for more
                return []
            buffer = buffer.removeprefix(_BOM)
            self._first = False
        events: list[SSEEvent] = []
        start = 0
        for match in _EOL.finditer(buffer):
            self._line(buffer[start : match.start()], events)
            start = match.end()
        if start and buffer[start - 1 : start] == b"\r" and start == len(buffer):
            self._skip_lf = True
        self._buffer = buffer[start:]
        if len(self._buffer) > MAX_LINE_BYTES:
            raise BadResponse(f"an event-stream line exceeds {MAX_LINE_BYTES} bytes")
        return events

    def _line(self, raw: bytes, events: list[SSEEvent]) -> None:
        if not raw:
            if self._data:
                events.append(SSEEvent(self._event, "\n".join(self._data)))
            self._event, self._data = None, []
            return
        line = raw.decode("utf-8", "replace")
        if line[0] == ":":
            return
        name, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value or None
        # "id" and "retry" steer browser reconnection; a worker never reconnects a generation
