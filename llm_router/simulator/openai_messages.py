"""Validation of the ``messages`` array of an OpenAI chat request.

Per role: which keys a message may carry, whether content may be null, which content-part types
are allowed (images, audio and files are user input only). Across messages: every assistant
``tool_calls`` id must be answered by a ``tool`` message before the conversation moves on, and
every ``tool`` message must answer a pending call - the pairing a format translator most often
breaks.
"""

from __future__ import annotations

from typing import Any

from llm_router.simulator.openai_checks import (
    empty_array,
    enum,
    invalid,
    invalid_type,
    json_object,
    missing,
    non_empty_list,
    string,
)
from llm_router.simulator.wire import Rejection

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
_MESSAGE_KEYS = {
    "system": frozenset({"role", "content", "name"}),
    "developer": frozenset({"role", "content", "name"}),
    "user": frozenset({"role", "content", "name"}),
    # an answer's message appended back as it came (the SDKs' documented tool loop): OpenAI takes
    # its response-only keys (annotations) back without complaint
    # `prefix: true` on a final assistant message: the answer goes on from its content (the prefill
    # of OpenAI-compatible servers such as Mistral's and DeepSeek's; OpenAI itself has none)
    "assistant": frozenset(
        {"role", "content", "name", "tool_calls", "function_call", "refusal", "audio", "annotations"}
        | {"prefix"}
    ),
    "tool": frozenset({"role", "content", "tool_call_id"}),
    "function": frozenset({"role", "content", "name"}),
}
_PART_TYPES = {
    "system": ("text",),
    "developer": ("text",),
    "user": ("text", "image_url", "input_audio", "file"),
    "assistant": ("text", "refusal"),
    "tool": ("text",),
    "function": ("text",),
}
_PART_TYPE_CHECKS = {role: enum(*types) for role, types in _PART_TYPES.items()}
_ROLE_CHECK = enum(*ROLES)
_FUNCTION_TYPE_CHECK = enum("function")
_DETAIL_CHECK = enum("auto", "low", "high")
_CONTENT_TYPE = "a string or an array of content parts"


def check_messages(value: Any, param: str) -> None:
    """Checker for the top-level ``messages`` parameter."""
    if value is None:
        raise missing(param)
    non_empty_list(value, param, limit=1_000_000)
    pending: set[str] = set()
    pending_at = 0
    for i, message in enumerate(value):
        where = f"{param}[{i}]"
        role = _message(message, where)
        if role == "tool":
            call_id = message["tool_call_id"]
            if call_id not in pending:
                raise invalid(
                    f"{where}.role",
                    "Invalid parameter: messages with role 'tool' must be a response to a preceding "
                    f"message with 'tool_calls' (no pending tool call has id '{call_id}').",
                )
            pending.discard(call_id)
            continue
        if pending:
            raise _unanswered(param, pending_at, pending)
        if role == "assistant" and message.get("tool_calls"):
            pending = {call["id"] for call in message["tool_calls"]}
            pending_at = i
    if pending:
        raise _unanswered(param, pending_at, pending)


def mentions_json(messages: list[dict[str, Any]]) -> bool:
    """Whether any message text contains "json" (OpenAI's precondition for json_object)."""
    for message in messages:
        content = message.get("content")
        texts = [content] if isinstance(content, str) else []
        if isinstance(content, list):
            texts = [p["text"] for p in content if isinstance(p.get("text"), str)]
        if any("json" in text.lower() for text in texts):
            return True
    return False


def _unanswered(param: str, index: int, pending: set[str]) -> Rejection:
    return invalid(
        f"{param}[{index}].tool_calls",
        "An assistant message with 'tool_calls' must be followed by tool messages responding to "
        "each 'tool_call_id'. The following tool_call_ids did not have response messages: "
        + ", ".join(sorted(pending)),
    )


def _message(message: Any, where: str) -> str:
    json_object(message, where)
    if "role" not in message:
        raise missing(f"{where}.role")
    role: str = message["role"]
    _ROLE_CHECK(role, f"{where}.role")
    allowed = _MESSAGE_KEYS[role]
    for key in message:
        if key not in allowed:
            raise invalid(
                f"{where}.{key}",
                f"Invalid '{where}': unrecognized key '{key}' for a message with role '{role}'.",
                "unknown_parameter",
            )
    if message.get("name") is not None:
        string(message["name"], f"{where}.name")
    if role == "assistant":
        _assistant_calls(message, where)
    elif role == "tool":
        if "tool_call_id" not in message:
            raise missing(f"{where}.tool_call_id")
        string(message["tool_call_id"], f"{where}.tool_call_id")
    elif role == "function" and message.get("name") is None:
        raise missing(f"{where}.name")
    _content(message, role, where)
    return role


def _assistant_calls(message: dict[str, Any], where: str) -> None:
    calls = message.get("tool_calls")
    if calls is not None:
        for j, call in enumerate(non_empty_list(calls, f"{where}.tool_calls")):
            at = f"{where}.tool_calls[{j}]"
            json_object(call, at)
            for key in ("id", "type", "function"):
                if key not in call:
                    raise missing(f"{at}.{key}")
            string(call["id"], f"{at}.id")
            _FUNCTION_TYPE_CHECK(call["type"], f"{at}.type")
            _called_function(call["function"], f"{at}.function")
    if message.get("function_call") is not None:
        _called_function(message["function_call"], f"{where}.function_call")


def _called_function(value: Any, where: str) -> None:
    json_object(value, where)
    for key in ("name", "arguments"):
        if key not in value:
            raise missing(f"{where}.{key}")
        # Arguments as a dict instead of a JSON string is a classic translation bug.
        string(value[key], f"{where}.{key}")


def _content(message: dict[str, Any], role: str, where: str) -> None:
    param = f"{where}.content"
    content = message.get("content")
    if content is None:
        calls = message.get("tool_calls") or message.get("function_call")
        if (role == "assistant" and calls) or role == "function":
            return
        if "content" not in message:
            raise missing(param)
        raise invalid_type(param, content, _CONTENT_TYPE)
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise invalid_type(param, content, _CONTENT_TYPE)
    if not content:
        raise empty_array(param)
    for k, part in enumerate(content):
        _part(part, role, f"{param}[{k}]")


def _part(part: Any, role: str, where: str) -> None:
    json_object(part, where)
    if "type" not in part:
        raise missing(f"{where}.type")
    kind = part["type"]
    allowed = _PART_TYPES[role]
    if kind not in allowed and kind in _PART_TYPES["user"]:
        raise invalid(
            f"{where}.type",
            f"Invalid '{where}': content parts of type '{kind}' are only allowed for messages with "
            f"role 'user', but this message has role '{role}'.",
            "invalid_value",
        )
    _PART_TYPE_CHECKS[role](kind, f"{where}.type")
    if kind not in part:
        raise missing(f"{where}.{kind}")
    if kind in ("text", "refusal"):
        string(part[kind], f"{where}.{kind}")
        return
    json_object(part[kind], f"{where}.{kind}")
    if kind == "image_url":
        image = part[kind]
        if "url" not in image:
            raise missing(f"{where}.image_url.url")
        string(image["url"], f"{where}.image_url.url")
        if image.get("detail") is not None:
            _DETAIL_CHECK(image["detail"], f"{where}.image_url.detail")
