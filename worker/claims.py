"""Taking jobs from a queue and giving them back: the worker's side of ``llm_router.queue_lua``.

A claim is one Lua script per poll (on the worker's auto-pipeline, ``Store.pipe``): it puts due
delayed jobs and lapsed leases back in their ready queues, then takes up to ``room`` jobs, band by
band (``high``, ``normal``, ``low``), each from the tenant whose virtual time is smallest (weighted
fair share), and leases them to this worker. Its cost does not depend on how many jobs are held,
and every worker of the fleet can fill all its slots whatever arq's ``queue_read_limit`` is. The end
of a run is another script: done (the job leaves the queue), or again (now, or later: deferred).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis

from llm_router.autopipe import AutoPipeline
from llm_router.circuit_breaker import BREAKER_LUA
from llm_router.keys import (
    PRIORITIES,
    active_tenants_key,
    delayed_key,
    idle_workers_key,
    idler_key,
    leases_key,
)
from llm_router.lua import LUA_PRELUDE
from llm_router.queue_lua import QUEUE_LUA, READY_LUA
from llm_router.record_lua import START_JOB_LUA
from llm_router.store import NOT_STARTED, NotStarted, Started, StartReply

# Returns {claimed job, its start…, on_their_way, next_due_ms}: the jobs now leased to this worker,
# each followed by what starting it replied (``record_lua.start_job``: nil when its record is gone,
# the pairs of ``store.Started``, or 0 when it was not started here: past the ``starts`` first, or
# its start raised, which the worker's own start will meet again; -1 for a handed job whose message
# was lost, taken back: first in the reply), then how many jobs handed to the
# worker it had not received (``Claimed.on_their_way``), then when the queue's next delayed job is
# due ('' when none is), so an idle worker can sleep until then. Starting a job in its claim saves
# it a round trip before its call (an interactive caller waits on every one); ``starts`` bounds how
# long one claim holds Redis when a wide worker claims thousands at once. The shebang declares
# it a writing script (no flags): a read-only replica or an out-of-memory Redis refuses it before it
# runs, even on an empty queue, which is how an idle worker learns its Redis was demoted.
CLAIM_LUA = (
    "#!lua\n"
    + LUA_PRELUDE
    + READY_LUA
    + QUEUE_LUA
    + BREAKER_LUA
    + START_JOB_LUA
    + r"""
local queue, now, lease_ms, room, most = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]),
                                         tonumber(ARGV[5])
local starts, now_s, worker_id, routing_key = tonumber(ARGV[6]), ARGV[7], ARGV[8], ARGV[9]
local probe_lease_ms, slot_lease_ms = ARGV[10], tonumber(ARGV[11])
local idle_ttl_ms, hand_slots = tonumber(ARGV[12] or '0'), tonumber(ARGV[13] or '0')
local ACKS = 14  -- from here: the handed jobs the worker received since its last claim

