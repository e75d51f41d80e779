"""Commands from many tasks sent to Redis together: one write and one connection per batch.

A worker running a thousand jobs sees them end in waves; each job's finish script (and the next
job's start script) taken alone costs a pool checkout (an asyncio lock and a health-check read),
a socket write and a wake-up per reply. Here a task hands over its packed command and waits; one
sender writes whatever has accumulated since its last write as one buffer on one connection and
hands each reply back to its task in order. Under load batches grow by themselves; alone, a
command goes out at once (no timer, no added latency).

The sender keeps its connection between batches (a checkout and a release per batch cost an
interactive job a fifth of its worker's CPU per round trip); a connection that fails, times out or
answers that this Redis refuses writes (a demoted primary) is dropped and the next batch takes a
new one from the pool, which finds where Redis is now.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from llm_router.deadlines import Deadlines
from llm_router.redis_checks import write_refusal

try:
    from hiredis import pack_command
except ImportError:  # pragma: no cover - hiredis is a dependency
    pack_command = None

PING = b"*1\r\n$4\r\nPING\r\n"


class _Dropped:
    """The stand-in future of a reply nobody reads (``send``'s ``PING``): always done, so the
    exchange reads its reply past it, as it does a cancelled caller's."""

    def done(self) -> bool:
        return True


_DROPPED: Any = _Dropped()


class AutoPipeline:
    """Pipelines packed commands (``hiredis.pack_command`` bytes) issued by concurrent tasks."""

    def __init__(self, redis: Redis, *, timeout_s: float = 30.0) -> None:
        self.redis = redis
        # a Redis that stops answering without closing the connection must not hold every job of
        # the process forever: past this, the batch fails as a Redis timeout and callers retry
        self.timeout_s = timeout_s
        self._pending: list[tuple[bytes, asyncio.Future[Any]]] = []
        self._sender: asyncio.Task[None] | None = None
        self._conn: Any = None  # the connection the sender holds between batches
        self._loading: dict[str, asyncio.Future[Any]] = {}  # script sha → its SCRIPT LOAD's reply
        self._deadlines = Deadlines()  # a batch's bound: one loop timer per tick, not per batch

    async def call(self, packed: bytes) -> Any:
        """Send one packed command and return its reply (a Redis error reply is raised)."""
        return await self.send(packed)

    def send(self, packed: bytes, *, publishes_first: bool = False) -> asyncio.Future[Any]:
        """Queue one packed command now, in order, and return the future of its reply (no task of
        its own: a caller that reads something alongside its next command pays only the future).

        ``publishes_first``: the command publishes a message someone waits on (a job's end to the
        server answering its caller), and Redis is to write that message before this reply. Redis
        writes its pending replies newest client first, so a script's caller, whose reply comes
        last, is written to first, and each write that wakes a sleeping process costs the writer
        that wake-up (~100 µs here, ``bench/README.md``). A ``PING`` just ahead, in the same write,
        makes this connection's replies the older ones; its reply is read and dropped."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        entries = [(packed, future)]
        if publishes_first:
            entries.insert(0, (PING, _DROPPED))
        if self._sender is None or self._sender.done():
            conn = self._conn
            if conn is not None and _write_now(conn, PING + packed if publishes_first else packed):
                # nothing in flight: the command is on the wire now, not a turn of the loop later
                # when the sender runs (it only reads the reply). The sender holds the connection
                # until then: should it never run, no other batch reads this reply as its own
                self._conn = None
                self._sender = loop.create_task(self._send(entries, conn))
                return future
            self._pending += entries
            self._sender = loop.create_task(self._send())
            return future
        self._pending += entries
        return future

    async def eval(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """One EVALSHA of a registered script, packed by hiredis (redis-py's packer was a sixth of a
        worker's CPU per job) and sent with whatever other tasks are sending."""
        if pack_command is None:  # pragma: no cover - hiredis is a dependency
            return await script(keys=keys, args=args)
        return await self.eval_soon(script, keys, args)

    def eval_soon(
        self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any], *, publishes_first: bool = False
    ) -> Awaitable[Any]:
        """``eval`` with its command sent now (``send``), before the caller's next ``await``: the
        awaitable it returns waits for the reply (and loads the script and sends it again, should
        Redis not have it)."""
        packed = pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))
        sent = self.send(packed, publishes_first=publishes_first)
        return self._eval_reply(script, packed, sent, publishes_first)

    async def _eval_reply(
        self, script: AsyncScript, packed: bytes, sent: asyncio.Future[Any], publishes_first: bool
    ) -> Any:
        try:
            return await sent
        except NoScriptError:
            pass  # a fresh Redis, or one restarted without its scripts: load and send again
        await self._load(script)
        try:
            return await self.send(packed, publishes_first=publishes_first)
        except NoScriptError:
            raise RuntimeError("Redis keeps refusing a script it was just given") from None

    async def _load(self, script: AsyncScript) -> None:
        """One SCRIPT LOAD, on the pipeline, for every caller that found the script missing: a wide
        worker's first wave (10,000 start scripts) each loading it on a connection of its own
        opened as many connections to Redis, and kept them."""
        loading = self._loading.get(script.sha)
        if loading is None or loading.done():
            loading = self.send(pack_command(("SCRIPT", "LOAD", script.script)))
            self._loading[script.sha] = loading
        # shielded: a caller cancelled meanwhile must not cancel the load the others wait for
        await asyncio.shield(loading)

    async def _send(
        self, written: list[tuple[bytes, asyncio.Future[Any]]] | None = None, conn: Any = None
    ) -> None:
        if written is not None:
            await self._send_batch(written, conn)
        while self._pending:
            batch, self._pending = self._pending, []
            await self._send_batch(batch)

    async def _send_batch(
        self, batch: list[tuple[bytes, asyncio.Future[Any]]], written_on: Any = None
    ) -> None:
        """Send a batch and hand out its replies; ``written_on``: the connection the batch was
        written on already (``send``), whose replies are read here."""
        pool = self.redis.connection_pool
        replied = [0]  # how many replies were handed back: the rest fail if the exchange breaks
        conn = self._conn if written_on is None else written_on
        if conn is None:
            try:
                # a new connection's handshake waits on Redis too: bounded like the exchange
                async with self._deadlines.after(self.timeout_s):
                    conn = await pool.get_connection()
            except TimeoutError:
                _fail(batch, RedisTimeoutError(f"no connection to Redis within {self.timeout_s} s"))
                return
            except BaseException as exc:
                _fail(batch, exc)
                if not isinstance(exc, Exception):
                    raise
                return
        self._conn = conn
        try:
            async with self._deadlines.after(self.timeout_s):
                refused = await _exchange(conn, batch, replied, written=written_on is not None)
        except TimeoutError:
            await self._drop(conn)
            _fail(batch[replied[0] :], RedisTimeoutError(f"no reply from Redis within {self.timeout_s} s"))
        except BaseException as exc:
            await self._drop(conn)
            _fail(batch[replied[0] :], exc)
            if not isinstance(exc, Exception):
                raise
        else:
            if refused:
                await self._drop(conn)

    async def _drop(self, conn: Any) -> None:
        self._conn = None
        try:
            with contextlib.suppress(Exception):  # closing a broken connection may fail too
                await conn.disconnect()
        finally:
            with contextlib.suppress(KeyError):  # the pool was reset meanwhile
                await self.redis.connection_pool.release(conn)

    async def aclose(self) -> None:
        """Give the held connection back to the pool (closing the client closes it too)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await self.redis.connection_pool.release(conn)


def _write_now(conn: Any, packed: bytes) -> bool:
    """Write a command on a held connection without waiting (``False`` when the connection is not
    usable: the sender's own write then connects again or fails the batch)."""
    writer = conn._writer
    if writer is None or writer.transport.is_closing():
        return False
    writer.write(packed)
    return True


async def _exchange(
    conn: Any, batch: list[tuple[bytes, asyncio.Future[Any]]], replied: list[int], *, written: bool = False
) -> bool:
    """Write the batch as one buffer (unless it is ``written``), then hand each command its reply,
    in order; whether a reply said this Redis refuses writes (the connection is then let go)."""
    if not written:
        await conn.send_packed_command(b"".join([p for p, _ in batch]), check_health=False)
    refused = False
    # the parser's own read: the connection's ``read_response`` sets a timer per reply (its socket
    # timeout), and the batch's deadline bounds them all already
    parser = conn._parser
    for _, future in batch:
        try:
            reply: Any = await parser.read_response()
        except OSError as exc:
            raise RedisConnectionError(f"error reading from Redis: {exc!r}") from exc
        if isinstance(reply, ResponseError):  # an error reply: that command's, the stream stays in step
            refused = refused or write_refusal(reply) is not None
        replied[0] += 1
        if future.done():  # its task was cancelled; the command ran all the same
            continue
        if isinstance(reply, ResponseError):
            future.set_exception(reply)
        else:
            future.set_result(reply)
    return refused


def _fail(batch: list[tuple[bytes, asyncio.Future[Any]]], exc: BaseException) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc if isinstance(exc, Exception) else ConnectionError(repr(exc)))
