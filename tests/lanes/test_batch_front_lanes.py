"""Our ``/v1/batches`` front on the lanes: the official OpenAI SDK against ``llm-router serve`` and a
worker holding the batcher role (separate processes, a Redis of their own), the simulator's OpenAI
Batch API upstream, and a webhook receiver that is a real HTTP server.

The lines of a ``24h`` batch run on ``auto``: in the simulator's provider batches at its 50 % batch
discount, back on `now` before their deadline when a provider batch is late; cancel ends the lines
parked in a provider batch and the provider batch with them. The batch object, its counts and its
output and error files stay OpenAI's; only our batch reports its end by webhook (the provider batches
the batcher makes, and the lines, report nothing).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web
from openai.types import Batch
from openai.types.chat import ChatCompletion
from redis.asyncio import Redis
from standardwebhooks import Webhook

from config.catalog import Catalog
from config.cost import call_usage, usd_to_nanos
from config.settings import Settings
from llm_router.credits import Ledger
from llm_router.keys import (
    LANES_DUE_KEY,
    batch_key,
    credits_key,
    lane_batch_key,
    record_key,
    request_key,
    scoped_id,
)
from llm_router.tenants import TenantPolicies
from llm_router.testing.redis_server import RedisServer, free_port
from llm_router.testing.server_proc import ServerProcess
from llm_router.testing.sim_env import simulated_env
from llm_router.testing.worker_procs import WorkerProcess
from llm_router.webhooks.signing import derive_key, secret_text
from producer.http.auth import ApiKeys
from producer.http.batch_lines import job_id_for
from producer.validation import Validator

from .conftest import LANE_ENV, sim_lane_counters

MODEL = "gpt-4o-mini"
MASTER_KEY = "batch-front-lanes-master-key-" + "7" * 16
Until = Callable[..., Awaitable[object]]


# -- the rig -------------------------------------------------------------------------------------


@dataclass
class Hooks:
    """A webhook receiver: ``/hook/<name>`` answers 200 and remembers every request."""

    port: int
    calls: dict[str, list[tuple[dict[str, str], bytes]]] = field(default_factory=lambda: defaultdict(list))

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/hook/{name}"

    def events(self, name: str, tenant: str) -> list[dict[str, Any]]:
        """The payloads ``name`` got, each verified with ``tenant``'s signing secret."""
        hook = Webhook(secret_text(derive_key(MASTER_KEY.encode(), tenant, 1)))
        return [hook.verify(body, headers) for headers, body in self.calls[name]]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.calls[request.match_info["name"]].append(({k: v for k, v in request.headers.items()}, body))
        return web.Response(text="ok")


@dataclass
class Front:
    url: str
    sim: Any
    redis: Redis
    settings: Settings
    hooks: Hooks
    keys: dict[str, str] = field(default_factory=dict)

    async def client(self, tenant: str) -> openai.AsyncOpenAI:
        if tenant not in self.keys:
            self.keys[tenant] = await ApiKeys(self.redis).create(tenant)
        return openai.AsyncOpenAI(
            base_url=f"{self.url}/v1", api_key=self.keys[tenant], max_retries=0, timeout=30
        )

    async def job(self, tenant: str, job_id: str) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.keys[tenant]}"}
        async with aiohttp.ClientSession() as s, s.get(f"{self.url}/v1/jobs/{job_id}", headers=headers) as r:
            assert r.status == 200, await r.text()
            return dict(await r.json())


