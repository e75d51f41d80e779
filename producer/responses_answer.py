"""A job's record as a Responses API ``Response``, and its chat chunks as the Responses stream events.

``response_object`` renders any record (queued, running, ended) the way ``GET /v1/responses/{id}``
answers: the status from ``STATUS``, the output items from the record's ``chat.completion`` (a
``message`` item with ``output_text``, one ``function_call`` item per tool call), ``usage`` with our
``cost`` and ``credits_remaining``, and the request's parameters echoed back in Responses terms.
Item ids derive from the response id (``msg_<rest>``, ``fc_<rest>_<n>``), so the stream, the final
answer and every later read name the same items.

``ResponseEvents`` turns a job's ``chat.completion.chunk`` stream into OpenAI's semantic events, each
with its ``sequence_number``: ``response.created``, ``response.in_progress``, then per item
``output_item.added`` → (``content_part.added``, ``output_text.delta``… / ``function_call_arguments
.delta``…) → the ``.done`` events, and ``response.completed`` (or ``response.incomplete`` /
``response.failed``) carrying the rendered record. What the stream did not carry (a job that did not
stream, a tool call whose arguments came whole) is sent from the record at the end, so every stream
ends with the record's full answer.
"""

from __future__ import annotations

from typing import Any

import orjson

from llm_router.contract import JobRecord, JobStatus, Usage
from llm_router.errors import RouterError
from producer.responses_format import FRONT_KEY, RESPONSE_PREFIX, front_of

STATUS: dict[JobStatus, str] = {
    JobStatus.QUEUED: "queued",
    JobStatus.DEFERRED: "queued",
    JobStatus.RUNNING: "in_progress",
    JobStatus.SUCCEEDED: "completed",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "cancelled",
}
# chat finish_reason → why a response is incomplete (the others complete it)
INCOMPLETE: dict[str, str] = {"length": "max_output_tokens", "content_filter": "content_filter"}
# our error code → the nearest of the codes a Response's error may carry (others: server_error);
# our own code rides in the error's ``type``
ERROR_CODES: dict[str, str] = {
    "rate_limited": "rate_limit_exceeded",
    "rate_limit_reached": "rate_limit_exceeded",
    "too_many_queued": "rate_limit_exceeded",
    "invalid_request": "invalid_prompt",
    "upstream_invalid_request": "invalid_prompt",
    "content_filtered": "invalid_prompt",
    "context_length_exceeded": "invalid_prompt",
}


def item_ids(response_id: str) -> tuple[str, str]:
    """The message item's id and the prefix of the function call items' ids."""
    rest = response_id.removeprefix(RESPONSE_PREFIX)
    return f"msg_{rest}", f"fc_{rest}_"


def usage_object(usage: Usage) -> dict[str, Any]:
    """A record's usage as the Responses ``usage`` (plus our ``cost`` and ``credits_remaining``)."""
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {
            "cached_tokens": usage.cached_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
        },
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
        "cost": usage.cost,
        "credits_remaining": usage.credits_remaining,
    }


def error_object(error: RouterError | dict[str, Any] | None) -> dict[str, Any] | None:
    if error is None:
        return None
    data = error.to_dict() if isinstance(error, RouterError) else error
    code = str(data.get("code") or "internal_error")
    return {
        "code": ERROR_CODES.get(code, "server_error"),
        "message": str(data.get("message") or code),
        "param": data.get("param"),
        "type": code,
    }


