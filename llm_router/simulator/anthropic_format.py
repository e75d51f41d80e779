"""The Anthropic Messages wire format: ``POST {prefix}/v1/messages`` with ``x-api-key``.

``ANTHROPIC`` is the ``WireFormat`` the pipeline drives. The key goes in ``x-api-key`` (or, as the
official SDK now sends it, ``Authorization: Bearer``) and the ``anthropic-version`` header is
required, as with the real API. Errors take Anthropic's shape
``{"type": "error", "error": {"type", "message"}, "request_id"}`` with the type picked by status
(``_ERRORS``). Answers are deterministic like the OpenAI format's: a tool is called when tools are
offered (unless the last turn carries tool results and the choice is the model's), else a sentence
derived from the request. Extended thinking adds a thinking block; ``cache_control`` breakpoints
write and read the simulator's prompt cache, which the usage reports. With ``stream`` the same
answer goes out as Anthropic's server-sent events.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from llm_router.simulator.anthropic_request import MessagesRequest, validate_messages_request
from llm_router.simulator.content import (
    continue_from,
    cut_at_stop,
    reply_text,
    request_digest,
    sample_json,
    truncate_to_tokens,
)
from llm_router.simulator.prompt_cache import MIN_TOKENS, PromptCache
from llm_router.simulator.state import STATE
from llm_router.simulator.stream import SSE_CONTENT_TYPE, broken_stream, send_events
from llm_router.simulator.tokens import (
    MESSAGE_OVERHEAD,
    REPLY_PRIMING,
    anthropic_block_tokens,
    count_json_tokens,
    count_text_tokens,
)
from llm_router.simulator.wire import ChatCall, Rejection, StreamFault

_JSON = "application/json"
NO_SAMPLING_VERSION = "2026-10-21"

# status -> (error.type, canned message for injected faults)
_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low to access the Anthropic API."),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "model: {model}"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit."),
    500: ("api_error", "Internal server error"),
    504: ("timeout_error", "Request timed out"),
    529: ("overloaded_error", "Overloaded"),
}
_OTHER_CLIENT_ERROR = ("invalid_request_error", "The request failed.")
# error codes a fault can inject (``FaultRule.error_code``) → Anthropic's (type, message)
_CODE_ERRORS = {
    "context_length_exceeded": (
        "invalid_request_error",
        "prompt is too long: 210000 tokens > 200000 maximum",
    ),
    "content_policy_violation": ("invalid_request_error", "Output blocked by content filtering policy"),
}
_OTHER_SERVER_ERROR = ("api_error", "Internal server error")
_THINKING_CAP = 64  # the simulated thought never exceeds this many tokens (or the budget)
_CHUNK_CHARS = 24  # text streams in pieces this long; tool input in three pieces


class AnthropicFormat:
    """``WireFormat`` for Anthropic's Messages API."""

    def authenticate(self, request: web.Request) -> str:
        return credential(request)

    def peek_model(self, request: web.Request, raw: bytes) -> str | None:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        model = body.get("model") if isinstance(body, dict) else None
        return model if isinstance(model, str) else None

    def parse(self, request: web.Request, raw: bytes) -> ChatCall:
        if not request.headers.get("anthropic-version"):
            raise Rejection(400, "anthropic-version: header is required")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise Rejection(400, "There was an error parsing the body of your request as JSON.") from None
        # from API version 2026-10-21 on, sampling parameters are no longer part of the request
        sampling = request.headers["anthropic-version"] < NO_SAMPLING_VERSION
        req = validate_messages_request(body, sampling=sampling)
        return ChatCall(model=req.model, stream=req.stream, request=req, prefill=req.prefill is not None)

    def error(self, rejection: Rejection) -> web.Response:
        return web.Response(
            status=rejection.status, body=orjson.dumps(error_body(rejection)), content_type=_JSON
        )

    def malformed(self, call: ChatCall) -> web.Response:
        reply = plan(call.request, None, PromptCache())
        if call.stream:
            return broken_stream(_events(reply))
        body = orjson.dumps(_message_json(reply))
        return web.Response(status=200, body=body[: len(body) // 2], content_type=_JSON)

    def filtered(self, call: ChatCall) -> web.Response:
        reply = plan(call.request, None, PromptCache())
        refused = Reply(reply.id, reply.model, [], "refusal", None, reply.usage)
        if call.stream:
            return web.Response(body=b"".join(_events(refused)), content_type=SSE_CONTENT_TYPE)
        return web.Response(body=orjson.dumps(_message_json(refused)), content_type=_JSON)

    def stream_error(self, rejection: Rejection) -> bytes:
        # docs.claude.com streaming: "event: error" with the error object, e.g. overloaded_error
        return b"event: error\ndata: " + orjson.dumps(error_body(rejection)) + b"\n\n"

    async def respond(
        self, request: web.Request, call: ChatCall, fault: StreamFault | None = None
    ) -> web.StreamResponse:
        req: MessagesRequest = call.request
        reply = plan(req, credential(request), request.app[STATE].prompt_cache)
        if req.stream:
            return await send_events(request, _events(reply), fault)
        return web.Response(body=orjson.dumps(_message_json(reply)), content_type=_JSON)


ANTHROPIC = AnthropicFormat()


def credential(request: web.Request) -> str:
    """The key from ``x-api-key``, or ``Authorization: Bearer`` (which the official SDK now sends)."""
    key = request.headers.get("x-api-key", "").strip()
    if not key:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        key = token.strip() if scheme.lower() == "bearer" else ""
    if not key:
        raise Rejection(401, "x-api-key header is required")
    return key


def error_body(rejection: Rejection) -> dict[str, Any]:
    status = rejection.status
    kind, message = _ERRORS.get(status, _OTHER_SERVER_ERROR if status >= 500 else _OTHER_CLIENT_ERROR)
    if rejection.message is not None:
        message = rejection.message
    elif rejection.code is not None:  # an injected fault naming the error: a known case, or the type itself
        kind, message = _CODE_ERRORS.get(rejection.code, (rejection.code, message))
    message = message.replace("{model}", rejection.model or "unknown")
    request_id = "req_" + hashlib.blake2b(message.encode(), digest_size=12).hexdigest()
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id}


# -- the reply --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    id: str
    model: str
    content: list[dict[str, Any]]
    stop_reason: str
    stop_sequence: str | None
    usage: dict[str, Any]


def plan(req: MessagesRequest, credential: str | None, cache: PromptCache) -> Reply:
    """The deterministic answer to ``req``, its usage and what it did to the prompt cache."""
    asked = req.messages[:-1] if req.prefill is not None else req.messages
    digest = request_digest(req.model, req.system, asked)
    content: list[dict[str, Any]] = []
    output = 0
    if req.thinking_budget:
        thought = f"Thinking about prompt {digest[:4].hex()}: " + reply_text(req.model, digest, digest[::-1])
        thought, _ = truncate_to_tokens(thought, min(req.thinking_budget, _THINKING_CAP))
        signature = hashlib.blake2b(thought.encode(), digest_size=24).hexdigest()
        content.append({"type": "thinking", "thinking": thought, "signature": signature})
        output += count_text_tokens(thought)
    stop_sequence = None
    tool = _tool_to_call(req) if req.prefill is None else None
    if tool is not None:
        args = sample_json(tool.get("input_schema") or {}, digest)
        call_id = f"toolu_{digest.hex()[:24]}"
        content.append({"type": "tool_use", "id": call_id, "name": tool["name"], "input": args})
        output += count_text_tokens(tool["name"]) + count_json_tokens(args)
        stop_reason = "tool_use"
    else:
        text = reply_text(req.model, digest, digest)
        if req.prefill is not None:
            text = continue_from(text, req.prefill)
        cut = cut_at_stop(text, req.stop_sequences)
        stop_reason = "end_turn"
        if cut != text:
            stop_sequence = next(s for s in req.stop_sequences if s and text[len(cut) :].startswith(s))
            stop_reason = "stop_sequence"
        text, truncated = truncate_to_tokens(cut, max(req.max_tokens - output, 1))
        if truncated:
            stop_reason, stop_sequence = "max_tokens", None
        content.append({"type": "text", "text": text})
        output += count_text_tokens(text)
    usage = _usage(req, credential, cache, output)
    return Reply(f"msg_{digest.hex()[:24]}", req.model, content, stop_reason, stop_sequence, usage)


def _tool_to_call(req: MessagesRequest) -> dict[str, Any] | None:
    tools = [t for t in req.tools if t.get("type") in (None, "custom")]
    choice = req.tool_choice or {"type": "auto"}
    if not tools or choice["type"] == "none":
        return None
    if choice["type"] == "tool":
        return next(t for t in tools if t["name"] == choice["name"])
    last = req.messages[-1]
    answered = last["role"] == "user" and any(b.get("type") == "tool_result" for b in last["content"])
    if choice["type"] == "auto" and answered:
        return None
    return tools[0]


def _usage(req: MessagesRequest, credential: str | None, cache: PromptCache, output: int) -> dict[str, Any]:
    """Input tokens split into fresh, written to the cache and read from it (the three are billed apart)."""
    hasher = hashlib.blake2b(digest_size=16)
    total = REPLY_PRIMING
    breakpoints: list[tuple[int, bytes, str]] = []  # (prefix tokens, prefix digest, ttl)

    def add(block: dict[str, Any], tokens: int) -> None:
        nonlocal total
        total += tokens
        hasher.update(orjson.dumps({k: v for k, v in block.items() if k != "cache_control"}))
        marker = block.get("cache_control")
        if marker:
            breakpoints.append((total, hasher.copy().digest(), marker.get("ttl", "5m")))

    tools = [{k: v for k, v in t.items() if k != "cache_control"} for t in req.tools]
    for k, tool in enumerate(req.tools):  # tools come first in the cached prefix
        hasher.update(orjson.dumps(tools[k]))
        if tool.get("cache_control"):
            prefix = REPLY_PRIMING + count_json_tokens(tools[: k + 1])
            breakpoints.append((prefix, hasher.copy().digest(), tool["cache_control"].get("ttl", "5m")))
    if tools:
        total += count_json_tokens(tools)
    if req.system:
        total += MESSAGE_OVERHEAD
        for block in req.system:
            add(block, anthropic_block_tokens(block))
    for i, message in enumerate(req.messages):
        total += MESSAGE_OVERHEAD
        hasher.update(message["role"].encode())
        for k, block in enumerate(message["content"]):
            last = i == len(req.messages) - 1 and k == len(message["content"]) - 1
            if last and req.cache_control and not block.get("cache_control"):
                block = {**block, "cache_control": req.cache_control}  # automatic caching: the last block
            add(block, anthropic_block_tokens(block))
    read = next((t for t, d, _ in reversed(breakpoints) if cache.hit(credential, req.model, d)), 0)
    written, written_1h = 0, 0
    if breakpoints:
        last_tokens, _, ttl = breakpoints[-1]
        if last_tokens >= MIN_TOKENS and last_tokens > read:
            written = last_tokens - read
            written_1h = written if ttl == "1h" else 0
        for tokens, d, _ in breakpoints:
            cache.store(credential, req.model, d, tokens)
    return {
        "input_tokens": total - read - written,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": written - written_1h,
            "ephemeral_1h_input_tokens": written_1h,
        },
        "output_tokens": output,
        "service_tier": "standard",
    }


