"""The metric families and their text exposition, and the fleet read from a real Redis."""

from __future__ import annotations

import time
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from llm_router.credits import Ledger
from llm_router.keys import (
    LANES_OPEN_KEY,
    LANES_STATS_KEY,
    SICK_KEY,
    active_tenants_key,
    breaker_key,
    delayed_key,
    lane_pending_key,
    leases_key,
    ready_key,
    workers_key,
)
from llm_router.metrics import FLEET, RECORDED, Exposition, Family, FleetReader, Kind, Metrics

# the names and labels the deploy recipes (Grafana, KEDA) are written against
INTERFACE = {
    "llm_router_queue_depth": {"queue"},
    "llm_router_queue_oldest_age_seconds": {"queue"},
    "llm_router_workers_live": {"queue"},
    "llm_router_jobs_total": {"status", "model", "provider"},
    "llm_router_job_duration_seconds": {"model", "status"},
    "llm_router_queue_wait_seconds": {"queue"},
    "llm_router_upstream_latency_seconds": {"provider", "model"},
    "llm_router_time_to_first_token_seconds": {"provider", "model"},
    "llm_router_jobs_in_flight": {"queue"},
    "llm_router_retries_total": {"provider", "model"},
    "llm_router_fallbacks_total": {"model"},
    "llm_router_deferrals_total": {"queue"},
    "llm_router_handoffs_total": {"queue", "outcome"},
    "llm_router_breaker_state": {"deployment", "state"},
    "llm_router_tokens_total": {"model", "type"},
    "llm_router_cost_usd_total": {"model"},
    "llm_router_credits_reserved_usd": set(),
    "llm_router_http_requests_total": {"route", "status"},
    "llm_router_http_request_duration_seconds": {"route"},
    "llm_router_lane_open_batches": set(),
    "llm_router_lane_jobs_waiting": {"deployment"},
    "llm_router_lane_redispatched_total": set(),
    "llm_router_lane_wasted_results_total": set(),
    "llm_router_lane_wasted_usd_total": set(),
}


def samples(text: bytes) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample of an exposition by sample name (``_bucket``, ``_count`` … kept apart)."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def test_the_families_are_the_interface_s_names_and_labels() -> None:
    ours = {"llm_router_" + f.name: set(f.labels) for f in (*RECORDED, *FLEET)}
    for name, labels in INTERFACE.items():
        assert name in ours, name
        assert ours[name] == labels, name


def test_recorded_values_render_as_prometheus_text() -> None:
    m = Metrics()
    m.jobs.inc(("succeeded", "gpt-4o", "openai"))
    m.jobs.inc(("succeeded", "gpt-4o", "openai"))
    m.upstream_latency.observe(("openai", "gpt-4o"), 0.01)  # exactly a bound: falls in its bucket
    m.upstream_latency.observe(("openai", "gpt-4o"), 7.0)
    m.usage("gpt-4o", "acme", 10, 20, 1_500)  # 1,500 nano-USD
    m.in_flight.inc(("bulk",), 1)
    s = samples(Exposition(m).render(None))
    assert s["llm_router_jobs_total"] == [
        ({"status": "succeeded", "model": "gpt-4o", "provider": "openai"}, 2.0)
    ]
    buckets = {labels["le"]: v for labels, v in s["llm_router_upstream_latency_seconds_bucket"]}
    assert buckets["0.005"] == 0 and buckets["0.01"] == 1 and buckets["5.0"] == 1 and buckets["10.0"] == 2
    assert buckets["+Inf"] == 2
    assert s["llm_router_upstream_latency_seconds_sum"][0][1] == pytest.approx(7.01)
    assert s["llm_router_cost_usd_total"] == [({"model": "gpt-4o"}, pytest.approx(1.5e-6))]
    tokens = {labels["type"]: v for labels, v in s["llm_router_tokens_total"]}
    assert tokens == {"prompt": 10, "completion": 20}
    assert s["llm_router_jobs_in_flight"] == [({"queue": "bulk"}, 1.0)]
    assert "process_cpu_seconds_total" in s  # the process's own CPU, for CPU per job


