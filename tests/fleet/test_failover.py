"""A Sentinel failover mid-run, with nobody restarting anything by hand.

One primary, one replica and three sentinels (``redis-server --sentinel``, failure detection scaled
down to 1 s) on loopback; two worker processes find the primary through the sentinels
(``LLM_ROUTER_REDIS_SENTINELS``), and a waiting ``llm-router submit FILE --wait`` through a
``redis+sentinel://`` URL. The tenant is metered (``llm-router credits add``). When a third of the
jobs have ended the primary is SIGKILLed, or demoted by ``SENTINEL FAILOVER`` (alive, it stays a
writable primary for ~10 s until the sentinels make it a replica: a client that kept writing there
would lose those writes in the resync); the sentinels promote the replica and every process finds
it by itself. Reported: jobs lost, stuck, run twice and charged twice (targets 0, 0, -, 0), the
failover time, and the workers' and the waiter's own exits.

``make test`` runs 200 jobs; ``make chaos`` 2,000 (``LLM_ROUTER_FAILOVER_JOBS``).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson
import pytest
from redis.exceptions import RedisError

from config.catalog import Catalog
from config.settings import Settings
from llm_router.keys import credits_key
from llm_router.testing.sentinel_set import SentinelSet
from producer.producer import TERMINAL_VALUES, Producer

from .conftest import Procs, fleet_env

JOBS = int(os.environ.get("LLM_ROUTER_FAILOVER_JOBS", "200"))
# above the failover time, a running job keeps its lease through it; `make chaos` also runs 1 s, below
# it, where leases lapse mid-failover and other workers take those jobs again
LEASE_S = float(os.environ.get("LLM_ROUTER_FAILOVER_LEASE_S", "5"))
SIM_LATENCY_MS = 200


@dataclass
class Outcome:
    jobs: int
    lease_s: float
    lost: int  # no record at the end
    stuck: int  # a record that never ended
    ran_twice: int  # records whose job started more than once
    provider_calls: int
    charged_twice_nanos: int  # the ledger's spent minus the sum of the records' costs
    reserved_left_nanos: int
    failover: str  # how the primary went: killed or demoted
    failover_s: float  # the kill (or demotion) → the sentinels name a new primary that takes writes
    resumed_s: float  # the kill (or demotion) → more jobs ended than before it, read from the new primary
    submit_exit: int
    submit_s: float
    waiter_saw_other_outcome: int  # the waiter's record differs from the final one
    statuses: dict[str, int]


@pytest.mark.parametrize("failover", ["killed", "demoted"])
async def test_a_sentinel_failover_mid_run_loses_nothing_and_charges_nothing_twice(
    sim, sim_catalog: Catalog, procs: Procs, tmp_path: Path, until, failover: str
) -> None:
    with SentinelSet(down_after_ms=1000, failover_timeout_ms=3000) as sentinels:
        env = fleet_env(sim.url, **sentinels.env(), LLM_ROUTER_LEASE_S=str(LEASE_S))
        settings = Settings(
            _env_file=None, redis_sentinels=sentinels.sentinels, queue_name=env["LLM_ROUTER_QUEUE_NAME"]
        )
        producer = await Producer.connect(settings, sim_catalog)  # the test's own reads: Sentinel too
        await sim.faults({"kind": "latency", "latency_ms": SIM_LATENCY_MS})
        try:
            outcome = await _run(sentinels, env, producer, sim, procs, tmp_path, until, failover)
        finally:
            await sim.faults()
            await producer.close()
    (tmp_path / "outcome.json").write_text(json.dumps(asdict(outcome), indent=2))
    print(f"\nfailover: {json.dumps(asdict(outcome))}")
    assert outcome.lost == 0 and outcome.stuck == 0, outcome
    assert outcome.charged_twice_nanos == 0 and outcome.reserved_left_nanos == 0, outcome
    assert outcome.submit_exit == 0 and outcome.waiter_saw_other_outcome == 0, outcome
    assert outcome.statuses == {"succeeded": JOBS}, outcome
    assert outcome.failover_s < 15, outcome


async def _run(sentinels, env, producer, sim, procs: Procs, tmp_path: Path, until, failover: str) -> Outcome:
    workers = [procs.start(env, "worker", "--max-jobs", "20") for _ in range(2)]
    pids = [w.pid for w in workers]
    await until(lambda: _live(producer, 2), timeout=30, what="two workers")
    tenant = f"failover-{uuid.uuid4().hex[:6]}"
    credits = procs.start(env, "credits", "add", tenant, "1000")
    assert await asyncio.to_thread(credits.wait, 30) == 0, credits.stderr()

    run = uuid.uuid4().hex[:6]
    ids = [f"fo-{run}-{i}" for i in range(JOBS)]
    scoped = [producer.scoped(job_id, tenant) for job_id in ids]  # the store's ids: inside the tenant
    lines = [
        {
            "job_id": job_id,
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": f"failover {i}"}],
            "stream": i % 4 == 0,  # streamed jobs write their token streams through the failover too
        }
        for i, job_id in enumerate(ids)
    ]
    jsonl = tmp_path / "jobs.jsonl"
    jsonl.write_bytes(b"\n".join(orjson.dumps(line) for line in lines) + b"\n")
    out = tmp_path / "records.jsonl"
    # the waiter names Redis by one redis+sentinel:// URL, the workers by the two settings
    submit_env = {k: v for k, v in env.items() if not k.startswith("LLM_ROUTER_REDIS_SENTINEL")}
    submit_env["REDIS_URL"] = sentinels.url
    calls_before = (await sim.calls())["total"]
    started = time.monotonic()
    submit = procs.start(
        submit_env, "submit", str(jsonl), "--wait", "--tenant", tenant, "--out", str(out), "--timeout", "900"
    )

    await until(lambda: _ended(producer, scoped, JOBS // 3), timeout=300, what=f"{JOBS // 3} jobs ended")
    old = sentinels.primary_port()
    ended_before = await _count_ended(producer, scoped)
    killed = time.monotonic()
    await asyncio.to_thread(sentinels.kill_primary if failover == "killed" else sentinels.demote_primary)
    await asyncio.to_thread(sentinels.wait_for_new_primary, old, 60)
    failover_s = time.monotonic() - killed
    await until(
        lambda: _ended(producer, scoped, ended_before + 1), timeout=120, what="a job ending after the kill"
    )
    resumed_s = time.monotonic() - killed

    submit_exit = await asyncio.to_thread(submit.wait, 900)
    submit_s = time.monotonic() - started
    assert [w.pid for w in workers] == pids and all(w.alive() for w in workers), "a worker died"

    statuses = await _retry(lambda: producer.store.statuses(scoped))
    records = [r for r in await _retry(lambda: producer.store.get_many(scoped)) if r is not None]
    ledger = {k.decode(): int(v) for k, v in (await producer.redis.hgetall(credits_key(tenant))).items()}
    calls = (await sim.calls())["total"] - calls_before
    seen = {}
    for line in out.read_bytes().splitlines():
        row = orjson.loads(line)
        seen[row["id"]] = row["status"]
    counts: dict[str, int] = {}
    for r in records:
        counts[r.status.value] = counts.get(r.status.value, 0) + 1
    return Outcome(
        jobs=JOBS,
        lease_s=LEASE_S,
        lost=sum(s is None for s in statuses),
        stuck=sum(s is not None and s not in TERMINAL_VALUES for s in statuses),
        ran_twice=sum(r.runs > 1 for r in records),
        provider_calls=calls,
        charged_twice_nanos=ledger.get("spent", 0) - sum(r.usage.cost_nanos for r in records if r.usage),
        reserved_left_nanos=ledger.get("reserved", 0),
        failover=failover,
        failover_s=round(failover_s, 2),
        resumed_s=round(resumed_s, 2),
        submit_exit=submit_exit,
        submit_s=round(submit_s, 1),
        waiter_saw_other_outcome=sum(seen.get(r.id) != r.status.value for r in records),
        statuses=counts,
    )


async def _retry(read):  # the test's own reads ride out the failover too
    for _ in range(100):
        try:
            return await read()
        except RedisError:
            await asyncio.sleep(0.2)
    return await read()


async def _live(producer: Producer, n: int) -> bool:
    try:
        return await producer.live_workers() >= n
    except RedisError:
        return False


async def _count_ended(producer: Producer, ids: list[str]) -> int:
    return sum(s in TERMINAL_VALUES for s in await producer.store.statuses(ids))


async def _ended(producer: Producer, ids: list[str], n: int) -> bool:
    try:
        return await _count_ended(producer, ids) >= n
    except RedisError:
        return False
