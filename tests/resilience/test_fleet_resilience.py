"""Breakers, Retry-After, outages and rate limits across two worker processes and the simulator."""

from __future__ import annotations

import math
import subprocess
import sys
import time

import orjson

from llm_router.keys import SICK_KEY
from producer.producer import Producer

HI = [{"role": "user", "content": "hello"}]
OPENAI_GPT4O = {"credential": "sk-sim-openai", "model": "gpt-4o"}


def _job(i: int, model: str = "gpt-4o", **extra: object) -> dict:
    return {"model": model, "fallbacks": [], "messages": [{"role": "user", "content": f"job {i}"}], **extra}


async def _live(producer: Producer, n: int) -> bool:
    return await producer.live_workers() >= n


async def test_breaker_opens_at_threshold_stops_calls_then_recovers(
    producer_r: Producer, fleet, sim, calls, until, redis_server
) -> None:
    await sim.faults({**OPENAI_GPT4O, "kind": "status", "status": 503})
    try:
        fleet.start(max_jobs=2)
        fleet.start(max_jobs=2)
        await until(lambda: _live(producer_r, 2), what="two workers")
        before = await calls("sk-sim-openai", "gpt-4o")
        t0 = time.monotonic()
        subs = await producer_r.submit_many([_job(i) for i in range(60)])
        records = await producer_r.wait_many([s.job_id for s in subs], timeout=60)
        elapsed = time.monotonic() - t0
        primary = await calls("sk-sim-openai", "gpt-4o") - before
    finally:
        await sim.faults()
    assert all(r.status == "succeeded" and r.provider == "aisa" for r in records)
    # 3 consecutive failures open it; at most 4 calls were in flight then (2 workers x max_jobs 2);
    # after that only one probe per cooldown (1 s, -20 % jitter) reaches it
    assert primary <= 3 + 4 + math.ceil(elapsed / 0.8) + 1, (primary, elapsed)
    skipped = [a for r in records for a in r.attempts if a.outcome == "skipped"]
    assert skipped and all(a.provider == "openai" and a.error_code == "breaker_open" for a in skipped)

    board = subprocess.run(
        [sys.executable, "-m", "llm_router.cli", "breakers", "--json"],
        env={**fleet.env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    rows = {r["deployment"]: r for r in orjson.loads(board.stdout)}
    assert rows["openai/gpt-4o"]["state"] in ("open", "half_open") and rows["openai/gpt-4o"]["trips"] >= 1

    # the provider recovers: after the cooldown a probe succeeds, the breaker closes, traffic returns
    async def answered_by_openai() -> bool:
        sub = await producer_r.submit(_job(999))
        return (await producer_r.wait(sub.job_id, timeout=30)).provider == "openai"

    await until(answered_by_openai, timeout=15, what="the primary to be used again")
    rows = {
        r["deployment"]: r
        for r in orjson.loads(
            subprocess.run(
                [sys.executable, "-m", "llm_router.cli", "breakers", "--json"],
                env={**fleet.env},
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout
        )
    }
    assert rows["openai/gpt-4o"]["state"] == "closed"


async def test_half_open_lets_exactly_the_configured_probes_through_fleet_wide(
    producer_r: Producer, fleet, sim, calls, until, redis
) -> None:
    # the breaker is open and its cooldown is over; the primary answers slowly, so a probe is in
    # flight while the other jobs arrive: they must go elsewhere, not be probes too
    await redis.hset(SICK_KEY, "openai/gpt-4o", "open|1000")
    await sim.faults({**OPENAI_GPT4O, "kind": "latency", "latency_ms": 1500})
    try:
        fleet.start(max_jobs=4)
        fleet.start(max_jobs=4)
        await until(lambda: _live(producer_r, 2), what="two workers")
        before = await calls("sk-sim-openai", "gpt-4o")
        subs = await producer_r.submit_many([_job(i) for i in range(8)])
        records = await producer_r.wait_many([s.job_id for s in subs], timeout=30)
        primary = await calls("sk-sim-openai", "gpt-4o") - before
    finally:
        await sim.faults()
    # what the property is, read from the records: once the probe's call went out, no other job
    # called the primary until it came back. (A job that starts after the probe succeeded finds the
    # breaker closed and may call it: on a loaded machine a worker can be that late.)
    called = sorted(
        (a for r in records for a in r.attempts if a.provider == "openai" and a.outcome != "skipped"),
        key=lambda a: a.started_at,
    )
    assert len(called) == primary  # every call the primary got is in a record
    probe, after = called[0], called[1:]
    assert probe.breaker == "half_open" and probe.outcome == "success"
    assert probe.latency_ms is not None and probe.latency_ms >= 1500
    probe_back = probe.started_at + probe.latency_ms / 1000
    assert all(a.started_at >= probe_back - 0.01 and a.breaker == "closed" for a in after), called
    during = [r for r in records if r.created_at < probe_back and r.provider != "openai"]
    assert during and all(r.provider == "aisa" for r in during)  # the others went elsewhere
    assert sum(r.provider == "openai" for r in records) == len(called)
    assert await redis.hget(SICK_KEY, "openai/gpt-4o") is None  # the probe succeeded: closed


async def test_retry_after_on_the_only_deployment_defers_without_holding_a_slot(
    producer_r: Producer, fleet, sim, until
) -> None:
    await sim.faults(
        {
            "credential": "sk-sim-aisa",
            "model": "claude-haiku-4-5",
            "kind": "status",
            "status": 429,
            "retry_after": 2,
            "count": 1,
        }
    )
    try:
        fleet.start(max_jobs=1)  # one slot: the other job can only run if the first gives it up
        await until(lambda: _live(producer_r, 1), what="worker")
        limited = await producer_r.submit(_job(1, "claude-haiku-4-5"))
        await until(lambda: _status(producer_r, limited.job_id, "deferred"), what="the job deferred")
        other = await producer_r.submit(_job(2, "gemini-2.5-flash"))
        done_other = await producer_r.wait(other.job_id, timeout=30)
        done = await producer_r.wait(limited.job_id, timeout=30)
    finally:
        await sim.faults()
    assert done.status == "succeeded" and done_other.status == "succeeded"
    assert done_other.finished_at < done.finished_at
    assert done.finished_at - done.created_at >= 2.0
    assert [(a.error_code, a.http_status) for a in done.attempts] == [("rate_limited", 429), (None, 200)]


async def test_a_chain_down_for_five_seconds_ends_succeeded_not_failed(
    producer_r: Producer, fleet, sim, until
):
    # the 5 s window opens when the simulator takes the rules, so the bound is measured from just
    # before that call: the job cannot succeed until the window has closed
    fault_began = time.time()
    await sim.faults(
        {**OPENAI_GPT4O, "kind": "status", "status": 500, "for_s": 5},
        {"credential": "sk-sim-aisa", "model": "gpt-4o", "kind": "status", "status": 502, "for_s": 5},
    )
    try:
        fleet.start(max_jobs=2)
        await until(lambda: _live(producer_r, 1), what="worker")
        sub = await producer_r.submit(_job(1, deadline_s=60))
        record = await producer_r.wait(sub.job_id, timeout=40)
    finally:
        await sim.faults()
    assert record.status == "succeeded"
    assert record.finished_at - fault_began >= 5.0 and record.runs >= 2
    assert any(a.outcome == "error" for a in record.attempts) and record.attempts[-1].outcome == "success"


async def test_a_job_deferred_more_than_five_times_still_runs(producer_r: Producer, fleet, sim, until):
    await sim.faults(
        {
            "credential": "sk-sim-aisa",
            "model": "claude-haiku-4-5",
            "kind": "status",
            "status": 429,
            "retry_after": 0.25,
            "count": 7,  # seven runs end with a 429, however fast or slow the machine: the eighth answers
        }
    )
    try:
        fleet.start(max_jobs=2)
        await until(lambda: _live(producer_r, 1), what="worker")
        sub = await producer_r.submit(_job(1, "claude-haiku-4-5"))
        record = await producer_r.wait(sub.job_id, timeout=40)
    finally:
        await sim.faults()
    assert record.status == "succeeded" and record.runs > 5


async def _status(producer: Producer, job_id: str, status: str) -> bool:
    return (await producer.get(job_id)).status == status


async def test_1000_jobs_survive_a_primary_returning_503_and_it_is_not_hammered(
    producer_r: Producer, fleet, sim, calls, until
) -> None:
    await sim.faults({**OPENAI_GPT4O, "kind": "status", "status": 503})
    try:
        fleet.start(max_jobs=10)
        fleet.start(max_jobs=10)
        await until(lambda: _live(producer_r, 2), what="two workers")
        before = await calls("sk-sim-openai", "gpt-4o")
        t0 = time.monotonic()
        subs = await producer_r.submit_many([_job(i) for i in range(1000)])
        records = await producer_r.wait_many([s.job_id for s in subs], timeout=120)
        elapsed = time.monotonic() - t0
        primary = await calls("sk-sim-openai", "gpt-4o") - before
    finally:
        await sim.faults()
    assert [r.status for r in records] == ["succeeded"] * 1000
    periods = math.ceil(elapsed / 0.8) + 1
    # threshold (3) + what was in flight when it opened (2 x 10) + one probe per cooldown period
    assert primary <= 3 + 20 + periods, (primary, elapsed)
    print(f"\n1,000 jobs in {elapsed:.1f} s with the primary down: {primary} calls reached it")
