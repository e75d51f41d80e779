"""Redis connections: every client of ours is built here from the settings.

One place decides where Redis is (one URL, or a primary found through Sentinel), its credentials and
the socket timeouts, for the async clients (producer, server, CLI, the worker's scripts and its
auto-pipeline, pub/sub, arq's own pool: ``redis_client``) and the lease keeper's thread
(``sync_redis_client``).

Two ways to name Redis:

* ``REDIS_URL=redis://[:password@]host:6379/0`` (``rediss://`` for TLS, ``unix://``): one endpoint.
* Sentinel: ``LLM_ROUTER_REDIS_SENTINELS=host:26379,host:26379,…`` and
  ``LLM_ROUTER_REDIS_SENTINEL_MASTER`` (default ``mymaster``), or the same as one URL,
  ``REDIS_URL=redis+sentinel://[:password@]host:26379,host:26379/mymaster/0`` (``rediss+sentinel``
  for TLS to the data nodes). A client asks the sentinels for the primary on every new connection; a
  connection to a primary that was demoted turns ``READONLY`` into a connection error and is
  dropped, so after a failover every client finds the new primary by itself. A pool also asks the
  sentinels every ``LLM_ROUTER_REDIS_SENTINEL_CHECK_S`` (1 s), and when they name another primary it
  closes its connections to the old one at once, the ones in use too (a subscription, the
  auto-pipeline's). A failover run while the old primary is alive (``SENTINEL FAILOVER``) leaves it
  a writable primary for ~10 s, until the sentinels turn it into a replica. Until then a client that
  kept its connection would write there, and those writes are lost in the resync; a subscription
  there hears nothing that is published on the new primary.

Timeouts: every client connects and reads within ``LLM_ROUTER_REDIS_TIMEOUT_S`` (5 s) unless its
caller asks otherwise, so a Redis that stops answering without closing its connections (SIGSTOP, a
partition, a primary stuck in a long command) fails a call in bounded time instead of hanging it.
redis-py applies the read timeout to every reply, blocking reads included: a pub/sub listener must
read with ``get_message(timeout=…)`` (its own timeout wins and a quiet channel is not an error) and
an ``XREAD BLOCK`` must block for less than the timeout (``blocking_read_ms``). A pool makes its
new connections outside its lock (redis-py 5 holds the lock through a connection's handshake, which
waits the whole timeout on a stopped Redis: a hundred callers then fail one timeout after another
instead of all at once).

Writes and cancels: redis-py bounds each write with ``asyncio.wait_for``, which on Python 3.11 runs
the write in a task of its own (a task and a turn of the event loop per command) and returns
normally when a cancel comes as the write has just finished: the cancel is lost (a worker stopped
as its batcher sent a command never exited). Our connections write with the drain bounded by
``asyncio.timeout`` instead (``_QuickSend``), so a cancel is raised where it lands and no task is
made per command.

Passwords: ``LLM_ROUTER_REDIS_PASSWORD`` for the data nodes when the URL carries none (with Sentinel
in Kubernetes the URL is not a Secret, the password is), and ``LLM_ROUTER_REDIS_SENTINEL_PASSWORD``
for the sentinels themselves when they require one (Sentinel's ``requirepass`` is its own; Bitnami's
chart sets it to the data nodes' password).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote

import redis as sync_redis
import structlog
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.sentinel import Sentinel as SyncSentinel
from redis.sentinel import SentinelConnectionPool as SyncSentinelConnectionPool

from config.settings import Settings
from llm_router.errors import RouterError

log = structlog.get_logger("llm_router.redis")

SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}
# a sentinel that does not answer within this is skipped for the next one
SENTINEL_TIMEOUT_S = 2.0
# how often a pool asks the sentinels which node is the primary, besides on each new connection
# (LLM_ROUTER_REDIS_SENTINEL_CHECK_S): the longest a client keeps using a live primary that the
# sentinels have replaced
PRIMARY_CHECK_S = 1.0
# a blocking pool whose look found no sentinel answering waits this long before the next one: each
# look can take SENTINEL_TIMEOUT_S a sentinel on the lease keeper's thread
SENTINEL_BACKOFF_S = 30.0

R = TypeVar("R", bound=Redis)
# "the setting's timeout": callers that pass nothing get LLM_ROUTER_REDIS_TIMEOUT_S
FROM_SETTINGS: Any = object()


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is: one URL, or sentinels and the name of the primary they watch."""

    url: str | None = None
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None
    ssl: bool = False

    def __str__(self) -> str:  # for logs and errors: never the password
        if self.sentinels:
            hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
            return f"primary '{self.master}' of sentinels {hosts} (db {self.db})"
        return _without_password(self.url or "")


