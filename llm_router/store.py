"""The result store: every Redis key and command of ours outside arq's own queue.

A job's record is a Redis hash at ``llm-router:job:<id>``; JSON-valued fields are orjson bytes. Each
state change is one Lua script (atomic, one round trip): ``submit`` creates the record and writes
arq's job in the same step (SET-NX semantics on the record make it the idempotency key), ``start``
marks a job running and returns its request, ``finish`` writes the outcome unless the job already
ended, ``cancel`` takes a queued job off arq's queue. Scripts run on Redis' own clock-free inputs:
times are passed in by the caller.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from arq.constants import abort_jobs_ss, in_progress_key_prefix, job_key_prefix, retry_key_prefix
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

try:
    from hiredis import pack_command
except ImportError:  # pragma: no cover - hiredis is a dependency
    pack_command = None

from llm_router.autopipe import AutoPipeline
from llm_router.contract import JobRecord, JobStatus
from llm_router.ledger_lua import ENDED_CHANNEL as ENDED_CHANNEL
from llm_router.ledger_lua import LEDGER_FUNCTIONS, RESERVE_FUNCTIONS
from llm_router.resilience_lua import FUNCTIONS, SICK_KEY
from llm_router.resilience_lua import PREFIX as RESILIENCE_PREFIX

PREFIX = "llm-router"
RECORD_PREFIX = f"{PREFIX}:job:"
WORKER_INFO_PREFIX = f"{PREFIX}:worker:"
RUN_JOB = "run_llm_job"  # the one arq function; its only argument is the job id
BREAKER_PREFIX = RESILIENCE_PREFIX + "breaker:"
PROBES_PREFIX = RESILIENCE_PREFIX + "probes:"

JSON_FIELDS = ("request", "route", "attempts", "response", "usage", "error", "metadata")
FLOAT_FIELDS = ("created_at", "deadline_at", "started_at", "finished_at")


def record_key(job_id: str) -> str:
    return RECORD_PREFIX + job_id


def stream_key(job_id: str) -> str:
    """The job's token stream: OpenAI ``chat.completion.chunk`` entries, then an end or error entry."""
    return f"{PREFIX}:stream:{job_id}"


def workers_key(queue_name: str) -> str:
    """Live workers of a queue (a sorted set scored by last heartbeat): a worker on another queue
    cannot answer this one's jobs."""
    return f"{queue_name}:workers"


def body_digest(body: bytes) -> str:
    return hashlib.blake2b(body, digest_size=16).hexdigest()


# arq_job_payload's bytes, by formatting: job ids are restricted to characters JSON needs no escape for
_ARQ_JOB = b'{"t":null,"f":"' + RUN_JOB.encode() + b'","a":["%s"],"k":{},"et":%d}'


def arq_job_payload(job_id: str, enqueue_ms: int) -> bytes:
    """arq's own job format (what ``enqueue_job`` writes), JSON instead of pickle."""
    return orjson.dumps({"t": None, "f": RUN_JOB, "a": [job_id], "k": {}, "et": enqueue_ms})


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs a µs per job in bulk submits
class NewJob:
    """What a new record starts with; ``request`` is the canonical JSON that ``digest`` hashes."""

    job_id: str
    digest: str
    request: bytes
    route: list[str]
    route_json: bytes
    model_requested: str
    tenant: str
    created_at: float
    deadline_at: float
    metadata: dict[str, Any] | None = None
    reserve_nanos: int = 0  # the worst-case cost held from the tenant's credit until the job settles
    prompt_tokens: int = 0  # estimated (producer.estimate)
    # optional record fields: routed_by, cache_key/cache_ttl, parent, notify
    extra: list[Any] | None = None


