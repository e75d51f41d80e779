"""The adaptive concurrency limit (``llm_router.concurrency``) on its own against the real redis-server:
slots taken by the admit and start scripts, given back and learned from by reports (in the finish
script and in the admit script that carries them), the strategies' order, and the learned latency."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import orjson
import pytest
from redis.asyncio import Redis

from llm_router.circuit_breaker import (
    Admission,
    AdmissionState,
    BreakerBoard,
    BreakerReport,
    Policy,
    ReportKind,
    Transition,
)
from llm_router.concurrency import read_limiters
from llm_router.keys import SICK_KEY, conc_key, record_key, routing_key, slots_key
from llm_router.store import LeaseWrites, NewJob, Started, Store, body_digest

DEP = "prov/model"
POLICY = Policy(
    window_ms=10_000,
    bucket_ms=1_000,
    rate_pct=50,
    min_calls=100,
    consecutive=100,  # these tests move the limit, never the breaker
    cooldown_ms=1_000,
    max_cooldown_ms=3_000,
    probes=1,
    conc_initial=4,
    conc_max=8,
    backoff_pct=50,
    tolerance_pct=200,
    quantile_pct=90,
)


@pytest.fixture
def store(bare_redis: Redis) -> Store:
    return Store(bare_redis, queue_name="q", record_ttl_s=100)


def now_ms() -> int:
    return int(time.time() * 1000)


async def admit(
    store: Store,
    job: str,
    *,
    policy: Policy = POLICY,
    slot_lease_ms: int = 10_000,
    reports: tuple[BreakerReport, ...] = (),
) -> Admission:
    admitted = await store.admit(
        DEP,
        0,
        0,
        1,
        job,
        0,
        5_000,
        concurrency=(policy.conc_initial, policy.conc_max),
        slot_lease_ms=slot_lease_ms,
        reports=reports,
    )
    return admitted.admission


def report(kind: ReportKind, *, policy: Policy = POLICY, **extra: int | bool) -> BreakerReport:
    fields = {"slot": policy.limited, "started_ms": now_ms(), **extra}
    return BreakerReport(deployment=DEP, kind=kind, policy=policy, **fields)  # type: ignore[arg-type]


async def done(store: Store, job: str, kind: ReportKind = ReportKind.SUCCESS, **extra: int | bool) -> None:
    """``job``'s call ended: its report through the finish script (the job has no record here)."""
    await store.finish(job, {}, [report(kind, **extra)])


async def limiter(redis: Redis) -> tuple[float | None, int, bool]:
    view = (await read_limiters(redis, [DEP], now_ms()))[DEP]
    return view.limit, view.in_flight, view.slow_start


async def test_a_deployment_admits_up_to_its_limit_then_says_busy_until_a_slot_frees(store, bare_redis):
    for i in range(4):  # initial 4
        assert await admit(store, f"j{i}") == Admission(AdmissionState.OK)
    busy = await admit(store, "j4")
    assert busy.state == AdmissionState.BUSY and busy.skipped
    # no latency learned yet: a slot is expected about 100 ms from now
    assert now_ms() + 50 <= busy.until_ms <= now_ms() + 150
    assert await admit(store, "j0") == Admission(AdmissionState.OK)  # a job that holds a slot keeps it
    await done(store, "j0")
    assert await admit(store, "j4") == Admission(AdmissionState.OK)
    assert (await limiter(bare_redis))[1] == 4


async def test_slow_start_grows_the_limit_by_a_half_per_success_while_it_is_in_use(store, bare_redis):
    for i in range(4):
        await admit(store, f"j{i}")
    await done(store, "j0")  # 3 in flight of 4: in use, so it grows
    assert await limiter(bare_redis) == (4.5, 3, True)
    for i in range(1, 4):
        await done(store, f"j{i}")
    # j1 ended with 2 in flight (+1 >= 4.5 / 2): it grows; j2 and j3 with 1 and 0, under half the
    # limit: a limit nobody used does not grow
    limit, in_flight, _ = await limiter(bare_redis)
    assert in_flight == 0 and limit == 5.0
    for i in range(20):  # never past max (8), however many succeed at full use
        await admit(store, f"k{i}")
        await admit(store, f"k{i}x")
        await done(store, f"k{i}")
    assert (await limiter(bare_redis))[0] == 8.0


