"""Strict validation of a Gemini ``generateContent`` request, in Google's wording.

The request is protobuf JSON: a field may be spelled lowerCamelCase (``systemInstruction``) or as
its proto name (``system_instruction``), and both are accepted, as Google's API does; an unknown
name is refused (``Invalid JSON payload received. Unknown name "x" at 'contents[0]': Cannot find
field.``), as is a value of the wrong type (``Invalid value at 'generation_config.temperature'
(TYPE_FLOAT), "hot"``). ``MESSAGES`` describes every message type the simulator knows; ``Struct``
values (function args and responses, JSON schemas) are taken as they are.

Beyond types: contents must not be empty, roles are ``user``/``model``, a part carries exactly one
kind of data, ``stopSequences`` holds at most 5 entries, and function calling turns are paired:
a function call turn follows a user turn or a function response turn, and is answered by the very
next turn with as many function responses as it made calls.

``validate_generate_request`` returns the request normalised to lowerCamelCase keys.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

from llm_router.simulator.wire import Rejection

# field kinds: "str", "int", "float", "bool", "bytes", "any" (Struct / Value: taken as is),
# "enum:A|B", or the name of a message in MESSAGES; a trailing "[]" makes it repeated
MESSAGES: dict[str, dict[str, str]] = {
    "GenerateContentRequest": {
        "contents": "Content[]",
        "systemInstruction": "Content",
        "tools": "Tool[]",
        "toolConfig": "ToolConfig",
        "generationConfig": "GenerationConfig",
        "safetySettings": "SafetySetting[]",
        "cachedContent": "str",
    },
    "Content": {"role": "str", "parts": "Part[]"},
    "Part": {
        "text": "str",
        "inlineData": "Blob",
        "fileData": "FileData",
        "functionCall": "FunctionCall",
        "functionResponse": "FunctionResponse",
        "executableCode": "any",
        "codeExecutionResult": "any",
        "thought": "bool",
        "thoughtSignature": "bytes",
        "videoMetadata": "any",
        "partMetadata": "any",
        "mediaResolution": "any",
    },
    "Blob": {"mimeType": "str", "data": "bytes"},
    "FileData": {"mimeType": "str", "fileUri": "str", "displayName": "str"},
    "FunctionCall": {"id": "str", "name": "str", "args": "any"},
    "FunctionResponse": {
        "id": "str",
        "name": "str",
        "response": "any",
        "willContinue": "bool",
        "scheduling": "enum:SCHEDULING_UNSPECIFIED|SILENT|WHEN_IDLE|INTERRUPT",
        "parts": "any",
    },
    "Tool": {
        "functionDeclarations": "FunctionDeclaration[]",
        "googleSearch": "any",
        "googleSearchRetrieval": "any",
        "codeExecution": "any",
        "urlContext": "any",
        "fileSearch": "any",
        "googleMaps": "any",
        "computerUse": "any",
    },
    "FunctionDeclaration": {
        "name": "str",
        "description": "str",
        "parameters": "any",
        "parametersJsonSchema": "any",
        "response": "any",
        "responseJsonSchema": "any",
        "behavior": "enum:UNSPECIFIED|BLOCKING|NON_BLOCKING",
    },
    "ToolConfig": {"functionCallingConfig": "FunctionCallingConfig", "retrievalConfig": "any"},
    "FunctionCallingConfig": {
        "mode": "enum:MODE_UNSPECIFIED|AUTO|ANY|NONE|VALIDATED",
        "allowedFunctionNames": "str[]",
    },
    "GenerationConfig": {
        "stopSequences": "str[]",
        "responseMimeType": "str",
        "responseSchema": "any",
        "responseJsonSchema": "any",
        "responseModalities": "enum:MODALITY_UNSPECIFIED|TEXT|IMAGE|AUDIO[]",
        "candidateCount": "int",
        "maxOutputTokens": "int",
        "temperature": "float",
        "topP": "float",
        "topK": "int",
        "seed": "int",
        "presencePenalty": "float",
        "frequencyPenalty": "float",
        "responseLogprobs": "bool",
        "logprobs": "int",
        "enableEnhancedCivicAnswers": "bool",
        "speechConfig": "any",
        "thinkingConfig": "ThinkingConfig",
        "mediaResolution": "str",
        "imageConfig": "any",
    },
    "ThinkingConfig": {
        "includeThoughts": "bool",
        "thinkingBudget": "int",
        "thinkingLevel": "enum:THINKING_LEVEL_UNSPECIFIED|MINIMAL|LOW|MEDIUM|HIGH",
    },
    "SafetySetting": {"category": "str", "threshold": "str"},
}
_DATA_FIELDS = (
    "text",
    "inlineData",
    "fileData",
    "functionCall",
    "functionResponse",
    "executableCode",
    "codeExecutionResult",
)
_SCALAR_TYPES = {"str": "TYPE_STRING", "int": "TYPE_INT32", "float": "TYPE_FLOAT", "bool": "TYPE_BOOL"}
_CAMEL = re.compile(r"_([a-z])")
_SNAKE = re.compile(r"([A-Z])")
_REQUEST = "GenerateContentRequest"


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    """A validated request: the model from the path and the body with lowerCamelCase keys."""

    model: str
    body: dict[str, Any]

    @property
    def contents(self) -> list[dict[str, Any]]:
        return self.body["contents"]

    @property
    def config(self) -> dict[str, Any]:
        return self.body.get("generationConfig") or {}

    @property
    def prefill(self) -> str | None:
        """The text of a final ``model`` turn: the answer goes on from it."""
        last = self.contents[-1]
        if last.get("role") != "model":
            return None
        return "".join(p["text"] for p in last.get("parts") or () if isinstance(p.get("text"), str))


def invalid(message: str, param: str | None = None) -> Rejection:
    return Rejection(400, message, param=param)


def validate_generate_request(model: str, body: Any) -> GenerateRequest:
    """Check decoded JSON as Gemini does; raise ``Rejection(400)`` on the first problem."""
    if not isinstance(body, dict):
        raise invalid(f'Invalid JSON payload received. Expected an object, got "{type(body).__name__}".')
    normalised = _message(body, _REQUEST, "")
    contents = normalised.get("contents")
    if not contents:
        raise invalid(f"* {_REQUEST}.contents: contents is not specified\n", "contents")
    for i, content in enumerate(contents):
        _content(content, f"contents[{i}]")
    if "systemInstruction" in normalised:
        _content(normalised["systemInstruction"], "system_instruction")
    _turns(contents)
    _config(normalised.get("generationConfig") or {})
    _tool_config(normalised)
    return GenerateRequest(model=model, body=normalised)


def snake(name: str) -> str:
    return _SNAKE.sub(lambda m: "_" + m.group(1).lower(), name)


def _message(value: Any, kind: str, path: str) -> dict[str, Any]:
    fields = MESSAGES[kind]
    if not isinstance(value, dict):
        raise invalid(
            f"Invalid value at '{path}' "
            f"(type.googleapis.com/google.ai.generativelanguage.v1beta.{kind}), {value!r}"
        )
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = _CAMEL.sub(lambda m: m.group(1).upper(), key)
        spec = fields.get(name)
        if spec is None:
            where = f" at '{path}'" if path else ""
            raise invalid(
                f'Invalid JSON payload received. Unknown name "{key}"{where}: Cannot find field.', key
            )
        if name in out:
            raise invalid(f'Invalid JSON payload received. Duplicate field "{key}".', key)
        field_path = f"{path}.{snake(name)}" if path else snake(name)
        out[name] = _field(item, spec, field_path)
    return out


def _field(value: Any, spec: str, path: str) -> Any:
    if spec.endswith("[]"):
        if not isinstance(value, list):
            raise invalid(f"Invalid value at '{path}' (TYPE_LIST), {_show(value)}")
        return [_field(item, spec[:-2], f"{path}[{i}]") for i, item in enumerate(value)]
    if spec == "any":
        return value
    if spec in MESSAGES:
        return _message(value, spec, path)
    if spec.startswith("enum:"):
        if value not in spec[5:].split("|"):
            raise invalid(f"Invalid value at '{path}' (TYPE_ENUM), {_show(value)}")
        return value
    if spec == "bytes":
        if not (isinstance(value, str) and _base64(value)):
            raise invalid(
                f"Invalid value at '{path}' (TYPE_BYTES), Base64 decoding failed for {_show(value)}"
            )
        return value
    ok = {
        "str": isinstance(value, str),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, int | float) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
    }[spec]
    if not ok:
        raise invalid(f"Invalid value at '{path}' ({_SCALAR_TYPES[spec]}), {_show(value)}")
    return value


def _base64(text: str) -> bool:
    """Proto JSON bytes: standard or URL-safe base64, padded or not (so ``skip_thought_signature_validator``
    passes, as Google documents)."""
    padded = text + "=" * (-len(text) % 4)
    for alphabet in (None, b"-_"):
        try:
            base64.b64decode(padded, altchars=alphabet, validate=True)
            return True
        except (binascii.Error, ValueError):
            continue
    return False


def _show(value: Any) -> str:
    return (
        f'"{value}"'
        if isinstance(value, str)
        else str(value).lower()
        if isinstance(value, bool)
        else str(value)
    )


def _content(content: dict[str, Any], path: str) -> None:
    role = content.get("role")
    if role not in (None, "", "user", "model"):
        raise invalid("Please use a valid role: user, model.", f"{path}.role")
    parts = content.get("parts")
    if not parts:
        raise invalid(f"* {_REQUEST}.{path}.parts: contents.parts must not be empty.\n", f"{path}.parts")
    for k, part in enumerate(parts):
        given = [f for f in _DATA_FIELDS if f in part]
        if len(given) != 1:
            raise invalid(
                f"* {_REQUEST}.{path}.parts[{k}].data: required oneof field 'data' must have one "
                "initialized field\n",
                f"{path}.parts[{k}]",
            )
        if "text" in part and not part["text"] and len(parts) == 1:
            raise invalid(
                "Unable to submit request because it has an empty text parameter. Add a value to the "
                "parameter and try again.",
                f"{path}.parts[{k}].text",
            )
        call = part.get("functionCall") or part.get("functionResponse")
        if call is not None and not call.get("name"):
            raise invalid(f"* {_REQUEST}.{path}.parts[{k}]: name is not specified\n", f"{path}.parts[{k}]")
        blob = part.get("inlineData")
        if blob is not None and not (blob.get("mimeType") and blob.get("data")):
            raise invalid(f"* {_REQUEST}.{path}.parts[{k}].inline_data: mime_type and data are required\n")
        if part.get("fileData") is not None and not part["fileData"].get("fileUri"):
            raise invalid(f"* {_REQUEST}.{path}.parts[{k}].file_data.file_uri: file_uri is not specified\n")


def _turns(contents: list[dict[str, Any]]) -> None:
    """Function call turns follow a user or function response turn and are answered right after."""
    calls = 0  # function calls of the previous turn still to be answered
    previous = None
    for i, content in enumerate(contents):
        parts = content["parts"]
        n_calls = sum(1 for p in parts if "functionCall" in p)
        n_responses = sum(1 for p in parts if "functionResponse" in p)
        if n_calls and previous == "model-text":
            raise invalid(
                "Please ensure that function call turn comes immediately after a user turn or after a "
                "function response turn.",
                f"contents[{i}]",
            )
        if n_responses and not calls:
            raise invalid(
                "Please ensure that function response turn comes immediately after a function call turn.",
                f"contents[{i}]",
            )
        if calls and n_responses != calls:
            raise invalid(
                "Please ensure that the number of function response parts is equal to the number of function "
                "call parts of the function call turn.",
                f"contents[{i}]",
            )
        calls = n_calls
        previous = "model-text" if content.get("role") == "model" and not n_calls else content.get("role")


def _config(config: dict[str, Any]) -> None:
    where = f"* {_REQUEST}.generation_config"
    if len(config.get("stopSequences") or ()) > 5:
        raise invalid(
            f"{where}.stop_sequences: stop_sequences must have at most 5 entries\n", "stop_sequences"
        )
    for name, lo, hi in (("temperature", 0, 2), ("topP", 0, 1)):
        value = config.get(name)
        if value is not None and not lo <= value <= hi:
            raise invalid(f"{where}.{snake(name)}: {snake(name)} must be in the range [{lo}, {hi}]\n", name)
    for name in ("maxOutputTokens", "candidateCount"):
        value = config.get(name)
        if value is not None and value < 1:
            raise invalid(f"{where}.{snake(name)}: {snake(name)} must be positive\n", name)
    if (config.get("candidateCount") or 1) > 8:
        raise invalid(f"{where}.candidate_count: candidate_count must be at most 8\n", "candidateCount")
    mime = config.get("responseMimeType")
    if mime is not None and mime not in ("text/plain", "application/json", "text/x.enum"):
        raise invalid(
            f"{where}.response_mime_type: allowed mimetypes are `text/plain`, `application/json`, "
            "`text/x.enum`.\n",
            "responseMimeType",
        )
    if (config.get("responseSchema") or config.get("responseJsonSchema")) and mime not in (
        "application/json",
        "text/x.enum",
    ):
        raise invalid(
            f"{where}.response_schema: response_mime_type must be `application/json`\n", "responseSchema"
        )


def _tool_config(body: dict[str, Any]) -> None:
    names = {d["name"] for t in body.get("tools") or () for d in t.get("functionDeclarations") or ()}
    for t in body.get("tools") or ():
        for d in t.get("functionDeclarations") or ():
            if not d.get("name"):
                raise invalid(f"* {_REQUEST}.tools[0].function_declarations: name is not specified\n")
    config = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    allowed = config.get("allowedFunctionNames")
    if allowed and config.get("mode") not in ("ANY", "VALIDATED"):
        raise invalid(
            f"* {_REQUEST}.tool_config.function_calling_config.allowed_function_names: "
            "allowed_function_names may be set only when mode is ANY\n",
            "allowedFunctionNames",
        )
    for name in allowed or ():
        if name not in names:
            raise invalid(
                f"* {_REQUEST}.tool_config.function_calling_config.allowed_function_names: "
                f"function {name!r} is not declared\n",
                "allowedFunctionNames",
            )
