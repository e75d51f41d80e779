"""Anthropic Messages wire format (``POST {base}/v1/messages``, ``x-api-key``, ``anthropic-version``).

Pure translation, no I/O. Parameters that only change name, default or range are the ``PARAMS``
table (read by ``_map_params``); code is kept for the structural moves:

* system and developer messages are lifted into ``system``;
* consecutive turns of one role are merged (tool results ride in a user turn, first);
* ``image_url`` parts become image blocks: a ``data:`` URI a base64 source, an https URL a URL
  source (Anthropic fetches it, so this format needs no image bytes);
* tools and legacy ``functions`` become ``tools`` with ``input_schema``; assistant ``tool_calls`` and
  ``function_call`` become ``tool_use`` blocks and tool/function messages ``tool_result`` blocks;
* ``response_format`` json_schema is a forced tool whose input is the answer (no tools of the
  caller's own may be offered then: with them it is dropped);
* ``reasoning_effort`` turns extended thinking on with a budget from ``THINKING_BUDGET``, or on
  the models that reason by default (``DIALECTS``) sets ``output_config.effort``.

Answers come back as an OpenAI ``chat.completion``; ``stop_reason`` maps through ``FINISH_REASONS``;
usage keeps Anthropic's three input counts apart (``Completion.cache_write_tokens`` and
``cached_tokens``) and sums them into ``prompt_tokens``. Errors map through ``ERROR_TYPES``.

Streams (``build_stream_request``, ``stream_parser``) translate Anthropic's events into OpenAI
chunks: ``message_start`` the role, ``text_delta`` content, a ``tool_use`` block a tool call whose
``input_json_delta`` pieces are its arguments (the forced structured-output tool's are content),
``message_delta`` the finish reason and the usage; ``message_stop`` ends the stream. Thinking
blocks, ``ping`` and event types Anthropic may add are skipped; an ``error`` event is classified.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from time import time
from typing import Any

import orjson

from config.catalog import Deployment
from llm_router.contract import NEVER_SENT_FIELDS, OPENAI_ONLY_FIELDS
from llm_router.errors import (
    AuthFailed,
    BadResponse,
    ContentFiltered,
    ContextLengthExceeded,
    InvalidRequest,
    Overloaded,
    ProviderOutOfCredits,
    RateLimited,
    RouterError,
    UpstreamError,
    UpstreamInvalidRequest,
    UpstreamNotFound,
    UpstreamTimeout,
)
from worker.providers.base import Completion, HttpCall
from worker.providers.stream import usage_counts
from worker.providers.wire import json_answer, retry_after, status_error

NEEDS_IMAGE_BYTES = False  # URL image sources are fetched by Anthropic itself
DEFAULT_VERSION = "2023-06-01"


@dataclass(frozen=True, slots=True)
class Param:
    """Where an OpenAI parameter goes: a top-level key, and how its value is converted."""

    to: str
    convert: Callable[[Any], Any] | None = None


def _clamp(lo: float, hi: float) -> Callable[[Any], Any]:
    return lambda v: min(max(v, lo), hi)


def _as_list(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


# OpenAI parameter → Anthropic parameter. Anthropic's temperature range is 0..1 (OpenAI's 0..2).
PARAMS: dict[str, Param] = {
    "max_tokens": Param("max_tokens"),
    "max_completion_tokens": Param("max_tokens"),  # listed after max_tokens: the newer name wins
    "temperature": Param("temperature", _clamp(0.0, 1.0)),
    "top_p": Param("top_p"),
    "stop": Param("stop_sequences", _as_list),
}
# no Anthropic equivalent: dropped (sampling hints, or OpenAI-only features)
DROPPED = frozenset(
    {
        "frequency_penalty",
        "presence_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "seed",
        "stream",
        "stream_options",
        *OPENAI_ONLY_FIELDS - {"safety_identifier"},
        *NEVER_SENT_FIELDS,
    }
)
# handled by code below (structural), or ours
STRUCTURAL = frozenset(
    {
        "model",
        "messages",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "functions",
        "function_call",
        "response_format",
        "reasoning_effort",
        "user",
        "safety_identifier",  # metadata.user_id, as `user` (which wins)
        "n",
    }
)

# reasoning_effort → extended thinking budget (tokens); thinking needs budget_tokens < max_tokens
# ("none" and an unknown value: no thinking)
THINKING_BUDGET: dict[str, int] = {
    "minimal": 1024,
    "low": 1024,
    "medium": 4096,
    "high": 16384,
    "xhigh": 32768,
    "max": 32768,
}
# thinking is incompatible with these sampling parameters (Anthropic refuses them)
_NOT_WITH_THINKING = ("temperature", "top_p")


@dataclass(frozen=True, slots=True)
class Dialect:
    """How a group of models differs: parameters they refuse, and how they take reasoning_effort."""

    drop: frozenset[str] = frozenset()
    effort: dict[str, str] | None = None  # reasoning_effort → output_config.effort (else thinking)


# Claude from Opus 4.7 on (and every generation-5 model) refuses sampling parameters with a 400
# ("`temperature` is deprecated for this model") and thinks by default; reasoning_effort becomes
# output_config.effort. The catalog marks these models as reasoning models (provider
# `reasoning_params`), which gives their deployments this dialect.
DIALECTS: dict[str, Dialect] = {
    "anthropic-reasoning": Dialect(
        drop=frozenset({"temperature", "top_p"}),
        effort={
            "minimal": "low",
            "low": "low",
            "medium": "medium",
            "high": "high",
            "xhigh": "high",
            "max": "high",
        },
    ),
}

FINISH_REASONS: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_LEGACY_FINISH = {"tool_calls": "function_call"}

TOOL_CHOICE: dict[str, dict[str, str]] = {
    "auto": {"type": "auto"},
    "required": {"type": "any"},
    "none": {"type": "none"},
}

# error.type → error class; the HTTP status decides when the type is missing or unknown
# (``wire.STATUS_ERRORS``)
ERROR_TYPES: dict[str, type[RouterError]] = {
    "invalid_request_error": UpstreamInvalidRequest,
    "authentication_error": AuthFailed,
    "permission_error": AuthFailed,
    "billing_error": ProviderOutOfCredits,
    "not_found_error": UpstreamNotFound,
    "request_too_large": UpstreamInvalidRequest,
    "rate_limit_error": RateLimited,
    "api_error": UpstreamError,
    "timeout_error": UpstreamTimeout,
    "overloaded_error": Overloaded,
}
# Anthropic reports a prompt over the context window only as an invalid_request_error whose
# message starts with one of these (it has no error code for it): the one place a message is read
CONTEXT_MESSAGES = ("prompt is too long", "input length and `max_tokens` exceed context limit")

_TOOL_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
_DATA_URI = re.compile(r"^data:(image/[a-zA-Z0-9.+-]+);base64,(.*)$", re.DOTALL)
_EMPTY_SCHEMA = {"type": "object", "properties": {}}


def build_request(request: dict[str, Any], deployment: Deployment) -> HttpCall:
    return _call(_body(request, deployment), deployment)


def build_stream_request(request: dict[str, Any], deployment: Deployment) -> HttpCall:
    """The same call with ``stream: true`` (the answer comes as server-sent events)."""
    return _call({**_body(request, deployment), "stream": True}, deployment)


def _body(request: dict[str, Any], deployment: Deployment) -> dict[str, Any]:
    body: dict[str, Any] = {"model": deployment.upstream_model}
    _map_params(request, body)
    if request.get("n", 1) not in (None, 1):
        raise InvalidRequest("Anthropic returns one choice: n must be 1", param="n")
    user = request.get("user") or request.get("safety_identifier")
    if isinstance(user, str):
        body["metadata"] = {"user_id": user}
    body.setdefault("max_tokens", deployment.max_output)
    system, messages = _messages(request["messages"])
    if system:
        body["system"] = system[0]["text"] if len(system) == 1 else system
    body["messages"] = messages
    _tools(request, body)
    dialect = DIALECTS.get(deployment.dialect)
    if dialect is None:
        _thinking(request, body)
    else:
        for name in dialect.drop:
            body.pop(name, None)
        effort = dialect.effort.get(request.get("reasoning_effort") or "") if dialect.effort else None
        if effort:
            body["output_config"] = {"effort": effort}
    return body


def _call(body: dict[str, Any], deployment: Deployment) -> HttpCall:
    headers = {"Content-Type": "application/json", "anthropic-version": DEFAULT_VERSION}
    headers.update(deployment.headers)
    if deployment.api_key:
        headers["x-api-key"] = deployment.api_key
    return HttpCall("POST", f"{deployment.base_url}/v1/messages", headers, orjson.dumps(body))


def _map_params(request: dict[str, Any], body: dict[str, Any]) -> None:
    for name, param in PARAMS.items():
        value = request.get(name)
        if value is not None:
            body[param.to] = param.convert(value) if param.convert else value


# -- messages ---------------------------------------------------------------------------------


def _messages(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system text blocks, Anthropic messages): the conversation reshaped, same-role turns merged."""
    system: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    legacy_ids: dict[str, list[str]] = {}  # function name → ids of its unanswered legacy calls
    for i, msg in enumerate(messages):
        role = msg["role"]
        if role in ("system", "developer"):
            system.extend({"type": "text", "text": t} for t in _texts(msg.get("content")))
            continue
        if role == "user":
            blocks = _user_blocks(msg.get("content"), f"messages[{i}]")
        elif role == "assistant":
            blocks = _assistant_blocks(msg, i, legacy_ids)
            role = "assistant"
        elif role == "tool":
            blocks = [_tool_result(_tool_id(msg["tool_call_id"]), msg.get("content"))]
            role = "user"
        else:  # legacy "function" result: answers the latest unanswered call of that name
            pending = legacy_ids.get(msg.get("name") or "") or []
            call_id = pending.pop(0) if pending else _legacy_id(i, msg.get("name") or "")
            blocks = [_tool_result(call_id, msg.get("content"))]
            role = "user"
        if not blocks:
            continue
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    for msg in out:  # a lone text block is sent as a plain string, as the API's examples do
        blocks = msg["content"]
        if len(blocks) == 1 and blocks[0]["type"] == "text":
            msg["content"] = blocks[0]["text"]
    return system, out


