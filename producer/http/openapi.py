"""The OpenAPI 3.0 document of the HTTP API, served at ``/openapi.json``.

Paths and answers are written by hand as data (not generated from handlers), so the document states
the contract the server is held to: the schemathesis test fuzzes the server against it. The chat
request is not a hand copy: ``ChatRequest`` and the schemas it refers to are the job contract's own
(``ChatJob.model_json_schema()``), converted to OpenAPI 3.0's dialect (``nullable``, boolean
``exclusiveMinimum``, ``enum`` for ``const``), so a field added to the contract is documented at once
and ``additionalProperties: false`` says where the contract refuses unknown keys.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from llm_router.contract import ChatJob
from producer.http import openapi_fronts
from producer.http.openapi_fronts import SSE_EVENT

ERROR_CODES: dict[int, str] = {
    400: "Invalid request (`invalid_request`, `unsupported_capability`; `param` names the field)",
    401: "Missing or wrong API key (`invalid_api_key`)",
    402: "The tenant's credit does not cover the job (`insufficient_credits`)",
    403: "The upload would take the tenant's files past its quota (`quota_exceeded`)",
    404: "Unknown id or another tenant's (`not_found`), unknown model (`model_not_found`), unknown route",
    405: "Method not allowed on this path (`method_not_allowed`)",
    408: "Gave up waiting for the job (`wait_timeout`; the job goes on), or the request body came too "
    "slowly (`request_timeout`)",
    409: "`idempotency_conflict` (a job_id reused with another body) or `job_not_cancellable`",
    413: "Body over the server's limit (`payload_too_large`), refused before it is read",
    429: "The tenant has too many jobs queued or running (`too_many_queued`) or requests in progress "
    "(`too_many_requests`); see Retry-After",
    499: "The job was cancelled (`cancelled`)",
    502: "Every provider of the route failed (`upstream_error`, `rate_limited`, ... : the job's error)",
    503: "Redis did not answer in time (`redis_unavailable`, with Retry-After; an accepted job's answer "
    "carries its id in x-llm-router-job-id), or no live worker serves the interactive queue (`no_workers`)",
    504: "The job's deadline passed (`deadline_exceeded`)",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


# what any API route may answer: a bad request or key, an unknown route, a body over the limit or too
# slow, a tenant over its requests in progress, Redis not answering
COMMON_ERRORS = (400, 401, 404, 405, 408, 413, 429, 503)
_RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}


def _errors(*statuses: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status in sorted({*COMMON_ERRORS, *statuses}):
        out[str(status)] = {
            "description": ERROR_CODES[status],
            "content": {"application/json": {"schema": _ref("Error")}},
        }
        if status in (429, 503):
            out[str(status)]["headers"] = _RETRY_AFTER
    return out


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _sse(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/event-stream": {"schema": SSE_EVENT}}}


def _path_id(name: str, description: str, example: str | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
        **({"example": example} if example else {}),
    }


def _body(schema: dict[str, Any], content_type: str = "application/json") -> dict[str, Any]:
    return {"required": True, "content": {content_type: {"schema": schema}}}


_DEFS = "#/$defs/"
_COMPONENTS = "#/components/schemas/"


def openapi30(schema: Any) -> Any:
    """A pydantic (JSON Schema 2020-12) schema in OpenAPI 3.0's dialect, refs pointing at components."""
    if isinstance(schema, list):
        return [openapi30(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "$ref":
            out[key] = value.replace(_DEFS, _COMPONENTS)
        elif key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "discriminator":
            mapping = {k: v.replace(_DEFS, _COMPONENTS) for k, v in value.get("mapping", {}).items()}
            out[key] = {**value, "mapping": mapping}
        elif key in ("title", "$defs"):
            continue
        elif key in ("properties", "patternProperties"):
            out[key] = {name: openapi30(sub) for name, sub in value.items()}
        else:
            out[key] = openapi30(value)
    members = out.get("anyOf")
    if isinstance(members, list) and {"type": "null"} in members:
        rest = [m for m in members if m != {"type": "null"}]
        del out["anyOf"]
        if out.get("default", 0) is None:
            del out["default"]
        if len(rest) == 1 and "$ref" not in rest[0]:
            out = {**rest[0], **out}
        elif len(rest) == 1:
            out["allOf"] = rest  # a $ref takes no siblings in 3.0
        else:
            out["anyOf"] = rest
        out["nullable"] = True
    return out


def contract_schemas() -> dict[str, Any]:
    """``ChatRequest`` and the schemas it refers to, from the job contract."""
    raw = ChatJob.model_json_schema()
    schemas = {name: openapi30(sub) for name, sub in raw.get("$defs", {}).items()}
    request = openapi30(raw)
    request["description"] = (
        "An OpenAI chat-completions body plus llm-router's reserved keys (see the README's job contract "
        "and its field table): every request field of OpenAI's chat API is accepted; unknown keys are "
        "refused. `tenant` is ignored over HTTP: the API key decides."
    )
    request["example"] = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 16,
    }
    return {**schemas, "ChatRequest": request}


SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "type"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": "string", "nullable": True},
                },
            }
        },
    },
    **(_contract := contract_schemas()),
    **openapi_fronts.schemas(_contract["ChatRequest"]["properties"]),
    "ChatCompletion": {
        "type": "object",
        "required": ["id", "object", "model", "choices"],
        "properties": {
            "id": {"type": "string"},
            "object": {"type": "string", "enum": ["chat.completion"]},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {"type": "array", "items": {"type": "object"}},
            "usage": {
                "type": "object",
                "properties": {
                    "prompt_tokens": {"type": "integer"},
                    "completion_tokens": {"type": "integer"},
                    "total_tokens": {"type": "integer"},
                    "cost": {"type": "number", "description": "USD"},
                    "credits_remaining": {"type": "number", "nullable": True, "description": "USD"},
                },
            },
        },
    },
    "Model": {
        "type": "object",
        "required": ["id", "object", "owned_by"],
        "properties": {
            "id": {"type": "string"},
            "object": {"type": "string", "enum": ["model"]},
            "created": {"type": "integer"},
            "owned_by": {"type": "string"},
        },
    },
    "ModelList": {
        "type": "object",
        "required": ["object", "data"],
        "properties": {"object": {"type": "string"}, "data": {"type": "array", "items": _ref("Model")}},
    },
    "Submitted": {
        "type": "object",
        "required": ["id", "created"],
        "properties": {
            "id": {"type": "string"},
            "created": {"type": "boolean", "description": "false: this job_id existed with the same body"},
        },
    },
    "BulkResult": {
        "type": "object",
        "required": ["object", "data"],
        "properties": {
            "object": {"type": "string"},
            "data": {
                "type": "array",
                "description": "one entry per input job, in order: its id, or its error (with status)",
                "items": {"oneOf": [_ref("Submitted"), _ref("Error")]},
            },
        },
    },
    "JobRecord": {
        "type": "object",
        "required": ["id", "status", "model_requested", "route", "tenant", "created_at"],
        "properties": {
            "id": {"type": "string"},
            "status": {
                "type": "string",
                "enum": ["queued", "running", "deferred", "succeeded", "failed", "cancelled"],
            },
            "request": {"type": "object"},
            "model_requested": {"type": "string"},
            "route": {"type": "array", "items": {"type": "string"}},
            "tenant": {"type": "string"},
            "created_at": {"type": "number"},
            "response": {"type": "object", "nullable": True},
            "usage": {"type": "object", "nullable": True},
            "error": {"type": "object", "nullable": True},
            "attempts": {"type": "array", "items": {"type": "object"}},
            "cached": {"type": "boolean"},
            "ignored": {
                "type": "array",
                "items": {"type": "string"},
                "nullable": True,
                "description": "request fields accepted from OpenAI's API that no provider sees (`store`)",
            },
        },
    },
    "GeminiRequest": {
        "type": "object",
        "description": "Gemini's GenerateContentRequest (contents, systemInstruction, generationConfig, "
        "tools, toolConfig); runs on any catalog model.",
        "required": ["contents"],
        "example": {"contents": [{"role": "user", "parts": [{"text": "Say hello."}]}]},
        "properties": {
            "contents": {"type": "array", "minItems": 1, "items": {"type": "object"}},
            "systemInstruction": {"type": "object"},
            "generationConfig": {"type": "object"},
            "tools": {"type": "array", "items": {"type": "object"}},
            "toolConfig": {"type": "object"},
        },
    },
    "GoogleError": {
        "type": "object",
        "required": ["error"],
        "description": "Google's error shape, on the Gemini front's routes; our stable code is the "
        "ErrorInfo detail's `reason` (upper case) and `metadata.code`",
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "status"],
                "properties": {
                    "code": {"type": "integer"},
                    "message": {"type": "string"},
                    "status": {"type": "string", "description": "google.rpc.Code name, e.g. NOT_FOUND"},
                    "details": {"type": "array", "items": {"type": "object"}},
                },
            }
        },
    },
    "GeminiModel": {
        "type": "object",
        "required": ["name", "supportedGenerationMethods"],
        "properties": {
            "name": {"type": "string", "description": "models/<id>"},
            "baseModelId": {"type": "string"},
            "version": {"type": "string"},
            "displayName": {"type": "string"},
            "description": {"type": "string"},
            "inputTokenLimit": {"type": "integer"},
            "outputTokenLimit": {"type": "integer"},
            "supportedGenerationMethods": {"type": "array", "items": {"type": "string"}},
            "thinking": {"type": "boolean"},
        },
    },
    "GeminiModelList": {
        "type": "object",
        "required": ["models"],
        "properties": {
            "models": {"type": "array", "items": _ref("GeminiModel")},
            "nextPageToken": {"type": "string"},
        },
    },
    "GeminiResponse": {
        "type": "object",
        "properties": {
            "candidates": {"type": "array", "items": {"type": "object"}},
            "usageMetadata": {"type": "object"},
            "modelVersion": {"type": "string", "nullable": True},
            "responseId": {"type": "string", "nullable": True},
        },
    },
    "File": {
        "type": "object",
        "required": ["id", "object", "bytes", "filename", "purpose"],
        "properties": {
            "id": {"type": "string"},
            "object": {"type": "string", "enum": ["file"]},
            "bytes": {"type": "integer"},
            "created_at": {"type": "integer"},
            "filename": {"type": "string"},
            "purpose": {"type": "string"},
        },
    },
    "Batch": {
        "type": "object",
        "required": ["id", "object", "status"],
        "properties": {
            "id": {"type": "string"},
            "object": {"type": "string", "enum": ["batch"]},
            "endpoint": {"type": "string"},
            "input_file_id": {"type": "string"},
            "completion_window": {"type": "string"},
            "status": {
                "type": "string",
                "enum": [
                    "validating",
                    "failed",
                    "in_progress",
                    "finalizing",
                    "completed",
                    "expired",
                    "cancelling",
                    "cancelled",
                ],
            },
            "output_file_id": {"type": "string", "nullable": True},
            "error_file_id": {"type": "string", "nullable": True},
            "request_counts": {
                "type": "object",
                "properties": {
                    "total": {"type": "integer"},
                    "completed": {"type": "integer"},
                    "failed": {"type": "integer"},
                },
            },
        },
    },
    "WebhookLog": {
        "type": "object",
        "required": ["object", "state", "attempts"],
        "properties": {
            "object": {"type": "string", "enum": ["webhook.log"]},
            "job_id": {"type": "string"},
            "batch_id": {"type": "string"},
            "url": {"type": "string", "nullable": True},
            "include": {"type": "array", "items": {"type": "string"}},
            "webhook_id": {"type": "string", "description": "the webhook-id header of every attempt"},
            "event": {"type": "string", "nullable": True, "example": "job.succeeded"},
            "state": {
                "type": "string",
                "enum": ["none", "waiting", "pending", "delivered", "retrying", "failed", "disabled"],
            },
            "next_attempt_at": {"type": "number", "nullable": True},
            "attempts": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "at": {"type": "number"},
                        "delivery": {"type": "integer", "description": "0, or the replay's number"},
                        "attempt": {"type": "integer"},
                        "status": {"type": "integer", "nullable": True},
                        "latency_ms": {"type": "number", "nullable": True},
                        "error": {"type": "string", "nullable": True},
                        "outcome": {
                            "type": "string",
                            "enum": ["delivered", "retrying", "failed", "disabled"],
                        },
                        "next_attempt_at": {"type": "number", "nullable": True},
                    },
                },
            },
        },
    },
    "List": {
        "type": "object",
        "required": ["object", "data"],
        "properties": {
            "object": {"type": "string", "enum": ["list"]},
            "data": {"type": "array", "items": {"type": "object"}},
            "has_more": {"type": "boolean"},
        },
    },
}