def output_items(
    response_id: str, completion: dict[str, Any] | None
) -> tuple[list[dict[str, Any]], str | None]:
    """The output items of a ``chat.completion``, and why it is incomplete (``None``: it is not)."""
    choices = (completion or {}).get("choices") or ()
    if not choices:
        return [], None
    choice = choices[0]
    message = choice.get("message") or {}
    incomplete = INCOMPLETE.get(choice.get("finish_reason") or "")
    status = "incomplete" if incomplete else "completed"
    msg_id, fc_prefix = item_ids(response_id)
    calls = [c["function"] | {"id": c.get("id")} for c in message.get("tool_calls") or ()]
    if message.get("function_call"):
        calls.append(message["function_call"] | {"id": None})
    items: list[dict[str, Any]] = []
    text, refusal = message.get("content"), message.get("refusal")
    if text or refusal or not calls:
        parts: list[dict[str, Any]] = []
        if text or not refusal:
            parts.append(text_part(text or ""))
        if refusal:
            parts.append({"type": "refusal", "refusal": refusal})
        items.append(message_item(msg_id, parts, status))
    for n, call in enumerate(calls):
        items.append(
            call_item(
                f"{fc_prefix}{n}", call.get("id") or f"call_{n}", call["name"], call["arguments"], status
            )
        )
    return items, incomplete


def input_items(response_id: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A response's input (chat messages: ``responses_format.input_of``) as the Responses API's
    input items, in order: messages with ``input_text``/``input_image`` parts (an assistant's with
    ``output_text``), ``function_call`` and ``function_call_output`` items. Ids are derived from the
    response's, so a listing is the same every time."""
    rest = response_id.removeprefix(RESPONSE_PREFIX)
    items: list[dict[str, Any]] = []
    for n, message in enumerate(messages):
        role = message.get("role")
        content = message.get("content")
        if role == "tool":
            items.append(
                {
                    "id": f"fco_{rest}_{n}",
                    "type": "function_call_output",
                    "call_id": message.get("tool_call_id") or "",
                    "output": content if isinstance(content, str) else orjson.dumps(content).decode(),
                    "status": "completed",
                }
            )
            continue
        if role == "assistant":
            if content:
                items.append(message_item(f"msg_{rest}_in{n}", [text_part(_text_of(content))], "completed"))
            for k, call in enumerate(message.get("tool_calls") or ()):
                fn = call.get("function") or {}
                items.append(
                    call_item(
                        f"fc_{rest}_in{n}_{k}", call.get("id") or "", fn.get("name") or "",
                        fn.get("arguments") or "", "completed",
                    )
                )  # fmt: skip
            continue
        parts = (
            [{"type": "input_text", "text": content}] if isinstance(content, str) else _input_parts(content)
        )
        items.append(
            {
                "id": f"msg_{rest}_in{n}",
                "type": "message",
                "role": role,
                "status": "completed",
                "content": parts,
            }
        )
    return items


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.get("text") or "" for p in content or () if isinstance(p, dict))


def _input_parts(content: Any) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for part in content or ():
        if not isinstance(part, dict):
            continue
        if part.get("type") == "image_url":
            image = part.get("image_url") or {}
            parts.append(
                {
                    "type": "input_image",
                    "image_url": image.get("url"),
                    "detail": image.get("detail") or "auto",
                }
            )
        else:
            parts.append({"type": "input_text", "text": part.get("text") or ""})
    return parts


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, parts: list[dict[str, Any]], status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": parts}


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def _tools_back(request: dict[str, Any]) -> list[dict[str, Any]]:
    tools = []
    for tool in request.get("tools") or ():
        fn = tool.get("function") or {}
        tools.append(
            {
                "type": "function",
                "name": fn.get("name"),
                "description": fn.get("description"),
                "parameters": fn.get("parameters"),
                "strict": fn.get("strict"),
            }
        )
    return tools


def _tool_choice_back(request: dict[str, Any]) -> Any:
    choice = request.get("tool_choice")
    if isinstance(choice, dict):
        return {"type": "function", "name": (choice.get("function") or {}).get("name")}
    return choice or "auto"


def _format_back(request: dict[str, Any]) -> dict[str, Any]:
    fmt = request.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        return {"type": "json_schema", **(fmt.get("json_schema") or {})}
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    return {"type": "text"}


