"""The circuit breaker of every deployment, shared by the fleet: its state machine, its rate limits,
what a job's scripts send it and answer with, and the board that people read.

```
             N consecutive failures, or a failure rate over the window
   closed ─────────────────────────────────────────────────────────────▶ open
     ▲  ▲                                                                │ cooldown passes
     │  │ `probes` successes in a row                                    ▼ (cooldown x 2 per trip,
     │  └──────────────────────────────────── half_open ◀────────────────┘  jittered, capped)
     │                                          │ a probe fails: open again
     │  Retry-After passes                      └──────────────────────────▶ open
   limited ◀── a 429 with a Retry-After (without one: a cut of the concurrency limit instead)
   disabled ◀── our key or the model refused upstream (401/403/404/402), until a cooldown
```

In ``half_open`` at most ``probes`` jobs hold a probe lease and call the deployment; the others skip
it. Rate limits are GCRA on requests (``rpm``) and estimated tokens (``tpm``) per minute. Past the
breaker, a deployment admits a job only while its adaptive concurrency limit has room
(``llm_router.concurrency``, whose Lua this module's carries); a busy deployment is skipped for the
model's next one, or the job waits when every one of its model's is busy.

The cadence is chosen so that recovery is seen: during an outage the dead deployment gets one probe
per cooldown (5 s, 10 s, then every 20 s by default: a handful of calls a minute across the fleet,
not one per job), and since the cooldown never exceeds ``max_cooldown`` (jitter only shortens it),
a deployment that comes back is probed, closed and carrying traffic again within ``max_cooldown``
plus one probe call of its return, however long it was down.

Every worker process on every machine shares one state per deployment, changed only inside the Lua
below (``BREAKER_LUA``), on Redis' own clock (``TIME``): no read-modify-write race, no clock skew.
Admission rides on a job's start script and reports on its finish script (``llm_router.record_lua``):
no extra round trip on the common path. Keys (``llm_router.keys``): ``sick`` (deployments not
closed: ``state|until_ms``), ``breaker:<dep>`` (window buckets ``n:<i>``/``f:<i>``, consecutive
failures ``c``, ``trips``, half-open successes ``hs``), ``probes:<dep>`` (probe leases),
``rpm:<dep>``/``tpm:<dep>`` (GCRA arrival times), ``conc:<dep>``/``slots:<dep>`` (the concurrency
limit, learned latency, calls in flight), ``routing:<digest>`` (model → its strategy and deployments
with their limits, published by workers).

The Python side is typed: an ``Admission`` per deployment (decoded from the scripts' replies), a
``BreakerReport`` per call (encoded for the finish script), a ``Transition`` per state change, and
``BreakerBoard`` for ``llm-router breakers``.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson
from redis.asyncio import Redis

from config.catalog import BreakerSpec, ConcurrencySpec, Deployment
from config.settings import Settings
from llm_router.concurrency import CONCURRENCY_LUA, LimiterView, read_limiters
from llm_router.keys import BREAKER_PREFIX, CONC_PREFIX, SICK_KEY, breaker_key, conc_key, probes_key

# needs LUA_PRELUDE (llm_router.lua) before it; carries CONCURRENCY_LUA (llm_router.concurrency)
BREAKER_LUA = (
    CONCURRENCY_LUA
    + r"""
