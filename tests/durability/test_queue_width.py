"""The queue scales with the fleet: concurrency on one queue grows with the workers, past arq's
``queue_read_limit``, and ``high`` jobs go first across the fleet (real worker processes)."""

from __future__ import annotations

from redis.asyncio import Redis

from llm_router.keys import leases_key
from llm_router.testing.worker_procs import Fleet
from producer.producer import Producer

HI = [{"role": "user", "content": "hello"}]


def _jobs(n: int, tag: str, **extra: object) -> list[dict]:
    return [
        {
            "model": "gpt-4o-mini",
            "fallbacks": [],
            "messages": [{"role": "user", "content": f"{tag} {i}"}],
            **extra,
        }
        for i in range(n)
    ]


async def test_fleet_concurrency_grows_past_the_read_limit(
    until, durable: Producer, fleet: Fleet, sim, redis: Redis
):
    await sim.faults({"model": "gpt-4o-mini", "kind": "latency", "latency_ms": 4000})
    try:
        for _ in range(4):
            # the deployments' concurrency limit starts past 80 and a busy job waits long for room:
            # what is measured is the queue's width, not the limiter's (a job deferred after the
            # 2 s default wait would leave the leases before a worker claiming late took its 20)
            fleet.start(
                max_jobs=20,
                LLM_ROUTER_QUEUE_READ_LIMIT="20",
                LLM_ROUTER_CONCURRENCY_INITIAL="100",
                LLM_ROUTER_CONCURRENCY_WAIT_S="30",
            )
        await until(lambda: _live(durable, 4), timeout=30, what="four workers")
        subs = await durable.submit_many(_jobs(80, "wide"))
        leases = leases_key(durable.settings.queue_name)
        # 4 workers x 20 slots hold 80 jobs at once; arq's read window of 20 would have stopped at 20
        await until(lambda: _held(redis, leases, 80), timeout=20, what="80 jobs in flight")
    finally:
        await sim.faults()
    records = await durable.wait_many(subs, timeout=60)
    assert all(r.status == "succeeded" for r in records)


async def test_high_priority_jobs_start_before_a_backlog_of_low_ones(
    until, durable: Producer, fleet: Fleet, sim
):
    lows = await durable.submit_many(_jobs(300, "low", priority="low"))
    highs = await durable.submit_many(_jobs(10, "high", priority="high"))
    fleet.start(max_jobs=5)  # starts once everything is queued: five slots for 310 jobs
    high_records = await durable.wait_many(highs, timeout=60)
    low_records = await durable.wait_many(lows, timeout=120)
    last_high = max(r.started_at or 0 for r in high_records)
    early = [r for r in low_records if (r.started_at or 0) < last_high]
    assert len(early) < 5, len(early)  # at most the first claim's slots went to low jobs
    assert all(r.priority == "low" for r in low_records) and all(r.priority == "high" for r in high_records)


async def _live(producer: Producer, n: int) -> bool:
    return await producer.live_workers() >= n


async def _held(redis: Redis, key: str, n: int) -> bool:
    return await redis.zcard(key) >= n
