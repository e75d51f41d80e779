"""The job contract: what a job is, what its record says, and the status a job moves through.

Producer and worker both import this module and nothing else of each other: a job crosses Redis as
JSON, so either side can be deployed on its own. A job is one flat JSON object: an OpenAI
chat-completions body plus reserved keys (``RESERVED_KEYS``) that are never sent upstream.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llm_router.errors import InvalidRequest
from llm_router.urls import UnsafeURL, parse_url

# keys of a job that are ours, not the provider's; the adapters never send them upstream
RESERVED_KEYS = frozenset(
    {
        "job_id",
        "fallbacks",
        "deadline_s",
        "tenant",
        "metadata",
        "cache",
        "cache_ttl_s",
        "answer_format",
        "priority",
        "webhook",
        "hedge",
        "lane",
    }
)

# how a job is dispatched (README "Lanes"): the synchronous call, a provider's cheaper synchronous
# tier, a provider batch, or the cheapest of those that meets the job's deadline
Lane = Literal["now", "flex", "batch", "auto"]
LANES: tuple[str, ...] = ("now", "flex", "batch", "auto")

JOB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
# base64 in either alphabet: Google's SDKs send the URL-safe one (``-``, ``_``); normalised at submit
DATA_URI_RE = re.compile(r"data:image/[a-zA-Z0-9.+-]+;base64,[A-Za-z0-9+/_-]+={0,2}")
_URLSAFE = str.maketrans("-_", "+/")

# keys of an assistant message that only answers carry (``refusal``, ``annotations``, ``audio``):
# clients append the answer's message to the next request, so they are accepted back, never sent
# upstream (the adapters drop them; an OpenAI-format upstream gets ``refusal`` only when it says one)
ECHOED_MESSAGE_KEYS = frozenset({"refusal", "annotations", "audio"})


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DEFERRED = "deferred"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class _Part(BaseModel):
    # strict: "10" is not an integer and true is not a temperature; providers would refuse them
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(_Part):
    type: Literal["text"]
    text: str


class RefusalPart(_Part):
    """An assistant's refusal, echoed back in a conversation's history."""

    type: Literal["refusal"]
    refusal: str


class ImageURL(_Part):
    url: str
    detail: Literal["auto", "low", "high"] | None = None

    @field_validator("url")
    @classmethod
    def _http_or_data(cls, url: str) -> str:
        if url.startswith("data:"):
            if DATA_URI_RE.fullmatch(url):
                return url
            raise ValueError("image_url.url must be an http(s) URL or a data:image/...;base64, URI")
        try:
            parse_url(url)  # the parser the worker fetches with: what it would refuse, we refuse now
        except UnsafeURL as exc:
            raise ValueError(
                f"image_url.url must be an http(s) URL or a data:image/...;base64, URI: {exc}"
            ) from None
        return url


class ImagePart(_Part):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart | RefusalPart, Field(discriminator="type")]


class FunctionCall(_Part):
    name: str
    arguments: str


class ToolCall(_Part):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None  # on any role (OpenAI's on most); never needed upstream
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    function_call: FunctionCall | None = None
    # response-only keys of an assistant message, accepted when a client echoes an answer back
    refusal: str | None = None
    annotations: list[Any] | None = None
    audio: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _shape(self) -> Message:
        if self.content is None and not (
            self.role == "assistant" and (self.tool_calls or self.function_call or self.refusal)
        ):
            raise ValueError("content is required (null only for an assistant message with tool calls)")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id")
        if self.role != "assistant":
            for key in ECHOED_MESSAGE_KEYS:
                if getattr(self, key) is not None:
                    raise _FieldError(key, f"only assistant messages carry {key}")
        if isinstance(self.content, list):
            if self.role == "function":
                raise ValueError("a function message takes text content")
            if self.role != "user" and any(isinstance(p, ImagePart) for p in self.content):
                raise ValueError("only user messages may carry images")
            if self.role != "assistant" and any(isinstance(p, RefusalPart) for p in self.content):
                raise ValueError("only assistant messages may carry refusal parts")
        return self


class FunctionDef(_Part):
    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Part):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Part):
    name: str


class NamedToolChoice(_Part):
    type: Literal["function"]
    function: NamedFunction


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and not self.json_schema:
            raise ValueError("response_format json_schema needs a json_schema object")
        return self


Unit = Annotated[float, Field(ge=0, le=1)]
Penalty = Annotated[float, Field(ge=-2, le=2)]


class StreamOptions(_Part):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None  # OpenAI's padding of chunks: our chunks carry none


class Hedge(_Part):
    """A hedged request's delay: a second attempt starts after ``after_ms`` without a first token."""

    after_ms: Annotated[int, Field(ge=1, le=600_000)]


