"""Claude and Gemini jobs end to end on their native wire formats: real worker processes, real Redis,
the simulator speaking Anthropic Messages and Gemini generateContent. Every record must be a valid
OpenAI ``chat.completion`` and cost exactly what its usage costs (genai-prices agrees)."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from genai_prices import Usage, calc_price
from openai.types.chat import ChatCompletion

from config.catalog import Catalog
from llm_router.contract import JobRecord
from producer.gemini_native import chat_completion_to_gemini
from producer.producer import Producer

PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TOOL_TURNS = [
    {"role": "user", "content": "weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_a1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_a1", "content": '{"celsius": 18}'},
]


def _jobs() -> list[dict]:
    image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}}
    jobs: list[dict] = []
    for model in (
        "claude-sonnet-4-5",
        "claude-haiku-4-5",
        "claude-opus-5",
        "gemini-2.5-flash",
        "gemini-3-pro-preview",
    ):
        jobs += [
            {
                "model": model,
                "max_tokens": 60,
                "temperature": 0.4,
                "stop": ["zzz"],
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": f"hello {model}"},
                ],
            },
            {
                "model": model,
                "messages": [{"role": "user", "content": [{"type": "text", "text": "what is this?"}, image]}],
            },
            {"model": model, "tools": [WEATHER], "messages": TOOL_TURNS[:1]},
            {"model": model, "tools": [WEATHER], "messages": TOOL_TURNS},
            {
                "model": model,
                "functions": [WEATHER["function"]],
                "messages": [{"role": "user", "content": "legacy"}],
            },
            {
                "model": model,
                "reasoning_effort": "low",
                "max_tokens": 4000,
                "messages": [{"role": "user", "content": "think"}],
            },
        ]
    jobs.append(  # Anthropic fetches URL images itself: the URL goes upstream as a URL source
        {"model": "claude-sonnet-4-5", "prompt": "describe", "image": "https://example.com/cat.jpg"}
    )
    jobs.append({"model": "gemini-2.5-pro", "n": 2, "messages": [{"role": "user", "content": "two answers"}]})
    jobs.append(  # a Gemini-native body, answered on Claude
        {
            "model": "claude-sonnet-4-5",
            "systemInstruction": {"parts": [{"text": "You are a cat."}]},
            "contents": [{"role": "user", "parts": [{"text": "Hello there"}]}],
            "generationConfig": {"maxOutputTokens": 50},
        }
    )
    return jobs


def check_record(record: JobRecord, catalog: Catalog) -> None:
    """A valid chat.completion whose cost is exactly its usage's, as genai-prices prices it too."""
    assert record.status == "succeeded", record.error
    ChatCompletion.model_validate(record.response)
    usage = record.usage
    assert usage is not None and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert record.response["usage"]["prompt_tokens"] == usage.prompt_tokens
    dep = next(d for d in catalog.deployments(record.model) if d.provider == record.provider)
    nanos = dep.price.cost_nanos(
        usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, usage.cache_write_tokens
    )
    assert usage.cost_nanos == nanos and usage.cost == record.response["usage"]["cost"]
    provider, _, ref = dep.price.source.removeprefix("genai-prices:").partition("/")
    want = calc_price(
        Usage(
            input_tokens=usage.prompt_tokens,
            cache_read_tokens=usage.cached_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            output_tokens=usage.completion_tokens,
        ),
        ref,
        provider_id=provider,
    ).total_price
    assert nanos == int((want * 10**9).quantize(Decimal(1), rounding=ROUND_HALF_UP))


