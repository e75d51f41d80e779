"""The batcher resumes Anthropic's and Gemini's batches as it does OpenAI's: a batch formed but never
created is created and ingested once (a second read settles nothing again); a Gemini batch created
but not recorded is adopted (found by its display name, our batch id), never created twice; a
Message Batch has no metadata to find it by, so it is created anew (and the orphan never read).
In-process against its own Redis database and the simulator (``rig`` of test_batcher_resume)."""

from __future__ import annotations

import time
import uuid

import orjson
import pytest

from llm_router.credits import Ledger
from llm_router.keys import LANES_STATS_KEY, credits_key, lane_batch_key, request_key
from llm_router.lanes_lua import LaneScripts
from tests.lanes.conftest import sim_lane_counters
from tests.lanes.test_batcher_resume import _drain, rig  # noqa: F401 (the fixture)
from worker.batch_api import client_for

FORMATS = [
    pytest.param("claude-haiku-4-5", "anthropic/claude-haiku-4-5", id="anthropic"),
    pytest.param("gemini-2.5-flash", "gemini/gemini-2.5-flash", id="gemini"),
]


async def _formed(producer, redis, tenant: str, model: str, dep: str, n: int) -> tuple[str, list[str]]:
    """``n`` batch jobs parked and formed into a batch of ours, as a holder leaves them when it
    dies right after forming."""
    # each job its own max_tokens, which cuts its answer: a record shows whose answer it got
    job = {"model": model, "messages": [{"role": "user", "content": "resume"}], "lane": "batch"}
    subs = await producer.submit_many([{**job, "max_tokens": 3 + 2 * k} for k in range(n)], tenant=tenant)
    scripts = LaneScripts(redis)
    for s in subs:
        await scripts.park(producer.scoped(s.job_id, tenant), dep, 1, "asked", 10**13)
    batch_id = uuid.uuid4().hex[:16]
    assert len(await scripts.form(batch_id, dep, 100, time.time())) == n
    return batch_id, [s.job_id for s in subs]


@pytest.mark.parametrize(("model", "dep_id"), FORMATS)
async def test_a_formed_batch_is_created_and_ingested_once(rig, sim, sim_lanes, model, dep_id) -> None:  # noqa: F811
    producer, batcher, redis = rig
    await sim_lanes(turnaround_s=[0.1, 0.2])
    tenant = f"resume-{uuid.uuid4().hex[:6]}"
    await Ledger(redis).add(tenant, "10")
    before = (await sim_lane_counters(sim))["batches_created"]
    batch_id, ids = await _formed(producer, redis, tenant, model, dep_id, 3)
    await _drain(batcher, redis)
    assert (await sim_lane_counters(sim))["batches_created"] == before + 1
    records = [await producer.get(i, tenant=tenant) for i in ids]
    assert all(r.status == "succeeded" and r.lane == "batch" for r in records), [
        r.lane_reason for r in records
    ]
    # each job got its own answer (positions mapped back through the recorded order)
    assert [r.usage.completion_tokens for r in records] == [3, 5, 7]
    spent = int(await redis.hget(credits_key(tenant), "spent"))
    assert spent == sum(r.usage.cost_nanos for r in records)
    # a successor reading the same results again (the holder died mid-ingest) changes nothing
    h = {
        k.decode(): v.decode()
        for k, v in (await redis.hgetall(lane_batch_key(batch_id))).items()
        if k != b"order"
    }
    dep = batcher.deployments[dep_id]
    client = client_for(batcher.session, dep)
    await batcher._ingest(batch_id, dep, h, await client.retrieve(h["remote_id"]), client)
    assert int(await redis.hget(credits_key(tenant), "spent")) == spent
    assert not await redis.hget(LANES_STATS_KEY, "wasted_results")
    assert [(await producer.get(i, tenant=tenant)).runs for i in ids] == [r.runs for r in records]


@pytest.mark.parametrize(("model", "dep_id"), FORMATS)
async def test_a_created_but_unrecorded_batch(rig, sim, sim_lanes, model, dep_id) -> None:  # noqa: F811
    producer, batcher, redis = rig
    await sim_lanes(turnaround_s=[0.1, 0.2])
    tenant = f"resume-{uuid.uuid4().hex[:6]}"
    batch_id, ids = await _formed(producer, redis, tenant, model, dep_id, 2)
    # the dead holder had recorded the order, built the items and created the provider's batch
    dep = batcher.deployments[dep_id]
    client = client_for(batcher.session, dep)
    jobs = [f"{tenant}/{i}" for i in ids]
    await redis.hset(lane_batch_key(batch_id), "order", orjson.dumps(jobs))
    items = []
    for n, job in enumerate(jobs):
        request = orjson.loads(await redis.get(request_key(job)))
        items.append(client.fmt.item(client.fmt.key(n, job), request, dep))
    await client.create(batch_id, items, "24h")
    before = (await sim_lane_counters(sim))["batches_created"]
    await _drain(batcher, redis)
    created = (await sim_lane_counters(sim))["batches_created"] - before
    assert created == (0 if dep.provider == "gemini" else 1)  # Gemini's is adopted; Anthropic's made anew
    records = [await producer.get(i, tenant=tenant) for i in ids]
    assert all(r.status == "succeeded" and r.lane == "batch" for r in records)
    assert [r.usage.completion_tokens for r in records] == [3, 5]


async def test_an_image_by_url_goes_back_to_now_for_gemini(rig, sim, sim_lanes) -> None:  # noqa: F811
    """Gemini cannot fetch an image URL (the `now` lane inlines it first): such a job leaves the batch
    before it is created, the others are batched."""
    producer, batcher, redis = rig
    await sim_lanes(turnaround_s=[0.1, 0.2])
    tenant = f"resume-{uuid.uuid4().hex[:6]}"
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    job = {"model": "gemini-2.5-flash", "max_tokens": 5, "lane": "batch"}
    texts = {**job, "messages": [{"role": "user", "content": "plain"}]}
    pictured = {**job, "messages": [{"role": "user", "content": [{"type": "text", "text": "see"}, image]}]}
    subs = await producer.submit_many([texts, pictured], tenant=tenant)
    scripts = LaneScripts(redis)
    for s in subs:
        await scripts.park(producer.scoped(s.job_id, tenant), "gemini/gemini-2.5-flash", 1, "asked", 10**13)
    await scripts.form(uuid.uuid4().hex[:16], "gemini/gemini-2.5-flash", 100, time.time())
    await _drain(batcher, redis)
    plain, with_image = [await producer.get(s.job_id, tenant=tenant) for s in subs]
    assert plain.status == "succeeded" and plain.lane == "batch"
    # sent back to its queue (no worker serves it here): the `now` lane will inline the image
    assert with_image.status == "queued" and with_image.lane == "now"
    assert "images by URL" in (with_image.lane_reason or "")