def test_the_tenant_is_a_label_only_when_allowed() -> None:
    off, on = Metrics(), Metrics(tenant_label=True)
    for m in (off, on):
        m.usage("gpt-4o", "acme", 1, 2, 3)
    assert all(
        "tenant" not in labels
        for labels, _ in samples(Exposition(off).render(None))["llm_router_tokens_total"]
    )
    s = samples(Exposition(on).render(None))
    assert {labels["tenant"] for labels, _ in s["llm_router_tokens_total"]} == {"acme"}
    assert s["llm_router_cost_usd_total"][0][0] == {"model": "gpt-4o", "tenant": "acme"}


def test_a_new_family_is_a_row() -> None:
    m = Metrics()
    lanes = m.add(Family("lane_jobs_total", Kind.COUNTER, "Jobs by lane", ("lane",)))
    lanes.inc(("batch",), 3)  # type: ignore[union-attr]
    assert samples(Exposition(m).render(None))["llm_router_lane_jobs_total"] == [({"lane": "batch"}, 3.0)]
    with pytest.raises(ValueError, match="already registered"):
        m.add(Family("lane_jobs_total", Kind.COUNTER, "again"))


async def _ready(redis: Redis, queue: str, tenant: str, job: str, at_s: float, band: str = "normal") -> None:
    await redis.zadd(ready_key(queue, band, tenant), {f"{tenant}/{job}": at_s * 1000})
    await redis.zadd(active_tenants_key(queue, band), {tenant: 0}, nx=True)


async def test_the_fleet_read_counts_due_deferred_waiting_and_live(redis: Redis) -> None:
    queue = f"obs-fleet-{uuid.uuid4().hex[:8]}"
    now = time.time()
    # three due jobs (one of them running: a worker holds it), one deferred to later
    await redis.zadd(leases_key(queue), {"t/run": (now + 10) * 1000})
    await _ready(redis, queue, "t", "wait1", now - 30)
    await _ready(redis, queue, "u", "wait2", now - 5, band="high")
    await redis.zadd(delayed_key(queue), {"t/later": (now + 600) * 1000})
    await redis.zadd(workers_key(queue), {"w-live": now, "w-dead": now - 3600})
    reader = FleetReader(redis, queues={"bulk": queue, "interactive": queue + ":i"}, heartbeat_ttl_s=10)
    snap = await reader.read()
    assert snap.ok, snap.error
    bulk, inter = snap.queues
    assert (bulk.label, bulk.depth, bulk.deferred, bulk.workers) == ("bulk", 3, 1, 1)
    assert bulk.oldest_age_s == pytest.approx(30, abs=2)  # the running job is not waiting
    assert (inter.depth, inter.deferred, inter.oldest_age_s, inter.workers) == (0, 0, None, 0)


async def test_the_oldest_waiting_job_is_found_among_the_tenants_looked_at(redis: Redis) -> None:
    queue = f"obs-scan-{uuid.uuid4().hex[:8]}"
    now = time.time()
    for i in range(5):  # five tenants, the oldest job in the fourth
        await _ready(redis, queue, f"t{i}", "j", now - (97 if i == 3 else 10 + i))
    found = await FleetReader(redis, queues={"bulk": queue}, scan_limit=10).read()
    assert found.queues[0].oldest_age_s == pytest.approx(97, abs=2)
    assert found.queues[0].depth == 5


