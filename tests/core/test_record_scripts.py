"""The record scripts (``llm_router.record_lua``) one by one against the real redis-server: submit,
start, finish, cancel and a refused compare side, through ``Store``'s typed replies."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from arq.constants import abort_jobs_ss
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from llm_router.circuit_breaker import AdmissionState, BreakerReport, Policy, ReportKind
from llm_router.keys import (
    ENDED_PATTERN,
    LANES_DUE_KEY,
    NOTIFY_PREFIX,
    active_key,
    active_tenants_key,
    credits_key,
    ended_channel,
    lane_gone_key,
    lane_members_key,
    lane_pending_key,
    leases_key,
    notify_channel,
    ready_key,
    record_key,
    request_key,
    routing_key,
    slots_key,
    stream_key,
    usage_key,
)
from llm_router.lanes_lua import LaneScripts, ParkReply
from llm_router.ledger_lua import NOTIFY_MAX_BYTES
from llm_router.queue_lua import NEWCOMER_LEAD
from llm_router.store import (
    SUBMIT_GROUP,
    CancelReply,
    FinishReply,
    NewJob,
    Settlement,
    Started,
    Store,
    SubmitReply,
    UnstartReply,
    decode_ended,
    decode_ended_record,
)
from llm_router.testing.jobs import new_job
from producer.http.openai_api import completion_of_fields, completion_with_usage

QUEUE = "q"
REQUEST = b'{"messages":[{"content":"hi","role":"user"}],"model":"m"}'


@pytest.fixture
def store(bare_redis: Redis) -> Store:
    return Store(bare_redis, queue_name=QUEUE, record_ttl_s=100)


async def submit(store: Store, job: NewJob, max_queued: int = 0) -> SubmitReply:
    (reply,) = await store.submit_batch([store.submit_command(job, max_queued=max_queued)])
    return reply


async def fields_of(redis: Redis, job_id: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (await redis.hgetall(record_key(job_id))).items()}


async def credit(redis: Redis, tenant: str, balance: int) -> None:
    await redis.hset(credits_key(tenant), mapping={"balance": balance, "reserved": 0, "spent": 0})


# -- submit -------------------------------------------------------------------------------------


async def test_submit_creates_the_record_and_makes_the_job_due(store: Store, bare_redis: Redis):
    job = new_job(est_tokens=42, routed_by="auto: cheapest", cache_key="abc", cache_ttl=30, priority="high")
    assert await submit(store, job) == SubmitReply.CREATED
    rec = await fields_of(bare_redis, "t/j1")
    assert rec["status"] == "queued" and rec["tenant"] == "t" and rec["est_tokens"] == "42"
    assert rec["attempts"] == "[]" and "request" not in rec
    # the request is a key of its own, so the record stays a compact listpack
    assert await bare_redis.get(request_key("t/j1")) == REQUEST
    assert await bare_redis.object("encoding", record_key("t/j1")) == b"listpack"
    assert (rec["routed_by"], rec["cache_key"], rec["cache_ttl"], rec["priority"]) == (
        "auto: cheapest",
        "t:abc",  # a cache is per tenant
        "30",
        "high",
    )
    assert "metered" not in rec  # a tenant without credits is not metered
    # due in its tenant's ready queue of its band, the tenant in the band's active set
    assert await bare_redis.zscore(ready_key(QUEUE, "high", "t"), "t/j1") == int(job.created_at * 1000)
    assert await bare_redis.zscore(active_tenants_key(QUEUE, "high"), "t") == -NEWCOMER_LEAD  # a short lead
    assert 100 < await bare_redis.ttl(record_key("t/j1")) <= 100 + 61  # the record TTL past the deadline
    assert 100 < await bare_redis.ttl(request_key("t/j1")) <= 100 + 61
    assert await bare_redis.get(active_key("t")) == b"1"


async def test_submit_writes_times_and_numbers_as_python_spells_them(store: Store, bare_redis: Redis):
    # the jobs' arguments travel as one msgpack array of strings: a float sent as a number would
    # come out of Lua as 1764846000.0999999, an integer as a double (and past 2^53, rounded)
    now = 1764846000.1
    job = new_job(now=now, est_tokens=2**53 + 1, reserve_nanos=0, cache_key="k", cache_ttl=7, hedge=0)
    assert await submit(store, job) == SubmitReply.CREATED
    rec = await fields_of(bare_redis, "t/j1")
    assert (rec["created_at"], rec["deadline_at"]) == (repr(now), repr(now + 60))
    assert (rec["est_tokens"], rec["cache_ttl"], rec["hedge"]) == (str(2**53 + 1), "7", "0")


async def test_submit_writes_the_same_record_however_it_builds_it(store: Store, bare_redis: Redis):
    # a plain job's fields go in one HSET as they come, a job with more fields through a table
    await credit(bare_redis, "paid", 10_000)
    plain = new_job("p", tenant="free", now=1.5, est_tokens=9)
    metered = new_job("m", tenant="paid", now=1.5, est_tokens=9, reserve_nanos=70)
    extras = new_job("x", tenant="paid", now=1.5, est_tokens=9, reserve_nanos=70, metadata={"k": "v"})
    extras.hedge = 5
    assert (
        await store.submit_batch([store.submit_command(j) for j in (plain, metered, extras)])
        == [SubmitReply.CREATED] * 3
    )
    base = {
        "digest": plain.digest,
        "status": "queued",
        "attempts": "[]",
        "route": '["m"]',
        "model_requested": "m",
        "created_at": "1.5",
        "deadline_at": "61.5",
        "est_tokens": "9",
    }
    assert await fields_of(bare_redis, "free/p") == {**base, "tenant": "free"}
    paid = {**base, "tenant": "paid", "metered": "1", "reserved": "70"}
    assert await fields_of(bare_redis, "paid/m") == paid
    assert await fields_of(bare_redis, "paid/x") == {**paid, "metadata": '{"k":"v"}', "hedge": "5"}


async def test_submit_is_idempotent_per_tenant_and_body(store: Store, bare_redis: Redis):
    assert await submit(store, new_job()) == SubmitReply.CREATED
    assert await submit(store, new_job()) == SubmitReply.EXISTS
    assert await bare_redis.get(active_key("t")) == b"1"  # counted once
    other_body = new_job(request=REQUEST.replace(b"hi", b"ho"))
    assert await submit(store, other_body) == SubmitReply.CONFLICT
    # another tenant's id is a free one: its own job, never a conflict (nor an oracle of the first)
    assert await submit(store, new_job(tenant="someone-else")) == SubmitReply.CREATED


async def test_submit_reserves_from_a_metered_tenant_and_refuses_past_its_credit(store, bare_redis):
    await credit(bare_redis, "t", 1000)
    assert await submit(store, new_job("a", reserve_nanos=600)) == SubmitReply.CREATED
    assert await bare_redis.hget(credits_key("t"), "reserved") == b"600"
    assert (await fields_of(bare_redis, "t/a"))["reserved"] == "600"
    assert await submit(store, new_job("b", reserve_nanos=600)) == SubmitReply.NO_CREDIT
    assert await bare_redis.exists(record_key("t/b")) == 0
    assert await submit(store, new_job("a", reserve_nanos=600)) == SubmitReply.EXISTS  # not reserved again
    assert await bare_redis.hget(credits_key("t"), "reserved") == b"600"


async def test_submit_reserves_a_groups_jobs_one_after_another(store: Store, bare_redis: Redis):
    # one script call reads a tenant's credit once and writes what its jobs hold once: each job
    # still sees the credit the jobs before it took, a refused one holds nothing
    await credit(bare_redis, "t", 1000)
    await bare_redis.hset(credits_key("t"), "reserved", 200)  # held by a job of an earlier call
    await credit(bare_redis, "u", 200)
    amounts = [("t", 300), ("u", 150), ("t", 300), ("t", 300), ("u", 100), ("t", 50)]
    jobs = [new_job(f"j{i}", tenant=t, reserve_nanos=n) for i, (t, n) in enumerate(amounts)]
    replies = await store.submit_batch([store.submit_command(j) for j in jobs])
    C, N = SubmitReply.CREATED, SubmitReply.NO_CREDIT
    assert replies == [C, C, C, N, N, C]
    assert await bare_redis.hget(credits_key("t"), "reserved") == b"850"  # 200 + 300 + 300 + 50
    assert await bare_redis.hget(credits_key("u"), "reserved") == b"150"
    assert (await fields_of(bare_redis, "t/j5"))["reserved"] == "50"
    assert await bare_redis.exists(record_key("t/j3"), record_key("u/j4")) == 0


async def test_submit_refuses_a_tenant_at_its_queue_limit(store: Store, bare_redis: Redis):
    assert await submit(store, new_job("a"), max_queued=2) == SubmitReply.CREATED
    assert await submit(store, new_job("b"), max_queued=2) == SubmitReply.CREATED
    assert await submit(store, new_job("c"), max_queued=2) == SubmitReply.QUEUE_FULL
    assert await submit(store, new_job("c", tenant="u"), max_queued=2) == SubmitReply.CREATED


async def test_a_group_of_jobs_in_one_call_is_each_job_on_its_own(store: Store, bare_redis: Redis):
    """Jobs go to Redis a group to a script call: each still gets its own outcome, in order, and the
    credit, the queue limit and idempotency count the jobs of the same call before it."""
    await credit(bare_redis, "t", 1000)
    await submit(store, new_job("old", tenant="u"))
    jobs = [
        new_job("a", reserve_nanos=600),
        new_job("a", reserve_nanos=600),  # the same job twice in one call: created once
        new_job("b", reserve_nanos=600),  # past the credit the job before it reserved
        new_job("c", reserve_nanos=400),
        new_job("old", tenant="u", request=REQUEST.replace(b"hi", b"ho")),  # another body: a conflict
        new_job("x", tenant="u"),
        new_job("y", tenant="u"),  # u has "old" and "x" queued: its limit of 2
    ]
    replies = await store.submit_batch([store.submit_command(j, max_queued=2) for j in jobs])
    assert replies == [
        SubmitReply.CREATED,
        SubmitReply.EXISTS,
        SubmitReply.NO_CREDIT,
        SubmitReply.CREATED,
        SubmitReply.CONFLICT,
        SubmitReply.CREATED,
        SubmitReply.QUEUE_FULL,
    ]
    assert await bare_redis.hget(credits_key("t"), "reserved") == b"1000"
    assert (await bare_redis.get(active_key("t")), await bare_redis.get(active_key("u"))) == (b"2", b"2")
    assert await bare_redis.exists(record_key("t/b"), request_key("t/b"), record_key("u/y")) == 0
    assert await bare_redis.zrange(ready_key(QUEUE, "normal", "t"), 0, -1) == [b"t/a", b"t/c"]
    assert await bare_redis.zrange(ready_key(QUEUE, "normal", "u"), 0, -1) == [b"u/old", b"u/x"]


async def test_a_job_that_fails_its_call_leaves_the_jobs_before_it_whole(store: Store, bare_redis: Redis):
    """A key of another type where a job's record belongs fails the call (as it failed that job's own
    call before groups), after the jobs before it got their queue entries and counts: none is left
    with a record and a reservation but no place in its queue."""
    await credit(bare_redis, "t", 1000)
    await bare_redis.set(record_key("t/junk"), "not a hash")
    jobs = [new_job("a", reserve_nanos=100), new_job("b", reserve_nanos=100), new_job("junk"), new_job("c")]
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await store.submit_batch([store.submit_command(j) for j in jobs])
    assert await bare_redis.zrange(ready_key(QUEUE, "normal", "t"), 0, -1) == [b"t/a", b"t/b"]
    assert await bare_redis.get(active_key("t")) == b"2"
    assert await bare_redis.hget(credits_key("t"), "reserved") == b"200"
    assert await bare_redis.exists(record_key("t/c"), request_key("t/c")) == 0
    # the connection was dropped mid-reply; the next submit works
    assert await submit(store, new_job("c")) == SubmitReply.CREATED


async def test_a_bulk_submit_spans_calls_and_queues(store: Store, bare_redis: Redis):
    n = 2 * SUBMIT_GROUP + 3
    batch = [store.submit_command(new_job(f"j{i}")) for i in range(n)]
    batch.append(store.submit_command(new_job("other"), "q2"))
    batch.append(store.submit_command(new_job("limited"), max_queued=1))  # t has n: refused
    replies = await store.submit_batch(batch)
    assert replies == [SubmitReply.CREATED] * (n + 1) + [SubmitReply.QUEUE_FULL]
    assert await bare_redis.zcard(ready_key(QUEUE, "normal", "t")) == n
    assert await bare_redis.zrange(ready_key("q2", "normal", "t"), 0, -1) == [b"t/other"]
    assert await bare_redis.get(active_key("t")) == str(n + 1).encode()


# -- start --------------------------------------------------------------------------------------


async def test_start_marks_running_and_reads_what_the_worker_needs(store: Store, bare_redis: Redis):
    assert await store.start("t/missing", "w1", 1.0) is None
    await submit(store, new_job(est_tokens=7))
    first = await store.start("t/j1", "w1", 123.0)
    assert isinstance(first, Started)
    assert (first.previous_status, first.runs, first.passes, first.est_tokens) == ("queued", 1, 0, 7)
    assert first.request == REQUEST and orjson.loads(first.route) == ["m"]
    assert not first.cached and first.parent is None and not first.cancel_requested
    assert abs(first.redis_now_ms / 1000 - time.time()) < 5
    rec = await fields_of(bare_redis, "t/j1")
    assert (rec["status"], rec["worker"], rec["started_at"]) == ("running", "w1", "123.0")
    call = {"provider": "p", "model": "m", "upstream_model": "um", "started_at": 122.5}
    await bare_redis.hset(record_key("t/j1"), "inflight", orjson.dumps(call))
    second = await store.start("t/j1", "w2", 456.0)
    assert isinstance(second, Started)
    assert (second.previous_status, second.previous_worker, second.runs) == ("running", "w1", 2)
    # the run its worker never ended is in the record from now on, as the call it was making
    (attempt,) = orjson.loads(second.attempts)
    assert attempt == {
        "provider": "p",
        "model": "m",
        "upstream_model": "um",
        "outcome": "interrupted",
        "worker": "w1",
        "breaker": None,
        "error_code": None,
        "http_status": None,
        "latency_ms": None,
        "started_at": 122.5,
    }
    assert second.lost_runs == 1 and orjson.loads((await fields_of(bare_redis, "t/j1"))["attempts"]) == [
        attempt
    ]
    assert "inflight" not in await fields_of(bare_redis, "t/j1")
    assert (await fields_of(bare_redis, "t/j1"))["started_at"] == "123.0"  # the first start stays


async def test_a_start_its_own_worker_repeats_after_a_lost_reply_is_not_a_lost_run(store, bare_redis):
    await submit(store, new_job())
    await store.start("t/j1", "w1", 1.0)  # its reply lost: the worker never ran the job
    again = await store.start("t/j1", "w1", 2.0)  # that worker (the same process) starts it again
    assert isinstance(again, Started)
    assert (again.previous_status, again.runs, again.lost_runs) == ("running", 2, 0)
    assert orjson.loads(again.attempts or b"[]") == []
    # another worker meeting it running: its worker is gone with the job, a lost run
    other = await store.start("t/j1", "w2", 3.0)
    assert isinstance(other, Started) and other.lost_runs == 1 and len(orjson.loads(other.attempts)) == 1


async def test_start_of_an_ended_job_returns_its_status(store: Store, bare_redis: Redis):
    await submit(store, new_job())
    await bare_redis.hset(record_key("t/j1"), "status", "succeeded")
    assert await store.start("t/j1", "w", 1.0) == "succeeded"
    assert (await fields_of(bare_redis, "t/j1"))["status"] == "succeeded"


async def test_start_admits_the_first_deployment_of_the_route(store: Store, bare_redis: Redis):
    await bare_redis.hset(routing_key("r"), "m", "dep-a|0|0|1;dep-b|0|0|1")
    await submit(store, new_job())
    started = await store.start("t/j1", "w", 1.0, routing_key("r"))
    assert isinstance(started, Started)
    assert {d: a.state for d, a in started.admissions.items()} == {
        "dep-a": AdmissionState.OK,
        "dep-b": AdmissionState.UNCHECKED,
    }
    # dep-a's breaker is open: it is skipped with its retry time, and dep-b admitted instead
    until = int(time.time() * 1000) + 60_000
    await bare_redis.hset("llm-router:sick", "dep-a", f"open|{until}")
    again = await store.start("t/j1", "w", 1.0, routing_key("r"))
    assert isinstance(again, Started)
    assert again.admissions["dep-a"].state == AdmissionState.OPEN
    assert again.admissions["dep-a"].until_ms == until
    assert again.admissions["dep-b"].state == AdmissionState.OK


async def test_start_serves_a_cached_answer_or_a_pending_cancel_without_admission(store, bare_redis):
    await bare_redis.hset(routing_key("r"), "m", "dep-a|0|0|1")
    await submit(store, new_job("c", cache_key="k", cache_ttl=10))
    await bare_redis.set("llm-router:cache:t:k", b'{"answer":1}')
    cached = await store.start("t/c", "w", 1.0, routing_key("r"))
    assert isinstance(cached, Started) and cached.cached == b'{"answer":1}' and cached.admissions == {}
    await submit(store, new_job("x"))
    await bare_redis.hset(record_key("t/x"), "cancel_requested", 1)
    held = await store.start("t/x", "w", 1.0, routing_key("r"))
    assert isinstance(held, Started) and held.cancel_requested and held.admissions == {}


# -- finish -------------------------------------------------------------------------------------

SUCCEEDED = {"status": "succeeded", "finished_at": 2.0, "response": {"id": "r"}, "model": "m"}


async def test_finish_writes_once_and_settles_once(store: Store, bare_redis: Redis):
    await credit(bare_redis, "t", 10_000)
    await submit(store, new_job(reserve_nanos=5_000))
    settle = Settlement(cost_nanos=1_234, model="m", prompt_tokens=10, completion_tokens=20)
    done = await store.finish("t/j1", SUCCEEDED, settlement=settle)
    assert done.reply == FinishReply.WRITTEN and done.transitions == []
    ledger = {k.decode(): int(v) for k, v in (await bare_redis.hgetall(credits_key("t"))).items()}
    assert ledger == {"balance": 10_000 - 1_234, "reserved": 0, "spent": 1_234}
    rec = await fields_of(bare_redis, "t/j1")
    assert rec["status"] == "succeeded" and rec["credits_remaining"] == str(10_000 - 1_234)
    assert await bare_redis.get(active_key("t")) == b"0"
    day = int(time.time() // 86400)
    usage = {k.decode(): int(v) for k, v in (await bare_redis.hgetall(usage_key(day))).items()}
    assert usage == {"t|m|jobs": 1, "t|m|prompt": 10, "t|m|completion": 20, "t|m|cost": 1_234}
    assert 90 < await bare_redis.ttl(record_key("t/j1")) <= 100  # kept the record TTL from the end
    # its request is a field of the ended record again (a hashtable now: a field costs less than a key)
    assert rec["request"].encode() == REQUEST and await bare_redis.exists(request_key("t/j1")) == 0
    assert (await store.get("t/j1")).request == orjson.loads(REQUEST)
    # a second run's finish (a duplicate delivery) changes nothing and charges nothing
    again = await store.finish("t/j1", {**SUCCEEDED, "model": "other"}, settlement=settle)
    assert again.reply == FinishReply.ALREADY_ENDED
    assert int(await bare_redis.hget(credits_key("t"), "spent")) == 1_234
    assert (await fields_of(bare_redis, "t/j1"))["model"] == "m"


async def test_finish_of_an_unfinished_change_neither_settles_nor_shortens_the_ttl(store, bare_redis):
    await credit(bare_redis, "t", 10_000)
    await submit(store, new_job(reserve_nanos=5_000))
    ttl = await bare_redis.ttl(record_key("t/j1"))
    done = await store.finish("t/j1", {"status": "deferred", "passes": 1})
    assert done.reply == FinishReply.WRITTEN
    assert await bare_redis.hget(credits_key("t"), "reserved") == b"5000"
    assert await bare_redis.ttl(record_key("t/j1")) >= ttl - 1
    assert (await store.finish("nope", SUCCEEDED)).reply == FinishReply.NO_RECORD


async def test_a_finish_that_releases_takes_the_job_off_its_queue_even_when_it_had_ended(store, bare_redis):
    for job in ("j1", "j2"):
        await submit(store, new_job(job))
        await bare_redis.zadd(leases_key(QUEUE), {f"t/{job}": 1})  # a worker holds it
        await bare_redis.zadd(abort_jobs_ss, {f"t/{job}": 1})  # and a cancel came as it ran
    await store.finish("t/j1", SUCCEEDED)  # without release: the end of the run does it later
    assert await bare_redis.zscore(leases_key(QUEUE), "t/j1") is not None
    assert await bare_redis.zscore(abort_jobs_ss, "t/j1") is not None
    # a duplicate run's release of a job that had ended still ends that run
    assert (await store.finish("t/j1", SUCCEEDED, release=True)).reply == FinishReply.ALREADY_ENDED
    assert (await store.finish("t/j2", SUCCEEDED, release=True)).reply == FinishReply.WRITTEN
    assert await bare_redis.zrange(leases_key(QUEUE), 0, -1) == []
    assert await bare_redis.zrange(abort_jobs_ss, 0, -1) == []


async def test_a_failed_job_releases_its_reservation_and_counts_as_failed(store, bare_redis):
    await credit(bare_redis, "t", 10_000)
    await submit(store, new_job(reserve_nanos=5_000))
    failed = {"status": "failed", "error": {"code": "x"}, "finished_at": 2.0}
    await store.finish("t/j1", failed, settlement=Settlement(0, "", 0, 0))
    assert await bare_redis.hget(credits_key("t"), "reserved") == b"0"
    assert await bare_redis.hget(credits_key("t"), "spent") == b"0"
    day = int(time.time() // 86400)
    assert await bare_redis.hget(usage_key(day), "t|m|failed") == b"1"  # the requested model's row


async def test_finish_caches_the_answer_ends_the_stream_and_notifies(store: Store, bare_redis: Redis):
    await submit(store, new_job(cache_key="k", cache_ttl=30))
    await bare_redis.xadd(stream_key("t/j1"), {"c": b"{}"})
    pubsub = bare_redis.pubsub()
    await pubsub.subscribe(ended_channel("t"))
    await pubsub.get_message(timeout=1)  # the subscription's confirmation
    await store.finish("t/j1", SUCCEEDED, settlement=Settlement(0, "m", 0, 0))
    assert orjson.loads(await bare_redis.get("llm-router:cache:t:k")) == {"id": "r"}
    assert 0 < await bare_redis.ttl("llm-router:cache:t:k") <= 30
    last = (await bare_redis.xrevrange(stream_key("t/j1"), count=1))[0][1]
    assert last == {b"end": b"succeeded"}
    message = await pubsub.get_message(timeout=2)
    assert message is not None and message["data"] == b"t/j1"
    await pubsub.aclose()


async def test_a_fallbacks_answer_is_never_cached_under_the_requested_model(store, bare_redis):
    await submit(store, new_job(cache_key="k", cache_ttl=30))
    await store.finish("t/j1", {**SUCCEEDED, "no_cache": 1}, settlement=Settlement(0, "m", 0, 0))
    assert await bare_redis.exists("llm-router:cache:t:k") == 0


async def test_the_last_side_to_end_completes_its_compare_parent(store: Store, bare_redis: Redis):
    assert await store.create_parent(
        "t/p", request=b"{}", route=["a", "b"], model_requested="compare", tenant="t",
        created_at=1.0, deadline_at=61.0, pending=2,
    )  # fmt: skip
    await submit(store, new_job("p-a", parent="p"))
    await submit(store, new_job("p-b", parent="p"))
    await store.finish("t/p-a", SUCCEEDED, settlement=Settlement(0, "a", 0, 0), summary=b'{"model":"a"}')
    assert (await fields_of(bare_redis, "t/p"))["status"] == "running"
    await store.child_refused("t/p", "p-b", {"model": "b", "status": "failed"})
    parent = await fields_of(bare_redis, "t/p")
    assert parent["status"] == "succeeded" and parent["pending"] == "0"
    assert orjson.loads(parent["child:t/p-a"]) == {"model": "a"}


# -- cancel -------------------------------------------------------------------------------------

ERROR = {"code": "cancelled", "message": "by the client"}


async def test_cancel_of_a_queued_job_ends_it_and_releases_its_reservation(store, bare_redis):
    await credit(bare_redis, "t", 10_000)
    await submit(store, new_job(reserve_nanos=5_000))
    assert await store.cancel("t/j1", ERROR) == (CancelReply.CANCELLED, None)
    assert await bare_redis.zscore(ready_key(QUEUE, "normal", "t"), "t/j1") is None
    assert await bare_redis.zscore(active_tenants_key(QUEUE, "normal"), "t") is None
    assert (await fields_of(bare_redis, "t/j1"))["status"] == "cancelled"
    assert await bare_redis.hget(credits_key("t"), "reserved") == b"0"
    assert await bare_redis.get(active_key("t")) == b"0"
    assert await store.cancel("t/j1", ERROR) == (CancelReply.ALREADY_ENDED, "cancelled")
    assert await store.cancel("nope", ERROR) == (CancelReply.NOT_FOUND, None)


async def test_cancel_of_a_held_job_hands_it_to_the_abort_set(store: Store, bare_redis: Redis):
    await submit(store, new_job())
    await bare_redis.zadd(leases_key(QUEUE), {"t/j1": 1})  # a worker claimed it
    assert await store.cancel("t/j1", ERROR) == (CancelReply.ABORTING, None)
    assert await bare_redis.zscore(abort_jobs_ss, "t/j1") is not None
    rec = await fields_of(bare_redis, "t/j1")
    assert rec["status"] == "queued" and rec["cancel_requested"] == "1"


async def test_cancel_takes_a_batch_lane_job_out_of_its_lane(store: Store, bare_redis: Redis):
    """A job parked for a provider batch leaves its deployment's pending set; one inside a provider
    batch leaves the batch's members for its gone set (a late answer is the operator's wasted spend);
    both leave the due set. A job of the same batch not cancelled stays where it is."""
    for name in ("parked", "inside", "other"):
        await submit(store, new_job(name))
        await bare_redis.zadd(LANES_DUE_KEY, {f"t/{name}": 1})
    # as the lanes' park and form scripts leave them (llm_router.lanes_lua)
    await bare_redis.hset(record_key("t/parked"), "lane_dep", "dep-x")
    await bare_redis.zadd(lane_pending_key("dep-x"), {"t/parked": 1})
    for name in ("inside", "other"):
        await bare_redis.hset(record_key(f"t/{name}"), mapping={"lane_dep": "dep-x", "lane_batch": "b1"})
        await bare_redis.hset(lane_members_key("b1"), f"t/{name}", f"t/{name}")
    assert await store.cancel("t/parked", ERROR) == (CancelReply.CANCELLED, None)
    assert await store.cancel("t/inside", ERROR) == (CancelReply.CANCELLED, None)
    assert await bare_redis.zscore(lane_pending_key("dep-x"), "t/parked") is None
    assert await bare_redis.hkeys(lane_members_key("b1")) == [b"t/other"]
    assert await bare_redis.smembers(lane_gone_key("b1")) == {b"t/inside"}
    assert await bare_redis.zrange(LANES_DUE_KEY, 0, -1) == [b"t/other"]


async def test_cancel_ends_a_job_parked_for_a_batch_before_its_worker_dropped_the_lease(
    store: Store, bare_redis: Redis
):
    """Between the park script (the job queued again, its worker let go) and the worker's end of run
    (the lease dropped), no task runs the job: an abort would never land, and the batcher would take
    the job into a provider batch and charge it. The cancel ends it at once instead."""
    await credit(bare_redis, "t", 10_000)
    await submit(store, new_job(lane="batch", reserve_nanos=5_000))
    await store.start("t/j1", "w1", 1.0)
    await bare_redis.zadd(leases_key(QUEUE), {"t/j1": 1})  # its worker's lease, not dropped yet
    assert await LaneScripts(bare_redis).park("t/j1", "dep-x", 1, "asked", 10**13) == ParkReply.PARKED
    assert await store.cancel("t/j1", ERROR) == (CancelReply.CANCELLED, None)
    rec = await fields_of(bare_redis, "t/j1")
    assert rec["status"] == "cancelled" and "cancel_requested" not in rec
    assert await bare_redis.zscore(abort_jobs_ss, "t/j1") is None
    assert await bare_redis.zscore(lane_pending_key("dep-x"), "t/j1") is None
    assert await bare_redis.hget(credits_key("t"), "reserved") == b"0"
    # a running job (its worker named in the record) is still aborted through its worker
    await submit(store, new_job("j2", lane="batch"))
    await store.start("t/j2", "w1", 1.0)
    await bare_redis.hset(record_key("t/j2"), "lane_dep", "dep-x")  # sent back from a batch earlier
    await bare_redis.zadd(leases_key(QUEUE), {"t/j2": 1})
    assert await store.cancel("t/j2", ERROR) == (CancelReply.ABORTING, None)


async def test_cancel_of_a_compare_parent_leaves_it_to_its_sides_and_it_ends_cancelled(
    store: Store, bare_redis: Redis
):
    """A compare job has no queue entry, count or reservation of its own: a cancel does not end it
    (which settled a job that never was, and lowered its tenant's count of active jobs below 0),
    but marks it; it ends, cancelled, when its last side does."""
    assert await store.create_parent(
        "t/p", request=b"{}", route=["a", "b"], model_requested="compare", tenant="t",
        created_at=1.0, deadline_at=61.0, pending=2,
    )  # fmt: skip
    await submit(store, new_job("p-0", parent="p"))
    await submit(store, new_job("p-1", parent="p"))
    assert await bare_redis.get(active_key("t")) == b"2"
    assert await store.cancel("t/p", ERROR) == (CancelReply.PARENT, None)
    parent = await fields_of(bare_redis, "t/p")
    assert parent["status"] == "running" and parent["cancel_requested"] == "1"
    assert await bare_redis.get(active_key("t")) == b"2"
    for side in ("t/p-0", "t/p-1"):
        assert await store.cancel(side, ERROR) == (CancelReply.CANCELLED, None)
    parent = await fields_of(bare_redis, "t/p")
    assert parent["status"] == "cancelled" and parent["pending"] == "0"
    assert orjson.loads(parent["error"])["code"] == "cancelled"
    assert await bare_redis.get(active_key("t")) == b"0"
    assert await store.cancel("t/p", ERROR) == (CancelReply.ALREADY_ENDED, "cancelled")


async def test_a_cancelled_compare_parent_whose_last_side_was_refused_ends_cancelled(
    store: Store, bare_redis: Redis
):
    # the child-refused script completes a parent as job_ended does: cancelled when it was asked to be
    assert await store.create_parent(
        "t/q", request=b"{}", route=["a"], model_requested="compare", tenant="t",
        created_at=1.0, deadline_at=61.0, pending=1,
    )  # fmt: skip
    assert await store.cancel("t/q", ERROR) == (CancelReply.PARENT, None)
    await store.child_refused("t/q", "q-0", {"model": "a", "status": "failed"})
    parent = await fields_of(bare_redis, "t/q")
    assert parent["status"] == "cancelled" and parent["pending"] == "0"


async def test_delete_ended_deletes_only_a_job_that_has_ended(store: Store, bare_redis: Redis):
    await submit(store, new_job())
    await store.publish("t/j1", [b'{"x":1}'], maxlen=10)
    assert await store.delete_ended("t/j1") == "queued"  # a worker may still write it: kept
    assert await bare_redis.exists(record_key("t/j1"), request_key("t/j1"), stream_key("t/j1")) == 3
    await store.finish("t/j1", SUCCEEDED)
    await bare_redis.set(request_key("t/j1"), b"{}")  # as an ended job whose request was not moved
    assert await store.delete_ended("t/j1") is None
    assert await bare_redis.exists(record_key("t/j1"), request_key("t/j1"), stream_key("t/j1")) == 0
    assert await store.delete_ended("t/j1") == "not_found"


async def test_cancel_finds_a_job_on_its_own_queue(store: Store, bare_redis: Redis):
    job = new_job(queue="interactive-q")
    await store.submit_batch([store.submit_command(job, "interactive-q")])
    assert await store.cancel("t/j1", ERROR) == (CancelReply.CANCELLED, None)
    assert await bare_redis.zscore(ready_key("interactive-q", "normal", "t"), "t/j1") is None


async def test_submit_replies_come_back_in_order_under_concurrency(store: Store):
    jobs = [new_job(f"j{i}") for i in range(50)]
    replies = await asyncio.gather(*(submit(store, j) for j in jobs), *(submit(store, j) for j in jobs))
    assert sorted(replies[:50] + replies[50:]) == sorted(
        [SubmitReply.CREATED] * 50 + [SubmitReply.EXISTS] * 50
    )


async def test_a_submit_wakes_the_queues_idle_workers_once_per_batch(store: Store, bare_redis: Redis):
    pubsub = bare_redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(f"{QUEUE}:wake")
    await pubsub.get_message(timeout=1)  # the subscription's confirmation (ignored: None)
    await store.submit_batch([store.submit_command(new_job(f"w{i}")) for i in range(5)])
    first = await pubsub.get_message(timeout=2)
    assert first is not None and first["data"] == b"1"
    assert await pubsub.get_message(timeout=0.2) is None  # one wake-up for the whole batch
    await pubsub.aclose()


# -- the ended record sent to the server that waits for the job ---------------------------------

TOOL_CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"x":"é\\u0000"}'}}
ATTEMPT = {
    "provider": "p",
    "model": "m",
    "upstream_model": "um",
    "outcome": "success",
    "worker": "w1",
    "breaker": "closed",
    "error_code": None,
    "http_status": 200,
    "latency_ms": 12.5,
    "started_at": 1.5,
}
ENDINGS = {
    "succeeded": {
        "status": "succeeded",
        "finished_at": 2.0,
        "provider": "p",
        "model": "m",
        "attempts": [ATTEMPT],
        "response": {"id": "r", "choices": [{"message": {"role": "assistant", "tool_calls": [TOOL_CALL]}}]},
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7, "cost_nanos": 9},
    },
    "failed": {
        "status": "failed",
        "finished_at": 2.0,
        "attempts": [{**ATTEMPT, "outcome": "error", "error_code": "upstream_5xx", "http_status": 500}],
        "error": {"code": "upstream_5xx", "message": "boom"},
    },
}


async def next_data(pubsub: Any, timeout: float = 2) -> bytes | None:
    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
    return None if message is None else message["data"]


@pytest.mark.parametrize("ending", ["succeeded", "failed", "cancelled"])
async def test_a_job_ends_with_its_record_sent_to_its_servers_channel(store, bare_redis, ending):
    await credit(bare_redis, "t", 10_000)  # metered: credits_remaining joins the record at its end
    channel = notify_channel("server-a")
    request = b'{"messages":[{"content":"\\u00e9\\u0000 \\ud83d\\ude00","role":"user"}],"model":"m"}'
    await submit(store, new_job(notify=channel, request=request, reserve_nanos=50))
    assert (await fields_of(bare_redis, "t/j1"))["notify"] == channel
    pubsub = bare_redis.pubsub()
    await pubsub.subscribe(channel)
    await pubsub.psubscribe(ENDED_PATTERN)
    await pubsub.get_message(timeout=1)
    await pubsub.get_message(timeout=1)  # the two confirmations
    if ending == "cancelled":  # ended while queued: its request is still a key of its own
        await store.cancel("t/j1", ERROR)
    else:
        await store.start("t/j1", "w1", 1.0)
        settle = Settlement(cost_nanos=9, model="m", prompt_tokens=3, completion_tokens=4)
        await store.finish("t/j1", ENDINGS[ending], settlement=settle)
    message = await pubsub.get_message(timeout=2)
    assert message is not None and message["channel"] == channel.encode()  # the record first
    job_id, fields = decode_ended(message["data"])
    notice = await pubsub.get_message(timeout=2)  # then the tenant's usual notice
    assert notice is not None and notice["type"] == "pmessage" and notice["data"] == b"t/j1"
    assert job_id == "t/j1"
    sent = decode_ended_record(job_id, fields)
    read = await store.get("t/j1")
    assert sent == read and sent.status == ending
    # the chat front answers a succeeded job from these fields without decoding the record: the
    # same answer, to the byte
    answer = completion_of_fields(fields)
    if ending == "succeeded":
        assert answer is not None and orjson.dumps(answer) == orjson.dumps(completion_with_usage(sent))
        assert answer["usage"]["credits_remaining"] == pytest.approx(1e-5 - 9e-9)
    else:
        assert answer is None
    assert sent.request == orjson.loads(request)
    if ending == "succeeded":
        assert sent.response["choices"][0]["message"]["tool_calls"] == [TOOL_CALL]
        assert sent.usage is not None and sent.usage.credits_remaining is not None
        assert [a.model_dump(exclude_none=True) for a in sent.attempts] == [
            {k: v for k, v in ATTEMPT.items() if v is not None}
        ]
    # the field is spent: the ended record is what it was before there was one
    assert "notify" not in await fields_of(bare_redis, "t/j1")
    await pubsub.aclose()


async def test_a_job_without_a_server_to_notify_sends_only_the_usual_notice(store, bare_redis):
    await submit(store, new_job())
    pubsub = bare_redis.pubsub()
    await pubsub.psubscribe(NOTIFY_PREFIX + "*", ENDED_PATTERN)
    await pubsub.get_message(timeout=1)
    await pubsub.get_message(timeout=1)
    await store.finish("t/j1", SUCCEEDED, settlement=Settlement(0, "m", 0, 0))
    assert await next_data(pubsub) == b"t/j1"
    assert await next_data(pubsub, timeout=0.2) is None
    await pubsub.aclose()


async def test_bulk_submits_write_no_notify_field(store: Store, bare_redis: Redis):
    jobs = [new_job(f"b{i}") for i in range(3)]
    assert all(j.optional_fields() == [] for j in jobs)  # nothing more per job than before
    await store.submit_batch([store.submit_command(j) for j in jobs])
    for i in range(3):
        assert "notify" not in await fields_of(bare_redis, f"t/b{i}")


async def test_a_record_too_large_for_a_message_is_left_to_be_read(store: Store, bare_redis: Redis):
    channel = notify_channel("server-a")
    big = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * NOTIFY_MAX_BYTES}]})
    await submit(store, new_job(notify=channel, request=big))
    pubsub = bare_redis.pubsub()
    await pubsub.psubscribe(NOTIFY_PREFIX + "*", ENDED_PATTERN)
    await pubsub.get_message(timeout=1)
    await pubsub.get_message(timeout=1)
    await store.finish("t/j1", SUCCEEDED, settlement=Settlement(0, "m", 0, 0))
    assert await next_data(pubsub) == b"t/j1"  # the plain notice only: its waiter reads the record
    assert await next_data(pubsub, timeout=0.2) is None
    assert "notify" not in await fields_of(bare_redis, "t/j1")
    await pubsub.aclose()


# -- unstart ------------------------------------------------------------------------------------

SLOTTED = Policy(
    window_ms=10_000,
    bucket_ms=1_000,
    rate_pct=50,
    min_calls=100,
    consecutive=100,
    cooldown_ms=1_000,
    max_cooldown_ms=3_000,
    probes=1,
    conc_initial=10,
    conc_max=10,
    backoff_pct=50,
    tolerance_pct=200,
    quantile_pct=90,
)


async def started_here(store: Store, redis: Redis, job_id: str = "t/j1", worker: str = "w1") -> BreakerReport:
    """A job leased to ``worker`` and started for it, holding a slot of deployment ``a``; the report
    that gives the slot back."""
    await redis.hset(routing_key("r"), "m", "fixed;a|0|0|1|10|10|1")
    await submit(store, new_job(job_id.split("/")[1]))
    # leased as a claim leases it: off its ready queue
    await redis.zrem(ready_key(QUEUE, "normal", "t"), job_id)
    await redis.zadd(leases_key(QUEUE), {job_id: int(time.time() * 1000) + 60_000})
    started = await store.start(job_id, worker, 1.0, routing_key("r"))
    assert isinstance(started, Started) and started.admissions["a"].state == AdmissionState.OK
    assert await redis.zscore(slots_key("a"), job_id) is not None
    return BreakerReport(
        deployment="a", kind=ReportKind.NEUTRAL, policy=SLOTTED, slot=True, started_ms=int(time.time() * 1000)
    )


async def test_unstart_puts_back_a_job_started_here_as_if_never_started(store: Store, bare_redis: Redis):
    slot = await started_here(store, bare_redis)
    assert await store.unstart("t/j1", QUEUE, "w1", [slot]) == UnstartReply.PUT_BACK
    fields = await fields_of(bare_redis, "t/j1")
    assert fields["status"] == "queued" and "worker" not in fields
    assert "runs" not in fields and "started_at" not in fields  # as if never started
    assert await bare_redis.zscore(slots_key("a"), "t/j1") is None  # its slot is free now
    assert await bare_redis.zscore(leases_key(QUEUE), "t/j1") is None
    assert await bare_redis.zrange(ready_key(QUEUE, "normal", "t"), 0, -1) == [b"t/j1"]
    again = await store.start("t/j1", "w2", 2.0, routing_key("r"))
    assert isinstance(again, Started) and again.previous_status == "queued" and again.lost_runs == 0


@pytest.mark.parametrize("case", ["lease lapsed", "running elsewhere"])
async def test_unstart_leaves_alone_a_job_this_worker_no_longer_holds(
    store: Store, bare_redis: Redis, case: str
):
    slot = await started_here(store, bare_redis)
    if case == "lease lapsed":
        await bare_redis.zrem(leases_key(QUEUE), "t/j1")
    else:  # its lease lapsed and another worker took it: the lease is that worker's now
        await store.start("t/j1", "w2", 2.0, routing_key("r"))
    before = await fields_of(bare_redis, "t/j1")
    assert await store.unstart("t/j1", QUEUE, "w1", [slot]) == UnstartReply.LEFT_ALONE
    assert await fields_of(bare_redis, "t/j1") == before
    assert await bare_redis.zscore(slots_key("a"), "t/j1") is not None  # the slot it holds stays
    assert (await bare_redis.zscore(leases_key(QUEUE), "t/j1") is None) == (case == "lease lapsed")
    assert await bare_redis.zcard(ready_key(QUEUE, "normal", "t")) == 0


async def test_unstart_of_a_job_that_ended_only_removes_its_lease(store: Store, bare_redis: Redis):
    slot = await started_here(store, bare_redis)
    await store.finish("t/j1", SUCCEEDED, settlement=Settlement(0, "m", 0, 0))
    assert await store.unstart("t/j1", QUEUE, "w1", [slot]) == UnstartReply.ENDED
    assert (await fields_of(bare_redis, "t/j1"))["status"] == "succeeded"
    assert await bare_redis.zscore(leases_key(QUEUE), "t/j1") is None
    assert await bare_redis.zcard(ready_key(QUEUE, "normal", "t")) == 0


def test_an_answer_from_fields_reads_numbers_and_nulls_as_the_record_does() -> None:
    base = [b"status", b"succeeded", b"route", b'["m"]', b"model_requested", b"m"]
    base += [b"created_at", b"1.0", b"deadline_at", b"2.0"]
    for usage, response in [(b'{"cost":0,"credits_remaining":5}', b"null"), (b'{"cost":1}', b'{"id":"x"}')]:
        fields = [*base, b"usage", usage, b"response", response, b'{"model":"m"}', b"t/j1"]
        answer = completion_of_fields(fields)
        assert answer is not None
        record = decode_ended_record("t/j1", fields)
        assert orjson.dumps(answer) == orjson.dumps(completion_with_usage(record))


async def test_finish_sends_the_write_before_its_caller_awaits(store: Store, bare_redis: Redis):
    # the worker waits for its record write in a shield's task: the command must be on its way to
    # Redis before that task first runs (a sync client watches the record while the loop is held)
    import redis as sync_redis

    await submit(store, new_job())
    await store.finish("t/j1", {"status": "running", "passes": 1})  # the pipeline holds its connection
    kwargs = bare_redis.connection_pool.connection_kwargs
    watcher = sync_redis.Redis(host=kwargs["host"], port=kwargs["port"], db=kwargs["db"])
    try:
        pending = store.finish("t/j1", SUCCEEDED, settlement=Settlement(0, "m", 0, 0), release=True)
        status, deadline = None, time.monotonic() + 2
        while status != b"succeeded" and time.monotonic() < deadline:
            status = watcher.hget(record_key("t/j1"), "status")
        assert status == b"succeeded"
        assert (await pending).reply == FinishReply.WRITTEN
    finally:
        watcher.close()
