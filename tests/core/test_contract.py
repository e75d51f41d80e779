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
        "http image",
        {
            "model": "gpt-4o",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}],
                }
            ],
        },
        "invalid_request",
        "messages[0].content[0].image_url.url",
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
        "streaming not offered yet",
        {"model": "gpt-4o", "messages": USER, "stream": True},
        "unsupported_capability",
        "stream",
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
    for image in (str(path), base64.b64encode(png).decode(), "https://example.com/cat.jpg"):
        prepared = v.prepare({"model": "gpt-4o", "prompt": "what is this?", "image": image}, now=1.0)
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
    assert payload == arq_job_payload("a.b:c-d_1", 1234567)
    parsed = deserialize_job(payload, deserializer=orjson.loads)
    assert (parsed.function, list(parsed.args), parsed.kwargs) == (RUN_JOB, ["a.b:c-d_1"], {})
