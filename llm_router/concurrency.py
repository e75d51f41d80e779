"""Admission that learns: each deployment's in-flight limit, adapted fleet-wide, and its latency.

Every deployment with a limit (the catalog's ``concurrency: {initial, max}``, over the settings
``LLM_ROUTER_CONCURRENCY_INITIAL`` 10 and ``LLM_ROUTER_CONCURRENCY_MAX`` 1000) has one limit for the
whole fleet, kept in Redis and enforced in the start script a job runs anyway: a job is admitted to a
deployment only while fewer calls than the limit are in flight there. The limit is **AIMD**
(additive increase, multiplicative decrease, as TCP's congestion window):

* it starts at ``initial`` and, in *slow start*, grows by one half per successful call (x 1.5 a
  round of calls, not TCP's x 2: the round that finds the capacity overshoots it by half as much,
  and every call of that round past the capacity is refused) until the first sign of congestion;
  then by ``1 / limit`` per success (one per round). It grows only while it is in use (at least half
  of it in flight), so a quiet spell does not leave behind a limit nobody tested;
* a 429 or a failure the breaker counts (5xx, timeouts, resets, bad answers) cuts it to
  ``LLM_ROUTER_CONCURRENCY_BACKOFF`` (0.9) of the calls in flight when it came (of the limit, if
  lower: TCP's ``ssthresh = FlightSize / 2``, RFC 5681), **once per round**: a call that started
  before the last cut was sent under the old limit and says nothing new, so the burst of 429s one
  overshoot produces is one cut, not a collapse; and a limit that slow start grew past what the
  fleet actually sent comes down to what was sent in one step, not in a cut per round;
* so does latency above ``LLM_ROUTER_CONCURRENCY_LATENCY_TOLERANCE`` (2) times the learned baseline
  (a slowly learned median), and 100 ms past it, on most recent calls (the share of slow calls, an
  EWMA over about 20, past one half), cutting the limit itself: a tail of slow answers (5 % of calls
  at 10x, say) is no congestion and never cuts it, queueing is; and a fast provider's few
  milliseconds doubled by a busy worker's event loop are the worker's, not the provider's;
* past a 429's cut it grows by one per round back up to one slot under the *ceiling* (the calls in
  flight at the refusal), then probes that last slot slowly (one slot per 8 rounds), and forgets the
  ceiling once it passes it (the capacity grew). A plain AIMD sawtooth probes the ceiling every
  ``limit x (1 - backoff)`` rounds: for a deployment that takes 8 calls at once, every round or two,
  one refused call in 15; probing the known ceiling slowly keeps it near one in 60 there and one in
  several hundred for a capacity of 50, where the limit still comes back within a few rounds;
* it never drops below 1 (the breaker, not the limit, takes a dead deployment out) nor grows past
  ``max``; a deployment idle for an hour starts over from ``initial``.

Why AIMD rather than a gradient limiter (Netflix's Gradient2, Vegas): a gradient limiter reads
congestion from latency alone, and an LLM call's latency is dominated by how much it writes, which
varies a hundredfold between requests and is no sign of queueing. The signals a provider gives when
it is overloaded are explicit (429s, 503s, timeouts), AIMD acts on exactly those, needs a single
number per deployment (no RTT window that a few samples would make noisy), and is cheap to run
atomically in Lua. Latency still counts, as one more congestion signal against a slowly learned
baseline, with a tolerance wide enough, and a majority of calls required, so that long answers and
a heavy tail do not read as queueing.

In flight means admitted and not yet reported: a job takes a *slot* (``slots:<dep>``, scored by its
lease end) when the start script (or the admission on the way, ``ADMIT_LUA``) admits it, and gives
it back with the call's report, in the admission of the next deployment it tries or in its finish
script. The worker's lease keeper renews the slots of its running calls with the job leases, so the
slots of a worker that died lapse within ``LLM_ROUTER_LEASE_S``; a job run again after its worker's
death gives back the slot of the call it was making at once.

The same reports teach each deployment's latency, shared by the fleet (``conc:<dep>``): an EWMA
(time to first token for streams, the whole call otherwise) that the ``latency`` strategy ranks
deployments by, a slow baseline the limit compares it with, and a running estimate of a percentile
(``LLM_ROUTER_HEDGE_PERCENTILE``, p90) that hedged requests wait for before a second attempt: a
stochastic quantile, which moves up by ``eta * p`` when a sample is above it and down by
``eta * (1 - p)`` otherwise, so that it rests where a fraction ``1 - p`` of samples lie above (one
float, no histogram; ``eta`` shrinks from 1 to 5 % over the first samples, then stays).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from redis.asyncio import Redis

from llm_router.keys import conc_key, slots_key

# needs LUA_PRELUDE (llm_router.lua) before it; BREAKER_LUA (llm_router.circuit_breaker) includes it
CONCURRENCY_LUA = r"""
local CONC_TTL_MS = 3600000  -- an idle deployment's limit and latency start over after this
local STALE_MS = 60000       -- the latency strategy tries a deployment not heard from for this long
local PROBE_ROUNDS = 8       -- near the last refusal's ceiling the limit grows one slot per this many rounds
-- a call is slow only if it also took this much longer than the baseline: below it, a difference
-- is the worker's own event loop (a busy worker delays every call it makes), not a provider queueing
local SLOW_SLACK_MS = 100

