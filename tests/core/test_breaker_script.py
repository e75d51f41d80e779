"""The circuit breaker's Lua (``llm_router.circuit_breaker.BREAKER_LUA``) on its own against the real
redis-server: admissions through the admit script, reports through the finish script, table-driven
where the cases are alike."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest
from redis.asyncio import Redis

from llm_router.circuit_breaker import (
    Admission,
    AdmissionState,
    BreakerReport,
    Policy,
    ReportKind,
    Transition,
)
from llm_router.keys import SICK_KEY, breaker_key, probes_key
from llm_router.store import FinishReply, Store

DEP = "prov/model"
POLICY = Policy(
    window_ms=10_000,
    bucket_ms=1_000,
    rate_pct=50,
    min_calls=4,
    consecutive=3,
    cooldown_ms=1_000,
    max_cooldown_ms=3_000,
    probes=1,
)


@pytest.fixture
def store(bare_redis: Redis) -> Store:
    return Store(bare_redis, queue_name="q", record_ttl_s=100)


async def admit(
    store: Store, job: str = "j", *, rpm: int = 0, tpm: int = 0, probes: int = 1, est: int = 0
) -> Admission:
    return (await store.admit(DEP, rpm, tpm, probes, job, est, 5_000)).admission


async def report(
    store: Store, kind: ReportKind, job: str = "j", *, policy: Policy = POLICY, **extra: int | bool
) -> list[Transition]:
    r = BreakerReport(deployment=DEP, kind=kind, policy=policy, **extra)  # type: ignore[arg-type]
    finished = await store.finish(job, {}, [r])
    assert finished.reply == FinishReply.NO_RECORD  # reports count whether or not the job exists
    return finished.transitions


async def sick(redis: Redis) -> tuple[str, int] | None:
    raw = await redis.hget(SICK_KEY, DEP)
    if raw is None:
        return None
    state, _, until = raw.decode().partition("|")
    return state, int(until)


def now_ms() -> int:
    return int(time.time() * 1000)


async def test_a_closed_breaker_admits_and_counts_successes(store: Store, bare_redis: Redis):
    assert await admit(store) == Admission(AdmissionState.OK)
    assert await report(store, ReportKind.SUCCESS) == []
    assert await sick(bare_redis) is None
    fields = await bare_redis.hgetall(breaker_key(DEP))
    assert fields[b"c"] == b"0" and sum(int(v) for k, v in fields.items() if k.startswith(b"n:")) == 1


async def test_consecutive_failures_open_it_for_the_cooldown(store: Store, bare_redis: Redis):
    assert await report(store, ReportKind.FAILURE) == []
    assert await report(store, ReportKind.FAILURE) == []
    before = now_ms()
    assert await report(store, ReportKind.FAILURE, jitter_pct=100) == [
        Transition(DEP, "open", "3 consecutive failures")
    ]
    state, until = await sick(bare_redis) or ("", 0)
    assert state == "open" and before + 1_000 <= until <= now_ms() + 1_000
    skipped = await admit(store)
    assert skipped == Admission(AdmissionState.OPEN, until) and skipped.skipped
    assert await report(store, ReportKind.FAILURE) == []  # already open: no new transition


async def test_a_failure_rate_over_the_window_opens_it(store: Store):
    policy = replace(POLICY, consecutive=100)  # only the rate can open it
    for _ in range(2):
        await report(store, ReportKind.SUCCESS, policy=policy)
    await report(store, ReportKind.FAILURE, policy=policy)
    # 4 calls, 2 failed: 50 % of at least min_calls
    assert await report(store, ReportKind.FAILURE, policy=policy) == [
        Transition(DEP, "open", "2 of 4 calls failed")
    ]


async def open_and_expire(bare_redis: Redis) -> None:
    """An open breaker whose cooldown has passed."""
    await bare_redis.hset(SICK_KEY, DEP, f"open|{now_ms() - 1}")
    await bare_redis.hset(breaker_key(DEP), mapping={"trips": 1})


async def test_after_the_cooldown_one_probe_is_let_through(store: Store, bare_redis: Redis):
    await open_and_expire(bare_redis)
    assert await admit(store, "first") == Admission(AdmissionState.PROBE)
    assert (await sick(bare_redis) or ("",))[0] == "half_open"
    assert await bare_redis.zscore(probes_key(DEP), "first") is not None
    other = await admit(store, "second")
    assert other.state == AdmissionState.HALF_OPEN and other.skipped  # its one probe lease is taken
    assert await admit(store, "first") == Admission(AdmissionState.PROBE)  # the holder keeps its lease


async def test_a_probe_that_succeeds_closes_it_and_clears_its_counts(store: Store, bare_redis: Redis):
    await open_and_expire(bare_redis)
    await admit(store, "p")
    assert await report(store, ReportKind.SUCCESS, "p", probe=True) == [
        Transition(DEP, "closed", "probes succeeded")
    ]
    assert await sick(bare_redis) is None
    assert await bare_redis.zcard(probes_key(DEP)) == 0
    fields = await bare_redis.hgetall(breaker_key(DEP))
    assert fields[b"trips"] == b"0" and not any(k.startswith((b"n:", b"f:")) for k in fields)


@pytest.mark.parametrize(
    ("trips_before", "cooldown"),
    [(1, 2_000), (2, 3_000), (5, 3_000)],  # doubled per trip, capped at max_cooldown_ms
)
async def test_a_probe_that_fails_opens_it_again_for_longer(store, bare_redis, trips_before, cooldown):
    await open_and_expire(bare_redis)
    await bare_redis.hset(breaker_key(DEP), "trips", trips_before)
    await admit(store, "p")
    before = now_ms()
    assert await report(store, ReportKind.FAILURE, "p", probe=True, jitter_pct=100) == [
        Transition(DEP, "open", "a probe failed")
    ]
    state, until = await sick(bare_redis) or ("", 0)
    assert state == "open" and before + cooldown <= until <= now_ms() + cooldown


@pytest.mark.parametrize(
    ("kind", "state", "reason"),
    [
        (ReportKind.LIMITED, AdmissionState.LIMITED, "rate limited upstream"),
        (ReportKind.DISABLED, AdmissionState.DISABLED, "key or model refused upstream"),
    ],
)
async def test_limited_and_disabled_hold_until_their_time_then_close(store, bare_redis, kind, state, reason):
    until = now_ms() + 200
    assert await report(store, kind, until_ms=until) == [Transition(DEP, state.value, reason)]
    assert await admit(store) == Admission(state, until)
    await asyncio.sleep(max(until - now_ms(), 0) / 1000 + 0.02)
    assert await admit(store) == Admission(AdmissionState.OK)
    assert await sick(bare_redis) is None


async def test_a_429_does_not_shorten_an_open_breaker(store: Store, bare_redis: Redis):
    far = now_ms() + 60_000
    await bare_redis.hset(SICK_KEY, DEP, f"open|{far}")
    await report(store, ReportKind.LIMITED, until_ms=now_ms() + 10)
    assert await sick(bare_redis) == ("open", far)


async def test_a_neutral_outcome_releases_the_probe_and_counts_nothing(store: Store, bare_redis: Redis):
    await open_and_expire(bare_redis)
    await admit(store, "p")
    assert await report(store, ReportKind.NEUTRAL, "p", probe=True) == []
    assert await bare_redis.zcard(probes_key(DEP)) == 0
    assert (await sick(bare_redis) or ("",))[0] == "half_open"
    assert await admit(store, "next") == Admission(AdmissionState.PROBE)  # the lease is free again


async def test_requests_per_minute_space_calls_by_the_interval(store: Store):
    # 600 rpm: one call per 100 ms
    assert await admit(store, rpm=600) == Admission(AdmissionState.OK)
    refused = await admit(store, rpm=600)
    assert refused.state == AdmissionState.RATE and now_ms() < refused.until_ms <= now_ms() + 101
    await asyncio.sleep(max(refused.until_ms - now_ms(), 0) / 1000 + 0.01)
    assert await admit(store, rpm=600) == Admission(AdmissionState.OK)


async def test_tokens_per_minute_admit_a_minute_of_estimated_tokens(store: Store, bare_redis: Redis):
    # 600 tpm and 100 tokens a job: six jobs fill the minute, the seventh waits
    for _ in range(6):
        assert await admit(store, tpm=600, est=100) == Admission(AdmissionState.OK)
    refused = await admit(store, tpm=600, est=100)
    assert refused.state == AdmissionState.TOKENS and refused.until_ms > now_ms()
    # a call that used 200 fewer tokens than estimated gives them back: two more jobs fit
    await report(store, ReportKind.SUCCESS, tpm=600, tokens_delta=-200)
    assert await admit(store, tpm=600, est=100) == Admission(AdmissionState.OK)
    assert await admit(store, tpm=600, est=100) == Admission(AdmissionState.OK)
    assert (await admit(store, tpm=600, est=100)).state == AdmissionState.TOKENS


@pytest.mark.parametrize(
    ("trips_before", "jitter_pct", "cooldown"),
    [
        (0, 80, 800),  # the first trip: the cooldown, shortened by the jitter
        (0, 100, 1_000),
        (1, 100, 2_000),  # doubled per trip
        (1, 120, 2_400),  # a jitter over 100 % still lengthens it below the maximum
        (2, 100, 3_000),  # capped at max_cooldown_ms
        (2, 120, 3_000),  # ...whatever the jitter: max_cooldown_ms is a maximum
        (9, 120, 3_000),
        (9, 80, 2_400),  # at the cap a jitter below 100 % still spreads deployments out
    ],
)
async def test_the_cooldown_is_capped_after_its_jitter(store, bare_redis, trips_before, jitter_pct, cooldown):
    await bare_redis.hset(breaker_key(DEP), "trips", trips_before)
    for _ in range(2):
        await report(store, ReportKind.FAILURE)
    before = now_ms()
    assert await report(store, ReportKind.FAILURE, jitter_pct=jitter_pct) == [
        Transition(DEP, "open", "3 consecutive failures")
    ]
    state, until = await sick(bare_redis) or ("", 0)
    assert state == "open" and before + cooldown <= until <= now_ms() + cooldown


async def test_a_long_outage_is_probed_at_least_every_max_cooldown(store: Store, bare_redis: Redis):
    """However many probes fail during an outage (and whatever their jitter), the next one comes
    within max_cooldown_ms: a deployment that recovers is seen again within that time."""
    await open_and_expire(bare_redis)
    gaps = []
    for probe in range(8):
        assert await admit(store, f"p{probe}") == Admission(AdmissionState.PROBE)
        assert await report(store, ReportKind.FAILURE, f"p{probe}", probe=True, jitter_pct=120) == [
            Transition(DEP, "open", "a probe failed")
        ]
        after = now_ms()  # the script ran before this: its cooldown ends no later than after + it
        _, until = await sick(bare_redis) or ("", 0)
        gaps.append(until - after)
        await bare_redis.hset(SICK_KEY, DEP, f"open|{now_ms() - 1}")  # its cooldown passes
    assert max(gaps) <= POLICY.max_cooldown_ms
    assert gaps[0] < gaps[-1] - 100  # it still grows, from one cooldown to the cap
    # the deployment comes back: the next probe succeeds and closes it
    assert await admit(store, "back") == Admission(AdmissionState.PROBE)
    assert await report(store, ReportKind.SUCCESS, "back", probe=True) == [
        Transition(DEP, "closed", "probes succeeded")
    ]
