"""End-to-end fixtures: the simulator and two worker processes, as separate processes, on the test Redis."""

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


@pytest.fixture(scope="session")
def e2e_queue() -> str:
    return f"e2e-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def worker_env(redis_server: RedisServer, sim, e2e_queue: str) -> dict[str, str]:
    env = simulated_env(os.environ, redis_url=redis_server.url, sim_url=sim.url)
    env.update(
        LLM_ROUTER_QUEUE_NAME=e2e_queue,
        LLM_ROUTER_HEARTBEAT_INTERVAL_S="0.5",
        LLM_ROUTER_RETRY_BACKOFF_S="0.2",
        # every retry allowed, so a test's attempts do not depend on what the workers did before it
        LLM_ROUTER_RETRY_BUDGET_RATIO="1.0",
        LLM_ROUTER_STREAM_TTFT_S="1.0",
        LLM_ROUTER_STREAM_IDLE_S="0.5",
        LLM_ROUTER_LOG_LEVEL="WARNING",
    )
    return env


@pytest.fixture(scope="session")
def workers(
    worker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[WorkerProcess]]:
    logs: Path = tmp_path_factory.mktemp("workers")
    procs = [WorkerProcess(worker_env, logs / f"worker-{i}.log") for i in range(2)]
    yield procs
    for p in procs:
        p.stop()


@pytest.fixture
def e2e_settings(redis_server: RedisServer, e2e_queue: str) -> Settings:
    return Settings(_env_file=None, redis_url=redis_server.url, queue_name=e2e_queue, retry_backoff_s=0.2)


@pytest.fixture
async def e2e(
    e2e_settings: Settings, sim_catalog: Catalog, workers: list[WorkerProcess]
) -> AsyncIterator[Producer]:
    """A producer on the queue that the two worker processes serve, once both are alive."""
    producer = await Producer.connect(e2e_settings, sim_catalog)
    deadline = time.monotonic() + 30
    while await producer.live_workers() < len(workers):
        assert all(w.alive() for w in workers), [w.log_tail() for w in workers]
        assert time.monotonic() < deadline, "workers did not start"
        await __import__("asyncio").sleep(0.05)
    yield producer
    await producer.close()
