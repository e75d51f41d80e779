"""The Lua scripts that change a job's record: submit, start, admit, finish, cancel, and a compare
side refused at submit. Each is one atomic step on Redis; ``llm_router.store`` runs them and decodes
their replies into typed objects (``SubmitReply``, ``Started``, ``Finished``, ``CancelReply``).

Each script starts with ``LUA_PRELUDE`` (key names and Redis' clock), the shared functions it needs
(``BREAKER_LUA`` of ``llm_router.circuit_breaker``; ``RESERVE_LUA``/``SETTLE_LUA`` of
``llm_router.ledger_lua``), then names its KEYS and ARGV. Times written into records are passed in by
the caller; breaker and rate-limit times are Redis' own.
"""

from __future__ import annotations

from llm_router.circuit_breaker import BREAKER_LUA
from llm_router.keys import PRIORITIES
from llm_router.ledger_lua import RESERVE_LUA, SETTLE_LUA
from llm_router.lua import LUA_PRELUDE
from llm_router.queue_lua import QUEUE_LUA, READY_LUA

# the largest request a submit hands a waiting worker through pub/sub; a larger one is made due
HAND_MAX_REQUEST = 256 * 1024

# Creates the records of a group of jobs and makes them due in their queue, each job as one step
# (its record, its request, its reservation and its queue entry, or nothing); to an empty queue with
# a worker waiting, the job goes to that worker, started (``hand_job``), instead of its queue.
# Returns one code per job: 1 created, 0 the same job exists (nothing reserved again), -1 another
# job has this id, -2 the tenant's credit does not cover the reservation, -3 the tenant's queue is
# full. A group is what a
# bulk submit sends in one call (``store.SUBMIT_GROUP`` jobs at most), so that the per-call cost of
# a script is paid once per group and Redis is never held much longer than by a pipeline's read.
_SUBMIT_BODY = """
-- KEYS: the record of each job, in order
-- wake: '1' on the batch's last call to this queue, which publishes the one wake-up of the batch
-- ARGV[4]: the jobs' arguments, one msgpack array of strings: per job JOB_ARGS values, then
-- `optional` field/value pairs
local queue, max_queued, wake = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local J = cmsgpack.unpack(ARGV[4])
local JOB_ARGS = 15
-- per job: job_id, digest, request, route, model_requested, tenant, created_at, deadline_at,
-- est_tokens, reserve_nanos, band, metadata ('' if none), ttl (s: its record's and request's),
-- seq (its place in its ready queue: created_at in ms), optional (how many values follow). The
-- producer works out ttl and seq: parsing and printing numbers was a tenth of Redis' time a job.

local out = {}
local active = {}  -- tenant -> its count of jobs queued or running, once read
local added = {}  -- tenant -> jobs this call created
local due = {}  -- band .. '|' .. tenant -> {band, tenant, {seq, job, ...}}

-- a job's reads and its reservation, the only writes before its record (an error leaves none):
-- its code (as the script's reply) and whether its tenant is metered
local function admit_job(record, digest, tenant, reserve_nanos)
  local h = redis.call('HMGET', record, 'digest', 'tenant')
  if h[1] then
    -- the same job only for its own tenant: another tenant's id is a conflict, never its record
    if h[1] == digest and (h[2] or 'default') == tenant then return 0, false end
    return -1, false
  end
  if max_queued > 0 then
    if not active[tenant] then active[tenant] = tonumber(redis.call('GET', ACTIVE .. tenant) or '0') end
    if active[tenant] + (added[tenant] or 0) >= max_queued then return -3, false end
  end
  local ok, metered = reserve(tenant, reserve_nanos)
  if not ok then return -2, true end
  return 1, metered
end

-- a job submitted to an empty queue goes to a waiting worker, started (``hand_job``): the wake-up,
-- the worker's claim and its reply are three messages of an interactive request; any other job (or
-- once none waits) is made due, and one wake-up tells the queue's workers
local handing = redis.call('EXISTS', queue .. ':idle') == 1
if handing then
  local bands = {}
  for i, band in ipairs(HAND_BANDS) do bands[i] = queue .. ':tenants:' .. band end
  handing = redis.call('EXISTS', unpack(bands)) == 0
end

local failure = nil
local a = 1
for i = 1, #KEYS do
  local record = KEYS[i]
  local job_id, digest, request, route, model_requested = J[a], J[a + 1], J[a + 2], J[a + 3], J[a + 4]
  local tenant, created_at, deadline_at, est_tokens = J[a + 5], J[a + 6], J[a + 7], J[a + 8]
  local reserve_nanos, band, metadata, ttl, seq = J[a + 9], J[a + 10], J[a + 11], J[a + 12], J[a + 13]
  local optional = tonumber(J[a + 14])
  local first = a + JOB_ARGS
  a = first + optional
  -- a key of another type where a job's record or its tenant's counters belong fails the call, but
  -- only after the jobs before it are whole (queued and counted): no job is left half made
  local ok, code, metered = pcall(admit_job, record, digest, tenant, reserve_nanos)
  if not ok then
    failure = code
    break
  end
  if code == 1 then
    local fields = nil  -- the record's fields as a table: for a job with more fields, or a handed one
    if metadata == '' and first == a and not handing then
      -- most bulk jobs: one HSET as they come, no table built and unpacked (3-5 % of Redis' work a
      -- job, counted by callgrind: bench/README.md)
      if metered then
        redis.call('HSET', record, 'digest', digest, 'status', 'queued', 'attempts', '[]', 'route', route,
                   'model_requested', model_requested, 'tenant', tenant, 'created_at', created_at,
                   'deadline_at', deadline_at, 'est_tokens', est_tokens,
                   'metered', 1, 'reserved', reserve_nanos)
      else
        redis.call('HSET', record, 'digest', digest, 'status', 'queued', 'attempts', '[]', 'route', route,
                   'model_requested', model_requested, 'tenant', tenant, 'created_at', created_at,
                   'deadline_at', deadline_at, 'est_tokens', est_tokens)
      end
    else
      fields = {'digest', digest, 'status', 'queued', 'attempts', '[]', 'route', route,
                'model_requested', model_requested, 'tenant', tenant, 'created_at', created_at,
                'deadline_at', deadline_at, 'est_tokens', est_tokens}
      if metadata ~= '' then fields[#fields + 1] = 'metadata'; fields[#fields + 1] = metadata end
      if metered then
        fields[#fields + 1] = 'metered'; fields[#fields + 1] = 1
        fields[#fields + 1] = 'reserved'; fields[#fields + 1] = reserve_nanos
      end
      for j = first, a - 1 do fields[#fields + 1] = J[j] end
      redis.call('HSET', record, unpack(fields))
    end
    redis.call('EXPIRE', record, ttl)
    redis.call('SET', REQUEST .. job_id, request, 'EX', ttl)
    added[tenant] = (added[tenant] or 0) + 1
    if handing then
      -- in order: once a job waits in the queue, the ones after it wait behind it. A batch or auto
      -- lane job is not claimed as is, and a large request is not sent through pub/sub (a slow
      -- subscriber's buffer holds it: Redis drops one past 32 MB)
      if #request > HAND_MAX_REQUEST then handing = false end
      for j = first, a - 1, 2 do
        if J[j] == 'lane' and (J[j + 1] == 'batch' or J[j + 1] == 'auto') then handing = false end
      end
      if handing then
        local fresh = {request = request}
        for j = 1, #fields, 2 do fresh[fields[j]] = fields[j + 1] end
        handing = hand_job(queue, record, job_id, fresh)
      end
      if handing then code = 2 end
    end
    if code == 1 then
      local group = due[band .. '|' .. tenant]
      if not group then
        group = {band, tenant, {}}
        due[band .. '|' .. tenant] = group
      end
      local pairs_ = group[3]
      pairs_[#pairs_ + 1] = seq
      pairs_[#pairs_ + 1] = job_id
    end
  end
  out[i] = code == 2 and 1 or code  -- handed or made due: created
end
local made_due = false
for _, group in pairs(due) do
  make_ready_many(queue, group[1], group[2], group[3])
  made_due = true
end
-- one wake-up a batch, after its last call, when any of its calls (or anyone's, since the last
-- wake-up) made jobs due: idle workers claim at once. A marker carries it from call to call
local unannounced = queue .. ':unannounced'
if wake == '1' then
  if redis.call('DEL', unannounced) == 1 or made_due then redis.call('PUBLISH', queue .. ':wake', 1) end
elseif made_due then
  redis.call('SET', unannounced, 1, 'PX', 60000)  -- a batch whose last call never came: the next one's
end
reserve_done()
for tenant, n in pairs(added) do redis.call('INCRBY', ACTIVE .. tenant, n) end
if failure then
  return redis.error_reply(type(failure) == 'table' and failure.err or tostring(failure))
end
return out
"""