@pytest.fixture(scope="module")
async def front(sim: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Front]:
    """Server and one worker (which holds the batcher and webhook roles) on a Redis of their own, with
    the lanes scaled down as ``LANE_ENV`` says."""
    logs: Path = tmp_path_factory.mktemp("batch-front")
    queue = f"front-{uuid.uuid4().hex[:8]}"
    hooks = Hooks(free_port())
    app = web.Application()
    app.router.add_post("/hook/{name}", hooks.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", hooks.port).start()
    with RedisServer() as redis_server:
        env = simulated_env(os.environ, redis_url=redis_server.url, sim_url=sim.url)
        env.update(
            LLM_ROUTER_QUEUE_NAME=queue,
            LLM_ROUTER_INTERACTIVE_QUEUE_NAME=f"{queue}:interactive",
            LLM_ROUTER_HEARTBEAT_INTERVAL_S="0.5",
            LLM_ROUTER_RETRY_BACKOFF_S="0.2",
            LLM_ROUTER_LOG_LEVEL="INFO",
            LLM_ROUTER_WEBHOOK_MASTER_KEY=MASTER_KEY,
            LLM_ROUTER_WEBHOOK_ALLOW="127.0.0.1/32",
            LLM_ROUTER_WEBHOOK_POLL_S="0.02",
            LLM_ROUTER_WEBHOOK_ROLE_TTL_S="1",
            **LANE_ENV,
        )
        env.pop("LLM_ROUTER_AUTH_DISABLED", None)
        env.pop("LLM_ROUTER_API_KEYS_FILE", None)
        server = ServerProcess(env, logs / "server.log")
        worker = WorkerProcess(env, logs / "worker.log")
        settings = Settings(_env_file=None, redis_url=redis_server.url, queue_name=queue)
        redis = Redis.from_url(redis_server.url)
        try:
            await asyncio.to_thread(server.wait_ready)
            deadline = time.monotonic() + 30
            while not await redis.zcount(f"{queue}:workers", time.time() - 5, "+inf"):
                assert worker.alive() and time.monotonic() < deadline, worker.log_tail()
                await asyncio.sleep(0.05)
            yield Front(url=server.url, sim=sim, redis=redis, settings=settings, hooks=hooks)
        finally:
            server.stop()
            worker.stop()
            await redis.aclose()
            await runner.cleanup()


# -- helpers -------------------------------------------------------------------------------------


def line(custom_id: str, text: str, **body: Any) -> dict[str, Any]:
    request = {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 20, **body}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": request}


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(x) + b"\n" for x in lines)


async def create(client: openai.AsyncOpenAI, lines: list[dict[str, Any]], **extra: Any) -> Batch:
    uploaded = await client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    return await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h", **extra
    )


async def read_lines(client: openai.AsyncOpenAI, file_id: str) -> dict[str, dict[str, Any]]:
    content = await client.files.content(file_id)
    return {row["custom_id"]: row for row in map(orjson.loads, content.read().splitlines())}


async def ended(client: openai.AsyncOpenAI, batch_id: str, until: Until, timeout: float = 30) -> Batch:
    async def check() -> Batch | None:
        batch = await client.batches.retrieve(batch_id)
        return batch if batch.status in ("completed", "failed", "expired", "cancelled") else None

    return await until(check, timeout=timeout, what=f"batch {batch_id} to end")  # type: ignore[return-value]


def prices(sim_catalog: Catalog, usage: dict[str, Any]) -> tuple[int, int]:
    """What a completion's tokens cost at the `now` and at the batch price, in nano-USD."""
    dep = sim_catalog.deployments(MODEL)[0]
    tokens = (usage["prompt_tokens"], usage["completion_tokens"])
    return (
        call_usage(dep.price, *tokens)["cost_nanos"],
        call_usage(dep.price_for("batch"), *tokens)["cost_nanos"],
    )


async def ledger_of(redis: Redis, tenant: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in (await redis.hgetall(credits_key(tenant))).items()}


def counts_of(batch: Batch) -> tuple[int, int, int]:
    c = batch.request_counts
    assert c is not None
    return c.total, c.completed, c.failed


def tenant(kind: str) -> str:
    return f"front-{kind}-{uuid.uuid4().hex[:6]}"


# -- the tests -----------------------------------------------------------------------------------


