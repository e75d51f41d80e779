"""Validation at enqueue: every refusal has a stable code and names its field; nothing is enqueued."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from config.settings import Settings
from llm_router.errors import ERROR_TABLE, RouterError
from producer.producer import Producer, Submitted
from producer.validation import Validator

USER = [{"role": "user", "content": "hi"}]
IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}

# (case, job, code, param)
INVALID: list[tuple[str, Any, str, str | None]] = [
    ("missing model", {"messages": USER}, "invalid_request", "model"),
    ("unknown model", {"model": "gpt-9000", "messages": USER}, "model_not_found", "model"),
    ("missing messages", {"model": "gpt-4o"}, "invalid_request", "messages"),
    ("empty messages", {"model": "gpt-4o", "messages": []}, "invalid_request", "messages"),
    (
        "bad role",
        {"model": "gpt-4o", "messages": [{"role": "robot", "content": "x"}]},
        "invalid_request",
        "messages[0].role",
    ),
    (
        "content wrong type",
        {"model": "gpt-4o", "messages": [{"role": "user", "content": 5}]},
        "invalid_request",
        "messages[0].content",
    ),
    (
        "temperature too high",
        {"model": "gpt-4o", "messages": USER, "temperature": 3},
        "invalid_request",
        "temperature",
    ),
    (
        "temperature not a number",
        {"model": "gpt-4o", "messages": USER, "temperature": "hot"},
        "invalid_request",
        "temperature",
    ),
    ("top_p below 0", {"model": "gpt-4o", "messages": USER, "top_p": -0.1}, "invalid_request", "top_p"),
    (
        "max_tokens zero",
        {"model": "gpt-4o", "messages": USER, "max_tokens": 0},
        "invalid_request",
        "max_tokens",
    ),
    (
        "max_tokens above model max",
        {"model": "gpt-4o", "messages": USER, "max_tokens": 10**6},
        "invalid_request",
        "max_tokens",
    ),
    (
        "five stop strings",
        {"model": "gpt-4o", "messages": USER, "stop": list("abcde")},
        "invalid_request",
        "stop",
    ),
    (
        "penalty out of range",
        {"model": "gpt-4o", "messages": USER, "frequency_penalty": 2.5},
        "invalid_request",
        "frequency_penalty",
    ),
    (
        "unknown field",
        {"model": "gpt-4o", "messages": USER, "temprature": 1},
        "invalid_request",
        "temprature",
    ),
    (
        # a URL two parsers read differently (the worker's fetcher would refuse it): refused at submit
        "backslash in the image URL's authority",
        {
            "model": "gpt-4o",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "http://example.com\\@10.0.0.1/a.png"}}
                    ],
                }
            ],
        },
        "invalid_request",
        "messages[0].content[0].image_url.url",
    ),
    (
        "image URL at the cloud metadata address",
        {
            "model": "gpt-4o",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "http://169.254.169.254/a.png"}}],
                }
            ],
        },
        "invalid_request",
        "messages[0].content[0].image_url.url",
    ),
    (
        "image URL with a numeric host",
        {
            "model": "gpt-4o",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "http://2130706433/"}}],
                }
            ],
        },
        "invalid_request",
        "messages[0].content[0].image_url.url",
    ),
    (
        "refusal on a user message",
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi", "refusal": "no"}]},
        "invalid_request",
        "messages[0].refusal",
    ),
    (
        "a typo of an OpenAI field",
        {"model": "gpt-4o", "messages": USER, "stor": True},
        "invalid_request",
        "stor",
    ),
    (
        "unknown stream option",
        {"model": "gpt-4o", "messages": USER, "stream": True, "stream_options": {"include_usge": True}},
        "invalid_request",
        "stream_options.include_usge",
    ),
    (
        "image to a text-only model",
        {
            "model": "gpt-3.5-turbo",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "what is this?"}, IMAGE]}],
        },
        "unsupported_capability",
        "messages[0].content[1]",
    ),
    (
        "tools to a model without tools",
        {"model": "mixtral-8x7b", "messages": USER, "tools": [TOOL]},
        "unsupported_capability",
        "tools",
    ),
    (
        "tool_choice without tools",
        {"model": "gpt-4o", "messages": USER, "tool_choice": "auto"},
        "invalid_request",
        "tool_choice",
    ),
    (
        "tool message without id",
        {"model": "gpt-4o", "messages": [*USER, {"role": "tool", "content": "42"}]},
        "invalid_request",
        "messages[1]",
    ),
    (
        "unknown fallback",
        {"model": "gpt-4o", "messages": USER, "fallbacks": ["nope"]},
        "model_not_found",
        "fallbacks[0]",
    ),
    ("bad job_id", {"model": "gpt-4o", "messages": USER, "job_id": "has space"}, "invalid_request", "job_id"),
    (
        "negative deadline",
        {"model": "gpt-4o", "messages": USER, "deadline_s": -1},
        "invalid_request",
        "deadline_s",
    ),
    ("not an object", [1, 2], "invalid_request", None),
    ("malformed JSON", b'{"model": "gpt-4o", "messages": [', "invalid_request", None),
    (
        "too large",
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 5000}]},
        "payload_too_large",
        None,
    ),
    (
        "stream_options without stream",
        {"model": "gpt-4o", "messages": USER, "stream_options": {"include_usage": True}},
        "invalid_request",
        "stream_options",
    ),
]


@pytest.mark.parametrize(("case", "job", "code", "param"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_jobs_are_refused_with_code_and_param(sim_catalog, case, job, code, param) -> None:
    validator = Validator(sim_catalog, Settings(_env_file=None, max_body_bytes=4096))
    raw = job if isinstance(job, (bytes, dict)) else orjson.dumps(job)
    with pytest.raises(RouterError) as info:
        validator.prepare(raw, now=1000.0)
    err = info.value
    assert err.code == code, err
    assert err.param == param, err
    assert err.status == ERROR_TABLE[code].status
    body = err.to_dict()
    assert set(body) == {"code", "status", "message", "param", "type"}
    assert body["message"]


async def test_refused_jobs_enqueue_nothing(producer: Producer, redis) -> None:
    before = {k async for k in redis.scan_iter(match="arq:job:*")}
    results = await producer.submit_many(
        [orjson.dumps(job) if not isinstance(job, bytes) else job for _, job, _, _ in INVALID[:-2]]
    )
    assert all(isinstance(r, RouterError) for r in results)
    assert await redis.zcard(producer.settings.queue_name) == 0
    assert {k async for k in redis.scan_iter(match="arq:job:*")} == before


def test_alias_resolves_and_record_says_so(sim_catalog) -> None:
    prepared = Validator(sim_catalog, Settings(_env_file=None)).prepare(
        {"model": "claude-3-sonnet", "messages": USER}, now=1000.0
    )
    assert prepared.model_requested == "claude-3-sonnet"
    assert prepared.route[0] == "claude-sonnet-4"


def test_deadlines_default_by_kind(sim_catalog) -> None:
    v = Validator(sim_catalog, Settings(_env_file=None))
    bulk = v.prepare({"model": "gpt-4o", "messages": USER}, now=1000.0)
    interactive = v.prepare({"model": "gpt-4o", "messages": USER}, now=1000.0, interactive=True)
    explicit = v.prepare({"model": "gpt-4o", "messages": USER, "deadline_s": 30}, now=1000.0)
    assert bulk.deadline_at == 1000.0 + 24 * 3600
    assert interactive.deadline_at == 1000.0 + 600
    assert explicit.deadline_at == 1030.0


def test_vision_job_is_normalised_to_chat(sim_catalog, tmp_path) -> None:
    png = base64.b64decode(
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    )
    path = tmp_path / "pixel.png"
    path.write_bytes(png)
    v = Validator(sim_catalog, Settings(_env_file=None))
    with pytest.raises(RouterError) as no_files:  # a job from elsewhere may not read this machine's disk
        v.prepare({"model": "gpt-4o", "prompt": "?", "image": str(path)}, now=1.0)
    assert (no_files.value.code, no_files.value.param) == ("invalid_request", "image")
    for image in (str(path), base64.b64encode(png).decode(), "https://example.com/cat.jpg"):
        prepared = v.prepare(
            {"model": "gpt-4o", "prompt": "what is this?", "image": image}, now=1.0, allow_files=True
        )
        content = orjson.loads(prepared.request)["messages"][0]["content"]
        assert content[0] == {"type": "text", "text": "what is this?"}
        url = content[1]["image_url"]["url"]
        assert url == image if image.startswith("https") else url.startswith("data:image/png;base64,")
    with pytest.raises(RouterError) as info:
        v.prepare({"model": "gpt-4o", "prompt": "?", "image": "not an image"}, now=1.0)
    assert (info.value.code, info.value.param) == ("invalid_request", "image")


def test_same_body_same_digest_whatever_the_key_order(sim_catalog) -> None:
    v = Validator(sim_catalog, Settings(_env_file=None))
    a = v.prepare({"model": "gpt-4o", "messages": USER, "temperature": 0.5, "job_id": "x1"}, now=1.0)
    b = v.prepare(
        b'{"temperature": 0.5, "job_id": "x1", "messages": [{"content": "hi", "role": "user"}],'
        b' "model": "gpt-4o"}',
        now=2.0,
    )
    c = v.prepare({"model": "gpt-4o", "messages": USER, "temperature": 0.6, "job_id": "x1"}, now=1.0)
    assert a.digest == b.digest != c.digest


def test_valid_job_with_everything(sim_catalog) -> None:
    job = {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}, IMAGE]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "{}"},
        ],
        "temperature": 0.2,
        "top_p": 0.9,
        "max_completion_tokens": 100,
        "stop": ["x"],
        "presence_penalty": 1,
        "tools": [TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "response_format": {"type": "json_object"},
        "seed": 7,
        "user": "u1",
        "n": 2,
        "job_id": "job-1",
        "fallbacks": ["claude-sonnet-4-5"],
        "deadline_s": 60,
        "tenant": "acme",
        "metadata": {"batch": 3},
    }
    prepared = Validator(sim_catalog, Settings(_env_file=None)).prepare(job, now=1.0)
    assert prepared.job_id == "job-1"
    assert prepared.route == ["gpt-4o", "claude-sonnet-4-5"]
    assert prepared.tenant == "acme"
    assert prepared.metadata == {"batch": 3}
    assert "job_id" not in orjson.loads(prepared.request)


async def test_submit_returns_ids_in_input_order(producer: Producer) -> None:
    jobs = [{"model": "gpt-4o", "messages": [{"role": "user", "content": f"q{i}"}]} for i in range(5)]
    jobs.insert(2, {"model": "nope", "messages": USER})
    results = await producer.submit_many(jobs)
    assert isinstance(results[2], RouterError)
    assert all(isinstance(r, Submitted) and r.created for i, r in enumerate(results) if i != 2)
    ids = [r.job_id for r in results if isinstance(r, Submitted)]
    records = [await producer.get(i) for i in ids]
    assert [r.request["messages"][0]["content"] for r in records] == [f"q{i}" for i in range(5)]
    assert all(r.status == "queued" for r in records)


def test_catalog_fallbacks_apply_unless_the_job_names_its_own(sim_catalog) -> None:
    v = Validator(sim_catalog, Settings(_env_file=None))
    default = v.prepare({"model": "gpt-4.1", "messages": USER}, now=1.0)
    own = v.prepare({"model": "gpt-4.1", "messages": USER, "fallbacks": ["o1"]}, now=1.0)
    none = v.prepare({"model": "gpt-4.1", "messages": USER, "fallbacks": []}, now=1.0)
    assert default.route == ["gpt-4.1", "claude-sonnet-4-5", "gemini-2.5-flash"]
    assert own.route == ["gpt-4.1", "o1"]
    assert none.route == ["gpt-4.1"]
    # a catalog fallback that cannot serve the job is skipped instead of refusing it: mixtral-8x7b has
    # no tools, so a tools job on llama-3.1-70b falls back to llama-3.1-405b and mistral-large only
    tools = v.prepare({"model": "mixtral-8x7b", "messages": USER}, now=1.0)
    assert tools.route == ["mixtral-8x7b", "llama-3.1-70b", "mistral-large"]
    vision = v.prepare({"model": "gpt-4o-mini", "prompt": "?", "image": "https://example.com/a.png"}, now=1.0)
    assert vision.route == ["gpt-4o-mini", "gemini-2.5-flash-lite", "claude-haiku-4-5"]
    text_only = v.prepare({"model": "grok-4", "prompt": "?", "image": "https://example.com/a.png"}, now=1.0)
    assert text_only.route == ["grok-4", "gpt-4.1"]  # grok-3 reads no images


def test_the_arq_job_written_at_submit_is_arqs_own_format(sim_catalog) -> None:
    from arq.jobs import deserialize_job

    from llm_router.store import RUN_JOB, Store, arq_job_payload

    store = Store(__import__("redis.asyncio", fromlist=["Redis"]).Redis(), queue_name="q", record_ttl_s=60)
    job = Validator(sim_catalog, Settings(_env_file=None)).prepare(
        {"model": "gpt-4o", "messages": USER, "job_id": "a.b:c-d_1"}, now=1234.5678
    )
    command = store.submit_command(job)
    payload = command[8]
    assert payload == arq_job_payload("default/a.b:c-d_1", 1234567)  # the job inside its tenant
    parsed = deserialize_job(payload, deserializer=orjson.loads)
    assert (parsed.function, list(parsed.args), parsed.kwargs) == (RUN_JOB, ["default/a.b:c-d_1"], {})


STRICT_AND_EDGE: list[tuple[str, Any, str, str | None]] = [
    (
        "max_tokens as a string",
        {"model": "gpt-4o", "messages": USER, "max_tokens": "10"},
        "invalid_request",
        "max_tokens",
    ),
    (
        "temperature as a bool",
        {"model": "gpt-4o", "messages": USER, "temperature": True},
        "invalid_request",
        "temperature",
    ),
    (
        "stream as a string",
        {"model": "gpt-4o", "messages": USER, "stream": "true"},
        "invalid_request",
        "stream",
    ),
    (
        "job_id with a newline",
        {"model": "gpt-4o", "messages": USER, "job_id": "abc\n"},
        "invalid_request",
        "job_id",
    ),
    (
        "tool_choice without a function",
        {"model": "gpt-4o", "messages": USER, "tools": [TOOL], "tool_choice": {"type": "function"}},
        "invalid_request",
        "tool_choice.function",
    ),
    (
        "tool_choice unknown word",
        {"model": "gpt-4o", "messages": USER, "tools": [TOOL], "tool_choice": "always"},
        "invalid_request",
        "tool_choice",
    ),
    (
        "tool_choice names an absent tool",
        {
            "model": "gpt-4o",
            "messages": USER,
            "tools": [TOOL],
            "tool_choice": {"type": "function", "function": {"name": "nope"}},
        },
        "invalid_request",
        "tool_choice",
    ),
    (
        "function_call misspelt",
        {
            "model": "gpt-4o",
            "messages": USER,
            "functions": [TOOL["function"]],
            "function_call": {"nm": "get_weather"},
        },
        "invalid_request",
        "function_call.name",
    ),
    (
        "image in a system message",
        {"model": "gpt-4o", "messages": [{"role": "system", "content": [IMAGE]}]},
        "invalid_request",
        "messages[0]",
    ),
    (
        "padding-only base64",
        {
            "model": "gpt-4o",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,===="}}],
                }
            ],
        },
        "invalid_request",
        "messages[0].content[0].image_url.url",
    ),
    (
        "json_schema without schema",
        {"model": "gpt-4o", "messages": USER, "response_format": {"type": "json_schema"}},
        "invalid_request",
        "response_format",
    ),
    (
        "top_logprobs without logprobs",
        {"model": "gpt-4o", "messages": USER, "top_logprobs": 2},
        "invalid_request",
        "top_logprobs",
    ),
    (
        "max_tokens beyond an explicit fallback",
        {"model": "gpt-5", "messages": USER, "max_tokens": 100_000, "fallbacks": ["gpt-4o"]},
        "invalid_request",
        "fallbacks[0]",
    ),
    ("seed past 64 bits", {"model": "gpt-4o", "messages": USER, "seed": 2**70}, "invalid_request", "seed"),
]


@pytest.mark.parametrize(
    ("case", "job", "code", "param"), STRICT_AND_EDGE, ids=[c[0] for c in STRICT_AND_EDGE]
)
def test_wrong_types_and_edges_are_refused_not_coerced(sim_catalog, case, job, code, param) -> None:
    with pytest.raises(RouterError) as info:
        Validator(sim_catalog, Settings(_env_file=None)).prepare(job, now=1.0)
    assert (info.value.code, info.value.param) == (code, param), info.value


def test_unencodable_metadata_is_refused_not_crashed(sim_catalog) -> None:
    v = Validator(sim_catalog, Settings(_env_file=None))
    for bad in ({"n": 2**70}, {1: "x"}, {"s": "\ud800"}):
        with pytest.raises(RouterError) as info:
            v.prepare({"model": "gpt-4o", "messages": USER, "metadata": bad}, now=1.0)
        assert info.value.code == "invalid_request"


def test_default_fallbacks_that_cannot_give_max_tokens_are_skipped(sim_catalog) -> None:
    job = Validator(sim_catalog, Settings(_env_file=None)).prepare(
        {"model": "gpt-5", "messages": USER, "max_tokens": 100_000}, now=1.0
    )
    assert job.route == ["gpt-5"]  # claude-sonnet-4-5 (64k) and gemini-2.5-pro (65k) cannot


def test_long_base64_images_never_crash_on_path_probing(sim_catalog) -> None:
    png = base64.b64decode(
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    )
    noise = base64.b64encode(png + bytes(range(256)) * 3).decode()
    assert "/" in noise[255:] and len(noise) > 300
    v = Validator(sim_catalog, Settings(_env_file=None))
    for allow in (False, True):
        job = v.prepare({"model": "gpt-4o", "prompt": "?", "image": noise}, now=1.0, allow_files=allow)
        assert orjson.loads(job.request)["messages"][0]["content"][1]["image_url"]["url"].startswith(
            "data:image/png;base64,"
        )
    with pytest.raises(RouterError) as info:
        v.prepare({"model": "gpt-4o", "prompt": "?", "image": "x/" * 300}, now=1.0, allow_files=True)
    assert info.value.code == "invalid_request"


def test_body_limit_counts_bytes_and_images_read_from_files(sim_catalog, tmp_path) -> None:
    v = Validator(sim_catalog, Settings(_env_file=None, max_body_bytes=2000))
    wide = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "é" * 1000}]}).decode()
    assert len(wide) < 2000 < len(wide.encode())
    with pytest.raises(RouterError) as info:
        v.prepare(wide, now=1.0)
    assert info.value.code == "payload_too_large"
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(3000))
    with pytest.raises(RouterError) as info:
        v.prepare({"model": "gpt-4o", "prompt": "?", "image": str(big)}, now=1.0, allow_files=True)
    assert info.value.code == "payload_too_large"


def test_settings_repr_hides_the_redis_password() -> None:
    settings = Settings(_env_file=None, redis_url="redis://:hunter2@127.0.0.1:6379/0")
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings.model_dump())


# one valid value for every request field of OpenAI's chat API (the installed SDK's own list):
# none may be refused, whatever the model it goes to
OPENAI_FIELD_VALUES: dict[str, Any] = {
    "audio": {"voice": "alloy", "format": "wav"},
    "frequency_penalty": 0.5,
    "logit_bias": {"50256": -100},
    "logprobs": True,
    "max_completion_tokens": 100,
    "max_tokens": 100,
    "metadata": {"k": "v"},
    "modalities": ["text"],
    "moderation": {"model": "omni-moderation-latest"},
    "n": 2,
    "parallel_tool_calls": False,
    "prediction": {"type": "content", "content": "hi"},
    "presence_penalty": 0.5,
    "prompt_cache_key": "conversation-1",
    "prompt_cache_options": {"mode": "implicit", "ttl": "30m"},
    "prompt_cache_retention": "24h",
    "reasoning_effort": "xhigh",
    "response_format": {"type": "json_object"},
    "safety_identifier": "user-hash",
    "seed": 7,
    "service_tier": "flex",
    "stop": ["\n"],
    "store": True,
    "stream": True,
    "stream_options": {"include_usage": True, "include_obfuscation": False},
    "temperature": 0.2,
    "tool_choice": "auto",
    "tools": [TOOL],
    "top_logprobs": 2,
    "top_p": 0.9,
    "user": "u1",
    "verbosity": "low",
    "web_search_options": {"search_context_size": "low"},
    "function_call": "auto",
    "functions": [TOOL["function"]],
}
_NEEDS = {
    "top_logprobs": {"logprobs": True},
    "tool_choice": {"tools": [TOOL]},
    "stream_options": {"stream": True},
}


def test_every_openai_request_field_has_a_value_here() -> None:
    from openai.types.chat.completion_create_params import CompletionCreateParamsBase

    # `stream` is declared on the streaming and non-streaming subclasses
    assert set(CompletionCreateParamsBase.__annotations__) | {"stream"} == set(OPENAI_FIELD_VALUES) | {
        "model",
        "messages",
    }


@pytest.mark.parametrize("field", sorted(OPENAI_FIELD_VALUES))
@pytest.mark.parametrize("model", ["gpt-4o", "claude-sonnet-4-5", "gemini-2.5-flash"])
def test_no_field_openai_accepts_is_refused(sim_catalog, field: str, model: str) -> None:
    if field in ("function_call",):
        extra = {"functions": OPENAI_FIELD_VALUES["functions"]}
    else:
        extra = _NEEDS.get(field, {})
    job = {"model": model, "messages": USER, **extra, field: OPENAI_FIELD_VALUES[field]}
    prepared = Validator(sim_catalog, Settings(_env_file=None)).prepare(job, now=1.0)
    assert orjson.loads(prepared.request)[field] == OPENAI_FIELD_VALUES[field]


def test_store_is_accepted_and_noted_as_ignored(sim_catalog) -> None:
    from llm_router.contract import JobRecord

    prepared = Validator(sim_catalog, Settings(_env_file=None)).prepare(
        {"model": "gpt-4o", "messages": USER, "store": True}, now=1.0
    )
    assert prepared.ignored == "store"
    fields = prepared.optional_fields()
    assert fields[fields.index("ignored") + 1] == "store"
    record = JobRecord.model_validate(
        {
            "id": "j",
            "status": "queued",
            "request": {},
            "model_requested": "gpt-4o",
            "route": ["gpt-4o"],
            "created_at": 1.0,
            "deadline_at": 2.0,
            "ignored": prepared.ignored,
        }
    )
    assert record.ignored == ["store"]


def test_an_answer_echoed_back_is_accepted(sim_catalog) -> None:
    """The SDKs' documented tool loop appends the answer's message (with ``refusal``, ``annotations``)
    and a tool result whose content is a list of text parts; ``name`` may come on any role."""
    from openai.types.chat import ChatCompletionMessage

    answer = ChatCompletionMessage.model_validate(
        {
            "role": "assistant",
            "content": None,
            "refusal": None,
            "annotations": [],
            "audio": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        }
    )
    messages = [
        {"role": "system", "content": "be brief", "name": "sys"},
        {"role": "user", "content": "hi", "name": "alice"},
        answer.model_dump(),  # every key, nulls included
        {"role": "tool", "tool_call_id": "c1", "name": "f", "content": [{"type": "text", "text": "42"}]},
        answer.model_dump(exclude_none=True) | {"tool_calls": None, "content": "done"},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't."}], "refusal": "I can't."},
        {"role": "user", "content": "and?"},
    ]
    prepared = Validator(sim_catalog, Settings(_env_file=None)).prepare(
        {"model": "gpt-4o", "messages": messages}, now=1.0
    )
    assert orjson.loads(prepared.request)["messages"][2]["annotations"] == []


def test_url_safe_base64_is_normalised(sim_catalog) -> None:
    data = bytes(range(250, 256)) * 3  # encodes with "+" and "/" in the standard alphabet
    standard = base64.b64encode(data).decode()
    url_safe = base64.urlsafe_b64encode(data).decode().rstrip("=")
    assert "-" in url_safe or "_" in url_safe
    image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{url_safe}"}}
    prepared = Validator(sim_catalog, Settings(_env_file=None)).prepare(
        {"model": "gpt-4o", "messages": [{"role": "user", "content": [image]}]}, now=1.0
    )
    url = orjson.loads(prepared.request)["messages"][0]["content"][0]["image_url"]["url"]
    assert url == f"data:image/png;base64,{standard}"


def test_http_image_urls_are_accepted_unless_the_setting_forbids_them(sim_catalog) -> None:
    job = {
        "model": "gpt-4o",
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}],
            }
        ],
    }
    Validator(sim_catalog, Settings(_env_file=None)).prepare(job, now=1.0)
    with pytest.raises(RouterError) as info:
        Validator(sim_catalog, Settings(_env_file=None, image_urls_allow_http=False)).prepare(job, now=1.0)
    assert (info.value.code, info.value.param) == ("invalid_request", "messages[0].content[0].image_url.url")
    private = {
        **job,
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "http://10.0.0.1/a.png"}}],
            }
        ],
    }
    # private addresses depend on the fetching worker's settings (and a provider fetches its own)
    Validator(sim_catalog, Settings(_env_file=None)).prepare(private, now=1.0)