# ``start_job`` marks a job running and admits its route's first deployment.  Returns false (no
# record), or name/value pairs: just `status` for a job that already ended, else what the worker needs
# (see ``store.Started``).  It needs ``BREAKER_LUA`` before it.  Two scripts run it: START_LUA, and the
# worker's claim, which starts the jobs it leases in the same step (``worker.claims``). ``fresh``
# (the submit's hand-off): the record this very script just wrote, as a table of its fields (and
# ``request``), and the Redis time in ms: nothing to read back, and its first run's fields go in
# with the status in one write.
START_JOB_LUA = """
local START_FIELDS = {'request', 'route', 'deadline_at', 'attempts', 'passes', 'inflight', 'worker',
                      'cache_key', 'parent', 'cancel_requested', 'est_tokens', 'queue', 'hedge', 'lane',
                      'tenant', 'traceparent', 'created_at', 'started_at'}

local function start_job(record, job_id, now, worker_id, routing_key, probe_lease_ms, slot_lease_ms, fresh,
                         fresh_now_ms)
  local status, v
  if fresh then
    status, v = 'queued', {}
    for i, name in ipairs(START_FIELDS) do v[i] = fresh[name] or false end
  else
    status = redis.call('HGET', record, 'status')
    if not status then return false end
    if status == 'succeeded' or status == 'failed' or status == 'cancelled' then return {'status', status} end
    v = redis.call('HMGET', record, unpack(START_FIELDS))
    v[1] = redis.call('GET', REQUEST .. job_id) or v[1]  -- its own key (a record of before: a field)
  end
  local request, route, deadline_at, attempts, passes, inflight = v[1], v[2], v[3], v[4], v[5], v[6]
  local previous_worker, cache_key, parent, cancel_requested = v[7], v[8], v[9], v[10]
  local est_tokens = tonumber(v[11] or '0')
  local lost_runs = 0
  if status == 'running' and previous_worker ~= worker_id then
    -- the run before this one never ended: its worker died (or lost Redis) with the job. Its attempt
    -- goes into the record now, from what that worker last said it was calling, so it is kept
    -- whatever becomes of this run too. (Running under this very worker, whose id is new in every
    -- process, the job was never run: this worker's claim or start went through while its reply
    -- was lost, and a lost reply is not a lost run.)
    lost_runs = redis.call('HINCRBY', record, 'lost_runs', 1)
    local call = {}
    if inflight then call = cjson.decode(inflight) end
    if call.provider and call.upstream_model then
      -- the slot of the call it was making is free now, not when its lease lapses
      redis.call('ZREM', SLOTS .. call.provider .. '/' .. call.upstream_model, job_id)
    end
    local list = cjson.decode(attempts or '[]')
    list[#list + 1] = {
      provider = call.provider or 'unknown', model = call.model or 'unknown',
      upstream_model = call.upstream_model or 'unknown', outcome = 'interrupted',
      worker = previous_worker or cjson.null, breaker = cjson.null, error_code = cjson.null,
      http_status = cjson.null, latency_ms = cjson.null, started_at = call.started_at or 0,
    }
    attempts = cjson.encode(list)
    redis.call('HSET', record, 'attempts', attempts)
    redis.call('HDEL', record, 'inflight')
  end
  local runs, redis_now
  if fresh then
    runs, redis_now = 1, fresh_now_ms
    redis.call('HSET', record, 'status', 'running', 'worker', worker_id, 'started_at', now, 'runs', 1)
  else
    redis.call('HSET', record, 'status', 'running', 'worker', worker_id)
    redis.call('HSETNX', record, 'started_at', now)
    runs = redis.call('HINCRBY', record, 'runs', 1)
    redis_now = now_ms()
  end
  local cached = ''
  if cache_key then cached = redis.call('GET', CACHE .. cache_key) or '' end  -- the key names the tenant
  local admissions, chosen = {}, nil
  -- lanes: a batch or auto job is admitted only once its lane is known (a batch one never calls here)
  local lane = v[14] or ''
  if cached == '' and not cancel_requested and lane ~= 'batch' and lane ~= 'auto' then
    admissions, chosen = admit_route(route, routing_key, job_id, est_tokens, tonumber(probe_lease_ms),
                                     slot_lease_ms, redis_now)
  end
  local learned = ''
  if v[13] and chosen then
    -- a hedged job waits for the admitted deployment's learned percentile before a second attempt
    local q = redis.call('HMGET', CONC .. chosen, 'q', 'n')
    if q[1] then learned = q[1] .. '|' .. q[2] end
  end
  return {'status', status, 'request', request, 'route', route, 'deadline_at', deadline_at,
          'attempts', attempts, 'runs', runs, 'passes', passes or '0',
          'previous_worker', previous_worker or '', 'admissions', admissions, 'redis_now_ms', redis_now,
          'cached', cached, 'parent', parent or '', 'cancel_requested', cancel_requested or '',
          'est_tokens', est_tokens, 'lost_runs', lost_runs, 'queue', v[12] or '',
          'hedge', v[13] or '', 'learned', learned, 'lane', lane,
          -- for the worker's metrics and trace (the first run's start: this one's when it is the first)
          'tenant', v[15] or '', 'traceparent', v[16] or '', 'created_at', v[17] or '',
          'first_started_at', v[18] or now}
end
"""

