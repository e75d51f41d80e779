"""Crash recovery, graceful stop and Redis restarts, with real worker processes and a one-second lease."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from pathlib import Path

from config.catalog import Catalog
from config.settings import Settings
from llm_router.credits import Ledger
from llm_router.keys import idle_workers_key, record_key
from llm_router.testing.redis_server import RedisServer
from llm_router.testing.worker_procs import Fleet
from producer.producer import Producer

from .conftest import LEASE_S, durable_env

HI = [{"role": "user", "content": "hello"}]


async def _calls(sim, credential: str, model: str) -> int:
    snapshot = await sim.calls()
    return sum(c["count"] for c in snapshot["calls"] if c["credential"] == credential and c["model"] == model)


async def test_sigkill_mid_job_another_worker_finishes_it_within_the_lease(
    until, durable: Producer, fleet: Fleet, sim, redis
):
    # the first call hangs long enough for the kill to land mid-call however slow the machine is;
    # the next one (the second worker's) answers at once
    await sim.faults(
        {
            "credential": "sk-sim-openai",
            "model": "gpt-4o",
            "kind": "latency",
            "latency_ms": 60_000,
            "count": 1,
        }
    )
    try:
        first = fleet.start()
        await until(durable.live_workers, what="first worker")
        sub = await durable.submit({"model": "gpt-4o", "fallbacks": [], "messages": HI})
        key = record_key(durable.scoped(sub.job_id))
        await until(lambda: redis.hget(key, "inflight"), what="the job's call in flight")
        holder = await redis.hget(key, "worker")
        fleet.start()
        await until(lambda: _live(durable, 2), what="second worker")

        first.proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        await until(lambda: _changed(redis, key, holder), timeout=30, what="another worker taking the job")
        recovered_s = time.monotonic() - killed
        record = await durable.wait(sub.job_id, timeout=30)
    finally:
        await sim.faults()
    print(f"\nrecovery after SIGKILL: {recovered_s:.2f} s (lease {LEASE_S} s)")
    assert recovered_s < LEASE_S + 3  # the lease, not arq's job timeout + 10 s (1,810 s here)
    assert record.status == "succeeded" and record.runs == 2
    interrupted, done = record.attempts
    assert (interrupted.outcome, interrupted.provider, interrupted.model) == (
        "interrupted",
        "openai",
        "gpt-4o",
    )
    assert interrupted.worker == holder.decode() and interrupted.latency_ms is None
    assert done.outcome == "success" and done.provider == "openai"


async def test_a_job_longer_than_the_lease_runs_once(until, durable: Producer, fleet: Fleet, sim):
    await sim.faults(
        {"credential": "sk-sim-openai", "model": "gpt-4o-mini", "kind": "latency", "latency_ms": 3500}
    )
    before = await _calls(sim, "sk-sim-openai", "gpt-4o-mini")
    try:
        fleet.start()
        fleet.start()
        await until(lambda: _live(durable, 2), what="two workers")
        sub = await durable.submit({"model": "gpt-4o-mini", "fallbacks": [], "messages": HI})
        record = await durable.wait(sub.job_id, timeout=30)
    finally:
        await sim.faults()
    assert record.status == "succeeded"
    assert record.runs == 1 and len(record.attempts) == 1
    assert record.attempts[0].latency_ms > 3.0 * LEASE_S * 1000
    assert await _calls(sim, "sk-sim-openai", "gpt-4o-mini") - before == 1


async def test_sigterm_lets_running_jobs_finish_and_takes_no_new_ones(
    until, durable: Producer, fleet: Fleet, sim
):
    await sim.faults(
        {"credential": "sk-sim-openai", "model": "gpt-4.1", "kind": "latency", "latency_ms": 1200}
    )
    try:
        worker = fleet.start()
        await until(durable.live_workers, what="worker")
        running = await durable.submit({"model": "gpt-4.1", "fallbacks": [], "messages": HI})
        await until(lambda: _status(durable, running.job_id, "running"), what="job running")
        worker.proc.send_signal(signal.SIGTERM)
        await until(
            lambda: "stopping: no new jobs" in worker.log_path.read_text(),
            what="the worker to stop taking jobs",
        )

        async def withdrawn() -> bool:  # it said so first, then took back its wait for handed jobs
            return not await durable.redis.exists(idle_workers_key(durable.settings.queue_name))

        await until(withdrawn, what="the stopping worker to withdraw its wait for handed jobs")
        later = await durable.submit({"model": "gpt-4.1", "fallbacks": [], "messages": HI})
        code = await asyncio.to_thread(worker.proc.wait, 10)
        finished = await durable.get(running.job_id)
        assert code == 0
        assert finished.status == "succeeded" and finished.runs == 1
        assert (await durable.get(later.job_id)).status == "queued"  # the stopping worker took no new job
        assert await durable.live_workers() == 0  # it left the live list on the way out
        fleet.start()
        assert (await durable.wait(later.job_id, timeout=30)).status == "succeeded"
    finally:
        await sim.faults()


async def test_sigterm_past_the_grace_period_puts_the_job_back_unspent(
    until, durable: Producer, fleet: Fleet, sim
):
    await sim.faults(
        {
            "credential": "sk-sim-openai",
            "model": "gpt-4.1-mini",
            "kind": "latency",
            "latency_ms": 8000,
            "count": 1,
        }
    )
    try:
        worker = fleet.start(LLM_ROUTER_SHUTDOWN_GRACE_S="0.5")
        await until(durable.live_workers, what="worker")
        sub = await durable.submit({"model": "gpt-4.1-mini", "fallbacks": [], "messages": HI})
        await until(lambda: _status(durable, sub.job_id, "running"), what="job running")
        stopped = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(worker.proc.wait, 10)
        stop_s = time.monotonic() - stopped
        put_back = await durable.get(sub.job_id)
        assert code == 0 and stop_s < 3
        assert put_back.status == "queued" and put_back.passes == 0
        assert [a.outcome for a in put_back.attempts] == ["interrupted"]
        assert put_back.attempts[0].latency_ms >= 400
        fleet.start()
        record = await durable.wait(sub.job_id, timeout=30)
    finally:
        await sim.faults()
    assert record.status == "succeeded" and record.runs == 2 and record.passes == 0
    assert [a.outcome for a in record.attempts] == ["interrupted", "success"]


async def test_workers_and_waiters_survive_a_redis_restart_mid_run(
    until, sim, sim_catalog: Catalog, tmp_path: Path, queue: str
):
    data = tmp_path / "redis-data"
    data.mkdir()
    server = RedisServer(appendonly=True, data_dir=data).start()
    fleet = Fleet(durable_env(server.url, sim.url, queue), tmp_path)
    producer = await Producer.connect(
        Settings(_env_file=None, redis_url=server.url, queue_name=queue), sim_catalog
    )
    await sim.faults({"kind": "latency", "latency_ms": 20})
    try:
        fleet.start()
        fleet.start()
        await until(lambda: _live(producer, 2), what="two workers")
        jobs = [
            {"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": f"job {i}"}]}
            for i in range(500)
        ]
        ids = [s.job_id for s in await producer.submit_many(jobs)]
        waiter = asyncio.create_task(producer.wait_many(ids, timeout=90))
        await until(lambda: _count_done(producer, ids, 100), what="100 jobs done")
        await asyncio.to_thread(server.restart)
        records = await waiter
        assert all(p.alive() for p in fleet.procs), [p.log_tail() for p in fleet.procs]
    finally:
        await sim.faults()
        fleet.stop_all()
        await producer.close()
        server.stop()
    statuses = [r.status for r in records]
    assert statuses == ["succeeded"] * 500
    reran = sum(r.runs > 1 for r in records)
    print(f"\nredis restart mid-run: 500/500 succeeded, {reran} ran more than once")


async def _live(producer: Producer, n: int) -> bool:
    return await producer.live_workers() >= n


async def _status(producer: Producer, job_id: str, status: str) -> bool:
    return (await producer.get(job_id)).status == status


async def _changed(redis, key: str, holder: bytes) -> bool:
    worker = await redis.hget(key, "worker")
    return worker is not None and worker != holder


async def _count_done(producer: Producer, ids: list[str], n: int) -> bool:
    statuses = await producer.store.statuses([producer.scoped(j) for j in ids])
    return sum(s == "succeeded" for s in statuses) >= n


async def test_workers_sharing_a_queue_all_take_jobs(until, durable: Producer, fleet: Fleet, sim) -> None:
    # each worker has room for 2; with both busy, 4 jobs run at once (one worker alone would hold 2)
    await sim.faults(
        {"credential": "sk-sim-openai", "model": "gpt-4o-mini", "kind": "latency", "latency_ms": 1500}
    )
    try:
        fleet.start(max_jobs=2)
        fleet.start(max_jobs=2)
        await until(lambda: _live(durable, 2), what="two workers")
        subs = await durable.submit_many(
            [
                {"model": "gpt-4o-mini", "fallbacks": [], "messages": [{"role": "user", "content": f"{i}"}]}
                for i in range(8)
            ]
        )
        ids = [s.job_id for s in subs]

        async def four_running() -> bool:
            scoped = [durable.scoped(j) for j in ids]
            return sum(s == "running" for s in await durable.store.statuses(scoped)) >= 4

        await until(four_running, timeout=10, what="4 jobs running across two workers")
        records = await durable.wait_many(ids, timeout=30)
    finally:
        await sim.faults()
    assert all(r.status == "succeeded" for r in records)


async def test_a_job_that_keeps_killing_its_worker_fails_worker_lost(
    until, durable: Producer, fleet: Fleet, sim
):
    """A poison job (one whose every run ends with its worker's death) ends ``worker_lost`` with its
    reservation released, instead of taking the fleet down one worker at a time."""
    await sim.faults(
        {"credential": "sk-sim-openai", "model": "gpt-4.1-mini", "kind": "latency", "latency_ms": 30_000}
    )
    tenant = f"poison-{uuid.uuid4().hex[:6]}"
    await Ledger(durable.redis).add(tenant, "1")
    try:
        sub = await durable.submit({"model": "gpt-4.1-mini", "fallbacks": [], "messages": HI}, tenant=tenant)
        key = record_key(durable.scoped(sub.job_id, tenant))
        for death in range(2):  # LLM_ROUTER_MAX_LOST_RUNS=1: the second lost run is one too many
            worker = fleet.start(LLM_ROUTER_MAX_LOST_RUNS="1")
            await until(
                lambda: redis_field(durable, key, "inflight"), what=f"the job's call, run {death + 1}"
            )
            worker.kill()  # the job "killed" it, as an OOM would
            await durable.redis.hdel(key, "inflight")
        fleet.start(LLM_ROUTER_MAX_LOST_RUNS="1")
        record = await durable.wait(sub.job_id, timeout=30, tenant=tenant)
    finally:
        await sim.faults()
    assert record.status == "failed" and record.error["code"] == "worker_lost"
    assert record.lost_runs == 2 and [a.outcome for a in record.attempts] == ["interrupted"] * 2
    balance = await Ledger(durable.redis).show(tenant)
    assert balance is not None and balance.reserved == 0 and balance.spent == 0


async def redis_field(producer: Producer, key: str, field: str) -> bytes | None:
    return await producer.redis.hget(key, field)
