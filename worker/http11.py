"""A small HTTP/1.1 client: send one request, read its whole answer, keep the connection for the next.

Why not aiohttp, which the worker keeps for streams and image fetches: an unstreamed provider call
or a webhook needs none of a general client (cookies, redirects, streaming bodies, proxies), and
aiohttp's request machinery costs 2-2.5 times this one's CPU a call (170-200 µs against 65-90 µs
against the simulator, ``bench/provider_client.py``; ~150 against ~60 for a webhook). Its users:
``worker.provider_client`` (unstreamed provider calls) and ``worker.webhooks.sender`` (deliveries,
through the SSRF guard's resolver).

What it does:

* keep-alive connections per (scheme, host, port), at most ``max_idle_per_origin`` idle ones,
  reused only after an answer whose end was read exactly (``Content-Length``, or chunked to its
  last chunk) and without ``Connection: close``, and not when idle past ``idle_s``; a reused
  connection found closed before any byte of the answer came is replaced once (never after: a
  request is not sent twice once the server has begun to answer it);
* a host name resolves through the caller's resolver (aiohttp's resolver interface; the webhooks'
  ``GuardedResolver`` returns only addresses it allows, and the connection goes to exactly such an
  address), cached ``dns_ttl_s``, one lookup at a time per host;
* TLS with the default context (certificates and host names checked), or the caller's;
* at most ``max_bytes`` of a body: past that the answer is cut (``exact=False``) or refused
  (``exact=True``, ``HTTPError``); the connection is then closed rather than reused. 1xx answers
  are skipped. Nothing is followed (no redirects), nothing decoded (``Content-Encoding`` is the
  caller's).

Errors are raised as ``HTTPError`` (malformed or cut answer), ``HeadersTimeout`` (no head by
``head_by``), ``OSError`` (connecting, ``ConnectTimeout`` included; ``ConnectionResetError`` when
the server closed before its answer), ``ssl.SSLError``, or ``TimeoutError`` from the caller's own
deadline.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

MAX_HEAD = 16 * 1024
DNS_TTL_S = 60.0
IDLE_S = 30.0  # an idle connection is not reused after this (servers close theirs around here)
MAX_IDLE_PER_ORIGIN = 64


class HTTPError(Exception):
    """The server's answer is not HTTP/1.x we can read, or it ended before its end."""


class HeadersTimeout(Exception):
    """No answer's head by the caller's ``head_by``."""