async def test_sdk_batch_runs_its_lines_in_provider_batches_at_the_batch_price(
    front: Front, sim_lanes, sim_catalog: Catalog, until: Until
) -> None:
    """The documented flow (files.create → batches.create → retrieve until done → files.content): the
    lines ran in the simulator's provider batches, each output line costs the batch price (half the
    `now` price), the reservation was the `now` price and the settlement the batch price, once; our
    batch reported its end once, and nothing else reported anything."""
    await sim_lanes(turnaround_s=[1.5, 1.5])
    who = tenant("flow")
    await Ledger(front.redis).add(who, "5")
    # the tenant's default endpoint: a line's or a provider batch's own report would land here
    await TenantPolicies(front.redis, front.settings).set(
        who, {"webhook_url": front.hooks.url(f"{who}-default")}
    )
    client = await front.client(who)
    sim_lines_before = (await sim_lane_counters(front.sim))["batch_lines"]
    n = 6
    marker = uuid.uuid4().hex[:8]
    created = await create(
        client,
        [line(f"req-{i}", f"{marker} question {i}") for i in range(n)],
        metadata={"run": marker},
        extra_body={"webhook": {"url": front.hooks.url(f"{who}-batch")}},
    )
    assert created.status == "validating" and created.completion_window == "24h"

    seen: list[str] = []
    reserved_in_flight = 0

    async def done() -> Batch | None:
        nonlocal reserved_in_flight
        batch = await client.batches.retrieve(created.id)
        if not seen or seen[-1] != batch.status:
            seen.append(batch.status)
        if batch.status == "in_progress":
            reserved_in_flight = max(reserved_in_flight, (await ledger_of(front.redis, who))["reserved"])
        return batch if batch.status in ("completed", "failed", "expired", "cancelled") else None

    batch = await until(done, timeout=30, what="the batch to complete")
    assert isinstance(batch, Batch)
    assert batch.status == "completed", batch
    assert "in_progress" in seen and seen[-1] == "completed", seen
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
    assert created.created_at <= batch.in_progress_at <= batch.finalizing_at <= batch.completed_at
    assert batch.request_counts is not None
    counts = batch.request_counts
    assert (counts.total, counts.completed, counts.failed) == (n, n, 0)
    assert batch.error_file_id is None and batch.output_file_id is not None

    rows = await read_lines(client, batch.output_file_id)
    assert set(rows) == {f"req-{i}" for i in range(n)}
    total = 0
    for custom_id, row in rows.items():
        assert set(row) == {"id", "custom_id", "response", "error"} and row["error"] is None
        assert row["id"].startswith("batch_req_")
        response = row["response"]
        assert set(response) == {"status_code", "request_id", "body"} and response["status_code"] == 200
        completion = ChatCompletion.model_validate(response["body"])
        assert completion.choices[0].message.content and completion.model == MODEL
        usage = response["body"]["usage"]
        now_nanos, batch_nanos = prices(sim_catalog, usage)
        cost = usd_to_nanos(usage["cost"])
        assert abs(cost - batch_nanos) <= 1 and abs(cost * 2 - now_nanos) <= 2, (custom_id, usage)
        total += cost
        # the line's job says it ran in a provider batch, chosen by `auto`
        index = int(custom_id.removeprefix("req-"))
        assert response["request_id"] == job_id_for(batch.id, index)
        record = await front.job(who, response["request_id"])
        assert record["lane"] == "batch" and record["lane_reason"].startswith("auto"), record
        assert record["provider"] == "openai" and usd_to_nanos(record["usage"]["cost"]) == cost
    assert batch.usage is not None and abs(usd_to_nanos(batch.usage.model_extra["cost"]) - total) <= n
    # the simulator's Batch API ran them
    assert (await sim_lane_counters(front.sim))["batch_lines"] - sim_lines_before >= n

    # money: reserved at the `now` price (at least twice what the batch price settled), settled once
    money = await ledger_of(front.redis, who)
    assert money["reserved"] == 0 and money["spent"] == total
    # what each line's job, as stored (lane auto), reserves, and what it would on the `now` lane: the
    # same but for the token estimate of one byte ("now" is shorter than "auto"); never a discount
    validator = Validator(sim_catalog, front.settings)
    as_stored = at_now = 0
    for i in range(n):
        stored = orjson.loads(await front.redis.get(request_key(scoped_id(who, job_id_for(batch.id, i)))))
        assert stored["lane"] == "auto" and stored["deadline_s"] <= 24 * 3600
        as_stored += validator.prepare(stored, now=0).reserve_nanos
        at_now += validator.prepare({**stored, "lane": "now"}, now=0).reserve_nanos
    assert reserved_in_flight == as_stored and abs(as_stored - at_now) <= as_stored // 100
    assert as_stored > 2 * total, (as_stored, total)

    # webhooks: our batch's end, once, to its own endpoint; nothing from lines or provider batches
    await until(lambda: front.hooks.calls[f"{who}-batch"], timeout=10, what="batch.completed")
    await asyncio.sleep(1.0)  # room for anything else to arrive (the deliverer polls every 20 ms)
    (event,) = front.hooks.events(f"{who}-batch", who)
    assert event["type"] == "batch.completed" and event["data"]["id"] == batch.id
    assert event["data"]["request_counts"] == {"total": n, "completed": n, "failed": 0}
    assert front.hooks.calls[f"{who}-default"] == []
    assert sum(len(calls) for name, calls in front.hooks.calls.items() if name.startswith(who)) == 1


