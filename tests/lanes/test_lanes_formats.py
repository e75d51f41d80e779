"""The batch lane in each provider's own batch format, end to end: worker processes, the batcher
role, the simulator's OpenAI Batch API, Anthropic Message Batches and Gemini batch mode. Per format:
success at the batch price, per-item errors falling back per job, expiry, cancellation (by the
provider, and of a batch whose jobs all went back to `now`), re-dispatch before the deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from config.catalog import Catalog
from config.cost import call_usage
from config.settings import DEFAULT_CATALOG
from llm_router.keys import lane_batch_key, record_key
from llm_router.testing.sim_env import SIM_KEYS
from tests.lanes.conftest import sim_lane_counters
from worker.batch_api import client_for

FORMATS = [
    pytest.param("gpt-4.1-mini", "openai", id="openai"),
    pytest.param("claude-haiku-4-5", "anthropic", id="anthropic"),
    pytest.param("gemini-2.5-flash", "gemini", id="gemini"),
]


def _job(model: str, **extra) -> dict:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "hello batch"}],
        "max_tokens": 50,
        **extra,
    }


@pytest.fixture
async def provider_dep(sim) -> AsyncIterator:
    """The batch deployment of a model as the workers see it (the simulator's origin, its keys)."""
    catalog = Catalog.from_path(DEFAULT_CATALOG, env=SIM_KEYS, upstream=sim.url)

    def dep(model: str, provider: str):
        return next(d for d in catalog.deployments(model) if d.provider == provider)

    yield dep


async def _until(check, timeout: float = 15, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"{what} did not happen"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(("model", "provider"), FORMATS)
async def test_success_at_the_batch_price(lanes, sim_lanes, provider_dep, model, provider) -> None:
    await sim_lanes(turnaround_s=[0.2, 0.3])
    dep = provider_dep(model, provider)
    # thinking where the model does it: its tokens are billed as output, at the batch price too
    extra = {} if provider == "openai" else {"reasoning_effort": "low", "max_tokens": 4000}
    jobs = [await lanes.submit(_job(model, lane="batch", deadline_s=60, **extra)) for _ in range(3)]
    for job in jobs:
        record = await lanes.wait(job.job_id, timeout=30)
        assert record.status == "succeeded", record.error
        assert record.lane == "batch" and record.provider == provider, record.lane_reason
        assert record.response["choices"][0]["message"]["content"]
        assert record.attempts[-1].worker == "batcher"
        u = record.usage
        counts = (u.prompt_tokens, u.completion_tokens)
        full = call_usage(
            dep.price, *counts, cached_tokens=u.cached_tokens, cache_write_tokens=u.cache_write_tokens
        )
        assert u.cost_nanos > 0 and abs(u.cost_nanos * 2 - full["cost_nanos"]) <= 2
        if provider == "gemini":
            assert u.reasoning_tokens > 0


async def test_gemini_cached_tokens_are_priced_at_the_batch_discount(lanes, sim_lanes, provider_dep) -> None:
    """Gemini's implicit cache: a prompt prefix seen before (here by a `now` call) is read from the
    cache in the batch too, and the cached tokens cost the batch's share of the cached rate."""
    await sim_lanes(turnaround_s=[0.2, 0.3])
    long = "background " * 1500
    messages = [
        {"role": "system", "content": long},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "noted"},
        {"role": "user", "content": "second"},
    ]
    body = {"model": "gemini-2.5-flash", "messages": messages, "max_tokens": 30}
    warm = await lanes.submit({**body, "lane": "now"})
    assert (await lanes.wait(warm.job_id, timeout=20)).status == "succeeded"
    job = await lanes.submit({**body, "lane": "batch", "deadline_s": 60})
    record = await lanes.wait(job.job_id, timeout=30)
    assert record.lane == "batch" and record.provider == "gemini", record.lane_reason
    u = record.usage
    assert u.cached_tokens > 1000
    dep = provider_dep("gemini-2.5-flash", "gemini")
    full = call_usage(dep.price, u.prompt_tokens, u.completion_tokens, cached_tokens=u.cached_tokens)
    assert abs(u.cost_nanos * 2 - full["cost_nanos"]) <= 2


@pytest.mark.parametrize(("model", "provider"), FORMATS)
async def test_per_item_errors_fall_back_per_job(lanes, sim_lanes, model, provider) -> None:
    await sim_lanes(turnaround_s=[0.2, 0.3], item_failure=1.0)
    jobs = [await lanes.submit(_job(model, lane="batch", deadline_s=60)) for _ in range(2)]
    for job in jobs:
        record = await lanes.wait(job.job_id, timeout=30)
        assert record.status == "succeeded", record.error
        assert record.lane == "now"
        # the item's error went through the format's own error table, like a synchronous call's
        assert "answered it with an error (upstream_error)" in (record.lane_reason or ""), record.lane_reason


@pytest.mark.parametrize(("model", "provider"), FORMATS)
async def test_an_expired_batch_sends_its_jobs_back(lanes, sim_lanes, model, provider) -> None:
    await sim_lanes(never_complete=1.0, expiry_s=0.5)
    t0 = time.time()
    job = await lanes.submit(_job(model, lane="batch", deadline_s=60))
    record = await lanes.wait(job.job_id, timeout=30)
    assert record.status == "succeeded", record.error
    assert record.lane == "now" and "expired" in (record.lane_reason or ""), record.lane_reason
    assert record.finished_at is not None and record.finished_at < t0 + 20  # long before its deadline


async def _remote_of(lanes, redis, job_id: str) -> tuple[str, str]:
    """(our batch id, the provider's batch id) of a job, once its batch was created."""
    key = record_key(lanes.scoped(job_id))
    found: list[str] = []

    async def created() -> bool:
        batch = await redis.hget(key, "lane_batch")
        remote = batch and await redis.hget(lane_batch_key(batch.decode()), "remote_id")
        if remote:
            found[:] = [batch.decode(), remote.decode()]
        return bool(remote)

    await _until(created, what="the provider batch's creation")
    return found[0], found[1]


@pytest.mark.parametrize(("model", "provider"), FORMATS)
async def test_a_batch_cancelled_by_the_provider_sends_its_jobs_back(
    lanes, sim_lanes, redis, provider_dep, model, provider
) -> None:
    await sim_lanes(never_complete=1.0)
    job = await lanes.submit(_job(model, lane="batch", deadline_s=60))
    _, remote = await _remote_of(lanes, redis, job.job_id)
    async with aiohttp.ClientSession() as session:  # someone else cancels it (the provider's console)
        await client_for(session, provider_dep(model, provider)).cancel(remote)
    record = await lanes.wait(job.job_id, timeout=30)
    assert record.status == "succeeded", record.error
    assert record.lane == "now" and "cancelled" in (record.lane_reason or ""), record.lane_reason


@pytest.mark.parametrize(("model", "provider"), FORMATS)
async def test_a_late_batch_goes_back_before_the_deadline_and_is_cancelled(
    lanes, sim_lanes, sim, redis, model, provider
) -> None:
    await sim_lanes(never_complete=1.0)
    before = (await sim_lane_counters(sim))["batches_cancelled"]
    t0 = time.time()
    job = await lanes.submit(_job(model, lane="batch", deadline_s=4))
    batch_id, _ = await _remote_of(lanes, redis, job.job_id)
    record = await lanes.wait(job.job_id, timeout=20)
    assert record.status == "succeeded", record.error
    assert record.lane == "now" and "deadline" in (record.lane_reason or ""), record.lane_reason
    assert record.finished_at is not None and record.finished_at < t0 + 4
    # the batch has no job left: the batcher cancels it at the provider, and reads it to its end

    async def cancelled() -> bool:
        status = await redis.hget(lane_batch_key(batch_id), "remote_status")
        return (await sim_lane_counters(sim))["batches_cancelled"] > before and status == b"cancelled"

    await _until(cancelled, what="the remote cancellation")
