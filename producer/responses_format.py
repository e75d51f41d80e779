"""The Responses API's requests as chat jobs: a ``POST /v1/responses`` body in, our chat job out.

A Response is a chat job (``answer_format: "responses"``) whose id is ``resp_…``, so it runs on any
catalog model with fallback, credits and a record like any other; ``responses_answer`` renders the
record back as a ``Response``. ``responses_to_chat`` is pure: the HTTP front reads the record that
``previous_response_id`` names and passes its conversation (``conversation_of``) as ``history``.

What maps where (the README's Responses section has the table):

* ``input`` (a string, or items: messages with ``input_text``/``input_image``/``output_text`` parts,
  ``function_call`` and ``function_call_output``) → ``messages``; ``instructions`` → a system
  message first, which a later response chained by ``previous_response_id`` does not inherit (as
  OpenAI documents); ``reasoning`` items (ours never carry any) are dropped.
* function ``tools`` → chat tools; ``tool_choice`` (``allowed_tools`` narrows the tool list);
  ``text.format`` → ``response_format``; ``text.verbosity``, ``reasoning.effort``; the renames in
  ``RENAMES``; ``metadata`` is the job's metadata.
* accepted without effect: ``IGNORED``. Refused, naming the field: hosted tools and their items,
  ``conversation`` and ``prompt`` (stored at OpenAI), ``item_reference``, input files.

What the front must remember to render the record back (whether the first message is the
instructions, ``previous_response_id``, ``background``) rides in the job's ``metadata`` under
``FRONT_KEY``; the renderer leaves it out of the ``metadata`` it shows.
"""

from __future__ import annotations

from typing import Any

from llm_router.contract import RESERVED_KEYS
from llm_router.errors import InvalidRequest

RESPONSE_PREFIX = "resp_"
FRONT_KEY = "llm_router_responses"
ANSWER_FORMAT = "responses"

# Responses field → chat field: the same value under another name (or the same name)
RENAMES: dict[str, str] = {
    "model": "model",
    "temperature": "temperature",
    "top_p": "top_p",
    "max_output_tokens": "max_tokens",
    "parallel_tool_calls": "parallel_tool_calls",
    "user": "user",
    "safety_identifier": "safety_identifier",
    "prompt_cache_key": "prompt_cache_key",
    "prompt_cache_retention": "prompt_cache_retention",
    "service_tier": "service_tier",
    "store": "store",
    "stream": "stream",
}
# accepted, no effect: answers carry no logprobs, no hosted-tool output, and every job is stored
IGNORED = frozenset(
    {
        "include",
        "truncation",
        "max_tool_calls",
        "stream_options",
        "top_logprobs",
        "background_options",
        "moderation",
        "image",
        "access_programs",
        "context_management",
        "prompt_cache_options",
    }
)
# handled by code below
STRUCTURAL = frozenset(
    {"input", "instructions", "tools", "tool_choice", "text", "reasoning", "metadata", "previous_response_id"}
)
FRONT_FIELDS = frozenset({"background"})
REFUSED: dict[str, str] = {
    "conversation": "conversations are stored at OpenAI; chain responses with previous_response_id",
    "prompt": "prompt templates are stored at OpenAI; send the input itself",
}
# our reserved keys a Responses body may carry too (the SDK's extra_body): routing and caching
OURS = frozenset(RESERVED_KEYS - {"job_id", "tenant", "answer_format", "metadata"})
CHAT_TOOL_CHOICES = frozenset({"none", "auto", "required"})


