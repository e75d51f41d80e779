"""Resilience fixtures: worker processes with sub-second breaker windows and cooldowns."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from config.catalog import Catalog
from config.settings import DEFAULT_CATALOG, Settings
from llm_router.testing.redis_server import RedisServer
from llm_router.testing.sim_env import simulated_env
from llm_router.testing.worker_procs import Fleet
from producer.producer import Producer

# two providers only: gpt-4o runs on OpenAI then AIsa; Claude and Gemini models on AIsa alone
KEYS = {"OPENAI_API_KEY": "sk-sim-openai", "AISA_API_KEY": "sk-sim-aisa"}
BREAKER = {
    "LLM_ROUTER_BREAKER_CONSECUTIVE": "3",
    "LLM_ROUTER_BREAKER_MIN_CALLS": "4",
    "LLM_ROUTER_BREAKER_FAILURE_RATE": "0.5",
    "LLM_ROUTER_BREAKER_WINDOW_S": "5",
    "LLM_ROUTER_BREAKER_BUCKET_S": "0.5",
    "LLM_ROUTER_BREAKER_COOLDOWN_S": "1",
    "LLM_ROUTER_BREAKER_MAX_COOLDOWN_S": "4",
    "LLM_ROUTER_BREAKER_PROBES": "1",
    "LLM_ROUTER_RETRY_BACKOFF_S": "0.2",
    "LLM_ROUTER_RETRY_BACKOFF_MAX_S": "0.5",
    "LLM_ROUTER_SAME_DEPLOYMENT_RETRIES": "0",
    "LLM_ROUTER_HEARTBEAT_INTERVAL_S": "0.2",
    "LLM_ROUTER_LOG_LEVEL": "WARNING",
}


@pytest.fixture
def rqueue() -> str:
    return f"resilience-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def catalog_path() -> Path:
    """The catalog the fleet and the producer use; a test may point it at its own YAML."""
    return DEFAULT_CATALOG


@pytest.fixture
def fleet(redis_server: RedisServer, sim, rqueue: str, catalog_path: Path, tmp_path: Path) -> Iterator[Fleet]:
    env = simulated_env(os.environ, redis_url=redis_server.url, sim_url=sim.url, keys=KEYS)
    env.update(BREAKER, LLM_ROUTER_QUEUE_NAME=rqueue, LLM_ROUTER_CONFIG=str(catalog_path))
    f = Fleet(env, tmp_path)
    yield f
    f.stop_all()


@pytest.fixture
async def producer_r(redis_server: RedisServer, rqueue: str, catalog_path: Path) -> AsyncIterator[Producer]:
    settings = Settings(_env_file=None, redis_url=redis_server.url, queue_name=rqueue, heartbeat_ttl_s=2)
    catalog = Catalog.from_path(catalog_path, env=KEYS, upstream="http://127.0.0.1:9")
    producer = await Producer.connect(settings, catalog)
    yield producer
    await producer.close()


@pytest.fixture
def calls(sim) -> Callable[..., object]:
    """``await calls(credential, model)``: requests the simulator has seen for that pair."""

    async def count(credential: str, model: str) -> int:
        snapshot = await sim.calls()
        return sum(
            c["count"] for c in snapshot["calls"] if c["credential"] == credential and c["model"] == model
        )

    return count