# Starts one job (``start_job``): KEYS[1] its record; ARGV: now (s), worker id, job id, routing key,
# probe lease ms, slot lease ms.  Returns nil when there is no record.
START_LUA = (
    LUA_PRELUDE
    + BREAKER_LUA
    + START_JOB_LUA
    + """
return start_job(KEYS[1], ARGV[3], ARGV[1], ARGV[2], ARGV[4], ARGV[5], tonumber(ARGV[6] or '10000'))
"""
)

# ``hand_job`` gives a new job to a worker waiting for work on its queue (``worker.claims``: a claim
# that left slots free registers its worker in ``<queue>:idle`` until a lapse time, with what
# starting a job for it needs): it leases the job to the worker, starts it as the worker's claim
# would (``start_job``), notes it in ``<queue>:handed:<worker>`` until the worker acknowledges it,
# and publishes the start on the worker's own channel, so the job's call goes out without a claim.
# The worker registered longest ago first; a worker whose registration lapsed, whose slots are
# spent, or which no longer listens (its process died: Redis dropped its subscription) is taken off
# and the next one tried. A lost message is taken back by the worker's next claims; a worker that
# listens but never runs the job (frozen) holds it until its lease lapses, as it would a job it
# claimed. Returns whether the job was handed. Needs LUA_PRELUDE, BREAKER_LUA and START_JOB_LUA.
HAND_LUA = (
    "local HAND_BANDS = {"
    + ", ".join(f"'{b}'" for b in PRIORITIES)
    + f"}}\nlocal HAND_MAX_REQUEST = {HAND_MAX_REQUEST}\n"
    + r"""
local function hand_job(queue, record, job_id, fresh)
  local idle = queue .. ':idle'
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  while true do
    -- the worker registered longest ago: hand-offs go round the fleet
    local top = redis.call('ZRANGE', idle, 0, 0, 'WITHSCORES')
    if #top == 0 then return false end
    local worker = top[1]
    local idler = queue .. ':idler:' .. worker
    local channel = queue .. ':hand:' .. worker
    local w = {}
    if tonumber(top[2]) >= now then
      w = redis.call('HMGET', idler, 'slots', 'routing_key', 'probe_lease_ms', 'slot_lease_ms', 'lease_ms')
    end
    local slots = tonumber(w[1] or '0') or 0
    if slots > 0 and w[5] and redis.call('PUBSUB', 'NUMSUB', channel)[2] > 0 then
      redis.call('HSET', idler, 'slots', slots - 1)
      if slots == 1 then redis.call('ZREM', idle, worker) end
      local lease_ms = tonumber(w[5])
      redis.call('ZADD', queue .. ':leases', now + lease_ms, job_id)
      -- handed, not yet acknowledged: the worker's claims count those on their way and take back
      -- the ones whose message was lost
      local handed = queue .. ':handed:' .. worker
      redis.call('ZADD', handed, now, job_id)
      redis.call('PEXPIRE', handed, lease_ms)
      local payload = '0'  -- not started here: the worker starts it itself
      local ok, reply = pcall(start_job, record, job_id, t[1] .. '.' .. string.format('%06d', t[2]), worker,
                              w[2], w[3], tonumber(w[4]), fresh, now)
      if ok and reply then
        -- by name: the worker reads a JSON object as it is (``Started.from_json``); a flat list
        -- had to be turned back into the script's RESP reply first, most of the worker's reading
        local fields = {}
        for i = 1, #reply, 2 do fields[reply[i]] = reply[i + 1] end
        local encoded, text = pcall(cjson.encode, fields)
        if encoded then payload = text end
      end
      redis.call('PUBLISH', channel, job_id .. '\n' .. payload)
      return true
    end
    redis.call('ZREM', idle, worker)  -- lapsed, spent, or no longer listening
  end
end
"""
)