def _message_json(reply: Reply) -> dict[str, Any]:
    return {
        "id": reply.id,
        "type": "message",
        "role": "assistant",
        "model": reply.model,
        "content": reply.content,
        "stop_reason": reply.stop_reason,
        "stop_sequence": reply.stop_sequence,
        "usage": reply.usage,
    }


def _events(reply: Reply) -> list[bytes]:
    """Anthropic's stream, as its docs show it: message_start, a ping, then per block a start, its
    deltas (text in pieces, tool input as partial JSON) and a stop, message_delta, message_stop."""

    def event(name: str, data: dict[str, Any]) -> bytes:
        return b"event: " + name.encode() + b"\ndata: " + orjson.dumps({"type": name, **data}) + b"\n\n"

    start = {**_message_json(reply), "content": [], "stop_reason": None, "stop_sequence": None}
    start["usage"] = {**reply.usage, "output_tokens": 1}
    events = [event("message_start", {"message": start})]
    for index, block in enumerate(reply.content):
        if block["type"] == "text":
            opening = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": t} for t in _pieces(block["text"], _CHUNK_CHARS)]
        elif block["type"] == "thinking":
            opening = {"type": "thinking", "thinking": "", "signature": ""}
            deltas = [{"type": "thinking_delta", "thinking": block["thinking"]}]
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
        else:
            opening = {**block, "input": {}}
            arguments = orjson.dumps(block["input"]).decode()
            size = max(1, -(-len(arguments) // 3))
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in _pieces(arguments, size)]
        events.append(event("content_block_start", {"index": index, "content_block": opening}))
        if index == 0:
            events.append(event("ping", {}))
        events.extend(event("content_block_delta", {"index": index, "delta": d}) for d in deltas)
        events.append(event("content_block_stop", {"index": index}))
    delta = {"stop_reason": reply.stop_reason, "stop_sequence": reply.stop_sequence}
    usage = {k: reply.usage[k] for k in _DELTA_USAGE}  # cumulative, as the API sends them
    events.append(event("message_delta", {"delta": delta, "usage": usage}))
    events.append(event("message_stop", {}))
    return events


_DELTA_USAGE = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens")


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]