-- May `job` call deployment `d` (a routing entry: id, rpm, tpm, probes, initial, max) now?  Returns
-- the admission state and, for a skip, when to try again (ms): 'ok' | 'probe' (a half-open probe
-- lease is held) | 'open' | 'half_open' | 'limited' | 'disabled' | 'busy' (its concurrency limit is
-- reached) | 'rate' | 'tokens'.  An open breaker whose cooldown passed turns half-open here.  An
-- admitted job holds a slot of the deployment's concurrency (until `slot_lease_ms` from now,
-- renewed while its call runs) until the call's report gives it back.
local function admit(d, now, job, est_tokens, lease_ms, slot_lease_ms)
  local dep, rpm, tpm, probes = d.id, d.rpm, d.tpm, d.probes
  local sick = redis.call('HGET', SICK, dep)
  local half = false
  if sick then
    local state, until_ms = string.match(sick, '^([%a_]+)|(%d+)')
    until_ms = tonumber(until_ms)
    if state == 'open' then
      if now < until_ms then return 'open', until_ms end
      redis.call('HSET', SICK, dep, 'half_open|0')
      redis.call('HSET', BREAKER .. dep, 'hs', 0)
      half = true
    elseif state == 'half_open' then
      half = true
    elseif now < until_ms then
      return state, until_ms  -- limited or disabled
    else
      redis.call('HDEL', SICK, dep)
    end
  end
  local probes_key = PROBES .. dep
  if half then
    redis.call('ZREMRANGEBYSCORE', probes_key, '-inf', now)
    if not redis.call('ZSCORE', probes_key, job) and redis.call('ZCARD', probes_key) >= probes then
      return 'half_open', now + 1000
    end
  end
  local free, free_at, fresh = room(d, now, job)
  if not free then return 'busy', free_at end
  if rpm > 0 then
    local key = RPM .. dep
    local interval = 60000 / rpm
    local tat = tonumber(redis.call('GET', key) or '0')
    if tat > now then return 'rate', tat + 1 end
    redis.call('SET', key, fmt(now + interval), 'PX', fmt(interval + 60000))
  end
  if tpm > 0 and est_tokens > 0 then
    local key = TPM .. dep
    local tat = tonumber(redis.call('GET', key) or '0')
    if tat < now then tat = now end
    local new = tat + est_tokens * 60000 / tpm
    if new - now > 60000 then return 'tokens', new - 60000 + 1 end
    redis.call('SET', key, fmt(new), 'PX', fmt(new - now + 60000))
  end
  take_slot(d, job, now + slot_lease_ms, fresh)
  if half then
    redis.call('ZADD', probes_key, now + lease_ms, job)
    return 'probe', 0
  end
  return 'ok', 0
end