SUBMIT_LUA = LUA_PRELUDE + RESERVE_LUA + READY_LUA + BREAKER_LUA + START_JOB_LUA + HAND_LUA + _SUBMIT_BODY

# Puts back a job started for a worker that never ran it (handed, then the worker stopped before
# the job had a slot), as if it had never been started there, in one step: only while this worker
# still holds its lease and its record says running here (a lease that lapsed may be another
# worker's now: nothing is touched). Its record says queued again (its run count, and its start
# time if this was its first start, as before), the slots its start took are given back (the
# reports), and it is due at its own age. A job that ended meanwhile only leaves its lease.
# KEYS[1] its record; ARGV: queue, job id, worker id, then one report per slot to give back.
# Returns 1 put back, 2 ended (its lease removed), 0 left alone.
UNSTART_LUA = (
    LUA_PRELUDE
    + BREAKER_LUA
    + READY_LUA
    + QUEUE_LUA
    + """
local record, queue, job_id, worker = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local REPORTS = 4  -- from here, one report per slot its start took
local leases = queue .. ':leases'
if not redis.call('ZSCORE', leases, job_id) then return 0 end
local v = redis.call('HMGET', record, 'status', 'worker')
local status = v[1]
if not status or status == 'succeeded' or status == 'failed' or status == 'cancelled' then
  redis.call('ZREM', leases, job_id)
  redis.call('ZREM', ABORT_SET, job_id)
  return 2
end
if status ~= 'running' or v[2] ~= worker then return 0 end
local now = now_ms()
for i = REPORTS, #ARGV do record_report(ARGV[i], now, job_id) end
redis.call('HSET', record, 'status', 'queued')
redis.call('HDEL', record, 'worker')
if redis.call('HINCRBY', record, 'runs', -1) <= 0 then
  redis.call('HDEL', record, 'runs', 'started_at')  -- its first start, undone: never started
end
redis.call('ZREM', leases, job_id)
local band, tenant, created = band_of(job_id)
make_ready(queue, job_id, band, tenant, created)  -- in front, at its own age, as a job put back goes
redis.call('PUBLISH', queue .. ':wake', 1)
return 1
"""
)

