"""Lua for fleet-wide breakers and rate limits, spliced into the job scripts of ``store``.

Every worker process on every machine shares one state per deployment, changed only inside these
scripts, on Redis' own clock (``TIME``), so there is no read-modify-write race and no clock skew
between hosts. Admission rides on the job's ``start`` script and outcomes on its ``finish`` script:
no extra round trips on the common path.

Keys (``P`` = ``llm-router:``):

* ``P routing:<fingerprint>`` hash, model id → ``dep|rpm|tpm|probes;…`` in preference order,
  published by workers with that catalog (see ``worker.breaker``);
* ``P sick`` hash, deployment id → ``state|until_ms`` for deployments that are not closed:
  ``open`` (until the cooldown ends), ``half_open``, ``limited`` (a 429's Retry-After),
  ``disabled`` (bad key or model gone upstream, until a cooldown passes);
* ``P breaker:<dep>`` hash: rolling-window buckets ``n:<i>``/``f:<i>``, consecutive failures
  ``c``, trips ``trips``, half-open successes ``hs``;
* ``P probes:<dep>`` sorted set: half-open probe leases, job id → expiry ms;
* ``P rpm:<dep>`` / ``P tpm:<dep>``: GCRA theoretical arrival times (ms).

Decisions returned by admission: ``ok``, ``probe`` (a half-open probe lease is held), ``u``
(unchecked: a deployment after the first admitted one; admitted on the way if reached) or
``s:<why>:<until_ms>`` (skip without a call: ``open``, ``half_open``, ``limited``, ``disabled``,
``rate``, ``tokens``).
"""

from __future__ import annotations