@pytest.mark.parametrize("kind", [ReportKind.LIMITED, ReportKind.FAILURE])
async def test_congestion_cuts_the_limit_once_per_round_then_it_grows_additively(store, bare_redis, kind):
    for i in range(4):
        await admit(store, f"j{i}")
    before_cut = now_ms() - 1
    await done(store, "j0", kind)
    assert await limiter(bare_redis) == (2.0, 3, False)  # 4 x 0.5, slow start over
    # calls that started before the cut were sent under the old limit: no second cut
    await done(store, "j1", kind, started_ms=before_cut)
    assert (await limiter(bare_redis))[0] == 2.0
    assert (await admit(store, "new")).state == AdmissionState.BUSY  # 2 in flight of 2
    await done(store, "j2")  # additive now: + 1 / limit
    assert (await limiter(bare_redis))[0] == 2.5
    await asyncio.sleep(0.002)
    await done(store, "j3", kind)  # a call started after the cut: a new round, a new cut, of the
    assert (await limiter(bare_redis))[0] == 1.0  # one call then in flight (x 0.5, at least 1)


async def test_the_limit_never_drops_below_one(store, bare_redis):
    for _ in range(6):
        await admit(store, "j")
        await done(store, "j", ReportKind.FAILURE)
        await asyncio.sleep(0.002)
    assert (await limiter(bare_redis))[0] == 1.0
    assert await admit(store, "still") == Admission(AdmissionState.OK)


async def test_latency_above_the_baseline_cuts_the_limit(store, bare_redis):
    for i in range(25):  # a baseline of 100 ms (and n >= 20)
        await admit(store, f"j{i}")
        await done(store, f"j{i}", latency_ms=100)
    limit = (await limiter(bare_redis))[0]
    view = (await read_limiters(bare_redis, [DEP], now_ms()))[DEP]
    assert view.latency_ms == 100.0 and view.baseline_ms == 100.0 and view.samples == 25
    for i in range(16):  # the share of slow calls (an EWMA, alpha 0.05) passes one half at the 14th
        await admit(store, f"slow{i}")
        await done(store, f"slow{i}", latency_ms=1_000)
        await asyncio.sleep(0.002)
    cut = (await limiter(bare_redis))[0]
    assert cut is not None and limit is not None and cut <= limit / 2 + 0.01


async def test_a_tail_of_slow_answers_is_not_congestion(store, bare_redis):
    # 5 % of calls at 10x the rest (in a fixed interleaving, several close together): never a cut
    for i in range(400):
        await admit(store, f"j{i}")
        await done(store, f"j{i}", latency_ms=2_000 if i % 20 in (3, 5) and i % 40 < 20 else 200)
    assert await limiter(bare_redis) == (4.0, 0, True)
    view = (await read_limiters(bare_redis, [DEP], now_ms()))[DEP]
    assert view.baseline_ms is not None and 190 <= view.baseline_ms <= 210  # the median, not the mean


async def test_a_429_cuts_to_the_calls_in_flight_then_probes_that_ceiling_slowly(store, bare_redis):
    # slow start grew the limit to 8 while the fleet never sent more than 2 calls at once
    await bare_redis.hset(conc_key(DEP), "limit", 8)
    await admit(store, "a")
    await admit(store, "b")
    await done(store, "a", ReportKind.LIMITED)
    assert await limiter(bare_redis) == (1.0, 1, False)  # 2 in flight x 0.5, not 8 x 0.5
    await done(store, "b")
    await bare_redis.delete(conc_key(DEP))
    for i in range(4):
        await admit(store, f"j{i}")
    await done(store, "j0", ReportKind.LIMITED)  # refused with 4 in flight: the ceiling is 4
    for i in range(1, 3):
        await done(store, f"j{i}", started_ms=0)
    # one per round (+ 1 / limit a success) up to a slot under the ceiling...
    assert (await limiter(bare_redis))[0] == pytest.approx(2.9)  # 2 + 1 / 2 + 1 / 2.5
    await admit(store, "anchor")  # j3 and it keep the limit in use
    limits = []
    for i in range(12):
        await admit(store, f"k{i}")
        await done(store, f"k{i}")
        limits.append((await limiter(bare_redis))[0])
    # ... then 1 / (8 x limit) a success: one slot per 8 rounds
    assert limits[0] == pytest.approx(2.9 + 1 / 2.9, abs=0.001)
    assert limits[1] == pytest.approx(limits[0] + 1 / (8 * limits[0]), abs=0.001)
    assert limits[-1] < 3.7  # 12 successes (plain AIMD: one slot per 3 or 4 of them, past 6)
    for i in range(80):  # passed without a refusal: the capacity grew, the ceiling is forgotten
        await admit(store, f"m{i}")
        await done(store, f"m{i}")
    assert await bare_redis.hget(conc_key(DEP), "ceil") == b"0"
    assert (await limiter(bare_redis))[0] > 5


