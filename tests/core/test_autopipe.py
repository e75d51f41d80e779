"""The auto-pipeline: replies go back to their own callers, errors to theirs, and a silent Redis
fails callers with a timeout instead of holding them forever."""

from __future__ import annotations

import asyncio
import socket
import uuid

import pytest
from hiredis import pack_command
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from llm_router.autopipe import AutoPipeline
from llm_router.testing.redis_server import RedisServer


async def test_many_callers_each_get_their_own_reply(redis: Redis) -> None:
    pipe = AutoPipeline(redis)
    await redis.delete("ap:counter")

    async def one(i: int) -> tuple[int, object]:
        if i % 7 == 0:  # an error reply in the middle of a batch must not shift the others
            try:
                await pipe.call(pack_command(("INCRBY", "ap:counter", "not-a-number")))
            except ResponseError as exc:
                return i, exc
        return i, await pipe.call(pack_command(("ECHO", f"reply-{i}")))

    results = await asyncio.gather(*(one(i) for i in range(500)))
    for i, reply in results:
        if i % 7 == 0:
            assert isinstance(reply, ResponseError)
        else:
            assert reply == f"reply-{i}".encode()


async def test_a_cancelled_caller_does_not_shift_the_replies(redis: Redis) -> None:
    pipe = AutoPipeline(redis)
    first = asyncio.ensure_future(pipe.call(pack_command(("ECHO", "a"))))
    second = asyncio.ensure_future(pipe.call(pack_command(("ECHO", "b"))))
    first.cancel()
    assert await second == b"b"
    assert await pipe.call(pack_command(("ECHO", "c"))) == b"c"


async def test_a_silent_redis_fails_callers_with_a_timeout() -> None:
    listener = socket.socket()  # accepts connections and never answers
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    client = Redis(host="127.0.0.1", port=listener.getsockname()[1])
    try:
        pipe = AutoPipeline(client, timeout_s=0.3)
        async with asyncio.timeout(5):  # without the pipeline's own timeout the test fails, not hangs
            with pytest.raises(RedisTimeoutError):
                await pipe.call(pack_command(("PING",)))
    finally:
        await client.aclose()
        listener.close()


async def test_callers_that_find_a_script_missing_load_it_once() -> None:
    """A fresh (or restarted) Redis has none of the scripts: a wide worker's first wave of calls must
    load each script once, on the pipeline, not once per caller on a connection of its own."""
    # a Redis of its own: the counts below are the whole server's, which other tests' processes
    # (reloading their scripts after the flush) would add to
    with RedisServer() as server:
        redis = Redis.from_url(server.url)
        try:
            pipe = AutoPipeline(redis)
            script = redis.register_script(f"return ARGV[1] .. '{uuid.uuid4().hex}'")
            await redis.script_flush()
            loads_before = await _script_calls(redis)
            connections_before = len(await redis.client_list())

            async def one(i: int) -> bytes:
                return await pipe.eval(script, [], [f"r{i}-"])

            callers = [asyncio.ensure_future(one(i)) for i in range(300)]
            callers[5].cancel()  # a caller cancelled meanwhile leaves the others their replies
            replies = await asyncio.gather(*callers, return_exceptions=True)
            assert isinstance(replies[5], asyncio.CancelledError)
            assert all(r.startswith(f"r{i}-".encode()) for i, r in enumerate(replies) if i != 5)
            assert await _script_calls(redis) - loads_before == 1
            assert len(await redis.client_list()) - connections_before <= 1
        finally:
            await redis.aclose()


async def _script_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    # Redis 7 counts subcommands apart (cmdstat_script|load), Redis 6 as cmdstat_script
    return sum(int(v.get("calls", 0)) for k, v in stats.items() if k.startswith("cmdstat_script"))


async def test_one_connection_serves_batch_after_batch(redis: Redis) -> None:
    pipe = AutoPipeline(redis)
    ids = set()
    for i in range(20):  # sequential: each call is a batch of its own
        assert await pipe.call(pack_command(("ECHO", f"x{i}"))) == f"x{i}".encode()
        ids.add(await pipe.call(pack_command(("CLIENT", "ID"))))
    assert len(ids) == 1  # no checkout per batch: the sender kept its connection
    await pipe.aclose()


async def test_a_killed_connection_fails_its_batch_and_the_next_batch_reconnects(redis: Redis) -> None:
    pipe = AutoPipeline(redis)
    first = await pipe.call(pack_command(("CLIENT", "ID")))
    await redis.execute_command("CLIENT", "KILL", "ID", first)
    with pytest.raises((ConnectionError, OSError, RedisConnectionError)):
        await pipe.call(pack_command(("PING",)))
    second = await pipe.call(pack_command(("CLIENT", "ID")))
    assert second != first
    await pipe.aclose()


async def test_a_write_refusal_lets_the_connection_go(redis: Redis) -> None:
    # READONLY is what a demoted primary answers: the next batch must ask the pool again, which
    # finds the new primary (Sentinel) instead of writing to the old one for ever
    pipe = AutoPipeline(redis)
    first = await pipe.call(pack_command(("CLIENT", "ID")))
    script = "return redis.error_reply('READONLY You can\\'t write against a read only replica.')"
    with pytest.raises(ReadOnlyError):
        await pipe.call(pack_command(("EVAL", script, 0)))
    assert await pipe.call(pack_command(("CLIENT", "ID"))) != first
    await pipe.aclose()


async def test_a_command_with_nothing_in_flight_is_written_before_the_loop_turns(
    redis_server: RedisServer,
) -> None:
    # the sender task only reads the reply: the command must reach Redis while this task still
    # holds the loop (a sync client polls Redis without yielding to it)
    import time

    import redis as sync_redis

    client = Redis.from_url(redis_server.url)
    pipe = AutoPipeline(client)
    key = f"ap:eager:{uuid.uuid4().hex}"
    await pipe.call(pack_command(("PING",)))  # the pipeline holds its connection now
    future = pipe.send(pack_command(("INCR", key)))
    watcher = sync_redis.Redis.from_url(redis_server.url)
    try:
        seen, deadline = None, time.monotonic() + 2
        while seen is None and time.monotonic() < deadline:
            seen = watcher.get(key)
        assert seen == b"1"
        assert await future == 1
    finally:
        watcher.close()
        await pipe.aclose()
        await client.aclose()


async def test_a_written_command_whose_reader_never_ran_does_not_shift_the_replies(redis: Redis) -> None:
    pipe = AutoPipeline(redis)
    await pipe.call(pack_command(("PING",)))
    lost = pipe.send(pack_command(("ECHO", "lost")))  # written at once; its reader is cancelled unrun
    assert pipe._sender is not None
    pipe._sender.cancel()
    await asyncio.sleep(0)
    assert lost.cancelled() or not lost.done()
    assert await pipe.call(pack_command(("ECHO", "mine"))) == b"mine"
    assert await pipe.call(pack_command(("ECHO", "next"))) == b"next"
    await pipe.aclose()