-- calls in flight on dep now (slots whose lease lapsed, their worker dead, dropped first)
local function in_flight(dep, now)
  local key = SLOTS .. dep
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  return redis.call('ZCARD', key)
end

-- May job take a slot on d (a routing entry: id, initial, max)?  true, or false and when one is
-- likely to free: about one call's latency from now
local function room(d, now, job)
  if d.max <= 0 then return true, 0 end
  local key = SLOTS .. d.id
  local h = redis.call('HMGET', CONC .. d.id, 'limit', 'ewma')
  local limit = math.max(math.floor(math.min(tonumber(h[1] or d.initial), d.max)), 1)
  -- every job admitted costs these commands: the lapsed slots are dropped, and the job's own slot
  -- looked for, only when the count says the deployment is full
  if redis.call('ZCARD', key) < limit then return true, 0, h[1] == false end
  if in_flight(d.id, now) < limit then return true, 0, h[1] == false end
  if redis.call('ZSCORE', key, job) then return true, 0 end  -- it holds one already
  local wait = tonumber(h[2] or '100')
  return false, now + math.min(math.max(wait, 20), 1000)
end

-- fresh: the deployment has no limit learned yet; it is written down as it starts (its initial), so
-- that the board shows it before the first call reports
local function take_slot(d, job, until_ms, fresh)
  if d.max <= 0 then return end
  redis.call('ZADD', SLOTS .. d.id, until_ms, job)
  if fresh then
    redis.call('HSET', CONC .. d.id, 'limit', math.min(d.initial, d.max))
    redis.call('PEXPIRE', CONC .. d.id, CONC_TTL_MS)
  end
end

-- The order a model's deployments are tried in: as listed ('ordered', and 'cost', whose rows the
-- workers list by price), fewest calls in flight per weight ('least_busy'), or lowest learned latency
-- per weight ('latency'; one not heard from for STALE_MS goes first, once per STALE_MS, to be
-- measured again).  Ties keep the catalog's order.
local function by_strategy(strategy, deps, now)
  if strategy ~= 'least_busy' and strategy ~= 'latency' then return deps end
  for _, d in ipairs(deps) do
    if strategy == 'least_busy' then
      d.score = in_flight(d.id, now) / d.weight
    else
      local h = redis.call('HMGET', CONC .. d.id, 'ewma', 'at')
      if h[1] and now - tonumber(h[2] or '0') <= STALE_MS then
        d.score = tonumber(h[1]) / d.weight
      else
        d.score = -1
        redis.call('HSET', CONC .. d.id, 'at', now)
        redis.call('PEXPIRE', CONC .. d.id, CONC_TTL_MS)
      end
    end
  end
  table.sort(deps, function(a, b)
    if a.score ~= b.score then return a.score < b.score end
    return a.i < b.i
  end)
  return deps
end

