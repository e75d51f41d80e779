"""The job path end to end: real Redis, the simulator and two worker processes."""

from __future__ import annotations

import asyncio
import uuid
from decimal import ROUND_HALF_UP, Decimal

import pytest
from genai_prices import Usage, calc_price
from openai.types.chat import ChatCompletion

from config.catalog import Catalog
from config.cost import nanos_to_usd
from config.settings import Settings
from llm_router.errors import IdempotencyConflict, InvalidRequest, JobNotCancellable, NoWorkers
from llm_router.simulator import count_prompt_tokens
from producer.producer import JobFailed, Producer, Submitted

PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
CHAT_MODELS = [
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "claude-sonnet-4-5",
    "gemini-2.5-flash",
    "grok-4",
    "llama-3.1-70b",
    "mistral-large",
    "o1",
    "gpt-5-mini",
    "claude-3-sonnet",
    "mixtral-8x7b",
]
VISION_MODELS = ["gpt-4o", "claude-haiku-4-5", "gemini-2.5-pro"]


def _jobs(n: int) -> list[dict]:
    jobs = []
    for i in range(n):
        if i % 5 == 4:
            model = VISION_MODELS[i % 3]
            # Gemini needs bytes: an https image would be fetched by the worker, and tests stay offline
            url = i % 2 == 0 and not model.startswith("gemini")
            image = "https://example.com/cat.jpg" if url else f"data:image/png;base64,{PIXEL}"
            jobs.append({"model": VISION_MODELS[i % 3], "prompt": f"what is in image {i}?", "image": image})
        else:
            jobs.append(
                {
                    "model": CHAT_MODELS[i % len(CHAT_MODELS)],
                    "max_tokens": 40 + i % 50,
                    "messages": [
                        {"role": "system", "content": "be brief"},
                        {"role": "user", "content": f"question number {i} " * (1 + i % 7)},
                    ],
                }
            )
    return jobs


async def test_bulk_200_jobs_succeed_with_exact_cost_and_valid_responses(
    e2e: Producer, sim_catalog: Catalog
) -> None:
    results = await e2e.submit_many(_jobs(200))
    assert all(isinstance(r, Submitted) and r.created for r in results)
    records = await e2e.wait_many([r.job_id for r in results], timeout=90)
    assert [r.status for r in records] == ["succeeded"] * 200, [r.error for r in records if r.error][:3]
    providers = set()
    for record in records:
        ChatCompletion.model_validate(record.response)
        usage = record.usage
        assert usage is not None
        # the simulator counts tokens by a documented rule: the record must carry exactly those
        assert usage.prompt_tokens == count_prompt_tokens(record.request["messages"])
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
        assert record.response["usage"]["prompt_tokens"] == usage.prompt_tokens
        dep = next(d for d in sim_catalog.deployments(record.model) if d.provider == record.provider)
        assert usage.cost_nanos == dep.price.cost_nanos(usage.prompt_tokens, usage.completion_tokens)
        assert usage.cost == nanos_to_usd(usage.cost_nanos) == record.response["usage"]["cost"]
        if dep.price.source.startswith("genai-prices:"):  # independently, from genai-prices itself
            provider, _, ref = dep.price.source.removeprefix("genai-prices:").partition("/")
            want = calc_price(
                Usage(input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens),
                ref,
                provider_id=provider,
            ).total_price
            assert usage.cost_nanos == int((want * 10**9).quantize(Decimal(1), rounding=ROUND_HALF_UP))
        assert record.runs == 1 and len(record.attempts) == 1
        assert record.started_at and record.finished_at and record.created_at <= record.started_at
        providers.add(record.provider)
    # every format answered; a deployment at its concurrency limit (it starts at 10 in flight) passes
    # jobs to its model's next one (OpenRouter), without an attempt in the record
    assert providers >= {"openai", "anthropic", "gemini", "aisa", "xai", "mistral"}


async def test_resubmit_same_body_returns_existing_job_and_runs_once(e2e: Producer) -> None:
    job = {
        "job_id": f"idem-{uuid.uuid4().hex}",
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "once"}],
    }
    first = await e2e.submit(job)
    again = await e2e.submit(dict(reversed(list(job.items()))))
    assert first == Submitted(job["job_id"], True)
    assert again == Submitted(job["job_id"], False)
    record = await e2e.wait(job["job_id"], timeout=30)
    assert record.status == "succeeded" and record.runs == 1
    after = await e2e.submit(job)  # still the same job after it ended: nothing runs again
    assert after.created is False
    assert (await e2e.get(job["job_id"])).runs == 1