_SECURED = [{"bearer": []}]
# Anthropic's clients send their key as x-api-key
_ANTHROPIC_SECURED = [{"anthropicKey": []}, {"bearer": []}]
# Google's clients send their key as a header or a query parameter; a bearer token works too
_GEMINI_SECURED = [{"googApiKey": []}, {"googQueryKey": []}, {"bearer": []}]

PATHS: dict[str, Any] = {
    "/v1/jobs": {
        "post": {
            "summary": 'Submit one job, or up to the server\'s limit as {"jobs": [...]}',
            "operationId": "submitJobs",
            "requestBody": _body(
                {
                    "oneOf": [
                        _ref("ChatRequest"),
                        {
                            "type": "object",
                            "required": ["jobs"],
                            "additionalProperties": False,
                            "properties": {
                                "jobs": {"type": "array", "minItems": 1, "items": _ref("ChatRequest")}
                            },
                        },
                    ]
                }
            ),
            "responses": {
                "200": _json(
                    {"oneOf": [_ref("Submitted"), _ref("BulkResult")]},
                    "bulk: one entry per job; single: the job existed already (same job_id and body)",
                ),
                "201": _json(_ref("Submitted"), "the job was created"),
                **_errors(402, 409, 429),
            },
        }
    },
    "/v1/jobs/{id}": {
        "parameters": [_path_id("id", "job id")],
        "get": {
            "summary": "The job's record",
            "operationId": "getJob",
            "responses": {"200": _json(_ref("JobRecord"), "the record"), **_errors()},
        },
        "delete": {
            "summary": "Cancel the job (queued: at once; running: aborted, ends cancelled shortly after)",
            "operationId": "cancelJob",
            "responses": {"200": _json(_ref("JobRecord"), "the record after the cancel"), **_errors(409)},
        },
    },
    "/v1/jobs/{id}/events": {
        "parameters": [_path_id("id", "job id")],
        "get": {
            "summary": "The job's stream as SSE, replayed from the start",
            "description": "`data:` events carry chat.completion.chunk objects; an `end` event carries the "
            "outcome (id, status, error, usage); `data: [DONE]` closes the stream.",
            "operationId": "jobEvents",
            "responses": {"200": _sse("the stream"), **_errors()},
        },
    },
    "/v1/jobs/{id}/webhooks": {
        "parameters": [_path_id("id", "job id")],
        "get": {
            "summary": "The job's webhook deliveries: state and every attempt",
            "operationId": "jobWebhooks",
            "responses": {"200": _json(_ref("WebhookLog"), "the delivery log"), **_errors()},
        },
    },
    "/v1/chat/completions": {
        "post": {
            "summary": "OpenAI-compatible chat completion, run as an interactive job",
            "operationId": "createChatCompletion",
            "requestBody": _body(_ref("ChatRequest")),
            "responses": {
                "200": {
                    "description": "the chat.completion with usage.cost and usage.credits_remaining; with "
                    "`stream: true`, OpenAI SSE (chat.completion.chunk events, then `data: [DONE]`)",
                    "content": {
                        "application/json": {"schema": _ref("ChatCompletion")},
                        "text/event-stream": {"schema": SSE_EVENT},
                    },
                },
                **_errors(402, 408, 409, 429, 499, 502, 503, 504),
            },
        }
    },
    "/v1/models": {
        "get": {
            "summary": "The catalog's models in OpenAI's list format",
            "operationId": "listModels",
            "responses": {"200": _json(_ref("ModelList"), "the models"), **_errors()},
        }
    },
    "/v1/models/{model}": {
        "parameters": [_path_id("model", "a catalog model or alias", "gpt-4o-mini")],
        "get": {
            "summary": "One model",
            "operationId": "getModel",
            "responses": {"200": _json(_ref("Model"), "the model"), **_errors()},
        },
    },
    "/v1/files": {
        "post": {
            "summary": "Upload a batch input file (JSONL: custom_id, method, url, body)",
            "operationId": "createFile",
            "requestBody": _body(
                {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string", "enum": ["batch"]},
                    },
                },
                "multipart/form-data",
            ),
            "responses": {"200": _json(_ref("File"), "the file"), **_errors(403)},
        },
        "get": {
            "summary": "The tenant's files",
            "operationId": "listFiles",
            "responses": {"200": _json(_ref("List"), "the files"), **_errors()},
        },
    },
    "/v1/files/{file_id}": {
        "parameters": [_path_id("file_id", "file id")],
        "get": {
            "summary": "One file's metadata",
            "operationId": "getFile",
            "responses": {"200": _json(_ref("File"), "the file"), **_errors()},
        },
        "delete": {
            "summary": "Delete a file",
            "operationId": "deleteFile",
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["id", "object", "deleted"],
                        "properties": {
                            "id": {"type": "string"},
                            "object": {"type": "string", "enum": ["file"]},
                            "deleted": {"type": "boolean"},
                        },
                    },
                    "the file is gone",
                ),
                **_errors(),
            },
        },
    },
    "/v1/files/{file_id}/content": {
        "parameters": [_path_id("file_id", "file id")],
        "get": {
            "summary": "A file's content (input, output or error JSONL)",
            "operationId": "getFileContent",
            "responses": {
                "200": {
                    "description": "the bytes",
                    "content": {
                        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                    },
                },
                **_errors(),
            },
        },
    },
    "/v1/batches": {
        "post": {
            "summary": "Run a batch: every line of an uploaded file becomes a job",
            "operationId": "createBatch",
            "requestBody": _body(
                {
                    "type": "object",
                    "required": ["input_file_id", "endpoint", "completion_window"],
                    "properties": {
                        "input_file_id": {"type": "string"},
                        "endpoint": {"type": "string", "enum": ["/v1/chat/completions"]},
                        "completion_window": {"type": "string", "enum": ["24h"]},
                        "metadata": {"type": "object", "nullable": True},
                        "webhook": {
                            "description": "llm-router's extension: where the batch's end is delivered as a "
                            "signed batch.completed|failed|expired|cancelled event (Standard Webhooks); "
                            "false: nowhere, not even the tenant's default endpoint",
                            "anyOf": [
                                {"$ref": "#/components/schemas/Webhook"},
                                {"type": "boolean", "enum": [False]},
                            ],
                        },
                    },
                }
            ),
            "responses": {"200": _json(_ref("Batch"), "the batch"), **_errors(402, 429)},
        },
        "get": {
            "summary": "The tenant's batches, newest first",
            "operationId": "listBatches",
            "parameters": [
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 1},
                },
                {"name": "after", "in": "query", "required": False, "schema": {"type": "string"}},
            ],
            "responses": {"200": _json(_ref("List"), "the batches"), **_errors()},
        },
    },
    "/v1/batches/{batch_id}": {
        "parameters": [_path_id("batch_id", "batch id")],
        "get": {
            "summary": "One batch: status and request_counts",
            "operationId": "getBatch",
            "responses": {"200": _json(_ref("Batch"), "the batch"), **_errors()},
        },
    },
    "/v1/batches/{batch_id}/webhooks": {
        "parameters": [_path_id("batch_id", "batch id")],
        "get": {
            "summary": "The batch's webhook deliveries: state and every attempt",
            "operationId": "batchWebhooks",
            "responses": {"200": _json(_ref("WebhookLog"), "the delivery log"), **_errors()},
        },
    },
    "/v1/batches/{batch_id}/cancel": {
        "parameters": [_path_id("batch_id", "batch id")],
        "post": {
            "summary": "Cancel a batch: queued lines are cancelled, running ones finish",
            "operationId": "cancelBatch",
            "responses": {"200": _json(_ref("Batch"), "the batch"), **_errors(409)},
        },
    },
}


