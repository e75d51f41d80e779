"""Scripts tested on their own: a Redis database of their own, emptied before each test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from llm_router.testing.redis_server import RedisServer

SCRIPTS_DB = 9  # the other tests use database 0; this one is flushed at will


@pytest.fixture
async def bare_redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis(host="127.0.0.1", port=redis_server.port, db=SCRIPTS_DB)
    await client.flushdb()
    yield client
    await client.aclose()