def _texts(content: Any) -> list[str]:
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    return [p["text"] for p in content if p.get("type") == "text"]


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    blocks = []
    for k, part in enumerate(content or ()):
        if part["type"] == "text":
            blocks.append({"type": "text", "text": part["text"]})
        elif part["type"] == "image_url":
            blocks.append(_image_block(part["image_url"]["url"], f"{where}.content[{k}].image_url.url"))
    return blocks


def _image_block(url: str, param: str) -> dict[str, Any]:
    match = _DATA_URI.match(url)
    if match:
        source = {"type": "base64", "media_type": match.group(1), "data": match.group(2)}
    elif url.startswith(("https://", "http://")):
        source = {"type": "url", "url": url}
    else:
        raise InvalidRequest("an image must be an https URL or a data: URI", param=param)
    return {"type": "image", "source": source}


def _assistant_blocks(
    msg: dict[str, Any], index: int, legacy_ids: dict[str, list[str]]
) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = [{"type": "text", "text": t} for t in _texts(msg.get("content")) if t]
    for k, call in enumerate(msg.get("tool_calls") or ()):
        fn = call["function"]
        where = f"messages[{index}].tool_calls[{k}].function.arguments"
        blocks.append(_tool_use(_tool_id(call["id"]), fn["name"], fn.get("arguments"), where))
    legacy = msg.get("function_call")
    if legacy:
        call_id = _legacy_id(index, legacy["name"])
        legacy_ids.setdefault(legacy["name"], []).append(call_id)
        where = f"messages[{index}].function_call.arguments"
        blocks.append(_tool_use(call_id, legacy["name"], legacy.get("arguments"), where))
    return blocks