class Webhook(_Part):
    """Where a job (or a batch) tells its caller that it ended: a signed POST (Standard Webhooks) of
    its summary to ``url``, and of its whole response when ``include`` asks (``llm_router.webhooks``)."""

    url: str
    include: Annotated[list[Literal["response"]], Field(max_length=1)] | None = None

    @field_validator("url")
    @classmethod
    def _http(cls, url: str) -> str:
        try:
            parse_url(url)  # the parser the deliverer sends with
        except UnsafeURL as exc:
            raise ValueError(f"webhook.url must be an http(s) URL: {exc}") from None
        return url


class ChatJob(BaseModel):
    """A chat job: the OpenAI chat-completions body plus our reserved keys."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: Annotated[str, Field(min_length=1, max_length=256)]
    messages: Annotated[list[Message], Field(min_length=1)]
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Unit | None = None
    max_tokens: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    functions: list[FunctionDef] | None = None
    function_call: Literal["none", "auto"] | NamedFunction | None = None
    response_format: ResponseFormat | None = None
    seed: Annotated[int, Field(ge=-(2**63), lt=2**63)] | None = None
    user: str | None = None
    n: Annotated[int, Field(ge=1, le=16)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    logit_bias: dict[str, float] | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    # OpenAI's newer fields: passed to OpenAI's own API (and gateways in front of it), translated or
    # dropped for the others (see OPENAI_ONLY_FIELDS and the README's field table)
    store: bool | None = None  # every job is stored: its record is the stored completion
    service_tier: Literal["auto", "default", "flex", "scale", "priority", "fast"] | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    prompt_cache_options: dict[str, Any] | None = None
    safety_identifier: str | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    moderation: dict[str, Any] | None = None

    # reserved job keys: ours, never sent upstream
    job_id: str | None = None
    fallbacks: Annotated[list[str], Field(max_length=8)] | None = None
    deadline_s: Annotated[float, Field(gt=0, le=30 * 24 * 3600)] | None = None
    tenant: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")] | None = None
    metadata: dict[str, Any] | None = None
    # the shared response cache: true (deterministic requests only: temperature 0) or "force"
    cache: bool | Literal["force"] | None = None
    cache_ttl_s: Annotated[int, Field(ge=1, le=365 * 24 * 3600)] | None = None
    # the wire format the caller wants the answer in when it reads it over HTTP (records stay OpenAI):
    # the chat front's, Gemini's, the Responses API's or Anthropic's Messages
    answer_format: Literal["openai", "gemini", "responses", "anthropic"] | None = None
    # its band in the queue: high jobs are claimed before normal ones, across the fleet and inside
    # the tenant (tenants still share each band fairly)
    priority: Literal["high", "normal", "low"] | None = None
    # told when the job ends; false: not even the tenant's default endpoint
    webhook: Webhook | Literal[False] | None = None
    # interactive jobs: race a second attempt on the model's next deployment when no first token came
    # by the deployment's learned percentile (true) or by after_ms; false: not even the route's default
    hedge: bool | Hedge | None = None
    # how it is dispatched: now (default), flex, batch or auto (``Lane``); unset, the tenant's default
    lane: Lane | None = None

    @field_validator("job_id")
    @classmethod
    def _job_id(cls, value: str | None) -> str | None:
        if value is not None and not JOB_ID_RE.fullmatch(value):
            raise ValueError("job_id must be 1-128 characters of A-Z a-z 0-9 . _ : - (starting alphanumeric)")
        return value

    @model_validator(mode="after")
    def _cross_field(self) -> ChatJob:
        if self.tool_choice is not None and not self.tools:
            raise _FieldError("tool_choice", "tool_choice is only allowed when tools are given")
        if self.function_call is not None and not self.functions:
            raise _FieldError("function_call", "function_call is only allowed when functions are given")
        if self.tools and self.functions:
            raise _FieldError("functions", "give tools or the legacy functions, not both")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tools:
            names = {t.function.name for t in self.tools}
            if self.tool_choice.function.name not in names:
                raise _FieldError(
                    "tool_choice", f"tool_choice names '{self.tool_choice.function.name}', not in tools"
                )
        if (
            isinstance(self.function_call, NamedFunction)
            and self.functions
            and self.function_call.name not in {f.name for f in self.functions}
        ):
            raise _FieldError(
                "function_call", f"function_call names '{self.function_call.name}', not in functions"
            )
        if self.top_logprobs is not None and not self.logprobs:
            raise _FieldError("top_logprobs", "top_logprobs needs logprobs: true")
        return self

    def ignored_fields(self) -> list[str]:
        """Fields of this job that no provider will see (noted in the record as ``ignored``)."""
        return sorted(name for name in NEVER_SENT_FIELDS if getattr(self, name) is not None)

    def image_count(self) -> int:
        return sum(
            sum(isinstance(p, ImagePart) for p in m.content)
            for m in self.messages
            if isinstance(m.content, list)
        )

    def first_image_param(self) -> str | None:
        for i, m in enumerate(self.messages):
            if isinstance(m.content, list):
                for j, p in enumerate(m.content):
                    if isinstance(p, ImagePart):
                        return f"messages[{i}].content[{j}]"
        return None


# accepted from OpenAI's API, never sent to a provider: `store` (every job is stored already)
NEVER_SENT_FIELDS = frozenset({"store"})
# OpenAI API fields that only OpenAI's own API (and gateways in front of it) takes; other
# OpenAI-format vendors refuse unknown fields, so the adapter drops these for them
OPENAI_ONLY_FIELDS = frozenset(
    {
        "service_tier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "prompt_cache_options",
        "safety_identifier",
        "verbosity",
        "modalities",
        "audio",
        "prediction",
        "web_search_options",
        "moderation",
    }
)


def normalise_data_uris(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` with URL-safe base64 image data rewritten to the standard alphabet (a copy, only when
    one needs it): providers and our own checks then see one form."""
    messages = obj.get("messages")
    if not isinstance(messages, list):
        return obj
    changed = False
    out = []
    for msg in messages:
        content = msg.get("content") if isinstance(msg, dict) else None
        if isinstance(content, list):
            parts = [_standard_part(p) for p in content]
            if any(a is not b for a, b in zip(parts, content, strict=True)):
                msg = {**msg, "content": parts}
                changed = True
        out.append(msg)
    return {**obj, "messages": out} if changed else obj


