"""Gemini generateContent wire format (``POST {base}/v1beta/models/{model}:generateContent``).

Pure translation, no I/O. The key goes in ``x-goog-api-key`` (never ``?key=``, which would put it in
URLs and logs). Parameters that only move or rename are the ``PARAMS`` table (paths into the body,
read by ``_map_params``); code is kept for the structural moves:

* system and developer messages become ``systemInstruction``; roles become user/model and
  consecutive turns of one role are merged;
* ``image_url`` parts become ``inlineData`` (a ``data:`` URI). Gemini does not fetch arbitrary
  URLs, so ``NEEDS_IMAGE_BYTES`` asks the worker to inline https images first; one that still
  arrives as a URL is sent as ``fileData`` with its ``fileUri``;
* tools and legacy ``functions`` become ``functionDeclarations`` (``parameters`` when the schema
  stays inside Gemini's OpenAPI subset, else ``parametersJsonSchema``); tool calls and results
  become ``functionCall`` / ``functionResponse`` parts, the result's name found from its call id;
* ``response_format`` becomes ``responseMimeType`` (+ ``responseJsonSchema``);
* ``reasoning_effort`` becomes ``thinkingConfig.thinkingBudget`` (``THINKING_BUDGET``).

``finishReason`` maps through ``FINISH_REASONS``; ``usageMetadata`` becomes usage with thoughts
counted as completion (and reasoning) tokens and cached tokens apart. A prompt blocked by
``promptFeedback.blockReason`` is ``content_filtered``. Errors map by the status string
(``ERROR_STATUSES``), refined by ``google.rpc.ErrorInfo`` reasons.

Streams (``build_stream_request``: ``:streamGenerateContent?alt=sse``) carry one
``GenerateContentResponse`` per event with the new parts of each candidate; ``stream_parser`` turns
each into an OpenAI chunk (a ``functionCall`` arrives whole: one tool-call delta). The stream is done
when every candidate asked for (``n``) has its ``finishReason``; the last ``usageMetadata`` seen
is the usage. An ``{"error": ...}`` event is classified like an error answer.
"""

from __future__ import annotations

import hashlib
import mimetypes
import re
from collections.abc import Callable
from dataclasses import dataclass
from time import time
from typing import Any
from urllib.parse import quote, urlsplit

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

NEEDS_IMAGE_BYTES = True


@dataclass(frozen=True, slots=True)
class Param:
    """Where an OpenAI parameter goes in the body (a key path), and how its value is converted."""

    to: tuple[str, ...]
    convert: Callable[[Any], Any] | None = None