-- One call's report (a BreakerReport: dep, kind, slot, latency_ms, started_ms, policy.conc_*): its
-- slot back, its latency learned, the limit moved (see the module).
local function learn(r, now, job)
  local dep, p = r.dep, r.policy
  if r.slot then redis.call('ZREM', SLOTS .. dep, job) end
  local lat = r.latency_ms or -1
  if p.conc_max <= 0 and lat < 0 then return end
  local key = CONC .. dep
  local h = redis.call('HMGET', key, 'limit', 'ss', 'cut', 'ewma', 'base', 'q', 'n', 'ceil', 'slow')
  local congested = r.kind == 'failure' or r.kind == 'limited'
  local fields = {}
  if lat >= 0 then
    local n = math.min(tonumber(h[7] or '0') + 1, 1000000)
    local ewma, base, q = tonumber(h[4] or lat), tonumber(h[5] or lat), tonumber(h[6] or lat)
    ewma = ewma + 0.1 * (lat - ewma)
    local pct, eta = p.quantile_pct / 100, math.max(0.05, 1 / math.sqrt(n))
    if lat > q then q = q * (1 + eta * pct) else q = q * (1 - eta * (1 - pct)) end
    -- the baseline is a slowly learned median (a tail of slow answers does not move it); latency
    -- reads as congestion when most recent calls (the share of slow ones, an EWMA, past one half)
    -- took over `tolerance` x the baseline: a 5 % tail of 10x answers never does, queueing does
    local base_eta = math.max(0.01, 1 / math.sqrt(n))
    if lat > base then
      base = base * (1 + base_eta / 2)
    elseif lat < base then
      base = base * (1 - base_eta / 2)
    end
    local slow = tonumber(h[9] or '0')
    local is_slow = lat * 100 > base * p.tolerance_pct and lat > base + SLOW_SLACK_MS
    slow = slow + 0.05 * ((is_slow and 1 or 0) - slow)
    if r.kind == 'success' and n >= 20 and slow > 0.5 then congested = 'slow' end
    fields = {'ewma', string.format('%.1f', ewma), 'base', string.format('%.1f', base),
              'q', string.format('%.1f', q), 'n', n, 'at', now, 'slow', string.format('%.3f', slow)}
  end
  if p.conc_max > 0 then
    local limit = math.min(tonumber(h[1] or p.conc_initial), p.conc_max)
    if congested then
      if r.started_ms >= tonumber(h[3] or '0') then  -- one cut per round (see the module)
        -- of the calls in flight when it was refused (this one too), not of a limit grown past
        -- them: a limit nobody filled says nothing of the capacity (RFC 5681's FlightSize)
        local flight = in_flight(dep, now) + 1
        -- slowness is cut from the limit: the calls still in flight when a slow one ends are few
        -- (the slow answers of a spell end together, after the fast ones), and say nothing of it
        if congested == 'slow' then flight = limit end
        limit = math.max(math.min(limit, flight) * p.backoff_pct / 100, 1)
        -- a refusal marks a ceiling (probed slowly, below); a failure or slowness only cuts
        local ceil = r.kind == 'limited' and flight or 0
        for _, f in ipairs({'ss', 0, 'cut', now, 'ceil', ceil}) do fields[#fields + 1] = f end
      end
    elseif r.kind == 'success' and redis.call('ZCARD', SLOTS .. dep) + 1 >= limit / 2 then
      local ceil = tonumber(h[8] or '0')
      if h[2] ~= '0' then
        limit = limit + 0.5  -- slow start
      elseif ceil > 0 and limit + 1 >= ceil then
        -- the last refusal's ceiling is one slot away: probe it once per PROBE_ROUNDS rounds, and
        -- forget it once passed (the capacity grew)
        limit = limit + 1 / (limit * PROBE_ROUNDS)
        if limit >= ceil + 1 then
          fields[#fields + 1] = 'ceil'
          fields[#fields + 1] = 0
        end
      else
        limit = limit + 1 / limit
      end
      limit = math.min(limit, p.conc_max)
    end
    fields[#fields + 1] = 'limit'
    fields[#fields + 1] = string.format('%.3f', limit)
  end
  if #fields > 0 then
    redis.call('HSET', key, unpack(fields))
    redis.call('PEXPIRE', key, CONC_TTL_MS)
  end
end
"""


@dataclass(frozen=True, slots=True)
class LimiterView:
    """One deployment's learned admission, as ``llm-router breakers`` shows it."""

    limit: float | None  # None: no limit learned yet (it starts at its ``initial``)
    in_flight: int
    slow_start: bool
    latency_ms: float | None  # the EWMA: time to first token for streams, the whole call otherwise
    baseline_ms: float | None
    quantile_ms: float | None  # the hedge percentile's estimate
    samples: int


async def read_limiters(redis: Redis, names: Iterable[str], now_ms: int) -> dict[str, LimiterView]:
    """The limit, calls in flight and learned latency of each deployment in ``names`` (one round trip)."""
    names = list(names)
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hmget(conc_key(name), "limit", "ss", "ewma", "base", "q", "n")
            pipe.zcount(slots_key(name), now_ms, "+inf")
        replies = await pipe.execute()
    out = {}
    for i, name in enumerate(names):
        (limit, ss, ewma, base, q, n), in_flight = replies[2 * i], replies[2 * i + 1]
        out[name] = LimiterView(
            limit=_float(limit),
            in_flight=int(in_flight),
            slow_start=ss != b"0",
            latency_ms=_float(ewma),
            baseline_ms=_float(base),
            quantile_ms=_float(q),
            samples=int(n or 0),
        )
    return out


def _float(raw: bytes | None) -> float | None:
    return float(raw) if raw is not None else None