def _standard_part(part: Any) -> Any:
    if not (isinstance(part, dict) and part.get("type") == "image_url"):
        return part
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else None
    if not isinstance(url, str) or not url.startswith("data:"):
        return part
    head, sep, data = url.partition(";base64,")
    if not sep or not ("-" in data or "_" in data or len(data) % 4):
        return part
    data = data.rstrip("=").translate(_URLSAFE)
    data += "=" * (-len(data) % 4)
    return {**part, "image_url": {**image, "url": f"{head};base64,{data}"}}


def image_urls(obj: dict[str, Any]) -> list[tuple[str, str]]:
    """(param, url) of every image URL of a chat body (data URIs excluded)."""
    found = []
    for i, msg in enumerate(obj.get("messages") or ()):
        content = msg.get("content") if isinstance(msg, dict) else None
        for k, part in enumerate(content if isinstance(content, list) else ()):
            image = part.get("image_url") if isinstance(part, dict) else None
            url = image.get("url") if isinstance(image, dict) else None
            if isinstance(url, str) and not url.startswith("data:"):
                found.append((f"messages[{i}].content[{k}].image_url.url", url))
    return found


class _FieldError(ValueError):
    """A cross-field check that knows which field is wrong."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


# pydantic puts the names of union members into error locations; they are not fields
_LOC_TAG = re.compile(r"^(str|int|float|bool|dict|list|none|literal|function-.*|.*\[.*|[A-Z][A-Za-z]*)$")


_PART_TAGS = frozenset({"text", "image_url", "refusal"})  # discriminator values of ContentPart


def param_from_loc(loc: tuple[int | str, ...]) -> str:
    """``('messages', 0, 'content')`` → ``messages[0].content``, dropping pydantic's union tags."""
    out = ""
    prev: int | str | None = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _LOC_TAG.match(part) or (isinstance(prev, int) and part in _PART_TAGS):
            prev = None  # a content part's tag comes right after its index; the field may repeat it
            continue
        else:
            out += f".{part}" if out else part
        prev = part
    return out


