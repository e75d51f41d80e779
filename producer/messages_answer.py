"""A job's record as an Anthropic ``Message``, its chat chunks as Anthropic's stream events, and our
errors in Anthropic's shape and status codes.

``message_object`` renders a succeeded record: ``text`` and ``tool_use`` blocks (arguments parsed
back into ``input``), ``stop_reason`` from ``STOP_REASONS`` and ``usage`` in Anthropic's terms
(``input_tokens`` without the cached parts, which ride in ``cache_read_input_tokens`` and
``cache_creation_input_tokens``), plus our ``cost`` and ``credits_remaining``.

``MessageEvents`` gives Anthropic's event sequence: ``message_start`` (usage not known yet: zeros),
``ping``, per block ``content_block_start`` → ``content_block_delta`` (``text_delta`` /
``input_json_delta``) → ``content_block_stop``, then ``message_delta`` with the stop reason and the
full usage (input tokens included, as Anthropic's newer streams send them) and ``message_stop``.
What the stream did not carry comes from the record at the end.

``anthropic_error`` maps our errors to Anthropic's statuses and error types (``ERRORS``): a provider
overloaded is 529 ``overloaded_error``, a failed job 500 ``api_error``, our 402 ``billing_error``.
"""

from __future__ import annotations

from typing import Any

import orjson

from llm_router.contract import JobRecord, Usage
from llm_router.errors import RouterError

# chat finish_reason → Anthropic stop_reason
STOP_REASONS: dict[str, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
# our HTTP status → (Anthropic's status, error type)
ERRORS: dict[int, tuple[int, str]] = {
    400: (400, "invalid_request_error"),
    401: (401, "authentication_error"),
    402: (402, "billing_error"),
    403: (403, "permission_error"),
    404: (404, "not_found_error"),
    405: (405, "invalid_request_error"),
    408: (504, "timeout_error"),
    409: (409, "invalid_request_error"),
    413: (413, "request_too_large"),
    429: (429, "rate_limit_error"),
    499: (499, "invalid_request_error"),
    503: (529, "overloaded_error"),
    504: (504, "timeout_error"),
}
# our error code → (status, type) where the code says more than its status (a failed job is 502)
ERRORS_BY_CODE: dict[str, tuple[int, str]] = {
    "overloaded": (529, "overloaded_error"),
    "breaker_open": (529, "overloaded_error"),
    "rate_limited": (429, "rate_limit_error"),
    "rate_limit_reached": (429, "rate_limit_error"),
    "timeout": (504, "timeout_error"),
}
SERVER_ERROR = (500, "api_error")


def anthropic_error(exc: RouterError) -> tuple[int, dict[str, Any]]:
    """Our error as Anthropic's status and body; our stable ``code`` and ``param`` ride along."""
    status, kind = ERRORS_BY_CODE.get(exc.code) or ERRORS.get(exc.status) or SERVER_ERROR
    error: dict[str, Any] = {"type": kind, "message": exc.message, "code": exc.code}
    if exc.param:
        error["param"] = exc.param
    return status, {"type": "error", "error": error}


def usage_object(usage: Usage | None) -> dict[str, Any]:
    """A record's usage in Anthropic's terms, with our ``cost`` and ``credits_remaining``."""
    if usage is None:
        return {"input_tokens": 0, "output_tokens": 0}
    return {
        "input_tokens": max(usage.prompt_tokens - usage.cached_tokens - usage.cache_write_tokens, 0),
        "output_tokens": usage.completion_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cached_tokens,
        "cost": usage.cost,
        "credits_remaining": usage.credits_remaining,
    }


def content_blocks(completion: dict[str, Any] | None) -> tuple[list[dict[str, Any]], str]:
    """A ``chat.completion``'s first message as Anthropic content blocks, and its stop reason."""
    choices = (completion or {}).get("choices") or ()
    if not choices:
        return [], "end_turn"
    choice = choices[0]
    message = choice.get("message") or {}
    blocks: list[dict[str, Any]] = []
    if message.get("content"):
        blocks.append({"type": "text", "text": message["content"]})
    calls = [c["function"] | {"id": c.get("id")} for c in message.get("tool_calls") or ()]
    if message.get("function_call"):
        calls.append(message["function_call"] | {"id": None})
    for n, call in enumerate(calls):
        blocks.append(
            {
                "type": "tool_use",
                "id": call.get("id") or f"toolu_{n}",
                "name": call["name"],
                "input": parse_arguments(call.get("arguments")),
            }
        )
    return blocks, STOP_REASONS.get(choice.get("finish_reason") or "stop", "end_turn")


def parse_arguments(arguments: str | None) -> dict[str, Any]:
    """Tool arguments as Anthropic's ``input`` object (an answer that is not an object is wrapped)."""
    try:
        value = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"value": value}


def message_object(record: JobRecord) -> dict[str, Any]:
    """A succeeded record as an Anthropic ``Message``."""
    blocks, stop_reason = content_blocks(record.response)
    return {
        "id": record.id,
        "type": "message",
        "role": "assistant",
        "model": (record.response or {}).get("model") or record.model_requested,
        "content": blocks,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage_object(record.usage),
    }