class ConnectTimeout(OSError):
    """No connection within the connect timeout."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names (a repeated header: its last value)
    body: bytes  # at most max_bytes


@dataclass(frozen=True, slots=True)
class Target:
    """A URL split once: where to connect and what to send on the request line."""

    scheme: str
    host: str
    port: int
    head: bytes  # request line, Host, the fixed headers

    @classmethod
    def of(cls, scheme: str, host: str, port: int, url: str, fixed: bytes, method: str = "POST") -> Target:
        """``url``'s request target, sent to ``host`` (as the caller's parser read it: lower-case,
        IDNs as punycode, IPv6 without brackets) and ``port``."""
        parts = urlsplit(url)
        default = port == (443 if scheme == "https" else 80)
        shown = f"[{host}]" if ":" in host else host
        hostport = shown if default else f"{shown}:{port}"
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        path = "".join(c if ord(c) < 128 else quote(c) for c in path)  # the request line is ASCII
        head = f"{method} {path} HTTP/1.1\r\nHost: {hostport}\r\n".encode() + fixed
        return cls(scheme, host, port, head)


class _Conn(asyncio.Protocol):
    """One connection: bytes in a buffer, a waiter woken on data or EOF."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.eof = False
        self.answered = False  # a byte came since the request was sent: it must not be sent again
        self.lost: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.idle_since = 0.0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.answered = True
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self.eof = True
        self.lost = exc
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def more(self) -> None:
        """Wait for more bytes; ``ConnectionResetError`` when the server closed first."""
        if self.eof:
            raise ConnectionResetError("the server closed the connection")
        self.waiter = asyncio.get_running_loop().create_future()
        await self.waiter
        self.waiter = None

    def usable(self, now: float, idle_s: float) -> bool:
        return (
            self.transport is not None
            and not self.transport.is_closing()
            and not self.eof
            and not self.buf
            and now - self.idle_since < idle_s
        )

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Client:
    """Requests over pooled keep-alive connections. ``resolver`` is aiohttp's resolver interface."""

    def __init__(
        self,
        resolver: Any,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_idle_per_origin: int = MAX_IDLE_PER_ORIGIN,
        idle_s: float = IDLE_S,
        dns_ttl_s: float = DNS_TTL_S,
    ) -> None:
        self.resolver = resolver
        self._tls = ssl_context
        self.max_idle = max_idle_per_origin
        self.idle_s = idle_s
        self.dns_ttl_s = dns_ttl_s
        self._idle: dict[tuple[str, str, int], deque[_Conn]] = {}
        self._dns: dict[tuple[str, int], tuple[float, list[str]]] = {}
        self._resolving: dict[tuple[str, int], asyncio.Future[list[str]]] = {}

    async def post(
        self,
        target: Target,
        headers: bytes,
        body: bytes,
        *,
        connect_timeout: float,
        max_bytes: int,
        exact: bool = False,
        head_by: float | None = None,
    ) -> Response:
        """Send ``target.head`` + ``headers`` (``Name: value\\r\\n`` lines) + the body; the answer.

        ``head_by`` (the loop's clock): ``HeadersTimeout`` when the answer's head has not come by
        then, connecting included."""
        request = b"%s%sContent-Length: %d\r\n\r\n%s" % (target.head, headers, len(body), body)
        key = (target.scheme, target.host, target.port)
        if head_by is None:
            conn, status, head = await self._ask(target, key, request, connect_timeout)
        else:
            try:
                async with asyncio.timeout_at(head_by):
                    conn, status, head = await self._ask(target, key, request, connect_timeout)
            except TimeoutError:
                raise HeadersTimeout from None
        try:
            body, reusable = await _read_body(conn, status, head, max_bytes, exact)
        except BaseException:
            conn.close()
            raise
        if reusable and head.get("connection", "").lower() != "close":
            self._checkin(key, conn)
        else:
            conn.close()
        return Response(status, head, body)

    async def close(self) -> None:
        for pool in self._idle.values():
            for conn in pool:
                conn.close()
        self._idle.clear()

    async def _ask(
        self, target: Target, key: tuple[str, str, int], request: bytes, connect_timeout: float
    ) -> tuple[_Conn, int, dict[str, str]]:
        """Send the request on a kept connection (or a new one) and read the answer's head."""
        conn = self._checkout(key)
        if conn is not None:
            try:
                return conn, *await _head_of(conn, request)
            except ConnectionError:
                if conn.answered:
                    raise
                # a kept-alive connection the server had closed: once more on a new one
        conn = await self._connect(target, connect_timeout)
        return conn, *await _head_of(conn, request)

    def _checkout(self, key: tuple[str, str, int]) -> _Conn | None:
        pool = self._idle.get(key)
        if pool:
            now = time.monotonic()
            while pool:
                conn = pool.pop()  # the most recently used: the least likely to be closed by now
                if conn.usable(now, self.idle_s):
                    return conn
                conn.close()
        return None

    def _checkin(self, key: tuple[str, str, int], conn: _Conn) -> None:
        now = conn.idle_since = time.monotonic()
        pool = self._idle.get(key)
        if pool is None:
            pool = self._idle[key] = deque()
        while pool and not pool[0].usable(now, self.idle_s):  # the oldest, past their time
            pool.popleft().close()
        if len(pool) < self.max_idle:
            pool.append(conn)
        else:
            conn.close()

    async def _connect(self, target: Target, timeout: float) -> _Conn:
        loop = asyncio.get_running_loop()
        tls = self.tls() if target.scheme == "https" else None
        last: BaseException | None = None
        try:
            async with asyncio.timeout(timeout):
                for address in await self._addresses(target.host, target.port):
                    try:
                        _, conn = await loop.create_connection(
                            _Conn, address, target.port, ssl=tls, server_hostname=target.host if tls else None
                        )
                        return conn
                    except OSError as exc:
                        last = exc
        except TimeoutError:
            raise ConnectTimeout(f"no connection within {timeout:g} s") from None
        raise last or OSError(f"no address for {target.host}")

    def tls(self) -> ssl.SSLContext:
        if self._tls is None:  # built once: it reads the CA store (tens of ms)
            self._tls = ssl.create_default_context()
        return self._tls

    async def _addresses(self, host: str, port: int) -> list[str]:
        if _is_ip(host):
            return [host]  # an IP literal (the webhooks' guard checked it before: ``sender``)
        hit = self._dns.get((host, port))
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        # one lookup per host at a time, in a task of its own: a thousand calls starting together
        # wait for the same one, and a caller cancelled meanwhile does not cancel the others'
        task = self._resolving.get((host, port))
        if task is None:
            task = self._resolving[(host, port)] = asyncio.ensure_future(self._lookup(host, port))
            task.add_done_callback(lambda t: self._looked_up(host, port, t))
        return await asyncio.shield(task)

    def _looked_up(self, host: str, port: int, task: asyncio.Future[list[str]]) -> None:
        self._resolving.pop((host, port), None)
        if not task.cancelled():
            task.exception()  # retrieved: no warning when every caller had gone

    async def _lookup(self, host: str, port: int) -> list[str]:
        results = await self.resolver.resolve(host, port, family=socket.AF_UNSPEC)
        addresses = [r["host"] for r in results]
        if len(self._dns) > 10_000:
            self._dns.clear()
        self._dns[(host, port)] = (time.monotonic() + self.dns_ttl_s, addresses)
        return addresses