-- jobs a submit handed this worker (``record_lua.hand_job``) that it had not received when it sent
-- this claim: on their way (a claim and a hand-off crossed), they take room the worker did not
-- know was taken; handed over idle_ttl_ms ago (a registration's life: a worker claims, and so
-- acknowledges, at least every safety look, well within it), their message was lost (a
-- resubscribe, a dropped connection): taken back here, still leased to this worker, to start itself
local out = {}
local on_their_way = 0
local idler = queue .. ':idler:' .. worker_id
if idle_ttl_ms > 0 and worker_id ~= '' then
  local handed = queue .. ':handed:' .. worker_id
  if #ARGV >= ACKS then redis.call('ZREM', handed, unpack(ARGV, ACKS)) end
  if redis.call('EXISTS', handed) == 1 then  -- a wide worker's claims mostly find none: one read
    for _, job in ipairs(redis.call('ZRANGEBYSCORE', handed, '-inf', now_ms() - idle_ttl_ms)) do
      redis.call('ZREM', handed, job)
      local still = redis.call('HMGET', RECORD .. job, 'status', 'worker')
      local held = redis.call('ZSCORE', queue .. ':leases', job)
      if held and still[1] == 'running' and still[2] == worker_id then
        redis.call('ZADD', queue .. ':leases', now + lease_ms, job)
        out[#out + 1] = job
        out[#out + 1] = -1  -- taken back: the worker starts it (a start on the same worker is no lost run)
        room = room - 1
      end
    end
    on_their_way = redis.call('ZCARD', handed)
  end
  room = room - on_their_way
end

promote(queue, now, most)
local leases = queue .. ':leases'
local weights = {}
for _, band in ipairs(BANDS) do
  local active = queue .. ':tenants:' .. band
  local vclock = nil
  while room > 0 do
    local head = redis.call('ZRANGE', active, 0, 0, 'WITHSCORES')
    if #head == 0 then break end
    local tenant, vtime = head[1], tonumber(head[2])
    local ready = queue .. ':ready:' .. band .. ':' .. tenant
    local job = redis.call('ZPOPMIN', ready)
    if #job == 0 then
      redis.call('ZREM', active, tenant)
    else
      redis.call('ZADD', leases, now + lease_ms, job[1])
      out[#out + 1] = job[1]
      local started = 0
      if starts > 0 then
        starts = starts - 1
        local ok, reply = pcall(start_job, RECORD .. job[1], job[1], now_s, worker_id, routing_key,
                                probe_lease_ms, slot_lease_ms)
        if ok then started = reply end
      end
      out[#out + 1] = started
      room = room - 1
      vclock = vtime
      local weight = weights[tenant]
      if not weight then
        weight = tonumber(redis.call('HGET', POLICY .. tenant, 'weight') or '1') or 1
        if weight <= 0 then weight = 1 end
        weights[tenant] = weight
      end
      if redis.call('ZCARD', ready) == 0 then
        redis.call('ZREM', active, tenant)
      else
        redis.call('ZADD', active, vtime + 1 / weight, tenant)
      end
    end
  end
  if vclock then redis.call('SET', queue .. ':vclock:' .. band, vclock) end
  if room <= 0 then break end
end
-- a worker that took all it found (and had room for more) waits for work: a submit to the empty
-- queue hands it its job, started (``record_lua.hand_job``), up to `hand_slots` of them until its
-- next claim; a worker with no room left is not handed any
if idle_ttl_ms > 0 and worker_id ~= '' then
  if room > 0 and hand_slots > 0 then
    -- by Redis' clock, as the hand-off reads it
    redis.call('ZADD', queue .. ':idle', now_ms() + idle_ttl_ms, worker_id)
    redis.call('HSET', idler, 'slots', math.min(room, hand_slots), 'routing_key', routing_key,
               'probe_lease_ms', probe_lease_ms, 'slot_lease_ms', slot_lease_ms, 'lease_ms', lease_ms)
    redis.call('PEXPIRE', idler, idle_ttl_ms)
  else
    redis.call('ZREM', queue .. ':idle', worker_id)
    redis.call('DEL', idler)
  end
end
local next_due = redis.call('ZRANGE', queue .. ':delayed', 0, 0, 'WITHSCORES')
out[#out + 1] = on_their_way
out[#out + 1] = next_due[2] or ''
return out
"""
)

# The end of a run.  ARGV: queue, job, outcome ('done' | 'again'), due ms ('' or not later than now:
# due at once).  'done' takes the job off the queue; 'again' puts it back, ready now or delayed.
END_RUN_LUA = (
    LUA_PRELUDE
    + READY_LUA
    + QUEUE_LUA
    + r"""
local queue, job, outcome, due = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local held = redis.call('ZREM', queue .. ':leases', job) == 1
if outcome == 'done' then
  redis.call('ZREM', ABORT_SET, job)
  return 1
end
if not held then return 0 end  -- its lease lapsed: another worker has it, or the queue has it back
local now = now_ms()
if due and due > now then
  redis.call('ZADD', queue .. ':delayed', due, job)
  redis.call('PUBLISH', queue .. ':wake', due)  -- idle workers learn when to look again
else
  local band, tenant, created = band_of(job)
  make_ready(queue, job, band, tenant, created)  -- a job put back goes in front, at its own age
  redis.call('PUBLISH', queue .. ':wake', 1)
end
return 1
"""
)

MOVES_PER_CLAIM = 1000  # delayed jobs and lapsed leases a claim puts back at most (bounded work)
# jobs one claim starts at most: a start costs Redis 50 to 100 µs (a route of three models, 2 cores),
# so a claim holds it 3 ms at most
STARTS_PER_CLAIM = 32


@dataclass(frozen=True, slots=True)
class Starter:
    """What a claim needs to start the jobs it leases (the runner's arguments of ``Store.start``)."""

    worker_id: str
    routing_key: str
    probe_lease_ms: int
    slot_lease_ms: int
    most: int = STARTS_PER_CLAIM


@dataclass(frozen=True, slots=True)
class Claimed:
    """What one claim took, and when the queue's next delayed job is due (ms; ``None``: none is).

    ``started`` holds what starting each job replied, for the jobs the claim started (the others the
    runner starts itself)."""

    jobs: list[str]
    next_due_ms: int | None
    started: dict[str, StartReply] = field(default_factory=dict)
    on_their_way: int = 0  # jobs handed to this worker that it had not received: room they took
    # jobs handed to this worker whose message was lost (unacknowledged for ``idle_ttl_ms``): it
    # starts and runs them
    taken_back: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Handed:
    """A job a submit handed this worker (``record_lua.hand_job``): leased to it, and started unless
    its start failed there (``NOT_STARTED``: the runner starts it)."""

    job_id: str
    started: StartReply | NotStarted

    @classmethod
    def decode(cls, message: bytes) -> Handed:
        """``<job id>\n<the start's reply as a JSON object, or 0>`` (``Started.from_json``)."""
        job, _, payload = message.partition(b"\n")
        if payload == b"0":
            return cls(job.decode(), NOT_STARTED)
        return cls(job.decode(), Started.from_json(orjson.loads(payload)))


class Claims:
    """Claims and end-of-run bookkeeping on one queue, and the lease renewals of held jobs."""

    def __init__(
        self, redis: Redis, pipe: AutoPipeline, queue_name: str, starter: Starter | None = None
    ) -> None:
        self.queue_name = queue_name
        self.leases_key = leases_key(queue_name)
        self._redis = redis
        self._pipe = pipe
        self._claim = redis.register_script(CLAIM_LUA)
        self._end_run = redis.register_script(END_RUN_LUA)
        self.starter = starter

    async def claim(
        self,
        lease_ms: int,
        room: int,
        *,
        idle_ttl_ms: int = 0,
        hand_slots: int = 0,
        received: Sequence[str] = (),
    ) -> Claimed:
        """Lease up to ``room`` due jobs to this worker (fairly across tenants, by priority), starting
        the first ``starter.most`` of them when there is a starter.

        With a starter and ``idle_ttl_ms``, a claim that leaves room registers the worker as waiting
        for ``idle_ttl_ms``: submits to the empty queue hand it up to ``hand_slots`` jobs, started, on
        ``hand_channel`` (``Handed``) until its next claim; one that leaves none takes it off.
        ``received`` acknowledges the handed jobs the worker received since its last claim; those
        handed and not yet received take room (``Claimed.on_their_way``), and those handed long ago
        and never received come back (``Claimed.taken_back``)."""
        if room <= 0:
            return Claimed([], None)
        now = time.time()
        args: list[Any] = [self.queue_name, int(now * 1000), lease_ms, room, MOVES_PER_CLAIM]
        if (starter := self.starter) is not None:
            args += [starter.most, now, starter.worker_id, starter.routing_key]
            args += [starter.probe_lease_ms, starter.slot_lease_ms, idle_ttl_ms, hand_slots, *received]
        else:
            args += [0, now, "", "", 0, 0, 0, 0]
        flat = await self._pipe.eval(self._claim, [], args)
        due, on_their_way = flat[-1], flat[-2]
        jobs: list[str] = []
        started: dict[str, StartReply] = {}
        taken_back: list[str] = []
        for i in range(0, len(flat) - 2, 2):
            job = flat[i].decode()
            reply = flat[i + 1]
            if reply == -1:
                taken_back.append(job)
                continue
            jobs.append(job)
            if reply != 0:  # 0: not started here
                started[job] = Started.decode(reply)
        return Claimed(jobs, int(float(due)) if due else None, started, on_their_way, taken_back)

    async def withdraw(self) -> None:
        """This worker takes no more handed jobs (it stops): its registration goes."""
        if self.starter is None:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrem(idle_workers_key(self.queue_name), self.starter.worker_id)
            pipe.delete(idler_key(self.queue_name, self.starter.worker_id))
            await pipe.execute()

    async def empty(self) -> bool:
        """Nothing ready, delayed or held on this queue (a burst worker's signal to stop)."""
        q = self.queue_name
        async with self._redis.pipeline(transaction=False) as pipe:
            for band in PRIORITIES:
                pipe.zcard(active_tenants_key(q, band))
            pipe.zcard(delayed_key(q))
            pipe.zcard(self.leases_key)
            counts = await pipe.execute()
        return not any(counts)

    async def end_run(self, job_id: str, *, done: bool, due_ms: int | None = None) -> None:
        """The run is over: the job leaves the queue (``done``), or goes back to it, due at once or
        at ``due_ms`` (a deferral)."""
        args = [self.queue_name, job_id, "done" if done else "again", "" if due_ms is None else due_ms]
        await self._pipe.eval(self._end_run, [], args)