class MessageEvents:
    """Anthropic's stream events of one job: feed its chunks, then its final record (or error)."""

    def __init__(self, message_id: str, model: str) -> None:
        self.message_id = message_id
        self.model = model
        self.blocks: list[dict[str, Any]] = []  # by content index, as streamed so far
        self.text_index: int | None = None
        self.calls: dict[int, int] = {}  # chat tool-call index → content index
        self.open: int | None = None  # the content index of the open block
        self.started = False

    def start(self) -> list[dict[str, Any]]:
        """``message_start`` and ``ping``, once: every other method begins with them when they are
        not out yet, so a stream starts when it has something to say."""
        if self.started:
            return []
        self.started = True
        message = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return [{"type": "message_start", "message": message}, {"type": "ping"}]

    def chunk(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        for choice in (chunk.get("choices") or ())[:1]:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                events += self._text(delta["content"])
            for call in delta.get("tool_calls") or ():
                events += self._call(call)
        return events

    def _text(self, text: str) -> list[dict[str, Any]]:
        events = self.start()
        if self.text_index is None:
            events += self._start_block({"type": "text", "text": ""})
            self.text_index = self.open
        elif self.open != self.text_index:
            return events  # text after the tool calls began: the final answer has it, in order
        self.blocks[self.text_index]["text"] += text
        delta = {"type": "text_delta", "text": text}
        return [*events, {"type": "content_block_delta", "index": self.text_index, "delta": delta}]

    def _start_block(self, block: dict[str, Any]) -> list[dict[str, Any]]:
        events = self._stop()
        self.blocks.append(block)
        self.open = len(self.blocks) - 1
        start = {"type": "content_block_start", "index": self.open, "content_block": {**block}}
        return [*events, start]

    def _stop(self) -> list[dict[str, Any]]:
        if self.open is None:
            return []
        index, self.open = self.open, None
        return [{"type": "content_block_stop", "index": index}]

    def _call(self, call: dict[str, Any]) -> list[dict[str, Any]]:
        index = call.get("index", 0)
        fn = call.get("function") or {}
        events = self.start()
        if index not in self.calls:
            n = len(self.calls)
            block = {
                "type": "tool_use",
                "id": call.get("id") or f"toolu_{n}",
                "name": fn.get("name") or "",
                "input": {},
            }
            events += self._start_block(block)
            self.blocks[-1]["_json"] = ""  # the arguments as streamed (the start event has a copy)
            self.calls[index] = len(self.blocks) - 1
        at = self.calls[index]
        if fn.get("arguments") and self.open == at:
            self.blocks[at]["_json"] += fn["arguments"]
            delta = {"type": "input_json_delta", "partial_json": fn["arguments"]}
            events.append({"type": "content_block_delta", "index": at, "delta": delta})
        return events

    def finish(self, record: JobRecord) -> list[dict[str, Any]]:
        """Complete every block from the record, then ``message_delta`` and ``message_stop``."""
        final, stop_reason = content_blocks(record.response)
        events = self.start()
        texts = [b for b in final if b["type"] == "text"]
        uses = [b for b in final if b["type"] == "tool_use"]
        if self.text_index is not None and texts:
            events += self._top_up(self.text_index, texts[0]["text"])
        for n, use in enumerate(uses):
            at = next((i for k, i in enumerate(self.calls.values()) if k == n), None)
            if at is not None:
                events += self._top_up(at, orjson.dumps(use["input"]).decode())
        events += self._stop()
        if self.text_index is None and texts:
            events += self._whole(texts[0])
        for use in uses[len(self.calls) :]:
            events += self._whole(use)
        events.append(
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": usage_object(record.usage),
            }
        )
        events.append({"type": "message_stop"})
        return events

    def _top_up(self, index: int, full: str) -> list[dict[str, Any]]:
        """The rest of block ``index``'s text or JSON when the stream carried only its start."""
        if self.open != index:
            return []
        block = self.blocks[index]
        streamed = block["text"] if block["type"] == "text" else block["_json"]
        if block["type"] == "tool_use" and streamed:
            return []  # partial JSON the model streamed is its own; do not second-guess its spacing
        if not full.startswith(streamed) or full == streamed:
            return []
        rest = full[len(streamed) :]
        if block["type"] == "text":
            block["text"] = full
            delta = {"type": "text_delta", "text": rest}
        else:
            block["_json"] = full
            delta = {"type": "input_json_delta", "partial_json": rest}
        return [{"type": "content_block_delta", "index": index, "delta": delta}]

    def _whole(self, block: dict[str, Any]) -> list[dict[str, Any]]:
        if block["type"] == "text":
            events = self._start_block({"type": "text", "text": ""})
            index = len(self.blocks) - 1
            delta = {"type": "text_delta", "text": block["text"]}
        else:
            events = self._start_block({**block, "input": {}})
            index = len(self.blocks) - 1
            delta = {"type": "input_json_delta", "partial_json": orjson.dumps(block["input"]).decode()}
        return [*events, {"type": "content_block_delta", "index": index, "delta": delta}, *self._stop()]

    def fail(self, error: RouterError, record: JobRecord | None = None) -> list[dict[str, Any]]:
        """Anthropic's mid-stream ``error`` event (the SDK raises it as the status's error)."""
        return [*self.start(), anthropic_error(error)[1]]
