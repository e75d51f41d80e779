"""The Gemini generateContent wire format: ``POST {prefix}/models/{model}:generateContent``, and
``:streamGenerateContent`` (server-sent events with ``alt=sse``, else one JSON array).

``GEMINI`` is the ``WireFormat`` the pipeline drives; the model comes from the path. The key goes
in ``x-goog-api-key`` or ``?key=``; without one the API answers 403 PERMISSION_DENIED. Errors take
Google's shape ``{"error": {"code", "message", "status", "details"}}`` with the status string
picked by HTTP status (``_ERRORS``); an injected 429 carries a ``RetryInfo`` detail.

Answers are deterministic like the other formats': ``candidateCount`` candidates, each calling the
first offered function (or the one ``allowedFunctionNames`` names) unless the mode is NONE or the
last turn answers a call and the mode is AUTO; else a sentence, or JSON when a JSON response is
asked for. Thinking happens only when ``thinkingConfig`` asks for it (a budget other than 0, or a
level): ``thoughtsTokenCount`` reports it, and ``includeThoughts`` adds the thought as a part.
Implicit caching: a prompt whose prefix (all but the last turn) reached ``MIN_TOKENS`` and was
seen before for this key and model reports it as ``cachedContentTokenCount``.

A streamed answer is the same answer in pieces (``stream_events``): each event a
``GenerateContentResponse`` with the next part of every candidate still going (text in pieces, a
function call whole), a candidate's last one with its ``finishReason``, and the full usage on the
last event (the earlier ones count only the prompt, as Gemini's do).
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from aiohttp import web

from llm_router.simulator.content import (
    choice_digest,
    continue_from,
    cut_at_stop,
    reply_text,
    request_digest,
    sample_json,
    truncate_to_tokens,
)
from llm_router.simulator.gemini_request import GenerateRequest, validate_generate_request
from llm_router.simulator.prompt_cache import PromptCache
from llm_router.simulator.state import STATE
from llm_router.simulator.stream import SSE_CONTENT_TYPE, broken_stream, send_events
from llm_router.simulator.tokens import (
    MESSAGE_OVERHEAD,
    REPLY_PRIMING,
    count_json_tokens,
    count_text_tokens,
    gemini_part_tokens,
)
from llm_router.simulator.wire import ChatCall, Rejection, StreamFault

_JSON = "application/json"

# status -> (google.rpc status string, canned message for injected faults)
_ERRORS: dict[int, tuple[str, str]] = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: ("UNAUTHENTICATED", "Request had invalid authentication credentials."),
    403: ("PERMISSION_DENIED", "The caller does not have permission"),
    404: (
        "NOT_FOUND",
        "models/{model} is not found for API version v1beta, or is not supported for generateContent.",
    ),
    409: ("ABORTED", "The operation was aborted."),
    429: ("RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
    499: ("CANCELLED", "The operation was cancelled."),
    500: (
        "INTERNAL",
        "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
    ),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
    504: ("DEADLINE_EXCEEDED", "The request timed out. Please try again."),
}
_OTHER_CLIENT_ERROR = ("FAILED_PRECONDITION", "The request failed.")
# error codes a fault can inject (``FaultRule.error_code``) with a message of their own
_CODE_MESSAGES = {
    "context_length_exceeded": (
        "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."
    ),
}
_OTHER_SERVER_ERROR = ("INTERNAL", "An internal error has occurred.")
_MISSING_KEY = (
    "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or "
    "other form of API consumer identity to call this API."
)
_THINKING_CAP = 64
_CHUNK_CHARS = 24  # streamed text comes in pieces this long
_STREAM_METHOD = ":streamGenerateContent"
_SAFETY_RATINGS = [
    {"category": c, "probability": "NEGLIGIBLE"}
    for c in (
        "HARM_CATEGORY_HATE_SPEECH",
        "HARM_CATEGORY_DANGEROUS_CONTENT",
        "HARM_CATEGORY_HARASSMENT",
        "HARM_CATEGORY_SEXUALLY_EXPLICIT",
    )
]


class GeminiFormat:
    """``WireFormat`` for Gemini's generateContent."""

    def authenticate(self, request: web.Request) -> str:
        key = request.headers.get("x-goog-api-key", "").strip() or request.query.get("key", "").strip()
        if not key:
            raise Rejection(403, _MISSING_KEY)
        return key

    def peek_model(self, request: web.Request, raw: bytes) -> str | None:
        return request.match_info.get("model", "").removeprefix("models/") or None

    def parse(self, request: web.Request, raw: bytes) -> ChatCall:
        model = request.match_info["model"].removeprefix("models/")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise Rejection(400, f"Invalid JSON payload received. {exc}") from None
        req = validate_generate_request(model, body)
        if req.body.get("cachedContent"):
            raise Rejection(
                403, f"CachedContent not found (or permission denied): {req.body['cachedContent']}"
            )
        streamed = request.path.endswith(_STREAM_METHOD)
        return ChatCall(model=model, stream=streamed, request=req, prefill=req.prefill is not None)

    def error(self, rejection: Rejection) -> web.Response:
        return web.Response(
            status=rejection.status, body=orjson.dumps(error_body(rejection)), content_type=_JSON
        )

    def malformed(self, call: ChatCall) -> web.Response:
        whole = answer(call.request, None, PromptCache())
        if call.stream:
            return broken_stream(stream_events(whole))
        body = orjson.dumps(whole)
        return web.Response(status=200, body=body[: len(body) // 2], content_type=_JSON)

    def filtered(self, call: ChatCall) -> web.Response:
        usage = answer(call.request, None, PromptCache())["usageMetadata"]
        blocked = {
            "promptFeedback": {
                "blockReason": "SAFETY",
                "safetyRatings": [
                    {**_SAFETY_RATINGS[0], "probability": "HIGH", "blocked": True},
                    *_SAFETY_RATINGS[1:],
                ],
            },
            "usageMetadata": {
                "promptTokenCount": usage["promptTokenCount"],
                "totalTokenCount": usage["promptTokenCount"],
            },
            "modelVersion": call.model,
        }
        if call.stream:
            return web.Response(body=_sse(blocked), content_type=SSE_CONTENT_TYPE)
        return web.Response(body=orjson.dumps(blocked), content_type=_JSON)

    def stream_error(self, rejection: Rejection) -> bytes:
        # Google's error object as an event's data (google-genai raises APIError on it)
        return _sse(error_body(rejection))

    async def respond(
        self, request: web.Request, call: ChatCall, fault: StreamFault | None = None
    ) -> web.StreamResponse:
        credential = self.authenticate(request)
        body = answer(call.request, credential, request.app[STATE].prompt_cache)
        if not call.stream:
            return web.Response(body=orjson.dumps(body), content_type=_JSON)
        events = stream_events(body)
        if request.query.get("alt") == "sse":
            return await send_events(request, events, fault)
        # without alt=sse the API streams one JSON array of the same responses
        pieces = [e.removeprefix(b"data: ").rstrip(b"\n") for e in events]
        return web.Response(body=b"[" + b",\n".join(pieces) + b"]", content_type=_JSON)


GEMINI = GeminiFormat()


def error_body(rejection: Rejection) -> dict[str, Any]:
    status = rejection.status
    state, message = _ERRORS.get(status, _OTHER_SERVER_ERROR if status >= 500 else _OTHER_CLIENT_ERROR)
    reason = None
    if rejection.message is not None:
        message = rejection.message
    elif (
        rejection.code is not None
    ):  # an injected fault naming the error: a known case, or an ErrorInfo reason
        if rejection.code in _CODE_MESSAGES:
            message = _CODE_MESSAGES[rejection.code]
        else:
            reason = rejection.code
    message = message.replace("{model}", rejection.model or "unknown")
    error: dict[str, Any] = {"code": status, "message": message, "status": state}
    if reason is not None:
        info = {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": reason,
            "domain": "googleapis.com",
        }
        error["details"] = [info]
        return {"error": error}
    if status == 400 and message.startswith("Invalid JSON payload"):
        error["details"] = [
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"description": message}],
            }
        ]
    elif status == 429:
        error["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}]
    return {"error": error}


# -- the answer -------------------------------------------------------------------------------


def answer(req: GenerateRequest, credential: str | None, cache: PromptCache) -> dict[str, Any]:
    """The GenerateContentResponse for ``req`` (deterministic, bar what the prompt cache remembers)."""
    body = req.body
    config = req.config
    prefill = req.prefill
    asked = req.contents[:-1] if prefill is not None else req.contents
    digest = request_digest(req.model, body.get("systemInstruction"), asked)
    thinking = config.get("thinkingConfig") or {}
    thinks = bool(thinking.get("thinkingLevel")) or thinking.get("thinkingBudget", 0) != 0
    candidates, output, thoughts = [], 0, 0
    for i in range(config.get("candidateCount") or 1):
        parts: list[dict[str, Any]] = []
        d = choice_digest(digest, i)
        if thinks:
            budget = thinking.get("thinkingBudget", -1)
            cap = _THINKING_CAP if budget < 0 else min(budget, _THINKING_CAP)
            thought, _ = truncate_to_tokens(
                f"Thinking about prompt {digest[:4].hex()}: " + reply_text(req.model, d, d[::-1]), cap
            )
            thoughts += count_text_tokens(thought)
            if thinking.get("includeThoughts"):
                parts.append({"text": thought, "thought": True})
        function = _function_to_call(body) if prefill is None else None
        finish = "STOP"
        if function is not None:
            args = sample_json(
                _lower_types(function.get("parametersJsonSchema") or function.get("parameters") or {}), d
            )
            parts.append({"functionCall": {"name": function["name"], "args": args}})
            output += count_text_tokens(function["name"]) + count_json_tokens(args)
        else:
            text = _text(req, digest, d)
            if prefill is not None:
                text = continue_from(text, prefill)
            text = cut_at_stop(text, list(config.get("stopSequences") or ()))
            if config.get("maxOutputTokens") is not None:
                text, cut = truncate_to_tokens(text, config["maxOutputTokens"])
                finish = "MAX_TOKENS" if cut else finish
            parts.append({"text": text})
            output += count_text_tokens(text)
        candidates.append(
            {
                "content": {"parts": parts, "role": "model"},
                "finishReason": finish,
                "index": i,
                "safetyRatings": _SAFETY_RATINGS,
            }
        )
    prompt, cached = _prompt_tokens(req, credential, cache)
    usage: dict[str, Any] = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": output,
        "totalTokenCount": prompt + output + thoughts,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
    }
    if cached:
        usage["cachedContentTokenCount"] = cached
        usage["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": cached}]
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    return {
        "candidates": candidates,
        "usageMetadata": usage,
        "modelVersion": req.model,
        "responseId": hashlib.blake2b(digest, digest_size=12).hexdigest(),
    }


