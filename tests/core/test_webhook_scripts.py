"""The Lua of webhook deliveries on its own against the real redis-server: a job's end makes its
delivery due in the same step (``job_ended``), a batch's end too (``UPDATE_LUA``), the claim leases
what is due and reads what the body needs, and a replay is a delivery of its own."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from llm_router.keys import WEBHOOKS_DUE_KEY, WEBHOOKS_RETRY_KEY, batch_key, record_key
from llm_router.store import NewJob, Settlement, Store
from llm_router.testing.jobs import new_job as a_job
from llm_router.webhooks import spec
from llm_router.webhooks.events import JOB_FIELDS
from llm_router.webhooks.outbox import (
    BATCH,
    JOB,
    Outbox,
    decode_claim,
    ended_commands,
    log_field,
    retry_commands,
)
from producer.http.batch_runner import UPDATE_LUA

REQUEST = b'{"messages":[{"content":"hi","role":"user"}],"model":"m"}'
HOOK = spec.encode("https://hooks.example.com/x", ["response"])


def new_job(job_id: str, webhook: bytes | None) -> NewJob:
    return a_job(job_id, webhook=webhook)


@pytest.fixture
def store(bare_redis: Redis) -> Store:
    return Store(bare_redis, queue_name="q", record_ttl_s=100)


async def _finish(store: Store, job_id: str, status: str) -> None:
    fields: dict[str, Any] = {"status": status, "finished_at": time.time(), "model": "m", "provider": "p"}
    if status == "succeeded":
        fields["response"] = {"choices": [{"message": {"content": "hello"}}]}
        fields["usage"] = {"prompt_tokens": 3, "completion_tokens": 2, "cost": 1e-06, "cost_nanos": 1000}
    await store.finish(job_id, fields, settlement=Settlement(1000, "m", 3, 2))


async def _cancel(store: Store, job_id: str, _status: str) -> None:
    await store.cancel(job_id, {"code": "cancelled"})


# (case, webhook field at submit, how the job ends, due afterwards)
END_CASES = [
    ("succeeded with a webhook", HOOK, (_finish, "succeeded"), True),
    ("failed with a webhook", HOOK, (_finish, "failed"), True),
    ("cancelled while queued, with a webhook", HOOK, (_cancel, ""), True),
    ("succeeded without a webhook", None, (_finish, "succeeded"), False),
    ("webhook: false (b'')", b"", (_finish, "succeeded"), False),
    ("still running: not ended", HOOK, None, False),
]


@pytest.mark.parametrize(("webhook", "end", "due"), [c[1:] for c in END_CASES], ids=[c[0] for c in END_CASES])
async def test_a_job_end_makes_its_delivery_due_in_the_same_step(
    store: Store, bare_redis: Redis, webhook: bytes | None, end: Any, due: bool
) -> None:
    (created,) = await store.submit_batch([store.submit_command(new_job("j1", webhook))])
    assert created == 1
    before = await bare_redis.time()
    if end is not None:
        await end[0](store, "t/j1", end[1])
    score = await bare_redis.zscore(WEBHOOKS_DUE_KEY, "j|t/j1")
    assert (score is not None) == due
    if due:
        assert score >= before[0] * 1000 + before[1] // 1000  # due now, on Redis' clock
        # ending it again changes nothing: the job settled once, its delivery is due once
        await _finish(store, "t/j1", "failed")
        assert await bare_redis.zscore(WEBHOOKS_DUE_KEY, "j|t/j1") == score
        assert await bare_redis.zcard(WEBHOOKS_DUE_KEY) == 1


# (case, batch has a webhook, update ends the batch, due afterwards)
BATCH_CASES = [
    ("ends, with a webhook", True, True, True),
    ("ends, without one", False, True, False),
    ("an update that does not end it", True, False, False),
]


@pytest.mark.parametrize(
    ("webhook", "ends", "due"), [c[1:] for c in BATCH_CASES], ids=[c[0] for c in BATCH_CASES]
)
async def test_a_batch_end_makes_its_delivery_due_in_the_same_step(
    bare_redis: Redis, webhook: bool, ends: bool, due: bool
) -> None:
    batch_id = "batch_" + "0" * 32
    await bare_redis.hset(batch_key(batch_id), mapping={"status": "in_progress", "tenant": "t"})
    if webhook:
        await bare_redis.hset(batch_key(batch_id), "webhook", spec.encode("https://h.example.com"))
    update = bare_redis.register_script(UPDATE_LUA)
    keys = [batch_key(batch_id), "active", batch_key(batch_id) + ":work", WEBHOOKS_DUE_KEY]
    args = ["in_progress", 100 if ends else "", batch_id, "status", "completed" if ends else "in_progress"]
    assert await update(keys=keys, args=args) == 1
    assert (await bare_redis.zscore(WEBHOOKS_DUE_KEY, f"b|{batch_id}") is not None) == due


async def test_the_claim_leases_what_is_due_and_reads_its_fields(store: Store, bare_redis: Redis) -> None:
    for job_id in ("a", "b", "c"):
        await store.submit_batch([store.submit_command(new_job(job_id, HOOK))])
        await _finish(store, f"t/{job_id}", "succeeded")
    await bare_redis.zadd(WEBHOOKS_DUE_KEY, {"j|t/c": int(time.time() * 1000) + 60_000})  # due later
    await bare_redis.zadd(WEBHOOKS_DUE_KEY, {"j|t/gone": 1})  # its record expired
    await bare_redis.hset(WEBHOOKS_RETRY_KEY, "j|t/b", "2|1234")
    outbox = Outbox(bare_redis)

    now, claimed = await outbox.claim(10, lease_ms=5000)
    by = {c.member: c for c in claimed}
    assert set(by) == {"j|t/a", "j|t/b", "j|t/gone"}
    a = by["j|t/a"]
    assert (a.kind, a.ref, a.delivery, a.attempts, a.since_ms) == (JOB, "t/a", 0, 0, None)
    fields = dict(zip(JOB_FIELDS, a.fields, strict=True))
    assert fields["status"] == b"succeeded" and fields["webhook"] == HOOK and fields["tenant"] == b"t"
    assert orjson.loads(fields["response"])["choices"][0]["message"]["content"] == "hello"
    assert (by["j|t/b"].attempts, by["j|t/b"].since_ms) == (2, 1234)
    assert all(f is None for f in by["j|t/gone"].fields)
    for member in by:  # leased: due again only if nobody ends them within the lease
        assert await bare_redis.zscore(WEBHOOKS_DUE_KEY, member) == now + 5000
    assert (await outbox.claim(10, lease_ms=5000))[1] == []

    _, limited = await outbox.claim(0, 1)
    assert limited == []


async def test_outcomes_end_retry_and_log_a_delivery(store: Store, bare_redis: Redis) -> None:
    await store.submit_batch([store.submit_command(new_job("a", HOOK))])
    await _finish(store, "t/a", "succeeded")
    outbox = Outbox(bare_redis)
    _, (c,) = await outbox.claim(10, 5000)

    failed = orjson.dumps({"at": 100.5, "delivery": 0, "attempt": 1, "status": 500, "outcome": "retrying"})
    for cmd in retry_commands(c, 42, 1, 99, failed):
        await bare_redis.execute_command(*cmd)
    assert await bare_redis.zscore(WEBHOOKS_DUE_KEY, "j|t/a") == 42
    assert await bare_redis.hget(WEBHOOKS_RETRY_KEY, "j|t/a") == b"1|99"
    assert await bare_redis.hget(record_key("t/a"), log_field(100500, 0, 1)) == failed

    _, (c,) = await outbox.claim(10, 5000)
    assert (c.attempts, c.since_ms) == (1, 99)
    ok = orjson.dumps({"at": 101.0, "delivery": 0, "attempt": 2, "status": 200, "outcome": "delivered"})
    for cmd in ended_commands(c, ok):
        await bare_redis.execute_command(*cmd)
    assert await bare_redis.zscore(WEBHOOKS_DUE_KEY, "j|t/a") is None
    assert await bare_redis.hexists(WEBHOOKS_RETRY_KEY, "j|t/a") == 0

    log = await outbox.log(JOB, "t/a")
    assert log is not None
    assert (log.state, log.event, log.url, log.include) == (
        "delivered",
        "job.succeeded",
        "https://hooks.example.com/x",
        ["response"],
    )
    assert [a["status"] for a in log.attempts] == [500, 200]


async def test_a_replay_is_a_delivery_of_its_own(store: Store, bare_redis: Redis) -> None:
    outbox = Outbox(bare_redis)
    await store.submit_batch([store.submit_command(new_job("hooked", HOOK))])
    await store.submit_batch([store.submit_command(new_job("plain", None))])
    with pytest.raises(Exception, match="not ended"):
        await outbox.replay(JOB, "t/hooked", "hooked")
    await _finish(store, "t/hooked", "succeeded")
    await _finish(store, "t/plain", "succeeded")
    with pytest.raises(Exception, match="no webhook"):
        await outbox.replay(JOB, "t/plain", "plain")
    with pytest.raises(Exception, match="unknown or expired"):
        await outbox.replay(JOB, "t/nothing", "nothing")
    with pytest.raises(Exception, match="unknown or expired"):
        await outbox.replay(BATCH, "batch_x", "batch_x")

    assert await outbox.replay(JOB, "t/hooked", "hooked") == "j|t/hooked|r1"
    assert await outbox.replay(JOB, "t/hooked", "hooked") == "j|t/hooked|r2"
    members = [m.decode() for m in await bare_redis.zrange(WEBHOOKS_DUE_KEY, 0, -1)]
    assert sorted(members) == ["j|t/hooked", "j|t/hooked|r1", "j|t/hooked|r2"]
    state = (await bare_redis.hget(WEBHOOKS_RETRY_KEY, "j|t/hooked|r1")).decode()
    assert state.startswith("0|")  # no attempt yet, its own 24 hours from now
    _, claimed = await outbox.claim(10, 1000)
    replays = {c.member: c for c in claimed}
    assert replays["j|t/hooked|r2"].delivery == 2 and replays["j|t/hooked|r2"].ref == "t/hooked"


def test_a_claim_reply_decodes_into_typed_deliveries() -> None:
    now, claimed = decode_claim([7, b"b|batch_1|r3", b"4|55", [b"completed"]])
    assert now == 7
    (c,) = claimed
    assert (c.kind, c.ref, c.delivery, c.attempts, c.since_ms, c.key) == (
        BATCH,
        "batch_1",
        3,
        4,
        55,
        batch_key("batch_1"),
    )
