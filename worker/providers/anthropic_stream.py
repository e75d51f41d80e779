"""Anthropic streams → OpenAI ``chat.completion.chunk`` objects (see ``worker.providers.stream``)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from time import time
from typing import Any

import orjson

from config.catalog import Deployment
from llm_router.errors import (
    BadResponse,
    ContentFiltered,
)
from worker.providers.anthropic import (
    FINISH_REASONS,
    WRAPPED,
    _json_tool_name,
    _usage,
    classify_error,
    json_answer_wrapped,
)
from worker.providers.sse import SSEEvent
from worker.providers.stream import ChunkStream, MalformedEvent, chunk, delta, event_json, stream_error


def stream_parser(request: dict[str, Any], deployment: Deployment) -> ChunkStream:
    """The parser of one streamed answer to ``request`` (see ``worker.providers.stream``)."""
    return ChunkStream(request, _Events(request))


@dataclass(slots=True)
class _Block:
    """A content block being streamed: ``text``, a ``tool`` call (its ordinal), the forced ``json``
    answer tool, or ``skip`` (thinking and server-side blocks are not part of the answer)."""

    kind: str
    call: int = 0
    json: list[str] = field(default_factory=list)


class _Events:
    """Anthropic's stream events → OpenAI chunks (one choice: Anthropic answers once)."""

    def __init__(self, request: dict[str, Any]) -> None:
        self.done = False
        self._json_tool = _json_tool_name(request)
        # a wrapped answer ({"value": answer}) streams as the answer alone (``_Unwrap``)
        self._unwrap = _Unwrap() if json_answer_wrapped(request) else None
        self._id = f"msg-{int(time() * 1000)}"
        self._created = int(time())
        self._model = str(request.get("model") or "")
        self._usage: dict[str, Any] = {}
        self._blocks: dict[int, _Block] = {}
        self._calls = 0
        self._json_block = False
        self._produced = False

    def translate(self, event: SSEEvent) -> list[dict[str, Any]]:
        if self.done:
            return []
        data = event_json(event)
        handler = _HANDLERS.get(str(data.get("type") or event.event))
        return handler(self, data) if handler is not None else []  # ping, and types added later

    def _chunk(self, d: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return chunk(self._id, self._created, self._model, [delta(0, d, finish)])

    def _start(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        message = data.get("message")
        if not isinstance(message, dict):
            raise MalformedEvent("message_start carries no message")
        self._id = str(message.get("id") or self._id)
        self._model = str(message.get("model") or self._model)
        self._merge_usage(message.get("usage"))
        return [self._chunk({"role": "assistant"})]

    def _block_start(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        block = data.get("content_block")
        if not isinstance(block, dict):
            raise MalformedEvent("content_block_start carries no content block")
        index = data.get("index", len(self._blocks))
        kind = block.get("type")
        if kind == "text":
            self._blocks[index] = _Block("text")
            return self._text(block.get("text"))
        if kind != "tool_use":
            self._blocks[index] = _Block("skip")
            return []
        if not isinstance(block.get("name"), str):
            raise MalformedEvent("a tool_use block in the stream has no name")
        initial = block.get("input")
        partial = orjson.dumps(initial).decode() if isinstance(initial, dict) and initial else ""
        if self._json_tool and self._calls == 0 and not self._json_block and block["name"] == self._json_tool:
            self._json_block = True
            self._blocks[index] = _Block("json")
            return self._json(self._blocks[index], partial)
        self._blocks[index] = tool = _Block("tool", call=self._calls)
        self._calls += 1
        self._produced = True
        opening = {
            "index": tool.call,
            "id": str(block.get("id") or ""),
            "type": "function",
            "function": {"name": block["name"], "arguments": ""},
        }
        return [self._chunk({"tool_calls": [opening]}), *self._json(tool, partial)]

    def _block_delta(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        block = self._blocks.get(data.get("index", -1))
        d = data.get("delta")
        if block is None or not isinstance(d, dict):
            return []
        if d.get("type") == "text_delta" and block.kind == "text":
            return self._text(d.get("text"))
        if d.get("type") == "input_json_delta" and block.kind in ("tool", "json"):
            return self._json(block, d.get("partial_json"))
        return []  # thinking, signatures, citations

    def _block_stop(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        block = self._blocks.get(data.get("index", -1))
        if block is None or block.kind not in ("tool", "json"):
            return []
        if block.kind == "json" and self._unwrap is not None:
            return self._text(self._unwrap.end())
        if not block.json:  # a tool without parameters streams no input: its arguments are {}
            return self._json(block, "{}")
        try:
            value = orjson.loads("".join(block.json))
        except orjson.JSONDecodeError:
            value = None
        if not isinstance(value, dict):
            raise BadResponse("a tool_use block in the stream has no JSON object input")
        return []

    def _text(self, text: Any) -> list[dict[str, Any]]:
        if not isinstance(text, str) or not text:
            return []
        self._produced = True
        return [self._chunk({"content": text})]

    def _json(self, block: _Block, piece: Any) -> list[dict[str, Any]]:
        if not isinstance(piece, str) or not piece:
            return []
        block.json.append(piece)
        if block.kind == "json":
            return self._text(self._unwrap.feed(piece) if self._unwrap is not None else piece)
        return [self._chunk({"tool_calls": [{"index": block.call, "function": {"arguments": piece}}]})]

    def _message_delta(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        self._merge_usage(data.get("usage"))
        d = data.get("delta")
        reason = d.get("stop_reason") if isinstance(d, dict) else None
        finish = FINISH_REASONS.get(str(reason), "stop")
        if self._json_block and finish == "tool_calls":
            finish = "stop"  # the forced answer tool: its input was the answer
        if finish == "content_filter" and not self._produced:
            raise ContentFiltered("Anthropic refused to answer (stop_reason refusal)", http_status=200)
        usage = chunk(self._id, self._created, self._model, [], usage=_usage(self._usage))
        return [self._chunk({}, finish), usage]

    def _stop(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        self.done = True
        return []

    def _error(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        raise stream_error(classify_error, 500, data)

    def _merge_usage(self, usage: Any) -> None:
        # message_start has the input counts; message_delta's counts are cumulative and win
        if isinstance(usage, dict):
            self._usage.update({k: v for k, v in usage.items() if v is not None})


_HANDLERS: dict[str, Callable[[_Events, dict[str, Any]], list[dict[str, Any]]]] = {
    "message_start": _Events._start,
    "content_block_start": _Events._block_start,
    "content_block_delta": _Events._block_delta,
    "content_block_stop": _Events._block_stop,
    "message_delta": _Events._message_delta,
    "message_stop": _Events._stop,
    "error": _Events._error,
}


_OPENING = re.compile(r'\s*\{\s*"' + WRAPPED + r'"\s*:\s*')
_CLOSING = re.compile(r"\s*\}?\s*$")


class _Unwrap:
    """The streamed input of a wrapped answer tool, ``{"value": …}``, as the answer alone: the
    opening is dropped once it has come whole, and a closing brace is held back until more comes
    after it (then it was the answer's) or the block ends (then it was the wrapper's)."""

    def __init__(self) -> None:
        self._buffer = ""
        self._opened = False
        self._sent = 0

    def feed(self, piece: str) -> str:
        self._buffer += piece
        if not self._opened:
            opening = _OPENING.match(self._buffer)
            if opening is None:
                return ""  # not whole yet (an input that never opens so is refused at its end)
            self._buffer, self._opened = self._buffer[opening.end() :], True
        if self._sent == 0:  # the space after the colon may come in a later piece
            self._buffer = self._buffer.lstrip()
        held = _CLOSING.search(self._buffer)
        end = held.start() if held is not None else len(self._buffer)
        out, self._sent = self._buffer[self._sent : max(end, self._sent)], max(end, self._sent)
        return out

    def end(self) -> str:
        """What is left once the input is whole: its last brace was the wrapper's."""
        if not self._opened:
            raise BadResponse("the structured answer's tool input did not hold the answer")
        rest = self._buffer[self._sent :]
        closing = _CLOSING.search(rest)
        return rest[: closing.start()] if closing is not None else rest