def redis_target(settings: Settings) -> RedisTarget:
    """Where the settings say Redis is; a ``RouterError`` naming the setting when they say it wrong."""
    url = settings.redis_url.get_secret_value() if settings.redis_url else None
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    sentinel_password = (
        settings.redis_sentinel_password.get_secret_value() if settings.redis_sentinel_password else None
    )
    if settings.redis_sentinels:
        if url:
            raise _config_error(
                "set REDIS_URL or LLM_ROUTER_REDIS_SENTINELS, not both "
                "(a Sentinel set can also be one URL: redis+sentinel://host:26379,host:26379/mymaster/0)",
                "LLM_ROUTER_REDIS_SENTINELS",
            )
        return RedisTarget(
            sentinels=_host_ports(settings.redis_sentinels, "LLM_ROUTER_REDIS_SENTINELS"),
            master=settings.redis_sentinel_master,
            password=password,
            sentinel_password=sentinel_password,
        )
    if not url:
        raise _config_error(
            "REDIS_URL is not set (e.g. redis://127.0.0.1:6379/0), nor LLM_ROUTER_REDIS_SENTINELS",
            "REDIS_URL",
        )
    scheme, sep, rest = url.partition("://")
    if sep and scheme.lower() in SENTINEL_SCHEMES:
        return _sentinel_url(rest, SENTINEL_SCHEMES[scheme.lower()], password, sentinel_password)
    return RedisTarget(url=url, password=password)


def redis_url(settings: Settings) -> str:
    """The one URL of a Redis named by URL (the benchmarks' arq pools); Sentinel has none."""
    target = redis_target(settings)
    if target.url is None:
        raise _config_error("Redis is named through Sentinel here, not by one URL", "REDIS_URL")
    return target.url


def blocking_read_ms(settings: Settings, wanted_ms: int) -> int:
    """How long an ``XREAD BLOCK`` may block on a client of ours: under the read timeout, which
    redis-py applies to the blocked read too (a longer block would fail as a timeout)."""
    return max(1, min(wanted_ms, int(settings.redis_timeout_s * 1000 / 2)))


def redis_client(
    settings: Settings,
    *,
    socket_timeout: float | None = FROM_SETTINGS,
    socket_connect_timeout: float | None = FROM_SETTINGS,
    health_check_interval: float = 30,
    redis_class: type[R] = Redis,  # type: ignore[assignment]
) -> R:
    """An async client with a connection pool; commands reconnect on their own after a dropped
    connection (to the current primary, with Sentinel). ``redis_class``: a subclass such as arq's
    ``ArqRedis``. ``socket_timeout`` bounds each reply and ``socket_connect_timeout`` each connection
    (both ``LLM_ROUTER_REDIS_TIMEOUT_S`` unless given; see the module docstring for blocking reads)."""
    target = redis_target(settings)
    options: dict[str, Any] = {
        "socket_timeout": _timeout(socket_timeout, settings),
        "socket_connect_timeout": _timeout(socket_connect_timeout, settings),
        "health_check_interval": health_check_interval,
    }
    if target.url is not None:
        if target.password:  # the URL's own password wins
            options["password"] = target.password
        return redis_class.from_pool(_Pool.from_url(target.url, **options))  # type: ignore[return-value]
    sentinel = Sentinel(
        target.sentinels,
        sentinel_kwargs=_sentinel_options(target, options["socket_connect_timeout"]),
        **_node_options(target),
        **options,
    )
    return sentinel.master_for(
        target.master,
        redis_class=redis_class,
        connection_pool_class=_SentinelPool,
        primary_check_s=settings.redis_sentinel_check_s,
    )