# Admission of one deployment reached only after the ones before it failed (the common path is
# admitted by START), with the reports of the calls made so far (their slots given back, their
# outcomes counted before the next call).  Returns {state, until_ms, {dep, state, reason}…} (see
# ``circuit_breaker.Admission``, ``Transition``).
ADMIT_LUA = (
    LUA_PRELUDE
    + BREAKER_LUA
    + """
local dep, rpm, tpm, probes = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local initial, max = tonumber(ARGV[5]), tonumber(ARGV[6])
local job_id, est_tokens, probe_lease_ms, slot_lease_ms = ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9]),
  tonumber(ARGV[10])
local REPORTS = 11  -- one report per call made since the last admission, from here

local now = now_ms()
local transitions = {}
for i = REPORTS, #ARGV do
  local transition = record_report(ARGV[i], now, job_id)
  if transition then transitions[#transitions + 1] = transition end
end
local d = {id = dep, rpm = rpm, tpm = tpm, probes = probes, initial = initial, max = max}
local state, until_ms = admit(d, now, job_id, est_tokens, probe_lease_ms, slot_lease_ms)
local out = {state, fmt(until_ms)}
for _, t in ipairs(transitions) do out[#out + 1] = t end
return out
"""
)

# Writes a record change and the breaker reports of the calls made.  Reports count even for a job
# that already ended (the calls happened); the fields never overwrite an ended job, so a duplicate
# run cannot replace the outcome (or the cost) recorded first, and a job settles once.  With a
# queue (ARGV[8]), the run is over: the job leaves that queue's leases and the abort set, as the end
# of a run that is done does (``worker.claims.END_RUN_LUA``), whatever the record says.  Returns
# {1 written | 0 already ended | -2 no record | -3 not a member of the batch KEYS[3], {dep, state,
# reason}…}.
FINISH_LUA = (
    LUA_PRELUDE
    + BREAKER_LUA
    + SETTLE_LUA
    + """
local record, stream = KEYS[1], KEYS[2]
local record_ttl_s, job_id, field_count = ARGV[1], ARGV[2], tonumber(ARGV[3])
local settlement, usage_ttl_s, summary, stream_ttl_s = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local release_from = ARGV[8]
local FIELDS = 9  -- field/value pairs from here (field_count of them), then one report per call
local REPORTS = FIELDS + field_count

if release_from ~= '' then
  redis.call('ZREM', release_from .. ':leases', job_id)
  redis.call('ZREM', ABORT_SET, job_id)
end

local now = now_ms()
local out = {0}
for i = REPORTS, #ARGV do
  local transition = record_report(ARGV[i], now, job_id)
  if transition then out[#out + 1] = transition end
end
local status = redis.call('HGET', record, 'status')
if not status then out[1] = -2 return out end
-- lanes: a provider batch's result is written only while the job is still a member of its batch
-- (KEYS[3]); one sent back to `now` is not (-3), so exactly one of the two answers is kept
if KEYS[3] and redis.call('HDEL', KEYS[3], job_id) == 0 then out[1] = -3 return out end
if status == 'succeeded' or status == 'failed' or status == 'cancelled' then return out end
local ended = status
if field_count > 0 then
  redis.call('HSET', record, unpack(ARGV, FIELDS, REPORTS - 1))
  for i = FIELDS, REPORTS - 1, 2 do
    if ARGV[i] == 'status' then ended = ARGV[i + 1] end  -- what the write made it: no read back
  end
end
redis.call('HDEL', record, 'inflight')
if ended == 'succeeded' or ended == 'failed' or ended == 'cancelled' then
  -- an ended job is kept the record TTL from now; an unfinished one keeps the TTL it got at submit
  -- (its deadline plus the record TTL), which a deferral must not shorten
  redis.call('EXPIRE', record, record_ttl_s)
  -- the request joins its ended record: apart it kept the queued record a listpack, but an ended one
  -- (its answer is over 64 bytes) is a hashtable anyway, where a field costs less than a key
  local request = redis.call('GET', REQUEST .. job_id)
  if request then
    redis.call('HSET', record, 'request', request)
    redis.call('DEL', REQUEST .. job_id)
  end
  local settle = {}
  if settlement ~= '' then settle = cjson.decode(settlement) end
  job_ended(record, job_id, ended, settle, usage_ttl_s, summary, now, true)  -- the request is in the record
  if ended == 'succeeded' then
    local c = redis.call('HMGET', record, 'cache_key', 'cache_ttl', 'cached', 'no_cache')
    local cache_key, cache_ttl, cached, no_cache = c[1], c[2], c[3], c[4]
    if cache_key and not cached and not no_cache then
      redis.call('SET', CACHE .. cache_key, redis.call('HGET', record, 'response'), 'EX', cache_ttl)
    end
  end
  if redis.call('EXISTS', stream) == 1 then
    -- the job's stream ends after its record is written: a follower that sees the end reads the outcome
    redis.call('XADD', stream, '*', 'end', ended)
    redis.call('EXPIRE', stream, stream_ttl_s)
  end
end
out[1] = 1
return out
"""
)

