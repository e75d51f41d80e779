"""Gemini streams → OpenAI ``chat.completion.chunk`` objects (see ``worker.providers.stream``)."""

from __future__ import annotations

from dataclasses import dataclass
from time import time
from typing import Any

from config.catalog import Deployment
from llm_router.errors import (
    ContentFiltered,
)
from worker.providers.gemini import _answer_parts, _finish, _tool_call, _usage, classify_error
from worker.providers.sse import SSEEvent
from worker.providers.stream import ChunkStream, MalformedEvent, chunk, delta, event_json, stream_error


def stream_parser(request: dict[str, Any], deployment: Deployment) -> ChunkStream:
    """The parser of one streamed answer to ``request`` (see ``worker.providers.stream``)."""
    return ChunkStream(request, _Responses(request))


@dataclass(slots=True)
class _Candidate:
    opened: bool = False  # its role went out
    calls: int = 0
    produced: bool = False
    finish: str | None = None


class _Responses:
    """Streamed ``GenerateContentResponse``s → OpenAI chunks, one choice per candidate."""

    def __init__(self, request: dict[str, Any]) -> None:
        self.done = False
        self._expected = request.get("n") or 1
        self._id: str | None = None
        self._created = int(time())
        self._model = str(request.get("model") or "")
        self._candidates: dict[int, _Candidate] = {}
        self._usage: Any = None

    def translate(self, event: SSEEvent) -> list[dict[str, Any]]:
        if self.done:
            return []
        data = event_json(event)
        if "error" in data and "candidates" not in data:
            err = data["error"] if isinstance(data["error"], dict) else {}
            code = err.get("code")
            raise stream_error(classify_error, code if type(code) is int and code >= 400 else 500, data)
        if self._id is None:
            self._id = str(data.get("responseId") or f"gemini-{int(time() * 1000)}")
        self._model = str(data.get("modelVersion") or self._model)
        if data.get("usageMetadata") is not None:
            self._usage = data["usageMetadata"]  # cumulative: the last one counts
        candidates = data.get("candidates") or []
        blocked = (data.get("promptFeedback") or {}).get("blockReason")
        if blocked and not candidates:
            raise ContentFiltered(f"Gemini blocked the prompt (blockReason {blocked})", http_status=200)
        if not isinstance(candidates, list) or not all(isinstance(c, dict) for c in candidates):
            raise MalformedEvent("a stream event has malformed candidates")
        choices: list[dict[str, Any]] = []
        finishes: list[dict[str, Any]] = []
        for pos, cand in enumerate(candidates):
            said, finish = self._choice(pos, cand)
            if said is not None:
                choices.append(said)
            if finish is not None:
                finishes.append(finish)
        # a finish reason in a chunk of its own, with an empty delta, as OpenAI streams it: the
        # SDK's stream helper reads a chunk's finish before its tool calls, and would miss the last
        # call's ``tool_calls.function.arguments.done`` if both came in one
        chunks = [chunk(self._id, self._created, self._model, part) for part in (choices, finishes) if part]
        finished = [c for c in self._candidates.values() if c.finish is not None]
        if len(finished) >= self._expected:
            if all(c.finish == "content_filter" and not c.produced for c in finished):
                raise ContentFiltered(
                    "Gemini withheld the answer (finishReason content filter)", http_status=200
                )
            self.done = True
            if self._usage is not None:
                chunks.append(chunk(self._id, self._created, self._model, [], usage=_usage(self._usage)))
        return chunks

    def _choice(
        self, position: int, candidate: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The candidate's delta (``None``: nothing new), and its finish as a delta of its own."""
        index = candidate.get("index")
        if index is None:  # absent (or null) for a lone candidate
            index = position
        elif type(index) is not int or index < 0:
            raise MalformedEvent(f"a stream candidate has index {index!r}")
        state = self._candidates.setdefault(index, _Candidate())
        content = candidate.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        texts, calls = _answer_parts(parts if isinstance(parts, list) else [])
        d: dict[str, Any] = {}
        if not state.opened:
            d["role"] = "assistant"
            state.opened = True
        text = "".join(texts)
        if text:
            d["content"] = text
        if calls:
            assert self._id is not None
            d["tool_calls"] = []
            for call in calls:
                d["tool_calls"].append(
                    {"index": state.calls, **_tool_call(call, self._id, index, state.calls)}
                )
                state.calls += 1
        state.produced = state.produced or bool(text or calls)
        finish = None
        if candidate.get("finishReason") and state.finish is None:
            finish = state.finish = _finish(candidate["finishReason"], state.calls > 0)
        return (
            delta(index, d, None) if d else None,
            delta(index, {}, finish) if finish is not None else None,
        )