async def test_a_late_provider_batch_sends_its_lines_back_to_now_before_their_deadline(
    front: Front, sim_lanes, sim_catalog: Catalog, until: Until
) -> None:
    """Provider batches that never complete: a line whose deadline leaves room for a batch goes into
    one and comes back to `now`, with its fallback chain, before its deadline; one whose deadline
    leaves no room runs `now` from the start; the batch completes as OpenAI's would, at `now` prices."""
    await sim_lanes(never_complete=1.0)
    who = tenant("late")
    await Ledger(front.redis).add(who, "5")
    client = await front.client(who)
    t0 = time.time()
    created = await create(
        client,
        [
            line("late", "a batch that never answers", deadline_s=4),
            line("tight", "no room for a batch", deadline_s=1.5),
            line("tier", "asks for the default tier", service_tier="default"),
        ],
        extra_body={"webhook": {"url": front.hooks.url(f"{who}-batch")}},
    )
    batch = await ended(client, created.id, until)
    assert batch.status == "completed", batch
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (
        3,
        3,
        0,
    )
    assert batch.output_file_id is not None and batch.error_file_id is None
    rows = await read_lines(client, batch.output_file_id)
    records = {c: await front.job(who, row["response"]["request_id"]) for c, row in rows.items()}
    late = records["late"]
    assert late["lane"] == "now" and "deadline" in late["lane_reason"], late
    assert late["finished_at"] < t0 + 4
    assert records["tight"]["lane"] == "now" and records["tight"]["lane_reason"].startswith("auto"), records
    assert records["tier"]["lane"] == "now" and records["tier"]["lane_reason"] is None, records
    spent = 0
    for custom_id, row in rows.items():
        usage = row["response"]["body"]["usage"]
        now_nanos, _ = prices(sim_catalog, usage)
        assert usd_to_nanos(usage["cost"]) == now_nanos, custom_id
        spent += now_nanos
    money = await ledger_of(front.redis, who)
    assert money["reserved"] == 0 and money["spent"] == spent
    await until(lambda: front.hooks.calls[f"{who}-batch"], timeout=10, what="batch.completed")
    (event,) = front.hooks.events(f"{who}-batch", who)
    assert event["type"] == "batch.completed" and event["data"]["id"] == batch.id