async def test_a_429_without_retry_after_cuts_instead_of_holding_the_deployment(store, bare_redis):
    await admit(store, "a")
    await done(store, "a", ReportKind.LIMITED, until_ms=0)
    assert await bare_redis.hget(SICK_KEY, DEP) is None
    assert await admit(store, "b") == Admission(AdmissionState.OK)
    # with a Retry-After it is a quota: the deployment is held for the fleet until then, as before
    until = now_ms() + 60_000
    await done(store, "b", ReportKind.LIMITED, until_ms=until)
    assert await admit(store, "c") == Admission(AdmissionState.LIMITED, until)


async def test_a_slot_lapses_at_its_lease_end_unless_its_worker_renews_it(store, bare_redis):
    for i in range(4):
        await admit(store, f"j{i}", slot_lease_ms=150)
    assert (await admit(store, "x")).state == AdmissionState.BUSY
    # the lease keeper of the worker running j0 and j1 renews them; j2 and j3's worker died
    pipe = bare_redis.pipeline(transaction=False)
    LeaseWrites("q", "w").renew_slots(pipe, {DEP: ["j0", "j1", "gone"]}, 10_000)
    await pipe.execute()
    await asyncio.sleep(0.2)
    assert (await limiter(bare_redis))[1] == 2
    assert await bare_redis.zscore(slots_key(DEP), "gone") is None  # renewing never takes a slot
    assert await admit(store, "x") == Admission(AdmissionState.OK)


async def test_the_admit_script_counts_the_reports_it_carries_before_it_admits(store, bare_redis):
    limited = replace(POLICY, consecutive=2)
    for i in range(4):
        await admit(store, f"j{i}")
    # j0 failed twice on DEP and moves on: its reports give its slot back and open the breaker
    failures = (report(ReportKind.FAILURE, policy=limited), report(ReportKind.FAILURE, policy=limited))
    admitted = await store.admit("other", 0, 0, 1, "j0", 0, 5_000, concurrency=(4, 8), reports=failures)
    assert admitted.admission == Admission(AdmissionState.OK)
    assert admitted.transitions == [Transition(DEP, "open", "2 consecutive failures")]
    assert await bare_redis.zscore(slots_key(DEP), "j0") is None
    assert await bare_redis.zscore(slots_key("other"), "j0") is not None


async def test_the_learned_percentile_settles_on_the_p90(store, bare_redis):
    # 95 % of calls at 200 ms, 5 % at 2,000 ms (in a fixed interleaving): p90 is 200 ms
    for i in range(400):
        lat = 2_000 if i % 20 == 7 else 200 + i % 10
        await store.finish("j", {}, [report(ReportKind.SUCCESS, latency_ms=lat, slot=False)])
    view = (await read_limiters(bare_redis, [DEP], now_ms()))[DEP]
    assert view.quantile_ms is not None and 195 <= view.quantile_ms <= 230
    # uniform 100..1,090 ms: p90 is about 990 ms
    await bare_redis.delete(conc_key(DEP))
    for i in range(600):
        lat = 100 + (i * 37) % 100 * 10
        await store.finish("j", {}, [report(ReportKind.SUCCESS, latency_ms=lat, slot=False)])
    view = (await read_limiters(bare_redis, [DEP], now_ms()))[DEP]
    assert view.quantile_ms is not None and 900 <= view.quantile_ms <= 1_080


# -- the start script: strategies, the busy model, a lost run's slot, the hedge's percentile ------

REQUEST = b'{"messages":[{"content":"hi","role":"user"}],"model":"m"}'


async def start(store: Store, job_id: str, *, route: bytes = b'["m"]', hedge: int | None = None) -> Started:
    now = time.time()
    job = NewJob(
        job_id=job_id,
        digest=body_digest(REQUEST),
        request=REQUEST,
        route=orjson.loads(route),
        route_json=route,
        model_requested="m",
        tenant="t",
        created_at=now,
        deadline_at=now + 60,
        hedge=hedge,
    )
    await store.submit_batch([store.submit_command(job)])
    started = await store.start(f"t/{job_id}", "w", now, routing_key("r"))
    assert isinstance(started, Started)
    return started


def states(started: Started) -> list[tuple[str, str]]:
    return [(d, a.state.value) for d, a in started.admissions.items()]


async def test_least_busy_picks_the_deployment_with_fewest_calls_per_weight(store, bare_redis):
    await bare_redis.hset(routing_key("r"), "m", "least_busy;a|0|0|1|10|10|1;b|0|0|1|10|10|2")
    # both idle: catalog order; then b (weight 2) takes two calls for each of a's
    picks = [next(d for d, s in states(await start(store, f"j{i}")) if s == "ok") for i in range(6)]
    assert picks == ["a", "b", "b", "a", "b", "b"]


