"""Prometheus metrics: every family in one table, this process's values, and the fleet read from Redis.

Two kinds of families:

* **recorded** by the process that sees the event (``RECORDED``): jobs ended, durations, waits,
  upstream calls, tokens and cost on workers; HTTP requests on the server. Each process has its
  own ``Metrics`` (never the client library's global registry), so several workers on one host
  never share or clobber values; Prometheus adds them up across processes.
* **fleet** gauges (``FLEET``) read from Redis at scrape time by whichever process is scraped
  (``FleetReader``, one Lua script, bounded work): queue depth and age, live workers, breakers,
  credits reserved. Every process reports the same fleet-wide value, so dashboards take ``max``
  across instances, never ``sum``.

Recording is on the hot path of every job, so the values are plain dicts keyed by label tuples,
updated by the event loop's thread alone (a lookup and an add, where the client library's
``labels().inc()`` takes a lock and checks the labels each time); prometheus-client renders them at
scrape time through ``Metrics.collect``. A family is a row of the table: new issues add theirs to
``RECORDED`` (or ``Metrics.add`` at run time) and record with ``metrics[name]``.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from redis.asyncio import Redis

from llm_router.keys import (
    BREAKER_PREFIX,
    CREDITS_PREFIX,
    LANES_OPEN_KEY,
    LANES_STATS_KEY,
    METERED_KEY,
    PRIORITIES,
    SICK_KEY,
    lane_pending_key,
    workers_key,
)

PREFIX = "llm_router_"
CONTENT_TYPE = CONTENT_TYPE_LATEST
BREAKER_STATES = ("closed", "open", "half_open", "limited", "disabled")
NANOS = 1_000_000_000


class Kind(StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family: its name without the ``llm_router_`` prefix (counters end in ``_total``)."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    scale: float = (
        1.0  # values are recorded as integers of 1/scale units (cost: nano-USD) and shown times scale
    )
    tenant_optional: bool = False  # gains a `tenant` label when the process allows it

    def label_names(self, tenant_label: bool) -> tuple[str, ...]:
        return (*self.labels, "tenant") if self.tenant_optional and tenant_label else self.labels


FAST_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
JOB_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 1800.0, 3600.0)
WAIT_S = (0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0)
TTFT_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
HTTP_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

C, G, H = Kind.COUNTER, Kind.GAUGE, Kind.HISTOGRAM

RECORDED: tuple[Family, ...] = (
    Family("jobs_total", C, "Jobs that ended, by final status", ("status", "model", "provider")),
    Family("job_duration_seconds", H, "Start of a job's first run to its end", ("model", "status"), JOB_S),
    Family("queue_wait_seconds", H, "A job's creation to its first start", ("queue",), WAIT_S),
    Family("upstream_latency_seconds", H, "One provider call", ("provider", "model"), FAST_S),
    Family("time_to_first_token_seconds", H, "A streamed call's first token", ("provider", "model"), TTFT_S),
    Family("jobs_in_flight", G, "Jobs this worker process runs now", ("queue",)),
    Family("retries_total", C, "Calls retried on the same deployment", ("provider", "model")),
    Family("fallbacks_total", C, "Jobs answered by another deployment than the first", ("model",)),
    Family("deferrals_total", C, "Jobs deferred to run again later", ("queue",)),
    Family(
        "handoffs_total",
        C,
        "Jobs a submit handed this worker, started: run, taken back (message lost) or late (ignored)",
        ("queue", "outcome"),
    ),
    Family("tokens_total", C, "Tokens of ended jobs", ("model", "type"), tenant_optional=True),
    Family("cost_usd_total", C, "Cost of ended jobs in USD", ("model",), scale=1e-9, tenant_optional=True),
    Family("http_requests_total", C, "HTTP requests answered", ("route", "status")),
    Family("http_request_duration_seconds", H, "HTTP request handling", ("route",), HTTP_S),
)

FLEET: tuple[Family, ...] = (
    Family("queue_depth", G, "Jobs due in the queue: waiting or running (read from Redis)", ("queue",)),
    Family("queue_deferred", G, "Jobs in the queue not yet due: deferred or scheduled", ("queue",)),
    Family("queue_oldest_age_seconds", G, "Age of the oldest due job no worker holds", ("queue",)),
    Family("workers_live", G, "Workers with a live heartbeat", ("queue",)),
    Family("breaker_state", G, "1 for the deployment's current breaker state", ("deployment", "state")),
    Family("credits_reserved_usd", G, "Credit held by unfinished jobs, all tenants"),
    Family("redis_up", G, "1 when this scrape's fleet read from Redis succeeded"),
    Family("lane_open_batches", G, "Provider batches the batcher has open (README Lanes)"),
    Family("lane_jobs_waiting", G, "Batch-lane jobs waiting for a provider batch", ("deployment",)),
    Family("lane_redispatched_total", C, "Batch-lane jobs sent back to the now lane before their deadline"),
    Family("lane_wasted_results_total", C, "Provider batch results that came after their job had ended"),
    Family("lane_wasted_usd_total", C, "What those late results cost the operator, in USD"),
)


class Counter:
    """A counter's values by label tuple."""

    __slots__ = ("family", "values")

    def __init__(self, family: Family) -> None:
        self.family = family
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, key: tuple[str, ...], amount: float = 1) -> None:
        values = self.values
        values[key] = values.get(key, 0) + amount


