"""Fixtures for the native-provider end-to-end test: two worker processes on a queue of their own."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from config.catalog import Catalog
from config.settings import Settings
from llm_router.testing.redis_server import RedisServer
from llm_router.testing.sim_env import simulated_env
from llm_router.testing.worker_procs import WorkerProcess
from producer.producer import Producer


@pytest.fixture(scope="module")
def native_queue() -> str:
    return f"native-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def native_workers(
    redis_server: RedisServer, sim, native_queue: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[WorkerProcess]]:
    env = simulated_env(os.environ, redis_url=redis_server.url, sim_url=sim.url)
    env.update(
        LLM_ROUTER_QUEUE_NAME=native_queue,
        LLM_ROUTER_HEARTBEAT_INTERVAL_S="0.5",
        LLM_ROUTER_RETRY_BACKOFF_S="0.2",
        LLM_ROUTER_LOG_LEVEL="WARNING",
    )
    logs: Path = tmp_path_factory.mktemp("native-workers")
    procs = [WorkerProcess(env, logs / f"worker-{i}.log") for i in range(2)]
    yield procs
    for p in procs:
        p.stop()


@pytest.fixture
async def native(
    redis_server: RedisServer, native_queue: str, sim_catalog: Catalog, native_workers: list[WorkerProcess]
) -> AsyncIterator[Producer]:
    """A producer on the queue the two workers serve, once both are alive."""
    settings = Settings(_env_file=None, redis_url=redis_server.url, queue_name=native_queue)
    producer = await Producer.connect(settings, sim_catalog)
    deadline = time.monotonic() + 30
    while await producer.live_workers() < len(native_workers):
        assert all(w.alive() for w in native_workers), [w.log_tail() for w in native_workers]
        assert time.monotonic() < deadline, "workers did not start"
        await __import__("asyncio").sleep(0.05)
    yield producer
    await producer.close()
