"""Reading a pub/sub subscription straight from its connection.

redis-py's ``PubSub.get_message`` costs its caller, per message: a health check, a retry wrapper,
two timers (the call's own timeout and the connection's read timeout around the reply, each with a
``get_running_loop`` and its ``getpid`` system call) and a dict. The server's answer to an
interactive call waits on one message (the job's end, carrying its record) and the worker's call on
another (the hand-off), so that was on every interactive request's way, twice: a tenth of the
server's CPU per request in a profile.

Here redis-py still subscribes (and the callers make a new subscription after an error), and the
messages are read from the connection's parser. A read waits until a message comes or the
connection breaks: a quiet channel is not an error, so no read needs a timeout. What redis-py's
health check did on a quiet connection, a ``PING`` every ``health_check_interval`` seconds (so
that a connection whose peer is gone fails its reader in bounded time), one timer per subscription
does.
"""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

PING = b"*1\r\n$4\r\nPING\r\n"  # answered on a subscribed connection as a `pong` message


class Message(NamedTuple):
    """A published message: its channel, its data, and the pattern it matched (``None`` when the
    channel was subscribed by name)."""

    channel: bytes
    data: bytes
    pattern: bytes | None


class Subscription:
    """The messages of a ``PubSub`` that has subscribed (``await pubsub.subscribe(...)`` first):
    ``await sub.next()`` for each; ``close()`` stops its health pings (closing the ``PubSub`` is the
    caller's, as it made it)."""

    __slots__ = ("_conn", "_interval", "_parser", "_timer")

    def __init__(self, pubsub: PubSub) -> None:
        conn: Any = pubsub.connection
        if conn is None:
            raise RuntimeError("subscribe before reading: the PubSub has no connection yet")
        self._conn = conn
        self._parser = conn._parser
        self._interval: float = conn.health_check_interval or 0
        self._timer: asyncio.TimerHandle | None = None
        if self._interval > 0:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self._ping)

    async def next(self) -> Message:
        """The next message; raises redis-py's ``ConnectionError`` when the connection breaks (and
        a Redis error reply as it came)."""
        parser = self._parser
        while True:
            try:
                reply: Any = await parser.read_response()
            except OSError as exc:
                raise RedisConnectionError(f"error reading from Redis: {exc!r}") from exc
            if isinstance(reply, ResponseError):
                raise reply
            if type(reply) is list and reply:
                kind = reply[0]
                if kind == b"message":
                    return Message(reply[1], reply[2], None)
                if kind == b"pmessage":
                    return Message(reply[2], reply[3], reply[1])
            # (un)subscribe confirmations and the pings' pongs: read on

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _ping(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self._interval, self._ping)
        writer = self._conn._writer
        if writer is not None and not writer.transport.is_closing():
            # a peer that is gone fails this write, then the read, within TCP's retry time; a
            # transport that fails now is the reader's to report (it reads an error next)
            writer.write(PING)