class Gauge(Counter):
    """A gauge's values by label tuple (``inc`` with a negative amount to go down)."""

    __slots__ = ()

    def set(self, key: tuple[str, ...], value: float) -> None:
        self.values[key] = value


class Histogram:
    """Per label tuple: one count per bucket (not cumulative; the last is +Inf), then the sum."""

    __slots__ = ("bounds", "family", "series")

    def __init__(self, family: Family) -> None:
        self.family = family
        self.bounds = family.buckets
        self.series: dict[tuple[str, ...], list[float]] = {}

    def observe(self, key: tuple[str, ...], value: float) -> None:
        s = self.series.get(key)
        if s is None:
            s = self.series[key] = [0] * (len(self.bounds) + 2)
        s[bisect_left(self.bounds, value)] += 1  # `le` buckets: a value equal to a bound falls in it
        s[-1] += value


Recorder = Counter | Gauge | Histogram
_KINDS: dict[Kind, type[Counter] | type[Histogram]] = {C: Counter, G: Gauge, H: Histogram}


class Metrics:
    """This process's recorded families; a prometheus-client collector (``collect``)."""

    def __init__(self, *, tenant_label: bool = False, families: Iterable[Family] = RECORDED) -> None:
        self.tenant_label = tenant_label
        self._recorders: dict[str, Recorder] = {}
        for family in families:
            self.add(family)
        # the families every job touches, looked up once
        self.jobs: Counter = self["jobs_total"]  # type: ignore[assignment]
        self.job_duration: Histogram = self["job_duration_seconds"]  # type: ignore[assignment]
        self.queue_wait: Histogram = self["queue_wait_seconds"]  # type: ignore[assignment]
        self.upstream_latency: Histogram = self["upstream_latency_seconds"]  # type: ignore[assignment]
        self.ttft: Histogram = self["time_to_first_token_seconds"]  # type: ignore[assignment]
        self.in_flight: Gauge = self["jobs_in_flight"]  # type: ignore[assignment]
        self.retries: Counter = self["retries_total"]  # type: ignore[assignment]
        self.fallbacks: Counter = self["fallbacks_total"]  # type: ignore[assignment]
        self.deferrals: Counter = self["deferrals_total"]  # type: ignore[assignment]
        self.handoffs: Counter = self["handoffs_total"]  # type: ignore[assignment]
        self._tokens: Counter = self["tokens_total"]  # type: ignore[assignment]
        self._cost: Counter = self["cost_usd_total"]  # type: ignore[assignment]
        self.http_requests: Counter = self["http_requests_total"]  # type: ignore[assignment]
        self.http_duration: Histogram = self["http_request_duration_seconds"]  # type: ignore[assignment]

    def add(self, family: Family) -> Recorder:
        """Register a family (an issue adding its own metrics); returns its recorder."""
        if family.name in self._recorders:
            raise ValueError(f"metric family {family.name!r} is already registered")
        recorder = _KINDS[family.kind](family)
        self._recorders[family.name] = recorder
        return recorder

    def __getitem__(self, name: str) -> Recorder:
        return self._recorders[name]

    def usage(self, model: str, tenant: str, prompt: int, completion: int, cost_nanos: int) -> None:
        """An ended job's tokens and cost (``tenant`` is a label only when the process allows it)."""
        if self.tenant_label:
            self._tokens.inc((model, "prompt", tenant), prompt)
            self._tokens.inc((model, "completion", tenant), completion)
            self._cost.inc((model, tenant), cost_nanos)
        else:
            self._tokens.inc((model, "prompt"), prompt)
            self._tokens.inc((model, "completion"), completion)
            self._cost.inc((model,), cost_nanos)

    def collect(self) -> Iterator[Metric]:
        for recorder in list(self._recorders.values()):
            yield _render(recorder, self.tenant_label)

    def describe(self) -> list[Metric]:
        return []  # no describe pass: collect is what a scrape runs