def stream_events(whole: dict[str, Any]) -> list[bytes]:
    """``whole`` (an ``answer``) as streamGenerateContent's events; see the module docstring."""
    pieces = [_candidate_pieces(c) for c in whole["candidates"]]
    usage = whole["usageMetadata"]
    prompt_only = {
        "promptTokenCount": usage["promptTokenCount"],
        "totalTokenCount": usage["promptTokenCount"],
        "promptTokensDetails": usage["promptTokensDetails"],
    }
    several = len(pieces) > 1
    steps = max(len(p) for p in pieces)
    events = []
    for step in range(steps):
        candidates = []
        for i, (candidate, parts) in enumerate(zip(whole["candidates"], pieces, strict=True)):
            if step >= len(parts):
                continue
            out: dict[str, Any] = {"content": {"parts": [parts[step]], "role": "model"}}
            if step == len(parts) - 1:
                out["finishReason"] = candidate["finishReason"]
                out["safetyRatings"] = candidate["safetyRatings"]
            if several:  # Gemini leaves the index out of a single candidate's stream
                out["index"] = i
            candidates.append(out)
        event = {
            "candidates": candidates,
            "usageMetadata": usage if step == steps - 1 else prompt_only,
            "modelVersion": whole["modelVersion"],
            "responseId": whole["responseId"],
        }
        events.append(_sse(event))
    return events