async def test_latency_ranks_by_the_learned_latency_and_measures_a_stale_one_again(store, bare_redis):
    await bare_redis.hset(routing_key("r"), "m", "latency;slow|0|0|1|10|10|1;fast|0|0|1|10|10|1")
    now = now_ms()
    await bare_redis.hset(conc_key("slow"), mapping={"ewma": 900, "at": now})
    await bare_redis.hset(conc_key("fast"), mapping={"ewma": 100, "at": now})
    assert states(await start(store, "j1")) == [("fast", "ok"), ("slow", "unchecked")]
    # not heard from for a minute: tried once to be measured again, then ranked by latency again
    await bare_redis.hset(conc_key("slow"), "at", now - 61_000)
    assert states(await start(store, "j2")) == [("slow", "ok"), ("fast", "unchecked")]
    assert states(await start(store, "j3")) == [("fast", "ok"), ("slow", "unchecked")]


async def test_a_busy_model_waits_instead_of_falling_back_to_another_model(store, bare_redis):
    await bare_redis.hset(
        routing_key("r"), mapping={"m": "ordered;a|0|0|1|1|1|1;b|0|0|1|1|1|1", "fb": "c|0|0|1"}
    )
    route = b'["m","fb"]'
    assert states(await start(store, "j1", route=route)) == [
        ("a", "ok"),
        ("b", "unchecked"),
        ("c", "unchecked"),
    ]
    assert states(await start(store, "j2", route=route)) == [("a", "busy"), ("b", "ok"), ("c", "unchecked")]
    third = await start(store, "j3", route=route)
    assert states(third) == [("a", "busy"), ("b", "busy"), ("c", "unchecked")]
    # but a model whose deployments are out (open) falls back as before
    until = now_ms() + 60_000
    await bare_redis.hset(SICK_KEY, mapping={"a": f"open|{until}", "b": f"open|{until}"})
    assert states(await start(store, "j4", route=route)) == [("a", "open"), ("b", "open"), ("c", "ok")]


async def test_the_models_after_the_admitted_one_are_listed_unchecked_in_their_rows_order(store, bare_redis):
    # a route of three models: the first admits; the others' deployments are only listed, as their
    # rows give them (a strategy's prefix is no deployment; a cost row is in price order already)
    await bare_redis.hset(
        routing_key("r"),
        mapping={
            "m": "least_busy;a|0|0|1|10|100|1;b|0|0|1|10|100|2",
            "fb": "cost;cheap/x-1|60|0|2|10|100|1;dear/x-1|0|900|1|10|100|1.5",
            "last": "z|0|0|1",
        },
    )
    started = await start(store, "j1", route=b'["m","fb","last"]')
    assert states(started) == [
        ("a", "ok"),
        ("b", "unchecked"),
        ("cheap/x-1", "unchecked"),
        ("dear/x-1", "unchecked"),
        ("z", "unchecked"),
    ]
    assert all(a.until_ms == 0 for d, a in started.admissions.items() if d != "a")


async def test_a_run_after_its_workers_death_gives_back_the_slot_of_its_call(store, bare_redis):
    await bare_redis.hset(routing_key("r"), "m", "ordered;p/um|0|0|1|1|1|1")
    assert states(await start(store, "j1")) == [("p/um", "ok")]
    call = {"provider": "p", "model": "m", "upstream_model": "um", "started_at": 1.0}
    await bare_redis.hset(record_key("t/j1"), "inflight", orjson.dumps(call))
    await bare_redis.zadd(slots_key("p/um"), {"t/j1": now_ms() + 60_000})
    again = await store.start("t/j1", "w2", time.time(), routing_key("r"))
    assert isinstance(again, Started) and states(again) == [("p/um", "ok")]  # its slot again, not busy


async def test_a_hedged_job_starts_with_its_deployments_learned_percentile(store, bare_redis):
    await bare_redis.hset(routing_key("r"), "m", "ordered;a|0|0|1|10|10|1")
    plain = await start(store, "plain")
    assert plain.hedge_ms is None and plain.learned_samples == 0
    await bare_redis.hset(conc_key("a"), mapping={"q": "212.5", "n": 40})
    hedged = await start(store, "h", hedge=0)
    assert (hedged.hedge_ms, hedged.learned_ms, hedged.learned_samples) == (0, 212.5, 40)
    assert (await start(store, "h2", hedge=150)).hedge_ms == 150


async def test_the_board_shows_each_deployments_limit_and_calls_in_flight(store, bare_redis):
    for i in range(3):
        await admit(store, f"j{i}")
    await done(store, "j0", latency_ms=120)
    (row,) = await BreakerBoard(bare_redis).list(window_s=10, bucket_s=1)
    assert row["deployment"] == DEP and row["state"] == "closed"
    assert (row["concurrency_limit"], row["in_flight"], row["latency_ms"]) == (4.5, 2, 120.0)
    assert await BreakerBoard(bare_redis).reset(DEP)
    assert (await limiter(bare_redis))[0] is None  # learned afresh from its initial