def sync_redis_client(
    settings: Settings,
    *,
    socket_timeout: float | None = FROM_SETTINGS,
    socket_connect_timeout: float | None = FROM_SETTINGS,
) -> sync_redis.Redis:
    """A blocking client (for a thread of its own, such as the lease keeper), built as ``redis_client``."""
    target = redis_target(settings)
    options: dict[str, Any] = {
        "socket_timeout": _timeout(socket_timeout, settings),
        "socket_connect_timeout": _timeout(socket_connect_timeout, settings),
    }
    if target.url is not None:
        if target.password:
            options["password"] = target.password
        return sync_redis.Redis.from_url(target.url, **options)
    sentinel = SyncSentinel(
        target.sentinels,
        sentinel_kwargs=_sentinel_options(target, options["socket_connect_timeout"]),
        **_node_options(target),
        **options,
    )
    return sentinel.master_for(
        target.master,
        connection_pool_class=_SyncSentinelPool,
        primary_check_s=settings.redis_sentinel_check_s,
    )


def _timeout(given: float | None, settings: Settings) -> float | None:
    return settings.redis_timeout_s if given is FROM_SETTINGS else given


class _QuickSend:
    """``send_packed_command`` without a task per command.

    redis-py bounds every write with ``asyncio.wait_for``, which on Python 3.11 wraps the write in a
    new task that only runs at the event loop's next turn: every command paid a task and a turn of
    the loop for a wait (a full socket buffer) that almost never comes. The same bound here is an
    ``asyncio.timeout`` around the drain, which is skipped when the write left nothing buffered."""

    socket_timeout: float | None
    _writer: Any

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self.is_connected:  # type: ignore[attr-defined]
            await self.connect()  # type: ignore[attr-defined]
        elif check_health:
            await self.check_health()  # type: ignore[attr-defined]
        if isinstance(command, str):
            command = command.encode()
        if isinstance(command, bytes):
            command = [command]
        if self._writer.transport.is_closing():
            # closed under its owner (Redis hung up, or ``_SentinelPool.follow_primary`` let go of an
            # old primary) before a read noticed: uvloop raises RuntimeError on a closed handle
            await self.disconnect(nowait=True)  # type: ignore[attr-defined]
            raise RedisConnectionError("Connection closed")
        try:
            self._writer.writelines(command)
            transport = self._writer.transport
            if not transport.get_write_buffer_size() and not transport.is_closing():
                return  # all of it went into the socket: no drain to wait for (nor a timer to set)
            if self.socket_timeout:
                async with asyncio.timeout(self.socket_timeout):
                    await self._writer.drain()
            else:
                await self._writer.drain()
        except TimeoutError:
            await self.disconnect(nowait=True)  # type: ignore[attr-defined]
            raise RedisTimeoutError("Timeout writing to socket") from None
        except OSError as exc:
            await self.disconnect(nowait=True)  # type: ignore[attr-defined]
            err_no, message = ("UNKNOWN", exc.args[0]) if len(exc.args) == 1 else exc.args[:2]
            raise RedisConnectionError(f"Error {err_no} while writing to socket. {message}.") from exc
        except BaseException:
            # a write cut short cannot be resumed: the connection would be out of step
            await self.disconnect(nowait=True)  # type: ignore[attr-defined]
            raise


_QUICK: dict[type, type] = {}


def _quick(connection_class: type) -> type:
    """``connection_class`` (TCP, TLS, Unix socket, Sentinel-managed) with ``_QuickSend``'s write."""
    if issubclass(connection_class, _QuickSend):
        return connection_class
    quick = _QUICK.get(connection_class)
    if quick is None:
        quick = _QUICK[connection_class] = type(
            f"Quick{connection_class.__name__}", (_QuickSend, connection_class), {}
        )
    return quick


