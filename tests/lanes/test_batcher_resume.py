"""The batcher resumes what a killed holder left, with no double ingest: a batch formed but never
created is uploaded; one created but not recorded is adopted (found by its metadata); a batch read
twice settles each job once. Run in-process against its own Redis database and the simulator."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis

from config.catalog import Catalog
from config.settings import DEFAULT_CATALOG, Settings
from llm_router.credits import Ledger
from llm_router.keys import (
    LANES_OPEN_KEY,
    LANES_STATS_KEY,
    credits_key,
    lane_batch_key,
    request_key,
)
from llm_router.lanes_lua import LaneScripts
from llm_router.store import Store
from llm_router.testing.sim_env import SIM_KEYS
from producer.producer import Producer
from tests.lanes.conftest import sim_lane_counters
from worker.batch_api import BatchAPI, batch_line
from worker.batcher import Batcher

DB = 11  # a database of its own: the lane workers' batcher (tests/lanes/conftest.py) serves db 0
DEP = "openai/gpt-4o-mini"
JOB = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "resume"}], "max_tokens": 20}


@pytest.fixture
async def rig(redis_server, sim) -> AsyncIterator[tuple[Producer, Batcher, Redis]]:
    url = f"{redis_server.url}/{DB}"
    settings = Settings(_env_file=None, redis_url=url, queue_name="resume", lanes_poll_s=0.05)
    redis = Redis.from_url(url)
    await redis.flushdb()
    catalog = Catalog.from_path(DEFAULT_CATALOG, env=SIM_KEYS, upstream=sim.url)
    producer = await Producer.connect(settings, catalog)
    store = Store(redis, queue_name="resume", record_ttl_s=600)
    async with aiohttp.ClientSession() as session:
        yield producer, Batcher(redis, store, catalog, settings, session), redis
    await producer.close()
    await redis.aclose()


async def _parked_batch(producer: Producer, redis: Redis, tenant: str, batch_id: str, n: int) -> list[str]:
    """``n`` batch jobs parked and formed into ``batch_id``, as a holder leaves them when it dies
    right after forming (no provider batch recorded)."""
    subs = await producer.submit_many([{**JOB, "lane": "batch"} for _ in range(n)], tenant=tenant)
    scripts = LaneScripts(redis)
    for s in subs:
        await scripts.park(producer.scoped(s.job_id, tenant), DEP, 1, "asked", 10**13)
    taken = await scripts.form(batch_id, DEP, 100, time.time())
    assert len(taken) == n
    return [s.job_id for s in subs]


async def _drain(batcher: Batcher, redis: Redis) -> None:
    deadline = time.monotonic() + 15
    while await redis.scard(LANES_OPEN_KEY):
        assert time.monotonic() < deadline, "the batcher did not finish its batches"
        await batcher.tick()
        await asyncio.sleep(0.05)


async def test_a_formed_batch_is_uploaded_and_ingested_once(rig, sim, sim_lanes) -> None:
    producer, batcher, redis = rig
    await sim_lanes(turnaround_s=[0.1, 0.2])
    tenant = "resume-a"
    await Ledger(redis).add(tenant, "10")
    before = (await sim_lane_counters(sim))["batches_created"]
    ids = await _parked_batch(producer, redis, tenant, "formed", 3)
    await _drain(batcher, redis)
    assert (await sim_lane_counters(sim))["batches_created"] == before + 1
    records = [await producer.get(i, tenant=tenant) for i in ids]
    assert all(r.status == "succeeded" and r.lane == "batch" for r in records)
    spent = int(await redis.hget(credits_key(tenant), "spent"))
    assert spent == sum(r.usage.cost_nanos for r in records)
    # a successor reading the same output again (the holder died mid-ingest) changes nothing
    h = {k.decode(): v.decode() for k, v in (await redis.hgetall(lane_batch_key("formed"))).items()}
    api = BatchAPI(batcher.session, batcher.deployments[DEP])
    remote = await api.retrieve(h["remote_id"])
    await batcher._ingest("formed", batcher.deployments[DEP], h, remote, api)
    assert int(await redis.hget(credits_key(tenant), "spent")) == spent
    assert not await redis.hget(LANES_STATS_KEY, "wasted_results")
    assert [(await producer.get(i, tenant=tenant)).runs for i in ids] == [r.runs for r in records]


async def test_a_created_but_unrecorded_batch_is_adopted_not_created_again(rig, sim, sim_lanes) -> None:
    producer, batcher, redis = rig
    await sim_lanes(turnaround_s=[0.1, 0.2])
    tenant = "resume-b"
    ids = await _parked_batch(producer, redis, tenant, "created", 2)
    # the dead holder had uploaded and created it, naming our batch in its metadata
    dep = batcher.deployments[DEP]
    api = BatchAPI(batcher.session, dep)
    lines = []
    for i in ids:
        request = await redis.get(request_key(f"{tenant}/{i}"))
        lines.append(batch_line(f"{tenant}/{i}", orjson.loads(request), dep))
    await api.create("created", lines, "24h")  # its metadata names our batch
    before = (await sim_lane_counters(sim))["batches_created"]
    await _drain(batcher, redis)
    assert (await sim_lane_counters(sim))["batches_created"] == before  # adopted, not created again
    records = [await producer.get(i, tenant=tenant) for i in ids]
    assert all(r.status == "succeeded" and r.lane == "batch" for r in records)


async def test_a_batch_never_passes_the_lanes_max_bytes(rig, sim, sim_lanes) -> None:
    import dataclasses

    from config.catalog import BatchLaneSpec, LanesSpec

    producer, batcher, redis = rig
    await sim_lanes(turnaround_s=[0.05, 0.1])
    # a file takes one line at most: three jobs are three provider batches
    dep = batcher.deployments[DEP]
    batcher.deployments[DEP] = dataclasses.replace(dep, lanes=LanesSpec(batch=BatchLaneSpec(max_bytes=1)))
    tenant = "resume-c"
    before = (await sim_lane_counters(sim))["batches_created"]
    ids = await _parked_batch(producer, redis, tenant, "big", 3)
    await _drain(batcher, redis)
    records = [await producer.get(i, tenant=tenant) for i in ids]
    assert all(r.status == "succeeded" and r.lane == "batch" for r in records)
    assert (await sim_lane_counters(sim))["batches_created"] == before + 3