async def test_breakers_and_credits_come_from_their_keys(redis: Redis) -> None:
    t_ms = int(time.time() * 1000)
    await redis.hset(
        SICK_KEY,
        mapping={
            "obs/open": f"open|{t_ms + 60_000}",
            "obs/limited-still": f"limited|{t_ms + 60_000}",
            "obs/limited-over": f"limited|{t_ms - 1_000}",
        },
    )
    await redis.hset(breaker_key("obs/called"), "c", 0)
    tenant = f"obs-{uuid.uuid4().hex[:6]}"
    await Ledger(redis).add(tenant, "5")
    await redis.hset(f"llm-router:credits:{tenant}", "reserved", 250_000_000)  # 0.25 USD held
    reader = FleetReader(redis, queues={}, deployments=["obs/called", "obs/never"])
    snap = await reader.read()
    assert snap.breakers["obs/open"] == "open"
    assert snap.breakers["obs/limited-still"] == "limited"
    assert snap.breakers["obs/limited-over"] == "closed"  # its hold ran out
    assert snap.breakers["obs/called"] == "closed"
    assert "obs/never" not in snap.breakers
    assert snap.credits_reserved_nanos >= 250_000_000
    s = samples(Exposition(None).render(snap))
    states = {(lab["deployment"], lab["state"]): v for lab, v in s["llm_router_breaker_state"]}
    assert states[("obs/open", "open")] == 1 and states[("obs/open", "closed")] == 0
    assert sum(v for (dep, _), v in states.items() if dep == "obs/open") == 1
    assert s["llm_router_redis_up"] == [({}, 1.0)]


async def test_the_lanes_provider_batches_come_from_their_keys(redis: Redis) -> None:
    """Open batches, jobs waiting for one per deployment (only the deployments asked about), and the
    batcher's counters, as gauges and counters of the fleet."""
    before = await FleetReader(redis, queues={}).read()
    dep, other = f"obs-lane/{uuid.uuid4().hex[:6]}", f"obs-lane/{uuid.uuid4().hex[:6]}"
    batch = f"obs-batch-{uuid.uuid4().hex[:6]}"
    await redis.sadd(LANES_OPEN_KEY, batch)
    await redis.zadd(lane_pending_key(dep), {"t/a": 1, "t/b": 2, "t/c": 3})
    await redis.zadd(lane_pending_key(other), {"t/d": 1})
    await redis.hincrby(LANES_STATS_KEY, "redispatched", 4)
    await redis.hincrby(LANES_STATS_KEY, "wasted_results", 2)
    await redis.hincrby(LANES_STATS_KEY, "wasted_nanos", 1_500_000_000)
    try:
        snap = await FleetReader(redis, queues={}, deployments=[dep, "obs-lane/none"]).read()
    finally:
        await redis.srem(LANES_OPEN_KEY, batch)
        await redis.delete(lane_pending_key(dep), lane_pending_key(other))
    assert snap.ok, snap.error
    lanes, was = snap.lanes, before.lanes
    assert lanes.waiting == {dep: 3}
    assert lanes.open_batches == was.open_batches + 1
    assert (lanes.redispatched - was.redispatched, lanes.wasted_results - was.wasted_results) == (4, 2)
    assert lanes.wasted_nanos - was.wasted_nanos == 1_500_000_000
    s = samples(Exposition(None).render(snap))
    assert s["llm_router_lane_jobs_waiting"] == [({"deployment": dep}, 3.0)]
    assert s["llm_router_lane_open_batches"] == [({}, float(lanes.open_batches))]
    assert s["llm_router_lane_redispatched_total"] == [({}, float(lanes.redispatched))]
    assert s["llm_router_lane_wasted_usd_total"] == [({}, lanes.wasted_nanos / 1e9)]


async def test_a_redis_that_does_not_answer_leaves_only_redis_up_zero() -> None:
    from llm_router.testing.redis_server import free_port

    dead = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    snap = await FleetReader(dead, queues={"bulk": "q"}, timeout_s=1.0).read()
    await dead.aclose()
    assert not snap.ok and snap.error
    s = samples(Exposition(Metrics()).render(snap))
    assert s["llm_router_redis_up"] == [({}, 0.0)]
    assert "llm_router_queue_depth" not in s