def _as_list(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


# reasoning_effort → thinkingBudget; every value is valid on 2.5 Pro (128..32768), Flash (0..24576)
# and Flash-Lite (512..24576); Gemini 3 still accepts thinkingBudget
# ("none" leaves the model's default: 2.5 Pro cannot stop thinking)
THINKING_BUDGET: dict[str, int] = {
    "minimal": 512,
    "low": 1024,
    "medium": 8192,
    "high": 24576,
    "xhigh": 24576,
    "max": 24576,
}

_GEN = "generationConfig"
PARAMS: dict[str, Param] = {
    "temperature": Param((_GEN, "temperature")),
    "top_p": Param((_GEN, "topP")),
    "max_tokens": Param((_GEN, "maxOutputTokens")),
    "max_completion_tokens": Param((_GEN, "maxOutputTokens")),  # after max_tokens: the newer name wins
    "stop": Param((_GEN, "stopSequences"), _as_list),
    "n": Param((_GEN, "candidateCount")),
    "seed": Param((_GEN, "seed")),
    "presence_penalty": Param((_GEN, "presencePenalty")),
    "frequency_penalty": Param((_GEN, "frequencyPenalty")),
    "logprobs": Param((_GEN, "responseLogprobs")),
    "top_logprobs": Param((_GEN, "logprobs")),
    "reasoning_effort": Param((_GEN, "thinkingConfig"), lambda e: {"thinkingBudget": THINKING_BUDGET[e]}),
}
DROPPED = frozenset(
    {
        "logit_bias",
        "user",
        "parallel_tool_calls",
        "stream",
        "stream_options",
        *OPENAI_ONLY_FIELDS,
        *NEVER_SENT_FIELDS,
    }
)
STRUCTURAL = frozenset(
    {"model", "messages", "tools", "tool_choice", "functions", "function_call", "response_format"}
)

FINISH_REASONS: dict[str, str] = {
    "STOP": "stop",
    "FINISH_REASON_UNSPECIFIED": "stop",
    "OTHER": "stop",
    "MALFORMED_FUNCTION_CALL": "stop",
    "UNEXPECTED_TOOL_CALL": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "LANGUAGE": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}
_LEGACY_FINISH = {"tool_calls": "function_call"}

TOOL_MODES: dict[str, str] = {"auto": "AUTO", "none": "NONE", "required": "ANY"}

# google.rpc status string → error class; the HTTP status decides when it is missing or unknown
ERROR_STATUSES: dict[str, type[RouterError]] = {
    "INVALID_ARGUMENT": UpstreamInvalidRequest,
    "FAILED_PRECONDITION": UpstreamInvalidRequest,
    "OUT_OF_RANGE": UpstreamInvalidRequest,
    "UNAUTHENTICATED": AuthFailed,
    "PERMISSION_DENIED": AuthFailed,
    "NOT_FOUND": UpstreamNotFound,
    "RESOURCE_EXHAUSTED": RateLimited,
    "UNAVAILABLE": Overloaded,
    "DEADLINE_EXCEEDED": UpstreamTimeout,
    "INTERNAL": UpstreamError,
    "UNKNOWN": UpstreamError,
    "ABORTED": UpstreamError,
    "CANCELLED": UpstreamError,
}
# google.rpc.ErrorInfo.reason refines the status: a bad key arrives as 400 INVALID_ARGUMENT
ERROR_REASONS: dict[str, type[RouterError]] = {
    "API_KEY_INVALID": AuthFailed,
    "API_KEY_SERVICE_BLOCKED": AuthFailed,
    "API_KEY_HTTP_REFERRER_BLOCKED": AuthFailed,
    "CONSUMER_SUSPENDED": AuthFailed,
    "SERVICE_DISABLED": AuthFailed,
    "BILLING_DISABLED": ProviderOutOfCredits,
}
# Gemini reports a prompt over the context window only as INVALID_ARGUMENT with this message
CONTEXT_MESSAGES = ("the input token count",)

# the schema keywords of Gemini's OpenAPI subset (``parameters``); others need parametersJsonSchema
_OPENAPI_KEYS = frozenset(
    {
        "type",
        "format",
        "title",
        "description",
        "nullable",
        "enum",
        "properties",
        "required",
        "items",
        "minItems",
        "maxItems",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "pattern",
        "anyOf",
        "propertyOrdering",
        "default",
        "example",
        "minProperties",
        "maxProperties",
    }
)
# Gemini 3 refuses a function call in the history without the signature of the thought behind it;
# calls that came from elsewhere have none, and Google documents this value to skip the check
SKIP_SIGNATURE = "skip_thought_signature_validator"
_DATA_URI = re.compile(r"^data:(image/[a-zA-Z0-9.+-]+);base64,(.*)$", re.DOTALL)


def build_request(request: dict[str, Any], deployment: Deployment) -> HttpCall:
    return _call(_body(request, deployment), deployment, "generateContent")


def build_stream_request(request: dict[str, Any], deployment: Deployment) -> HttpCall:
    """The same request to ``streamGenerateContent``, as server-sent events (``alt=sse``)."""
    return _call(_body(request, deployment), deployment, "streamGenerateContent?alt=sse")


def _body(request: dict[str, Any], deployment: Deployment) -> dict[str, Any]:
    body: dict[str, Any] = {}
    system, contents = _contents(request["messages"], deployment.upstream_model)
    body["contents"] = contents
    if system:
        body["systemInstruction"] = {"parts": system}
    _tools(request, body)
    _map_params(request, body)
    _response_format(request, body)
    return body


def _call(body: dict[str, Any], deployment: Deployment, method: str) -> HttpCall:
    headers = {"Content-Type": "application/json", **deployment.headers}
    if deployment.api_key:
        headers["x-goog-api-key"] = deployment.api_key
    model = quote(deployment.upstream_model.removeprefix("models/"), safe="-._~")
    url = f"{deployment.base_url}/v1beta/models/{model}:{method}"
    return HttpCall("POST", url, headers, orjson.dumps(body))


def _map_params(request: dict[str, Any], body: dict[str, Any]) -> None:
    for name, param in PARAMS.items():
        value = request.get(name)
        if value is None or (name == "reasoning_effort" and value not in THINKING_BUDGET):
            continue
        *parents, leaf = param.to
        target = body
        for key in parents:
            target = target.setdefault(key, {})
        target[leaf] = param.convert(value) if param.convert else value


# -- contents ---------------------------------------------------------------------------------


def _contents(
    messages: list[dict[str, Any]], model: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system parts, contents): the conversation reshaped, turns of one role merged."""
    signed = model.removeprefix("models/").startswith("gemini-3")
    system: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool call id → function name, for the functionResponse
    for i, msg in enumerate(messages):
        role = msg["role"]
        content = msg.get("content")
        if role in ("system", "developer"):
            system.extend({"text": t} for t in _texts(content))
            continue
        if role == "user":
            parts = _user_parts(content, f"messages[{i}]")
        elif role == "assistant":
            parts = [{"text": t} for t in _texts(content) if t]
            calls = [(c["id"], c["function"]) for c in msg.get("tool_calls") or ()]
            if msg.get("function_call"):
                calls.append((f"fn-{i}", msg["function_call"]))
            for k, (call_id, fn) in enumerate(calls):
                names[call_id] = fn["name"]
                where = f"messages[{i}].tool_calls[{k}].function.arguments"
                part: dict[str, Any] = {"functionCall": {"name": fn["name"], "args": _args(fn, where)}}
                if signed and k == 0:  # the signature goes on the first call of a turn
                    part["thoughtSignature"] = SKIP_SIGNATURE
                parts.append(part)
            role = "model"
        elif role == "tool":
            name = names.get(msg["tool_call_id"])
            if name is None:
                raise InvalidRequest(
                    f"tool_call_id {msg['tool_call_id']!r} answers no earlier tool call",
                    param=f"messages[{i}].tool_call_id",
                )
            parts = [{"functionResponse": {"name": name, "response": _response(content)}}]
            role = "user"
        else:  # legacy "function" result
            parts = [{"functionResponse": {"name": msg.get("name") or "", "response": _response(content)}}]
            role = "user"
        if not parts:
            continue
        if out and out[-1]["role"] == role:
            out[-1]["parts"].extend(parts)
        else:
            out.append({"role": role, "parts": parts})
    return system, out


def _texts(content: Any) -> list[str]:
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    return [p["text"] for p in content if p.get("type") == "text"]


def _user_parts(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}]
    parts: list[dict[str, Any]] = []
    for k, part in enumerate(content or ()):
        if part["type"] == "text":
            parts.append({"text": part["text"]})
        elif part["type"] == "image_url":
            parts.append(_image_part(part["image_url"]["url"], f"{where}.content[{k}].image_url.url"))
    return parts


def _image_part(url: str, param: str) -> dict[str, Any]:
    match = _DATA_URI.match(url)
    if match:
        return {"inlineData": {"mimeType": match.group(1), "data": match.group(2)}}
    if url.startswith("https://"):
        mime = mimetypes.guess_type(urlsplit(url).path)[0] or "image/jpeg"
        return {"fileData": {"mimeType": mime, "fileUri": url}}
    raise InvalidRequest("an image must be an https URL or a data: URI", param=param)


def _args(fn: dict[str, Any], param: str) -> dict[str, Any]:
    try:
        args = orjson.loads(fn.get("arguments") or "{}")
    except orjson.JSONDecodeError:
        raise InvalidRequest("tool call arguments must be a JSON object", param=param) from None
    if not isinstance(args, dict):
        raise InvalidRequest("tool call arguments must be a JSON object", param=param)
    return args


def _response(content: Any) -> dict[str, Any]:
    """A tool result as Gemini's response object: a JSON object as is, anything else as ``output``."""
    text = "".join(_texts(content))
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = text
    return value if isinstance(value, dict) else {"output": value}


# -- tools and structured output --------------------------------------------------------------


def _tools(request: dict[str, Any], body: dict[str, Any]) -> None:
    functions = [t["function"] for t in request.get("tools") or ()] or list(request.get("functions") or ())
    if not functions:
        return
    body["tools"] = [{"functionDeclarations": [_declaration(f) for f in functions]}]
    choice = request.get("tool_choice", request.get("function_call"))
    if choice is None:
        return
    if isinstance(choice, str):
        config: dict[str, Any] = {"mode": TOOL_MODES[choice]}
    else:
        name = choice["function"]["name"] if "function" in choice else choice["name"]
        config = {"mode": "ANY", "allowedFunctionNames": [name]}
    body["toolConfig"] = {"functionCallingConfig": config}


def _declaration(fn: dict[str, Any]) -> dict[str, Any]:
    decl: dict[str, Any] = {"name": fn["name"]}
    if fn.get("description"):
        decl["description"] = fn["description"]
    schema = fn.get("parameters")
    # Gemini refuses an object schema without properties ("should be non-empty for OBJECT type")
    if schema and not (schema.get("type") == "object" and not schema.get("properties")):
        decl["parameters" if _openapi_subset(schema) else "parametersJsonSchema"] = schema
    return decl


def _openapi_subset(schema: Any) -> bool:
    """Whether a JSON schema uses only keywords Gemini's ``parameters`` (OpenAPI subset) knows."""
    if isinstance(schema, list):
        return all(_openapi_subset(s) for s in schema)
    if not isinstance(schema, dict):
        return True
    if not schema.keys() <= _OPENAPI_KEYS or isinstance(schema.get("type"), list):
        return False
    nested = [*(schema.get("properties") or {}).values(), schema.get("items"), *(schema.get("anyOf") or ())]
    return all(_openapi_subset(s) for s in nested if s is not None)


def _response_format(request: dict[str, Any], body: dict[str, Any]) -> None:
    fmt = request.get("response_format") or {}
    if fmt.get("type") not in ("json_object", "json_schema"):
        return
    config = body.setdefault(_GEN, {})
    config["responseMimeType"] = "application/json"
    schema = (fmt.get("json_schema") or {}).get("schema")
    if fmt["type"] == "json_schema" and schema:
        config["responseJsonSchema"] = schema


# -- answers ----------------------------------------------------------------------------------


def parse_response(status: int, headers: dict[str, str], body: bytes, request: dict[str, Any]) -> Completion:
    data = json_answer(status, headers, body, classify_error)
    if "error" in data and "candidates" not in data:
        raise classify_error(502, headers, body)
    blocked = (data.get("promptFeedback") or {}).get("blockReason")
    candidates = data.get("candidates")
    if blocked and not candidates:
        raise ContentFiltered(f"Gemini blocked the prompt (blockReason {blocked})", http_status=status)
    if not isinstance(candidates, list) or not candidates or not all(isinstance(c, dict) for c in candidates):
        raise BadResponse("the answer has no candidates", http_status=status)
    usage = _usage(data.get("usageMetadata"), status)
    response_id = str(data.get("responseId") or f"gemini-{int(time() * 1000)}")
    choices = [_choice(i, c, response_id, request) for i, c in enumerate(candidates)]
    if all(c["finish_reason"] == "content_filter" and _empty(c["message"]) for c in choices):
        reason = candidates[0].get("finishReason")
        raise ContentFiltered(f"Gemini withheld the answer (finishReason {reason})", http_status=status)
    response = {
        "id": response_id,
        "object": "chat.completion",
        "created": int(time()),
        "model": str(data.get("modelVersion") or request.get("model") or ""),
        "choices": choices,
        "usage": usage,
    }
    counts = usage_counts(usage)
    return Completion(
        response=response,
        prompt_tokens=counts.prompt,
        completion_tokens=counts.completion,
        cached_tokens=counts.cached,
        reasoning_tokens=counts.reasoning,
    )


_USAGE_KEYS = (
    "promptTokenCount",
    "candidatesTokenCount",
    "cachedContentTokenCount",
    "thoughtsTokenCount",
    "toolUsePromptTokenCount",
)


def _usage(metadata: Any, status: int | None = None) -> dict[str, Any]:
    """``usageMetadata`` as OpenAI's usage: thoughts are completion (and reasoning) tokens."""
    if not isinstance(metadata, dict):
        raise BadResponse("the answer has no usageMetadata", http_status=status)
    counts = {k: metadata.get(k) or 0 for k in _USAGE_KEYS}
    if not all(type(v) is int and v >= 0 for v in counts.values()):
        raise BadResponse("the answer's usage has no valid token counts", http_status=status)
    prompt = counts["promptTokenCount"] + counts["toolUsePromptTokenCount"]
    thoughts = counts["thoughtsTokenCount"]
    completion = counts["candidatesTokenCount"] + thoughts
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": counts["cachedContentTokenCount"]},
        "completion_tokens_details": {"reasoning_tokens": thoughts},
    }