# KEYS: record, arq job, arq queue.  ARGV: digest, record ttl s, arq payload, score ms, arq ttl ms,
# job id, request, route, model requested, tenant, created at, deadline at, metadata ('' if none),
# reservation (nano-USD), the tenant's queue limit (0: none), then optional record field/value pairs.
# Returns 1 created, 0 the same job exists (nothing reserved again), -1 a different job has this id,
# -2 the tenant's credit does not cover the reservation, -3 the tenant's queue is full.
SUBMIT_LUA = (
    RESERVE_FUNCTIONS
    + """
local tenant = ARGV[10]
local h = redis.call('HMGET', KEYS[1], 'digest', 'tenant')
if h[1] then
  -- the same job only for its own tenant: another tenant's id is a conflict, never its record
  if h[1] == ARGV[1] and (h[2] or 'default') == tenant then return 0 end
  return -1
end
local limit = tonumber(ARGV[15])
if limit > 0 and tonumber(redis.call('GET', P .. 'active:' .. tenant) or '0') >= limit then return -3 end
local ok, metered = reserve(tenant, ARGV[14])
if not ok then return -2 end
redis.call('HSET', KEYS[1], 'digest', ARGV[1], 'status', 'queued', 'attempts', '[]', 'request', ARGV[7],
           'route', ARGV[8], 'model_requested', ARGV[9], 'tenant', tenant, 'created_at', ARGV[11],
           'deadline_at', ARGV[12])
if ARGV[13] ~= '' then redis.call('HSET', KEYS[1], 'metadata', ARGV[13]) end
if metered then redis.call('HSET', KEYS[1], 'metered', 1, 'reserved', ARGV[14]) end
if #ARGV > 15 then redis.call('HSET', KEYS[1], unpack(ARGV, 16, #ARGV)) end
redis.call('INCR', P .. 'active:' .. tenant)
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[6])
return 1
"""
)

# KEYS: record.  ARGV: now, worker id, job id, routing key, probe lease ms.  Returns nil (no
# record), {status} when already ended, or what the worker needs: previous status, request, route,
# deadline_at, attempts, runs, passes, the in-flight call and worker of an interrupted run, the
# admission decisions for the route's deployments (dep, decision, …), Redis' clock in ms, the cached
# answer ('' on a miss or without cache), the parent compare job ('' if none) and whether a cancel
# was asked for while the job was held.
START_LUA = (
    FUNCTIONS
    + """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return nil end
if st == 'succeeded' or st == 'failed' or st == 'cancelled' then return {st} end
local v = redis.call('HMGET', KEYS[1], 'request', 'route', 'deadline_at', 'attempts', 'passes',
                     'inflight', 'worker', 'cache_key', 'parent', 'cancel_requested')
redis.call('HSET', KEYS[1], 'status', 'running', 'worker', ARGV[2])
redis.call('HSETNX', KEYS[1], 'started_at', ARGV[1])
local runs = redis.call('HINCRBY', KEYS[1], 'runs', 1)
local now = now_ms()
local cached = ''
if v[8] then cached = redis.call('GET', P .. 'cache:' .. v[8]) or '' end  -- the key names the tenant
local decisions = {}
if cached == '' and not v[10] then
  decisions = admit_route(v[2], ARGV[4], ARGV[3], estimate_tokens(v[1]), tonumber(ARGV[5]), now)
end
return {st, v[1], v[2], v[3], v[4], runs, v[5] or '0', v[6] or '', v[7] or '', decisions, now, cached,
        v[9] or '', v[10] or ''}
"""
)

# ARGV: dep, rpm, tpm, probes, job id, estimated tokens, probe lease ms.  Admission of one deployment
# reached only after the ones before it failed (the common path is admitted by START).
ADMIT_LUA = (
    FUNCTIONS
    + """
return admit(ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), now_ms(), ARGV[5],
             tonumber(ARGV[6]), tonumber(ARGV[7]))
"""
)

# KEYS: arq queue, then one arq in-progress key per job.  ARGV: now ms, lease ms, how many to claim
# at most, then the job ids.  Claims due jobs that no other worker holds, with a short lease that the
# holder's lease keeper refreshes, until it has claimed enough; returns the claimed ids and scores.
# Every worker reads the same front of the queue, so the script walks past jobs others hold rather
# than each worker trying only as many as it has room for.  One round trip for a whole poll, where
# arq's own claim costs three per job.
CLAIM_LUA = """
local out = {}
local now = tonumber(ARGV[1])
local room = tonumber(ARGV[3])
for i = 4, #ARGV do
  if room <= 0 then break end
  local key = KEYS[i - 2]
  if redis.call('EXISTS', key) == 0 then
    local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
    if score and tonumber(score) <= now then
      redis.call('SET', key, '1', 'PX', ARGV[2])
      out[#out + 1] = ARGV[i]
      out[#out + 1] = score
      room = room - 1
    end
  end
end
return out
"""

