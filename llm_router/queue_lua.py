"""The queue's data structure, as the Lua that submits, claims, ends and cancels jobs shares it.

A queue is not one sorted set that every worker reads from the front (arq's design: a claim walks
past the jobs others hold, and a fleet's concurrency stops at arq's ``queue_read_limit``). It is:

* ``ready:<band>:<tenant>``: a tenant's due jobs of one priority band (``high``, ``normal``,
  ``low``), oldest first;
* ``tenants:<band>``: the tenants with due jobs in a band, scored by their virtual time; a claim
  takes the head of the tenant with the smallest one and advances it by ``1 / weight`` (the tenant
  policy's ``weight``, default 1): weighted fair sharing, so a tenant that queued 100,000 jobs does
  not make another's 50 wait behind them. A tenant that becomes active starts at the band's virtual
  clock (``vclock:<band>``: the virtual time of the last claim), never with credit saved up;
* ``delayed``: jobs not due yet (deferred), by due time, moved to their ready queue when due;
* ``leases``: jobs workers hold, by lease end; a lease that lapses (its worker died) puts the job
  back in its ready queue. Held jobs are in no ready queue, so a claim costs the same whether ten or
  ten thousand are held.

Bands are served strictly in order, tenants fairly within a band. The functions below need
``LUA_PRELUDE`` before them; keys are built from the queue's name (``llm_router.keys``).
"""

from __future__ import annotations

from llm_router.keys import PRIORITIES, TENANT_POLICY_PREFIX

# claims a tenant that becomes active gets ahead of the band's backlog (see make_ready)
NEWCOMER_LEAD = 25

# the submit script's part (bulk submits run it per group of jobs, so it defines little else); needs
# LUA_PRELUDE (llm_router.lua) before it
READY_LUA = (
    f"local NEWCOMER_LEAD = {NEWCOMER_LEAD}\nlocal POLICY = '{TENANT_POLICY_PREFIX}'\n"
    + r"""
-- a job becomes due: into its tenant's ready queue (by `seq`: enqueue time, 0 for the front), its
-- tenant into the band's active set if it was not there, a little behind the band's virtual clock:
-- a tenant that was idle gets its first few jobs in ahead of a backlog (as a scheduler favours a
-- task that slept), then shares equally
-- `pairs` is {seq, job, seq, job, ...}: a bulk submit makes a group's jobs of one tenant and band due
-- with one ZADD
local function make_ready_many(queue, band, tenant, pairs)
  redis.call('ZADD', queue .. ':ready:' .. band .. ':' .. tenant, unpack(pairs))
  local active = queue .. ':tenants:' .. band
  if not redis.call('ZSCORE', active, tenant) then
    local vclock = tonumber(redis.call('GET', queue .. ':vclock:' .. band) or '0')
    local weight = tonumber(redis.call('HGET', POLICY .. tenant, 'weight') or '1') or 1
    if weight <= 0 then weight = 1 end
    redis.call('ZADD', active, vclock - NEWCOMER_LEAD / weight, tenant)  -- NEWCOMER_LEAD claims ahead
  end
end

local function make_ready(queue, job, band, tenant, seq)
  make_ready_many(queue, band, tenant, {seq, job})
end
"""
)

# needs LUA_PRELUDE and READY_LUA before it
QUEUE_LUA = (
    "local BANDS = {"
    + ", ".join(f"'{b}'" for b in PRIORITIES)
    + r"""}

-- a job's band and tenant, from its record (the band is 'normal' unless the job asked otherwise),
-- and its creation (ms): a job put back goes in front, at its own age
local function band_of(job)
  local tenant = string.match(job, '^([^/]*)/') or 'default'
  local r = redis.call('HMGET', RECORD .. job, 'priority', 'created_at')
  return r[1] or 'normal', tenant, math.floor(tonumber(r[2] or '0') * 1000)
end

-- a job that is not held off its ready queue or the delayed set
local function unready(queue, job)
  local band, tenant = band_of(job)
  local ready = queue .. ':ready:' .. band .. ':' .. tenant
  redis.call('ZREM', ready, job)
  if redis.call('ZCARD', ready) == 0 then redis.call('ZREM', queue .. ':tenants:' .. band, tenant) end
  redis.call('ZREM', queue .. ':delayed', job)
end

-- delayed jobs that are due, and held jobs whose lease lapsed, back in their ready queues; at most
-- `most` of each per call, so one claim never does unbounded work
local function promote(queue, now, most)
  for _, set in ipairs({queue .. ':delayed', queue .. ':leases'}) do
    local due = redis.call('ZRANGEBYSCORE', set, '-inf', now, 'LIMIT', 0, most)
    -- a deferred job goes behind the others; one whose worker died, in front (at its creation)
    local lapsed = set == queue .. ':leases'
    for _, job in ipairs(due) do
      redis.call('ZREM', set, job)
      local band, tenant, created = band_of(job)
      make_ready(queue, job, band, tenant, lapsed and created or now)
    end
  end
end
"""
)