def response_object(
    record: JobRecord, *, status: str | None = None, error: RouterError | None = None
) -> dict[str, Any]:
    """``record`` as a Responses API ``Response`` (``status``/``error`` override what it says, for the
    events of a stream that is not over)."""
    request = record.request
    front = front_of(request)
    messages = request.get("messages") or ()
    instructions = messages[0].get("content") if front.get("instructions") and messages else None
    output: list[dict[str, Any]] = []
    incomplete = None
    if record.status == JobStatus.SUCCEEDED and status is None:
        output, incomplete = output_items(record.id, record.response)
    shown = status or STATUS[record.status]
    if shown == "completed" and incomplete:
        shown = "incomplete"
    metadata = {k: v for k, v in (request.get("metadata") or {}).items() if k != FRONT_KEY}
    model = (record.response or {}).get("model") if record.status == JobStatus.SUCCEEDED else None
    text: dict[str, Any] = {"format": _format_back(request)}
    if request.get("verbosity"):
        text["verbosity"] = request["verbosity"]
    return {
        "id": record.id,
        "object": "response",
        "created_at": int(record.created_at),
        "status": shown,
        "background": bool(front.get("background")),
        "completed_at": int(record.finished_at) if shown == "completed" and record.finished_at else None,
        "error": error_object(error)
        if error is not None
        else (error_object(record.error) if shown == "failed" else None),
        "incomplete_details": {"reason": incomplete} if incomplete and shown == "incomplete" else None,
        "instructions": instructions,
        "max_output_tokens": request.get("max_tokens"),
        "metadata": metadata,
        "model": model or record.model_requested,
        "output": output,
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "previous_response_id": front.get("previous_response_id"),
        "reasoning": {"effort": request.get("reasoning_effort"), "summary": None},
        "service_tier": request.get("service_tier"),
        "store": True,
        "temperature": request.get("temperature"),
        "text": text,
        "tool_choice": _tool_choice_back(request),
        "tools": _tools_back(request),
        "top_p": request.get("top_p"),
        "truncation": "disabled",
        "usage": usage_object(record.usage) if record.usage is not None and shown != "in_progress" else None,
        "user": request.get("user"),
    }


# -- streaming ----------------------------------------------------------------------------------