# KEYS: record, job stream.  ARGV: record ttl s, job id, number of field arguments, settlement
# ('cost nanos|model|prompt tokens|completion tokens', used only if this write ends the job), usage
# TTL s, the summary a compare parent keeps of this job ('' if none), field/value pairs, then breaker
# outcomes (see resilience_lua).  Outcomes count even for a job that already ended (the calls
# happened); the fields never overwrite an ended job, so a duplicate run cannot replace the outcome
# (or the cost) recorded first, and a job settles once.  Returns {1 written | 0 already ended |
# -2 no record, breaker transitions…}.
FINISH_LUA = (
    FUNCTIONS
    + LEDGER_FUNCTIONS
    + """
local now = now_ms()
local out = {0}
local n = tonumber(ARGV[3])
for i = 7 + n, #ARGV do
  local t = record_outcome(ARGV[i], now, ARGV[2])
  if t then out[#out + 1] = t end
end
local st = redis.call('HGET', KEYS[1], 'status')
if not st then out[1] = -2 return out end
if st == 'succeeded' or st == 'failed' or st == 'cancelled' then return out end
if n > 0 then redis.call('HSET', KEYS[1], unpack(ARGV, 7, 6 + n)) end
redis.call('HDEL', KEYS[1], 'inflight')
local ended = redis.call('HGET', KEYS[1], 'status')
if ended == 'succeeded' or ended == 'failed' or ended == 'cancelled' then
  -- an ended job is kept the record TTL from now; an unfinished one keeps the TTL it got at submit
  -- (its deadline plus the record TTL), which a deferral must not shorten
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  local cost, model, ptok, ctok = string.match(ARGV[4], '^(%d+)|(.*)|(%d+)|(%d+)$')
  job_ended(KEYS[1], ARGV[2], ended, cost or '0', model or '', ptok or '0', ctok or '0', ARGV[5],
            ARGV[6], now)
  if ended == 'succeeded' then
    local c = redis.call('HMGET', KEYS[1], 'cache_key', 'cache_ttl', 'cached', 'no_cache')
    if c[1] and not c[3] and not c[4] then
      redis.call('SET', P .. 'cache:' .. c[1], redis.call('HGET', KEYS[1], 'response'), 'EX', c[2])
    end
  end
  if KEYS[2] and redis.call('EXISTS', KEYS[2]) == 1 then
    -- the job's stream ends after its record is written: a follower that sees the end reads the outcome
    redis.call('XADD', KEYS[2], '*', 'end', ended)
    redis.call('EXPIRE', KEYS[2], ARGV[1])
  end
end
out[1] = 1
return out
"""
)

# KEYS: record, arq job, arq queue, arq in-progress.  ARGV: job id, now, error JSON, usage TTL s.
# A queued job ends cancelled here (its reservation released); a running one (or one a worker has
# claimed) is marked and handed to arq's abort set, and its worker ends it.  Returns 1 cancelled,
# 'aborting', -2 no record, or the status of a job that already ended.
CANCEL_LUA = (
    FUNCTIONS
    + LEDGER_FUNCTIONS
    + """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return -2 end
if (st == 'queued' or st == 'deferred') and redis.call('EXISTS', KEYS[4]) == 0 then
  -- the job's own queue (interactive jobs name theirs), whatever queue the caller serves
  redis.call('ZREM', redis.call('HGET', KEYS[1], 'queue') or KEYS[3], ARGV[1])
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[2], 'error', ARGV[3])
  job_ended(KEYS[1], ARGV[1], 'cancelled', '0', '', '0', '0', ARGV[4], '', now_ms())
  return 1
end
if st == 'queued' or st == 'deferred' or st == 'running' then
  redis.call('HSET', KEYS[1], 'cancel_requested', 1)
  redis.call('ZADD', 'arq:abort', now_ms(), ARGV[1])
  return 'aborting'
end
return st
"""
)


