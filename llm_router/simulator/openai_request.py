"""Strict validation of an OpenAI chat-completions request body, with OpenAI's error wording.

The simulator must not bless a request the real API would refuse: every top-level parameter is
checked by the checker ``_PARAMS`` maps it to (unknown keys are refused), ``messages`` by
``openai_messages``, then the cross-field rules: ``stream_options`` needs ``stream``,
``tool_choice``/``parallel_tool_calls`` need ``tools``, ``function_call`` needs ``functions``,
a named choice must name an offered function, ``top_logprobs`` needs ``logprobs``, and
``json_object`` needs the word "json" in the messages. ``null`` means "not given" for every
optional parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llm_router.simulator.openai_checks import (
    Checker,
    array_too_long,
    boolean,
    enum,
    function_name,
    integer,
    invalid,
    invalid_type,
    invalid_value,
    json_object,
    missing,
    non_empty_list,
    number,
    string,
    string_list,
    unrecognized,
)
from llm_router.simulator.openai_messages import check_messages, mentions_json
from llm_router.simulator.tokens import count_text_tokens


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """The parts of a validated request that shape the reply."""

    model: str
    messages: list[dict[str, Any]]
    stream: bool
    include_usage: bool
    n: int
    max_tokens: int | None
    stop: list[str]
    tools: list[dict[str, Any]] | None
    tool_choice: Any
    functions: list[dict[str, Any]] | None
    function_call: Any
    response_format: dict[str, Any] | None
    seed: int | None
    service_tier: str | None = None
    prefill: str | None = None  # a final assistant message with ``prefix: true``: the answer so far
    # ``prediction``'s tokens: the reply never matches it, so OpenAI would reject (and bill) them all
    prediction_tokens: int = 0


def validate_chat_request(body: Any) -> ChatRequest:
    """Check decoded JSON like OpenAI does; raise ``Rejection(400)`` on the first problem."""
    if not isinstance(body, dict):
        raise invalid(None, "Invalid request body: expected a JSON object.", "invalid_type")
    for key, value in body.items():
        check = _PARAMS.get(key)
        if check is None:
            raise unrecognized(key)
        if value is not None or key in _REQUIRED:
            check(value, key)
    for key in _REQUIRED:
        if key not in body:
            raise missing(key)
    _check_cross_fields(body)
    stop = body.get("stop")
    max_tokens = body.get("max_completion_tokens")
    last = body["messages"][-1]
    prefill = last.get("content") if last.get("role") == "assistant" and last.get("prefix") is True else None
    return ChatRequest(
        model=body["model"],
        messages=body["messages"],
        stream=body.get("stream") is True,
        include_usage=bool((body.get("stream_options") or {}).get("include_usage")),
        n=body.get("n") or 1,
        max_tokens=max_tokens if max_tokens is not None else body.get("max_tokens"),
        stop=[stop] if isinstance(stop, str) else list(stop or ()),
        tools=body.get("tools"),
        tool_choice=body.get("tool_choice"),
        functions=body.get("functions"),
        function_call=body.get("function_call"),
        response_format=body.get("response_format"),
        seed=body.get("seed"),
        service_tier=body.get("service_tier"),
        prefill=prefill if isinstance(prefill, str) else None,
        prediction_tokens=_prediction_tokens(body.get("prediction")),
    )


def _prediction_tokens(prediction: Any) -> int:
    content = prediction.get("content") if isinstance(prediction, dict) else None
    if isinstance(content, str):
        return count_text_tokens(content)
    parts = content if isinstance(content, list) else ()
    return sum(count_text_tokens(p.get("text") or "") for p in parts if isinstance(p, dict))


def _model(value: Any, param: str) -> None:
    if value is None:
        raise invalid(param, "you must provide a model parameter", "missing_required_parameter")
    string(value, param)
    if not value:
        raise invalid(param, "Invalid 'model': expected a non-empty string.", "empty_string")


def _stop(value: Any, param: str) -> None:
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        raise invalid_type(param, value, "a string or an array of strings")
    if len(value) > 4:
        raise array_too_long(param, len(value), 4)
    string_list(value, param)


def _stream_options(value: Any, param: str) -> None:
    json_object(value, param)
    for key, item in value.items():
        if key not in ("include_usage", "include_obfuscation"):
            raise unrecognized(f"{param}.{key}")
        boolean(item, f"{param}.{key}")


def _response_format(value: Any, param: str) -> None:
    json_object(value, param)
    if "type" not in value:
        raise missing(f"{param}.type")
    enum("text", "json_object", "json_schema")(value["type"], f"{param}.type")
    if value["type"] != "json_schema":
        return
    spec = value.get("json_schema")
    if spec is None:
        raise missing(f"{param}.json_schema")
    json_object(spec, f"{param}.json_schema")
    function_name(spec.get("name"), f"{param}.json_schema.name")
    _optional_fields(
        spec, f"{param}.json_schema", {"schema": json_object, "strict": boolean, "description": string}
    )


def _function_definition(value: Any, param: str) -> None:
    json_object(value, param)
    function_name(value.get("name"), f"{param}.name")
    _optional_fields(value, param, {"description": string, "parameters": json_object, "strict": boolean})


def _optional_fields(value: dict[str, Any], param: str, checks: dict[str, Checker]) -> None:
    for key, check in checks.items():
        if value.get(key) is not None:
            check(value[key], f"{param}.{key}")


def _tools(value: Any, param: str) -> None:
    for i, tool in enumerate(non_empty_list(value, param)):
        where = f"{param}[{i}]"
        json_object(tool, where)
        for key in ("type", "function"):
            if key not in tool:
                raise missing(f"{where}.{key}")
        enum("function")(tool["type"], f"{where}.type")
        _function_definition(tool["function"], f"{where}.function")


def _functions(value: Any, param: str) -> None:
    for i, function in enumerate(non_empty_list(value, param)):
        _function_definition(function, f"{param}[{i}]")


def _tool_choice(value: Any, param: str) -> None:
    if isinstance(value, str):
        enum("none", "auto", "required")(value, param)
        return
    json_object(value, param)
    if value.get("type") != "function":
        raise invalid_value(f"{param}.type", value.get("type"), ("function",))
    if value.get("function") is None:
        raise missing(f"{param}.function")
    json_object(value["function"], f"{param}.function")
    function_name(value["function"].get("name"), f"{param}.function.name")


def _function_call(value: Any, param: str) -> None:
    if isinstance(value, str):
        enum("none", "auto")(value, param)
        return
    json_object(value, param)
    function_name(value.get("name"), f"{param}.name")


def _check_cross_fields(body: dict[str, Any]) -> None:
    if body.get("stream_options") is not None and body.get("stream") is not True:
        raise invalid(
            "stream_options",
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "invalid_value",
        )
    for key, needs in (
        ("tool_choice", "tools"),
        ("parallel_tool_calls", "tools"),
        ("function_call", "functions"),
    ):
        if body.get(key) is not None and not body.get(needs):
            raise invalid(
                key,
                f"Invalid value for '{key}': '{key}' is only allowed when '{needs}' are specified.",
                "invalid_value",
            )
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        _offered(choice["function"]["name"], [t["function"]["name"] for t in body["tools"]], "tool_choice")
    call = body.get("function_call")
    if isinstance(call, dict):
        _offered(call["name"], [f["name"] for f in body["functions"]], "function_call")
    if body.get("top_logprobs") is not None and body.get("logprobs") is not True:
        raise invalid(
            "top_logprobs",
            "Invalid value for 'top_logprobs': 'logprobs' must be set to true when 'top_logprobs' is used.",
            "invalid_value",
        )
    response_format = body.get("response_format")
    if response_format and response_format["type"] == "json_object" and not mentions_json(body["messages"]):
        raise invalid(
            "messages",
            "'messages' must contain the word 'json' in some form, to use 'response_format' of "
            "type 'json_object'.",
        )


def _offered(name: str, offered: list[str], param: str) -> None:
    if name not in offered:
        raise invalid(
            param,
            f"Invalid value for '{param}': function '{name}' is not among the offered functions.",
            "invalid_value",
        )


_REQUIRED = ("model", "messages")
_PARAMS: dict[str, Checker] = {
    "model": _model,
    "messages": check_messages,
    "temperature": number(0, 2),
    "top_p": number(0, 1),
    "n": integer(1, 128),
    "max_tokens": integer(1),
    "max_completion_tokens": integer(1),
    "stop": _stop,
    "frequency_penalty": number(-2, 2),
    "presence_penalty": number(-2, 2),
    "seed": integer(),
    "user": string,
    "stream": boolean,
    "stream_options": _stream_options,
    "tools": _tools,
    "tool_choice": _tool_choice,
    "parallel_tool_calls": boolean,
    "functions": _functions,
    "function_call": _function_call,
    "response_format": _response_format,
    "logprobs": boolean,
    "top_logprobs": integer(0, 20),
    "logit_bias": json_object,
    "reasoning_effort": enum("none", "minimal", "low", "medium", "high", "xhigh", "max"),
    "service_tier": enum("auto", "default", "flex", "scale", "priority", "fast"),
    "modalities": string_list,
    "metadata": json_object,
    "store": boolean,
    "prediction": json_object,
    "audio": json_object,
    "verbosity": enum("low", "medium", "high"),
    "web_search_options": json_object,
    "prompt_cache_key": string,
    "prompt_cache_retention": enum("in_memory", "24h"),
    "prompt_cache_options": json_object,
    "moderation": json_object,
    "safety_identifier": string,
}
