"""Lua for money and for what happens once when a job ends, spliced into the job scripts of
``llm_router.record_lua``.

A job reserves its worst-case cost when it is created (``RESERVE_LUA``'s ``reserve``, inside the
submit script: a re-submit of the same id finds the record and reserves nothing) and settles exactly
once, in the script that moves it to a terminal status (``SETTLE_LUA``'s ``job_ended``, inside
finish and cancel: a record that already ended is never ended again). Both run inside Redis, so
concurrent producers and workers cannot overspend a balance between a check and a write.

Keys (``llm_router.keys``), all amounts integer nano-dollars:

* ``credits:<tenant>`` hash: ``balance`` (added minus spent), ``reserved`` (held by unfinished
  jobs), ``spent`` (the ledger: the sum of settled costs), ``added``. A tenant without this key is
  not metered; one with it may start a job only while ``balance - reserved`` covers the job's
  reservation.
* ``active:<tenant>``: the tenant's jobs queued or running (its queue limit counts these).
* ``usage:<day>`` hash, per UTC day number: ``<tenant>|<model>|jobs``, ``…|failed``, ``…|prompt``,
  ``…|completion``, ``…|cost``; bumped by the same script that settles.
* ``ENDED:<tenant>``: every job publishes its scoped id here when it ends.
* a job with a ``notify`` field (the channel of the server waiting for it, ``keys.notify_channel``)
  first publishes there its ended record: a msgpack array of the record's HGETALL pairs, its request
  key's value ('' when the request is in the record) and its scoped id (``store.decode_ended``);
  not a record over ``NOTIFY_MAX_BYTES``, which its server reads after the plain notice.
* ``WEBHOOKS_DUE``: a job with a ``webhook`` is due for delivery there when it ends, in the same
  step, so no crash comes between the end and the delivery task (``llm_router.webhooks``).
"""

from __future__ import annotations

# the submit script's whole prelude after LUA_PRELUDE: bulk submits run it per job, so it defines
# nothing else
RESERVE_LUA = r"""
-- the reservations of one submit call: a tenant's credit is read once a call, its jobs' holds are
-- added up and written once (``reserve_done``, after the call's last job); each job still sees the
-- credit the jobs before it took
local credit_left = {}  -- tenant -> balance - reserved - what this call holds; false: not metered
local held = {}  -- tenant -> nanos this call's jobs reserved

-- reserve `amount` for a new job of `tenant`: ok, metered (false, true: its credit does not cover it)
local function reserve(tenant, amount)
  local left = credit_left[tenant]
  if left == nil then
    local ck = CREDITS .. tenant
    if redis.call('EXISTS', ck) == 0 then
      left = false
    else
      local v = redis.call('HMGET', ck, 'balance', 'reserved')
      left = tonumber(v[1] or '0') - tonumber(v[2] or '0')
    end
    credit_left[tenant] = left
  end
  if left == false then return true, false end
  local n = tonumber(amount)
  if left < n then return false, true end
  credit_left[tenant] = left - n
  held[tenant] = (held[tenant] or 0) + n
  return true, true
end

local function reserve_done()
  for tenant, n in pairs(held) do redis.call('HINCRBY', CREDITS .. tenant, 'reserved', fmt(n)) end
end
"""

# the largest ended record sent to a waiting server (bytes of its fields): a bigger one (a large
# request or image answer) is read as before, so a burst of them never fills the server's pub/sub
# output buffer in Redis (32 MB by default: past it Redis drops the subscription, every waiter reads)
NOTIFY_MAX_BYTES = 512 * 1024