# arq's own end of a job run (``Worker.finish_job``'s MULTI) as one script, so it rides the worker's
# auto-pipeline with the record writes.  KEYS: in-progress, retry, job, queue, abort set.  ARGV: job
# id, 1 if the job is done with (else it runs again), score increment ('' for none), keep the
# in-progress key this many ms ('' to delete it).
ARQ_FINISH_LUA = """
if ARGV[4] == '' then redis.call('DEL', KEYS[1]) else redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
if ARGV[2] == '1' then
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('ZREM', KEYS[5], ARGV[1])
  redis.call('ZREM', KEYS[4], ARGV[1])
elseif ARGV[3] ~= '' then
  redis.call('ZINCRBY', KEYS[4], ARGV[3], ARGV[1])
end
return 1
"""


# KEYS: a compare parent's record.  ARGV: child id, its summary.  As job_ended does for a child that
# ran: one script, so the last side to end completes the parent exactly once.
CHILD_REFUSED_LUA = f"""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'child:' .. ARGV[1], ARGV[2])
if redis.call('HINCRBY', KEYS[1], 'pending', -1) <= 0 then
  local t = redis.call('TIME')
  local at = t[1] .. '.' .. string.format('%06d', t[2])
  redis.call('HSET', KEYS[1], 'status', 'succeeded', 'finished_at', at)
  if redis.call('HEXISTS', KEYS[1], 'notify') == 1 then redis.call('PUBLISH', '{ENDED_CHANNEL}', ARGV[3]) end
end
return 1
"""


@dataclass(frozen=True, slots=True)
class SubmitResult:
    job_id: str
    created: bool