def _render(recorder: Recorder, tenant_label: bool) -> Metric:
    fam = recorder.family
    name = PREFIX + fam.name
    labels = list(fam.label_names(tenant_label))
    if isinstance(recorder, Histogram):
        hist = HistogramMetricFamily(name, fam.help, labels=labels)
        bounds = [*(_le(b) for b in recorder.bounds), "+Inf"]
        for key, s in list(recorder.series.items()):
            running, buckets = 0.0, []
            for le, count in zip(bounds, s[:-1], strict=True):
                running += count
                buckets.append((le, running))
            hist.add_metric(list(key), buckets, s[-1])
        return hist
    cls = CounterMetricFamily if fam.kind is Kind.COUNTER else GaugeMetricFamily
    metric = cls(name, fam.help, labels=labels)
    for key, value in list(recorder.values.items()):
        metric.add_metric(list(key), value * fam.scale if fam.scale != 1.0 else value)
    return metric


def _le(bound: float) -> str:
    return repr(float(bound))


# -- the fleet, from Redis ------------------------------------------------------------------------

# KEYS: the sick hash, the metered tenants set, the lanes' open batches set and counters hash, then
# per queue: its name (the prefix of its keys, see ``llm_router.queue_lua``), its workers' sorted set.
# ARGV: now (ms), heartbeat TTL ms, how many active tenants per band to look at, the prefix of the
# lanes' pending sets, the credits prefix, the breaker prefix, then the deployment ids whose breaker
# windows and lane pending sets to look for.
# Returns {credits reserved (nano-USD), the sick hash flat, deployments with a breaker window,
# Redis' clock ms, open provider batches, the lanes' counters flat, {deployment, jobs waiting for a
# batch}… flat, then per queue: due (waiting or held), not yet due, enqueue time (ms) of the oldest
# waiting job ('-1' when none), live workers}.  Work is bounded by the scan limit (tenants per band),
# the tenants with credits and the deployments given, never by the number of jobs.
FLEET_LUA = (
    "local BANDS = {"
    + ", ".join(f"'{b}'" for b in PRIORITIES)
    + """}
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[3])
local reserved = 0
for _, tenant in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  reserved = reserved + tonumber(redis.call('HGET', ARGV[5] .. tenant, 'reserved') or '0')
end
local seen, waiting_batch = {}, {}
for i = 7, #ARGV do
  if redis.call('EXISTS', ARGV[6] .. ARGV[i]) == 1 then seen[#seen + 1] = ARGV[i] end
  local n = redis.call('ZCARD', ARGV[4] .. ARGV[i])
  if n > 0 then
    waiting_batch[#waiting_batch + 1] = ARGV[i]
    waiting_batch[#waiting_batch + 1] = n
  end
end
local t = redis.call('TIME')
local out = {string.format('%d', reserved), redis.call('HGETALL', KEYS[1]), seen,
             string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)),
             redis.call('SCARD', KEYS[3]), redis.call('HGETALL', KEYS[4]), waiting_batch}
for k = 5, #KEYS, 2 do
  local q = KEYS[k]
  local waiting, oldest = 0, nil
  for _, band in ipairs(BANDS) do
    for _, tenant in ipairs(redis.call('ZRANGE', q .. ':tenants:' .. band, 0, limit - 1)) do
      local ready = q .. ':ready:' .. band .. ':' .. tenant
      waiting = waiting + redis.call('ZCARD', ready)
      local head = redis.call('ZRANGE', ready, 0, 0, 'WITHSCORES')
      if head[2] and (oldest == nil or tonumber(head[2]) < oldest) then oldest = tonumber(head[2]) end
    end
  end
  local held = redis.call('ZCARD', q .. ':leases')
  local later = redis.call('ZCARD', q .. ':delayed')
  local live = redis.call('ZCOUNT', KEYS[k + 1], (now - tonumber(ARGV[2])) / 1000, '+inf')
  out[#out + 1] = waiting + held
  out[#out + 1] = later
  out[#out + 1] = oldest and string.format('%d', oldest) or '-1'
  out[#out + 1] = live
end
return out
"""
)