async def test_cancel_ends_lines_parked_in_a_provider_batch_and_the_provider_batch(
    front: Front, sim_lanes, sim_catalog: Catalog, until: Until
) -> None:
    """Cancelled mid-flight, with lines inside a provider batch that has not answered and one line
    done: the batch ends ``cancelled`` with OpenAI's counts and files (the done line in the output
    file, the others ``batch_cancelled`` in the error file), nothing is charged for the cancelled
    lines, the provider batch is cancelled too, and only ``batch.cancelled`` is reported."""
    await sim_lanes(never_complete=1.0)
    who = tenant("cancel")
    await Ledger(front.redis).add(who, "5")
    client = await front.client(who)
    lines = [line(f"slow-{i}", f"parked {i}") for i in range(3)]
    lines.append(line("quick", "runs now", service_tier="default"))
    created = await create(client, lines, extra_body={"webhook": {"url": front.hooks.url(f"{who}-batch")}})
    parked = [scoped_id(who, job_id_for(created.id, i)) for i in range(3)]

    async def in_a_provider_batch() -> set[str] | None:
        batches = {await front.redis.hget(record_key(j), "lane_batch") for j in parked}
        if None in batches:
            return None
        quick = await front.redis.hget(record_key(scoped_id(who, job_id_for(created.id, 3))), "status")
        return {b.decode() for b in batches if b} if quick == b"succeeded" else None

    ours = await until(in_a_provider_batch, timeout=15, what="the lines to be in a provider batch")
    assert isinstance(ours, set)

    async def submitted() -> bool:
        return all([await front.redis.hget(lane_batch_key(b), "remote_id") for b in ours])

    await until(submitted, timeout=10, what="the provider batch to be created")
    cancelling = await client.batches.cancel(created.id)
    assert cancelling.status in ("cancelling", "cancelled")
    batch = await ended(client, created.id, until, timeout=15)
    assert batch.status == "cancelled", batch
    assert batch.cancelling_at and batch.cancelled_at
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (
        4,
        1,
        3,
    )
    assert batch.output_file_id is not None and batch.error_file_id is not None
    done = await read_lines(client, batch.output_file_id)
    assert set(done) == {"quick"} and done["quick"]["response"]["status_code"] == 200
    cut = await read_lines(client, batch.error_file_id)
    assert set(cut) == {f"slow-{i}" for i in range(3)}
    for row in cut.values():
        assert row["response"] is None and row["error"]["code"] == "batch_cancelled"
    for job in parked:
        assert await front.redis.hget(record_key(job), "status") == b"cancelled"
        assert await front.redis.zscore(LANES_DUE_KEY, job) is None
    money = await ledger_of(front.redis, who)
    now_nanos, _ = prices(sim_catalog, done["quick"]["response"]["body"]["usage"])
    assert money["reserved"] == 0 and money["spent"] == now_nanos

    async def provider_batches_cancelled() -> bool:
        states = [await front.redis.hmget(lane_batch_key(b), "state", "remote_status") for b in ours]
        return all(s == [b"done", b"cancelled"] for s in states)

    await until(provider_batches_cancelled, timeout=10, what="the provider batch to be cancelled")
    await until(lambda: front.hooks.calls[f"{who}-batch"], timeout=10, what="batch.cancelled")
    await asyncio.sleep(0.5)
    (event,) = front.hooks.events(f"{who}-batch", who)
    assert event["type"] == "batch.cancelled" and event["data"]["id"] == batch.id


async def test_a_tenants_default_lane_and_a_lines_own_lane_win(
    front: Front, sim_lanes, sim_catalog: Catalog, until: Until
) -> None:
    """A tenant that set ``default_lane`` gets it for its lines (here `now`: nothing goes to a
    provider batch), and a line that names a lane, or the flex tier, keeps it."""
    await sim_lanes(turnaround_s=[0.2, 0.3])
    who = tenant("policy")
    await TenantPolicies(front.redis, front.settings).set(who, {"default_lane": "now"})
    client = await front.client(who)
    created = await create(
        client,
        [
            line("plain", "the tenant's lane"),
            line("flex-lane", "its own lane", lane="flex"),
            line("flex-tier", "the flex tier", service_tier="flex"),
        ],
    )
    batch = await ended(client, created.id, until)
    assert batch.status == "completed" and batch.output_file_id is not None, batch
    rows = await read_lines(client, batch.output_file_id)
    lanes = {c: (await front.job(who, row["response"]["request_id"]))["lane"] for c, row in rows.items()}
    assert lanes == {"plain": "now", "flex-lane": "flex", "flex-tier": "flex"}
    for custom_id, row in rows.items():
        usage = row["response"]["body"]["usage"]
        now_nanos, half = prices(sim_catalog, usage)
        assert usd_to_nanos(usage["cost"]) == (now_nanos if custom_id == "plain" else half), custom_id