def _candidate_pieces(candidate: dict[str, Any]) -> list[dict[str, Any]]:
    parts = []
    for part in candidate["content"]["parts"]:
        text = part.get("text")
        if isinstance(text, str) and not part.get("thought") and text:
            parts.extend({"text": text[i : i + _CHUNK_CHARS]} for i in range(0, len(text), _CHUNK_CHARS))
        else:
            parts.append(part)
    return parts


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def _function_to_call(body: dict[str, Any]) -> dict[str, Any] | None:
    declarations = [d for t in body.get("tools") or () for d in t.get("functionDeclarations") or ()]
    config = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    mode = config.get("mode") or "AUTO"
    if not declarations or mode == "NONE":
        return None
    allowed = config.get("allowedFunctionNames")
    if allowed:
        return next(d for d in declarations if d["name"] == allowed[0])
    answered = any("functionResponse" in p for p in body["contents"][-1]["parts"])
    if mode in ("AUTO", "MODE_UNSPECIFIED") and answered:
        return None
    return declarations[0]


def _text(req: GenerateRequest, prompt_digest: bytes, digest: bytes) -> str:
    sentence = reply_text(req.model, prompt_digest, digest)
    config = req.config
    if config.get("responseMimeType") != "application/json":
        return sentence
    schema = config.get("responseJsonSchema") or config.get("responseSchema")
    if schema:
        return orjson.dumps(sample_json(_lower_types(schema), digest)).decode()
    return orjson.dumps({"model": req.model, "prompt": prompt_digest[:4].hex(), "reply": sentence}).decode()


def _lower_types(schema: Any) -> Any:
    """Gemini's OpenAPI schemas spell types in capitals (``OBJECT``); the sampler wants JSON schema's."""
    if isinstance(schema, list):
        return [_lower_types(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    return {
        k: (v.lower() if k == "type" and isinstance(v, str) else _lower_types(v)) for k, v in schema.items()
    }


def _prompt_tokens(req: GenerateRequest, credential: str | None, cache: PromptCache) -> tuple[int, int]:
    """(prompt tokens, of which cached): implicit caching of the prefix before the last turn."""
    body = req.body
    total = REPLY_PRIMING
    if body.get("tools"):
        total += count_json_tokens(body["tools"])
    system = body.get("systemInstruction")
    if system:
        total += MESSAGE_OVERHEAD + sum(gemini_part_tokens(p) for p in system["parts"])
    per_turn = [MESSAGE_OVERHEAD + sum(gemini_part_tokens(p) for p in c["parts"]) for c in req.contents]
    prefix = total + sum(per_turn[:-1])
    total += sum(per_turn)
    key = request_digest(body.get("tools"), system, req.contents[:-1])
    cached = prefix if cache.hit(credential, req.model, key) else 0
    cache.store(credential, req.model, key, prefix)
    return total, cached