# A queued job ends cancelled here (off its queue, its reservation released); a running one (or one
# a worker has claimed) is marked and handed to arq's abort set, and its worker ends it.  Returns 1
# cancelled, 'aborting', -2 no record, or the status of a job that already ended.
CANCEL_LUA = (
    LUA_PRELUDE
    + SETTLE_LUA
    + READY_LUA
    + QUEUE_LUA
    + """
local record = KEYS[1]
local queue, job_id, now, error_json, usage_ttl_s = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]

local status = redis.call('HGET', record, 'status')
if not status then return -2 end
if status ~= 'queued' and status ~= 'deferred' and status ~= 'running' then return status end
if redis.call('HEXISTS', record, 'pending') == 1 then
  -- a compare job: its sides are what runs (the caller cancels them), and it ends with the last of
  -- them, cancelled (``job_ended``); it was never queued, counted or reserved for itself
  redis.call('HSET', record, 'cancel_requested', 1, 'error', error_json)
  return 'parent'
end
-- the job's own queue (interactive jobs name theirs), whatever queue the caller serves
local own = redis.call('HGET', record, 'queue') or queue
local held = redis.call('ZSCORE', own .. ':leases', job_id)
if held and status == 'queued' and redis.call('HEXISTS', record, 'worker') == 0
    and redis.call('HEXISTS', record, 'lane_dep') == 1 then
  -- parked for a provider batch (the park script let go of its worker) a moment before its worker
  -- drops the lease: no task of that worker runs it any more, so the cancel ends it here
  held = false
end
if held then
  -- a worker holds it: arq's abort reaches its task, and the worker ends it cancelled
  redis.call('HSET', record, 'cancel_requested', 1)
  redis.call('ZADD', ABORT_SET, now_ms(), job_id)
  return 'aborting'
end
unready(own, job_id)
-- a batch-lane job leaves the lane: off its deployment's pending set, or out of the provider batch
-- it is in (into the batch's gone set: an answer that still comes is the operator's wasted spend,
-- and a batch left without members is cancelled by the batcher), and off the due set
local lane = redis.call('HMGET', record, 'lane_dep', 'lane_batch')
if lane[2] then
  if redis.call('HDEL', LANES_MEMBERS .. lane[2], job_id) == 1 then
    redis.call('SADD', LANES_GONE .. lane[2], job_id)
  end
elseif lane[1] then
  redis.call('ZREM', LANES_PENDING .. lane[1], job_id)
end
if lane[1] or lane[2] then redis.call('ZREM', LANES_DUE, job_id) end
redis.call('HSET', record, 'status', 'cancelled', 'finished_at', now, 'error', error_json)
job_ended(record, job_id, 'cancelled', {}, usage_ttl_s, '', now_ms())
return 1
"""
)


