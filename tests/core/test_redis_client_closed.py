"""A connection closed under its owner fails its next write as a connection error.

``_SentinelPool.follow_primary`` closes the connections in use to a primary the sentinels replaced,
and Redis may hang up on one (Sentinel's ``CLIENT KILL``) before its owner reads. On uvloop, which
the server and the workers run, a write to a closed transport raised ``RuntimeError``; nothing
catches that as a connection error, and a worker's auto-pipeline crashed the worker with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop
from redis.exceptions import ConnectionError as RedisConnectionError

from config.settings import Settings
from llm_router.redis_client import redis_client

RUNNERS: dict[str, Callable[[Coroutine[Any, Any, None]], None]] = {
    "uvloop": uvloop.run,
    "asyncio": asyncio.run,
}


@pytest.mark.parametrize("loop", RUNNERS)
def test_a_write_on_a_connection_closed_under_its_owner_is_a_connection_error(
    settings: Settings, loop: str
) -> None:
    async def body() -> None:
        client = redis_client(settings)
        try:
            conn = await client.connection_pool.get_connection()
            await conn.send_command("PING")
            assert await conn.read_response() == b"PONG"
            conn._writer.transport.abort()  # as follow_primary does, before anything reads
            for _ in range(3):  # the loop closes the transport's handle (nobody reads to notice)
                await asyncio.sleep(0)
            with pytest.raises(RedisConnectionError):
                await conn.send_command("PING")
            await client.connection_pool.release(conn)
            assert await client.ping()  # the pool connects again
        finally:
            await client.aclose()

    RUNNERS[loop](body())