class Store:
    """Typed access to records; one instance per process, sharing the caller's Redis client."""

    def __init__(
        self, redis: Redis, *, queue_name: str, record_ttl_s: int, usage_ttl_s: int = 400 * 86400
    ) -> None:
        self.redis = redis
        self.queue_name = queue_name
        self.record_ttl_s = record_ttl_s
        self.usage_ttl_s = usage_ttl_s
        self._submit = redis.register_script(SUBMIT_LUA)
        self._start = redis.register_script(START_LUA)
        self._finish = redis.register_script(FINISH_LUA)
        self._cancel = redis.register_script(CANCEL_LUA)
        self._claim = redis.register_script(CLAIM_LUA)
        self._admit = redis.register_script(ADMIT_LUA)
        self._arq_finish = redis.register_script(ARQ_FINISH_LUA)
        self._child_refused = redis.register_script(CHILD_REFUSED_LUA)
        self.workers_key = workers_key(queue_name)
        self._pipe = AutoPipeline(redis)

    def submit_command(
        self, job: NewJob, queue_name: str | None = None, max_queued: int = 0
    ) -> tuple[Any, ...]:
        """The EVALSHA of one submit; many of them in one write make bulk enqueue a round trip a chunk.

        ``max_queued`` refuses the job (-3) while its tenant has that many jobs queued or running.
        """
        enqueue_ms = int(job.created_at * 1000)
        job_id = job.job_id
        # record and arq job outlive the deadline by the record TTL: a worker always finds the job
        # to fail it with deadline_exceeded, however long the backlog, and the outcome stays readable
        ttl_s = self.record_ttl_s + int(job.deadline_at - job.created_at) + 1
        return (
            "EVALSHA",
            self._submit.sha,
            3,
            RECORD_PREFIX + job_id,
            job_key_prefix + job_id,
            queue_name or self.queue_name,
            job.digest,
            ttl_s,
            _ARQ_JOB % (job_id.encode(), enqueue_ms),
            enqueue_ms,
            ttl_s * 1000,
            job_id,
            job.request,
            job.route_json,
            job.model_requested,
            job.tenant,
            job.created_at,
            job.deadline_at,
            orjson.dumps(job.metadata) if job.metadata is not None else b"",
            job.reserve_nanos,
            max_queued,
            *(job.extra or ()),
        )

    async def submit_batch(self, batch: list[tuple[Any, ...]]) -> list[int]:
        """Run many submits in one round trip; each result is 1 (created), 0 (same body) or -1 (conflict).

        The commands are packed by hiredis and written on one pooled connection: redis-py's own
        pipeline spends more time packing a thousand 30-argument commands than Redis spends running
        them.
        """
        if not batch:
            return []
        if pack_command is None:  # pragma: no cover - hiredis is a dependency
            async with self.redis.pipeline(transaction=False) as pipe:
                for command in batch:
                    pipe.execute_command(*command)
                return [int(r) for r in await pipe.execute()]
        packed = b"".join([pack_command(command) for command in batch])
        for _ in range(2):
            results, missing_script = await self._send_raw(packed, len(batch))
            if not missing_script:
                return results
            await self.redis.script_load(SUBMIT_LUA)  # Redis restarted and lost its scripts
        raise RuntimeError("Redis keeps refusing the submit script")

    async def _send_raw(self, packed: bytes, count: int) -> tuple[list[int], bool]:
        pool = self.redis.connection_pool
        conn = await pool.get_connection()
        try:
            await conn.send_packed_command(packed, check_health=False)
            results: list[int] = []
            missing_script = False
            for _ in range(count):  # read every reply, even after an error, to keep the stream in step
                try:
                    results.append(int(await conn.read_response()))
                except NoScriptError:
                    missing_script = True
                    results.append(0)
            return results, missing_script
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)

    async def _eval(self, script: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """One EVALSHA, packed by hiredis (redis-py's packer was a sixth of a worker's CPU per job)
        and sent with whatever other tasks are sending (``AutoPipeline``)."""
        if pack_command is None:  # pragma: no cover - hiredis is a dependency
            return await script(keys=keys, args=args)
        packed = pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))
        for _ in range(2):
            try:
                return await self._pipe.call(packed)
            except NoScriptError:
                pass  # Redis restarted and lost its scripts: load and send again
            await self.redis.script_load(script.script)
        raise RuntimeError("Redis keeps refusing a script it was just given")

    async def claim(self, job_ids: list[str], lease_ms: int, room: int) -> list[tuple[str, int]]:
        """Claim up to ``room`` due, unheld jobs of ``job_ids`` with a lease; returns (job id, score)."""
        if not job_ids or room <= 0:
            return []
        keys = [self.queue_name, *(in_progress_key_prefix + j for j in job_ids)]
        flat = await self._eval(self._claim, keys, [int(time.time() * 1000), lease_ms, room, *job_ids])
        return [(flat[i].decode(), int(float(flat[i + 1]))) for i in range(0, len(flat), 2)]

    async def arq_finish(
        self, job_id: str, *, done: bool, incr_score: int | None, keep_in_progress_ms: int | None
    ) -> None:
        """arq's bookkeeping after a run (see ``ARQ_FINISH_LUA``)."""
        keys = [
            in_progress_key_prefix + job_id,
            retry_key_prefix + job_id,
            job_key_prefix + job_id,
            self.queue_name,
            abort_jobs_ss,
        ]
        args = [
            job_id,
            "1" if done else "0",
            "" if incr_score is None else incr_score,
            "" if keep_in_progress_ms is None else keep_in_progress_ms,
        ]
        await self._eval(self._arq_finish, keys, args)

    async def start(
        self, job_id: str, worker_id: str, now: float, routing_key: str = "", probe_lease_ms: int = 60_000
    ) -> list[Any] | None:
        """Mark the job running, read it, and admit its route's first deployment (one round trip)."""
        return await self._eval(
            self._start, [record_key(job_id)], [now, worker_id, job_id, routing_key, probe_lease_ms]
        )

    async def admit(
        self, dep_id: str, rpm: int, tpm: int, probes: int, job_id: str, est_tokens: int, probe_lease_ms: int
    ) -> str:
        res = await self._admit(args=[dep_id, rpm, tpm, probes, job_id, est_tokens, probe_lease_ms])
        return res.decode() if isinstance(res, bytes) else str(res)

    async def finish(
        self,
        job_id: str,
        fields: dict[str, Any],
        outcomes: Sequence[str] = (),
        *,
        settle: str = "",
        summary: bytes = b"",
    ) -> tuple[int, list[str]]:
        """Write a record change and the breaker outcomes of its calls; returns (code, transitions).

        When the change ends the job, ``settle`` (``cost nanos|model|prompt|completion``) is charged
        to its tenant and counted in the usage, once; ``summary`` goes to its compare parent.
        """
        argv: list[Any] = [self.record_ttl_s, job_id, 2 * len(fields), settle, self.usage_ttl_s, summary]
        for name, value in fields.items():
            argv.append(name)
            argv.append(encode_field(name, value))
        argv.extend(outcomes)
        res = await self._eval(self._finish, [record_key(job_id), stream_key(job_id)], argv)
        return int(res[0]), [t.decode() if isinstance(t, bytes) else str(t) for t in res[1:]]

    async def create_parent(
        self,
        parent_id: str,
        *,
        request: bytes,
        route: list[str],
        model_requested: str,
        tenant: str,
        created_at: float,
        deadline_at: float,
        pending: int,
        notify: bool = False,
    ) -> bool:
        """A compare job: no queue entry of its own; it ends when its last child does (``job_ended``
        in the scripts writes each child's summary into it). ``False`` if the id is taken."""
        key = record_key(parent_id)
        fields: dict[str, Any] = {
            "status": "running",
            "request": request,
            "route": orjson.dumps(route),
            "model_requested": model_requested,
            "tenant": tenant,
            "created_at": created_at,
            "started_at": created_at,
            "deadline_at": deadline_at,
            "attempts": b"[]",
            "pending": pending,
        }
        if notify:
            fields["notify"] = 1
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key, "digest", body_digest(request))
            pipe.hset(key, mapping=fields)
            pipe.expire(key, self.record_ttl_s + int(deadline_at - created_at) + 1)
            created, *_ = await pipe.execute()
        return bool(created)

    async def child_refused(self, parent_id: str, child_id: str, summary: dict[str, Any]) -> None:
        """A side of a compare job refused at submit: it counts as ended, with its error."""
        await self._eval(
            self._child_refused, [record_key(parent_id)], [child_id, orjson.dumps(summary), parent_id]
        )

    async def publish(self, job_id: str, chunks: Sequence[bytes], *, maxlen: int) -> None:
        """Append chunks (JSON) to the job's stream in one round trip, capped and expiring with the record."""
        key = stream_key(job_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            for chunk in chunks:
                pipe.xadd(key, {"c": chunk}, maxlen=maxlen, approximate=True)
            pipe.expire(key, self.record_ttl_s)
            await pipe.execute()

    async def publish_error(self, job_id: str, error: dict[str, Any]) -> None:
        """The stream's error event: tokens were published, then the upstream stream broke."""
        await self.redis.xadd(stream_key(job_id), {"error": orjson.dumps(error)})

    async def read_stream(
        self, job_id: str, after: str, *, block_ms: int, count: int = 500
    ) -> list[tuple[str, dict[bytes, bytes]]]:
        """Entries after ``after`` (``"0-0"`` from the start), waiting up to ``block_ms`` for new ones
        (0: not at all; Redis' own BLOCK 0 would wait forever)."""
        res = await self.redis.xread({stream_key(job_id): after}, block=block_ms or None, count=count)
        if not res:
            return []
        return [(entry_id.decode(), fields) for entry_id, fields in res[0][1]]

    async def cancel(self, job_id: str, error: dict[str, Any]) -> int | str:
        keys = [record_key(job_id), job_key_prefix + job_id, self.queue_name, in_progress_key_prefix + job_id]
        res = await self._eval(
            self._cancel, keys, [job_id, time.time(), orjson.dumps(error), self.usage_ttl_s]
        )
        return res.decode() if isinstance(res, bytes) else int(res)

    async def get(self, job_id: str) -> JobRecord | None:
        raw = await self.redis.hgetall(record_key(job_id))
        return decode_record(job_id, raw) if raw else None

    async def get_many(self, job_ids: list[str]) -> list[JobRecord | None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(record_key(job_id))
            raws = await pipe.execute()
        return [decode_record(j, r) if r else None for j, r in zip(job_ids, raws, strict=True)]

    async def statuses(self, job_ids: list[str]) -> list[str | None]:
        """Only the status of many jobs: what waiting needs, without fetching bodies."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(record_key(job_id), "status")
            raws = await pipe.execute()
        return [r.decode() if r else None for r in raws]

    async def forget_worker(self, worker_id: str) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrem(self.workers_key, worker_id)
            pipe.delete(WORKER_INFO_PREFIX + worker_id)
            await pipe.execute()

    async def live_workers(self, ttl_s: float) -> int:
        return int(await self.redis.zcount(self.workers_key, time.time() - ttl_s, "+inf"))


def encode_field(name: str, value: Any) -> bytes | str | int | float:
    if isinstance(value, bytes):  # already JSON-encoded by the caller
        return value
    if name in JSON_FIELDS:
        return orjson.dumps(value)
    if isinstance(value, JobStatus):
        return value.value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (bytes, str, int, float)):
        return value
    return orjson.dumps(value)


def decode_record(job_id: str, raw: dict[bytes, bytes]) -> JobRecord:
    data: dict[str, Any] = {"id": job_id}
    children: list[Any] = []
    credits_nanos: int | None = None
    for k, v in raw.items():
        name = k.decode()
        if name in JSON_FIELDS:
            data[name] = orjson.loads(v)
        elif name in FLOAT_FIELDS:
            data[name] = float(v)
        elif name in ("runs", "passes"):
            data[name] = int(v)
        elif name == "cached":
            data[name] = v == b"1"
        elif name == "credits_remaining":
            credits_nanos = int(v)
        elif name.startswith("child:"):
            children.append(orjson.loads(v))
        elif name in _INTERNAL_FIELDS:
            continue
        else:
            data[name] = v.decode()
    if credits_nanos is not None:
        usage = data.get("usage") or {}
        data["usage"] = {**usage, "credits_remaining": credits_nanos / 1e9}
    if children or "pending" in raw or b"pending" in raw:
        order = {m: i for i, m in enumerate(data.get("route") or ())}
        children.sort(key=lambda c: order.get(c.get("model"), len(order)))
        data["comparison"] = children
    return JobRecord.model_validate(data)


# record fields the workers and scripts use that are not part of the record's public shape
_INTERNAL_FIELDS = frozenset(
    {
        "digest",
        "worker",
        "inflight",
        "metered",
        "reserved",
        "notify",
        "cache_key",
        "cache_ttl",
        "no_cache",
        "queue",
        "cancel_requested",
        "pending",
    }
)


class BreakerBoard:
    """Reading and resetting the fleet's breakers (``llm-router breakers``)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def list(self, *, window_s: float, bucket_s: float) -> list[dict[str, Any]]:
        """Every deployment with breaker state: its state, time to half-open, and window counts."""
        sick = {k.decode(): v.decode() for k, v in (await self.redis.hgetall(SICK_KEY)).items()}
        names = set(sick)
        async for key in self.redis.scan_iter(match=f"{BREAKER_PREFIX}*", count=500):
            names.add(key.decode().removeprefix(BREAKER_PREFIX))
        now_s, now_us = await self.redis.time()
        now_ms = now_s * 1000 + now_us // 1000
        current = now_ms // int(bucket_s * 1000)
        first = current - int(window_s // bucket_s) + 1
        out = []
        for name in sorted(names):
            fields = {
                k.decode(): v.decode() for k, v in (await self.redis.hgetall(BREAKER_PREFIX + name)).items()
            }
            state, _, until = sick.get(name, "closed|0").partition("|")
            calls = sum(int(v) for k, v in fields.items() if k.startswith("n:") and int(k[2:]) >= first)
            failures = sum(int(v) for k, v in fields.items() if k.startswith("f:") and int(k[2:]) >= first)
            until_ms = int(until or 0)
            out.append(
                {
                    "deployment": name,
                    "state": state,
                    "calls_in_window": calls,
                    "failures_in_window": failures,
                    "consecutive_failures": int(fields.get("c", 0)),
                    "trips": int(fields.get("trips", 0)),
                    "seconds_to_retry": max(until_ms - now_ms, 0) / 1000 if state != "half_open" else 0.0,
                }
            )
        return out

    async def reset(self, name: str) -> bool:
        """Close one breaker and clear its counts; ``False`` when it had no state."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(SICK_KEY, name)
            pipe.delete(BREAKER_PREFIX + name, PROBES_PREFIX + name)
            removed, deleted = await pipe.execute()
        return bool(removed or deleted)