def _tool_use(call_id: str, name: str, arguments: Any, param: str) -> dict[str, Any]:
    try:
        args = orjson.loads(arguments) if arguments else {}
    except orjson.JSONDecodeError:
        raise InvalidRequest("tool call arguments must be a JSON object", param=param) from None
    if not isinstance(args, dict):
        raise InvalidRequest("tool call arguments must be a JSON object", param=param)
    return {"type": "tool_use", "id": call_id, "name": name, "input": args}


def _tool_result(call_id: str, content: Any) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
    if isinstance(content, str):
        block["content"] = content
    elif content:
        block["content"] = [{"type": "text", "text": t} for t in _texts(content)]
    return block


def _tool_id(call_id: str) -> str:
    """Anthropic ids match ``^[a-zA-Z0-9_-]+$``; others (from another vendor) get a stable stand-in."""
    if _TOOL_ID.match(call_id):
        return call_id
    return "toolu_" + hashlib.blake2b(call_id.encode(), digest_size=12).hexdigest()


def _legacy_id(index: int, name: str) -> str:
    return f"toolu_fn{index}_{hashlib.blake2b(name.encode(), digest_size=4).hexdigest()}"


# -- tools, structured output, thinking -------------------------------------------------------

_JSON_TOOL_DESCRIPTION = "Respond with the answer as this tool's input."