def responses_to_chat(body: dict[str, Any], *, history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A Responses API body as our chat job; ``history``: the conversation of the response that
    ``previous_response_id`` names (``conversation_of`` its record)."""
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
        elif key not in IGNORED and key not in STRUCTURAL and key not in FRONT_FIELDS:
            raise InvalidRequest(f"Unknown parameter: '{key}'.", param=key)
    if "model" not in job:
        raise InvalidRequest("Missing required parameter: 'model'.", param="model")
    messages: list[dict[str, Any]] = []
    front: dict[str, Any] = {}
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise InvalidRequest("instructions must be a string", param="instructions")
        messages.append({"role": "system", "content": instructions})
        front["instructions"] = True
    messages.extend(history or ())
    if history:
        front["history"] = len(history)  # what of the messages came before this response's input
    if body.get("input") is None:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input")
    messages.extend(input_messages(body["input"], known_calls=_call_ids(history or ())))
    job["messages"] = messages
    _tools(body, job)
    _text(body.get("text"), job)
    _reasoning(body.get("reasoning"), job)
    previous = body.get("previous_response_id")
    if previous is not None:
        front["previous_response_id"] = previous
    if body.get("background") is not None:
        if not isinstance(body["background"], bool):
            raise InvalidRequest("background must be a boolean", param="background")
        front["background"] = body["background"]
    metadata = _metadata(body.get("metadata"))
    if metadata or front:
        job["metadata"] = {**(metadata or {}), **({FRONT_KEY: front} if front else {})}
    job["answer_format"] = ANSWER_FORMAT
    return job


# OpenAI's documented limits: what a Response's metadata may hold, every client can read back
MAX_METADATA = (16, 64, 512)  # pairs, key length, value length


def _metadata(raw: Any) -> dict[str, str] | None:
    if raw is None:
        return None
    pairs, key_len, value_len = MAX_METADATA
    if not isinstance(raw, dict) or len(raw) > pairs:
        raise InvalidRequest(f"metadata is an object of at most {pairs} string pairs", param="metadata")
    for key, value in raw.items():
        if key == FRONT_KEY:
            raise InvalidRequest(f"the metadata key {FRONT_KEY!r} is reserved", param=f"metadata.{key}")
        if len(key) > key_len or not isinstance(value, str) or len(value) > value_len:
            raise InvalidRequest(
                f"metadata keys are at most {key_len} characters, values strings of at most {value_len}",
                param=f"metadata.{key}",
            )
    return raw


# -- input items --------------------------------------------------------------------------------


def input_messages(raw: Any, *, known_calls: set[str] | None = None) -> list[dict[str, Any]]:
    """``input`` (a string or a list of items) as chat messages."""
    if isinstance(raw, str):
        return [{"role": "user", "content": raw}]
    if not isinstance(raw, list):
        raise InvalidRequest("input must be a string or a list of input items", param="input")
    messages: list[dict[str, Any]] = []
    calls = set(known_calls or ())
    for i, item in enumerate(raw):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest("an input item must be an object", param=where)
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            messages.append(_message(item, where))
        elif kind == "function_call":
            call = _function_call(item, where)
            calls.add(call["id"])
            _attach_call(messages, call)
        elif kind == "function_call_output":
            messages.append(_call_output(item, where, calls))
        elif kind == "reasoning":
            continue  # reasoning we never produced; no model of another vendor could read it
        elif kind == "item_reference":
            raise InvalidRequest(
                "item_reference needs OpenAI's item store: send the item itself, or chain with "
                "previous_response_id",
                param=f"{where}.type",
            )
        elif isinstance(kind, str):
            raise InvalidRequest(
                f"input items of type '{kind}' belong to OpenAI's hosted tools, which run only there",
                param=f"{where}.type",
            )
        else:
            raise InvalidRequest("an input item needs a type (or a role)", param=f"{where}.type")
    return messages


ROLES = frozenset({"user", "assistant", "system", "developer"})


def _message(item: dict[str, Any], where: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in ROLES:
        raise InvalidRequest("role must be user, assistant, system or developer", param=f"{where}.role")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise InvalidRequest("content must be a string or a list of parts", param=f"{where}.content")
    if role == "assistant":
        return _assistant(content, where)
    parts = [_input_part(part, f"{where}.content[{k}]", role) for k, part in enumerate(content)]
    if len(parts) == 1 and parts[0]["type"] == "text":
        return {"role": role, "content": parts[0]["text"]}
    return {"role": role, "content": parts}


def _input_part(part: Any, at: str, role: str) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise InvalidRequest("a content part must be an object", param=at)
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        if not isinstance(part.get("text"), str):
            raise InvalidRequest("a text part needs text", param=f"{at}.text")
        return {"type": "text", "text": part["text"]}
    if kind == "input_image":
        if role != "user":
            raise InvalidRequest("only user messages may carry images", param=at)
        url = part.get("image_url")
        if part.get("file_id") is not None and url is None:
            raise InvalidRequest(
                "images by file_id need OpenAI's file store; send image_url (a URL or a data URI)",
                param=f"{at}.file_id",
            )
        if not isinstance(url, str):
            raise InvalidRequest("input_image needs image_url", param=f"{at}.image_url")
        image: dict[str, Any] = {"url": url}
        if part.get("detail") in ("low", "high", "auto"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        raise InvalidRequest("input files are not supported: send text or images", param=f"{at}.type")
    raise InvalidRequest(f"unknown content part type {kind!r}", param=f"{at}.type")


def _assistant(content: list[Any], where: str) -> dict[str, Any]:
    """An assistant message a client sends back (the ``output`` of an earlier response)."""
    texts: list[str] = []
    refusal: str | None = None
    for k, part in enumerate(content):
        at = f"{where}.content[{k}]"
        if isinstance(part, dict) and part.get("type") == "refusal":
            refusal = str(part.get("refusal") or "")
            continue
        texts.append(_input_part(part, at, "assistant")["text"])
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
    if refusal is not None:
        message["refusal"] = refusal
        if not texts:
            message["content"] = None
    return message


def _function_call(item: dict[str, Any], where: str) -> dict[str, Any]:
    for key in ("call_id", "name", "arguments"):
        if not isinstance(item.get(key), str):
            raise InvalidRequest(f"a function_call item needs {key} (a string)", param=f"{where}.{key}")
    return {
        "id": item["call_id"],
        "type": "function",
        "function": {"name": item["name"], "arguments": item["arguments"]},
    }


def _attach_call(messages: list[dict[str, Any]], call: dict[str, Any]) -> None:
    """A function call joins the assistant turn before it (its text, or its other calls)."""
    last = messages[-1] if messages else None
    if last is not None and last["role"] == "assistant":
        content = None if last.get("content") == "" else last.get("content")
        messages[-1] = {**last, "content": content, "tool_calls": [*(last.get("tool_calls") or ()), call]}
        return
    messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _call_output(item: dict[str, Any], where: str, calls: set[str]) -> dict[str, Any]:
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or call_id not in calls:
        raise InvalidRequest(
            f"No tool call found for function call output with call_id {call_id}.",
            param=f"{where}.call_id",
        )
    output = item.get("output")
    if isinstance(output, list):
        texts = []
        for k, part in enumerate(output):
            at = f"{where}.output[{k}]"
            if not (isinstance(part, dict) and part.get("type") in ("input_text", "output_text", "text")):
                raise InvalidRequest("a function call output runs everywhere only as text", param=at)
            texts.append(str(part.get("text") or ""))
        output = "".join(texts)
    if not isinstance(output, str):
        raise InvalidRequest("output must be a string or a list of text parts", param=f"{where}.output")
    return {"role": "tool", "tool_call_id": call_id, "content": output}


def _call_ids(messages: Any) -> set[str]:
    return {
        call["id"]
        for m in messages
        for call in (m.get("tool_calls") or ())
        if isinstance(call, dict) and isinstance(call.get("id"), str)
    }


# -- tools, formats, reasoning ------------------------------------------------------------------


def _tools(body: dict[str, Any], job: dict[str, Any]) -> None:
    raw = body.get("tools")
    tools: list[dict[str, Any]] = []
    if raw is not None and not isinstance(raw, list):
        raise InvalidRequest("tools must be a list", param="tools")
    for i, tool in enumerate(raw or ()):
        at = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise InvalidRequest("a tool must be an object", param=at)
        if tool.get("type") != "function":
            raise InvalidRequest(
                f"tools of type {tool.get('type')!r} are OpenAI's hosted tools, which run only there; "
                "function tools run on every model",
                param=f"{at}.type",
            )
        fn = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
        tools.append({"type": "function", "function": fn})
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        tools, choice = _allowed(tools, choice)
    if tools:
        job["tools"] = tools
    if choice is None:
        return
    if isinstance(choice, str) and choice in CHAT_TOOL_CHOICES:
        job["tool_choice"] = choice
    elif isinstance(choice, dict) and choice.get("type") == "function":
        job["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    else:
        raise InvalidRequest(
            "tool_choice must be none, auto, required, a function or allowed_tools", param="tool_choice"
        )


def _allowed(tools: list[dict[str, Any]], choice: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """``allowed_tools``: the model sees only the listed functions, in the given mode."""
    allowed = choice.get("tools")
    if not isinstance(allowed, list) or not all(
        isinstance(t, dict) and t.get("type") == "function" for t in allowed
    ):
        raise InvalidRequest("allowed_tools lists function tools by name", param="tool_choice.tools")
    names = {t.get("name") for t in allowed}
    mode = choice.get("mode", "auto")
    if mode not in ("auto", "required"):
        raise InvalidRequest("mode must be auto or required", param="tool_choice.mode")
    return [t for t in tools if t["function"].get("name") in names], mode


def _text(raw: Any, job: dict[str, Any]) -> None:
    if raw is None:
        return
    if not isinstance(raw, dict):
        raise InvalidRequest("text must be an object", param="text")
    if raw.get("verbosity") is not None:
        job["verbosity"] = raw["verbosity"]
    fmt = raw.get("format")
    if fmt is None:
        return
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return
    if kind == "json_object":
        job["response_format"] = {"type": "json_object"}
        return
    if kind != "json_schema":
        raise InvalidRequest("format.type must be text, json_object or json_schema", param="text.format.type")
    if not isinstance(fmt.get("schema"), dict):
        raise InvalidRequest("a json_schema format needs schema (an object)", param="text.format.schema")
    spec = {k: fmt[k] for k in ("name", "schema", "description", "strict") if fmt.get(k) is not None}
    spec.setdefault("name", "response")
    job["response_format"] = {"type": "json_schema", "json_schema": spec}


def _reasoning(raw: Any, job: dict[str, Any]) -> None:
    if raw is None:
        return
    if not isinstance(raw, dict):
        raise InvalidRequest("reasoning must be an object", param="reasoning")
    if raw.get("effort") is not None:
        job["reasoning_effort"] = raw["effort"]


# -- the conversation a response leaves behind --------------------------------------------------


def front_of(request: dict[str, Any]) -> dict[str, Any]:
    """What the front kept of a Responses request (``{}`` for any other job)."""
    meta = request.get("metadata")
    front = meta.get(FRONT_KEY) if isinstance(meta, dict) else None
    return front if isinstance(front, dict) else {}


def assistant_message(completion: dict[str, Any] | None) -> dict[str, Any] | None:
    """A chat.completion's first message as a message of the next request (contract keys only)."""
    choices = (completion or {}).get("choices") or ()
    if not choices:
        return None
    message = choices[0].get("message") or {}
    out: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
    calls = [
        {"id": c["id"], "type": "function", "function": {k: c["function"][k] for k in ("name", "arguments")}}
        for c in message.get("tool_calls") or ()
    ]
    if calls:
        out["tool_calls"] = calls
    elif message.get("refusal"):
        out["refusal"] = message["refusal"]
    elif out["content"] is None:
        out["content"] = ""
    return out


def input_of(request: dict[str, Any]) -> list[dict[str, Any]]:
    """The messages of a Responses request's own ``input``: without its instructions and the
    history a ``previous_response_id`` brought."""
    front = front_of(request)
    skip = (1 if front.get("instructions") else 0) + int(front.get("history") or 0)
    return list(request.get("messages") or ())[skip:]


def conversation_of(request: dict[str, Any], completion: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The messages a response chained to this one continues: its input and history (without its
    instructions) and its answer."""
    messages = list(request.get("messages") or ())
    if front_of(request).get("instructions") and messages:
        messages = messages[1:]
    answer = assistant_message(completion)
    return [*messages, answer] if answer is not None else messages


# chat parameter → the Responses parameter a client sent it as (for errors raised on the chat job)
PARAM_NAMES: dict[str, str] = {
    "max_tokens": "max_output_tokens",
    "response_format": "text.format",
    "reasoning_effort": "reasoning.effort",
    "verbosity": "text.verbosity",
    "messages": "input",
}


def responses_param(param: str | None) -> str | None:
    """A chat job's parameter path as the Responses parameter it came from."""
    if not param:
        return param
    cut = min((i for i in (param.find("."), param.find("[")) if i >= 0), default=len(param))
    head, rest = param[:cut], param[cut:]
    if head == "tools":
        return head + rest.replace(".function", "", 1)
    if head == "response_format":
        return "text.format" + rest.replace(".json_schema", "", 1)
    if head == "messages":
        return "input"  # history and instructions shift the indexes: the field is what we know
    return PARAM_NAMES.get(head, head) + rest
