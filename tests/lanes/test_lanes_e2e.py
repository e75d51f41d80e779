"""Lanes end to end: worker processes, the simulator's flex tier and Batch API, the batcher role."""

from __future__ import annotations

import asyncio
import time

from config.cost import call_usage
from llm_router.keys import LANES_STATS_KEY, LANES_TURNAROUND_KEY, credits_key

JOB = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello lanes"}], "max_tokens": 20}


def _now_cost(sim_catalog, record) -> int:
    dep = sim_catalog.deployments("gpt-4o-mini")[0]
    return call_usage(dep.price, record.usage.prompt_tokens, record.usage.completion_tokens)["cost_nanos"]


async def test_flex_runs_at_the_flex_price(lanes, sim_lanes, sim_catalog) -> None:
    await sim_lanes(flex_latency_ms=[50, 80])
    job = await lanes.submit({**JOB, "lane": "flex"})
    record = await lanes.wait(job.job_id, timeout=20)
    assert record.status == "succeeded", record.error
    assert record.lane == "flex" and record.response["service_tier"] == "flex"
    assert abs(record.usage.cost_nanos * 2 - _now_cost(sim_catalog, record)) <= 1


async def test_flex_unavailable_falls_back_to_now(lanes, sim_lanes, sim_catalog) -> None:
    await sim_lanes(flex_unavailable=1.0)
    job = await lanes.submit({**JOB, "service_tier": "flex"})
    record = await lanes.wait(job.job_id, timeout=20)
    assert record.status == "succeeded", record.error
    assert record.lane == "now" and "flex unavailable" in (record.lane_reason or "")
    assert record.usage.cost_nanos == _now_cost(sim_catalog, record)


async def test_batch_lane_runs_in_a_provider_batch(lanes, sim_lanes, sim_catalog, redis) -> None:
    await sim_lanes(turnaround_s=[0.3, 0.6])
    jobs = [await lanes.submit({**JOB, "lane": "batch", "deadline_s": 60}) for _ in range(5)]
    records = [await lanes.wait(j.job_id, timeout=30) for j in jobs]
    for record in records:
        assert record.status == "succeeded", record.error
        assert record.lane == "batch" and record.provider == "openai"
        assert abs(record.usage.cost_nanos * 2 - _now_cost(sim_catalog, record)) <= 1
        assert record.response["choices"][0]["message"]["content"]
    # the fleet learned the turnaround it saw (the simulator's 0.3-0.6 s, plus forming and polling)
    assert 0.2 < float(await redis.hget(LANES_TURNAROUND_KEY, "openai/gpt-4o-mini")) < 5


async def test_a_late_batch_goes_back_to_now_before_the_deadline(lanes, sim_lanes, redis) -> None:
    await sim_lanes(never_complete=1.0)
    before = int(await redis.hget(LANES_STATS_KEY, "redispatched") or 0)
    t0 = time.time()
    job = await lanes.submit({**JOB, "lane": "batch", "deadline_s": 4})
    record = await lanes.wait(job.job_id, timeout=20)
    assert record.status == "succeeded", record.error
    assert record.lane == "now" and "deadline" in (record.lane_reason or "")
    assert record.finished_at is not None and record.finished_at < t0 + 4
    assert int(await redis.hget(LANES_STATS_KEY, "redispatched") or 0) > before


async def test_per_item_failures_fall_back_per_job(lanes, sim_lanes) -> None:
    await sim_lanes(turnaround_s=[0.2, 0.3], item_failure=1.0)
    job = await lanes.submit({**JOB, "lane": "batch", "deadline_s": 60})
    record = await lanes.wait(job.job_id, timeout=20)
    assert record.status == "succeeded", record.error
    assert record.lane == "now" and "error" in (record.lane_reason or "")


async def test_auto_picks_batch_with_slack_and_now_without(lanes, sim_lanes, redis) -> None:
    await sim_lanes(turnaround_s=[0.2, 0.3])
    # the fleet learned that batches take 100 s here
    await redis.hset(LANES_TURNAROUND_KEY, "openai/gpt-4o-mini", 100)
    slack = await lanes.submit({**JOB, "lane": "auto", "deadline_s": 600})
    tight = await lanes.submit({**JOB, "lane": "auto", "deadline_s": 1.2})
    flex = await lanes.submit({**JOB, "lane": "auto", "deadline_s": 2.5})
    slack_record = await lanes.wait(slack.job_id, timeout=20)
    tight_record = await lanes.wait(tight.job_id, timeout=20)
    assert slack_record.lane == "batch", slack_record.lane_reason
    assert tight_record.lane == "now" and tight_record.lane_reason.startswith("auto")
    flex_record = await lanes.wait(flex.job_id, timeout=20)  # room for flex (1 s + margin), not a batch
    assert flex_record.lane == "flex" and flex_record.lane_reason.startswith("auto")
    await redis.hdel(LANES_TURNAROUND_KEY, "openai/gpt-4o-mini")


