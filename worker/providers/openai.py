"""OpenAI chat-completions wire format (OpenAI, AIsa, OpenRouter, xAI, Mistral, vLLM, Ollama).

Pure translation, no I/O: ``build_request`` makes the HTTP call for a deployment, ``parse_response``
turns the answer into a ``Completion`` or raises the classified error (``classify_error``).
Legacy ``functions`` requests are sent as ``tools`` (many OpenAI-compatible servers dropped
``functions``) and their answers are turned back into ``function_call``.

Request fields: everything of OpenAI's chat API is passed, but ``store`` (never sent: the record is
the stored completion) and, for vendors other than OpenAI itself, OpenAI's newer fields
(``OPENAI_ONLY_FIELDS``: ``service_tier``, ``prompt_cache_key``, ``verbosity``, ...), which they
refuse; what only answers carry (``annotations``, a null ``refusal``) is dropped from messages.

Streaming: ``build_stream_request`` asks for SSE with ``stream_options.include_usage``;
``stream_parser`` passes the upstream chunks through (their usage ends the answer) and is done at
``[DONE]``, or at a usage chunk after a finish reason. An error object mid-stream (``data:
{"error": ...}``, or an ``event: error``) is classified like an error answer (``STREAM_ERROR_STATUS``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from time import time
from typing import Any

import orjson

from config.catalog import Deployment
from llm_router.contract import ECHOED_MESSAGE_KEYS, NEVER_SENT_FIELDS, OPENAI_ONLY_FIELDS, RESERVED_KEYS
from llm_router.errors import (
    AuthFailed,
    BadResponse,
    ContentFiltered,
    ContextLengthExceeded,
    ProviderOutOfCredits,
    RouterError,
    UpstreamNotFound,
)
from worker.providers.base import Completion, HttpCall
from worker.providers.sse import SSEEvent
from worker.providers.stream import ChunkStream, MalformedEvent, event_json, stream_error, usage_counts
from worker.providers.wire import json_answer, retry_after, status_error

# what we never forward: our reserved keys, fields no provider sees, and streaming (set per call)
_DROP = frozenset(RESERVED_KEYS | NEVER_SENT_FIELDS | {"stream", "stream_options"})
# providers whose API takes OpenAI's newer fields (OPENAI_ONLY_FIELDS) and an assistant message's
# `audio` and `refusal`; OpenAI-compatible vendors refuse unknown fields, so they never get them
OPENAI_EXTENSION_PROVIDERS = frozenset({"openai"})

# the vendor's error.code (else error.type) → error class; the HTTP status decides when it is missing
# or unknown (``wire.STATUS_ERRORS``)
_BY_CODE: dict[str, type[RouterError]] = {
    "context_length_exceeded": ContextLengthExceeded,
    "string_above_max_length": ContextLengthExceeded,
    "content_filter": ContentFiltered,
    "content_policy_violation": ContentFiltered,
    "insufficient_quota": ProviderOutOfCredits,  # OpenAI sends this as a 429: our account is empty
    "invalid_api_key": AuthFailed,
    "model_not_found": UpstreamNotFound,
}

_FINISH_TO_LEGACY = {"tool_calls": "function_call"}


@dataclass(frozen=True, slots=True)
class ParamRules:
    """How a dialect of the format differs: parameters renamed, and parameters it refuses."""

    rename: dict[str, str] = field(default_factory=dict)
    drop: frozenset[str] = frozenset()


# OpenAI's own API refuses max_tokens and any sampling parameter on its reasoning models (o1, gpt-5)
DIALECTS: dict[str, ParamRules] = {
    "openai-reasoning": ParamRules(
        rename={"max_tokens": "max_completion_tokens"},
        drop=frozenset(
            {
                "temperature",
                "top_p",
                "presence_penalty",
                "frequency_penalty",
                "logprobs",
                "top_logprobs",
                "logit_bias",
            }
        ),
    ),
}


def apply_rules(body: dict[str, Any], rules: ParamRules) -> None:
    """Rename and drop parameters in place, as ``rules`` say (an explicit new name wins)."""
    for name in rules.drop & body.keys():
        del body[name]
    for old, new in rules.rename.items():
        if old in body:
            value = body.pop(old)
            body.setdefault(new, value)


def build_request(request: dict[str, Any], deployment: Deployment) -> HttpCall:
    return _call(_body(request, deployment), deployment)


def build_stream_request(request: dict[str, Any], deployment: Deployment) -> HttpCall:
    """The streamed call: the same body with ``stream`` and usage in the last chunk."""
    body = _body(request, deployment)
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    return _call(body, deployment)


def _body(request: dict[str, Any], deployment: Deployment) -> dict[str, Any]:
    native = deployment.provider in OPENAI_EXTENSION_PROVIDERS
    drop = _DROP if native else _DROP | OPENAI_ONLY_FIELDS
    body = {k: v for k, v in request.items() if k not in drop}
    if request.get("service_tier") == "flex" and "flex" in deployment.lane_prices:
        body["service_tier"] = "flex"  # a gateway whose catalog entry offers the flex lane takes it
    body["model"] = deployment.upstream_model
    body["messages"] = [_message(m, native) for m in request["messages"]]
    if "parallel_tool_calls" in body and not (body.get("tools") or body.get("functions")):
        del body["parallel_tool_calls"]  # meaningless without tools, and OpenAI refuses it then
    functions = body.pop("functions", None)
    if functions is not None:
        body["tools"] = [{"type": "function", "function": f} for f in functions]
        choice = body.pop("function_call", None)
        if isinstance(choice, dict):
            body["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
        elif choice is not None:
            body["tool_choice"] = choice
    rules = DIALECTS.get(deployment.dialect)
    if rules is not None:
        apply_rules(body, rules)
    return body


def _message(message: dict[str, Any], native: bool) -> dict[str, Any]:
    """A message as the upstream takes it: what only answers carry (echoed back by clients) is
    dropped, but for OpenAI's own API a stated refusal or an audio reference; ``name`` is not sent
    on tool messages (OpenAI's schema has none there)."""
    echoed = ECHOED_MESSAGE_KEYS & message.keys()
    if not echoed and not (message.get("role") == "tool" and "name" in message):
        return message
    out = {k: v for k, v in message.items() if k not in ECHOED_MESSAGE_KEYS}
    if native:
        for key in ("refusal", "audio"):
            if message.get(key) is not None:
                out[key] = message[key]
    if out.get("role") == "tool":
        out.pop("name", None)
    return out


def _call(body: dict[str, Any], deployment: Deployment) -> HttpCall:
    headers = {"Content-Type": "application/json"}
    if deployment.api_key:
        headers["Authorization"] = f"Bearer {deployment.api_key}"
    return HttpCall("POST", f"{deployment.base_url}/chat/completions", headers, orjson.dumps(body))


def parse_response(status: int, headers: dict[str, str], body: bytes, request: dict[str, Any]) -> Completion:
    data = json_answer(status, headers, body, classify_error)
    if "error" in data and "choices" not in data:  # some gateways send errors with a 200
        raise classify_error(502, headers, body)
    choices = data.get("choices")
    if (
        not isinstance(choices, list)
        or not choices
        or not all(isinstance(c, dict) and isinstance(c.get("message"), dict) for c in choices)
    ):
        raise BadResponse("the answer has no choices with a message", http_status=status)
    usage = data.get("usage")
    if not isinstance(usage, dict):
        raise BadResponse("the answer has no usage", http_status=status)
    try:
        counts = _read_usage(usage)
    except BadResponse as exc:
        raise BadResponse(exc.message, http_status=status) from None
    for choice in choices:
        if choice["message"].get("annotations") == []:
            # nothing to say: a stream of the same answer carries none, and the records agree
            del choice["message"]["annotations"]
    if "functions" in request:
        _to_legacy_functions(choices)
    data.setdefault("object", "chat.completion")
    data.setdefault("created", int(time()))
    usage.setdefault("completion_tokens", counts.completion)
    usage.setdefault("total_tokens", counts.prompt + counts.completion)
    return Completion(
        response=data,
        prompt_tokens=counts.prompt,
        completion_tokens=counts.completion,
        cached_tokens=counts.cached,
        reasoning_tokens=counts.reasoning,
    )


# OpenAI's usage has no cache writes; a compatible vendor's ``cache_write_tokens`` is not billed apart
_read_usage = partial(usage_counts, cache_writes=False)


def _to_legacy_functions(choices: list[dict[str, Any]]) -> None:
    for choice in choices:
        msg = choice["message"]
        calls = msg.pop("tool_calls", None)
        if calls:
            call = calls[0] if isinstance(calls, list) and calls else None
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise BadResponse("a tool call in the answer has no function name")
            msg["function_call"] = {"name": function["name"], "arguments": str(function.get("arguments", ""))}
        choice["finish_reason"] = _FINISH_TO_LEGACY.get(
            choice.get("finish_reason"), choice.get("finish_reason")
        )


def classify_error(status: int, headers: dict[str, str], body: bytes) -> RouterError:
    """The taxonomy's error for a failed answer, by status and vendor error code, never by message."""
    message, code = f"HTTP {status}", None
    try:
        data = orjson.loads(body)
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict):
            message = str(err.get("message") or message)
            code = err.get("code") or err.get("type")
        elif isinstance(err, str):
            message = err
    except orjson.JSONDecodeError:
        if body:
            message = f"HTTP {status}: {body[:2000].decode('utf-8', 'replace')}"
    klass = _BY_CODE.get(str(code)) if code else None
    if klass is None:
        klass = status_error(status)
    # the whole message: the worker removes keys from it before it cuts it to length
    return klass(message, http_status=status, retry_after=retry_after(headers))


