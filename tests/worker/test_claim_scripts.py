"""arq's queue scripts as the worker runs them (``worker.claims``), each on its own against the real
redis-server: claiming with a lease, and arq's bookkeeping at the end of a run."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from arq.constants import abort_jobs_ss, in_progress_key_prefix, job_key_prefix, retry_key_prefix
from redis.asyncio import Redis

from llm_router.autopipe import AutoPipeline
from llm_router.testing.redis_server import RedisServer
from worker.claims import Claims

QUEUE = "q"


@pytest.fixture
async def bare(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis(host="127.0.0.1", port=redis_server.port, db=10)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
def claims(bare: Redis) -> Claims:
    return Claims(bare, AutoPipeline(bare), QUEUE)


def now_ms() -> int:
    return int(time.time() * 1000)


async def test_a_claim_takes_due_unheld_jobs_up_to_its_room_with_a_lease(claims: Claims, bare: Redis):
    due = now_ms() - 10
    await bare.zadd(QUEUE, {"a": due, "b": due + 1, "c": due + 2, "later": now_ms() + 60_000})
    await bare.set(in_progress_key_prefix + "a", 1)  # another worker holds it
    got = await claims.claim(["a", "b", "c", "later"], lease_ms=2_000, room=1)
    assert got == [("b", due + 1)]
    assert 0 < await bare.pttl(in_progress_key_prefix + "b") <= 2_000
    assert await claims.claim(["a", "b", "c", "later"], lease_ms=2_000, room=5) == [("c", due + 2)]
    assert await bare.exists(in_progress_key_prefix + "later") == 0
    assert await claims.claim([], lease_ms=2_000, room=5) == []
    assert await claims.claim(["a"], lease_ms=2_000, room=0) == []


async def test_a_lapsed_lease_lets_another_worker_claim_the_job(claims: Claims, bare: Redis):
    await bare.zadd(QUEUE, {"a": now_ms() - 1})
    assert [j for j, _ in await claims.claim(["a"], lease_ms=50, room=1)] == ["a"]
    assert await claims.claim(["a"], lease_ms=50, room=1) == []
    deadline = time.monotonic() + 2
    while await bare.exists(in_progress_key_prefix + "a") and time.monotonic() < deadline:
        pass
    assert [j for j, _ in await claims.claim(["a"], lease_ms=50, room=1)] == ["a"]


async def test_the_end_of_a_done_run_removes_the_job_everywhere(claims: Claims, bare: Redis):
    await bare.zadd(QUEUE, {"a": 1})
    await bare.zadd(abort_jobs_ss, {"a": 1})
    for key in (in_progress_key_prefix, job_key_prefix, retry_key_prefix):
        await bare.set(key + "a", 1)
    await claims.arq_finish("a", done=True, incr_score=None, keep_in_progress_ms=None)
    assert await bare.zscore(QUEUE, "a") is None and await bare.zscore(abort_jobs_ss, "a") is None
    for key in (in_progress_key_prefix, job_key_prefix, retry_key_prefix):
        assert await bare.exists(key + "a") == 0


async def test_a_deferred_run_moves_its_score_and_keeps_the_job(claims: Claims, bare: Redis):
    await bare.zadd(QUEUE, {"a": 1000})
    await bare.set(job_key_prefix + "a", 1)
    await bare.set(in_progress_key_prefix + "a", 1)
    await claims.arq_finish("a", done=False, incr_score=500, keep_in_progress_ms=None)
    assert await bare.zscore(QUEUE, "a") == 1500
    assert await bare.exists(job_key_prefix + "a") == 1
    assert await bare.exists(in_progress_key_prefix + "a") == 0  # claimable again when due


async def test_keeping_the_in_progress_key_holds_the_job_a_while(claims: Claims, bare: Redis):
    await bare.zadd(QUEUE, {"a": 1000})
    await bare.set(in_progress_key_prefix + "a", 1)
    await claims.arq_finish("a", done=False, incr_score=None, keep_in_progress_ms=5_000)
    assert 0 < await bare.pttl(in_progress_key_prefix + "a") <= 5_000
    assert await bare.zscore(QUEUE, "a") == 1000
