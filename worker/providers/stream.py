"""Streamed answers, whatever the wire format: OpenAI chunks in, one ``chat.completion`` out.

Each format module translates its upstream events into OpenAI ``chat.completion.chunk`` dicts (a
``Translator``); everything after that is here, once:

* ``ChunkStream`` is the parser the worker drives (``feed`` / ``done`` / ``started`` /
  ``completion`` / ``partial_text``): it runs the format's translator, rewrites tool-call deltas
  as legacy ``function_call`` deltas for ``functions`` requests (as ``parse_response`` does for
  whole answers), and feeds every chunk to
* ``ChunkAssembler``, which rebuilds the whole ``chat.completion`` from the chunks: text and
  refusal concatenated, annotations joined, tool calls reassembled by index, logprobs joined, the
  last usage kept.

So the record of a streamed job is exactly what its followers saw, concatenated.
``completion_chunks`` goes the other way (a whole answer as chunks) and ``chunk`` builds one.

One malformed event (JSON that does not parse, a shape the format never sends: ``MalformedEvent``)
is skipped and counted (``ChunkStream.skipped``), and the stream goes on: a proxy's stray line must
not cost an answer. The stream fails only when it does not recover: ``MAX_MALFORMED_IN_A_ROW``
malformed events in a row, or an end without the format's terminal event.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from llm_router.errors import BadResponse, RouterError
from worker.providers.base import Completion
from worker.providers.sse import SSEEvent
from worker.providers.wire import Classify

CHUNK = "chat.completion.chunk"
_LEGACY_FINISH = {"tool_calls": "function_call"}
# upstream chunk keys that are transport padding, not part of the answer (OpenAI's obfuscation)
_NOISE = frozenset({"obfuscation"})
_HEAD_KEYS = frozenset({"id", "object", "created", "model", "choices", "usage"})
# a stream that sends this many malformed events in a row is not recovering: it fails (bad_response)
MAX_MALFORMED_IN_A_ROW = 3


class MalformedEvent(Exception):
    """One event that is not what its format sends: skipped by ``ChunkStream``, never raised past it."""


@dataclass(frozen=True, slots=True)
class Counts:
    """The billed token counts of a usage object (see ``Completion``)."""

    prompt: int
    completion: int
    cached: int = 0
    cache_write: int = 0
    reasoning: int = 0


UsageReader = Callable[[dict[str, Any]], Counts]


def usage_counts(usage: dict[str, Any], *, cache_writes: bool = True) -> Counts:
    """Token counts of an OpenAI usage object, with our ``prompt_tokens_details.cache_write_tokens``.

    Raises ``BadResponse`` when the counts are missing or not counts.
    """
    details = usage.get("prompt_tokens_details")
    details = details if isinstance(details, dict) else {}
    out_details = usage.get("completion_tokens_details")
    out_details = out_details if isinstance(out_details, dict) else {}
    counts = Counts(
        prompt=usage.get("prompt_tokens"),  # type: ignore[arg-type]  # checked below
        completion=usage.get("completion_tokens", 0),
        cached=details.get("cached_tokens") or 0,
        cache_write=(details.get("cache_write_tokens") or 0) if cache_writes else 0,
        reasoning=out_details.get("reasoning_tokens") or 0,
    )
    values = (counts.prompt, counts.completion, counts.cached, counts.cache_write, counts.reasoning)
    if not all(type(v) is int and v >= 0 for v in values):
        raise BadResponse("the answer's usage has no valid token counts")
    return counts


def event_json(event: SSEEvent) -> dict[str, Any]:
    """An event's data as a JSON object; ``MalformedEvent`` when it is not one."""
    try:
        data = orjson.loads(event.data)
    except orjson.JSONDecodeError:
        raise MalformedEvent(f"malformed JSON in a stream event ({len(event.data)} chars)") from None
    if not isinstance(data, dict):
        raise MalformedEvent("a stream event's data is not a JSON object")
    return data


def stream_error(classify: Classify, status: int, payload: Any) -> RouterError:
    """The format's error for an error event mid-stream; ``status`` stands in for the HTTP status the
    format's table would read (the response itself was a 200, which the error keeps)."""
    error = classify(status, {}, orjson.dumps(payload))
    error.http_status = 200
    return error