# needs LUA_PRELUDE (llm_router.lua) before it
SETTLE_LUA = (
    f"local NOTIFY_MAX_BYTES = {NOTIFY_MAX_BYTES}\n"
    + r"""
-- once per job, in the script that gives it a terminal status: settle its cost and release the
-- rest of its reservation, count its usage, free its queue slot, tell a waiter and its parent,
-- and make its webhook (if any) due.
-- `settle` is {cost = nanos, model = id, prompt = tokens, completion = tokens}.
local function job_ended(record, job_id, status, settle, usage_ttl, summary, now, request_joined)
  local r = redis.call('HMGET', record, 'tenant', 'reserved', 'metered', 'parent', 'model_requested',
                       'webhook', 'notify')
  local tenant, reserved, metered, parent = r[1] or 'default', r[2] or '0', r[3], r[4]
  local cost = tonumber(settle.cost) or 0
  if metered then
    local ck = CREDITS .. tenant
    redis.call('HINCRBY', ck, 'reserved', fmt(-tonumber(reserved)))
    if cost > 0 then
      redis.call('HINCRBY', ck, 'balance', fmt(-cost))
      redis.call('HINCRBY', ck, 'spent', fmt(cost))
    end
    local v = redis.call('HMGET', ck, 'balance', 'reserved')
    redis.call('HSET', record, 'credits_remaining', fmt(tonumber(v[1] or '0') - tonumber(v[2] or '0')))
  end
  local model = settle.model
  if model == nil or model == '' then model = r[5] or 'unknown' end
  local uk = USAGE .. fmt(now / 86400000)
  local f = tenant .. '|' .. model .. '|'
  redis.call('HINCRBY', uk, f .. 'jobs', 1)
  if status ~= 'succeeded' then redis.call('HINCRBY', uk, f .. 'failed', 1) end
  local prompt, completion = tonumber(settle.prompt) or 0, tonumber(settle.completion) or 0
  if prompt > 0 then redis.call('HINCRBY', uk, f .. 'prompt', fmt(prompt)) end
  if completion > 0 then redis.call('HINCRBY', uk, f .. 'completion', fmt(completion)) end
  if cost > 0 then redis.call('HINCRBY', uk, f .. 'cost', fmt(cost)) end
  redis.call('EXPIRE', uk, usage_ttl)
  redis.call('DECR', ACTIVE .. tenant)
  if r[7] then
    -- the server waiting for it answers without reading the record: it gets what the read would
    -- (the HGETALL pairs, the request key: '' once the request is in the record), then the id.
    -- Before the plain notice, which would wake that waiter to read; the field goes first, so an
    -- ended record is what it was before there was one
    redis.call('HDEL', record, 'notify')
    local fields = redis.call('HGETALL', record)
    fields[#fields + 1] = (not request_joined and redis.call('GET', REQUEST .. job_id)) or ''
    local size = 0
    for i = 1, #fields do size = size + #fields[i] end
    if size <= NOTIFY_MAX_BYTES then
      fields[#fields + 1] = job_id
      redis.call('PUBLISH', r[7], cmsgpack.pack(fields))
    end
  end
  -- whoever waits for it (a producer, the HTTP API) hears it ended; nobody polls
  redis.call('PUBLISH', ENDED .. ':' .. tenant, job_id)
  if r[6] then redis.call('ZADD', WEBHOOKS_DUE, 'NX', fmt(now), 'j|' .. job_id) end
  if parent then
    local pk = RECORD .. parent
    if redis.call('EXISTS', pk) == 1 then
      if summary == '' then
        -- users see the job id without its tenant (keys.scoped_id)
        local public_id = string.match(job_id, '^[^/]*/(.*)$') or job_id
        summary = cjson.encode({job_id = public_id, model = model, status = status})
      end
      redis.call('HSET', pk, 'child:' .. job_id, summary)
      if redis.call('HINCRBY', pk, 'pending', -1) <= 0 then
        -- a compare job someone cancelled ends cancelled (its sides say how each ended)
        local ended = redis.call('HEXISTS', pk, 'cancel_requested') == 1 and 'cancelled' or 'succeeded'
        redis.call('HSET', pk, 'status', ended, 'finished_at', string.format('%.3f', now / 1000))
        redis.call('PUBLISH', ENDED .. ':' .. tenant, parent)
      end
    end
  end
end
"""
)