@dataclass(frozen=True, slots=True)
class QueueStats:
    """One queue as the fleet sees it; ``oldest_age_s`` is ``None`` when nothing waits."""

    label: str  # bulk, interactive
    name: str
    depth: int  # due: waiting or running
    deferred: int  # not yet due
    oldest_age_s: float | None
    workers: int


@dataclass(frozen=True, slots=True)
class LaneStats:
    """The lanes' provider batches as the fleet sees them (README "Lanes")."""

    open_batches: int = 0
    waiting: dict[str, int] = field(default_factory=dict)  # deployment → jobs waiting for a batch
    redispatched: int = 0
    wasted_results: int = 0
    wasted_nanos: int = 0


@dataclass(frozen=True, slots=True)
class FleetSnapshot:
    """The fleet at one moment; ``error`` says why it could not be read (then the rest is empty)."""

    queues: list[QueueStats] = field(default_factory=list)
    breakers: dict[str, str] = field(default_factory=dict)  # deployment → state, deployments with any
    credits_reserved_nanos: int = 0
    lanes: LaneStats = field(default_factory=LaneStats)
    read_at: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class FleetReader:
    """Reads a ``FleetSnapshot`` in one round trip; shared by /metrics, health and the dashboard."""

    def __init__(
        self,
        redis: Redis,
        *,
        queues: Mapping[str, str],
        deployments: Sequence[str] = (),
        heartbeat_ttl_s: float = 10.0,
        scan_limit: int = 1000,
        timeout_s: float = 2.0,
    ) -> None:
        self.redis = redis
        self.queues = dict(queues)  # label → arq queue name
        self.deployments = list(dict.fromkeys(deployments))
        self.heartbeat_ttl_ms = int(heartbeat_ttl_s * 1000)
        self.scan_limit = max(int(scan_limit), 1)
        self.timeout_s = timeout_s
        self._script = redis.register_script(FLEET_LUA)

    async def read(self) -> FleetSnapshot:
        """The snapshot, or one whose ``error`` says why Redis did not answer within the timeout."""
        now = time.time()
        keys = [SICK_KEY, METERED_KEY, LANES_OPEN_KEY, LANES_STATS_KEY]
        for name in self.queues.values():
            keys += [name, workers_key(name)]
        args: list[Any] = [
            int(now * 1000),
            self.heartbeat_ttl_ms,
            self.scan_limit,
            lane_pending_key(""),
            CREDITS_PREFIX,
            BREAKER_PREFIX,
            *self.deployments,
        ]
        try:
            async with asyncio.timeout(self.timeout_s):
                raw = await self._script(keys=keys, args=args)
        except TimeoutError:
            return FleetSnapshot(read_at=now, error=f"redis did not answer within {self.timeout_s} s")
        except Exception as exc:  # a scrape must answer whatever Redis does
            return FleetSnapshot(read_at=now, error=f"redis unavailable: {type(exc).__name__}")
        return _decode(raw, self.queues, now)