-- A model's row of the routing table: 'strategy;dep|rpm|tpm|probes|initial|max|weight;…' (a row
-- without the strategy, or an entry without the last three fields, is 'ordered' and unlimited).
local function parse_row(row)
  local strategy, rest = string.match(row, '^(%l[%l_]*);(.*)$')
  if strategy then row = rest else strategy = 'ordered' end
  local deps = {}
  for entry in string.gmatch(row, '[^;]+') do
    local id, rpm, tpm, probes, initial, max, weight =
      string.match(entry, '^([^|]+)|(%d+)|(%d+)|(%d+)|?(%d*)|?(%d*)|?([%d.]*)$')
    if id then
      deps[#deps + 1] = {id = id, rpm = tonumber(rpm), tpm = tonumber(tpm), probes = tonumber(probes),
                         initial = tonumber(initial) or 0, max = tonumber(max) or 0,
                         weight = tonumber(weight) or 1, i = #deps + 1}
    end
  end
  return strategy, deps
end

-- Admission of a job's route: each model's deployments in its strategy's order (from the routing
-- table), admitting the first that may be called and leaving the rest 'unchecked'.  A model whose
-- deployments are busy (none open, limited or otherwise out) stops the walk there: the job waits
-- for room rather than answering with a fallback model.  Returns {dep, state, until_ms, …} and the
-- admitted deployment (or nil).
local function admit_route(route_json, routing_key, job, est_tokens, lease_ms, slot_lease_ms, now)
  local out = {}
  local chosen = nil
  local stop = false
  for model in string.gmatch(route_json, '"([^"]+)"') do
    local row = redis.call('HGET', routing_key, model)
    local busy = false
    if row and (chosen or stop) then
      -- past the admitted (or a busy) model its deployments are only listed, in the row's order:
      -- their ids, not a parse of every field (a row's parse was most of a start's Lua, a model)
      for entry in string.gmatch(row, '[^;]+') do
        local id = string.match(entry, '^([^|]+)|%d')
        if id then
          out[#out + 1] = id
          out[#out + 1] = 'unchecked'
          out[#out + 1] = '0'
        end
      end
    elseif row then
      local strategy, deps = parse_row(row)
      if not chosen and not stop then deps = by_strategy(strategy, deps, now) end
      for _, d in ipairs(deps) do
        local state, until_ms = 'unchecked', 0
        if not chosen and not stop then
          state, until_ms = admit(d, now, job, est_tokens, lease_ms, slot_lease_ms)
          if state == 'ok' or state == 'probe' then chosen = d.id end
        end
        out[#out + 1] = d.id
        out[#out + 1] = state
        out[#out + 1] = fmt(until_ms)
        if state == 'busy' then busy = true end
      end
      if busy then stop = true end
    end
  end
  return out, chosen
end

-- One call's report (a BreakerReport's JSON): count it, move the breaker, adjust the token budget.
-- Returns {dep, new state, reason} when the state changed, else nil.
local function record_report(json, now, job)
  local r = cjson.decode(json)
  local dep, kind, policy = r.dep, r.kind, r.policy
  local bk = BREAKER .. dep
  if r.probe then redis.call('ZREM', PROBES .. dep, job) end
  learn(r, now, job)
  if r.tpm > 0 and r.tokens_delta ~= 0 then
    -- the call used more (or fewer) tokens than admission estimated: move the budget by the difference
    local key = TPM .. dep
    local tat = tonumber(redis.call('GET', key) or '0')
    if tat > 0 then
      local ttl = redis.call('PTTL', key)
      local new = tat + r.tokens_delta * 60000 / r.tpm
      if new > now and ttl > 0 then redis.call('SET', key, fmt(new), 'PX', ttl) end
    end
  end
  if kind == 'neutral' then return nil end
  local current = redis.call('HGET', SICK, dep)
  local state = 'closed'
  if current then state = string.match(current, '^([%a_]+)') end
  if kind == 'limited' then
    -- no Retry-After on a deployment with a concurrency limit: "too many at once", which the cut
    -- in `learn` answers; holding it for the fleet would empty it and then refill it in one rush
    if r.until_ms <= 0 then return nil end
    if state ~= 'open' and state ~= 'half_open' then
      redis.call('HSET', SICK, dep, 'limited|' .. fmt(r.until_ms))
    end
    return {dep, 'limited', 'rate limited upstream'}
  end
  if kind == 'disabled' then
    redis.call('HSET', SICK, dep, 'disabled|' .. fmt(r.until_ms))
    return {dep, 'disabled', 'key or model refused upstream'}
  end
  local bucket = policy.bucket_ms
  local buckets = math.ceil(policy.window_ms / bucket)
  local idx = math.floor(now / bucket)
  redis.call('HDEL', bk, 'n:' .. (idx - buckets), 'f:' .. (idx - buckets))
  redis.call('PEXPIRE', bk, policy.window_ms * 2 + 60000)
  if kind == 'success' then
    redis.call('HSET', bk, 'c', 0)
    redis.call('HINCRBY', bk, 'n:' .. idx, 1)
    if state == 'half_open' then
      local successes = redis.call('HINCRBY', bk, 'hs', 1)
      if successes >= policy.probes then
        redis.call('HDEL', SICK, dep)
        redis.call('HSET', bk, 'trips', 0, 'hs', 0)
        for i = idx - buckets, idx do redis.call('HDEL', bk, 'n:' .. i, 'f:' .. i) end
        return {dep, 'closed', 'probes succeeded'}
      end
    end
    return nil
  end
  -- a failure
  redis.call('HINCRBY', bk, 'n:' .. idx, 1)
  redis.call('HINCRBY', bk, 'f:' .. idx, 1)
  local consecutive = redis.call('HINCRBY', bk, 'c', 1)
  if state == 'open' then return nil end
  local why = nil
  if state == 'half_open' then
    why = 'a probe failed'
  elseif consecutive >= policy.consecutive then
    why = consecutive .. ' consecutive failures'
  else
    local calls, failures = 0, 0
    for i = idx - buckets + 1, idx do
      calls = calls + tonumber(redis.call('HGET', bk, 'n:' .. i) or '0')
      failures = failures + tonumber(redis.call('HGET', bk, 'f:' .. i) or '0')
    end
    if calls >= policy.min_calls and failures * 100 >= policy.rate_pct * calls then
      why = failures .. ' of ' .. calls .. ' calls failed'
    end
  end
  if not why then return nil end
  local trips = redis.call('HINCRBY', bk, 'trips', 1)
  -- doubled per trip, but never past max_cooldown_ms whatever the jitter: a deployment that
  -- recovers is probed again within max_cooldown_ms, however long it was down (growth must not
  -- starve recovery)
  local cooldown = math.min(policy.cooldown_ms * 2 ^ (trips - 1), policy.max_cooldown_ms)
  cooldown = math.min(cooldown * r.jitter_pct / 100, policy.max_cooldown_ms)
  redis.call('HSET', SICK, dep, 'open|' .. fmt(now + cooldown))
  redis.call('HSET', bk, 'hs', 0)
  return {dep, 'open', why}
end
"""
)


class AdmissionState(StrEnum):
    """What admission said about one deployment for one job."""

    OK = "ok"  # call it
    PROBE = "probe"  # call it: this job holds one of its half-open probe leases
    UNCHECKED = "unchecked"  # after the admitted one: admitted on the way if the walk reaches it
    OPEN = "open"
    HALF_OPEN = "half_open"  # every probe lease is taken
    LIMITED = "limited"  # a 429's Retry-After
    DISABLED = "disabled"  # our key or the model was refused upstream
    RATE = "rate"  # the deployment's requests-per-minute limit
    TOKENS = "tokens"  # its tokens-per-minute limit
    BUSY = "busy"  # its adaptive concurrency limit is reached (``llm_router.concurrency``)

    @property
    def admitted(self) -> bool:
        return self in (AdmissionState.OK, AdmissionState.PROBE)


@dataclass(frozen=True, slots=True)
class Admission:
    """One deployment's admission: its state and, for a skip, when it is worth trying (Redis ms)."""

    state: AdmissionState
    until_ms: int = 0

    @property
    def skipped(self) -> bool:
        return self.state not in (AdmissionState.OK, AdmissionState.PROBE, AdmissionState.UNCHECKED)


UNCHECKED = Admission(AdmissionState.UNCHECKED)


@functools.lru_cache(maxsize=4096)
def decode_admission(state: bytes | str, until_ms: bytes | str | int) -> Admission:
    """Admissions are frozen, and most replies are the same few (``ok`` until 0): each job's start
    decoded one per deployment of its route, ~2 µs each with the enum lookup."""
    return Admission(AdmissionState(state.decode() if isinstance(state, bytes) else state), int(until_ms))


def decode_admissions(flat: list[Any]) -> dict[str, Admission]:
    """``admit_route``'s reply (``dep, state, until_ms, …``) by deployment."""
    return {
        (flat[i].decode() if isinstance(flat[i], bytes) else flat[i]): decode_admission(
            flat[i + 1], flat[i + 2]
        )
        for i in range(0, len(flat), 3)
    }


class ReportKind(StrEnum):
    """What one call's outcome means for its deployment's breaker."""

    SUCCESS = "success"
    FAILURE = "failure"  # counts toward opening the breaker
    NEUTRAL = "neutral"  # the caller's fault (a 400, a content filter): the breaker does not count it
    LIMITED = "limited"  # a 429: unavailable until its Retry-After
    DISABLED = "disabled"  # our key or the model refused: out of rotation until a cooldown


@dataclass(frozen=True, slots=True)
class Policy:
    """A deployment's breaker thresholds and concurrency limiter, in the integer units the Lua reads."""

    window_ms: int
    bucket_ms: int
    rate_pct: int
    min_calls: int
    consecutive: int
    cooldown_ms: int
    max_cooldown_ms: int
    probes: int
    # the adaptive concurrency limit (llm_router.concurrency); conc_max 0: none
    conc_initial: int = 0
    conc_max: int = 0
    backoff_pct: int = 90
    tolerance_pct: int = 200
    quantile_pct: int = 90  # the latency percentile learned for hedges

    @property
    def limited(self) -> bool:
        """Whether calls to the deployment hold a slot of its concurrency limit."""
        return self.conc_max > 0

    @classmethod
    def for_deployment(cls, dep: Deployment, settings: Settings) -> Policy:
        """The catalog's ``breaker:`` and ``concurrency:`` blocks over the ``LLM_ROUTER_BREAKER_*`` and
        ``LLM_ROUTER_CONCURRENCY_*`` settings."""
        spec = dep.breaker or BreakerSpec()
        conc = dep.concurrency or ConcurrencySpec()
        conc_max = conc.max if conc.max is not None else settings.concurrency_max
        initial = conc.initial if conc.initial is not None else settings.concurrency_initial

        def pick(name: str) -> float:
            value = getattr(spec, name)
            return float(value if value is not None else getattr(settings, f"breaker_{name}"))

        return cls(
            window_ms=int(pick("window_s") * 1000),
            bucket_ms=max(int(settings.breaker_bucket_s * 1000), 1),
            rate_pct=int(pick("failure_rate") * 100),
            min_calls=int(pick("min_calls")),
            consecutive=int(pick("consecutive")),
            cooldown_ms=int(pick("cooldown_s") * 1000),
            max_cooldown_ms=int(pick("max_cooldown_s") * 1000),
            probes=int(pick("probes")),
            conc_initial=min(initial, conc_max) if conc_max else 0,
            conc_max=conc_max,
            backoff_pct=round(settings.concurrency_backoff * 100),
            tolerance_pct=round(settings.concurrency_latency_tolerance * 100),
            quantile_pct=round(settings.hedge_percentile * 100),
        )


@dataclass(frozen=True, slots=True)
class BreakerReport:
    """What one call did to its deployment, for the finish script's ``record_report``."""

    deployment: str
    kind: ReportKind
    policy: Policy
    probe: bool = False  # the call held a half-open probe lease (released now)
    until_ms: int = 0  # LIMITED/DISABLED: until when, on Redis' clock
    tokens_delta: int = 0  # billed tokens minus the admission estimate (moves the tpm budget)
    tpm: int = 0
    # cooldowns of many deployments must not end in step; the cooldown is capped after it
    jitter_pct: int = 100
    slot: bool = False  # the call held a slot of the deployment's concurrency limit (given back now)
    # time to first token (streams) or the whole call (ms), for a call that answered; -1: no sample
    latency_ms: int = -1
    started_ms: int = 0  # when the call started, on Redis' clock (one limit cut per round)

    def encode(self) -> bytes:
        p = self.policy
        return orjson.dumps(
            {
                "dep": self.deployment,
                "kind": self.kind.value,
                "probe": self.probe,
                "until_ms": max(self.until_ms, 0),
                "tokens_delta": self.tokens_delta,
                "tpm": self.tpm,
                "jitter_pct": self.jitter_pct,
                "slot": self.slot,
                "latency_ms": self.latency_ms,
                "started_ms": self.started_ms,
                "policy": {
                    "window_ms": p.window_ms,
                    "bucket_ms": p.bucket_ms,
                    "rate_pct": p.rate_pct,
                    "min_calls": p.min_calls,
                    "consecutive": p.consecutive,
                    "cooldown_ms": p.cooldown_ms,
                    "max_cooldown_ms": p.max_cooldown_ms,
                    "probes": p.probes,
                    "conc_initial": p.conc_initial,
                    "conc_max": p.conc_max,
                    "backoff_pct": p.backoff_pct,
                    "tolerance_pct": p.tolerance_pct,
                    "quantile_pct": p.quantile_pct,
                },
            }
        )


def breaker_report(
    dep: Deployment,
    kind: ReportKind,
    policy: Policy,
    *,
    probe: bool,
    until_ms: int = 0,
    tokens_delta: int = 0,
    latency_ms: float | None = None,
    started_ms: int = 0,
) -> BreakerReport:
    """The report of one call to ``dep`` (with the jitter its cooldown gets if it opens the breaker:
    -20 % to +0 %, so ``max_cooldown`` stays a maximum and capped cooldowns still spread out)."""
    return BreakerReport(
        deployment=dep.id,
        kind=kind,
        policy=policy,
        probe=probe,
        until_ms=until_ms,
        tokens_delta=tokens_delta,
        tpm=dep.tpm or 0,
        jitter_pct=random.randint(80, 100),
        slot=policy.limited,
        latency_ms=round(latency_ms) if latency_ms is not None else -1,
        started_ms=started_ms,
    )


@dataclass(frozen=True, slots=True)
class Transition:
    """A breaker that changed state, and why."""

    deployment: str
    state: str
    reason: str


def decode_transitions(replies: list[Any]) -> list[Transition]:
    return [Transition(*(v.decode() if isinstance(v, bytes) else str(v) for v in t)) for t in replies]


class BreakerBoard:
    """Reading and resetting the fleet's breakers and learned limits (``llm-router breakers``)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def list(
        self, *, window_s: float, bucket_s: float, names: Iterable[str] | None = None
    ) -> list[dict[str, Any]]:
        """Every deployment with breaker or limiter state: its state, time to half-open, window
        counts, concurrency limit, calls in flight and learned latency.

        ``names`` limits it to those deployments (a dashboard refreshing every few seconds), where
        the default finds them with a SCAN of the keyspace.
        """
        sick = {k.decode(): v.decode() for k, v in (await self.redis.hgetall(SICK_KEY)).items()}
        if names is not None:
            names = set(names)
        else:
            names = set(sick)
            for prefix in (BREAKER_PREFIX, CONC_PREFIX):
                async for key in self.redis.scan_iter(match=f"{prefix}*", count=500):
                    names.add(key.decode().removeprefix(prefix))
        now_s, now_us = await self.redis.time()
        now_ms = now_s * 1000 + now_us // 1000
        current = now_ms // int(bucket_s * 1000)
        first = current - int(window_s // bucket_s) + 1
        limiters = await read_limiters(self.redis, sorted(names), now_ms)
        out = []
        for name in sorted(names):
            fields = {
                k.decode(): v.decode() for k, v in (await self.redis.hgetall(breaker_key(name))).items()
            }
            state, _, until = sick.get(name, "closed|0").partition("|")
            calls = sum(int(v) for k, v in fields.items() if k.startswith("n:") and int(k[2:]) >= first)
            failures = sum(int(v) for k, v in fields.items() if k.startswith("f:") and int(k[2:]) >= first)
            until_ms = int(until or 0)
            lim: LimiterView = limiters[name]
            out.append(
                {
                    "deployment": name,
                    "state": state,
                    "calls_in_window": calls,
                    "failures_in_window": failures,
                    "consecutive_failures": int(fields.get("c", 0)),
                    "trips": int(fields.get("trips", 0)),
                    "seconds_to_retry": max(until_ms - now_ms, 0) / 1000 if state != "half_open" else 0.0,
                    "concurrency_limit": round(lim.limit, 2) if lim.limit is not None else None,
                    "in_flight": lim.in_flight,
                    "slow_start": lim.slow_start,
                    "latency_ms": lim.latency_ms,
                    "latency_quantile_ms": lim.quantile_ms,
                    "latency_samples": lim.samples,
                }
            )
        return out

    async def reset(self, name: str) -> bool:
        """Close one breaker, clear its counts and its learned limit (it starts over from its
        ``initial``); ``False`` when it had no state. Calls in flight keep their slots."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(SICK_KEY, name)
            pipe.delete(breaker_key(name), probes_key(name), conc_key(name))
            removed, deleted = await pipe.execute()
        return bool(removed or deleted)
