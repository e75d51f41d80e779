"""Durability fixtures: workers with a one-second lease that tests start, kill and stop themselves."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from config.catalog import Catalog
from config.settings import Settings
from llm_router.testing.redis_server import RedisServer
from llm_router.testing.sim_env import simulated_env
from llm_router.testing.worker_procs import Fleet
from producer.producer import Producer

LEASE_S = 1.0


def durable_env(redis_url: str, sim_url: str, queue: str) -> dict[str, str]:
    env = simulated_env(os.environ, redis_url=redis_url, sim_url=sim_url)
    env.update(
        LLM_ROUTER_QUEUE_NAME=queue,
        LLM_ROUTER_LEASE_S=str(LEASE_S),
        LLM_ROUTER_HEARTBEAT_INTERVAL_S="0.2",
        LLM_ROUTER_HEARTBEAT_TTL_S="2",
        LLM_ROUTER_SHUTDOWN_GRACE_S="5",
        LLM_ROUTER_LOG_LEVEL="INFO",
    )
    return env


@pytest.fixture
def queue() -> str:
    return f"durable-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def fleet(redis_server: RedisServer, sim, queue: str, tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(durable_env(redis_server.url, sim.url, queue), tmp_path)
    yield f
    f.stop_all()


@pytest.fixture
async def durable(redis_server: RedisServer, queue: str, sim_catalog: Catalog) -> AsyncIterator[Producer]:
    settings = Settings(_env_file=None, redis_url=redis_server.url, queue_name=queue, heartbeat_ttl_s=2)
    producer = await Producer.connect(settings, sim_catalog)
    yield producer
    await producer.close()