async def test_concurrent_submits_of_one_id_make_one_job(
    e2e: Producer, e2e_settings: Settings, sim_catalog: Catalog
) -> None:
    job_id = f"race-{uuid.uuid4().hex}"
    job = {"job_id": job_id, "model": "gpt-4o", "messages": [{"role": "user", "content": "race"}]}
    producers = [await Producer.connect(e2e_settings, sim_catalog) for _ in range(8)]
    try:
        results = await asyncio.gather(*(p.submit(job) for p in producers))
    finally:
        await asyncio.gather(*(p.close() for p in producers))
    assert sorted(r.created for r in results) == [False] * 7 + [True]
    record = await e2e.wait(job_id, timeout=30)
    assert record.status == "succeeded" and record.runs == 1


async def test_conflicting_resubmit_is_409(e2e: Producer) -> None:
    job_id = f"conflict-{uuid.uuid4().hex}"
    await e2e.submit({"job_id": job_id, "model": "gpt-4o", "messages": [{"role": "user", "content": "a"}]})
    with pytest.raises(IdempotencyConflict) as info:
        await e2e.submit(
            {"job_id": job_id, "model": "gpt-4o", "messages": [{"role": "user", "content": "b"}]}
        )
    assert (info.value.status, info.value.param) == (409, "job_id")
    assert (await e2e.wait(job_id, timeout=30)).request["messages"][0]["content"] == "a"


async def test_alias_resolves_and_the_record_says_so(e2e: Producer) -> None:
    sub = await e2e.submit({"model": "gemini-2.0-flash", "messages": [{"role": "user", "content": "hi"}]})
    record = await e2e.wait(sub.job_id, timeout=30)
    assert record.model_requested == "gemini-2.0-flash"
    assert record.model == record.response["model"] == "gemini-2.5-flash"


