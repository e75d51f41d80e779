"""Lane fixtures: the simulator's flex and batch behaviour, set per test and put back after."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest

from llm_router.testing.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A Redis of this directory's own: the batcher is one role per Redis, and these tests need it
    held by their own workers, with their settings, never by another file's fleet in this pytest
    process (alive, or just killed while holding it)."""
    with RedisServer() as server:
        yield server


@pytest.fixture
async def sim_lanes(sim) -> AsyncIterator[Callable[..., Awaitable[dict[str, Any]]]]:
    """``await sim_lanes(turnaround_s=[0.2, 0.3], ...)`` configures the simulator's lanes."""

    async def configure(**config: Any) -> dict[str, Any]:
        async with aiohttp.ClientSession() as s:
            r = await s.post(f"{sim.url}/_sim/lanes", json=config)
            assert r.status == 200, await r.text()
            return await r.json()

    yield configure
    await configure()


async def sim_lane_counters(sim) -> dict[str, int]:
    async with aiohttp.ClientSession() as s:
        r = await s.get(f"{sim.url}/_sim/lanes")
        return (await r.json())["counters"]


# lanes scaled down for tests: batches form within a fraction of a second, and a job goes back to
# `now` 1.5 s before its deadline
LANE_ENV = {
    "LLM_ROUTER_LANES_POLL_S": "0.1",
    "LLM_ROUTER_LANES_BATCH_AGE_S": "0.3",
    "LLM_ROUTER_LANES_NOW_EXPECTED_S": "1.0",
    "LLM_ROUTER_LANES_MARGIN_S": "0.5",
    "LLM_ROUTER_LANES_BATCH_EXPECTED_S": "1.0",
    "LLM_ROUTER_LANES_FLEX_EXPECTED_S": "1.0",
    "LLM_ROUTER_LANES_ROLE_TTL_S": "1.5",
}


@pytest.fixture(scope="session")
def lanes_queue() -> str:
    import uuid

    return f"lanes-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def lane_workers(redis_server, sim, lanes_queue, tmp_path_factory):
    import os

    from llm_router.testing.sim_env import simulated_env
    from llm_router.testing.worker_procs import WorkerProcess

    env = simulated_env(os.environ, redis_url=redis_server.url, sim_url=sim.url)
    env.update(
        LLM_ROUTER_QUEUE_NAME=lanes_queue,
        LLM_ROUTER_HEARTBEAT_INTERVAL_S="0.5",
        LLM_ROUTER_RETRY_BACKOFF_S="0.2",
        LLM_ROUTER_RETRY_BUDGET_RATIO="1.0",
        LLM_ROUTER_LOG_LEVEL="INFO",
        **LANE_ENV,
    )
    logs = tmp_path_factory.mktemp("lane-workers")
    procs = [WorkerProcess(env, logs / f"worker-{i}.log") for i in range(2)]
    yield procs
    for p in procs:
        p.stop()


@pytest.fixture
async def lanes(redis_server, lanes_queue, sim_catalog, lane_workers):
    import asyncio
    import time

    from config.settings import Settings
    from producer.producer import Producer

    settings = Settings(_env_file=None, redis_url=redis_server.url, queue_name=lanes_queue)
    producer = await Producer.connect(settings, sim_catalog)
    deadline = time.monotonic() + 30
    while await producer.live_workers() < len(lane_workers):
        assert all(w.alive() for w in lane_workers), [w.log_tail() for w in lane_workers]
        assert time.monotonic() < deadline, "workers did not start"
        await asyncio.sleep(0.05)
    yield producer
    await producer.close()