class ResponseEvents:
    """The Responses stream events of one job: feed its chunks, then its final record (or error)."""

    def __init__(self, record: JobRecord) -> None:
        self.record = record  # as it was when the stream began: what the start events show
        self.response_id = record.id
        self.msg_id, self.fc_prefix = item_ids(record.id)
        self.seq = 0
        self.items: list[dict[str, Any]] = []  # output items, by output_index
        self.text_index: int | None = None  # the message item's output index, once added
        self.calls: dict[int, int] = {}  # chat tool-call index → output index
        self.open: set[int] = set()  # output indexes not yet done
        self.started = False

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return event

    def start(self) -> list[dict[str, Any]]:
        """``response.created`` and ``response.in_progress``, once: every other method begins with
        them when they are not out yet, so a stream starts when it has something to say."""
        if self.started:
            return []
        self.started = True
        snapshot = response_object(self.record, status="in_progress")
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
        ]

    def chunk(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """The events of one ``chat.completion.chunk`` (its first choice; a usage chunk has none)."""
        events: list[dict[str, Any]] = []
        for choice in (chunk.get("choices") or ())[:1]:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                events += self._text(delta["content"])
            for call in delta.get("tool_calls") or ():
                events += self._call(call)
        return events

    def _text(self, text: str) -> list[dict[str, Any]]:
        events = self.start()
        if self.text_index is None:
            events += self._add_message()
        elif self.text_index not in self.open:
            return events  # text after the tool calls began: the final answer carries it
        assert self.text_index is not None
        self.items[self.text_index]["content"][0]["text"] += text
        events.append(
            self._event(
                "response.output_text.delta",
                item_id=self.msg_id,
                output_index=self.text_index,
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        return events

    def _add_message(self) -> list[dict[str, Any]]:
        self.text_index = len(self.items)
        self.items.append(message_item(self.msg_id, [], "in_progress"))
        self.open.add(self.text_index)
        added = self._event(
            "response.output_item.added", output_index=self.text_index, item=_copy(self.items[-1])
        )
        self.items[-1]["content"].append(text_part(""))
        part = self._event(
            "response.content_part.added",
            item_id=self.msg_id,
            output_index=self.text_index,
            content_index=0,
            part=text_part(""),
        )
        return [added, part]

    def _call(self, call: dict[str, Any]) -> list[dict[str, Any]]:
        index = call.get("index", 0)
        fn = call.get("function") or {}
        events = self.start()
        if index not in self.calls:
            for open_index in sorted(self.open):  # a new item closes the ones before it, as OpenAI's do
                events += self._done(open_index, None)
            n = len(self.calls)
            self.calls[index] = len(self.items)
            item = call_item(
                f"{self.fc_prefix}{n}", call.get("id") or f"call_{n}", fn.get("name") or "", "", "in_progress"
            )
            self.items.append(item)
            self.open.add(len(self.items) - 1)
            events.append(
                self._event("response.output_item.added", output_index=len(self.items) - 1, item=_copy(item))
            )
        out = self.calls[index]
        if fn.get("arguments"):
            self.items[out]["arguments"] += fn["arguments"]
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=self.items[out]["id"],
                    output_index=out,
                    delta=fn["arguments"],
                )
            )
        return events

    def _done(self, index: int, final: dict[str, Any] | None) -> list[dict[str, Any]]:
        """Close output item ``index``: the ``.done`` events, with the final item when known."""
        self.open.discard(index)
        item = self.items[index]
        events = []
        if item["type"] == "message":
            final = final or {**item, "status": "completed"}
            text_parts = [p for p in final["content"] if p["type"] == "output_text"]
            text = text_parts[0]["text"] if text_parts else ""
            streamed = item["content"][0]["text"]
            if text != streamed and text.startswith(streamed):
                events.append(
                    self._event(
                        "response.output_text.delta",
                        item_id=item["id"],
                        output_index=index,
                        content_index=0,
                        delta=text[len(streamed) :],
                        logprobs=[],
                    )
                )
            events.append(
                self._event(
                    "response.output_text.done",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    text=text,
                    logprobs=[],
                )
            )
            events.append(
                self._event(
                    "response.content_part.done",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    part=text_part(text),
                )
            )
        else:
            final = final or {**item, "status": "completed"}
            streamed = item["arguments"]
            arguments = final["arguments"]
            if arguments != streamed and arguments.startswith(streamed):
                events.append(
                    self._event(
                        "response.function_call_arguments.delta",
                        item_id=item["id"],
                        output_index=index,
                        delta=arguments[len(streamed) :],
                    )
                )
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    name=final["name"],
                    arguments=arguments,
                )
            )
        self.items[index] = final
        events.append(self._event("response.output_item.done", output_index=index, item=_copy(final)))
        return events

    def finish(self, record: JobRecord) -> list[dict[str, Any]]:
        """Close every item with the record's final answer (adding what the stream did not carry),
        then ``response.completed`` (``response.incomplete`` when it ran out of tokens)."""
        final = response_object(record)
        events = self.start()
        by_id = {item["id"]: item for item in final["output"]}
        for index in sorted(self.open):
            events += self._done(index, by_id.get(self.items[index]["id"]))
        streamed = {item["id"] for item in self.items}
        for item in final["output"]:
            if item["id"] in streamed:
                continue
            events += self._add_whole(item)
        kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        events.append(self._event(kind, response=final))
        return events

    def _add_whole(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        """An item the stream never started: added empty, then filled and closed from the record."""
        index = len(self.items)
        if item["type"] == "message":
            events = self._add_message()
        else:
            empty = {**item, "arguments": "", "status": "in_progress"}
            self.items.append(empty)
            events = [self._event("response.output_item.added", output_index=index, item=_copy(empty))]
        return events + self._done(index, item)

    def fail(self, error: RouterError, record: JobRecord | None = None) -> list[dict[str, Any]]:
        """``response.failed`` (the response as far as it got, its status and error)."""
        status = "cancelled" if error.code == "cancelled" else "failed"
        response = response_object(record or self.record, status=status, error=error)
        response["output"] = [_copy(item) for item in self.items]
        return [*self.start(), self._event("response.failed", response=response)]


def _copy(item: dict[str, Any]) -> dict[str, Any]:
    return orjson.loads(orjson.dumps(item))
