"""Chaos with many metered tenants: jobs that multiply their cost (``n``, images, tools) against a
slow simulator, a worker SIGKILLed twice and Redis restarted once.

CI size: 20 tenants x 10 jobs (``make chaos``: 200 tenants x 50). Every job ends; none is lost or
stuck; every tenant's ledger equals the sum of its records' costs; no tenant spends more than its
credit plus one job's overrun, whatever its jobs asked for.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from config.catalog import Catalog
from config.settings import Settings
from llm_router.credits import Ledger
from llm_router.keys import credits_key
from llm_router.testing.redis_server import RedisServer
from llm_router.testing.sim_env import simulated_env
from llm_router.testing.worker_procs import Fleet
from producer.producer import Producer, Submitted

TENANTS = int(os.environ.get("LLM_ROUTER_CHAOS_TENANTS", "20"))
JOBS_EACH = int(os.environ.get("LLM_ROUTER_CHAOS_TENANT_JOBS", "10"))
PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d4944415478da63f8cf"
        "c0f01f0005000201ff8a0b3a450000000049454e44ae426082"
    )
).decode()
TOOL = {
    "type": "function",
    "function": {"name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}},
}


def _job(t: int, i: int) -> dict[str, Any]:
    text = f"tenant {t} job {i}: summarise the quick brown fox"
    kind = i % 3
    if kind == 0:  # many choices
        return {
            "model": "gpt-4o-mini",
            "n": 8,
            "max_tokens": 30,
            "messages": [{"role": "user", "content": text}],
        }
    if kind == 1:  # images
        parts = [{"type": "text", "text": text}]
        parts += [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}] * 3
        return {"model": "gpt-4o-mini", "max_tokens": 30, "messages": [{"role": "user", "content": parts}]}
    return {  # tools
        "model": "gpt-4o-mini",
        "max_tokens": 30,
        "n": 2,
        "tools": [TOOL],
        "tool_choice": "required",
        "messages": [{"role": "user", "content": text}],
    }


async def test_metered_tenants_survive_kills_and_a_restart_and_never_overspend(
    sim, sim_catalog: Catalog, tmp_path: Path, until
) -> None:
    data = tmp_path / "redis"
    data.mkdir()
    server = RedisServer(appendonly=True, data_dir=data).start()
    queue = f"chaos-tenants-{uuid.uuid4().hex[:6]}"
    env = simulated_env(os.environ, redis_url=server.url, sim_url=sim.url)
    env.update(
        LLM_ROUTER_QUEUE_NAME=queue,
        LLM_ROUTER_LEASE_S="1",
        LLM_ROUTER_HEARTBEAT_INTERVAL_S="0.2",
        LLM_ROUTER_HEARTBEAT_TTL_S="2",
        LLM_ROUTER_RETRY_BACKOFF_S="0.2",
        LLM_ROUTER_RETRY_BACKOFF_MAX_S="0.5",
        LLM_ROUTER_LOG_LEVEL="ERROR",
    )
    fleet = Fleet(env, tmp_path)
    producer = await Producer.connect(
        Settings(_env_file=None, redis_url=server.url, queue_name=queue), sim_catalog
    )
    await sim.faults({"kind": "latency", "latency_ms": 150})  # slow: kills land mid-call
    tenants = [f"ct{t}-{uuid.uuid4().hex[:4]}" for t in range(TENANTS)]
    credits: dict[str, int] = {}
    try:
        for _ in range(2):
            fleet.start(max_jobs=50)
        await until(lambda: _live(producer, 2), what="two workers")
        for t, tenant in enumerate(tenants):
            # room for about two thirds of its jobs' worst cases: some are refused, none overspend
            worst = sum(producer.validator.prepare(_job(t, i), now=0).reserve_nanos for i in range(JOBS_EACH))
            credits[tenant] = worst * 2 // 3
            await Ledger(producer.redis).add(tenant, str(credits[tenant] / 1e9))
        per_tenant = await asyncio.gather(
            *(
                producer.submit_many([_job(t, i) for i in range(JOBS_EACH)], tenant=tn)
                for t, tn in enumerate(tenants)
            )
        )
        accepted = [r for results in per_tenant for r in results if isinstance(r, Submitted)]
        waiter = asyncio.create_task(producer.wait_many(accepted, timeout=600))
        total = len(accepted)
        await until(lambda: _done(producer, accepted, total // 4), timeout=300, what="a quarter done")
        fleet.procs[0].proc.send_signal(signal.SIGKILL)
        fleet.start(max_jobs=50)
        await until(lambda: _done(producer, accepted, total // 2), timeout=300, what="half done")
        await asyncio.to_thread(server.restart)
        await until(lambda: _done(producer, accepted, total * 3 // 4), timeout=300, what="3/4 done")
        fleet.procs[1].proc.send_signal(signal.SIGKILL)
        fleet.start(max_jobs=50)
        records = await waiter
        ledgers = {tn: await producer.redis.hgetall(credits_key(tn)) for tn in tenants}
    finally:
        await sim.faults()
        fleet.stop_all()
        await producer.close()
        server.stop()
    statuses = Counter(r.status.value for r in records)
    assert set(statuses) <= {"succeeded", "failed"}, statuses  # none lost, none stuck
    by_tenant: dict[str, list[Any]] = {tn: [] for tn in tenants}
    for r in records:
        by_tenant[r.tenant].append(r)
    overspent = []
    for tn in tenants:
        ledger = {k.decode(): int(v) for k, v in ledgers[tn].items()}
        spent = sum(r.usage.cost_nanos for r in by_tenant[tn] if r.usage)
        assert ledger["spent"] == spent, tn  # nothing charged twice, nothing missed
        assert ledger["reserved"] == 0, tn
        biggest = max((r.usage.cost_nanos for r in by_tenant[tn] if r.usage), default=0)
        if ledger["spent"] > credits[tn] + biggest:
            overspent.append((tn, ledger["spent"], credits[tn]))
    assert not overspent
    print(
        f"\nchaos tenants: {TENANTS} tenants x {JOBS_EACH} jobs, {total} accepted: {dict(statuses)}; "
        f"{sum(r.runs > 1 for r in records)} ran more than once"
    )


async def _live(producer: Producer, n: int) -> bool:
    return await producer.live_workers() >= n


async def _done(producer: Producer, subs: list[Submitted], n: int) -> bool:
    try:
        statuses = await producer.store.statuses([producer.scoped(s.job_id, s.tenant) for s in subs])
    except Exception:  # Redis restarting: not done yet
        return False
    return sum(s in ("succeeded", "failed") for s in statuses) >= n
