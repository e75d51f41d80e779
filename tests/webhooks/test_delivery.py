"""Jobs tell a real receiver that they ended: signed (verified with ``standardwebhooks``), at least
once, retried, disabled by a 410, replayed with the same ``webhook-id``, logged per attempt, and
carrying nothing but the job's own summary. The system runs as processes (``llm-router serve`` and a
worker, which delivers) on a Redis of their own."""

from __future__ import annotations

import itertools
import time
import uuid
from typing import Any

import aiohttp
import orjson

from config.settings import Settings
from llm_router.keys import WEBHOOKS_DUE_KEY, scoped_id
from llm_router.testing.sim_env import SIM_KEYS
from producer.producer import Producer

from .conftest import HANG, MASTER_KEY, Receiver, System, job, secret_of, settings_of


def tenant() -> str:
    return f"hooks-{uuid.uuid4().hex[:8]}"


async def http_log(system: System, tenant: str, job_id: str) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {await system.key_for(tenant)}"}
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{system.url}/v1/jobs/{job_id}/webhooks", headers=headers) as r,
    ):
        return r.status, await r.json()


async def settled(system: System, tenant: str, job_id: str, until: Any, state: str = "delivered") -> dict:
    """The job's delivery log once it reads ``state`` and nothing of it is due any more."""

    async def check() -> dict | None:
        status, log = await http_log(system, tenant, job_id)
        assert status == 200, log
        return log if log["state"] == state else None

    return await until(check, timeout=15, what=f"{job_id}'s webhook to be {state}")


async def test_a_job_is_delivered_once_signed_with_its_summary_and_response(
    system: System, receiver: Receiver, until
) -> None:
    t = tenant()
    hook = {"url": receiver.url("once"), "include": ["response"]}
    sub = await system.producer.submit(job("hello there", hook, metadata={"row": 7}), tenant=t)
    log = await settled(system, t, sub.job_id, until)
    record = await system.producer.get(sub.job_id, tenant=t)
    assert await system.redis.zcard(WEBHOOKS_DUE_KEY) == 0  # nothing left that could come again

    (call,) = receiver.calls["once"]
    payload = call.verified(secret_of(t))
    assert payload["type"] == "job.succeeded" and payload["timestamp"].endswith("Z")
    data = payload["data"]
    assert (data["object"], data["id"], data["status"]) == ("job", sub.job_id, "succeeded")
    assert (data["model"], data["provider"]) == (record.model, record.provider)
    assert data["cost"] == record.usage.cost and data["usage"]["cost_nanos"] == record.usage.cost_nanos
    assert data["response"] == record.response and data["metadata"] == {"row": 7}
    assert (
        call.headers["webhook-id"] == log["webhook_id"] and call.headers["Content-Type"] == "application/json"
    )
    assert abs(int(call.headers["webhook-timestamp"]) - time.time()) < 5
    assert call.at - (record.finished_at or 0) < 2  # told within moments of the end

    assert (log["url"], log["include"], log["event"]) == (hook["url"], ["response"], "job.succeeded")
    (attempt,) = log["attempts"]
    assert (attempt["status"], attempt["outcome"], attempt["attempt"], attempt["delivery"]) == (
        200,
        "delivered",
        1,
        0,
    )
    assert attempt["latency_ms"] > 0 and attempt["error"] is None
    assert record.webhook == {"url": hook["url"], "include": ["response"]}  # the record says where


async def test_three_500s_then_a_200_is_redelivered_until_it_lands(
    system: System, receiver: Receiver, until
) -> None:
    t = tenant()
    receiver.plan("flaky", 500, 500, 500)
    sub = await system.producer.submit(job("flaky", {"url": receiver.url("flaky")}), tenant=t)
    log = await settled(system, t, sub.job_id, until)

    calls = receiver.calls["flaky"]
    assert [c.status for c in calls] == [500, 500, 500, 200]
    assert len({c.headers["webhook-id"] for c in calls}) == 1  # one message, four attempts
    assert len({c.body for c in calls}) == 1
    assert all(c.verifies(secret_of(t)) for c in calls)
    gaps = [b.at - a.at for a, b in itertools.pairwise(calls)]
    assert all(g >= 0.04 for g in gaps), gaps  # backoff (0.1 s doubling, half to all of it)
    assert [(a["attempt"], a["status"], a["outcome"]) for a in log["attempts"]] == [
        (1, 500, "retrying"),
        (2, 500, "retrying"),
        (3, 500, "retrying"),
        (4, 200, "delivered"),
    ]
    assert all(a["next_attempt_at"] for a in log["attempts"][:3])
    assert log["attempts"][0]["error"] == "planned 500"  # the receiver's own words, kept short


