"""Building OpenAI chat-completion answers: the JSON object and the chunk stream.

What to say is decided once per request (``plan_reply``) and rendered either as one
``chat.completion`` or as ``chat.completion.chunk`` events, so both carry identical content.
When tools are offered (and ``tool_choice`` is not "none") every choice calls the named tool,
or the first one, unless the last message is a tool result and the choice is left to the model,
in which case it answers in text; legacy ``functions`` work the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

from llm_router.simulator.content import (
    choice_digest,
    continue_from,
    cut_at_stop,
    reply_text,
    request_digest,
    sample_json,
    truncate_to_tokens,
)
from llm_router.simulator.openai_request import ChatRequest
from llm_router.simulator.tokens import count_prompt_tokens, count_text_tokens

SYSTEM_FINGERPRINT = "fp_llmrouter_sim"
# the tier OpenAI reports having served a request in ("auto" and "default" are served as default)
_SERVED_TIER = {"flex": "flex", "priority": "priority", "scale": "scale"}
_CHUNK_CHARS = 24
_DONE = b"data: [DONE]\n\n"
_CALL_FINISH = {"tool": "tool_calls", "function": "function_call"}


@dataclass(frozen=True, slots=True)
class _Call:
    """A function to call: ``tool`` (tools API, with an id) or legacy ``function``."""

    style: str
    name: str
    arguments: str
    call_id: str


@dataclass(frozen=True, slots=True)
class _Target:
    """The function a request will call, with the API style it was offered in."""

    style: str
    name: str
    parameters: Any


@dataclass(frozen=True, slots=True)
class _Choice:
    content: str | None
    call: _Call | None
    finish_reason: str
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class Reply:
    """Everything a response needs, independent of whether it is streamed."""

    id: str
    created: int
    model: str
    choices: list[_Choice]
    usage: dict[str, Any]
    service_tier: str = "default"


def plan_reply(req: ChatRequest) -> Reply:
    """Decide the deterministic content, calls, finish reasons and usage for ``req``; a prefilled
    request gets the rest of the answer it would have had without its prefill."""
    asked = req.messages[:-1] if req.prefill is not None else req.messages
    digest = request_digest(req.model, asked, req.seed)
    target = _function_to_call(req) if req.prefill is None else None
    choices = [_plan_choice(req, digest, choice_digest(digest, i), target) for i in range(req.n)]
    offered = (req.tools or []) + (req.functions or [])
    prompt = count_prompt_tokens(req.messages, offered or None, req.model)
    # predicted tokens the reply did not use are billed as output, as OpenAI's predicted outputs are
    completion = sum(c.completion_tokens for c in choices) + req.prediction_tokens
    return Reply(
        id=f"chatcmpl-{digest.hex()[:24]}",
        created=int(time.time()),
        model=req.model,
        choices=choices,
        usage={
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            # OpenAI's usage always carries its details, zero when nothing was cached or reasoned
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": req.prediction_tokens,
            },
        },
        service_tier=_SERVED_TIER.get(req.service_tier or "", "default"),
    )


def completion_body(reply: Reply) -> bytes:
    """The ``chat.completion`` JSON for ``reply``."""
    return orjson.dumps(
        {
            "id": reply.id,
            "object": "chat.completion",
            "created": reply.created,
            "model": reply.model,
            "choices": [_choice_json(i, c) for i, c in enumerate(reply.choices)],
            "usage": reply.usage,
            "service_tier": reply.service_tier,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
    )


def stream_events(reply: Reply, include_usage: bool) -> list[bytes]:
    """The SSE events (``data: {chunk}\\n\\n`` ... ``data: [DONE]\\n\\n``) for ``reply``."""
    head = {
        "id": reply.id,
        "object": "chat.completion.chunk",
        "created": reply.created,
        "model": reply.model,
        "service_tier": reply.service_tier,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }
    # With include_usage OpenAI sends "usage": null on every chunk but the last.
    tail = {"usage": None} if include_usage else {}

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return b"data: " + orjson.dumps({**head, "choices": choices, **tail, **extra}) + b"\n\n"

    events: list[bytes] = []
    for index, choice in enumerate(reply.choices):
        for delta, finish in _deltas(choice):
            events.append(
                event([{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}])
            )
    if include_usage:
        events.append(event([], usage=reply.usage))
    events.append(_DONE)
    return events


def _function_to_call(req: ChatRequest) -> _Target | None:
    """The function this request should call, if any."""
    last_role = req.messages[-1].get("role")
    if req.tools:
        functions = [tool["function"] for tool in req.tools]
        choice, style, result_role = req.tool_choice, "tool", "tool"
    elif req.functions:
        functions = req.functions
        choice, style, result_role = req.function_call, "function", "function"
    else:
        return None
    if choice == "none" or (choice in (None, "auto") and last_role == result_role):
        return None
    if isinstance(choice, dict):
        name = choice["function"]["name"] if style == "tool" else choice["name"]
        function = next(f for f in functions if f["name"] == name)
    else:
        function = functions[0]
    return _Target(style, function["name"], function.get("parameters") or {})


def _plan_choice(req: ChatRequest, prompt_digest: bytes, digest: bytes, target: _Target | None) -> _Choice:
    if target is not None:
        arguments = orjson.dumps(sample_json(target.parameters, digest)).decode()
        finish = _CALL_FINISH[target.style]
        if req.max_tokens is not None:
            # OpenAI counts a call's arguments against max_tokens too: a call that does not fit is
            # cut (its arguments no longer valid JSON) and the choice ends with "length"
            room = max(req.max_tokens - count_text_tokens(target.name), 0)
            arguments, cut = truncate_to_tokens(arguments, room)
            finish = "length" if cut else finish
        call = _Call(target.style, target.name, arguments, f"call_{digest.hex()[:24]}")
        tokens = count_text_tokens(call.name) + count_text_tokens(arguments)
        return _Choice(None, call, finish, tokens)
    text = _text(req, prompt_digest, digest)
    if req.prefill is not None:
        text = continue_from(text, req.prefill)
    text = cut_at_stop(text, req.stop)
    cut = False
    if req.max_tokens is not None:
        text, cut = truncate_to_tokens(text, req.max_tokens)
    return _Choice(text, None, "length" if cut else "stop", count_text_tokens(text))


def _text(req: ChatRequest, prompt_digest: bytes, digest: bytes) -> str:
    sentence = reply_text(req.model, prompt_digest, digest)
    kind = (req.response_format or {}).get("type")
    if kind == "json_object":
        return orjson.dumps(
            {"model": req.model, "prompt": prompt_digest[:4].hex(), "reply": sentence}
        ).decode()
    if kind == "json_schema":
        schema = (req.response_format or {}).get("json_schema", {}).get("schema") or {}
        return orjson.dumps(sample_json(schema, digest)).decode()
    return sentence


def _choice_json(index: int, choice: _Choice) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": choice.content,
        "refusal": None,
        "annotations": [],
    }
    call = choice.call
    if call is not None and call.style == "tool":
        message["tool_calls"] = [
            {
                "id": call.call_id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
        ]
    elif call is not None:
        message["function_call"] = {"name": call.name, "arguments": call.arguments}
    return {"index": index, "message": message, "logprobs": None, "finish_reason": choice.finish_reason}


def _deltas(choice: _Choice) -> list[tuple[dict[str, Any], str | None]]:
    """The (delta, finish_reason) pairs of one choice, in stream order."""
    call = choice.call
    if call is None:
        text = choice.content or ""
        pieces = [text[i : i + _CHUNK_CHARS] for i in range(0, len(text), _CHUNK_CHARS)]
        deltas: list[tuple[dict[str, Any], str | None]] = [({"role": "assistant", "content": ""}, None)]
        deltas += [({"content": piece}, None) for piece in pieces]
    else:
        size = max(1, -(-len(call.arguments) // 3))
        pieces = [call.arguments[i : i + size] for i in range(0, len(call.arguments), size)]
        if call.style == "tool":
            opening = {
                "index": 0,
                "id": call.call_id,
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            deltas = [({"role": "assistant", "content": None, "tool_calls": [opening]}, None)]
            deltas += [({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}, None) for p in pieces]
        else:
            opening = {"name": call.name, "arguments": ""}
            deltas = [({"role": "assistant", "content": None, "function_call": opening}, None)]
            deltas += [({"function_call": {"arguments": p}}, None) for p in pieces]
    deltas.append(({}, choice.finish_reason))
    return deltas
