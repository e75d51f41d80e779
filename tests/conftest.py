"""Session fixtures: a real redis-server on a free port, the shipped catalog with simulator keys."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from config.catalog import Catalog
from config.settings import DEFAULT_CATALOG, Settings
from llm_router.redis_server import RedisServer
from llm_router.sim_env import SIM_KEYS
from producer.producer import Producer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def sim_catalog() -> Catalog:
    """The shipped catalog as a worker pointed at the simulator sees it (placeholder keys only)."""
    return Catalog.from_path(DEFAULT_CATALOG, env=SIM_KEYS, upstream="http://127.0.0.1:9")


@pytest.fixture
def settings(redis_server: RedisServer) -> Settings:
    """Settings on the test Redis with a queue of its own, so tests never see each other's jobs."""
    return Settings(_env_file=None, redis_url=redis_server.url, queue_name=f"test-{uuid.uuid4().hex[:10]}")


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
async def producer(settings: Settings, sim_catalog: Catalog) -> AsyncIterator[Producer]:
    p = await Producer.connect(settings, sim_catalog)
    yield p
    await p.close()
