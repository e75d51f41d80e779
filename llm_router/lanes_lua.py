"""The Lua scripts of the lanes (README "Lanes"): a batch-lane job parked for a provider batch, a
batch formed from parked jobs, a job sent back to the `now` lane; and ``LaneScripts``, which runs
them and decodes their replies.

Exactly one of a batch's result and a job's re-dispatch wins: both remove the job from its batch's
members hash first (the finish script's ``KEYS[3]`` guard, ``REDISPATCH_LUA``), atomically.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from redis.asyncio import Redis

from llm_router.keys import (
    LANES_DUE_KEY,
    LANES_OPEN_KEY,
    lane_batch_key,
    lane_gone_key,
    lane_members_key,
    lane_pending_key,
    record_key,
)
from llm_router.lua import LUA_PRELUDE
from llm_router.queue_lua import QUEUE_LUA, READY_LUA

# A job a worker started hands itself to the batcher: queued again (off every queue), in its
# deployment's pending set, and in the due set by when it must go back to `now`.  KEYS: record,
# pending, due.  ARGV: job id, arrival ms, reason, deployment, due ms.
# Returns 1 parked, 0 the job already ended, -1 a cancel was asked for.
PARK_LUA = (
    LUA_PRELUDE
    + """
local record, pending, due = KEYS[1], KEYS[2], KEYS[3]
local job_id, at_ms, reason, dep, due_ms = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local r = redis.call('HMGET', record, 'status', 'cancel_requested')
if not r[1] or r[1] == 'succeeded' or r[1] == 'failed' or r[1] == 'cancelled' then return 0 end
if r[2] then return -1 end
redis.call('HSET', record, 'status', 'queued', 'lane', 'batch', 'lane_reason', reason, 'lane_dep', dep)
redis.call('HDEL', record, 'inflight', 'worker', 'lane_batch')
redis.call('ZADD', pending, at_ms, job_id)
redis.call('ZADD', due, due_ms, job_id)
return 1
"""
)

# Takes up to `most` parked jobs of a deployment into a new batch of ours (state `forming`), in one
# step.  KEYS: pending, batch, members, open.  ARGV: batch id, deployment, most, now (s).
# Returns the jobs taken (those already ended are dropped from the pending set, not taken).
FORM_LUA = (
    LUA_PRELUDE
    + """
local pending, batch, members, open = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local batch_id, dep, most, now = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local popped = redis.call('ZPOPMIN', pending, most)
local taken = {}
for i = 1, #popped, 2 do
  local job = popped[i]
  local status = redis.call('HGET', RECORD .. job, 'status')
  if status == 'queued' then
    taken[#taken + 1] = job
    redis.call('HSET', members, job, job)
    redis.call('HSET', RECORD .. job, 'lane_batch', batch_id)
  end
end
if #taken > 0 then
  redis.call('HSET', batch, 'deployment', dep, 'state', 'forming', 'created_at', now, 'size', #taken)
  redis.call('SADD', open, batch_id)
end
return taken
"""
)

# Sends a job back to the `now` lane (its fallback chain): off its batch (members hash) or pending
# set (and the due set), into its queue at the front, its record saying why.  KEYS: record, holder,
# gone (or the holder again when there is no batch yet), due.  ARGV: job id, holder kind ('members' |
# 'pending'), default queue, reason.  Returns 1 sent back, 0 not there any more (ingested, or sent
# back already).
REDISPATCH_LUA = (
    LUA_PRELUDE
    + READY_LUA
    + QUEUE_LUA
    + """
local record, holder, gone, due = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local job_id, kind, default_queue, reason = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
redis.call('ZREM', due, job_id)
local removed
if kind == 'members' then
  removed = redis.call('HDEL', holder, job_id)
else
  removed = redis.call('ZREM', holder, job_id)
end
if removed == 0 then return 0 end
if kind == 'members' then redis.call('SADD', gone, job_id) end
local status = redis.call('HGET', record, 'status')
if not status or status == 'succeeded' or status == 'failed' or status == 'cancelled' then return 0 end
redis.call('HSET', record, 'lane', 'now', 'lane_reason', reason, 'status', 'queued')
local queue = redis.call('HGET', record, 'queue') or default_queue
local band, tenant = band_of(job_id)
make_ready(queue, job_id, band, tenant, 0)
redis.call('PUBLISH', queue .. ':wake', 1)
return 1
"""
)


# Puts a batch's job back among its deployment's parked jobs (the batch's file would pass the
# lane's max_bytes with it).  KEYS: members, pending, record.  ARGV: job id, arrival ms.  Returns 1
# put back, 0 not a member any more.
UNFORM_LUA = (
    LUA_PRELUDE
    + """
local members, pending, record = KEYS[1], KEYS[2], KEYS[3]
local job_id, at_ms = ARGV[1], ARGV[2]
if redis.call('HDEL', members, job_id) == 0 then return 0 end
redis.call('HDEL', record, 'lane_batch')
redis.call('ZADD', pending, at_ms, job_id)
return 1
"""
)


class ParkReply(IntEnum):
    PARKED = 1
    ENDED = 0
    CANCEL_ASKED = -1


@dataclass(frozen=True, slots=True)
class LaneScripts:
    """The lane scripts on one Redis client."""

    redis: Redis

    async def park(self, job_id: str, deployment: str, at_ms: int, reason: str, due_ms: int) -> ParkReply:
        reply = await self.redis.eval(
            PARK_LUA,
            3,
            record_key(job_id),
            lane_pending_key(deployment),
            LANES_DUE_KEY,
            job_id,
            at_ms,
            reason,
            deployment,
            due_ms,
        )
        return ParkReply(int(reply))

    async def form(self, batch_id: str, deployment: str, most: int, now: float) -> list[str]:
        reply = await self.redis.eval(
            FORM_LUA,
            4,
            lane_pending_key(deployment),
            lane_batch_key(batch_id),
            lane_members_key(batch_id),
            LANES_OPEN_KEY,
            batch_id,
            deployment,
            most,
            repr(now),
        )
        return [j.decode() for j in reply]

    async def unform(self, job_id: str, batch_id: str, deployment: str, at_ms: int) -> bool:
        """Put ``job_id`` back from ``batch_id`` among the deployment's parked jobs."""
        keys = (lane_members_key(batch_id), lane_pending_key(deployment), record_key(job_id))
        return bool(int(await self.redis.eval(UNFORM_LUA, 3, *keys, job_id, at_ms)))

    async def redispatch(
        self, job_id: str, default_queue: str, reason: str, *, batch_id: str | None, deployment: str
    ) -> bool:
        """Send ``job_id`` back to `now` from ``batch_id`` (or, without one, its pending set)."""
        if batch_id is not None:
            holder, kind, gone = lane_members_key(batch_id), "members", lane_gone_key(batch_id)
        else:
            holder = gone = lane_pending_key(deployment)
            kind = "pending"
        reply = await self.redis.eval(
            REDISPATCH_LUA,
            4,
            record_key(job_id),
            holder,
            gone,
            LANES_DUE_KEY,
            job_id,
            kind,
            default_queue,
            reason,
        )
        return bool(int(reply))