def _empty(message: dict[str, Any]) -> bool:
    return message["content"] is None and not message.get("tool_calls") and not message.get("function_call")


def _choice(
    index: int, candidate: dict[str, Any], response_id: str, request: dict[str, Any]
) -> dict[str, Any]:
    content = candidate.get("content") or {}
    parts = content.get("parts") if isinstance(content, dict) else None
    parts = parts if isinstance(parts, list) else []
    texts, calls = _answer_parts(parts)
    calls = [_tool_call(call, response_id, index, k) for k, call in enumerate(calls)]
    finish = _finish(candidate.get("finishReason"), bool(calls))
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None, "refusal": None}
    if calls and "functions" in request:
        message["function_call"] = {k: calls[0]["function"][k] for k in ("name", "arguments")}
        finish = _LEGACY_FINISH.get(finish, finish)
    elif calls:
        message["tool_calls"] = calls
    return {"index": index, "message": message, "logprobs": None, "finish_reason": finish}


def _answer_parts(parts: list[Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """(texts, functionCalls) of a candidate's parts; thought summaries are not the answer."""
    texts, calls = [], []
    for part in parts:
        if not isinstance(part, dict) or part.get("thought"):
            continue
        if isinstance(part.get("text"), str):
            texts.append(part["text"])
        if isinstance(part.get("functionCall"), dict):
            calls.append(part["functionCall"])
    return texts, calls


def _tool_call(call: dict[str, Any], response_id: str, candidate: int, ordinal: int) -> dict[str, Any]:
    if not isinstance(call.get("name"), str):
        raise BadResponse("a functionCall in the answer has no name")
    return {
        "id": call.get("id") or _call_id(response_id, candidate, ordinal),
        "type": "function",
        "function": {"name": call["name"], "arguments": orjson.dumps(call.get("args") or {}).decode()},
    }


def _finish(reason: Any, called: bool) -> str:
    finish = FINISH_REASONS.get(str(reason), "stop")
    return "tool_calls" if called and finish == "stop" else finish


def _call_id(response_id: str, candidate: int, ordinal: int) -> str:
    """Gemini's API gives calls no id; the OpenAI format needs one to pair results with calls.

    Derived from the call's rank among the candidate's calls (not its part's position), so a
    streamed answer, whose text comes in more parts, gets the same ids as the whole one.
    """
    digest = hashlib.blake2b(f"{response_id}/{candidate}/{ordinal}".encode(), digest_size=12).hexdigest()
    return f"call_{digest}"


def classify_error(status: int, headers: dict[str, str], body: bytes) -> RouterError:
    """The taxonomy's error for a failed answer: by ErrorInfo reason, then status string, then HTTP status."""
    message, state, reasons, delay = f"HTTP {status}", None, [], None
    try:
        data = orjson.loads(body)
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(data, list) and data and isinstance(data[0], dict):  # some proxies wrap it in a list
            err = data[0].get("error")
        if isinstance(err, dict):
            message = str(err.get("message") or message)
            state = err.get("status")
            for detail in err.get("details") or ():
                if isinstance(detail, dict):
                    if detail.get("reason"):
                        reasons.append(str(detail["reason"]))
                    if detail.get("retryDelay"):
                        delay = _seconds(detail["retryDelay"])
    except orjson.JSONDecodeError:
        if body:
            message = f"HTTP {status}: {body[:2000].decode('utf-8', 'replace')}"
    klass = next((ERROR_REASONS[r] for r in reasons if r in ERROR_REASONS), None)
    if klass is None:
        klass = ERROR_STATUSES.get(str(state)) if state else None
    if klass is None:
        klass = status_error(status)
    if klass is UpstreamInvalidRequest and message.lower().startswith(CONTEXT_MESSAGES):
        klass = ContextLengthExceeded
    wait = retry_after(headers)
    return klass(message, http_status=status, retry_after=wait if wait is not None else delay)


def _seconds(duration: Any) -> float | None:
    """A google.protobuf.Duration in JSON (``"26s"``, ``"0.5s"``) as seconds."""
    try:
        return max(float(str(duration).removesuffix("s")), 0.0)
    except ValueError:
        return None