def chunk(
    id: str,
    created: int,
    model: str,
    choices: list[dict[str, Any]],
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One ``chat.completion.chunk``; with ``usage`` (and usually no choices) the final usage chunk."""
    out: dict[str, Any] = {"id": id, "object": CHUNK, "created": created, "model": model, "choices": choices}
    if usage is not None:
        out["usage"] = usage
    return out


def delta(index: int, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    """One choice of a chunk."""
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def completion_chunks(response: dict[str, Any]) -> list[dict[str, Any]]:
    """A whole ``chat.completion`` as the chunks a stream of it would carry (the last one the usage).

    For an answer that did not stream (a provider that cannot) published to a job's stream;
    ``ChunkAssembler`` turns them back into the same ``chat.completion``.
    """
    head = (
        str(response.get("id") or ""),
        int(response.get("created") or 0),
        str(response.get("model") or ""),
    )
    extra = {k: v for k, v in response.items() if k not in _HEAD_KEYS}
    out = []
    for choice in response.get("choices") or ():
        message = choice.get("message") or {}
        d: dict[str, Any] = {"role": message.get("role") or "assistant"}
        for key in ("content", "refusal"):
            if message.get(key) is not None:
                d[key] = message[key]
        if message.get("annotations"):
            d["annotations"] = message["annotations"]
        if message.get("tool_calls"):
            d["tool_calls"] = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
        if message.get("function_call"):
            d["function_call"] = message["function_call"]
        index = choice.get("index", 0)
        out.append({**chunk(*head, [delta(index, d)]), **extra})
        finish = delta(index, {}, choice.get("finish_reason"))
        finish["logprobs"] = choice.get("logprobs")
        out.append({**chunk(*head, [finish]), **extra})
    if isinstance(response.get("usage"), dict):
        out.append({**chunk(*head, [], usage=response["usage"]), **extra})
    return out


# -- chunks → completion ----------------------------------------------------------------------


@dataclass(slots=True)
class _Call:
    id: str = ""
    type: str = "function"
    name: str = ""
    arguments: str = ""


@dataclass(slots=True)
class _Choice:
    role: str = "assistant"
    content: list[str] | None = None  # None until a delta carries a string (a tool-only answer)
    refusal: list[str] | None = None
    annotations: list[Any] | None = None  # citations (web search), as OpenAI streams them
    calls: dict[int, _Call] = field(default_factory=dict)
    function_call: _Call | None = None
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None = None


class ChunkAssembler:
    """Rebuilds a ``chat.completion`` from ``chat.completion.chunk`` dicts, in the order fed."""

    def __init__(self, read_usage: UsageReader = usage_counts) -> None:
        self._read_usage = read_usage
        self._head: dict[str, Any] = {}
        self._extra: dict[str, Any] = {}  # system_fingerprint, service_tier, provider...
        self._choices: dict[int, _Choice] = {}
        self.usage: dict[str, Any] | None = None
        self.started = False  # a content, refusal or tool-call token was seen

    def add(self, chunk: dict[str, Any]) -> None:
        for key in ("id", "created", "model"):
            if key not in self._head and chunk.get(key) is not None:
                self._head[key] = chunk[key]
        for key, value in chunk.items():
            if key not in _HEAD_KEYS and value is not None:
                self._extra[key] = value
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for entry in chunk.get("choices") or ():
            self._add_choice(entry)

    def _add_choice(self, entry: dict[str, Any]) -> None:
        index = entry.get("index", 0)
        choice = self._choices.get(index)
        if choice is None:
            choice = self._choices[index] = _Choice()
        d = entry.get("delta") or {}
        if isinstance(d.get("role"), str):
            choice.role = d["role"]
        for key in ("content", "refusal"):
            text = d.get(key)
            if isinstance(text, str):
                parts = getattr(choice, key)
                if parts is None:
                    parts = []
                    setattr(choice, key, parts)
                parts.append(text)
                self.started = self.started or bool(text)
        if isinstance(d.get("annotations"), list) and d["annotations"]:
            choice.annotations = [*(choice.annotations or ()), *d["annotations"]]
        for call_delta in d.get("tool_calls") or ():
            call = choice.calls.setdefault(call_delta.get("index", 0), _Call())
            _merge_call(call, call_delta)
            self.started = True
        if isinstance(d.get("function_call"), dict):
            choice.function_call = choice.function_call or _Call()
            _merge_call(choice.function_call, {"function": d["function_call"]})
            self.started = True
        logprobs = entry.get("logprobs")
        if isinstance(logprobs, dict):
            joined = choice.logprobs if choice.logprobs is not None else {}
            for key, items in logprobs.items():
                if isinstance(items, list) and isinstance(joined.get(key), list):
                    joined[key].extend(items)
                elif items is not None or key not in joined:
                    joined[key] = list(items) if isinstance(items, list) else items
            choice.logprobs = joined
        if entry.get("finish_reason") is not None:
            choice.finish_reason = entry["finish_reason"]

    def partial_text(self, index: int = 0) -> str:
        choice = self._choices.get(index)
        return "".join(choice.content or ()) if choice is not None else ""

    def completion(self) -> Completion:
        """The assembled answer; ``BadResponse`` when the stream carried no usage."""
        if self.usage is None:
            raise BadResponse("the stream carried no usage")
        counts = self._read_usage(self.usage)
        usage = dict(self.usage)
        usage.setdefault("completion_tokens", counts.completion)
        usage.setdefault("total_tokens", counts.prompt + counts.completion)
        response = {
            "id": self._head.get("id", ""),
            "object": "chat.completion",
            "created": self._head.get("created", 0),
            "model": self._head.get("model", ""),
            "choices": [_choice_json(i, self._choices[i]) for i in sorted(self._choices)],
            "usage": usage,
            **self._extra,
        }
        return Completion(
            response=response,
            prompt_tokens=counts.prompt,
            completion_tokens=counts.completion,
            cached_tokens=counts.cached,
            cache_write_tokens=counts.cache_write,
            reasoning_tokens=counts.reasoning,
        )


def _merge_call(call: _Call, d: dict[str, Any]) -> None:
    # ids and types come whole (some vendors repeat them on every delta); names and arguments in pieces
    if isinstance(d.get("id"), str) and d["id"]:
        call.id = d["id"]
    if isinstance(d.get("type"), str):
        call.type = d["type"]
    function = d.get("function") or {}
    if isinstance(function.get("name"), str) and function["name"] != call.name:
        call.name += function["name"]
    if isinstance(function.get("arguments"), str):
        call.arguments += function["arguments"]


def _choice_json(index: int, choice: _Choice) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": choice.role,
        "content": "".join(choice.content) if choice.content is not None else None,
        "refusal": "".join(choice.refusal) if choice.refusal else None,
    }
    if choice.annotations:
        message["annotations"] = choice.annotations
    if choice.calls:
        message["tool_calls"] = [
            {"id": c.id, "type": c.type, "function": {"name": c.name, "arguments": c.arguments}}
            for _, c in sorted(choice.calls.items())
        ]
    if choice.function_call is not None:
        message["function_call"] = {
            "name": choice.function_call.name,
            "arguments": choice.function_call.arguments,
        }
    # a stream that ended without a finish reason but with its terminal event finished normally
    finish = choice.finish_reason or "stop"
    return {"index": index, "message": message, "logprobs": choice.logprobs, "finish_reason": finish}


# -- the parser the worker drives -------------------------------------------------------------


class Translator(Protocol):
    """A format's half of a stream parser: upstream events in, OpenAI chunks out."""

    done: bool

    def translate(self, event: SSEEvent) -> list[dict[str, Any]]:
        """The chunks for ``event``; raises the format's classified error for an error event."""
        ...


class ChunkStream:
    """A ``StreamParser`` (see ``worker.providers.base``): a format's translator plus the assembler."""

    def __init__(
        self, request: dict[str, Any], translator: Translator, read_usage: UsageReader = usage_counts
    ) -> None:
        self._translator = translator
        self._legacy = "functions" in request
        self._assembler = ChunkAssembler(read_usage)
        self.skipped = 0  # malformed events skipped so far
        self.last_skipped = ""  # why the last one was
        self._in_a_row = 0

    @property
    def done(self) -> bool:
        """True once the stream verifiably finished (its format's terminal event arrived)."""
        return self._translator.done

    @property
    def started(self) -> bool:
        """True once a content, refusal or tool-call token was produced."""
        return self._assembler.started

    def feed(self, event: SSEEvent) -> list[dict[str, Any]]:
        """The chunks to publish for ``event`` (already counted into the completion); none for a
        malformed event, which is skipped (``BadResponse`` once too many come in a row)."""
        try:
            chunks = self._translator.translate(event)
            for c in chunks:
                for key in _NOISE & c.keys():
                    del c[key]
                if self._legacy:
                    to_legacy(c)
                self._assembler.add(c)
        except MalformedEvent as exc:
            return self._skip(str(exc))
        except RouterError:
            raise
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            # a value of the wrong type deep in an event: the upstream's fault, not a crash of ours
            return self._skip(f"a malformed stream event ({type(exc).__name__}: {exc})")
        self._in_a_row = 0
        return chunks

    def _skip(self, why: str) -> list[dict[str, Any]]:
        self.skipped += 1
        self._in_a_row += 1
        self.last_skipped = why
        if self._in_a_row >= MAX_MALFORMED_IN_A_ROW:
            raise BadResponse(f"the stream sent {self._in_a_row} malformed events in a row; the last: {why}")
        return []

    def completion(self) -> Completion:
        """The whole answer, as ``parse_response`` gives it for the same answer; call once ``done``."""
        return self._assembler.completion()

    def partial_text(self) -> str:
        """The text so far (of the first choice)."""
        return self._assembler.partial_text()


def to_legacy(c: dict[str, Any]) -> None:
    """Rewrite a chunk in place for a ``functions`` request: the first tool call is ``function_call``."""
    for entry in c.get("choices") or ():
        d = entry.get("delta") or {}
        calls = d.pop("tool_calls", None)
        for call in calls or ():
            if call.get("index", 0) == 0 and isinstance(call.get("function"), dict):
                fn = {
                    k: v for k, v in call["function"].items() if k in ("name", "arguments") and v is not None
                }
                d["function_call"] = fn
        if entry.get("finish_reason") in _LEGACY_FINISH:
            entry["finish_reason"] = _LEGACY_FINISH[entry["finish_reason"]]