# -- streams ----------------------------------------------------------------------------------

# error.code, else error.type, of an error object mid-stream → the HTTP status its answer would have
# had, for ``classify_error`` (a numeric code, as OpenRouter sends, is that status itself)
STREAM_ERROR_STATUS: dict[str, int] = {
    "invalid_request_error": 400,
    "context_length_exceeded": 400,
    "content_policy_violation": 400,
    "content_filter": 400,
    "rate_limit_exceeded": 429,
    "rate_limit_error": 429,
    "requests": 429,
    "tokens": 429,
    "insufficient_quota": 429,
    "server_error": 500,
    "overloaded_error": 503,
    "service_unavailable": 503,
    "timeout": 504,
}


def stream_parser(request: dict[str, Any], deployment: Deployment) -> ChunkStream:
    """The parser of one streamed answer to ``request`` (see ``worker.providers.stream``)."""
    return ChunkStream(request, _Chunks(), _read_usage)


class _Chunks:
    """OpenAI chunks are already the shape we publish: check them, spot errors and the end."""

    def __init__(self) -> None:
        self.done = False
        self._finished = False  # a choice has its finish_reason

    def translate(self, event: SSEEvent) -> list[dict[str, Any]]:
        data = event.data.strip()
        if self.done or not data:
            return []
        if data == "[DONE]":
            self.done = True
            return []
        chunk = event_json(event)
        if event.event == "error" or chunk.get("error"):
            raise _stream_error(chunk)
        choices = chunk.get("choices")
        if choices is None:
            choices = chunk["choices"] = []
        if not isinstance(choices, list) or not all(
            isinstance(c, dict) and isinstance(c.get("delta") or {}, dict) for c in choices
        ):
            raise MalformedEvent("a stream chunk has malformed choices")
        for choice in choices:
            if choice.get("finish_reason") == "error":
                raise stream_error(classify_error, 500, {"error": {"message": "the stream ended in error"}})
            if choice.get("finish_reason") is not None:
                self._finished = True
        if self._finished and isinstance(chunk.get("usage"), dict):
            self.done = True
        return [chunk]


def _stream_error(chunk: dict[str, Any]) -> RouterError:
    err = chunk.get("error") if isinstance(chunk.get("error"), dict) else chunk
    code = err.get("code") if isinstance(err, dict) else None
    if type(code) is int and 400 <= code <= 599:
        status = code
    else:
        kind = err.get("type") if isinstance(err, dict) else None
        status = STREAM_ERROR_STATUS.get(str(code), STREAM_ERROR_STATUS.get(str(kind), 500))
    payload = chunk if isinstance(chunk.get("error"), dict) else {"error": chunk}
    return stream_error(classify_error, status, payload)
