"""The OpenAPI entries of the Responses and Messages fronts (merged into ``openapi.DOCUMENT``).

Written by hand as data, like the rest of the document: the requests list the fields each front
takes (``additionalProperties: false`` where the front refuses unknown keys), the answers the shape
clients read. The Messages path answers in Anthropic's error shape and status codes.
"""

from __future__ import annotations

from typing import Any

ANY_OBJECT: dict[str, Any] = {"type": "object"}
OBJECTS: dict[str, Any] = {"type": "array", "items": ANY_OBJECT}
NULLABLE_OBJECT: dict[str, Any] = {"type": "object", "nullable": True}
# one server-sent event, as OpenAPI before 3.2 reads a text/event-stream `schema` (and schemathesis
# checks each event of a stream against it): its fields, `data` a JSON text or `[DONE]`
SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "data": {"type": "string"},
        "event": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
}

# our reserved keys a front's body may carry (the SDKs' extra_body): routing, deadline, cache; their
# schemas are the job contract's (``schemas`` takes them from the chat request's)
OURS = ("fallbacks", "deadline_s", "cache", "cache_ttl_s")
TOOL_CHOICE: dict[str, Any] = {
    "anyOf": [{"type": "string", "enum": ["none", "auto", "required"]}, ANY_OBJECT],
    "nullable": True,
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def schemas(chat_properties: dict[str, Any]) -> dict[str, Any]:
    """The fronts' schemas; ``chat_properties``: the chat request's, for our reserved keys."""
    ours = {name: chat_properties[name] for name in OURS}
    return {**_schemas(ours), **_messages_schemas(ours)}


def _schemas(ours: dict[str, Any]) -> dict[str, Any]:
    return {
        "ResponsesRequest": {
            "type": "object",
            "description": "The Responses API's create body; runs as a chat job on any catalog model. "
            "Accepted without effect: include, truncation, max_tool_calls, stream_options, top_logprobs, "
            "store (every response is stored). Refused: hosted tools and their items, conversation, "
            "prompt.",
            "required": ["model", "input"],
            "additionalProperties": False,
            "example": {"model": "gpt-4o-mini", "input": "Say hello.", "max_output_tokens": 16},
            "properties": {
                "model": {"type": "string", "minLength": 1},
                "input": {
                    "description": "a string, or input items: messages (input_text, input_image, output_text "
                    "parts), function_call, function_call_output",
                    "oneOf": [{"type": "string"}, OBJECTS],
                },
                "instructions": {"type": "string", "nullable": True},
                "previous_response_id": {"type": "string", "nullable": True},
                "background": {"type": "boolean", "nullable": True},
                "stream": {"type": "boolean", "nullable": True},
                "tools": {"type": "array", "items": ANY_OBJECT, "nullable": True},
                "tool_choice": TOOL_CHOICE,
                "parallel_tool_calls": {"type": "boolean", "nullable": True},
                "text": {
                    "type": "object",
                    "nullable": True,
                    "description": "format (text, json_object, json_schema) and verbosity",
                },
                "reasoning": NULLABLE_OBJECT,
                "max_output_tokens": {"type": "integer", "minimum": 1, "nullable": True},
                "temperature": {"type": "number", "minimum": 0, "maximum": 2, "nullable": True},
                "top_p": {"type": "number", "minimum": 0, "maximum": 1, "nullable": True},
                "metadata": {"type": "object", "nullable": True, "additionalProperties": {"type": "string"}},
                "user": {"type": "string", "nullable": True},
                "safety_identifier": {"type": "string", "nullable": True},
                "prompt_cache_key": {"type": "string", "nullable": True},
                "prompt_cache_retention": {"type": "string", "enum": ["in_memory", "24h"], "nullable": True},
                "service_tier": {"type": "string", "nullable": True},
                "store": {"type": "boolean", "nullable": True},
                "include": {"type": "array", "items": {"type": "string"}, "nullable": True},
                "truncation": {"type": "string", "nullable": True},
                "max_tool_calls": {"type": "integer", "nullable": True},
                "stream_options": NULLABLE_OBJECT,
                "top_logprobs": {"type": "integer", "nullable": True},
                **ours,
            },
        },
        "Response": {
            "type": "object",
            "required": ["id", "object", "created_at", "status", "model", "output"],
            "properties": {
                "id": {"type": "string", "description": "resp_…: the job's id"},
                "object": {"type": "string", "enum": ["response"]},
                "created_at": {"type": "integer"},
                "status": {
                    "type": "string",
                    "enum": ["queued", "in_progress", "completed", "incomplete", "failed", "cancelled"],
                },
                "background": {"type": "boolean"},
                "model": {"type": "string"},
                "output": OBJECTS,
                "error": NULLABLE_OBJECT,
                "incomplete_details": NULLABLE_OBJECT,
                "previous_response_id": {"type": "string", "nullable": True},
                "usage": {
                    "type": "object",
                    "nullable": True,
                    "properties": {
                        "input_tokens": {"type": "integer"},
                        "output_tokens": {"type": "integer"},
                        "total_tokens": {"type": "integer"},
                        "cost": {"type": "number", "description": "USD"},
                        "credits_remaining": {"type": "number", "nullable": True, "description": "USD"},
                    },
                },
            },
        },
    }


def _messages_schemas(ours: dict[str, Any]) -> dict[str, Any]:
    return {
        "MessagesRequest": {
            "type": "object",
            "description": "Anthropic's Messages body; runs as a chat job on any catalog model. top_k is "
            "accepted without effect; server tools, container and mcp_servers are refused.",
            "required": ["model", "max_tokens", "messages"],
            "additionalProperties": False,
            "example": {
                "model": "claude-haiku-4-5",
                "max_tokens": 16,
                "messages": [{"role": "user", "content": "Hi"}],
            },
            "properties": {
                "model": {"type": "string", "minLength": 1},
                "max_tokens": {"type": "integer", "minimum": 1},
                "messages": {"type": "array", "minItems": 1, "items": ANY_OBJECT},
                "system": {"description": "a string or text blocks", "oneOf": [{"type": "string"}, OBJECTS]},
                "tools": OBJECTS,
                "tool_choice": ANY_OBJECT,
                "stream": {"type": "boolean"},
                "stop_sequences": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
                "temperature": {"type": "number", "minimum": 0, "maximum": 1},
                "top_p": {"type": "number", "minimum": 0, "maximum": 1},
                "top_k": {"type": "integer", "minimum": 0},
                "metadata": {
                    "type": "object",
                    "properties": {"user_id": {"type": "string", "nullable": True}},
                },
                "thinking": ANY_OBJECT,
                "output_config": ANY_OBJECT,
                "service_tier": {"type": "string"},
                **ours,
            },
        },
        "AnthropicMessage": {
            "type": "object",
            "required": ["id", "type", "role", "model", "content", "stop_reason", "usage"],
            "properties": {
                "id": {"type": "string", "description": "msg_…: the job's id"},
                "type": {"type": "string", "enum": ["message"]},
                "role": {"type": "string", "enum": ["assistant"]},
                "model": {"type": "string"},
                "content": OBJECTS,
                "stop_reason": {"type": "string", "nullable": True},
                "stop_sequence": {"type": "string", "nullable": True},
                "usage": {
                    "type": "object",
                    "properties": {
                        "input_tokens": {"type": "integer"},
                        "output_tokens": {"type": "integer"},
                        "cache_creation_input_tokens": {"type": "integer"},
                        "cache_read_input_tokens": {"type": "integer"},
                        "cost": {"type": "number", "description": "USD"},
                        "credits_remaining": {"type": "number", "nullable": True, "description": "USD"},
                    },
                },
            },
        },
        "AnthropicError": {
            "type": "object",
            "required": ["type", "error"],
            "description": "Anthropic's error shape, on the Messages path; our stable code and the field "
            "ride beside Anthropic's type",
            "properties": {
                "type": {"type": "string", "enum": ["error"]},
                "error": {
                    "type": "object",
                    "required": ["type", "message"],
                    "properties": {
                        "type": {
                            "type": "string",
                            "description": "invalid_request_error, authentication_error, …",
                        },
                        "message": {"type": "string"},
                        "code": {"type": "string"},
                        "param": {"type": "string"},
                    },
                },
            },
        },
    }


# Anthropic's statuses for our errors (producer.messages_answer.ERRORS)
ANTHROPIC_STATUSES: dict[int, str] = {
    400: "invalid_request_error (a field the front or the job contract refuses, named in `param`)",
    401: "authentication_error: a missing or unknown key (`x-api-key` or `Authorization: Bearer`)",
    402: "billing_error: the tenant's credit does not cover the job",
    404: "not_found_error: an unknown model or route",
    405: "invalid_request_error: method not allowed",
    409: "invalid_request_error: an Idempotency-Key reused with another body",
    413: "request_too_large: the body is over the server's limit",
    429: "rate_limit_error: too many jobs queued (see Retry-After), or every provider rate-limited",
    499: "invalid_request_error: the job was cancelled",
    500: "api_error: every provider of the route failed",
    504: "timeout_error: the job's deadline passed",
    529: "overloaded_error: no live worker, or the providers are overloaded",
}


def _anthropic_errors() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status, description in ANTHROPIC_STATUSES.items():
        out[str(status)] = {
            "description": description,
            "content": {"application/json": {"schema": _ref("AnthropicError")}},
        }
    out["429"]["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
    return out


def paths(errors: Any, path_id: Any, body: Any, json: Any) -> dict[str, Any]:
    """The fronts' paths, built with the document's own helpers (OpenAI-shaped ``errors``)."""
    response_200 = {
        "description": "the Response (status queued for a background one); with `stream: true`, the "
        "Responses API's SSE events (response.created … response.completed), each with its "
        "sequence_number",
        "content": {
            "application/json": {"schema": _ref("Response")},
            "text/event-stream": {"schema": SSE_EVENT},
        },
    }
    rid = path_id("id", "response id (resp_…)")
    return {
        "/v1/responses": {
            "post": {
                "summary": "The Responses API: a response is a job (interactive, or queued with background)",
                "operationId": "createResponse",
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                        "description": "names the job in the tenant: a retry returns the first response",
                    }
                ],
                "requestBody": body(_ref("ResponsesRequest")),
                "responses": {"200": response_200, **errors(402, 408, 409, 429, 499, 502, 503, 504)},
            }
        },
        "/v1/responses/{id}": {
            "parameters": [rid],
            "get": {
                "summary": "The response as its record is now; ?stream=true replays and follows its events",
                "operationId": "getResponse",
                "parameters": [
                    {"name": "stream", "in": "query", "required": False, "schema": {"type": "boolean"}},
                    {
                        "name": "starting_after",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer"},
                    },
                ],
                "responses": {"200": response_200, **errors(408, 499, 502, 504)},
            },
            "delete": {
                "summary": "Delete a response that has ended (record, request, stream); else 409",
                "operationId": "deleteResponse",
                "responses": {
                    "200": json(
                        {
                            "type": "object",
                            "required": ["id", "object", "deleted"],
                            "properties": {
                                "id": {"type": "string"},
                                "object": {"type": "string", "enum": ["response.deleted"]},
                                "deleted": {"type": "boolean", "enum": [True]},
                            },
                        },
                        "the response is deleted",
                    ),
                    **errors(409),
                },
            },
        },
        "/v1/responses/{id}/input_items": {
            "parameters": [rid],
            "get": {
                "summary": "The response's own input as items (newest first unless order=asc), a page a call",
                "operationId": "listInputItems",
                "parameters": [
                    {
                        "name": "order",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": ["asc", "desc"]},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                    },
                    {"name": "after", "in": "query", "required": False, "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": json(
                        {
                            "type": "object",
                            "required": ["object", "data", "first_id", "last_id", "has_more"],
                            "properties": {
                                "object": {"type": "string", "enum": ["list"]},
                                "data": {"type": "array", "items": {"type": "object"}},
                                "first_id": {"type": "string", "nullable": True},
                                "last_id": {"type": "string", "nullable": True},
                                "has_more": {"type": "boolean"},
                            },
                        },
                        "a page of input items",
                    ),
                    **errors(),
                },
            },
        },
        "/v1/responses/{id}/cancel": {
            "parameters": [rid],
            "post": {
                "summary": "Cancel a response (queued: at once; running: aborted); an ended one is 409",
                "operationId": "cancelResponse",
                "responses": {"200": json(_ref("Response"), "the cancelled response"), **errors(409)},
            },
        },
        "/v1/messages": {
            "post": {
                "summary": "Anthropic's Messages API on any catalog model, run as an interactive job",
                "operationId": "createMessage",
                "parameters": [
                    {
                        "name": "anthropic-version",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                    },
                ],
                "requestBody": body(_ref("MessagesRequest")),
                "responses": {
                    "200": {
                        "description": "the Message (usage with cost); with `stream: true`, Anthropic's SSE "
                        "events: message_start, ping, content_block_start/delta/stop, message_delta, "
                        "message_stop",
                        "content": {
                            "application/json": {"schema": _ref("AnthropicMessage")},
                            "text/event-stream": {"schema": SSE_EVENT},
                        },
                    },
                    **_anthropic_errors(),
                },
            }
        },
    }
