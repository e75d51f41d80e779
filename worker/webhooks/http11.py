"""A small HTTP/1.1 client for one job: POST a webhook, read the status (and a bounded bit of the rest).

Why not aiohttp, which the worker uses for providers: a delivery needs none of a general client
(cookies, redirects, decompression, streaming bodies, proxies) and aiohttp's request machinery cost
~150 CPU µs a request here against ~60 µs for this; deliveries come one per job.

What it does:

* keep-alive connections per (scheme, host, port), reused only after a response whose end was
  read exactly (``Content-Length``, or chunked to its last chunk) and without ``Connection: close``;
  a reused connection that turns out closed is replaced once before anything was answered;
* a host name resolves through the caller's resolver (the SSRF guard's ``GuardedResolver``: only
  addresses it allows, and the connection goes to exactly such an address), cached a minute;
* TLS with the default context (certificates and host names checked), or the caller's;
* at most ``max_bytes`` of a body are read; past that, or on anything unusual, the connection is
  closed rather than reused. 1xx answers are skipped. Nothing is followed (no redirects).

Errors are raised as ``HTTPError`` (malformed answer), ``OSError`` (connecting, ``ConnectTimeout``
included; a reset), ``ssl.SSLError``, or ``TimeoutError`` from the caller's own deadline.
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
    """The server's answer is not HTTP/1.x we can read."""


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
    def of(cls, scheme: str, host: str, port: int, url: str, fixed: bytes) -> Target:
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
        head = f"POST {path} HTTP/1.1\r\nHost: {hostport}\r\n".encode() + fixed
        return cls(scheme, host, port, head)


class _Conn(asyncio.Protocol):
    """One connection: bytes in a buffer, a waiter woken on data or EOF."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.eof = False
        self.lost: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.idle_since = 0.0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
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

    @property
    def usable(self) -> bool:
        return (
            self.transport is not None
            and not self.transport.is_closing()
            and not self.eof
            and not self.buf
            and time.monotonic() - self.idle_since < IDLE_S
        )

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Client:
    """POSTs over pooled keep-alive connections. ``resolver`` is aiohttp's resolver interface."""

    def __init__(self, resolver: Any, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.resolver = resolver
        self._tls = ssl_context
        self._idle: dict[tuple[str, str, int], deque[_Conn]] = {}
        self._dns: dict[tuple[str, int], tuple[float, list[str]]] = {}

    async def post(
        self, target: Target, headers: bytes, body: bytes, *, connect_timeout: float, max_bytes: int
    ) -> Response:
        """Send ``target.head`` + ``headers`` (``Name: value\\r\\n`` lines) + the body; the answer."""
        request = b"%s%sContent-Length: %d\r\n\r\n%s" % (target.head, headers, len(body), body)
        key = (target.scheme, target.host, target.port)
        conn = self._checkout(key)
        if conn is not None:
            try:
                return await self._exchange(conn, key, request, max_bytes)
            except (ConnectionError, HTTPError) as exc:
                if conn.buf or not isinstance(exc, ConnectionError):
                    raise
                # a kept-alive connection the server had closed: once more on a new one
        conn = await self._connect(target, connect_timeout)
        return await self._exchange(conn, key, request, max_bytes)

    async def close(self) -> None:
        for pool in self._idle.values():
            for conn in pool:
                conn.close()
        self._idle.clear()

    def _checkout(self, key: tuple[str, str, int]) -> _Conn | None:
        pool = self._idle.get(key)
        while pool:
            conn = pool.pop()
            if conn.usable:
                return conn
            conn.close()
        return None

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
            return [host]  # an IP literal: the guard checked it before (``sender``)
        hit = self._dns.get((host, port))
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        results = await self.resolver.resolve(host, port, family=socket.AF_UNSPEC)
        addresses = [r["host"] for r in results]
        if len(self._dns) > 10_000:
            self._dns.clear()
        self._dns[(host, port)] = (time.monotonic() + DNS_TTL_S, addresses)
        return addresses

    async def _exchange(
        self, conn: _Conn, key: tuple[str, str, int], request: bytes, max_bytes: int
    ) -> Response:
        assert conn.transport is not None
        conn.transport.write(request)
        try:
            status, headers = await _read_head(conn)
            body, reusable = await _read_body(conn, status, headers, max_bytes)
        except BaseException:
            conn.close()
            raise
        if reusable and headers.get("connection", "").lower() != "close":
            conn.idle_since = time.monotonic()
            pool = self._idle.setdefault(key, deque())
            if len(pool) < MAX_IDLE_PER_ORIGIN:
                pool.append(conn)
            else:
                conn.close()
        else:
            conn.close()
        return Response(status, headers, body)


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


async def _read_body(conn: _Conn, status: int, headers: dict[str, str], max_bytes: int) -> tuple[bytes, bool]:
    """Up to ``max_bytes`` of the body, and whether the connection ended exactly at its end."""
    if status in (101, 204, 304):
        return b"", status != 101
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return await _read_chunked(conn, max_bytes)
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise HTTPError("a malformed Content-Length in the answer")
        size = int(length)
        want = min(size, max_bytes)
        while len(conn.buf) < want:
            await conn.more()
        body = bytes(conn.buf[:want])
        del conn.buf[:want]
        return body, size <= max_bytes and not conn.buf
    # delimited by the close: read what comes, up to the limit
    while len(conn.buf) < max_bytes and not conn.eof:
        await conn.more()
    return bytes(conn.buf[:max_bytes]), False


async def _read_chunked(conn: _Conn, max_bytes: int) -> tuple[bytes, bool]:
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
            take = max_bytes - len(body)
            while len(conn.buf) < take:
                await conn.more()
            body += conn.buf[:take]
            return bytes(body), False
        while len(conn.buf) < size + 2:
            await conn.more()
        body += conn.buf[:size]
        del conn.buf[: size + 2]


def _is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True