class _ConnectOutsideTheLock:
    """``get_connection`` as redis-py's ``BlockingConnectionPool`` does it: the pool's lock guards
    taking a connection, not connecting it (see the module docstring). Connections write with
    ``_QuickSend``, and a pooled connection is checked for unread data without a turn of the loop."""

    _lock: Any
    connection_class: type

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connection_class = _quick(self.connection_class)

    async def get_connection(
        self, command_name: Any = None, *keys: Any, **options: Any
    ) -> AbstractConnection:
        async with self._lock:
            connection = self.get_available_connection()  # type: ignore[attr-defined]
        try:
            await self.ensure_connection(connection)
        except BaseException:
            await self.release(connection)  # type: ignore[attr-defined]
            raise
        return connection  # type: ignore[no-any-return]

    async def ensure_connection(self, connection: Any) -> None:
        """Connected, with nothing unread (a reply left behind would answer the next command).

        redis-py asks the socket with a zero-timeout read, a turn of the event loop per command;
        whatever Redis sent is in the connection's stream buffer or its parser once the loop has
        read the socket, so looking there is the same check without waiting."""
        await connection.connect()
        if _has_unread(connection):
            await connection.disconnect()
            await connection.connect()
            if _has_unread(connection):
                raise RedisConnectionError("Connection not ready")


def _has_unread(connection: Any) -> bool:
    reader = connection._reader  # asyncio.StreamReader
    if reader is None:
        return False
    if reader.at_eof() or reader._buffer:  # closed by Redis, or bytes nobody read
        return True
    parser = connection._parser
    hiredis_reader = getattr(parser, "_reader", None)  # bytes the hiredis reader holds, not yet taken
    if hiredis_reader is not None:
        return bool(hiredis_reader.has_data())
    return bool(getattr(parser, "_buffer", b""))  # redis-py's own parser's buffer


class _Pool(_ConnectOutsideTheLock, ConnectionPool):
    pass