# needs LUA_KEYS (llm_router.keys) before it
FUNCTIONS = r"""
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function fmt(x) return string.format('%d', math.floor(x)) end

local function admit(dep, rpm, tpm, probes, now, job, est, lease_ms)
  local sick = redis.call('HGET', SICK, dep)
  local half = false
  if sick then
    local state, untl = string.match(sick, '^([%a_]+)|(%d+)')
    untl = tonumber(untl)
    if state == 'open' then
      if now < untl then return 's:open:' .. fmt(untl) end
      redis.call('HSET', SICK, dep, 'half_open|0')
      redis.call('HSET', BREAKER .. dep, 'hs', 0)
      half = true
    elseif state == 'half_open' then
      half = true
    elseif now < untl then
      return 's:' .. state .. ':' .. fmt(untl)
    else
      redis.call('HDEL', SICK, dep)
    end
  end
  local pk = PROBES .. dep
  if half then
    redis.call('ZREMRANGEBYSCORE', pk, '-inf', now)
    if not redis.call('ZSCORE', pk, job) and redis.call('ZCARD', pk) >= probes then
      return 's:half_open:' .. fmt(now + 1000)
    end
  end
  if rpm > 0 then
    local key = RPM .. dep
    local interval = 60000 / rpm
    local tat = tonumber(redis.call('GET', key) or '0')
    if tat > now then return 's:rate:' .. fmt(tat + 1) end
    redis.call('SET', key, fmt(now + interval), 'PX', fmt(interval + 60000))
  end
  if tpm > 0 and est > 0 then
    local key = TPM .. dep
    local tat = tonumber(redis.call('GET', key) or '0')
    if tat < now then tat = now end
    local new = tat + est * 60000 / tpm
    if new - now > 60000 then return 's:tokens:' .. fmt(new - 60000 + 1) end
    redis.call('SET', key, fmt(new), 'PX', fmt(new - now + 60000))
  end
  if half then
    redis.call('ZADD', pk, now + lease_ms, job)
    return 'probe'
  end
  return 'ok'
end

local function admit_route(route_json, routing_key, job, est, lease_ms, now)
  local out = {}
  local chosen = false
  for model in string.gmatch(route_json, '"([^"]+)"') do
    local tbl = redis.call('HGET', routing_key, model)
    if tbl then
      for dep, rpm, tpm, probes in string.gmatch(tbl, '([^|;]+)|(%d+)|(%d+)|(%d+)') do
        local d = 'u'
        if not chosen then
          d = admit(dep, tonumber(rpm), tonumber(tpm), tonumber(probes), now, job, est, lease_ms)
          if d == 'ok' or d == 'probe' then chosen = true end
        end
        out[#out + 1] = dep
        out[#out + 1] = d
      end
    end
  end
  return out
end

local function estimate_tokens(request)
  local n = math.floor(string.len(request) / 4)
  local m = string.match(request, '"max_completion_tokens":(%d+)')
  m = m or string.match(request, '"max_tokens":(%d+)')
  if m then n = n + tonumber(m) end
  return n
end

-- one outcome: dep|kind|probe|until|dtok|tpm|window|bucket|rate|min|consec|cool|maxcool|jitter|close
local function record_outcome(o, now, job)
  local dep, kind, probe, untl, dtok, tpm, window, bucket, rate, minc, consec, cool, maxcool, jit, close_after
    = string.match(o, '^([^|]+)|(%a)|(%d)|(%d+)|(%-?%d+)|(%d+)|(%d+)|(%d+)|(%d+)|(%d+)|(%d+)|(%d+)|(%d+)|'
                      .. '(%d+)|(%d+)$')
  if not dep then return nil end
  local bk = BREAKER .. dep
  if probe == '1' then redis.call('ZREM', PROBES .. dep, job) end
  dtok = tonumber(dtok)
  tpm = tonumber(tpm)
  if tpm > 0 and dtok ~= 0 then
    local key = TPM .. dep
    local tat = tonumber(redis.call('GET', key) or '0')
    if tat > 0 then
      local pt = redis.call('PTTL', key)
      local new = tat + dtok * 60000 / tpm
      if new > now and pt > 0 then redis.call('SET', key, fmt(new), 'PX', pt) end
    end
  end
  if kind == 'r' or kind == 'n' then return nil end
  local cur = redis.call('HGET', SICK, dep)
  local state = 'closed'
  if cur then state = string.match(cur, '^([%a_]+)') end
  if kind == 'l' then
    if state ~= 'open' and state ~= 'half_open' then redis.call('HSET', SICK, dep, 'limited|' .. untl) end
    return dep .. ':limited:rate limited upstream'
  end
  if kind == 'd' then
    redis.call('HSET', SICK, dep, 'disabled|' .. untl)
    return dep .. ':disabled:key or model refused upstream'
  end
  bucket = tonumber(bucket)
  local nb = math.ceil(tonumber(window) / bucket)
  local idx = math.floor(now / bucket)
  redis.call('HDEL', bk, 'n:' .. (idx - nb), 'f:' .. (idx - nb))
  redis.call('PEXPIRE', bk, tonumber(window) * 2 + 60000)
  if kind == 's' then
    redis.call('HSET', bk, 'c', 0)
    redis.call('HINCRBY', bk, 'n:' .. idx, 1)
    if state == 'half_open' then
      local hs = redis.call('HINCRBY', bk, 'hs', 1)
      if hs >= tonumber(close_after) then
        redis.call('HDEL', SICK, dep)
        redis.call('HSET', bk, 'trips', 0, 'hs', 0)
        for i = idx - nb, idx do redis.call('HDEL', bk, 'n:' .. i, 'f:' .. i) end
        return dep .. ':closed:probes succeeded'
      end
    end
    return nil
  end
  redis.call('HINCRBY', bk, 'n:' .. idx, 1)
  redis.call('HINCRBY', bk, 'f:' .. idx, 1)
  local c = redis.call('HINCRBY', bk, 'c', 1)
  if state == 'open' then return nil end
  local why = nil
  if state == 'half_open' then
    why = 'a probe failed'
  elseif c >= tonumber(consec) then
    why = c .. ' consecutive failures'
  else
    local n, f = 0, 0
    for i = idx - nb + 1, idx do
      n = n + tonumber(redis.call('HGET', bk, 'n:' .. i) or '0')
      f = f + tonumber(redis.call('HGET', bk, 'f:' .. i) or '0')
    end
    if n >= tonumber(minc) and f * 100 >= tonumber(rate) * n then
      why = f .. ' of ' .. n .. ' calls failed'
    end
  end
  if not why then return nil end
  local trips = redis.call('HINCRBY', bk, 'trips', 1)
  local cd = math.min(tonumber(cool) * 2 ^ (trips - 1), tonumber(maxcool)) * tonumber(jit) / 100
  redis.call('HSET', SICK, dep, 'open|' .. fmt(now + cd))
  redis.call('HSET', bk, 'hs', 0)
  return dep .. ':open:' .. why
end
"""
