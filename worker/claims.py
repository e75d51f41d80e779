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
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from llm_router.autopipe import AutoPipeline
from llm_router.circuit_breaker import BREAKER_LUA
from llm_router.keys import PRIORITIES, active_tenants_key, delayed_key, leases_key
from llm_router.lua import LUA_PRELUDE
from llm_router.queue_lua import QUEUE_LUA, READY_LUA
from llm_router.record_lua import START_JOB_LUA
from llm_router.store import Started, StartReply

# Returns {claimed job, its start…, next_due_ms}: the jobs now leased to this worker, each followed by
# what starting it replied (``record_lua.start_job``: nil when its record is gone, the pairs of
# ``store.Started``, or 0 when it was not started here: past the ``starts`` first, or its start
# raised, which the worker's own start will meet again), then when the queue's next delayed job is
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

promote(queue, now, most)
local out = {}
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
local next_due = redis.call('ZRANGE', queue .. ':delayed', 0, 0, 'WITHSCORES')
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

    async def claim(self, lease_ms: int, room: int) -> Claimed:
        """Lease up to ``room`` due jobs to this worker (fairly across tenants, by priority), starting
        the first ``starter.most`` of them when there is a starter."""
        if room <= 0:
            return Claimed([], None)
        now = time.time()
        args: list[Any] = [self.queue_name, int(now * 1000), lease_ms, room, MOVES_PER_CLAIM]
        if (starter := self.starter) is not None:
            args += [starter.most, now, starter.worker_id, starter.routing_key]
            args += [starter.probe_lease_ms, starter.slot_lease_ms]
        else:
            args += [0, now, "", "", 0, 0]
        flat = await self._pipe.eval(self._claim, [], args)
        due = flat[-1]
        jobs: list[str] = []
        started: dict[str, StartReply] = {}
        for i in range(0, len(flat) - 1, 2):
            job = flat[i].decode()
            jobs.append(job)
            reply = flat[i + 1]
            if reply != 0:  # 0: not started here
                started[job] = Started.decode(reply)
        return Claimed(jobs, int(float(due)) if due else None, started)

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
