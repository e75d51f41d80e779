"""A submit to an empty queue hands its job, started, to a worker waiting for work
(``record_lua.hand_job``, registered by the worker's claim: ``worker.claims``), against the real
redis-server, with a pub/sub connection standing in for the worker where the script is the subject;
and a real worker that takes handed jobs, runs them and withdraws when it stops."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from config.catalog import Catalog
from config.settings import DEFAULT_CATALOG, Settings
from llm_router.autopipe import AutoPipeline
from llm_router.keys import (
    active_tenants_key,
    hand_channel,
    handed_key,
    idle_workers_key,
    idler_key,
    leases_key,
    ready_key,
    record_key,
    routing_key,
    slots_key,
    wake_channel,
)
from llm_router.record_lua import HAND_MAX_REQUEST
from llm_router.store import NOT_STARTED, SUBMIT_GROUP, NewJob, Started, Store, body_digest
from llm_router.testing.jobs import new_job
from llm_router.testing.redis_server import RedisServer, free_port
from llm_router.testing.sim_env import SIM_KEYS
from producer.producer import Producer
from worker import observe
from worker.app import build_worker
from worker.claims import Claims, Handed, Starter
from worker.http import create_session
from worker.job_runner import JobRunner

QUEUE = "q"
REQUEST = b'{"messages":[{"content":"hi","role":"user"}],"model":"m"}'
ROUTING = routing_key("r")
LEASE_MS = 60_000
JOB = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def bare(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis(host="127.0.0.1", port=redis_server.port, db=12)
    await client.flushdb()
    await client.hset(ROUTING, "m", "fixed;a|0|0|1|10|10|1")
    yield client
    await client.aclose()


@pytest.fixture
def store(bare: Redis) -> Store:
    return Store(bare, queue_name=QUEUE, record_ttl_s=100)


def claims(bare: Redis, worker_id: str = "w", routing: str = ROUTING) -> Claims:
    starter = Starter(worker_id=worker_id, routing_key=routing, probe_lease_ms=60_000, slot_lease_ms=10_000)
    return Claims(bare, AutoPipeline(bare), QUEUE, starter)


def job(job_id: str, now: float | None = None, **fields: Any) -> NewJob:
    return new_job(job_id, now=now, **fields)


async def submit(store: Store, *jobs: NewJob, queue: str | None = None) -> None:
    replies = await store.submit_batch([store.submit_command(j, queue) for j in jobs])
    assert all(r == 1 for r in replies), replies


async def listening(bare: Redis, *channels: str) -> PubSub:
    pubsub = bare.pubsub()
    await pubsub.subscribe(*channels)
    return pubsub


async def messages(pubsub: PubSub, wait_s: float = 0.3) -> list[dict[str, Any]]:
    """The messages published until none came for ``wait_s`` (subscription confirmations left out)."""
    out = []
    while (message := await pubsub.get_message(timeout=wait_s)) is not None:
        if message["type"] in ("message", "pmessage"):
            out.append(message)
    return out


async def due(bare: Redis) -> list[bytes]:
    return await bare.zrange(ready_key(QUEUE, "normal", "t"), 0, -1)


RICH = {  # every optional part of a start's reply that a job can set
    "est_tokens": 42,
    "parent": "p1",
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "hedge": 250,
    "lane": "flex",
    "cache_key": "abc",
    "cache_ttl": 30,
}


@pytest.mark.parametrize("extra", [{}, RICH], ids=["plain", "rich"])
async def test_a_job_submitted_to_an_empty_queue_goes_to_the_waiting_worker_started(
    store: Store, bare: Redis, extra: dict[str, Any]
) -> None:
    worker = await listening(bare, hand_channel(QUEUE, "w"), wake_channel(QUEUE))
    claimed = await claims(bare).claim(LEASE_MS, room=4, idle_ttl_ms=5_000, hand_slots=2)
    assert claimed.jobs == []  # an empty queue: the worker waits, registered
    assert await bare.zscore(idle_workers_key(QUEUE), "w") is not None
    assert await bare.hget(idler_key(QUEUE, "w"), "slots") == b"2"

    before = time.time()
    await submit(store, job("j1", before, **extra))
    got = await messages(worker)
    assert [m["channel"] for m in got] == [hand_channel(QUEUE, "w").encode()]  # and no wake-up
    handed = Handed.decode(got[0]["data"])
    assert handed.job_id == "t/j1"
    # the start is the start script's, as it would have replied to the worker's own start of a twin
    await submit(store, job("twin", before, **extra), queue="elsewhere")
    by_start = await store.start("t/twin", "w", time.time(), ROUTING, 60_000, 10_000)
    assert isinstance(handed.started, Started) and isinstance(by_start, Started)
    clocks = {"redis_now_ms": 0, "first_started_at": None, "created_at": None}
    assert replace(handed.started, **clocks) == replace(by_start, **clocks)
    # and the record it leaves is the twin's (the hand-off writes a new job's run in one step)
    mine, twins = await bare.hgetall(record_key("t/j1")), await bare.hgetall(record_key("t/twin"))
    differ = {k for k in mine.keys() | twins.keys() if mine.get(k) != twins.get(k)}
    assert differ == {b"started_at"}, differ
    assert mine[b"runs"] == b"1" and float(mine[b"started_at"]) >= before
    assert handed.started.request == REQUEST and list(handed.started.admissions) == ["a"]
    if extra:
        assert handed.started.hedge_ms == 250 and handed.started.traceparent == RICH["traceparent"]
    # leased to the worker, never due, and running on it; its registration has one hand-off left
    assert await due(bare) == []
    lease = await bare.zscore(leases_key(QUEUE), "t/j1")
    assert lease is not None and before * 1000 + LEASE_MS - 1_000 <= lease <= time.time() * 1000 + LEASE_MS
    status, on = await bare.hmget(record_key("t/j1"), "status", "worker")
    assert (status, on) == (b"running", b"w")
    assert await bare.hget(idler_key(QUEUE, "w"), "slots") == b"1"
    await worker.aclose()


async def test_a_registration_takes_its_slots_then_jobs_queue_and_wake_the_workers(
    store: Store, bare: Redis
) -> None:
    worker = await listening(bare, hand_channel(QUEUE, "w"), wake_channel(QUEUE))
    await claims(bare).claim(LEASE_MS, room=4, idle_ttl_ms=5_000, hand_slots=2)
    await submit(store, job("j1"), job("j2"), job("j3"))  # one call: two handed, the third due
    got = await messages(worker)
    assert [Handed.decode(m["data"]).job_id for m in got[:2]] == ["t/j1", "t/j2"]
    assert [(m["channel"], m["data"]) for m in got[2:]] == [(wake_channel(QUEUE).encode(), b"1")]
    assert await due(bare) == [b"t/j3"]
    assert await bare.zscore(idle_workers_key(QUEUE), "w") is None
    assert await bare.hget(idler_key(QUEUE, "w"), "slots") == b"0"
    assert await bare.zrange(handed_key(QUEUE, "w"), 0, -1) == [b"t/j1", b"t/j2"]  # until acknowledged
    await worker.aclose()


async def test_a_claim_that_crossed_hand_offs_leaves_them_their_room(store: Store, bare: Redis) -> None:
    worker = await listening(bare, hand_channel(QUEUE, "w"))
    await claims(bare).claim(LEASE_MS, room=4, idle_ttl_ms=5_000, hand_slots=4)
    await submit(store, job("h1"), job("h2"))  # handed: on their way to the worker
    await submit(store, *(job(f"d{i}") for i in range(3)))  # two handed too (its slots were 4), one due
    assert len(await messages(worker)) == 4
    await submit(store, *(job(f"q{i}") for i in range(3)))  # queued
    # the worker had received one of the four when it claimed with room for 4: three take room
    claimed = await claims(bare).claim(LEASE_MS, room=4, idle_ttl_ms=5_000, hand_slots=4, received=["t/h1"])
    assert claimed.on_their_way == 3 and len(claimed.jobs) == 1 and claimed.taken_back == []
    assert await bare.zscore(idle_workers_key(QUEUE), "w") is None  # no room left: not registered
    # once it has them all, a claim takes the whole room it names
    received = ["t/h2", "t/d0", "t/d1"]
    claimed = await claims(bare).claim(LEASE_MS, room=2, idle_ttl_ms=5_000, hand_slots=4, received=received)
    assert claimed.on_their_way == 0 and len(claimed.jobs) == 2
    assert await bare.exists(handed_key(QUEUE, "w")) == 0
    await worker.aclose()


async def test_a_hand_off_whose_message_was_lost_is_taken_back_by_the_worker_s_claim(
    store: Store, bare: Redis
) -> None:
    ttl_ms = 400
    worker = await listening(bare, hand_channel(QUEUE, "w"))
    await claims(bare).claim(LEASE_MS, room=4, idle_ttl_ms=ttl_ms, hand_slots=4)
    await submit(store, job("lost"), job("ended"))
    assert len(await messages(worker, 0.05)) == 2  # sent, but never read by the worker's loop
    await bare.hset(record_key("t/ended"), "status", "succeeded")  # a late run of it ended it
    claimed = await claims(bare).claim(LEASE_MS, room=4, idle_ttl_ms=ttl_ms, hand_slots=4)
    assert claimed.on_their_way == 2 and claimed.taken_back == []  # too soon to call them lost
    await asyncio.sleep(ttl_ms / 1000 + 0.1)  # unacknowledged for a registration's life
    claimed = await claims(bare).claim(LEASE_MS, room=4, idle_ttl_ms=ttl_ms, hand_slots=4)
    # the lost one is the worker's again, to start itself; the ended one is not run again
    assert claimed.taken_back == ["t/lost"] and claimed.on_their_way == 0 and claimed.jobs == []
    lease = await bare.zscore(leases_key(QUEUE), "t/lost")
    assert lease is not None and lease > time.time() * 1000 + LEASE_MS - 5_000  # renewed
    assert await bare.exists(handed_key(QUEUE, "w")) == 0
    await worker.aclose()


async def test_a_large_request_is_not_handed_and_a_flex_lane_job_is(store: Store, bare: Redis) -> None:
    worker = await listening(bare, hand_channel(QUEUE, "w"))
    await claims(bare).claim(LEASE_MS, room=4, idle_ttl_ms=5_000, hand_slots=4)
    await submit(store, job("flex", lane="flex"))
    big = b'{"messages":[{"content":"' + b"x" * HAND_MAX_REQUEST + b'","role":"user"}],"model":"m"}'
    await submit(store, replace(job("big"), request=big, digest=body_digest(big)))
    assert [Handed.decode(m["data"]).job_id for m in await messages(worker)] == ["t/flex"]
    assert await due(bare) == [b"t/big"]
    await worker.aclose()


async def test_a_batch_of_many_calls_wakes_the_workers_once(store: Store, bare: Redis) -> None:
    wakes = await listening(bare, wake_channel(QUEUE))
    await submit(store, *(job(f"b{i}") for i in range(3 * SUBMIT_GROUP + 1)))
    assert [m["data"] for m in await messages(wakes)] == [b"1"]
    # a worker takes them all and waits, and a batch whose first call hands it 4 and queues the rest
    worker = await listening(bare, hand_channel(QUEUE, "w"))
    taken = await claims(bare).claim(LEASE_MS, room=SUBMIT_GROUP * 4, idle_ttl_ms=5_000, hand_slots=4)
    assert len(taken.jobs) == 3 * SUBMIT_GROUP + 1
    assert await bare.zscore(idle_workers_key(QUEUE), "w") is not None
    await submit(store, *(job(f"c{i}") for i in range(2 * SUBMIT_GROUP)))
    assert len(await messages(worker)) == 4
    assert [m["data"] for m in await messages(wakes)] == [b"1"]
    await wakes.aclose()
    await worker.aclose()


async def test_while_a_job_waits_in_the_queue_the_next_waits_behind_it(store: Store, bare: Redis) -> None:
    worker = await listening(bare, hand_channel(QUEUE, "w"))
    await claims(bare).claim(LEASE_MS, room=4, idle_ttl_ms=5_000, hand_slots=4)
    # a batch-lane job is not claimed as is: it queues even with a worker waiting
    await submit(store, job("lane", lane="batch"))
    await submit(store, job("after"))  # the queue is not empty: in order, behind it
    assert await messages(worker) == []
    assert sorted(await due(bare)) == [b"t/after", b"t/lane"]
    assert await bare.hget(idler_key(QUEUE, "w"), "slots") == b"4"
    await worker.aclose()


async def test_a_worker_that_no_longer_listens_or_whose_registration_lapsed_is_passed_over(
    store: Store, bare: Redis
) -> None:
    # "gone" registered, then its process died: Redis dropped its subscription
    await claims(bare, "gone").claim(LEASE_MS, room=4, idle_ttl_ms=5_000, hand_slots=4)
    await submit(store, job("j1"))
    assert await due(bare) == [b"t/j1"]
    assert await bare.zcard(idle_workers_key(QUEUE)) == 0
    assert (await claims(bare, "x").claim(LEASE_MS, room=1)).jobs == ["t/j1"]  # empty again

    worker = await listening(bare, hand_channel(QUEUE, "late"))
    await claims(bare, "late").claim(LEASE_MS, room=4, idle_ttl_ms=50, hand_slots=4)
    await asyncio.sleep(0.15)  # it never claimed again: its registration lapsed
    await submit(store, job("j2"))
    assert await messages(worker) == []
    assert await due(bare) == [b"t/j2"]
    assert await bare.zcard(idle_workers_key(QUEUE)) == 0
    await worker.aclose()


async def test_hand_offs_go_round_the_waiting_workers_and_a_full_claim_withdraws(
    store: Store, bare: Redis
) -> None:
    a = await listening(bare, hand_channel(QUEUE, "a"))
    b = await listening(bare, hand_channel(QUEUE, "b"))
    await claims(bare, "a").claim(LEASE_MS, room=4, idle_ttl_ms=5_000, hand_slots=4)
    await asyncio.sleep(0.01)
    await claims(bare, "b").claim(LEASE_MS, room=4, idle_ttl_ms=5_000, hand_slots=4)
    await submit(store, job("j1"))
    assert [Handed.decode(m["data"]).job_id for m in await messages(a)] == ["t/j1"]  # registered first
    await claims(bare, "a").claim(LEASE_MS, room=3, idle_ttl_ms=5_000, hand_slots=4, received=["t/j1"])
    await submit(store, job("j2"))
    assert [Handed.decode(m["data"]).job_id for m in await messages(b)] == ["t/j2"]  # a went behind b
    # b's claim fills its room: it is handed nothing more, and a is next
    await submit(store, job("lane", lane="batch"))
    full = await claims(bare, "b").claim(LEASE_MS, room=1, idle_ttl_ms=5_000, hand_slots=4, received=["t/j2"])
    assert full.jobs == ["t/lane"] and full.on_their_way == 0
    assert await bare.zscore(idle_workers_key(QUEUE), "b") is None
    await submit(store, job("j3"))
    assert [Handed.decode(m["data"]).job_id for m in await messages(a)] == ["t/j3"]
    await claims(bare, "a").withdraw()
    assert await bare.zscore(idle_workers_key(QUEUE), "a") is None and not await bare.exists(
        idler_key(QUEUE, "a")
    )
    await a.aclose()
    await b.aclose()


async def test_a_start_that_fails_in_the_submit_leaves_the_job_to_the_worker_s_own_start(
    store: Store, bare: Redis
) -> None:
    await bare.set("broken-routing", "a string")  # admission raises: WRONGTYPE reading the routing table
    worker = await listening(bare, hand_channel(QUEUE, "w"))
    await claims(bare, routing="broken-routing").claim(LEASE_MS, room=4, idle_ttl_ms=5_000, hand_slots=4)
    await submit(store, job("j1"))
    (message,) = await messages(worker)
    assert Handed.decode(message["data"]) == Handed("t/j1", NOT_STARTED)
    assert await bare.zscore(leases_key(QUEUE), "t/j1") is not None  # still leased to the worker
    await worker.aclose()


def _none_waiting(redis: Redis, queue: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return not await redis.zcard(idle_workers_key(queue))

    return check


def _not_leased(redis: Redis, queue: str, job_id: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await redis.zscore(leases_key(queue), job_id) is None

    return check


async def test_a_worker_runs_the_jobs_handed_to_it_and_withdraws_when_it_stops(
    sim: Any, settings: Settings, redis: Redis, until: Callable[..., Awaitable[object]]
) -> None:
    catalog = Catalog.from_path(DEFAULT_CATALOG, env=SIM_KEYS, upstream=sim.url)
    settings = settings.model_copy(update={"metrics_port": free_port()})
    producer = await Producer.connect(settings, catalog)
    worker = build_worker(settings, catalog, handle_signals=False, max_jobs=4)
    queue = worker.queue_name
    hands = redis.pubsub()
    await hands.psubscribe(f"{queue}:hand:*")
    await hands.subscribe(wake_channel(queue))
    running = asyncio.create_task(worker.main())
    try:
        # its first claim registers it
        await until(lambda: redis.zcard(idle_workers_key(queue)), timeout=10, what="a registration")
        await messages(hands, 0.05)
        for _ in range(5):
            sub = await producer.submit(JOB)
            record = await producer.wait(sub.job_id, timeout=30)
            assert record.status == "succeeded"
            assert len(record.attempts) == 1 and record.attempts[0].outcome == "success"
        got = await messages(hands)
        kinds = ["hand" if m["channel"].decode().startswith(f"{queue}:hand:") else "wake" for m in got]
        assert kinds.count("hand") == 5 and "wake" not in kinds, kinds  # every one handed, none claimed
        metrics = observe.install(settings, catalog).metrics
        assert metrics is not None and metrics.handoffs.values == {("bulk", "run"): 5}
        assert await redis.zcard(leases_key(queue)) == 0  # each left the queue as it ended

        worker.handle_sig_wait_for_completion(signal.SIGTERM)
        await until(_none_waiting(redis, queue), timeout=5, what="a stopping worker's withdrawal")
        assert await redis.zcard(active_tenants_key(queue, "normal")) == 0
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await worker.close()
        await producer.close()
        await hands.aclose()


async def test_a_quiet_worker_stays_subscribed_past_its_redis_read_timeout(
    sim: Any, settings: Settings, redis: Redis, until: Callable[..., Awaitable[object]]
) -> None:
    """A read timeout of 0.3 s: the listener used to lose its subscription (and, for that moment, its
    hand-offs) each time its channels stayed quiet that long."""
    catalog = Catalog.from_path(DEFAULT_CATALOG, env=SIM_KEYS, upstream=sim.url)
    settings = settings.model_copy(update={"redis_timeout_s": 0.3})
    worker = build_worker(settings, catalog, handle_signals=False, max_jobs=4)
    running = asyncio.create_task(worker.main())
    try:
        found = await until(lambda: redis.pubsub_channels(f"{worker.queue_name}:hand:*"), what="its channel")
        channel = found[0]  # type: ignore[index]
        counts = []
        for _ in range(150):  # 1.5 s: five read timeouts
            counts.append((await redis.pubsub_numsub(channel))[0][1])
            await asyncio.sleep(0.01)
        assert min(counts) == 1, counts
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await worker.close()


async def test_a_handed_job_cancelled_before_it_had_a_slot_goes_back_to_the_queue(
    sim: Any, settings: Settings, redis: Redis, until: Callable[..., Awaitable[object]]
) -> None:
    catalog = Catalog.from_path(DEFAULT_CATALOG, env=SIM_KEYS, upstream=sim.url)
    producer = await Producer.connect(settings, catalog)
    worker = build_worker(settings, catalog, handle_signals=False, max_jobs=1)
    queue = worker.queue_name
    try:
        sub = await producer.submit(JOB)  # no worker is up: it is due
        job_id = f"default/{sub.job_id}"
        store = Store(redis, queue_name=queue, record_ttl_s=100)
        assert (await Claims(redis, store.pipe, queue).claim(LEASE_MS, room=1)).jobs == [job_id]
        worker.use_store(store, Claims(redis, store.pipe, queue))
        await worker.sem.acquire()  # its one slot is taken: a hand-off that crossed a claim
        worker._take_handed(Handed(job_id, NOT_STARTED))
        assert worker.job_counter == 1 and job_id in worker.tasks
        worker.tasks[job_id].cancel()  # stopping, before the task's first step
        await until(_not_leased(redis, queue, job_id), timeout=5, what="the job back from its lease")
        assert await redis.zrange(ready_key(queue, "normal", "default"), 0, -1) == [job_id.encode()]
        assert worker.job_counter == 0 and job_id not in worker.tasks
    finally:
        await worker.close()
        await producer.close()


async def test_a_started_hand_off_that_never_ran_is_put_back_as_it_was(
    sim: Any, settings: Settings, redis: Redis, until: Callable[..., Awaitable[object]]
) -> None:
    """Stopped before its slot, a handed job's start is undone: its record says queued, the slot its
    start took is free, and the next worker's start takes it for a first run, not a lost one."""
    catalog = Catalog.from_path(DEFAULT_CATALOG, env=SIM_KEYS, upstream=sim.url)
    producer = await Producer.connect(settings, catalog)
    worker = build_worker(settings, catalog, handle_signals=False, max_jobs=1)
    queue = worker.queue_name
    store = Store(redis, queue_name=queue, record_ttl_s=100)
    session = create_session(settings)
    runner = JobRunner(store, catalog, settings, session, "stopping-worker")
    await redis.hset(runner.routing_key, mapping=runner.routing_table)  # as a worker's keeper publishes it
    try:
        sub = await producer.submit(JOB)  # no worker is up: it is due
        job_id = f"default/{sub.job_id}"
        claims = Claims(redis, store.pipe, queue, runner.starter)
        claimed = await claims.claim(LEASE_MS, room=1)  # started as a hand-off starts it
        started = claimed.started[job_id]
        assert isinstance(started, Started) and next(iter(started.admissions)) == "openai/gpt-4o-mini"
        assert await redis.zscore(slots_key("openai/gpt-4o-mini"), job_id) is not None
        assert await redis.hget(record_key(job_id), "status") == b"running"
        worker.use_store(store, claims, runner.run, runner.put_back_unrun)
        await worker.sem.acquire()  # its one slot is taken: a hand-off that crossed a claim
        worker._take_handed(Handed(job_id, started))
        worker.tasks[job_id].cancel()  # stopping, before the task's first step
        await until(_not_leased(redis, queue, job_id), timeout=5, what="the job back from its lease")
        assert await redis.zrange(ready_key(queue, "normal", "default"), 0, -1) == [job_id.encode()]
        assert await redis.hget(record_key(job_id), "status") == b"queued"
        assert await redis.zscore(slots_key("openai/gpt-4o-mini"), job_id) is None

        again = await store.start(job_id, "next-worker", time.time(), runner.routing_key, 60_000, 10_000)
        assert isinstance(again, Started)
        assert again.previous_status == "queued" and again.lost_runs == 0
        assert again.attempts in (b"", b"[]")  # no interrupted attempt for a run that never was
    finally:
        await worker.close()
        await producer.close()
        await session.close()
