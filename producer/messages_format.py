"""Anthropic Messages requests as chat jobs: a ``POST /v1/messages`` body in, our chat job out.

A Message is a chat job (``answer_format: "anthropic"``, id ``msg_…``) that runs on any catalog
model; ``messages_answer`` renders its record back as an Anthropic ``Message``. Pure, like
``gemini_native``: renames are the ``RENAMES`` table, code is kept for the structural moves.

* ``system`` (a string or text blocks) → a system message first.
* ``messages``: text and ``image`` blocks (``base64`` and ``url`` sources) → parts; an assistant's
  ``tool_use`` blocks → ``tool_calls`` (``input`` as JSON arguments); a user's ``tool_result``
  blocks → tool messages, first, as Anthropic orders them (images in a result ride in the user
  message that follows; ``is_error`` prefixes the text with ``Error:``); ``thinking`` and
  ``redacted_thinking`` blocks (another model's reasoning) are dropped.
* ``tools`` (``input_schema``) → function tools; ``tool_choice`` ``auto``/``any``/``tool``/``none``
  → ``auto``/``required``/named/``none``, ``disable_parallel_tool_use`` → ``parallel_tool_calls:
  false``; ``thinking.budget_tokens`` and ``output_config.effort`` → ``reasoning_effort``;
  ``output_config.format`` (``json_schema``) → ``response_format``; ``metadata.user_id`` → ``user``.
* ``max_tokens`` is required, as Anthropic requires it. Accepted without effect (``IGNORED``):
  ``top_k`` (no other vendor samples by it), ``service_tier``, ``cache_control``, ``inference_geo``,
  ``speed``, ``diagnostics``. Refused, naming the field: server tools, ``container``,
  ``mcp_servers``, documents and file sources, more than 4 stop sequences.
"""

from __future__ import annotations

from typing import Any

import orjson

from llm_router.contract import RESERVED_KEYS
from llm_router.errors import InvalidRequest

MESSAGE_PREFIX = "msg_"
ANSWER_FORMAT = "anthropic"

RENAMES: dict[str, str] = {
    "model": "model",
    "max_tokens": "max_tokens",
    "stop_sequences": "stop",
    "temperature": "temperature",
    "top_p": "top_p",
    "stream": "stream",
}
IGNORED = frozenset({"top_k", "service_tier", "cache_control", "inference_geo", "speed", "diagnostics"})
STRUCTURAL = frozenset(
    {"system", "messages", "tools", "tool_choice", "thinking", "metadata", "output_config"}
)
REFUSED: dict[str, str] = {
    "container": "containers belong to Anthropic's code execution tool, which runs only there",
    "mcp_servers": "MCP servers are called by Anthropic's API itself; run tools on the client",
}
OURS = frozenset(RESERVED_KEYS - {"job_id", "tenant", "answer_format", "metadata"})
TOOL_CHOICES: dict[str, str] = {"auto": "auto", "any": "required", "none": "none"}
# thinking budget → the largest reasoning effort whose budget (the Anthropic adapter's, which maps
# efforts back to budgets) fits in it: never more thinking than asked, and never so much that the
# budget reaches max_tokens and the adapter turns thinking off
BUDGETS = ((32768, "xhigh"), (16384, "high"), (4096, "medium"))
EFFORTS = frozenset({"low", "medium", "high", "xhigh", "max"})
MAX_STOPS = 4