async def test_a_hanging_receiver_holds_no_job_slot_and_delays_no_other_tenant(
    system: System, receiver: Receiver, until
) -> None:
    slow, fast = tenant(), tenant()
    receiver.plan("slow", *[HANG] * 40)
    jobs = [job(f"slow {i}", {"url": receiver.url("slow")}) for i in range(40)]
    subs = await system.producer.submit_many(jobs, tenant=slow)
    records = await system.producer.wait_many(subs, timeout=15)  # every job ends: no slot is held
    assert all(r.status == "succeeded" for r in records)
    await until(lambda: len(receiver.calls["slow"]) >= 16, timeout=5, what="the slow endpoint's attempts")

    started = time.monotonic()
    other = await system.producer.submit(job("fast", {"url": receiver.url("fast")}), tenant=fast)
    await settled(system, fast, other.job_id, until)
    fast_s = time.monotonic() - started
    # its concurrency (16) in flight; the other 24 wait in the deliverer's memory, holding nothing
    assert len(receiver.calls["slow"]) == 16
    receiver.release()
    for sub in subs:
        await settled(system, slow, sub.job_id, until)  # type: ignore[union-attr]
    assert fast_s < 1.0, fast_s


async def test_a_410_disables_the_endpoint_for_its_tenant_until_enabled(
    system: System, receiver: Receiver, until
) -> None:
    t, other = tenant(), tenant()
    receiver.plan("gone", 410)
    url = receiver.url("gone")
    first = await system.producer.submit(job("first", {"url": url}), tenant=t)
    log = await settled(system, t, first.job_id, until, "disabled")
    assert [(a["status"], a["outcome"]) for a in log["attempts"]] == [(410, "disabled")]

    second = await system.producer.submit(job("second", {"url": url}), tenant=t)
    log = await settled(system, t, second.job_id, until, "disabled")
    assert len(receiver.calls["gone"]) == 1  # not attempted: the endpoint is disabled
    assert log["attempts"][0]["status"] is None and "410" in log["attempts"][0]["error"]
    shown = system.cli("webhooks", "show", t, "--json")
    assert url in orjson.loads(shown.stdout)["disabled"], shown.stderr

    theirs = await system.producer.submit(job("theirs", {"url": url}), tenant=other)
    await settled(system, other, theirs.job_id, until)  # another tenant's endpoint of the same URL

    refused = system.cli("webhooks", "replay", second.job_id, "--tenant", t)
    assert refused.returncode == 1 and "webhooks enable" in refused.stderr
    assert system.cli("webhooks", "enable", t, url).returncode == 0
    replayed = system.cli("webhooks", "replay", second.job_id, "--tenant", t)
    assert replayed.returncode == 0, replayed.stderr
    await settled(system, t, second.job_id, until)
    assert [c.status for c in receiver.calls["gone"]] == [410, 200, 200]


async def test_a_replay_delivers_again_with_the_same_webhook_id(
    system: System, receiver: Receiver, until
) -> None:
    t = tenant()
    sub = await system.producer.submit(job("replay me", {"url": receiver.url("replay")}), tenant=t)
    first = await settled(system, t, sub.job_id, until)

    res = system.cli("webhooks", "replay", sub.job_id, "--tenant", t)
    assert res.returncode == 0, res.stderr
    assert first["webhook_id"] in res.stdout
    await until(lambda: len(receiver.calls["replay"]) == 2, timeout=10, what="the replay")
    log = await settled(system, t, sub.job_id, until)

    original, again = receiver.calls["replay"]
    assert again.headers["webhook-id"] == original.headers["webhook-id"] == first["webhook_id"]
    assert again.body == original.body and again.verifies(secret_of(t))
    assert [(a["delivery"], a["outcome"]) for a in log["attempts"]] == [(0, "delivered"), (1, "delivered")]

    shown = system.cli("webhooks", "log", sub.job_id, "--tenant", t)
    assert shown.returncode == 0 and "delivered" in shown.stdout and "replay 1" in shown.stdout
    assert system.cli("webhooks", "replay", "no-such-job", "--tenant", t).returncode == 1


async def test_the_log_is_the_tenants_own(system: System, receiver: Receiver, until) -> None:
    t, other = tenant(), tenant()
    headers = {"Authorization": f"Bearer {await system.key_for(t)}"}
    async with (  # submitted over HTTP this time: /v1/jobs carries the key like every front
        aiohttp.ClientSession() as s,
        s.post(
            f"{system.url}/v1/jobs", json=job("mine", {"url": receiver.url("mine")}), headers=headers
        ) as r,
    ):
        assert r.status == 201, await r.text()
        job_id = (await r.json())["id"]
    await settled(system, t, job_id, until)
    assert receiver.calls["mine"][0].verified(secret_of(t))["data"]["id"] == job_id
    status, body = await http_log(system, other, job_id)
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = await http_log(system, t, "no-such-job")
    assert status == 404 and body["error"]["code"] == "not_found"
    plain = await system.producer.submit(job("no webhook"), tenant=t)
    await system.producer.wait(plain.job_id, tenant=t, timeout=10)
    status, body = await http_log(system, t, plain.job_id)
    assert status == 200 and (body["state"], body["url"], body["attempts"]) == ("none", None, [])


