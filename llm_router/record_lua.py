"""The Lua scripts that change a job's record: submit, start, admit, finish, cancel, and a compare
side refused at submit. Each is one atomic step on Redis; ``llm_router.store`` runs them.

Every script starts with ``LUA_KEYS`` (the key names of ``llm_router.keys``); the breaker and money
functions they share come from ``resilience_lua`` and ``ledger_lua``.
"""

from __future__ import annotations

from llm_router.keys import LUA_KEYS
from llm_router.ledger_lua import LEDGER_FUNCTIONS, RESERVE_FUNCTIONS
from llm_router.resilience_lua import FUNCTIONS

# KEYS: record, arq job, arq queue.  ARGV: digest, record ttl s, arq payload, score ms, arq ttl ms,
# job id, request, route, model requested, tenant, created at, deadline at, metadata ('' if none),
# reservation (nano-USD), the tenant's queue limit (0: none), then optional record field/value pairs.
# Returns 1 created, 0 the same job exists (nothing reserved again), -1 a different job has this id,
# -2 the tenant's credit does not cover the reservation, -3 the tenant's queue is full.
SUBMIT_LUA = (
    LUA_KEYS
    + RESERVE_FUNCTIONS
    + """
local tenant = ARGV[10]
local h = redis.call('HMGET', KEYS[1], 'digest', 'tenant')
if h[1] then
  -- the same job only for its own tenant: another tenant's id is a conflict, never its record
  if h[1] == ARGV[1] and (h[2] or 'default') == tenant then return 0 end
  return -1
end
local limit = tonumber(ARGV[15])
if limit > 0 and tonumber(redis.call('GET', ACTIVE .. tenant) or '0') >= limit then return -3 end
local ok, metered = reserve(tenant, ARGV[14])
if not ok then return -2 end
redis.call('HSET', KEYS[1], 'digest', ARGV[1], 'status', 'queued', 'attempts', '[]', 'request', ARGV[7],
           'route', ARGV[8], 'model_requested', ARGV[9], 'tenant', tenant, 'created_at', ARGV[11],
           'deadline_at', ARGV[12])
if ARGV[13] ~= '' then redis.call('HSET', KEYS[1], 'metadata', ARGV[13]) end
if metered then redis.call('HSET', KEYS[1], 'metered', 1, 'reserved', ARGV[14]) end
if #ARGV > 15 then redis.call('HSET', KEYS[1], unpack(ARGV, 16, #ARGV)) end
redis.call('INCR', ACTIVE .. tenant)
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
    LUA_KEYS
    + FUNCTIONS
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
if v[8] then cached = redis.call('GET', CACHE .. v[8]) or '' end  -- the key names the tenant
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
    LUA_KEYS
    + FUNCTIONS
    + """
return admit(ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), now_ms(), ARGV[5],
             tonumber(ARGV[6]), tonumber(ARGV[7]))
"""
)

# KEYS: record, job stream.  ARGV: record ttl s, job id, number of field arguments, settlement
# ('cost nanos|model|prompt tokens|completion tokens', used only if this write ends the job), usage
# TTL s, the summary a compare parent keeps of this job ('' if none), field/value pairs, then breaker
# outcomes (see resilience_lua).  Outcomes count even for a job that already ended (the calls
# happened); the fields never overwrite an ended job, so a duplicate run cannot replace the outcome
# (or the cost) recorded first, and a job settles once.  Returns {1 written | 0 already ended |
# -2 no record, breaker transitions…}.
FINISH_LUA = (
    LUA_KEYS
    + FUNCTIONS
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
      redis.call('SET', CACHE .. c[1], redis.call('HGET', KEYS[1], 'response'), 'EX', c[2])
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
    LUA_KEYS
    + FUNCTIONS
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
  redis.call('ZADD', ABORT_SET, now_ms(), ARGV[1])
  return 'aborting'
end
return st
"""
)


# KEYS: a compare parent's record.  ARGV: child id, its summary.  As job_ended does for a child that
# ran: one script, so the last side to end completes the parent exactly once.
CHILD_REFUSED_LUA = (
    LUA_KEYS
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'child:' .. ARGV[1], ARGV[2])
if redis.call('HINCRBY', KEYS[1], 'pending', -1) <= 0 then
  local t = redis.call('TIME')
  local at = t[1] .. '.' .. string.format('%06d', t[2])
  redis.call('HSET', KEYS[1], 'status', 'succeeded', 'finished_at', at)
  if redis.call('HEXISTS', KEYS[1], 'notify') == 1 then redis.call('PUBLISH', ENDED, ARGV[3]) end
end
return 1
"""
)
