"""The lane scripts (``llm_router.lanes_lua``) and the finish script's batch-membership guard, one
by one against the real redis-server."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from llm_router.keys import (
    LANES_DUE_KEY,
    LANES_OPEN_KEY,
    credits_key,
    lane_batch_key,
    lane_gone_key,
    lane_members_key,
    lane_pending_key,
    ready_key,
    record_key,
)
from llm_router.lanes_lua import LaneScripts, ParkReply
from llm_router.store import FinishReply, Settlement, Started, Store
from tests.core.test_record_scripts import QUEUE, SUCCEEDED, credit, fields_of, new_job, submit

DEP = "openai/m"


@pytest.fixture
def store(bare_redis: Redis) -> Store:
    return Store(bare_redis, queue_name=QUEUE, record_ttl_s=100)


async def test_start_leaves_a_batch_or_auto_job_unadmitted_and_says_its_lane(store: Store, bare_redis: Redis):
    await submit(store, new_job(lane="batch"))
    started = await store.start("t/j1", "w1", 1.0)
    assert isinstance(started, Started) and started.lane == "batch" and started.admissions == {}
    await submit(store, new_job("j2"))
    plain = await store.start("t/j2", "w1", 1.0)
    assert isinstance(plain, Started) and plain.lane == ""


async def test_park_hands_a_started_job_to_its_deployments_pending_set(store: Store, bare_redis: Redis):
    lanes = LaneScripts(bare_redis)
    await submit(store, new_job(lane="batch"))
    await store.start("t/j1", "w1", 1.0)
    assert await lanes.park("t/j1", DEP, 1234, "asked", 10**13) == ParkReply.PARKED
    rec = await fields_of(bare_redis, "t/j1")
    assert (rec["status"], rec["lane"], rec["lane_reason"]) == ("queued", "batch", "asked")
    assert "worker" not in rec
    assert await bare_redis.zscore(lane_pending_key(DEP), "t/j1") == 1234
    assert await bare_redis.zscore(LANES_DUE_KEY, "t/j1") == 10**13
    assert rec["lane_dep"] == DEP
    await bare_redis.hset(record_key("t/j1"), "cancel_requested", 1)
    assert await lanes.park("t/j1", DEP, 1, "asked", 10**13) == ParkReply.CANCEL_ASKED
    await store.finish("t/j1", SUCCEEDED)
    assert await lanes.park("t/j1", DEP, 1, "asked", 10**13) == ParkReply.ENDED
    assert await lanes.park("t/nope", DEP, 1, "asked", 10**13) == ParkReply.ENDED


async def test_form_takes_queued_jobs_and_drops_ended_ones(store: Store, bare_redis: Redis):
    lanes = LaneScripts(bare_redis)
    for job_id in ("j1", "j2", "j3"):
        await submit(store, new_job(job_id, lane="batch"))
        await lanes.park(f"t/{job_id}", DEP, 1, "asked", 10**13)
    await store.finish("t/j2", SUCCEEDED)  # ended while it waited (a cancel, say)
    assert await lanes.form("b1", DEP, 2, 5.0) == ["t/j1"]  # two taken off the pending set, one ended
    assert await lanes.form("b2", DEP, 10, 6.0) == ["t/j3"]
    assert await lanes.form("b3", DEP, 10, 7.0) == []
    assert await bare_redis.smembers(LANES_OPEN_KEY) == {b"b1", b"b2"}
    batch = {k.decode(): v.decode() for k, v in (await bare_redis.hgetall(lane_batch_key("b1"))).items()}
    assert batch == {"deployment": DEP, "state": "forming", "created_at": "5.0", "size": "1"}
    assert await bare_redis.hkeys(lane_members_key("b1")) == [b"t/j1"]
    assert (await fields_of(bare_redis, "t/j1"))["lane_batch"] == "b1"  # where a re-dispatch finds it


async def test_a_batch_result_is_written_once_and_charged_once(store: Store, bare_redis: Redis):
    lanes = LaneScripts(bare_redis)
    await credit(bare_redis, "t", 10_000)
    await submit(store, new_job(lane="batch", reserve_nanos=5_000))
    await lanes.park("t/j1", DEP, 1, "asked", 10**13)
    await lanes.form("b1", DEP, 10, 1.0)
    settle = Settlement(cost_nanos=700, model="m", prompt_tokens=1, completion_tokens=1)
    members = lane_members_key("b1")
    first = await store.finish("t/j1", SUCCEEDED, settlement=settle, member_of=members)
    again = await store.finish("t/j1", SUCCEEDED, settlement=settle, member_of=members)
    assert (first.reply, again.reply) == (FinishReply.WRITTEN, FinishReply.NOT_MEMBER)
    assert int(await bare_redis.hget(credits_key("t"), "spent")) == 700
    # ingested: a re-dispatch finds nothing to send back
    assert not await lanes.redispatch("t/j1", QUEUE, "late", batch_id="b1", deployment=DEP)


async def test_redispatch_wins_over_a_later_result(store: Store, bare_redis: Redis):
    lanes = LaneScripts(bare_redis)
    await credit(bare_redis, "t", 10_000)
    await submit(store, new_job(lane="batch", reserve_nanos=5_000))
    await bare_redis.delete(ready_key(QUEUE, "normal", "t"))  # a worker claimed it, then parked it
    await lanes.park("t/j1", DEP, 1, "asked", 10**13)
    await lanes.form("b1", DEP, 10, 1.0)
    assert await lanes.redispatch("t/j1", QUEUE, "the batch was late", batch_id="b1", deployment=DEP)
    rec = await fields_of(bare_redis, "t/j1")
    assert (rec["status"], rec["lane"], rec["lane_reason"]) == ("queued", "now", "the batch was late")
    assert await bare_redis.zscore(ready_key(QUEUE, "normal", "t"), "t/j1") == 0  # at the front
    assert await bare_redis.smembers(lane_gone_key("b1")) == {b"t/j1"}
    assert await bare_redis.zscore(LANES_DUE_KEY, "t/j1") is None
    settle = Settlement(cost_nanos=700, model="m", prompt_tokens=1, completion_tokens=1)
    late = await store.finish("t/j1", SUCCEEDED, settlement=settle, member_of=lane_members_key("b1"))
    assert late.reply == FinishReply.NOT_MEMBER
    assert (await fields_of(bare_redis, "t/j1"))["status"] == "queued"
    assert int(await bare_redis.hget(credits_key("t"), "spent")) == 0
    assert not await lanes.redispatch("t/j1", QUEUE, "again", batch_id="b1", deployment=DEP)


async def test_redispatch_from_the_pending_set(store: Store, bare_redis: Redis):
    lanes = LaneScripts(bare_redis)
    await submit(store, new_job(lane="batch"))
    await lanes.park("t/j1", DEP, 1, "asked", 10**13)
    assert await lanes.redispatch("t/j1", QUEUE, "deadline", batch_id=None, deployment=DEP)
    assert await bare_redis.zcard(lane_pending_key(DEP)) == 0
    assert (await fields_of(bare_redis, "t/j1"))["lane"] == "now"


async def test_unform_puts_a_member_back_among_the_parked_jobs(store: Store, bare_redis: Redis):
    lanes = LaneScripts(bare_redis)
    await submit(store, new_job(lane="batch"))
    await lanes.park("t/j1", DEP, 5, "asked", 10**13)
    await lanes.form("b1", DEP, 10, 1.0)
    assert await lanes.unform("t/j1", "b1", DEP, 0)
    assert await bare_redis.zscore(lane_pending_key(DEP), "t/j1") == 0  # at the front
    assert await bare_redis.hlen(lane_members_key("b1")) == 0
    assert "lane_batch" not in await fields_of(bare_redis, "t/j1")
    assert not await lanes.unform("t/j1", "b1", DEP, 0)