class _SentinelPool(_ConnectOutsideTheLock, SentinelConnectionPool):
    """Follows the primary the sentinels name (every ``primary_check_s``; see the module docstring), and
    closing the client closes its connections to the sentinels too."""

    def __init__(self, *args: Any, primary_check_s: float = PRIMARY_CHECK_S, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.primary_check_s = primary_check_s
        self._check: asyncio.TimerHandle | None = None  # the next look at the sentinels
        self._checking: asyncio.Task[None] | None = None  # the look under way
        self._check_loop: asyncio.AbstractEventLoop | None = None

    async def get_connection(
        self, command_name: Any = None, *keys: Any, **options: Any
    ) -> AbstractConnection:
        loop = asyncio.get_running_loop()
        if self._check_loop is not loop and self.is_master:  # the first use (on this loop)
            if self._check is not None:
                self._check.cancel()
            self._check_loop = loop
            self._check = loop.call_later(self.primary_check_s, self._start_check, loop)
        return await super().get_connection(command_name, *keys, **options)

    def _start_check(self, loop: asyncio.AbstractEventLoop) -> None:
        self._checking = loop.create_task(self._check_and_again(loop), name="redis-primary-check")

    async def _check_and_again(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            await self.follow_primary()
        except asyncio.CancelledError:
            raise  # closed, or the loop shuts down: no next look
        except Exception:
            log.warning("primary check failed", exc_info=True)
        if self._check_loop is loop and not loop.is_closed():
            self._check = loop.call_later(self.primary_check_s, self._start_check, loop)

    async def follow_primary(self) -> int:
        """Ask the sentinels for the primary, and close every connection of this pool to another
        node: idle ones, and those in use, whose owners get a connection error and reconnect (as after
        Sentinel's own ``CLIENT KILL``). Each look checks every connection, not only when the answer
        changed: a connection opened meanwhile may have learned of the change first. How many it
        closed."""
        try:
            address = await self.get_master_address()
        except (RedisError, OSError):
            return 0  # no sentinel answered: the connections' own errors are the guide
        closed = 0
        for connection in [*self._available_connections, *self._in_use_connections]:
            writer = getattr(connection, "_writer", None)
            if writer is not None and (connection.host, connection.port) != address:
                writer.transport.abort()
                closed += 1
        return closed

    async def disconnect(self, inuse_connections: bool = True) -> None:
        if not inuse_connections:  # a change of primary: idle connections only
            await super().disconnect(inuse_connections)
            return
        # a full close: the looks at the sentinels stop first, whatever the close meets
        if self._check is not None:
            self._check.cancel()
        checking = self._checking
        if checking is not None and not checking.done() and checking is not asyncio.current_task():
            checking.cancel()
        self._check = self._checking = self._check_loop = None
        try:
            await super().disconnect(inuse_connections)
        finally:
            for client in self.sentinel_manager.sentinels:
                await client.aclose()


class _SyncSentinelPool(SyncSentinelConnectionPool):
    """The blocking client's pool asks the sentinels for the primary at most every
    ``primary_check_s`` as it hands out a connection (its connections are only ever in use for one
    command), and drops its idle connections when the primary moved. The look runs on the caller's
    thread (the lease keeper's): when no sentinel answers, the next one waits ``SENTINEL_BACKOFF_S``."""

    _checked_at = float("-inf")  # the first connection looks, however long ago the host booted

    def __init__(self, *args: Any, primary_check_s: float = PRIMARY_CHECK_S, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.primary_check_s = primary_check_s

    # the arguments passed on as they came: redis-py 5.3 warns when a command name is passed
    def get_connection(self, *args: Any, **options: Any) -> Any:
        now = time.monotonic()
        if self.is_master and now - self._checked_at >= self.primary_check_s:
            self._checked_at = now
            try:
                self.get_master_address()  # drops idle connections when the primary moved
            except (sync_redis.RedisError, OSError):
                self._checked_at = now + SENTINEL_BACKOFF_S
        return super().get_connection(*args, **options)

    def disconnect(self, inuse_connections: bool = True) -> None:
        super().disconnect(inuse_connections)
        if inuse_connections:
            for client in self.sentinel_manager.sentinels:
                client.close()


def _node_options(target: RedisTarget) -> dict[str, Any]:
    options: dict[str, Any] = {"db": target.db}
    if target.username:
        options["username"] = target.username
    if target.password:
        options["password"] = target.password
    if target.ssl:
        options["ssl"] = True
    return options


def _sentinel_options(target: RedisTarget, connect_timeout: float | None) -> dict[str, Any]:
    timeout = min(connect_timeout or SENTINEL_TIMEOUT_S, SENTINEL_TIMEOUT_S)
    options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if target.sentinel_password:
        options["password"] = target.sentinel_password
    return options


def _sentinel_url(rest: str, ssl: bool, password: str | None, sentinel_password: str | None) -> RedisTarget:
    """``[[user]:password@]host:port,host:port/master[/db]`` (after ``redis+sentinel://``)."""
    field = "REDIS_URL"
    rest = rest.split("?", 1)[0]
    netloc, _, path = rest.partition("/")
    username = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, _, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) or password
    parts = [p for p in path.split("/") if p]
    if not parts or len(parts) > 2:
        raise _config_error(
            "a redis+sentinel:// URL names the primary after the sentinels: "
            "redis+sentinel://host:26379,host:26379/mymaster/0",
            field,
        )
    db = 0
    if len(parts) == 2:
        if not parts[1].isdigit():
            raise _config_error(
                f"the database in a redis+sentinel:// URL is a number, not {parts[1]!r}", field
            )
        db = int(parts[1])
    return RedisTarget(
        sentinels=_host_ports(netloc, field),
        master=unquote(parts[0]),
        db=db,
        username=username,
        password=password,
        sentinel_password=sentinel_password,
        ssl=ssl,
    )


def _host_ports(text: str, field: str) -> tuple[tuple[str, int], ...]:
    out = []
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        host = host.strip("[]")  # [::1]:26379
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise _config_error(f"{item!r} is not host:port (e.g. redis-sentinel-0:26379)", field)
        out.append((host, int(port)))
    if not out:
        raise _config_error("no sentinel given (host:port,host:port,…)", field)
    return tuple(out)


def _without_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}:***@{host}" if ":" in userinfo else f"{user}@{host}"
    return f"{scheme}{sep}{netloc}{slash}{path}"


def _config_error(message: str, setting: str) -> RouterError:
    return RouterError(message, param=setting, code="internal_error")