def _gemini_errors(*statuses: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status in sorted({*COMMON_ERRORS, *statuses}):
        schema = _ref("GoogleError")
        if status == 413:  # a declared body over the limit is refused before any route, in our shape
            schema = {"oneOf": [_ref("GoogleError"), _ref("Error")]}
        out[str(status)] = {
            "description": ERROR_CODES[status],
            "content": {"application/json": {"schema": schema}},
        }
    return out


_GEMINI_MODEL = _path_id("model", "a catalog model, alias or route (optionally `models/...`)", "gpt-4o-mini")


def _gemini_paths() -> dict[str, Any]:
    """The Gemini front: the generate routes under /v1beta (Google's default) and /v1, and
    models.list/get under /v1beta; Google's key header or query parameter, Google's error shape."""
    paths: dict[str, Any] = {}
    for prefix in ("/v1beta", "/v1"):
        tag = "" if prefix == "/v1beta" else "V1"
        paths[f"{prefix}/models/{{model}}:generateContent"] = {
            "parameters": [_GEMINI_MODEL],
            "post": {
                "summary": "Gemini generateContent on any catalog model",
                "operationId": f"generateContent{tag}",
                "requestBody": _body(_ref("GeminiRequest")),
                "responses": {
                    "200": _json(_ref("GeminiResponse"), "a GenerateContentResponse"),
                    **_gemini_errors(402, 408, 409, 429, 499, 502, 503, 504),
                },
            },
        }
        paths[f"{prefix}/models/{{model}}:streamGenerateContent"] = {
            "parameters": [
                _GEMINI_MODEL,
                {
                    "name": "alt",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string", "enum": ["sse"]},
                },
            ],
            "post": {
                "summary": "Gemini streamGenerateContent: SSE with alt=sse, else a JSON array",
                "operationId": f"streamGenerateContent{tag}",
                "requestBody": _body(_ref("GeminiRequest")),
                "responses": {
                    "200": {
                        "description": "GenerateContentResponse pieces",
                        "content": {
                            "text/event-stream": {"schema": SSE_EVENT},
                            "application/json": {
                                "schema": {"type": "array", "items": _ref("GeminiResponse")}
                            },
                        },
                    },
                    **_gemini_errors(402, 408, 409, 429, 499, 502, 503, 504),
                },
            },
        }
    paths["/v1beta/models"] = {
        "get": {
            "summary": "models.list: the catalog's models and routes as Gemini Model objects",
            "operationId": "listGeminiModels",
            "parameters": [
                {"name": "pageSize", "in": "query", "required": False, "schema": {"type": "integer"}},
                {"name": "pageToken", "in": "query", "required": False, "schema": {"type": "string"}},
            ],
            "responses": {"200": _json(_ref("GeminiModelList"), "the models"), **_gemini_errors()},
        }
    }
    paths["/v1beta/models/{model}"] = {
        "parameters": [_GEMINI_MODEL],
        "get": {
            "summary": "models.get: one model as a Gemini Model object",
            "operationId": "getGeminiModel",
            "responses": {"200": _json(_ref("GeminiModel"), "the model"), **_gemini_errors()},
        },
    }
    return {
        p: {k: ({**v, "security": _GEMINI_SECURED} if k in ("get", "post") else v) for k, v in ops.items()}
        for p, ops in paths.items()
    }


def _secure(paths: dict[str, Any]) -> dict[str, Any]:
    methods = ("get", "post", "delete")
    return {
        p: {k: ({**v, "security": _SECURED} if k in methods else v) for k, v in ops.items()}
        for p, ops in paths.items()
    }


def _fronts() -> dict[str, Any]:
    """The Responses and Messages fronts (``openapi_fronts``): bearer keys; Messages also x-api-key."""
    fronts = openapi_fronts.paths(_errors, _path_id, _body, _json)
    messages = fronts.pop("/v1/messages")
    messages["post"]["security"] = _ANTHROPIC_SECURED
    return {**_secure(fronts), "/v1/messages": messages}


DOCUMENT: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "llm-router HTTP API",
        "version": "1",
        "description": "LLM work as durable jobs: an OpenAI-compatible front (chat completions, the "
        "Responses API, models, Batch API with files), Anthropic's Messages API, a Gemini-native "
        "endpoint and /v1/jobs for any language. Every /v1 request needs `Authorization: Bearer <key>` "
        "(or `x-api-key`; the key decides the tenant); errors are "
        '`{"error": {"code", "message", "type", "param"}}` (Anthropic\'s shape on /v1/messages, '
        "Google's on the Gemini routes).",
    },
    "servers": [{"url": "/"}],
    "components": {
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "googApiKey": {"type": "apiKey", "in": "header", "name": "x-goog-api-key"},
            "googQueryKey": {"type": "apiKey", "in": "query", "name": "key"},
            "anthropicKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
        },
        "schemas": SCHEMAS,
    },
    "security": _SECURED,
    "paths": {
        **_secure(PATHS),
        **_fronts(),
        **_gemini_paths(),
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "openapi",
                "security": [],
                "responses": {"200": _json({"type": "object"}, "the OpenAPI document")},
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness",
                "operationId": "health",
                "security": [],
                "responses": {"200": _json({"type": "object"}, "the server is up")},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: Redis answers within a timeout (not whether workers are live)",
                "operationId": "ready",
                "security": [],
                "responses": {
                    "200": _json({"type": "object"}, "Redis answered"),
                    "503": _json({"type": "object"}, "Redis did not answer in time"),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (text exposition format)",
                "operationId": "metrics",
                "security": [],
                "responses": {
                    "200": {
                        "description": "metrics",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    },
}

_ENCODED = orjson.dumps(DOCUMENT)


async def serve(request: web.Request) -> web.Response:
    return web.Response(body=_ENCODED, content_type="application/json")