async def test_claude_and_gemini_jobs_run_natively_with_valid_records_and_exact_cost(
    native: Producer, sim_catalog: Catalog
) -> None:
    jobs = _jobs()
    subs = await native.submit_many(jobs)
    records = await native.wait_many([s.job_id for s in subs], timeout=60)
    for job, record in zip(jobs, records, strict=True):
        check_record(record, sim_catalog)
        assert record.provider == ("anthropic" if record.model.startswith("claude") else "gemini")
        assert len(record.attempts) == 1
        choices = record.response["choices"]
        if job.get("tools") and job["messages"][-1]["role"] == "user":
            assert choices[0]["finish_reason"] == "tool_calls"
            assert choices[0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
        elif job.get("functions"):
            assert choices[0]["finish_reason"] == "function_call"
            assert choices[0]["message"]["function_call"]["name"] == "get_weather"
        else:
            assert isinstance(choices[0]["message"]["content"], str) and choices[0]["finish_reason"] in (
                "stop",
                "length",
            )
        if job.get("reasoning_effort") and record.provider == "gemini":
            assert 0 < usage_reasoning(record) < record.usage.completion_tokens
    assert len(records[-2].response["choices"]) == 2
    assert records[-1].request["answer_format"] == "gemini"
    chat_completion_to_gemini(records[-1].response)  # the HTTP API's answer for a Gemini-native job


def usage_reasoning(record: JobRecord) -> int:
    assert record.usage is not None
    return record.usage.reasoning_tokens


async def test_gemini_implicit_cache_is_priced_at_the_cached_rate(
    native: Producer, sim_catalog: Catalog
) -> None:
    context = [
        {"role": "user", "content": "background " * 500},
        {"role": "assistant", "content": "noted"},
    ]
    first = await native.wait(
        (
            await native.submit(
                {
                    "model": "gemini-2.5-flash",
                    "fallbacks": [],
                    "messages": [*context, {"role": "user", "content": "q1"}],
                }
            )
        ).job_id,
        timeout=30,
    )
    second = await native.wait(
        (
            await native.submit(
                {
                    "model": "gemini-2.5-flash",
                    "fallbacks": [],
                    "messages": [*context, {"role": "user", "content": "q2"}],
                }
            )
        ).job_id,
        timeout=30,
    )
    for record in (first, second):
        check_record(record, sim_catalog)
    assert first.usage.cached_tokens == 0
    assert 1024 <= second.usage.cached_tokens < second.usage.prompt_tokens
    assert second.response["usage"]["prompt_tokens_details"]["cached_tokens"] == second.usage.cached_tokens
    assert second.usage.cost_nanos < first.usage.cost_nanos


async def test_native_errors_follow_the_taxonomy(native: Producer, sim, sim_catalog: Catalog) -> None:
    await sim.faults(
        {"credential": "sk-sim-anthropic", "model": "claude-haiku-4-5", "kind": "status", "status": 529},
        {
            "credential": "sk-sim-gemini",
            "model": "gemini-2.5-flash-lite",
            "kind": "status",
            "status": 429,
            "retry_after": 3,
        },
        {"credential": "sk-sim-gemini", "model": "gemini-2.5-pro", "kind": "content_filter"},
    )
    try:
        jobs = [
            {"model": "claude-haiku-4-5", "fallbacks": [], "messages": [{"role": "user", "content": "busy"}]},
            {
                "model": "gemini-2.5-flash-lite",
                "fallbacks": [],
                "messages": [{"role": "user", "content": "limited"}],
            },
            {"model": "gemini-2.5-pro", "messages": [{"role": "user", "content": "unsafe"}]},
        ]
        subs = await native.submit_many(jobs)
        busy, limited, filtered = await native.wait_many([s.job_id for s in subs], timeout=30)
    finally:
        await sim.faults()
    # Anthropic's overloaded_error (529) and Gemini's RESOURCE_EXHAUSTED move on to AIsa
    for record, code, status in ((busy, "overloaded", 529), (limited, "rate_limited", 429)):
        check_record(record, sim_catalog)
        assert record.provider == "aisa"
        first = record.attempts[0]
        assert (first.provider, first.outcome, first.error_code, first.http_status) == (
            "anthropic" if code == "overloaded" else "gemini",
            "error",
            code,
            status,
        )
    # a blocked prompt is final: no fallback, content_filtered
    assert filtered.status == "failed" and filtered.error["code"] == "content_filtered"
    assert [(a.provider, a.error_code) for a in filtered.attempts] == [("gemini", "content_filtered")]
