"""Gemini-native jobs: a ``generateContent`` body in, our chat job out; a chat.completion back out.

The product exposes ``/v1/models/{model}:generateContent``, so a job may arrive as a Gemini request
(``contents``, ``systemInstruction``, ``generationConfig``, ``tools``, ``toolConfig``) plus ``model``
and any of our reserved keys. ``gemini_to_chat`` turns it into the common chat job (with
``answer_format: "gemini"``) so it can run on any model of the catalog; ``chat_completion_to_gemini``
turns the record's OpenAI ``chat.completion`` into a Gemini ``GenerateContentResponse``.

Field names are accepted in lowerCamelCase or as proto names (``system_instruction``), as Google's
API does. Renames are the ``CONFIG`` table; code is kept for the structural moves (turns to
messages, function calls and responses paired by id or name, images to ``image_url`` parts).
Accepted but not translated, since chat completions have no equivalent: ``topK``,
``safetySettings``, ``includeThoughts``. Refused with the Gemini field path as ``param``: what
cannot run elsewhere (``cachedContent``, built-in tools such as ``googleSearch``, non-image media,
code execution parts).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson

from llm_router.contract import RESERVED_KEYS
from llm_router.errors import InvalidRequest

_CAMEL = re.compile(r"_([a-z])")
_TOP_LEVEL = frozenset(
    {
        "contents",
        "systemInstruction",
        "generationConfig",
        "tools",
        "toolConfig",
        "safetySettings",
        "cachedContent",
    }
)
_IGNORED_CONFIG = frozenset({"topK", "includeThoughts", "responseModalities", "mediaResolution"})


def _effort(config: dict[str, Any]) -> str | None:
    """thinkingConfig → reasoning_effort (the nearest of our buckets; dynamic thinking is the default)."""
    level = config.get("thinkingLevel")
    if isinstance(level, str) and level.upper() in _LEVELS:
        return _LEVELS[level.upper()]
    budget = config.get("thinkingBudget")
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 0:
        return None
    return next(effort for limit, effort in _BUDGETS if budget <= limit)


_LEVELS = {"MINIMAL": "minimal", "LOW": "low", "MEDIUM": "medium", "HIGH": "high"}
_BUDGETS = ((512, "minimal"), (1024, "low"), (8192, "medium"), (1 << 62, "high"))

# generationConfig field → (chat parameter, conversion); response formats and thinking are code below
CONFIG: dict[str, tuple[str, Callable[[Any], Any] | None]] = {
    "temperature": ("temperature", None),
    "topP": ("top_p", None),
    "maxOutputTokens": ("max_tokens", None),
    "stopSequences": ("stop", None),
    "candidateCount": ("n", None),
    "seed": ("seed", None),
    "presencePenalty": ("presence_penalty", None),
    "frequencyPenalty": ("frequency_penalty", None),
    "responseLogprobs": ("logprobs", None),
    "logprobs": ("top_logprobs", None),
}
FUNCTION_MODES: dict[str, str] = {"AUTO": "auto", "NONE": "none", "ANY": "required", "VALIDATED": "auto"}

# chat finish_reason → Gemini finishReason
FINISH_REASONS: dict[str, str] = {
    "stop": "STOP",
    "tool_calls": "STOP",
    "function_call": "STOP",
    "length": "MAX_TOKENS",
    "content_filter": "SAFETY",
}


def gemini_to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """A Gemini generateContent body (+ ``model`` and reserved keys) as our chat job dict."""
    job: dict[str, Any] = {}
    gemini: dict[str, Any] = {}
    for key, value in body.items():
        if key == "model" or key in RESERVED_KEYS:
            job[key] = value
            continue
        name = _camel(key)
        if name not in _TOP_LEVEL:
            raise InvalidRequest(f'Unknown name "{key}": Cannot find field.', param=key)
        gemini[name] = value
    if gemini.get("cachedContent"):
        raise InvalidRequest(
            "cachedContent refers to a Gemini cache and cannot run elsewhere", param="cachedContent"
        )
    messages: list[dict[str, Any]] = []
    system = gemini.get("systemInstruction")
    if system is not None:
        texts = [t for t in _texts(_obj(system, "systemInstruction"), "systemInstruction")]
        if texts:
            messages.append({"role": "system", "content": "\n".join(texts)})
    contents = gemini.get("contents")
    if not isinstance(contents, list) or not contents:
        raise InvalidRequest("contents must be a non-empty list of turns", param="contents")
    messages.extend(_messages(contents))
    job["messages"] = messages
    _config(gemini.get("generationConfig"), job)
    _tools(gemini, job)
    job["answer_format"] = "gemini"
    return job


def _camel(name: str) -> str:
    return _CAMEL.sub(lambda m: m.group(1).upper(), name)


def _obj(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequest(f"{param} must be an object", param=param)
    return {_camel(k): v for k, v in value.items()}


def _parts(content: dict[str, Any], where: str) -> list[dict[str, Any]]:
    parts = content.get("parts")
    if not isinstance(parts, list) or not parts:
        raise InvalidRequest("a turn needs a non-empty list of parts", param=f"{where}.parts")
    return [_obj(p, f"{where}.parts[{k}]") for k, p in enumerate(parts)]


def _texts(content: dict[str, Any], where: str) -> list[str]:
    out = []
    for k, part in enumerate(_parts(content, where)):
        if not isinstance(part.get("text"), str):
            raise InvalidRequest("only text parts are allowed here", param=f"{where}.parts[{k}]")
        out.append(part["text"])
    return out


def _messages(contents: list[Any]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    pending: list[tuple[str, str]] = []  # (call id, function name) of the last model turn's calls
    for i, raw in enumerate(contents):
        where = f"contents[{i}]"
        content = _obj(raw, where)
        role = content.get("role") or "user"
        if role not in ("user", "model"):
            raise InvalidRequest("role must be user or model", param=f"{where}.role")
        parts = _parts(content, where)
        if role == "model":
            message, pending = _model_turn(parts, i, where)
            messages.append(message)
            continue
        user_parts: list[dict[str, Any]] = []
        for k, part in enumerate(parts):
            at = f"{where}.parts[{k}]"
            if part.get("thought"):
                continue
            if isinstance(part.get("text"), str):
                user_parts.append({"type": "text", "text": part["text"]})
            elif "inlineData" in part or "fileData" in part:
                user_parts.append(_image(part, at))
            elif "functionResponse" in part:
                messages.append(
                    _tool_message(_obj(part["functionResponse"], f"{at}.functionResponse"), pending, at)
                )
            else:
                raise InvalidRequest("this kind of part cannot run on every model", param=at)
        if user_parts:
            only_text = len(user_parts) == 1 and user_parts[0]["type"] == "text"
            messages.append({"role": "user", "content": user_parts[0]["text"] if only_text else user_parts})
    return messages


def _model_turn(
    parts: list[dict[str, Any]], index: int, where: str
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    texts, calls = [], []
    for k, part in enumerate(parts):
        if part.get("thought"):
            continue
        if isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif "functionCall" in part:
            call = _obj(part["functionCall"], f"{where}.parts[{k}].functionCall")
            if not isinstance(call.get("name"), str):
                raise InvalidRequest(
                    "a functionCall needs a name", param=f"{where}.parts[{k}].functionCall.name"
                )
            call_id = call.get("id") if isinstance(call.get("id"), str) else f"call_{index}_{k}"
            arguments = orjson.dumps(call.get("args") or {}).decode()
            calls.append(
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": call["name"], "arguments": arguments},
                }
            )
        else:
            raise InvalidRequest("this kind of part cannot run on every model", param=f"{where}.parts[{k}]")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    elif message["content"] is None:
        message["content"] = ""
    return message, [(c["id"], c["function"]["name"]) for c in calls]


def _tool_message(response: dict[str, Any], pending: list[tuple[str, str]], at: str) -> dict[str, Any]:
    name, given_id = response.get("name"), response.get("id")
    match = next((p for p in pending if p[0] == given_id), None) or next(
        (p for p in pending if p[1] == name), None
    )
    if match is None:
        raise InvalidRequest(
            f"functionResponse {name!r} answers no functionCall of the turn before",
            param=f"{at}.functionResponse",
        )
    pending.remove(match)
    value = response.get("response")
    if isinstance(value, dict) and set(value) == {"output"} and isinstance(value["output"], str):
        content = value["output"]  # Gemini's convention for a plain result
    else:
        content = orjson.dumps(value if value is not None else {}).decode()
    return {"role": "tool", "tool_call_id": match[0], "content": content}


def _image(part: dict[str, Any], at: str) -> dict[str, Any]:
    if "inlineData" in part:
        blob = _obj(part["inlineData"], f"{at}.inlineData")
        mime, data = blob.get("mimeType"), blob.get("data")
        if not isinstance(mime, str) or not mime.startswith("image/"):
            raise InvalidRequest("only images can be sent inline", param=f"{at}.inlineData.mimeType")
        if not isinstance(data, str) or not data:
            raise InvalidRequest("inlineData needs base64 data", param=f"{at}.inlineData.data")
        return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}
    file = _obj(part["fileData"], f"{at}.fileData")
    uri, mime = file.get("fileUri"), file.get("mimeType")
    if not isinstance(uri, str) or not uri.startswith("https://"):
        raise InvalidRequest("fileData must be an https URL of an image", param=f"{at}.fileData.fileUri")
    if mime is not None and not (isinstance(mime, str) and mime.startswith("image/")):
        raise InvalidRequest("only images are accepted", param=f"{at}.fileData.mimeType")
    return {"type": "image_url", "image_url": {"url": uri}}


def _config(raw: Any, job: dict[str, Any]) -> None:
    if raw is None:
        return
    config = _obj(raw, "generationConfig")
    for key, value in config.items():
        param = f"generationConfig.{key}"
        if key in CONFIG:
            name, convert = CONFIG[key]
            job[name] = convert(value) if convert else value
        elif key == "thinkingConfig":
            effort = _effort(_obj(value, param))
            if effort:
                job["reasoning_effort"] = effort
        elif key in ("responseMimeType", "responseSchema", "responseJsonSchema"):
            continue
        elif key not in _IGNORED_CONFIG:
            raise InvalidRequest(f'Unknown name "{key}" at generationConfig', param=param)
    if isinstance(job.get("stop"), list) and len(job["stop"]) > 4:
        raise InvalidRequest(
            "at most 4 stop sequences run on every model", param="generationConfig.stopSequences"
        )
    mime = config.get("responseMimeType")
    schema = config.get("responseJsonSchema") or config.get("responseSchema")
    if mime == "application/json":
        if schema:
            spec = {"name": "response", "schema": _lower_types(schema)}
            job["response_format"] = {"type": "json_schema", "json_schema": spec}
        else:
            job["response_format"] = {"type": "json_object"}
    elif mime not in (None, "text/plain"):
        raise InvalidRequest(
            f"responseMimeType {mime!r} is not supported", param="generationConfig.responseMimeType"
        )


def _tools(gemini: dict[str, Any], job: dict[str, Any]) -> None:
    tools = []
    for t, raw in enumerate(gemini.get("tools") or ()):
        tool = _obj(raw, f"tools[{t}]")
        for key in tool:
            if key != "functionDeclarations":
                raise InvalidRequest(
                    f"the built-in tool {key} runs only on Gemini", param=f"tools[{t}].{key}"
                )
        for d, decl_raw in enumerate(tool.get("functionDeclarations") or ()):
            decl = _obj(decl_raw, f"tools[{t}].functionDeclarations[{d}]")
            fn: dict[str, Any] = {"name": decl.get("name")}
            if decl.get("description"):
                fn["description"] = decl["description"]
            schema = decl.get("parametersJsonSchema") or decl.get("parameters")
            if schema:
                fn["parameters"] = _lower_types(schema)
            tools.append({"type": "function", "function": fn})
    if tools:
        job["tools"] = tools
    raw = gemini.get("toolConfig")
    config = (
        _obj(_obj(raw, "toolConfig").get("functionCallingConfig") or {}, "toolConfig.functionCallingConfig")
        if raw
        else {}
    )
    mode = config.get("mode")
    if mode is None or not tools:
        return
    if mode not in FUNCTION_MODES:
        raise InvalidRequest(
            f"unknown function calling mode {mode!r}", param="toolConfig.functionCallingConfig.mode"
        )
    allowed = config.get("allowedFunctionNames") or []
    if mode == "ANY" and len(allowed) == 1:
        job["tool_choice"] = {"type": "function", "function": {"name": allowed[0]}}
    else:
        job["tool_choice"] = FUNCTION_MODES[mode]


def _lower_types(schema: Any) -> Any:
    """Gemini's OpenAPI schemas spell types in capitals (``OBJECT``); JSON schema wants lower case."""
    if isinstance(schema, list):
        return [_lower_types(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    return {
        k: (v.lower() if k == "type" and isinstance(v, str) else _lower_types(v)) for k, v in schema.items()
    }


# -- answers ----------------------------------------------------------------------------------


def chat_completion_to_gemini(completion: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` (a record's response) as a Gemini ``GenerateContentResponse``."""
    candidates = []
    for choice in completion.get("choices") or ():
        message = choice.get("message") or {}
        parts: list[dict[str, Any]] = []
        if message.get("content"):
            parts.append({"text": message["content"]})
        calls = [c["function"] | {"id": c.get("id")} for c in message.get("tool_calls") or ()]
        if message.get("function_call"):
            calls.append(message["function_call"])
        for call in calls:
            try:
                args = orjson.loads(call.get("arguments") or "{}")
            except orjson.JSONDecodeError:
                args = {"arguments": call.get("arguments")}
            function_call = {
                "name": call["name"],
                "args": args if isinstance(args, dict) else {"value": args},
            }
            if call.get("id"):
                function_call["id"] = call["id"]
            parts.append({"functionCall": function_call})
        candidates.append(
            {
                "content": {"role": "model", "parts": parts},
                "finishReason": FINISH_REASONS.get(choice.get("finish_reason") or "stop", "OTHER"),
                "index": choice.get("index", len(candidates)),
            }
        )
    usage = completion.get("usage") or {}
    prompt = int(usage.get("prompt_tokens") or 0)
    completion_tokens = int(usage.get("completion_tokens") or 0)
    reasoning = int((usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    metadata: dict[str, Any] = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": completion_tokens - reasoning,
        "totalTokenCount": prompt + completion_tokens,
    }
    if cached:
        metadata["cachedContentTokenCount"] = cached
    if reasoning:
        metadata["thoughtsTokenCount"] = reasoning
    return {
        "candidates": candidates,
        "usageMetadata": metadata,
        "modelVersion": completion.get("model"),
        "responseId": completion.get("id"),
    }