async def test_deliveries_carry_no_key_secret_or_other_tenants_data(
    system: System, receiver: Receiver, until, sim
) -> None:
    mine, theirs = tenant(), tenant()
    marker = f"THEIRS-{uuid.uuid4().hex}"
    await sim.faults({"model": "gpt-4o", "kind": "status", "status": 400})  # refused upstream: an error
    try:
        failing = await system.producer.submit(
            job(
                "fails", {"url": receiver.url("mine"), "include": ["response"]}, fallbacks=[], model="gpt-4o"
            ),
            tenant=mine,
        )
        ok = await system.producer.submit(
            job("works", {"url": receiver.url("mine"), "include": ["response"]}), tenant=mine
        )
        other = await system.producer.submit(
            job(marker, {"url": receiver.url("theirs"), "include": ["response"]}, metadata={"m": marker}),
            tenant=theirs,
        )
        for t, sub in ((mine, failing), (mine, ok), (theirs, other)):
            await settled(system, t, sub.job_id, until)
    finally:
        await sim.faults()
    assert {c.verified(secret_of(mine))["type"] for c in receiver.calls["mine"]} == {
        "job.failed",
        "job.succeeded",
    }
    sent = b"\n".join(
        orjson.dumps(c.headers) + c.body for c in receiver.calls["mine"]
    )  # everything our tenant's receiver saw
    forbidden = [
        *SIM_KEYS.values(),
        MASTER_KEY,
        secret_of(mine),
        secret_of(mine)[6:],
        secret_of(theirs),
        marker,
        other.job_id,
        theirs,
    ]
    for secret in forbidden:
        assert secret.encode() not in sent, secret
    assert b"sk-" not in sent


async def test_a_cancelled_job_says_so(system: System, receiver: Receiver, until, sim_catalog) -> None:
    t = tenant()
    idle = Settings(**{**settings_of(system.env).model_dump(), "queue_name": f"idle-{uuid.uuid4().hex[:6]}"})
    async with Producer(system.producer.redis, sim_catalog, idle) as producer:  # no worker serves it
        sub = await producer.submit(job("never runs", {"url": receiver.url("cancel")}), tenant=t)
        await producer.cancel(sub.job_id, tenant=t)
        await settled(system, t, sub.job_id, until)
    (call,) = receiver.calls["cancel"]
    payload = call.verified(secret_of(t))
    assert payload["type"] == "job.cancelled" and payload["data"]["error"]["code"] == "cancelled"


async def test_the_tenant_default_endpoint_and_a_rotation(system: System, receiver: Receiver, until) -> None:
    t = tenant()
    url = receiver.url("default")
    res = system.cli("webhooks", "set", t, url)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == secret_of(t)  # printed once, derived: the same every time it is derived

    bulk = await system.producer.submit(job("bulk, no webhook of its own"), tenant=t)
    await settled(system, t, bulk.job_id, until)
    assert receiver.calls["default"][0].verified(secret_of(t))["data"]["id"] == bulk.job_id
    off = await system.producer.submit(job("opted out", webhook=False), tenant=t)  # type: ignore[arg-type]
    own = await system.producer.submit(job("own", {"url": receiver.url("own")}), tenant=t)
    await settled(system, t, own.job_id, until)
    await system.producer.wait(off.job_id, tenant=t, timeout=10)
    assert (await http_log(system, t, off.job_id))[1]["state"] == "none"
    interactive = await system.producer.submit(job("chat"), tenant=t, interactive=True)
    await system.producer.wait(interactive.job_id, tenant=t, timeout=10)
    assert (await http_log(system, t, interactive.job_id))[1]["state"] == "none"  # its caller waits

    rotated = system.cli("webhooks", "rotate", t, "--grace", "1h")
    assert rotated.returncode == 0 and rotated.stdout.strip() == secret_of(t, 2)

    async def signed_twice() -> bool:
        sub = await system.producer.submit(job("after the rotation"), tenant=t)
        await settled(system, t, sub.job_id, until)
        return receiver.calls["default"][-1].headers["webhook-signature"].count("v1,") == 2

    await until(signed_twice, timeout=10, what="deliveries signed by both secrets")
    last = receiver.calls["default"][-1]
    assert last.verifies(secret_of(t, 1)) and last.verifies(secret_of(t, 2))  # either side of the switch

    assert system.cli("webhooks", "rotate", t, "--grace", "0").returncode == 0

    async def only_the_new_one() -> bool:
        sub = await system.producer.submit(job("after the grace"), tenant=t)
        await settled(system, t, sub.job_id, until)
        call = receiver.calls["default"][-1]
        return call.verifies(secret_of(t, 3)) and not call.verifies(secret_of(t, 2))

    await until(only_the_new_one, timeout=10, what="the old secret to stop signing")
    assert scoped_id(t, bulk.job_id)  # (ids stay the caller's; storage scopes them)
