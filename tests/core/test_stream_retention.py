"""A job's token stream is kept ``stream_ttl_s`` after its last chunk and after the job ends, not the
record's TTL: the record holds the whole answer, the stream only serves followers."""

from __future__ import annotations

import time

from redis.asyncio import Redis

from config.settings import Settings
from llm_router.keys import scoped_id
from llm_router.store import NewJob, Settlement, Store, SubmitReply
from llm_router.testing.jobs import new_job

REQUEST = b'{"messages":[{"content":"hi","role":"user"}],"model":"m","stream":true}'
RECORD_TTL_S = 7 * 24 * 3600
STREAM_TTL_S = 50


def _job(job_id: str) -> NewJob:
    return new_job(job_id, request=REQUEST)


async def _stream(redis: Redis) -> bytes:
    """The job's stream, found by type whatever the key scheme names it (the database is the test's)."""
    (key,) = [k for k in await redis.keys("*") if await redis.type(k) == b"stream"]
    return key


async def _record(redis: Redis) -> bytes:
    (key,) = [
        k
        for k in await redis.keys("*")
        if await redis.type(k) == b"hash" and await redis.hexists(k, "digest")
    ]
    return key


async def test_a_stream_expires_its_own_ttl_after_the_last_chunk_and_after_the_end(bare_redis: Redis):
    store = Store(bare_redis, queue_name="q", record_ttl_s=RECORD_TTL_S, stream_ttl_s=STREAM_TTL_S)
    (created,) = await store.submit_batch([store.submit_command(_job("j1"), max_queued=0)])
    assert created == SubmitReply.CREATED
    job_id = scoped_id("t", "j1")  # a Store takes ids inside their tenant
    await store.publish(job_id, [b'{"c":1}', b'{"c":2}'], maxlen=100)
    stream = await _stream(bare_redis)
    assert 0 < await bare_redis.ttl(stream) <= STREAM_TTL_S  # while written: from the last chunk

    await bare_redis.expire(stream, 5)  # the finish must set the stream's TTL, not keep what it had
    done = {"status": "succeeded", "finished_at": time.time(), "response": {"id": "r"}, "model": "m"}
    await store.finish(job_id, done, settlement=Settlement(0, "m", 0, 0))
    assert STREAM_TTL_S - 5 < await bare_redis.ttl(stream) <= STREAM_TTL_S
    last = (await bare_redis.xrevrange(stream, count=1))[0][1]
    assert last == {b"end": b"succeeded"}
    record = await _record(bare_redis)
    assert await bare_redis.ttl(record) > RECORD_TTL_S - 10  # the record keeps its own, longer TTL


async def test_the_stream_ttl_defaults_to_an_hour_and_is_a_setting(monkeypatch) -> None:
    assert Settings(_env_file=None).stream_ttl_s == 3600
    monkeypatch.setenv("LLM_ROUTER_STREAM_TTL_S", "120")
    assert Settings(_env_file=None).stream_ttl_s == 120