def _tools(request: dict[str, Any], body: dict[str, Any]) -> None:
    functions = [t["function"] for t in request.get("tools") or ()] or list(request.get("functions") or ())
    choice = request.get("tool_choice", request.get("function_call"))
    if functions:
        body["tools"] = [_tool_def(f) for f in functions]
        tool_choice = _tool_choice(choice)
        if request.get("parallel_tool_calls") is False:
            tool_choice = {**(tool_choice or {"type": "auto"}), "disable_parallel_tool_use": True}
        if tool_choice is not None:
            body["tool_choice"] = tool_choice
        return
    fmt = request.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema") or {}
        schema = spec.get("schema") or _EMPTY_SCHEMA
        if json_answer_wrapped(request):  # a tool's input is an object: the answer goes in one
            schema = {"type": "object", "properties": {WRAPPED: schema}, "required": [WRAPPED]}
        tool = {
            "name": spec.get("name") or "json_answer",
            "description": spec.get("description") or _JSON_TOOL_DESCRIPTION,
            "input_schema": schema,
        }
        body["tools"] = [tool]
        body["tool_choice"] = {"type": "tool", "name": tool["name"]}


def _tool_def(fn: dict[str, Any]) -> dict[str, Any]:
    tool = {"name": fn["name"], "input_schema": fn.get("parameters") or _EMPTY_SCHEMA}
    if fn.get("description"):
        tool["description"] = fn["description"]
    return tool


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if isinstance(choice, str):
        return dict(TOOL_CHOICE[choice])
    name = choice["function"]["name"] if "function" in choice else choice["name"]
    return {"type": "tool", "name": name}


def _thinking(request: dict[str, Any], body: dict[str, Any]) -> None:
    budget = THINKING_BUDGET.get(request.get("reasoning_effort") or "")
    forced = body.get("tool_choice", {}).get("type") in ("any", "tool")
    # thinking needs room under max_tokens, and Anthropic refuses it with a forced tool choice
    if budget is None or budget >= body["max_tokens"] or forced:
        return
    body["thinking"] = {"type": "enabled", "budget_tokens": budget}
    for name in _NOT_WITH_THINKING:
        body.pop(name, None)


# -- answers ----------------------------------------------------------------------------------


def parse_response(status: int, headers: dict[str, str], body: bytes, request: dict[str, Any]) -> Completion:
    data = json_answer(status, headers, body, classify_error)
    if data.get("type") == "error":
        raise classify_error(502, headers, body)
    content, usage = data.get("content"), data.get("usage")
    if not isinstance(content, list) or not all(isinstance(b, dict) for b in content):
        raise BadResponse("the answer has no content blocks", http_status=status)
    usage_json = _usage(usage, status)
    message, finish = _message(content, data.get("stop_reason"), request)
    if finish == "content_filter" and message["content"] is None and "tool_calls" not in message:
        raise ContentFiltered("Anthropic refused to answer (stop_reason refusal)", http_status=status)
    response = {
        "id": str(data.get("id") or f"msg-{int(time() * 1000)}"),
        "object": "chat.completion",
        "created": int(time()),
        "model": str(data.get("model") or request.get("model") or ""),
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": usage_json,
    }
    counts = usage_counts(usage_json)
    return Completion(
        response=response,
        prompt_tokens=counts.prompt,
        completion_tokens=counts.completion,
        cached_tokens=counts.cached,
        cache_write_tokens=counts.cache_write,
    )