def messages_to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic Messages body as our chat job."""
    job: dict[str, Any] = {}
    for key, value in body.items():
        if key in REFUSED:
            if value is not None:
                raise InvalidRequest(REFUSED[key], param=key)
        elif key in RENAMES:
            if value is not None:
                job[RENAMES[key]] = value
        elif key in OURS:
            job[key] = value
        elif key not in IGNORED and key not in STRUCTURAL:
            raise InvalidRequest(f"{key}: Extra inputs are not permitted", param=key)
    for required in ("model", "max_tokens", "messages"):
        if body.get(required) is None:
            raise InvalidRequest(f"{required}: Field required", param=required)
    stops = job.get("stop")
    if isinstance(stops, list) and len(stops) > MAX_STOPS:
        raise InvalidRequest(f"at most {MAX_STOPS} stop sequences run on every model", param="stop_sequences")
    messages: list[dict[str, Any]] = []
    system = _system(body.get("system"))
    if system is not None:
        messages.append({"role": "system", "content": system})
    messages.extend(chat_messages(body["messages"]))
    job["messages"] = messages
    _tools(body, job)
    _thinking(body.get("thinking"), job)
    _output_config(body.get("output_config"), job)
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise InvalidRequest("metadata must be an object", param="metadata")
        if metadata.get("user_id") is not None:
            job["user"] = metadata["user_id"]
    job["answer_format"] = ANSWER_FORMAT
    return job


def _system(raw: Any) -> str | None:
    if raw is None or isinstance(raw, str):
        return raw
    if not isinstance(raw, list):
        raise InvalidRequest("system must be a string or a list of text blocks", param="system")
    texts = []
    for k, block in enumerate(raw):
        if not (
            isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str)
        ):
            raise InvalidRequest("system blocks must be text blocks", param=f"system[{k}]")
        texts.append(block["text"])
    return "\n".join(texts)


def chat_messages(raw: Any) -> list[dict[str, Any]]:
    """Anthropic ``messages`` as chat messages."""
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest("messages: a non-empty list of messages is required", param="messages")
    out: list[dict[str, Any]] = []
    calls: set[str] = set()  # tool_use ids so far: a result must answer one (Anthropic refuses others)
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidRequest("a message must be an object", param=where)
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise InvalidRequest(
                f"{where}.role: Input should be 'user' or 'assistant'", param=f"{where}.role"
            )
        content = message.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise InvalidRequest("content must be a string or a list of blocks", param=f"{where}.content")
        blocks = [_block(b, f"{where}.content[{k}]") for k, b in enumerate(content)]
        turn = _assistant(blocks, where) if role == "assistant" else _user(blocks, where)
        for block in blocks:
            if block["type"] == "tool_use":
                calls.add(block["id"])
            elif block["type"] == "tool_result" and block["tool_use_id"] not in calls:
                raise InvalidRequest(
                    f"tool_result block(s) with id {block['tool_use_id']!r} answer no earlier tool_use block",
                    param=f"{block['_at']}.tool_use_id",
                )
        out.extend(turn)
    return out


def _block(block: Any, at: str) -> dict[str, Any]:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise InvalidRequest("a content block must be an object with a type", param=at)
    return {**block, "_at": at}


def _user(blocks: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """A user turn: its tool results first (as tool messages), then its text and images."""
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    result_images: list[dict[str, Any]] = []
    for block in blocks:
        kind, at = block["type"], block["_at"]
        if kind == "tool_result":
            message, images = _tool_result(block, at)
            tools.append(message)
            result_images += images
        elif kind == "text":
            parts.append(_text(block, at))
        elif kind == "image":
            parts.append(_image(block, at))
        elif kind in ("tool_use", "thinking", "redacted_thinking"):
            raise InvalidRequest(f"{kind} blocks belong to assistant messages", param=f"{at}.type")
        else:
            raise _unsupported(kind, at)
    parts = result_images + parts
    if not parts:
        return tools
    only_text = len(parts) == 1 and parts[0]["type"] == "text"
    return [*tools, {"role": "user", "content": parts[0]["text"] if only_text else parts}]


def _assistant(blocks: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in blocks:
        kind, at = block["type"], block["_at"]
        if kind == "text":
            texts.append(_text(block, at)["text"])
        elif kind == "tool_use":
            calls.append(_tool_use(block, at))
        elif kind in ("thinking", "redacted_thinking"):
            continue  # another model's reasoning (and its signature) means nothing to the next one
        elif kind in ("image", "tool_result"):
            raise InvalidRequest(f"{kind} blocks belong to user messages", param=f"{at}.type")
        else:
            raise _unsupported(kind, at)
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    elif message["content"] is None:
        message["content"] = ""
    return [message]


def _unsupported(kind: str, at: str) -> InvalidRequest:
    return InvalidRequest(
        f"content blocks of type '{kind}' cannot run on every model (text, image, tool_use and "
        "tool_result can)",
        param=f"{at}.type",
    )


def _text(block: dict[str, Any], at: str) -> dict[str, Any]:
    if not isinstance(block.get("text"), str):
        raise InvalidRequest(f"{at}.text: Field required", param=f"{at}.text")
    return {"type": "text", "text": block["text"]}


def _image(block: dict[str, Any], at: str) -> dict[str, Any]:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64":
        assert isinstance(source, dict)
        media, data = source.get("media_type"), source.get("data")
        if not isinstance(media, str) or not media.startswith("image/"):
            raise InvalidRequest("media_type must be an image type", param=f"{at}.source.media_type")
        if not isinstance(data, str) or not data:
            raise InvalidRequest("a base64 source needs data", param=f"{at}.source.data")
        return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}
    if kind == "url":
        assert isinstance(source, dict)
        if not isinstance(source.get("url"), str):
            raise InvalidRequest("a url source needs url", param=f"{at}.source.url")
        return {"type": "image_url", "image_url": {"url": source["url"]}}
    if kind == "file":
        raise InvalidRequest(
            "file sources need Anthropic's file store; send the image as base64 or a url",
            param=f"{at}.source.type",
        )
    raise InvalidRequest("an image source is base64 or url", param=f"{at}.source.type")


def _tool_use(block: dict[str, Any], at: str) -> dict[str, Any]:
    if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
        raise InvalidRequest("a tool_use block needs id and name", param=at)
    arguments = orjson.dumps(block.get("input") if block.get("input") is not None else {}).decode()
    return {
        "id": block["id"],
        "type": "function",
        "function": {"name": block["name"], "arguments": arguments},
    }


def _tool_result(block: dict[str, Any], at: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A tool result as a tool message, and the images it carried (for the user message after it)."""
    if not isinstance(block.get("tool_use_id"), str):
        raise InvalidRequest(f"{at}.tool_use_id: Field required", param=f"{at}.tool_use_id")
    content = block.get("content")
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for k, inner in enumerate(content):
            part = _block(inner, f"{at}.content[{k}]")
            if part["type"] == "text":
                texts.append(_text(part, part["_at"])["text"])
            elif part["type"] == "image":
                images.append(_image(part, part["_at"]))
            else:
                raise _unsupported(part["type"], part["_at"])
    elif content is not None:
        raise InvalidRequest("content must be a string or a list of blocks", param=f"{at}.content")
    text = "\n".join(texts)
    if block.get("is_error"):
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": text}, images


