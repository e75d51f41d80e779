"""Money and choice end to end: credits reserved and settled once, usage, routes, compare and the
response cache, through the two worker processes and the simulator."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid

import pytest

from config.cost import NANOS_PER_USD, nanos_to_usd, usd_to_nanos
from llm_router.credits import Ledger
from llm_router.errors import InsufficientCredits, JobNotFound, RouterError
from llm_router.keys import active_key, credits_key
from llm_router.store import Settlement
from producer.producer import Producer, Submitted
from producer.validation import cache_key

HI = [{"role": "user", "content": "hi"}]


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llm_router.cli", *args], env=env, capture_output=True, text=True, timeout=60
    )


def _tenant() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


async def _model_calls(sim, model: str) -> int:
    snapshot = await sim.calls()
    return sum(c["count"] for c in snapshot["calls"] if c["model"] == model)


async def test_jobs_settle_their_cost_and_release_their_reservations(e2e: Producer) -> None:
    tenant = _tenant()
    ledger = Ledger(e2e.redis)
    await ledger.add(tenant, "5")
    jobs = [
        {"model": m, "messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": 200}
        for i, m in enumerate(["gpt-4o-mini", "claude-sonnet-4-5", "gemini-2.5-flash", "gpt-4.1"] * 5)
    ]
    results = await e2e.submit_many(jobs, tenant=tenant)
    ids = [r for r in results if isinstance(r, Submitted)]
    assert len(ids) == 20
    records = await e2e.wait_many(ids, timeout=30)
    assert all(r.status == "succeeded" for r in records)
    balance = await ledger.show(tenant)
    assert balance is not None
    spent_nanos = sum(r.usage.cost_nanos for r in records)
    assert spent_nanos > 0
    raw = await e2e.redis.hgetall(credits_key(tenant))
    assert int(raw[b"spent"]) == spent_nanos  # the ledger is the sum of the records, to the nano-dollar
    assert int(raw[b"reserved"]) == 0
    assert int(raw[b"balance"]) == 5 * NANOS_PER_USD - spent_nanos
    # each record says what was available when it settled (others' reservations held back); the
    # last one to settle saw the final balance
    remaining = [r.usage.credits_remaining for r in records]
    assert any(x == pytest.approx(balance.available, abs=1e-9) for x in remaining)
    assert balance.available == nanos_to_usd(5 * NANOS_PER_USD - spent_nanos)
    assert all(0 < x <= 5 for x in remaining)

    rows = await ledger.usage(tenant=tenant)
    assert sum(r.jobs for r in rows) == 20
    assert sum(r.prompt_tokens for r in rows) == sum(r.usage.prompt_tokens for r in records)
    assert sum(r.completion_tokens for r in rows) == sum(r.usage.completion_tokens for r in records)
    assert sum(usd_to_nanos(r.cost) for r in rows) == spent_nanos
    assert {r.model for r in rows} == {"gpt-4o-mini", "claude-sonnet-4-5", "gemini-2.5-flash", "gpt-4.1"}


async def test_a_bulk_submit_runs_the_lines_that_fit_and_refuses_the_rest(e2e: Producer) -> None:
    tenant = _tenant()
    ledger = Ledger(e2e.redis)
    job = {"model": "gpt-4.1", "messages": HI, "max_tokens": 1000}
    reserve = e2e.validator.prepare(dict(job), now=0).reserve_nanos
    await ledger.add(tenant, nanos_to_usd(reserve * 7 // 2))
    results = await e2e.submit_many([dict(job) for _ in range(6)], tenant=tenant)
    created = [r for r in results if isinstance(r, Submitted)]
    refused = [r for r in results if isinstance(r, RouterError)]
    assert len(created) == 3 and len(refused) == 3
    assert all(isinstance(r, InsufficientCredits) and r.status == 402 for r in refused)
    assert "may cost up to" in refused[0].message and refused[0].param == "tenant"
    records = await e2e.wait_many(created, timeout=30)
    assert all(r.status == "succeeded" for r in records)
    # reservations were released: the credit left covers another job now
    again = await e2e.submit({**job, "messages": [{"role": "user", "content": "one more"}]}, tenant=tenant)
    assert (await e2e.wait(again.job_id, timeout=30, tenant=tenant)).status == "succeeded"


async def test_a_resubmit_reserves_once_and_a_cancel_releases(producer: Producer) -> None:
    # the root `producer` fixture's queue has no worker: jobs stay queued
    tenant = _tenant()
    ledger = Ledger(producer.redis)
    await ledger.add(tenant, "1")
    job = {"model": "gpt-4o", "messages": HI, "max_tokens": 100, "job_id": f"once-{uuid.uuid4().hex}"}
    first = await producer.submit(dict(job), tenant=tenant)
    again = await producer.submit(dict(job), tenant=tenant)
    assert first.created and not again.created
    reserve = producer.validator.prepare(dict(job), now=0).reserve_nanos
    assert int(await producer.redis.hget(credits_key(tenant), "reserved")) == reserve
    record = await producer.cancel(first.job_id, tenant=tenant)
    assert record.status == "cancelled"
    assert int(await producer.redis.hget(credits_key(tenant), "reserved")) == 0
    assert record.usage is not None and record.usage.credits_remaining == pytest.approx(1.0)


async def test_concurrent_producers_never_overspend(producer: Producer) -> None:
    tenant = _tenant()
    ledger = Ledger(producer.redis)
    job = {"model": "claude-opus-4-1", "messages": HI, "max_tokens": 500}
    reserve = producer.validator.prepare(dict(job), now=0).reserve_nanos
    await ledger.add(tenant, nanos_to_usd(reserve * 40))
    producers = [await Producer.connect(producer.settings, producer.catalog) for _ in range(6)]
    try:
        batches = await asyncio.gather(
            *(p.submit_many([dict(job) for _ in range(25)], tenant=tenant) for p in producers)
        )
    finally:
        for p in producers:
            await p.close()
    created = sum(isinstance(r, Submitted) for batch in batches for r in batch)
    assert created == 40  # exactly what the credit covers, out of 150 racing submits
    balance = await ledger.show(tenant)
    assert balance is not None and balance.available >= 0


async def test_an_overrun_is_charged_and_then_new_jobs_are_refused(producer: Producer) -> None:
    tenant = _tenant()
    ledger = Ledger(producer.redis)
    job = {"model": "gpt-4o-mini", "messages": HI, "max_tokens": 10}
    reserve = producer.validator.prepare(dict(job), now=0).reserve_nanos
    await ledger.add(tenant, nanos_to_usd(reserve * 3 // 2))
    sub = await producer.submit(dict(job), tenant=tenant)
    # the provider answered with more than the estimate allowed for: the real cost is charged
    actual = reserve * 3
    usage = {"prompt_tokens": 5, "completion_tokens": 50, "cost_nanos": actual, "cost": nanos_to_usd(actual)}
    fields = {"status": "succeeded", "usage": usage, "model": "gpt-4o-mini", "finished_at": 1.0}
    await producer.store.finish(
        producer.scoped(sub.job_id, tenant), fields, settlement=Settlement(actual, "gpt-4o-mini", 5, 50)
    )
    balance = await ledger.show(tenant)
    assert balance is not None
    assert balance.spent == nanos_to_usd(actual)
    assert balance.available == nanos_to_usd(reserve * 3 // 2 - actual) and balance.available < 0
    assert (await producer.get(sub.job_id, tenant=tenant)).usage.credits_remaining < 0
    # a second finish of the same job never charges again
    await producer.store.finish(
        producer.scoped(sub.job_id, tenant), fields, settlement=Settlement(actual, "gpt-4o-mini", 5, 50)
    )
    assert (await ledger.show(tenant)).spent == nanos_to_usd(actual)
    refused = (await producer.submit_many([dict(job)], tenant=tenant))[0]
    assert isinstance(refused, InsufficientCredits)
    await ledger.add(tenant, "1")
    assert isinstance((await producer.submit_many([dict(job)], tenant=tenant))[0], Submitted)


async def test_routes_resolve_at_enqueue_and_the_record_says_which_rule(e2e: Producer) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUg=="}}
    jobs = [
        {"model": "code", "messages": HI},
        {"model": "auto", "messages": HI},
        {
            "model": "auto",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "what?"}, image]}],
        },
        {"model": "by-size", "messages": HI},
        {"model": "by-size", "messages": [{"role": "user", "content": "long " * 2000}]},
        {"model": "ab-gpt-claude", "messages": HI, "job_id": f"ab-{uuid.uuid4().hex}"},
    ]
    results = await e2e.submit_many(jobs)
    records = await e2e.wait_many([r.job_id for r in results], timeout=30)
    assert all(r.status == "succeeded" for r in records), [r.error for r in records]
    code, auto_text, auto_vision, short, long, ab = records
    assert (code.model_requested, code.route[0]) == ("code", "gpt-4.1")
    assert code.routed_by == "code: task route → gpt-4.1"
    auto_models = e2e.catalog.routes["auto"].models
    assert auto_text.route[0] == auto_models[0]  # the cheapest of the set, listed first
    assert e2e.catalog.models[auto_vision.route[0]].capabilities.vision
    assert auto_vision.routed_by.startswith("auto: cheapest of")
    assert short.route[0] == "gemini-2.5-flash" and long.route[0] == "gpt-4.1"
    assert ab.route[0] in ("gpt-4.1", "claude-sonnet-4-5") and ab.model_requested == "ab-gpt-claude"
    # the chosen model's fallback chain still applies
    assert code.route[1:] == e2e.catalog.models["gpt-4.1"].fallbacks


async def test_compare_runs_each_model_and_shows_them_side_by_side(e2e: Producer, sim) -> None:
    # a refusal (400) ends a job at once, where a 5xx would be retried until the deadline
    await sim.faults({"model": "claude-sonnet-4-5", "kind": "status", "status": 400})
    try:
        sides = await e2e.compare_models(
            ["gpt-4.1", "claude-sonnet-4-5", "gemini-2.5-flash"], "hello", timeout=30
        )
    finally:
        await sim.faults()
    assert list(sides) == ["gpt-4.1", "claude-sonnet-4-5", "gemini-2.5-flash"]
    for name in ("gpt-4.1", "gemini-2.5-flash"):
        assert sides[name]["error"] is None and sides[name]["response"]
        assert sides[name]["cost"] > 0 and sides[name]["latency"] > 0
    # fallback is off in a comparison: the failing model reports its error, nobody answers for it
    failed = sides["claude-sonnet-4-5"]
    assert failed["error"]["code"] == "upstream_invalid_request"
    assert failed["response"] is None and failed["cost"] == 0


async def test_a_cancelled_compare_cancels_its_sides_and_ends_cancelled(e2e: Producer, sim, until) -> None:
    tenant = _tenant()
    await Ledger(e2e.redis).add(tenant, "1")
    await sim.faults({"kind": "latency", "latency_ms": 3000})
    try:
        parent = await e2e.compare(["gpt-4o-mini", "gpt-4.1-mini"], HI, tenant=tenant)
        sides = [f"{parent}-0", f"{parent}-1"]

        async def running() -> bool:
            records = [await e2e.get(s, tenant=tenant) for s in sides]
            return all(r.status == "running" for r in records)

        await until(running, timeout=10, what="both sides to run")
        await e2e.cancel(parent, tenant=tenant)
        record = await e2e.wait(parent, timeout=15, tenant=tenant)
    finally:
        await sim.faults()
    assert record.status == "cancelled"
    assert [(await e2e.get(s, tenant=tenant)).status for s in sides] == ["cancelled", "cancelled"]
    raw = await e2e.redis.hgetall(credits_key(tenant))
    assert int(raw[b"reserved"]) == 0
    assert int(await e2e.redis.get(active_key(tenant)) or 0) == 0


def test_the_compare_and_usage_commands(workers, worker_env: dict[str, str]) -> None:
    tenant = _tenant()
    out = _cli(worker_env, "compare", "--models", "gpt-4o-mini,gemini-2.5-flash", "--message", "hi", "--json")
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    assert record["status"] == "succeeded"
    assert [c["model"] for c in record["comparison"]] == ["gpt-4o-mini", "gemini-2.5-flash"]
    assert all(c["content"] and c["cost"] > 0 for c in record["comparison"])

    add = _cli(worker_env, "credits", "add", tenant, "2.50")
    assert add.returncode == 0 and "available $2.500000" in add.stdout, add.stdout + add.stderr
    usage = _cli(worker_env, "usage", "--json")
    assert usage.returncode == 0, usage.stderr
    rows = json.loads(usage.stdout)
    assert any(r["model"] == "gpt-4o-mini" and r["jobs"] >= 1 and r["cost"] > 0 for r in rows)


def test_estimate_prints_the_cost_range_without_enqueueing(tmp_path, worker_env: dict[str, str]) -> None:
    lines = [
        json.dumps(
            {"model": "gpt-4.1", "messages": [{"role": "user", "content": "x" * 400}], "max_tokens": 100}
        ),
        json.dumps({"model": "gpt-4.1", "messages": [{"role": "user", "content": "y" * 400}]}),
        json.dumps({"model": "gemini-2.5-flash", "messages": HI, "max_tokens": 50}),
        json.dumps({"model": "nope", "messages": HI}),
    ]
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    out = _cli(worker_env, "submit", "--estimate", "--json", str(path))
    assert out.returncode == 1  # a refused line
    report = json.loads(out.stdout)
    by_model = {m["model"]: m for m in report["models"]}
    assert by_model["gpt-4.1"]["jobs"] == 2 and by_model["gemini-2.5-flash"]["jobs"] == 1
    assert by_model["gpt-4.1"]["prompt_tokens"] > 200  # two 400-character prompts, ~4 characters a token
    for m in report["models"]:
        assert 0 < m["cost_low"] < m["cost_high"]
    assert report["refused"][0]["line"] == 4 and report["refused"][0]["error"]["code"] == "model_not_found"


async def test_the_response_cache_hits_misses_and_expires(e2e: Producer, sim, until) -> None:
    word = uuid.uuid4().hex
    base = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": word}], "temperature": 0}
    before = await _model_calls(sim, "gpt-4o-mini")

    async def run(job: dict) -> object:
        sub = await e2e.submit(job)
        return await e2e.wait(sub.job_id, timeout=30, tenant=sub.tenant)

    first = await run({**base, "cache": True})
    hit = await run({**base, "cache": True})
    assert not first.cached and first.usage.cost > 0
    assert hit.cached and hit.usage.cost == 0 and hit.provider == "cache"
    assert hit.text() == first.text()
    assert await _model_calls(sim, "gpt-4o-mini") == before + 1  # the hit made no provider call
    # the cache is per tenant: another tenant's identical request is a miss (no probing others' prompts)
    assert not (await run({**base, "cache": True, "tenant": "someone-else"})).cached

    other = await run({**base, "cache": True, "max_tokens": 7})  # a parameter that changes the answer
    assert not other.cached
    warm = await run({**base, "temperature": 0.7, "cache": True})  # sampled: not cached with `true`
    warm2 = await run({**base, "temperature": 0.7, "cache": True})
    assert not warm.cached and not warm2.cached
    forced = await run({**base, "temperature": 0.7, "cache": "force"})
    forced2 = await run({**base, "temperature": 0.7, "cache": "force"})
    assert not forced.cached and forced2.cached

    short = {
        **base,
        "messages": [{"role": "user", "content": word + " ttl"}],
        "cache": True,
        "cache_ttl_s": 1,
    }
    assert not (await run(short)).cached
    assert (await run(short)).cached
    key = "llm-router:cache:default:" + cache_key("gpt-4o-mini", short)  # per tenant
    assert 0 < await e2e.redis.pttl(key) <= 1000
    await until(lambda: _gone(e2e, key), timeout=5, what="the 1 s entry to expire")
    assert not (await run(short)).cached  # expired: the provider is asked again


async def _gone(e2e: Producer, key: str) -> bool:
    return not await e2e.redis.exists(key)


async def test_a_running_job_can_be_cancelled_and_pays_for_the_prompt_its_provider_read(
    e2e: Producer, sim, until
) -> None:
    tenant = _tenant()
    await Ledger(e2e.redis).add(tenant, "1")
    await sim.faults({"model": "gpt-4.1-mini", "kind": "latency", "latency_ms": 5000})
    calls = await _model_calls(sim, "gpt-4.1-mini")
    prompt = [{"role": "user", "content": "summarise this: " + "lorem ipsum " * 2000}]
    try:
        sub = await e2e.submit({"model": "gpt-4.1-mini", "messages": prompt, "fallbacks": []}, tenant=tenant)

        async def sent() -> bool:  # the simulator counts a call when it arrives
            return await _model_calls(sim, "gpt-4.1-mini") > calls

        await until(sent, timeout=10, what="the call to reach the provider")
        await e2e.cancel(sub.job_id, tenant=tenant)
        await until(lambda: _status_is(e2e, sub, "cancelled"), timeout=10, what="the abort")
    finally:
        await sim.faults()
    record = await e2e.get(sub.job_id, tenant=tenant)
    assert record.error["code"] == "cancelled"
    assert record.attempts[-1].outcome == "interrupted"
    # nothing was streamed, but the provider had read the ~6,000-token prompt: a tenant cannot make
    # the operator pay for prompts by cancelling (or leaving) before the answer
    assert record.usage is not None and record.usage.estimated
    assert record.usage.prompt_tokens > 5_000 and record.usage.completion_tokens == 0
    assert record.usage.cost_nanos > 0 and record.partial_text is None
    raw = await e2e.redis.hgetall(credits_key(tenant))
    assert int(raw[b"reserved"]) == 0 and int(raw[b"spent"]) == record.usage.cost_nanos


async def test_a_deadline_that_cuts_a_call_charges_the_prompt_its_provider_read(
    e2e: Producer, sim, until
) -> None:
    tenant = _tenant()
    await Ledger(e2e.redis).add(tenant, "1")
    await sim.faults({"model": "gpt-4.1-mini", "kind": "latency", "latency_ms": 5000})
    prompt = [{"role": "user", "content": "summarise this: " + "lorem ipsum " * 2000}]
    try:
        sub = await e2e.submit(
            {"model": "gpt-4.1-mini", "messages": prompt, "fallbacks": [], "deadline_s": 1.5}, tenant=tenant
        )
        record = await e2e.wait(sub.job_id, timeout=15, tenant=tenant)
    finally:
        await sim.faults()
    assert record.status == "failed" and record.error["code"] == "deadline_exceeded"
    cut = record.attempts[-1]
    assert (cut.outcome, cut.error_code, cut.model) == ("interrupted", "deadline_exceeded", "gpt-4.1-mini")
    assert record.usage is not None and record.usage.estimated and record.usage.prompt_tokens > 5_000
    assert cut.cost == record.usage.cost > 0
    raw = await e2e.redis.hgetall(credits_key(tenant))
    assert int(raw[b"reserved"]) == 0 and int(raw[b"spent"]) == record.usage.cost_nanos


async def _status_is(producer: Producer, sub: Submitted, status: str) -> bool:
    return (await producer.get(sub.job_id, tenant=sub.tenant)).status == status


async def test_cancel_finds_an_interactive_job_on_its_own_queue(producer: Producer) -> None:
    sub = await producer.submit({"model": "gpt-4o-mini", "messages": HI}, interactive=True)
    queue = producer.settings.interactive_queue_name
    assert await producer.store.queued(queue) == 1
    records = await producer.cancel_many([sub.job_id, "no-such-job"])
    assert records[0].status == "cancelled" and records[1].code == "job_not_found"
    assert await producer.store.queued(queue) == 0


async def test_a_job_id_names_a_job_inside_its_tenant(producer: Producer) -> None:
    job = {"model": "gpt-4o-mini", "messages": HI, "job_id": f"order-{uuid.uuid4().hex[:8]}"}
    mine = await producer.submit(dict(job), tenant="alice")
    assert mine.created
    assert not (await producer.submit(dict(job), tenant="alice")).created  # idempotent for alice
    # bob's id is a free one, whatever alice holds: no conflict (an oracle of alice's ids), no squat
    theirs = await producer.submit({**job, "messages": [{"role": "user", "content": "other"}]}, tenant="bob")
    assert theirs.created and theirs.tenant == "bob"
    alices = await producer.get(job["job_id"], tenant="alice")
    bobs = await producer.get(job["job_id"], tenant="bob")
    assert (alices.tenant, bobs.tenant) == ("alice", "bob")
    assert alices.request["messages"] != bobs.request["messages"]
    with pytest.raises(JobNotFound):  # nobody else reads either of them
        await producer.get(job["job_id"], tenant="carol")
    await producer.cancel_many([job["job_id"]], tenant="alice")
    assert (await producer.get(job["job_id"], tenant="bob")).status == "queued"  # bob's is untouched