def invalid_from_validation(exc: ValidationError) -> InvalidRequest:
    """The most specific pydantic error as one ``invalid_request`` naming its field."""
    errors = exc.errors(include_url=False)
    for err in errors:
        ctx_err = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_err, _FieldError):
            # a nested model's check (a message's) names its field relative to that model
            where = param_from_loc(tuple(err["loc"]))
            param = f"{where}.{ctx_err.param}" if where else ctx_err.param
            return InvalidRequest(str(ctx_err), param=param)
    # the deepest location is the most specific one; unions report one error per member
    err = max(
        errors, key=lambda e: len([p for p in e["loc"] if not (isinstance(p, str) and _LOC_TAG.match(p))])
    )
    param = param_from_loc(tuple(err["loc"]))
    if err["type"] == "extra_forbidden":
        return InvalidRequest(f"Unrecognized request argument supplied: {param}", param=param)
    if err["type"] == "missing":
        return InvalidRequest(f"Missing required parameter: '{param}'", param=param)
    msg = err["msg"].removeprefix("Value error, ")
    return InvalidRequest(f"Invalid value for '{param}': {msg}", param=param or None)


class Attempt(BaseModel):
    """One upstream call made for a job."""

    provider: str
    model: str
    upstream_model: str
    outcome: Literal["success", "error", "interrupted", "skipped"]
    worker: str | None = None
    breaker: str | None = None  # the deployment's breaker state when the job reached it
    error_code: str | None = None
    http_status: int | None = None
    latency_ms: float | None = None
    started_at: float
    # the side of a hedged call's race this attempt was ("first", "second"), and what it cost (USD)
    hedge: Literal["first", "second"] | None = None
    cost: float | None = None


def new_attempt(
    *,
    provider: str,
    model: str,
    upstream_model: str,
    outcome: Literal["success", "error", "interrupted", "skipped"],
    started_at: float,
    worker: str | None = None,
    breaker: str | None = None,
    error_code: str | None = None,
    http_status: int | None = None,
    latency_ms: float | None = None,
) -> dict[str, Any]:
    """One attempt as a record stores it: ``Attempt``'s fields, as a plain dict (the worker appends
    one per call on its hot path, where building and dumping a model would cost more than the rest)."""
    return {
        "provider": provider,
        "model": model,
        "upstream_model": upstream_model,
        "outcome": outcome,
        "worker": worker,
        "breaker": breaker,
        "error_code": error_code,
        "http_status": http_status,
        "latency_ms": latency_ms,
        "started_at": started_at,
    }


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost: float = 0.0
    cost_nanos: int = 0
    credits_remaining: float | None = None  # the tenant's credit after this job settled (USD)
    estimated: bool = False  # counted by estimate: a stream that broke before the provider's usage


class JobRecord(BaseModel):
    """The one source of truth about a job, keyed by its id in the result store."""

    id: str
    status: JobStatus
    request: dict[str, Any]
    model_requested: str
    route: list[str]
    tenant: str = "default"
    created_at: float
    deadline_at: float
    started_at: float | None = None
    finished_at: float | None = None
    attempts: list[Attempt] = []
    provider: str | None = None
    model: str | None = None
    response: dict[str, Any] | None = None
    usage: Usage | None = None
    error: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    runs: int = 0
    passes: int = 0
    lost_runs: int = 0  # runs that ended with their worker's death (see worker_lost)
    priority: Literal["high", "normal", "low"] = "normal"
    fallback_used: bool = False
    partial_text: str | None = None  # what a stream published before it broke (stream_interrupted)
    routed_by: str | None = None  # when `model` named a route: the rule that chose the model
    cached: bool = False  # answered from the response cache, without a provider call
    parent: str | None = None  # the compare job this job is one side of
    # fields of the request accepted from OpenAI's API that no provider sees (``store``)
    ignored: list[str] | None = None
    # a compare job: one entry per model (content, latency, tokens, cost, error), in its order
    comparison: list[dict[str, Any]] | None = None
    webhook: dict[str, Any] | None = None  # where the job's end is told ({"url", "include"})
    # the lane that ran the job (``Lane``; a job that asked ``auto`` says which one it got) and why
    lane: str = "now"
    lane_reason: str | None = None

    @field_validator("ignored", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        return [v for v in value.split(",") if v] if isinstance(value, str) else value

    @property
    def latency_ms(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.created_at) * 1000

    def text(self) -> str | None:
        """The first choice's text, or the tool/function call as JSON when the model called one."""
        if not self.response or not self.response.get("choices"):
            return None
        msg = self.response["choices"][0].get("message") or {}
        if msg.get("content") is not None:
            return str(msg["content"])
        call = msg.get("tool_calls") or msg.get("function_call")
        return orjson.dumps(call).decode() if call else None