# Deletes an ended job: its record, its request and its token stream (what the Responses API's
# ``DELETE /v1/responses/{id}`` asks).  KEYS: record, request, stream.  Returns 1 deleted, -2 no such
# job, or the status of a job that has not ended (nothing deleted: a worker may still write it).
DELETE_ENDED_LUA = """
local record, request, stream = KEYS[1], KEYS[2], KEYS[3]
local status = redis.call('HGET', record, 'status')
if not status then return -2 end
if status ~= 'succeeded' and status ~= 'failed' and status ~= 'cancelled' then return status end
redis.call('DEL', record, request, stream)
return 1
"""


# A side of a compare job refused at submit counts as ended, as job_ended does for a side that ran:
# one script, so the last side to end completes the parent exactly once.  Returns 1, or 0 when the
# parent is gone.
CHILD_REFUSED_LUA = (
    LUA_PRELUDE
    + """
local parent_record = KEYS[1]
local child_id, summary, parent_id = ARGV[1], ARGV[2], ARGV[3]

if redis.call('EXISTS', parent_record) == 0 then return 0 end
redis.call('HSET', parent_record, 'child:' .. child_id, summary)
if redis.call('HINCRBY', parent_record, 'pending', -1) <= 0 then
  local t = redis.call('TIME')
  local at = t[1] .. '.' .. string.format('%06d', t[2])
  -- a compare job someone cancelled ends cancelled (its sides say how each ended)
  local ended = redis.call('HEXISTS', parent_record, 'cancel_requested') == 1 and 'cancelled' or 'succeeded'
  redis.call('HSET', parent_record, 'status', ended, 'finished_at', at)
  redis.call('PUBLISH', ENDED .. ':' .. (string.match(parent_id, '^([^/]*)/') or 'default'), parent_id)
end
return 1
"""
)
