"""The OpenAI chat-completions wire format (also spoken by AIsa, OpenRouter, xAI, Mistral).

``OPENAI`` is the ``WireFormat`` the pipeline drives for ``POST {prefix}/chat/completions``;
``list_models`` / ``retrieve_model`` answer ``GET {prefix}/models[/{id}]``. Errors take OpenAI's
shape ``{"error": {"message", "type", "param", "code"}}``, picked by status from a table.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from llm_router.simulator.openai_reply import completion_body, plan_reply, stream_events
from llm_router.simulator.openai_request import ChatRequest, validate_chat_request
from llm_router.simulator.state import STATE
from llm_router.simulator.stream import broken_stream, send_events
from llm_router.simulator.wire import ChatCall, Rejection, StreamFault

_JSON = "application/json"
DEFAULT_MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1", "o3-mini")
_MODEL_CREATED = 1_700_000_000

# status -> (error.type, error.code, canned message). The canned message is used when a fault
# injects the status; validation errors bring their own message and code.
_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    402: (
        "insufficient_quota",
        "insufficient_credits",
        "You have insufficient credits to complete this request. Add credits and retry.",
    ),
    403: ("invalid_request_error", "permission_denied", "You are not allowed to access this model."),
    404: (
        "invalid_request_error",
        "model_not_found",
        "The model `{model}` does not exist or you do not have access to it.",
    ),
    408: ("invalid_request_error", "timeout", "Request timed out."),
    413: ("invalid_request_error", "request_too_large", "Request too large."),
    429: (
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for {model} on requests per min (RPM). Please try again later.",
    ),
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    502: ("server_error", "bad_gateway", "Bad gateway."),
    503: ("server_error", "service_unavailable", "The server is overloaded or not ready yet."),
    504: ("server_error", "gateway_timeout", "Gateway timeout."),
}
_OTHER_CLIENT_ERROR = ("invalid_request_error", None, "The request failed.")
# canned messages of error codes a fault can inject (``FaultRule.error_code``)
_CODE_MESSAGES = {
    "context_length_exceeded": (
        "This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 "
        "tokens. Please reduce the length of the messages."
    ),
    "content_policy_violation": (
        "Your request was rejected as a result of our safety system. Your prompt may contain text that is "
        "not allowed by our safety system."
    ),
    "insufficient_quota": "You exceeded your current quota, please check your plan and billing details.",
}
_OTHER_SERVER_ERROR = ("server_error", None, "The server failed to process the request.")

_MISSING_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)
_BAD_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
    "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not "
    "valid JSON.)"
)


class OpenAIFormat:
    """``WireFormat`` for OpenAI chat completions."""

    def authenticate(self, request: web.Request) -> str:
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise Rejection(401, _MISSING_KEY)
        return key

    def peek_model(self, request: web.Request, raw: bytes) -> str | None:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        model = body.get("model") if isinstance(body, dict) else None
        return model if isinstance(model, str) else None

    def parse(self, request: web.Request, raw: bytes) -> ChatCall:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise Rejection(400, _BAD_JSON) from None
        req = validate_chat_request(body)
        return ChatCall(model=req.model, stream=req.stream, request=req, prefill=req.prefill is not None)

    def error(self, rejection: Rejection) -> web.Response:
        return web.Response(
            status=rejection.status, body=orjson.dumps(error_body(rejection)), content_type=_JSON
        )

    def malformed(self, call: ChatCall) -> web.Response:
        req = _chat_request(call)
        if req.stream:
            return broken_stream(stream_events(plan_reply(req), req.include_usage))
        body = completion_body(plan_reply(req))
        return web.Response(status=200, body=body[: len(body) // 2], content_type=_JSON)

    def filtered(self, call: ChatCall) -> web.Response:
        rejection = Rejection(
            400,
            "Your request was rejected as a result of our safety system. Your prompt may contain text "
            "that is not allowed by our safety system.",
            code="content_policy_violation",
        )
        return self.error(rejection)

    def stream_error(self, rejection: Rejection) -> bytes:
        # what OpenAI-compatible servers send when a stream fails midway (the SDK raises on it)
        return b"data: " + orjson.dumps(error_body(rejection)) + b"\n\n"

    async def respond(
        self, request: web.Request, call: ChatCall, fault: StreamFault | None = None
    ) -> web.StreamResponse:
        req = _chat_request(call)
        reply = plan_reply(req)
        if req.stream:
            return await send_events(request, stream_events(reply, req.include_usage), fault)
        return web.Response(body=completion_body(reply), content_type=_JSON)


OPENAI = OpenAIFormat()


def error_body(rejection: Rejection) -> dict[str, Any]:
    """OpenAI's error object for ``rejection``, filling canned text for bare statuses."""
    status = rejection.status
    default = _OTHER_SERVER_ERROR if status >= 500 else _OTHER_CLIENT_ERROR
    kind, code, message = _ERRORS.get(status, default)
    if rejection.message is not None:
        message, code = rejection.message, rejection.code
    elif rejection.code is not None:  # an injected fault naming the error code
        code = rejection.code
        message = _CODE_MESSAGES.get(code, message)
    message = message.replace("{model}", rejection.model or "the requested model")
    return {"error": {"message": message, "type": kind, "param": rejection.param, "code": code}}


async def list_models(request: web.Request) -> web.Response:
    """``GET {prefix}/models``: the configured models, or a small default list."""
    try:
        OPENAI.authenticate(request)
    except Rejection as rejection:
        return OPENAI.error(rejection)
    data = [_model_json(m) for m in _known_models(request)]
    return web.Response(body=orjson.dumps({"object": "list", "data": data}), content_type=_JSON)


async def retrieve_model(request: web.Request) -> web.Response:
    """``GET {prefix}/models/{model}``; 404 model_not_found outside a configured list."""
    model = request.match_info["model"]
    try:
        OPENAI.authenticate(request)
        if request.app[STATE].models is not None and model not in request.app[STATE].models:
            raise Rejection(404, model=model)
    except Rejection as rejection:
        return OPENAI.error(rejection)
    return web.Response(body=orjson.dumps(_model_json(model)), content_type=_JSON)


def _known_models(request: web.Request) -> list[str]:
    configured = request.app[STATE].config.models
    return list(configured) if configured is not None else list(DEFAULT_MODELS)


def _model_json(model: str) -> dict[str, Any]:
    owner = model.split("/", 1)[0] if "/" in model else "openai"
    return {"id": model, "object": "model", "created": _MODEL_CREATED, "owned_by": owner}


def _chat_request(call: ChatCall) -> ChatRequest:
    req: ChatRequest = call.request
    return req
