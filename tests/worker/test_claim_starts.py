"""A claim that starts the jobs it leases (``worker.claims.Starter``), against the real redis-server:
each started job's reply is what ``Store.start`` replies for the same job, a record that is gone or
ended says so, a start that raises leaves its job to the runner's own start without failing the
claim, and a wide claim starts only its first few."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import replace

import orjson
import pytest
from redis.asyncio import Redis

from llm_router.autopipe import AutoPipeline
from llm_router.keys import leases_key, record_key, request_key, routing_key
from llm_router.store import Started, Store
from llm_router.testing.jobs import new_job
from llm_router.testing.redis_server import RedisServer
from worker.claims import Claims, Starter

QUEUE = "q"
REQUEST = b'{"messages":[{"content":"hi","role":"user"}],"model":"m"}'
ROUTING = routing_key("r")


@pytest.fixture
async def bare(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis(host="127.0.0.1", port=redis_server.port, db=11)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
def store(bare: Redis) -> Store:
    return Store(bare, queue_name=QUEUE, record_ttl_s=100)


def starter(most: int = 64) -> Starter:
    return Starter(worker_id="w", routing_key=ROUTING, probe_lease_ms=60_000, slot_lease_ms=10_000, most=most)


async def submit(store: Store, job_id: str, now: float | None = None) -> str:
    job = new_job(job_id, now=now)
    await store.submit_batch([store.submit_command(job)])
    return f"t/{job_id}"


def comparable(started: Started) -> Started:
    """What may differ between two starts of twin jobs: the clocks."""
    return replace(started, redis_now_ms=0, first_started_at=None)


async def test_a_claim_starts_its_jobs_as_the_start_script_does(store: Store, bare: Redis):
    await bare.hset(ROUTING, "m", "fixed;a|0|0|1|10|10|1")
    now = time.time()
    claimed_id, twin_id = await submit(store, "j1", now), await submit(store, "j2", now)
    claims = Claims(bare, AutoPipeline(bare), QUEUE, starter())

    got = await claims.claim(lease_ms=60_000, room=1)
    assert got.jobs == [claimed_id]
    by_claim = got.started[claimed_id]
    by_start = await store.start(twin_id, "w", time.time(), ROUTING, 60_000, 10_000)
    assert isinstance(by_claim, Started) and isinstance(by_start, Started)
    assert comparable(by_claim) == comparable(by_start)
    assert by_claim.request == REQUEST and list(by_claim.admissions) == ["a"]
    # started for real: the record says running, on this worker, once
    status, worker, runs, at = await bare.hmget(
        record_key(claimed_id), "status", "worker", "runs", "started_at"
    )
    assert (status, worker, runs) == (b"running", b"w", b"1")
    assert by_claim.first_started_at == float(at) and by_claim.created_at == now and by_claim.tenant == "t"


async def test_a_claim_says_which_records_are_gone_or_ended_and_leaves_a_failing_start_to_the_runner(
    store: Store, bare: Redis
):
    gone, ended, broken, fine = [await submit(store, f"j{i}") for i in range(4)]
    await bare.delete(record_key(gone))
    await bare.hset(record_key(ended), "status", "succeeded")
    await bare.delete(request_key(broken))
    await bare.hset(request_key(broken), "x", "y")  # its start raises: WRONGTYPE reading the request
    claims = Claims(bare, AutoPipeline(bare), QUEUE, starter())

    got = await claims.claim(lease_ms=60_000, room=10)
    assert got.jobs == [gone, ended, broken, fine]
    assert got.started[gone] is None
    assert got.started[ended] == "succeeded"
    assert broken not in got.started  # not started here: the runner's start meets the error itself
    assert isinstance(got.started[fine], Started)
    # every job is leased all the same
    assert len(await bare.zrange(leases_key(QUEUE), 0, -1)) == 4


async def test_a_wide_claim_starts_only_its_first_few(store: Store, bare: Redis):
    ids = [await submit(store, f"j{i}") for i in range(5)]
    claims = Claims(bare, AutoPipeline(bare), QUEUE, starter(most=2))

    got = await claims.claim(lease_ms=60_000, room=5)
    assert got.jobs == ids
    assert list(got.started) == ids[:2]
    statuses = [await bare.hget(record_key(j), "status") for j in ids]
    assert statuses == [b"running"] * 2 + [b"queued"] * 3


async def test_a_claim_without_a_starter_starts_nothing(store: Store, bare: Redis):
    job = await submit(store, "j1")
    got = await Claims(bare, AutoPipeline(bare), QUEUE).claim(lease_ms=60_000, room=1)
    assert got.jobs == [job] and got.started == {}
    assert await bare.hget(record_key(job), "status") == b"queued"
    assert orjson.loads(await bare.hget(record_key(job), "route")) == ["m"]
