"""Money with lanes (conventions: the worst-case hook): a lane job reserves the `now` price, since
it can always be sent back there, so concurrent submits never overspend whatever lane they ask; and
a batch job sent back to `now` is charged once, at the price of the lane that answered."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from config.cost import nanos_to_usd
from llm_router.credits import Ledger
from llm_router.keys import credits_key
from producer.producer import Producer, Submitted

HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("lane", ["batch", "flex", "auto"])
async def test_concurrent_producers_never_overspend_with_lanes(producer: Producer, lane: str) -> None:
    tenant = f"lanes-money-{uuid.uuid4().hex[:8]}"
    ledger = Ledger(producer.redis)
    job = {"model": "gpt-4o-mini", "messages": HI, "max_tokens": 500, "lane": lane}
    reserve = producer.validator.prepare(dict(job), now=0).reserve_nanos
    now_reserve = producer.validator.prepare({**job, "lane": "now"}, now=0).reserve_nanos
    assert reserve >= now_reserve  # the lane's discount never lowers the reservation
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
    assert created == 40  # exactly what the credit covers at the `now` price, out of 150 racing submits
    balance = await ledger.show(tenant)
    assert balance is not None and balance.available >= 0


async def test_a_sent_back_batch_job_is_charged_once_within_its_reservation(lanes, sim_lanes, redis) -> None:
    await sim_lanes(never_complete=1.0)
    tenant = f"lanes-money-{uuid.uuid4().hex[:8]}"
    job = {"model": "gpt-4o-mini", "messages": HI, "max_tokens": 50, "lane": "batch", "deadline_s": 3}
    reserve = lanes.validator.prepare(dict(job), now=0).reserve_nanos
    await Ledger(redis).add(tenant, nanos_to_usd(reserve * 3))
    subs = await lanes.submit_many([dict(job) for _ in range(3)], tenant=tenant)
    assert all(isinstance(s, Submitted) for s in subs)
    refused = await lanes.submit_many([dict(job)], tenant=tenant)
    assert not isinstance(refused[0], Submitted)  # the credit is held at the `now` price
    records = await lanes.wait_many(subs, timeout=20, tenant=tenant)
    assert all(r.status == "succeeded" and r.lane == "now" for r in records)
    raw = {k.decode(): int(v) for k, v in (await redis.hgetall(credits_key(tenant))).items()}
    assert raw["reserved"] == 0 and raw["spent"] == sum(r.usage.cost_nanos for r in records)
    assert raw["spent"] <= reserve * 3