async def test_a_batch_whose_window_ends_with_lines_in_a_provider_batch_expires(
    front: Front, sim_lanes, until: Until
) -> None:
    """The window's end with lines still inside a provider batch: the batch ends ``expired`` with
    each such line ``batch_expired`` in the error file, uncharged, and out of the provider batch,
    which is cancelled."""
    await sim_lanes(never_complete=1.0)
    who = tenant("expire")
    await Ledger(front.redis).add(who, "5")
    client = await front.client(who)
    created = await create(client, [line(f"e{i}", f"expire {i}") for i in range(2)])
    parked = [scoped_id(who, job_id_for(created.id, i)) for i in range(2)]

    async def in_a_provider_batch() -> set[str] | None:
        batches = [await front.redis.hget(record_key(j), "lane_batch") for j in parked]
        return {b.decode() for b in batches if b} if all(batches) else None

    ours = await until(in_a_provider_batch, timeout=15, what="the lines to be in a provider batch")
    assert isinstance(ours, set)
    await front.redis.hset(batch_key(created.id), "expires_at", int(time.time()) - 1)  # the window ends
    batch = await ended(client, created.id, until, timeout=15)
    assert batch.status == "expired" and batch.expired_at, batch
    assert counts_of(batch) == (2, 0, 2) and batch.output_file_id is None
    assert batch.error_file_id is not None
    rows = await read_lines(client, batch.error_file_id)
    assert {c: r["error"]["code"] for c, r in rows.items()} == {"e0": "batch_expired", "e1": "batch_expired"}
    money = await ledger_of(front.redis, who)
    assert money["reserved"] == 0 and money.get("spent", 0) == 0

    async def provider_batches_cancelled() -> bool:
        states = [await front.redis.hmget(lane_batch_key(b), "state", "remote_status") for b in ours]
        return all(s == [b"done", b"cancelled"] for s in states)

    await until(provider_batches_cancelled, timeout=10, what="the provider batch to be cancelled")


async def test_a_batch_lane_job_reports_its_own_end_and_its_provider_batch_nothing(
    front: Front, sim_lanes, until: Until
) -> None:
    """A job of ``/v1/jobs`` on the batch lane, with a webhook: it reports ``job.succeeded`` once
    when the batcher ingests its answer; the provider batch it ran in reports nothing."""
    await sim_lanes(turnaround_s=[0.3, 0.5])
    who = tenant("job")
    await front.client(who)
    await TenantPolicies(front.redis, front.settings).set(
        who, {"webhook_url": front.hooks.url(f"{who}-default")}
    )
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "one job in a provider batch"}],
        "lane": "batch",
        "deadline_s": 60,
        "webhook": {"url": front.hooks.url(f"{who}-job")},
    }
    headers = {"Authorization": f"Bearer {front.keys[who]}"}
    async with aiohttp.ClientSession() as s, s.post(f"{front.url}/v1/jobs", json=body, headers=headers) as r:
        assert r.status in (200, 201, 202), await r.text()
        job_id = (await r.json())["id"]
    await until(lambda: front.hooks.calls[f"{who}-job"], timeout=15, what="job.succeeded")
    record = await front.job(who, job_id)
    assert record["status"] == "succeeded" and record["lane"] == "batch", record
    await asyncio.sleep(1.0)  # room for anything else to arrive
    (event,) = front.hooks.events(f"{who}-job", who)
    assert event["type"] == "job.succeeded" and event["data"]["id"] == job_id
    assert sum(len(calls) for name, calls in front.hooks.calls.items() if name.startswith(who)) == 1


async def test_lines_the_provider_batch_fails_run_now_and_the_batch_completes(
    front: Front, sim_lanes, sim_catalog: Catalog, until: Until
) -> None:
    """Every line of the provider batch answered with an error: each goes back to `now` with its
    fallback chain and succeeds there; the batch completes, every line at the `now` price."""
    await sim_lanes(turnaround_s=[0.2, 0.3], item_failure=1.0)
    who = tenant("itemfail")
    client = await front.client(who)
    created = await create(client, [line(f"f{i}", f"fails in the batch {i}") for i in range(3)])
    batch = await ended(client, created.id, until)
    assert batch.status == "completed" and counts_of(batch) == (3, 3, 0), batch
    assert batch.output_file_id is not None
    rows = await read_lines(client, batch.output_file_id)
    for custom_id, row in rows.items():
        record = await front.job(who, row["response"]["request_id"])
        assert record["lane"] == "now" and "error" in record["lane_reason"], record
        usage = row["response"]["body"]["usage"]
        assert usd_to_nanos(usage["cost"]) == prices(sim_catalog, usage)[0], custom_id