def _tools(body: dict[str, Any], job: dict[str, Any]) -> None:
    raw = body.get("tools")
    if raw is not None and not isinstance(raw, list):
        raise InvalidRequest("tools must be a list", param="tools")
    tools = []
    for i, tool in enumerate(raw or ()):
        at = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise InvalidRequest("a tool must be an object", param=at)
        if tool.get("type") not in (None, "custom"):
            raise InvalidRequest(
                f"the server tool {tool.get('type')!r} runs only on Anthropic's API; client tools "
                "(name, description, input_schema) run on every model",
                param=f"{at}.type",
            )
        fn: dict[str, Any] = {"name": tool.get("name")}
        if tool.get("description"):
            fn["description"] = tool["description"]
        if tool.get("input_schema") is not None:
            fn["parameters"] = tool["input_schema"]
        if tool.get("strict") is not None:
            fn["strict"] = tool["strict"]
        tools.append({"type": "function", "function": fn})
    if tools:
        job["tools"] = tools
    choice = body.get("tool_choice")
    if choice is None:
        return
    kind = choice.get("type") if isinstance(choice, dict) else None
    assert kind is None or isinstance(choice, dict)
    if kind == "tool":
        job["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    elif kind in TOOL_CHOICES:
        job["tool_choice"] = TOOL_CHOICES[kind]
    else:
        raise InvalidRequest("tool_choice.type must be auto, any, tool or none", param="tool_choice.type")
    if choice.get("disable_parallel_tool_use") is True and tools:
        job["parallel_tool_calls"] = False


def _thinking(raw: Any, job: dict[str, Any]) -> None:
    if raw is None:
        return
    if not isinstance(raw, dict):
        raise InvalidRequest("thinking must be an object", param="thinking")
    if raw.get("type") != "enabled":
        return  # disabled, or adaptive: the model's own default
    budget = raw.get("budget_tokens")
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
        raise InvalidRequest("thinking.budget_tokens: an integer is required", param="thinking.budget_tokens")
    job["reasoning_effort"] = next((effort for least, effort in BUDGETS if budget >= least), "low")


def _output_config(raw: Any, job: dict[str, Any]) -> None:
    if raw is None:
        return
    if not isinstance(raw, dict):
        raise InvalidRequest("output_config must be an object", param="output_config")
    effort = raw.get("effort")
    if effort is not None:
        if effort not in EFFORTS:
            raise InvalidRequest(
                "effort must be low, medium, high, xhigh or max", param="output_config.effort"
            )
        job["reasoning_effort"] = effort
    fmt = raw.get("format")
    if fmt is None:
        return
    if not (
        isinstance(fmt, dict) and fmt.get("type") == "json_schema" and isinstance(fmt.get("schema"), dict)
    ):
        raise InvalidRequest("format is {type: json_schema, schema: {...}}", param="output_config.format")
    job["response_format"] = {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": fmt["schema"]},
    }


# chat parameter → the Messages parameter a client sent it as (for errors raised on the chat job)
PARAM_NAMES: dict[str, str] = {
    "stop": "stop_sequences",
    "user": "metadata.user_id",
    "reasoning_effort": "thinking",
    "response_format": "output_config.format",
}


def messages_param(param: str | None) -> str | None:
    """A chat job's parameter path as the Messages parameter it came from."""
    if not param:
        return param
    cut = min((i for i in (param.find("."), param.find("[")) if i >= 0), default=len(param))
    head, rest = param[:cut], param[cut:]
    if head == "tools":
        return head + rest.replace(".function.parameters", ".input_schema").replace(".function", "", 1)
    if head == "messages":
        return "messages"  # system and tool results shift the indexes: the field is what we know
    return PARAM_NAMES.get(head, head) + rest