async def test_a_result_after_the_job_ran_now_is_wasted_spend_never_charged(lanes, sim_lanes, redis) -> None:
    from llm_router.credits import Ledger

    ledger = Ledger(redis)
    tenant = f"lanes-waste-{time.time_ns()}"
    await ledger.add(tenant, "10")
    await sim_lanes(turnaround_s=[3.0, 3.0])
    before = int(await redis.hget(LANES_STATS_KEY, "wasted_results") or 0)
    # one batch: the early job goes back to `now` (at 3.5 - 1 - 0.5 s), the other keeps the batch
    # alive until it completes, with an answer for both
    early = await lanes.submit({**JOB, "lane": "batch", "deadline_s": 3.5}, tenant=tenant)
    late = await lanes.submit({**JOB, "lane": "batch", "deadline_s": 60}, tenant=tenant)
    early_record = await lanes.wait(early.job_id, timeout=20, tenant=tenant)
    late_record = await lanes.wait(late.job_id, timeout=20, tenant=tenant)
    assert (early_record.lane, late_record.lane) == ("now", "batch")

    async def wasted() -> bool:
        return int(await redis.hget(LANES_STATS_KEY, "wasted_results") or 0) > before

    deadline = time.monotonic() + 10
    while not await wasted():
        assert time.monotonic() < deadline, "the late result was not counted as wasted"
        await asyncio.sleep(0.1)
    raw = {k.decode(): int(v) for k, v in (await redis.hgetall(credits_key(tenant))).items()}
    assert raw["reserved"] == 0
    # charged once per job: the ledger is the sum of the records (the wasted answer is not in it)
    assert raw["spent"] == early_record.usage.cost_nanos + late_record.usage.cost_nanos


async def test_batch_api_health_is_a_breaker_of_its_own(lanes, sim_lanes, redis) -> None:
    from llm_router.keys import SICK_KEY

    await sim_lanes(create_failure=1.0)
    for _ in range(5):  # the breaker's consecutive failures
        job = await lanes.submit({**JOB, "lane": "batch", "deadline_s": 60})
        record = await lanes.wait(job.job_id, timeout=20)
        assert record.status == "succeeded" and record.lane == "now"
        assert "batch not created" in (record.lane_reason or "")
    deadline = time.monotonic() + 5
    while not await redis.hexists(SICK_KEY, "openai/gpt-4o-mini#batch"):
        assert time.monotonic() < deadline, "the batch lane's breaker did not open"
        await asyncio.sleep(0.05)
    assert not await redis.hexists(SICK_KEY, "openai/gpt-4o-mini")  # the synchronous API is fine
    # auto no longer chooses the lane while its breaker is open
    job = await lanes.submit({**JOB, "lane": "auto", "deadline_s": 600})
    record = await lanes.wait(job.job_id, timeout=20)
    assert record.lane != "batch"


async def test_a_parked_batch_job_can_be_cancelled_and_costs_nothing(lanes, sim_lanes, redis) -> None:
    await sim_lanes(never_complete=1.0)
    job = await lanes.submit({**JOB, "lane": "batch", "deadline_s": 60})

    async def parked() -> bool:
        record = await lanes.get(job.job_id)
        return record.status == "queued" and record.lane == "batch" and record.runs == 1

    deadline = time.monotonic() + 10
    while not await parked():
        assert time.monotonic() < deadline, "the job was not handed to the batcher"
        await asyncio.sleep(0.05)
    await lanes.cancel(job.job_id)
    record = await lanes.wait(job.job_id, timeout=10)
    assert record.status == "cancelled" and record.usage is None


async def test_interactive_auto_never_waits_for_a_batch(lanes, sim_lanes) -> None:
    await sim_lanes(turnaround_s=[0.2, 0.3])
    sub = await lanes.submit({**JOB, "lane": "auto", "deadline_s": 600}, interactive=True)
    record = await lanes.wait(sub.job_id, timeout=20)
    assert record.status == "succeeded" and record.lane != "batch"


async def test_a_streamed_flex_job_falls_back_to_now_on_a_flex_429(lanes, sim_lanes) -> None:
    await sim_lanes(flex_unavailable=1.0)
    job = await lanes.submit({**JOB, "lane": "flex", "stream": True})
    record = await lanes.wait(job.job_id, timeout=20)
    assert record.status == "succeeded", record.error
    assert record.lane == "now" and "flex unavailable" in (record.lane_reason or "")


async def test_a_streamed_flex_job_runs_flex(lanes, sim_lanes) -> None:
    await sim_lanes()
    job = await lanes.submit({**JOB, "lane": "flex", "stream": True})
    record = await lanes.wait(job.job_id, timeout=20)
    assert record.status == "succeeded", record.error
    assert record.lane == "flex"