def _decode(raw: list[Any], queues: Mapping[str, str], now: float) -> FleetSnapshot:
    reserved, sick_flat, seen, redis_ms, open_batches, lane_flat, waiting_flat, *per_queue = raw
    counters = {_s(lane_flat[i]): int(lane_flat[i + 1]) for i in range(0, len(lane_flat), 2)}
    lanes = LaneStats(
        open_batches=int(open_batches),
        waiting={_s(waiting_flat[i]): int(waiting_flat[i + 1]) for i in range(0, len(waiting_flat), 2)},
        redispatched=counters.get("redispatched", 0),
        wasted_results=counters.get("wasted_results", 0),
        wasted_nanos=counters.get("wasted_nanos", 0),
    )
    redis_now = int(redis_ms)
    breakers = {_s(d): "closed" for d in seen}
    for i in range(0, len(sick_flat), 2):
        state, _, until = _s(sick_flat[i + 1]).partition("|")
        # a 429's or a refused key's hold that ran out is closed; the next admission clears it
        if state in ("limited", "disabled") and int(until or 0) <= redis_now:
            state = "closed"
        breakers[_s(sick_flat[i])] = state
    stats = []
    for (label, name), at in zip(queues.items(), range(0, len(per_queue), 4), strict=True):
        due, later, oldest, live = per_queue[at : at + 4]
        oldest_ms = float(_s(oldest))
        stats.append(
            QueueStats(
                label=label,
                name=name,
                depth=int(due),
                deferred=int(later),
                oldest_age_s=None if oldest_ms < 0 else max(now - oldest_ms / 1000, 0.0),
                workers=int(live),
            )
        )
    return FleetSnapshot(
        queues=stats,
        breakers=dict(sorted(breakers.items())),
        credits_reserved_nanos=int(reserved),
        lanes=lanes,
        read_at=now,
    )


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def fleet_metrics(snapshot: FleetSnapshot) -> list[Metric]:
    """The fleet families of one snapshot; only ``redis_up`` (0) when Redis could not be read."""
    fams = {f.name: f for f in FLEET}

    def gauge(name: str) -> GaugeMetricFamily:
        fam = fams[name]
        return GaugeMetricFamily(PREFIX + name, fam.help, labels=list(fam.labels) or None)

    up = gauge("redis_up")
    up.add_metric([], 1 if snapshot.ok else 0)
    if not snapshot.ok:
        return [up]
    depth, deferred, age, live = (
        gauge("queue_depth"),
        gauge("queue_deferred"),
        gauge("queue_oldest_age_seconds"),
        gauge("workers_live"),
    )
    for q in snapshot.queues:
        depth.add_metric([q.label], q.depth)
        deferred.add_metric([q.label], q.deferred)
        age.add_metric([q.label], q.oldest_age_s or 0.0)
        live.add_metric([q.label], q.workers)
    breaker = gauge("breaker_state")
    for dep, current in snapshot.breakers.items():
        for state in BREAKER_STATES:
            breaker.add_metric([dep, state], 1 if state == current else 0)
    credits = gauge("credits_reserved_usd")
    credits.add_metric([], snapshot.credits_reserved_nanos / NANOS)
    lanes = snapshot.lanes
    open_batches, waiting = gauge("lane_open_batches"), gauge("lane_jobs_waiting")
    open_batches.add_metric([], lanes.open_batches)
    for dep, n in lanes.waiting.items():
        waiting.add_metric([dep], n)
    counted = [
        CounterMetricFamily(PREFIX + name, fams[name].help, value=value)
        for name, value in (
            ("lane_redispatched_total", lanes.redispatched),
            ("lane_wasted_results_total", lanes.wasted_results),
            ("lane_wasted_usd_total", lanes.wasted_nanos / NANOS),
        )
    ]
    return [depth, deferred, age, live, breaker, credits, open_batches, waiting, *counted, up]


class _Snapshot:
    """A collector that yields the fleet families of the snapshot handed to ``Exposition.render``."""

    def __init__(self) -> None:
        self.snapshot: FleetSnapshot | None = None

    def collect(self) -> Iterator[Metric]:
        if self.snapshot is not None:
            yield from fleet_metrics(self.snapshot)

    def describe(self) -> list[Metric]:
        return []


class Exposition:
    """What a process's ``/metrics`` answers: its recorded families, the fleet's, its own CPU and memory."""

    def __init__(self, metrics: Metrics | None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._fleet = _Snapshot()
        if metrics is not None:
            self.registry.register(metrics)  # type: ignore[arg-type]
        self.registry.register(self._fleet)  # type: ignore[arg-type]
        ProcessCollector(registry=self.registry)

    def render(self, snapshot: FleetSnapshot | None) -> bytes:
        """The text exposition; synchronous, so a concurrent scrape cannot swap the snapshot midway."""
        self._fleet.snapshot = snapshot
        try:
            return generate_latest(self.registry)
        finally:
            self._fleet.snapshot = None


async def redis_ready(redis: Redis, timeout_s: float) -> str | None:
    """``None`` when Redis answers a PING within ``timeout_s`` (readiness), else why it did not."""
    try:
        async with asyncio.timeout(timeout_s):
            await redis.ping()
    except TimeoutError:
        return f"redis did not answer within {timeout_s} s"
    except Exception as exc:
        return f"redis unavailable: {type(exc).__name__}"
    return None
