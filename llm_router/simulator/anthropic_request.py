"""Strict validation of an Anthropic Messages request (``POST /v1/messages``), in Anthropic's wording.

Anthropic reports a bad request as ``400 invalid_request_error`` whose message is
``"<dotted.path>: <problem>"`` (``messages.1.content.0.tool_use_id: Field required``). Checked here:
required and unknown fields, types and ranges (temperature is 0..1 here, not OpenAI's 0..2), roles
and the block types each role may send, image sources, tool definitions and ``tool_choice``,
extended thinking's constraints, and the pairing a translator most often breaks: every
``tool_use`` answered by a ``tool_result`` in the very next message, and no ``tool_result``
without its ``tool_use``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llm_router.simulator.wire import Rejection

Check = Callable[[Any, str], None]

_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
_TOOL_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_BLOCKS_BY_ROLE = {
    "user": ("text", "image", "document", "tool_result", "search_result"),
    "assistant": (
        "text",
        "tool_use",
        "thinking",
        "redacted_thinking",
        "server_tool_use",
        "web_search_tool_result",
    ),
}
_CACHE_TTLS = ("5m", "1h")
_SAMPLING = frozenset({"temperature", "top_p", "top_k"})


@dataclass(frozen=True, slots=True)
class MessagesRequest:
    """The parts of a validated request that shape the reply (content always as block lists)."""

    model: str
    max_tokens: int
    system: list[dict[str, Any]]
    messages: list[dict[str, Any]]
    stop_sequences: list[str]
    tools: list[dict[str, Any]]
    tool_choice: dict[str, Any] | None
    thinking_budget: int | None
    stream: bool
    cache_control: dict[str, Any] | None = None
    prefill: str | None = None  # the text of a final assistant message: Claude goes on from it


def reject(path: str | None, problem: str) -> Rejection:
    return Rejection(400, f"{path}: {problem}" if path else problem, param=path)


def validate_messages_request(body: Any, *, sampling: bool = True) -> MessagesRequest:
    """Check decoded JSON as Anthropic does; raise ``Rejection(400)`` on the first problem.

    ``sampling=False`` is API version 2026-10-21 and later, where temperature, top_p and top_k
    are refused as unknown fields.
    """
    if not isinstance(body, dict):
        raise reject(None, "Input should be a valid dictionary")
    for key, value in body.items():
        check = _PARAMS.get(key)
        if check is None or (not sampling and key in _SAMPLING):
            raise reject(key, "Extra inputs are not permitted")
        check(value, key)
    for key in ("model", "messages", "max_tokens"):
        if key not in body:
            raise reject(key, "Field required")
    tools = body.get("tools") or []
    _cross_fields(body, tools)
    system = body.get("system")
    system_blocks = [{"type": "text", "text": system}] if isinstance(system, str) else list(system or ())
    messages = [
        {"role": m["role"], "content": [{"type": "text", "text": m["content"]}]}
        if isinstance(m["content"], str)
        else m
        for m in body["messages"]
    ]
    thinking = body.get("thinking") or {}
    prefill = _prefill(messages, thinking)
    return MessagesRequest(
        model=body["model"],
        max_tokens=body["max_tokens"],
        system=system_blocks,
        messages=messages,
        stop_sequences=list(body.get("stop_sequences") or ()),
        tools=tools,
        tool_choice=body.get("tool_choice"),
        thinking_budget=thinking.get("budget_tokens") if thinking.get("type") == "enabled" else None,
        stream=body.get("stream") is True,
        cache_control=body.get("cache_control"),
        prefill=prefill,
    )


def _prefill(messages: list[dict[str, Any]], thinking: dict[str, Any]) -> str | None:
    """The text Claude continues (a final assistant message), refused as Anthropic refuses it."""
    last = messages[-1]
    if last["role"] != "assistant":
        return None
    text = "".join(b.get("text", "") for b in last["content"] if b.get("type") == "text")
    if text != text.rstrip():
        raise reject(None, "messages: final assistant content cannot end with trailing whitespace")
    if thinking.get("type") == "enabled":
        raise reject(
            None,
            "messages: when thinking is enabled, the final assistant message cannot be a prefill; "
            "the conversation must end with a user message",
        )
    return text


# -- value checks -----------------------------------------------------------------------------


def _string(value: Any, path: str) -> None:
    if not isinstance(value, str):
        raise reject(path, "Input should be a valid string")


def _non_empty_string(value: Any, path: str) -> None:
    _string(value, path)
    if not value:
        raise reject(path, "String should have at least 1 character")


def _boolean(value: Any, path: str) -> None:
    if not isinstance(value, bool):
        raise reject(path, "Input should be a valid boolean")


def _dict(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise reject(path, "Input should be a valid dictionary")
    return value


def _list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise reject(path, "Input should be a valid list")
    return value


def _number(lo: float, hi: float | None) -> Check:
    def check(value: Any, path: str) -> None:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise reject(path, "Input should be a valid number")
        if value < lo:
            raise reject(path, f"Input should be greater than or equal to {lo}")
        if hi is not None and value > hi:
            raise reject(path, f"Input should be less than or equal to {hi}")

    return check


def _integer(lo: int) -> Check:
    def check(value: Any, path: str) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise reject(path, "Input should be a valid integer")
        if value < lo:
            raise reject(path, f"Input should be greater than or equal to {lo}")

    return check


def _choice(*allowed: str) -> Check:
    def check(value: Any, path: str) -> None:
        if value not in allowed:
            expected = ", ".join(f"'{a}'" for a in allowed)
            raise reject(path, f"Input should be {expected}")

    return check


def _fields(
    value: Any, path: str, checks: dict[str, Check], required: tuple[str, ...] = ()
) -> dict[str, Any]:
    obj = _dict(value, path)
    for key, item in obj.items():
        check = checks.get(key)
        if check is None:
            raise reject(f"{path}.{key}", "Extra inputs are not permitted")
        check(item, f"{path}.{key}")
    for key in required:
        if key not in obj:
            raise reject(f"{path}.{key}", "Field required")
    return obj


def _cache_control(value: Any, path: str) -> None:
    _fields(value, path, {"type": _choice("ephemeral"), "ttl": _choice(*_CACHE_TTLS)}, ("type",))


# -- top-level parameters ---------------------------------------------------------------------


def _system(value: Any, path: str) -> None:
    if isinstance(value, str):
        return
    for i, block in enumerate(_list(value, path)):
        _text_block(block, f"{path}.{i}")


def _metadata(value: Any, path: str) -> None:
    _fields(value, path, {"user_id": lambda v, p: v is None or _string(v, p)})


def _stop_sequences(value: Any, path: str) -> None:
    for i, item in enumerate(_list(value, path)):
        _string(item, f"{path}.{i}")


def _thinking(value: Any, path: str) -> None:
    obj = _dict(value, path)
    kind = obj.get("type")
    if kind == "enabled":
        _fields(obj, path, {"type": _string, "budget_tokens": _integer(1024)}, ("budget_tokens",))
    elif kind in ("disabled", "adaptive"):
        _fields(obj, path, {"type": _string, "display": _string})
    else:
        raise reject(f"{path}.type", "Input should be 'enabled', 'adaptive' or 'disabled'")


def _tool(value: Any, path: str) -> None:
    obj = _dict(value, path)
    kind = obj.get("type")
    if kind not in (None, "custom"):  # a server tool (web_search_20250305, bash_20250124, ...)
        _string(kind, f"{path}.type")
        _non_empty_string(obj.get("name"), f"{path}.name")
        return
    _fields(
        obj,
        path,
        {
            "type": _string,
            "name": _tool_name,
            "description": _string,
            "input_schema": _input_schema,
            "cache_control": _cache_control,
        },
        ("name", "input_schema"),
    )


def _tool_name(value: Any, path: str) -> None:
    _string(value, path)
    if not _TOOL_NAME.match(value):
        raise reject(path, "String should match pattern '^[a-zA-Z0-9_-]{1,128}$'")


def _input_schema(value: Any, path: str) -> None:
    schema = _dict(value, path)
    if schema.get("type") != "object":
        raise reject(f"{path}.type", "Input should be 'object'")


def _tools(value: Any, path: str) -> None:
    names = set()
    for i, tool in enumerate(_list(value, path)):
        _tool(tool, f"{path}.{i}")
        if tool["name"] in names:
            raise reject(path, "Tool names must be unique.")
        names.add(tool["name"])


def _tool_choice(value: Any, path: str) -> None:
    obj = _dict(value, path)
    kind = obj.get("type")
    _choice("auto", "any", "tool", "none")(kind, f"{path}.type")
    checks: dict[str, Check] = {"type": _string, "disable_parallel_tool_use": _boolean}
    if kind == "tool":
        checks["name"] = _string
    _fields(obj, path, checks, ("name",) if kind == "tool" else ())


def _messages(value: Any, path: str) -> None:
    messages = _list(value, path)
    if not messages:
        raise reject(path, "at least one message is required")
    pending: list[str] = []  # tool_use ids the previous assistant message left unanswered
    for i, message in enumerate(messages):
        where = f"{path}.{i}"
        msg = _fields(
            message, where, {"role": _choice("user", "assistant"), "content": _content}, ("role", "content")
        )
        blocks = (
            msg["content"] if isinstance(msg["content"], list) else [{"type": "text", "text": msg["content"]}]
        )
        last = i == len(messages) - 1
        if not blocks or (msg["content"] == "" and not (last and msg["role"] == "assistant")):
            raise reject(
                where,
                "all messages must have non-empty content except for the optional final assistant message",
            )
        allowed = _BLOCKS_BY_ROLE[msg["role"]]
        for k, block in enumerate(blocks):
            if block.get("type") not in allowed:
                tags = ", ".join(f"'{t}'" for t in allowed)
                raise reject(
                    f"{where}.content.{k}.type",
                    f"Input tag '{block.get('type')}' found using 'type' does not match any of the expected "
                    f"tags for role '{msg['role']}': {tags}",
                )
        results = [b["tool_use_id"] for b in blocks if b.get("type") == "tool_result"]
        if pending and (msg["role"] != "user" or set(pending) - set(results)):
            missing = ", ".join(sorted(set(pending) - set(results)))
            raise reject(
                where,
                f"`tool_use` ids were found without `tool_result` blocks immediately after: {missing}. "
                "Each `tool_use` block must have a corresponding `tool_result` block in the next message.",
            )
        for k, block in enumerate(blocks):
            if block.get("type") == "tool_result" and block["tool_use_id"] not in pending:
                raise reject(
                    f"{where}.content.{k}",
                    f"unexpected `tool_use_id` found in `tool_result` blocks: {block['tool_use_id']}. "
                    "Each `tool_result` block must have a corresponding `tool_use` block in the previous "
                    "message.",
                )
        pending = [b["id"] for b in blocks if b.get("type") == "tool_use"]
    if pending:
        raise reject(
            f"{path}.{len(messages) - 1}",
            "`tool_use` ids were found without `tool_result` blocks immediately after: "
            f"{', '.join(pending)}. Each `tool_use` block must have a corresponding `tool_result` block in "
            "the next message.",
        )


def _content(value: Any, path: str) -> None:
    if isinstance(value, str):
        return
    for k, block in enumerate(_list(value, path)):
        _block(block, f"{path}.{k}")


# -- content blocks ---------------------------------------------------------------------------


def _block(value: Any, path: str) -> None:
    block = _dict(value, path)
    kind = block.get("type")
    if kind is None:
        raise reject(f"{path}.type", "Field required")
    check = _BLOCKS.get(kind)
    if check is None:  # thinking, document, server tool blocks: accepted as they are
        return
    check(block, path)


def _text_block(value: Any, path: str) -> None:
    block = _fields(
        value,
        path,
        {"type": _choice("text"), "text": _string, "cache_control": _cache_control, "citations": _list},
        ("type", "text"),
    )
    if not block["text"]:
        raise reject(f"{path}.text", "text content blocks must be non-empty")


def _image_block(value: Any, path: str) -> None:
    block = _fields(
        value, path, {"type": _string, "source": _dict, "cache_control": _cache_control}, ("source",)
    )
    source, where = block["source"], f"{path}.source"
    kind = source.get("type")
    if kind == "base64":
        _fields(
            source,
            where,
            {"type": _string, "media_type": _choice(*MEDIA_TYPES), "data": _string},
            ("media_type", "data"),
        )
        try:
            base64.b64decode(source["data"], validate=True)
        except (binascii.Error, ValueError):
            raise reject(f"{where}.data", "Invalid base64 data") from None
    elif kind == "url":
        _fields(source, where, {"type": _string, "url": _string}, ("url",))
        if not source["url"].startswith(("https://", "http://")):
            raise reject(f"{where}.url", "Input should be a valid URL")
    elif kind == "file":
        _fields(source, where, {"type": _string, "file_id": _string}, ("file_id",))
    else:
        raise reject(f"{where}.type", "Input should be 'base64', 'url' or 'file'")


def _tool_use_block(value: Any, path: str) -> None:
    block = _fields(
        value,
        path,
        {"type": _string, "id": _string, "name": _string, "input": _dict, "cache_control": _cache_control},
        ("id", "name", "input"),
    )
    if not _TOOL_ID.match(block["id"]):
        raise reject(f"{path}.id", "String should match pattern '^[a-zA-Z0-9_-]+$'")


def _tool_result_block(value: Any, path: str) -> None:
    block = _fields(
        value,
        path,
        {
            "type": _string,
            "tool_use_id": _string,
            "content": _result_content,
            "is_error": _boolean,
            "cache_control": _cache_control,
        },
        ("tool_use_id",),
    )
    del block


def _result_content(value: Any, path: str) -> None:
    if isinstance(value, str):
        return
    for k, block in enumerate(_list(value, path)):
        kind = _dict(block, f"{path}.{k}").get("type")
        if kind not in ("text", "image", "search_result", "document"):
            raise reject(f"{path}.{k}.type", "Input should be 'text', 'image', 'search_result' or 'document'")
        _block(block, f"{path}.{k}")


_BLOCKS: dict[str, Check] = {
    "text": _text_block,
    "image": _image_block,
    "tool_use": _tool_use_block,
    "tool_result": _tool_result_block,
}


def _cross_fields(body: dict[str, Any], tools: list[dict[str, Any]]) -> None:
    choice = body.get("tool_choice")
    if choice is not None and choice.get("type") != "none" and not tools:
        raise reject("tool_choice", "tool_choice may only be specified while providing tools.")
    if (
        choice is not None
        and choice.get("type") == "tool"
        and choice["name"] not in {t["name"] for t in tools}
    ):
        raise reject("tool_choice.name", f"Tool '{choice['name']}' not found in provided tools")
    thinking = body.get("thinking") or {}
    if thinking.get("type") != "enabled":
        return
    if body["max_tokens"] <= thinking["budget_tokens"]:
        raise reject("max_tokens", "`max_tokens` must be greater than `thinking.budget_tokens`.")
    if body.get("temperature") not in (None, 1):
        raise reject("temperature", "`temperature` may only be set to 1 when thinking is enabled.")
    if body.get("top_k") is not None:
        raise reject("top_k", "`top_k` is not supported when thinking is enabled.")
    if body.get("top_p") is not None and body["top_p"] < 0.95:
        raise reject("top_p", "`top_p` must be greater than or equal to 0.95 when thinking is enabled.")
    if choice is not None and choice.get("type") in ("any", "tool"):
        raise reject("tool_choice", "Thinking may not be enabled when tool_choice forces tool use.")


_PARAMS: dict[str, Check] = {
    "model": _non_empty_string,
    "messages": _messages,
    "max_tokens": _integer(1),
    "system": _system,
    "metadata": _metadata,
    "stop_sequences": _stop_sequences,
    "stream": _boolean,
    "temperature": _number(0, 1),
    "top_p": _number(0, 1),
    "top_k": _integer(0),
    "tools": _tools,
    "tool_choice": _tool_choice,
    "thinking": _thinking,
    "service_tier": _choice("auto", "standard_only"),
    "container": _string,
    "mcp_servers": _list,
    "context_management": _dict,
    "cache_control": lambda v, p: v is None or _cache_control(v, p),
    "output_config": _dict,
    "speed": _choice("standard", "fast"),
    "inference_geo": lambda v, p: v is None or _string(v, p),
    "diagnostics": lambda v, p: v is None or _dict(v, p),
}
