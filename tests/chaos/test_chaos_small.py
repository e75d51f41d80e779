"""Chaos: workers killed and Redis restarted while the simulator drops and hangs calls.

CI size: 600 jobs (``make chaos``: 5,000 and three kills), 3 worker processes with a one-second
lease, Redis with AOF; workers SIGKILLed (and replaced) and Redis restarted from its data dir during
the run, while 5 % of calls are cut mid-response, 5 % reset, 10 % of streams cut mid-stream and 2 %
hang (a quarter of the jobs stream). Every job must end
``succeeded`` or ``failed`` with a code; none may stay queued, deferred or running; and the tenant's
ledger equals the sum of its records' costs: nothing is charged twice, however often a job re-ran.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections import Counter
from pathlib import Path

from config.catalog import Catalog
from config.settings import Settings
from llm_router.credits import Ledger
from llm_router.keys import credits_key
from llm_router.testing.redis_server import RedisServer
from llm_router.testing.sim_env import simulated_env
from llm_router.testing.worker_procs import Fleet
from producer.producer import Producer

# `make chaos` runs the full size: 5,000 jobs, three kills
JOBS = int(os.environ.get("LLM_ROUTER_CHAOS_JOBS", "600"))
KILLS = [(i % 3, JOBS * (i + 1) // 6) for i in range(3 if JOBS > 1000 else 2)]


async def test_jobs_survive_killed_workers_a_redis_restart_and_a_flaky_upstream(
    sim, sim_catalog: Catalog, tmp_path: Path, until
) -> None:
    data = tmp_path / "redis"
    data.mkdir()
    server = RedisServer(appendonly=True, data_dir=data).start()
    queue = f"chaos-{uuid.uuid4().hex[:6]}"
    env = simulated_env(os.environ, redis_url=server.url, sim_url=sim.url)
    env.update(
        LLM_ROUTER_QUEUE_NAME=queue,
        LLM_ROUTER_LEASE_S="1",
        LLM_ROUTER_HEARTBEAT_INTERVAL_S="0.2",
        LLM_ROUTER_HEARTBEAT_TTL_S="2",
        LLM_ROUTER_CALL_TIMEOUT_S="1.5",
        LLM_ROUTER_RETRY_BACKOFF_S="0.2",
        LLM_ROUTER_RETRY_BACKOFF_MAX_S="0.5",
        LLM_ROUTER_LOG_LEVEL="ERROR",
    )
    fleet = Fleet(env, tmp_path)
    producer = await Producer.connect(
        Settings(_env_file=None, redis_url=server.url, queue_name=queue), sim_catalog
    )
    await sim.faults(
        # mid-stream first: stream rules pass plain requests by, and the first matching rule wins
        {"kind": "cut", "probability": 0.1, "after_chunks": 2},
        {"kind": "truncated", "probability": 0.05},
        {"kind": "reset", "probability": 0.05},
        {"kind": "hang", "probability": 0.02, "hang_s": 3},
    )
    before = (await sim.calls())["total"]
    try:
        for _ in range(3):
            fleet.start(max_jobs=20)
        await until(lambda: _live(producer, 3), what="three workers")
        tenant = f"chaos-{uuid.uuid4().hex[:6]}"
        await Ledger(producer.redis).add(tenant, "100000")  # reservations are worst cases
        jobs = [
            {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": f"chaos {i}"}],
                "stream": i % 4 == 0,
            }
            for i in range(JOBS)
        ]
        subs = await producer.submit_many(jobs, tenant=tenant)
        ids = [producer.scoped(s.job_id, tenant) for s in subs]  # what the store knows them by
        waiter = asyncio.create_task(producer.wait_many(subs, timeout=600))
        for victim, after in KILLS:
            await until(lambda n=after: _done(producer, ids, n), timeout=300, what=f"{after} jobs done")
            fleet.procs[victim].proc.send_signal(signal.SIGKILL)
            fleet.start(max_jobs=20)
        await until(lambda: _done(producer, ids, JOBS * 2 // 3), timeout=300, what="two thirds done")
        await asyncio.to_thread(server.restart)
        records = await waiter
        calls = (await sim.calls())["total"] - before
        ledger = await producer.redis.hgetall(credits_key(tenant))
    finally:
        await sim.faults()
        fleet.stop_all()
        await producer.close()
        server.stop()
    statuses = Counter(r.status.value for r in records)
    assert set(statuses) <= {"succeeded", "failed"}, statuses
    assert all(r.error and r.error["code"] for r in records if r.status == "failed")
    # a stream cut after tokens went out fails (no fallback can take back what was sent), paid as streamed
    cut = [r for r in records if r.status == "failed" and r.error["code"] == "stream_interrupted"]
    assert all(r.partial_text and r.usage and r.usage.estimated for r in cut)
    assert statuses["succeeded"] >= JOBS * 0.95  # fallback and retries absorb a 12 % flaky upstream
    assert int(ledger[b"spent"]) == sum(r.usage.cost_nanos for r in records if r.usage)
    assert int(ledger[b"reserved"]) == 0
    reran = sum(r.runs > 1 for r in records)
    print(
        f"\nchaos: {dict(statuses)}; {reran} jobs ran more than once; "
        f"{calls / JOBS:.2f} provider calls per job"
    )


async def _live(producer: Producer, n: int) -> bool:
    return await producer.live_workers() >= n


async def _done(producer: Producer, ids: list[str], n: int) -> bool:
    try:
        statuses = await producer.store.statuses(ids)
    except Exception:  # Redis restarting: not done yet
        return False
    return sum(s in ("succeeded", "failed") for s in statuses) >= n


async def test_sigterm_to_every_worker_mid_run_then_restart_loses_nothing(
    sim, sim_catalog: Catalog, redis_server: RedisServer, tmp_path: Path, until
) -> None:
    queue = f"chaos-term-{uuid.uuid4().hex[:6]}"
    env = simulated_env(os.environ, redis_url=redis_server.url, sim_url=sim.url)
    env.update(
        LLM_ROUTER_QUEUE_NAME=queue,
        LLM_ROUTER_SHUTDOWN_GRACE_S="0.3",
        LLM_ROUTER_LEASE_S="1",
        LLM_ROUTER_HEARTBEAT_INTERVAL_S="0.2",
        LLM_ROUTER_LOG_LEVEL="ERROR",
    )
    fleet = Fleet(env, tmp_path)
    producer = await Producer.connect(
        Settings(_env_file=None, redis_url=redis_server.url, queue_name=queue), sim_catalog
    )
    await sim.faults({"kind": "latency", "latency_ms": 400})
    try:
        for _ in range(3):
            fleet.start(max_jobs=10)
        await until(lambda: _live(producer, 3), what="three workers")
        tenant = f"term-{uuid.uuid4().hex[:6]}"
        await Ledger(producer.redis).add(tenant, "100")
        jobs = [
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"term {i}"}]}
            for i in range(200)
        ]
        subs = await producer.submit_many(jobs, tenant=tenant)
        ids = [producer.scoped(s.job_id, tenant) for s in subs]
        await until(lambda: _done(producer, ids, 30), timeout=60, what="30 jobs done")
        await until(lambda: _running(producer, ids, 10), timeout=60, what="10 jobs in flight")
        for p in fleet.procs:
            p.proc.send_signal(signal.SIGTERM)
        codes = [await asyncio.to_thread(p.proc.wait, 20) for p in fleet.procs]
        assert codes == [0, 0, 0]
        for _ in range(3):
            fleet.start(max_jobs=10)
        records = await producer.wait_many(subs, timeout=120)
        ledger = await producer.redis.hgetall(credits_key(tenant))
    finally:
        await sim.faults()
        fleet.stop_all()
        await producer.close()
    assert [r.status for r in records] == ["succeeded"] * 200
    assert int(ledger[b"spent"]) == sum(r.usage.cost_nanos for r in records)  # nothing charged twice
    assert int(ledger[b"reserved"]) == 0
    put_back = [r for r in records if any(a.outcome == "interrupted" for a in r.attempts)]
    assert put_back and all(r.passes == 0 for r in put_back)  # put back without spending passes


async def _running(producer: Producer, ids: list[str], n: int) -> bool:
    return sum(s == "running" for s in await producer.store.statuses(ids)) >= n