_USAGE_KEYS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens")


def _usage(usage: Any, status: int | None = None) -> dict[str, Any]:
    """Anthropic's usage as OpenAI's: the three input counts summed into ``prompt_tokens``."""
    if not isinstance(usage, dict):
        raise BadResponse("the answer has no usage", http_status=status)
    counts = [usage.get(k) or 0 for k in _USAGE_KEYS]
    if usage.get("input_tokens") is None or not all(_is_count(c) for c in counts):
        raise BadResponse("the answer's usage has no valid token counts", http_status=status)
    fresh, written, read, output = counts
    prompt = fresh + written + read
    return {
        "prompt_tokens": prompt,
        "completion_tokens": output,
        "total_tokens": prompt + output,
        "prompt_tokens_details": {"cached_tokens": read, "cache_write_tokens": written},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def _is_count(value: object) -> bool:
    return type(value) is int and value >= 0


def _message(
    content: list[dict[str, Any]], stop_reason: Any, request: dict[str, Any]
) -> tuple[dict[str, Any], str]:
    texts = [b["text"] for b in content if b.get("type") == "text" and isinstance(b.get("text"), str)]
    calls = []
    for block in content:
        if block.get("type") != "tool_use":
            continue
        if not isinstance(block.get("name"), str) or not isinstance(block.get("input", {}), dict):
            raise BadResponse("a tool_use block in the answer has no name or input")
        arguments = orjson.dumps(block.get("input") or {}).decode()
        calls.append(
            {
                "id": str(block.get("id") or ""),
                "type": "function",
                "function": {"name": block["name"], "arguments": arguments},
            }
        )
    finish = FINISH_REASONS.get(str(stop_reason), "stop")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None, "refusal": None}
    json_tool = _json_tool_name(request)
    if json_tool and calls and calls[0]["function"]["name"] == json_tool:
        # the forced structured-output tool: its input is the answer
        message["content"] = calls[0]["function"]["arguments"]
        if json_answer_wrapped(request):
            answer = next(b for b in content if b.get("type") == "tool_use").get("input") or {}
            message["content"] = orjson.dumps(answer.get(WRAPPED)).decode()
        return message, "stop" if finish == "tool_calls" else finish
    if calls and "functions" in request:
        message["function_call"] = {k: calls[0]["function"][k] for k in ("name", "arguments")}
        return message, _LEGACY_FINISH.get(finish, finish)
    if calls:
        message["tool_calls"] = calls
    return message, finish


# the key a structured answer whose schema is not an object goes under in the answer tool's input
WRAPPED = "value"


def json_answer_wrapped(request: dict[str, Any]) -> bool:
    """A structured answer whose schema's root is not an object (a list, a number: Google's clients
    ask for ``list[Recipe]``): Anthropic takes only objects as a tool's input, so the answer tool
    takes ``{"value": answer}`` and the adapter hands on the answer alone."""
    if _json_tool_name(request) is None:
        return False
    schema = ((request.get("response_format") or {}).get("json_schema") or {}).get("schema")
    return isinstance(schema, dict) and bool(schema) and schema.get("type") != "object"


def _json_tool_name(request: dict[str, Any]) -> str | None:
    fmt = request.get("response_format") or {}
    if fmt.get("type") != "json_schema" or request.get("tools") or request.get("functions"):
        return None
    return (fmt.get("json_schema") or {}).get("name") or "json_answer"


def classify_error(status: int, headers: dict[str, str], body: bytes) -> RouterError:
    """The taxonomy's error for a failed answer: by ``error.type``, else by HTTP status."""
    message, kind = f"HTTP {status}", None
    try:
        data = orjson.loads(body)
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict):
            message = str(err.get("message") or message)
            kind = err.get("type")
    except orjson.JSONDecodeError:
        if body:
            message = f"HTTP {status}: {body[:2000].decode('utf-8', 'replace')}"
    klass = ERROR_TYPES.get(str(kind)) if kind else None
    if klass is None:
        klass = status_error(status)
    if klass is UpstreamInvalidRequest and message.lower().startswith(CONTEXT_MESSAGES):
        klass = ContextLengthExceeded
    return klass(message, http_status=status, retry_after=retry_after(headers))