async def _head_of(conn: _Conn, request: bytes) -> tuple[int, dict[str, str]]:
    """Send ``request`` on ``conn`` and read the answer's head; the connection closed on failure."""
    assert conn.transport is not None
    conn.answered = False
    if conn.transport.is_closing():  # lost before we wrote (uvloop raises on a write to it)
        conn.close()
        raise ConnectionResetError("the server closed the connection")
    conn.transport.write(request)
    try:
        return await _read_head(conn)
    except BaseException:
        conn.close()
        raise


async def _read_head(conn: _Conn) -> tuple[int, dict[str, str]]:
    """The status and headers of the final answer (1xx answers skipped)."""
    while True:
        end = conn.buf.find(b"\r\n\r\n")
        while end < 0:
            if len(conn.buf) > MAX_HEAD:
                raise HTTPError("the answer's head is too long")
            await conn.more()
            end = conn.buf.find(b"\r\n\r\n")
        head = bytes(conn.buf[:end])
        del conn.buf[: end + 4]
        lines = head.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise HTTPError(f"not an HTTP/1.x answer: {lines[0][:60]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise HTTPError("a malformed header line in the answer")
            headers[name.strip().lower()] = value.strip()
        if version == "HTTP/1.0" and headers.get("connection", "").lower() != "keep-alive":
            headers["connection"] = "close"
        status = int(code)
        if status >= 200 or status == 101:
            return status, headers


async def _read_body(
    conn: _Conn, status: int, headers: dict[str, str], max_bytes: int, exact: bool
) -> tuple[bytes, bool]:
    """Up to ``max_bytes`` of the body, and whether the connection ended exactly at its end."""
    if status in (101, 204, 304):
        return b"", status != 101
    try:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return await _read_chunked(conn, max_bytes, exact)
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise HTTPError("a malformed Content-Length in the answer")
            size = int(length)
            if size > max_bytes and exact:
                raise _too_large(max_bytes)
            want = min(size, max_bytes)
            while len(conn.buf) < want:
                await conn.more()
            body = bytes(conn.buf[:want])
            del conn.buf[:want]
            return body, size <= max_bytes and not conn.buf
        # delimited by the close: read what comes, up to the limit
        while len(conn.buf) <= max_bytes and not conn.eof:
            await conn.more()
        if len(conn.buf) > max_bytes and exact:
            raise _too_large(max_bytes)
        return bytes(conn.buf[:max_bytes]), False
    except ConnectionResetError:
        raise HTTPError("the connection closed before the answer's end") from None


async def _read_chunked(conn: _Conn, max_bytes: int, exact: bool) -> tuple[bytes, bool]:
    body = bytearray()
    while True:
        end = conn.buf.find(b"\r\n")
        while end < 0:
            if len(conn.buf) > MAX_HEAD:
                raise HTTPError("a malformed chunk in the answer")
            await conn.more()
            end = conn.buf.find(b"\r\n")
        try:
            size = int(bytes(conn.buf[:end]).split(b";")[0], 16)
        except ValueError:
            raise HTTPError("a malformed chunk size in the answer") from None
        del conn.buf[: end + 2]
        if size == 0:
            while conn.buf.find(b"\r\n") != 0:  # trailers, then the blank line
                end = conn.buf.find(b"\r\n")
                if end > 0:
                    del conn.buf[: end + 2]
                else:
                    await conn.more()
            del conn.buf[:2]
            return bytes(body), not conn.buf
        if len(body) + size > max_bytes:
            if exact:
                raise _too_large(max_bytes)
            take = max_bytes - len(body)
            while len(conn.buf) < take:
                await conn.more()
            body += conn.buf[:take]
            return bytes(body), False
        while len(conn.buf) < size + 2:
            await conn.more()
        body += conn.buf[:size]
        del conn.buf[: size + 2]


def _too_large(max_bytes: int) -> HTTPError:
    return HTTPError(f"the answer is larger than {max_bytes} bytes")


def _is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True