async def test_failed_deployment_falls_back_to_next_provider_then_next_model(e2e: Producer, sim) -> None:
    await sim.faults(
        {"credential": "sk-sim-openai", "model": "gpt-4.1", "kind": "status", "status": 503},
        {"model": "open-mixtral-8x7b", "kind": "status", "status": 429, "retry_after": 5},
        {"model": "mixtral-8x7b", "kind": "status", "status": 500},
        {"model": "mistralai/mixtral-8x7b-instruct", "kind": "reset"},
    )
    try:
        a = await e2e.submit({"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]})
        b = await e2e.submit(
            {
                "model": "mixtral-8x7b",
                "fallbacks": ["llama-3.1-8b"],
                "messages": [{"role": "user", "content": "hi"}],
            }
        )
        ra, rb = await e2e.wait_many([a.job_id, b.job_id], timeout=30)
    finally:
        await sim.faults()
    assert ra.status == "succeeded" and ra.provider == "aisa"
    # a 503 retries the same deployment once (short wait), then the next provider answers
    assert [(x.provider, x.outcome, x.error_code, x.http_status) for x in ra.attempts] == [
        ("openai", "error", "overloaded", 503),
        ("openai", "error", "overloaded", 503),
        ("aisa", "success", None, 200),
    ]
    assert ra.fallback_used is True
    assert rb.status == "succeeded" and rb.model == "llama-3.1-8b"
    # a 429 moves on at once (and marks the deployment limited); 500 and reset retry once first
    assert [x.error_code for x in rb.attempts] == [
        "rate_limited",
        "upstream_error",
        "upstream_error",
        "connection_error",
        "connection_error",
        None,
    ]


async def test_job_fails_with_upstream_code_and_status_502_and_no_secret(e2e: Producer, sim) -> None:
    await sim.faults(
        {"model": "grok-3", "kind": "status", "status": 401},
        {"model": "x-ai/grok-3", "kind": "status", "status": 403},
    )
    try:
        sub = await e2e.submit(
            {"model": "grok-3", "fallbacks": [], "messages": [{"role": "user", "content": "hi"}]}
        )
        record = await e2e.wait(sub.job_id, timeout=30)
    finally:
        await sim.faults()
    assert record.status == "failed"
    assert record.error["code"] == "auth_failed" and record.error["status"] == 502
    assert record.route == ["grok-3"]
    assert [a.error_code for a in record.attempts] == ["auth_failed"] * 3
    assert "sk-sim" not in record.model_dump_json()


async def test_retryable_failure_defers_then_succeeds(e2e: Producer, sim) -> None:
    # every deployment of gpt-5 fails on each call (a retry of the same deployment included), so the
    # first pass ends with nothing answered: the job is deferred and its second pass succeeds
    await sim.faults(
        {"model": "gpt-5", "kind": "status", "status": 502, "count": 4},
        {"model": "openai/gpt-5", "kind": "status", "status": 502, "count": 2},
    )
    try:
        sub = await e2e.submit(
            {"model": "gpt-5", "fallbacks": [], "messages": [{"role": "user", "content": "hi"}]}
        )
        record = await e2e.wait(sub.job_id, timeout=30)
    finally:
        await sim.faults()
    assert record.status == "succeeded" and record.runs == 2 and record.passes == 1
    assert [a.outcome for a in record.attempts] == ["error"] * 6 + ["success"]


async def test_deadline_exceeded(e2e: Producer, sim) -> None:
    await sim.faults({"model": "gpt-4.1-mini", "kind": "latency", "latency_ms": 3000})
    try:
        sub = await e2e.submit(
            {"model": "gpt-4.1-mini", "deadline_s": 0.5, "messages": [{"role": "user", "content": "slow"}]}
        )
        record = await e2e.wait(sub.job_id, timeout=30)
    finally:
        await sim.faults()
    assert record.status == "failed" and record.error["code"] == "deadline_exceeded"


async def test_interactive_chat_and_vision(e2e: Producer) -> None:
    answer = await e2e.chat("claude-sonnet-4-5", [{"role": "user", "content": "hello"}], max_tokens=30)
    ChatCompletion.model_validate(answer)
    assert answer["model"] == "claude-sonnet-4-5" and answer["usage"]["cost"] > 0
    seen = await e2e.vision("gpt-4o", f"data:image/png;base64,{PIXEL}", "what objects are in this image?")
    assert seen["choices"][0]["message"]["content"]


async def test_legacy_functions_get_function_call_back(e2e: Producer) -> None:
    fn = {
        "name": "get_weather",
        "description": "weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
    answer = await e2e.chat(
        "gpt-4o", [{"role": "user", "content": "weather in Paris?"}], functions=[fn], function_call="auto"
    )
    ChatCompletion.model_validate(answer)
    message = answer["choices"][0]["message"]
    assert message["function_call"]["name"] == "get_weather" and "tool_calls" not in message
    assert answer["choices"][0]["finish_reason"] == "function_call"


async def test_cancel_a_queued_job(producer: Producer, redis) -> None:
    # `producer` has a queue of its own that no worker serves, so the job stays queued
    sub = await producer.submit({"model": "gpt-4o", "messages": [{"role": "user", "content": "never"}]})
    assert await producer.store.queued() == 1
    record = await producer.cancel(sub.job_id)
    assert record.status == "cancelled" and record.error["code"] == "cancelled"
    assert await producer.store.queued() == 0
    assert not await redis.exists(f"arq:job:{sub.job_id}")
    with pytest.raises(JobNotCancellable):
        await producer.cancel(sub.job_id)


async def test_chat_without_worker_fails_fast(producer: Producer) -> None:
    with pytest.raises(NoWorkers) as info:
        await asyncio.wait_for(producer.chat("gpt-4o", [{"role": "user", "content": "hi"}]), timeout=5)
    assert (info.value.code, info.value.status) == ("no_workers", 503)
    assert await producer.store.queued() == 0


async def test_failed_interactive_chat_raises_typed_error(e2e: Producer, sim) -> None:
    await sim.faults({"model": "gpt-3.5-turbo", "kind": "status", "status": 400})
    try:
        with pytest.raises(JobFailed) as info:
            await e2e.chat("gpt-3.5-turbo", [{"role": "user", "content": "hi"}])
    finally:
        await sim.faults()
    assert info.value.code == "upstream_invalid_request" and info.value.record.status == "failed"
    assert len(info.value.record.attempts) == 1  # a caller error neither retries nor falls back


def test_sync_client_offers_the_same_calls(
    e2e: Producer, e2e_settings: Settings, sim_catalog: Catalog
) -> None:
    from producer.client import Client

    with Client(e2e_settings, sim_catalog) as client:
        answer = client.chat("gpt-4o-mini", [{"role": "user", "content": "hi"}], max_tokens=20)
        ChatCompletion.model_validate(answer)
        seen = client.vision("gpt-4o", f"data:image/png;base64,{PIXEL}", "what is this?")
        assert seen["choices"][0]["message"]["content"]
        subs = client.submit_many(
            [
                {"model": "grok-4", "messages": [{"role": "user", "content": "x"}]},
                {"model": "nope", "messages": [{"role": "user", "content": "x"}]},
            ]
        )
        assert isinstance(subs[0], Submitted) and subs[1].code == "model_not_found"
        record = client.wait(subs[0].job_id, timeout=30)
        assert record.status == "succeeded" and client.get(record.id).id == record.id
        with pytest.raises(InvalidRequest) as refused:  # refused at enqueue, before any worker sees it
            client.chat("gpt-4o", [{"role": "user", "content": "x"}], temperature=5)
        assert (refused.value.code, refused.value.param) == ("invalid_request", "temperature")
