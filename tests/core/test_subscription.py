"""A subscription read from its connection: messages by name and by pattern in order, a quiet channel
that outlasts the client's read timeout, a broken connection, and the health pings of a quiet one."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from llm_router.subscription import Message, Subscription
from llm_router.testing.redis_server import RedisServer


@contextlib.asynccontextmanager
async def _subscribed(client: Redis, named: str, pattern: str | None = None) -> AsyncIterator[Subscription]:
    pubsub = client.pubsub()
    await pubsub.subscribe(named)
    if pattern is not None:
        await pubsub.psubscribe(pattern)
    sub = Subscription(pubsub)
    try:
        yield sub
    finally:
        sub.close()
        await pubsub.aclose()


def _names() -> tuple[str, str]:
    base = f"sub-test:{uuid.uuid4().hex}"
    return f"{base}:named", f"{base}:pattern:*"


async def test_messages_by_name_and_by_pattern_come_in_order(redis: Redis) -> None:
    named, pattern = _names()
    async with _subscribed(redis, named, pattern) as sub:
        matched = pattern.replace("*", "one").encode()
        await redis.publish(named, b"first")
        await redis.publish(matched, b"\xff\x00 bytes as sent")
        await redis.publish(named, b"third")
        async with asyncio.timeout(5):
            got = [await sub.next() for _ in range(3)]
        assert got == [
            Message(named.encode(), b"first", None),
            Message(matched, b"\xff\x00 bytes as sent", pattern.encode()),
            Message(named.encode(), b"third", None),
        ]


async def test_a_quiet_channel_outlasts_the_clients_read_timeout(redis_server: RedisServer) -> None:
    # redis-py's listen() reads under the socket timeout: a channel quiet for longer ended it
    client = Redis.from_url(redis_server.url, socket_timeout=0.2)
    named, _ = _names()
    try:
        async with _subscribed(client, named) as sub:
            reader = asyncio.ensure_future(sub.next())
            await asyncio.sleep(0.8)  # the quiet spell is what is tested
            assert not reader.done()
            await client.publish(named, b"late")
            async with asyncio.timeout(5):
                assert (await reader).data == b"late"
    finally:
        await client.aclose()


async def test_a_broken_connection_fails_the_read(redis: Redis) -> None:
    named, _ = _names()
    async with _subscribed(redis, named) as sub:
        reader = asyncio.ensure_future(sub.next())
        killed = await redis.client_kill_filter(_type="pubsub")
        assert killed >= 1
        async with asyncio.timeout(5):
            with pytest.raises(RedisConnectionError):
                await reader


async def test_a_quiet_subscription_pings_and_its_pongs_are_not_messages() -> None:
    with RedisServer() as server:  # its own: other tests' clients ping the shared one
        await _pings_of_a_quiet_subscription(server)


async def _pings_of_a_quiet_subscription(server: RedisServer) -> None:
    client = Redis.from_url(server.url, health_check_interval=0.1)
    redis = Redis.from_url(server.url)
    named, _ = _names()

    async def pings() -> int:
        # counted on a client without health checks (the pinging one would ping before its INFO)
        return int((await redis.info("commandstats")).get("cmdstat_ping", {}).get("calls", 0))

    try:
        async with _subscribed(client, named) as sub:
            reader = asyncio.ensure_future(sub.next())
            before = await pings()
            async with asyncio.timeout(5):  # a ping every 0.1 s: three come soon, on a busy host too
                while await pings() - before < 3:
                    await asyncio.sleep(0.05)
            assert not reader.done()  # the pongs came and were read past
            await redis.publish(named, b"after the pings")
            async with asyncio.timeout(5):
                assert (await reader).data == b"after the pings"
            sub.close()
            await asyncio.sleep(0.05)
            before = await pings()
            await asyncio.sleep(0.4)  # a quiet spell of four intervals is what is tested
            assert await pings() == before  # closed: no more pings
    finally:
        await client.aclose()
        await redis.aclose()


async def test_reading_before_subscribing_is_a_clear_error(redis: Redis) -> None:
    with pytest.raises(RuntimeError, match="subscribe before reading"):
        Subscription(redis.pubsub())
