"""Unstreamed provider calls over ``worker.http11``'s lean keep-alive client (streams stay on aiohttp).

One ``ProviderClient`` per worker process, shared by all its jobs and closed with the worker. It
does for a call what the aiohttp session did (``worker.http.open_response`` with ``streamed=False``):

* connect within ``connect_s``, the response headers within ``limits.headers(streamed=False)``
  (when shorter than the whole), the whole exchange within the job's deadline and ``total_s``;
* a normal resolver (aiohttp's, cached ``DNS_TTL_S`` like the session's ``ttl_dns_cache``), no SSRF
  guard (providers are the operator's), no proxy from the environment, TLS with the default context;
* kept-alive connections per origin, as many idle as calls can be in flight (``max_jobs``);
* ``Accept-Encoding: gzip, deflate`` and the body decoded, at most ``MAX_BODY`` bytes either way;
* transport failures as the taxonomy's errors, whose messages never say where the provider is.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
import zlib
from urllib.parse import urlsplit

from aiohttp.resolver import DefaultResolver

from config.settings import Settings
from llm_router.deadlines import Deadlines
from llm_router.errors import BadResponse, RouterError, UpstreamConnectionError, UpstreamTimeout
from worker.http import Timeouts, without_location
from worker.http11 import Client, ConnectTimeout, HeadersTimeout, HTTPError, Target
from worker.providers.base import HttpCall

MAX_BODY = 64 * 1024 * 1024  # an unstreamed answer larger than this is not an answer
DNS_TTL_S = 300.0
IDLE_S = 15.0  # aiohttp's keep-alive time: servers close idle connections after 5 s (uvicorn) to minutes
USER_AGENT = "llm-router/1"
FIXED_HEADERS = b"Accept: */*\r\nAccept-Encoding: gzip, deflate\r\n"


class ProviderClient:
    """Sends ``HttpCall``s; ``ssl_context`` replaces the default one (tests: a CA of their own)."""

    def __init__(self, settings: Settings, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.client = Client(
            DefaultResolver(),
            ssl_context=ssl_context,
            # every call in flight may hold a connection to one host; the aiohttp connector's limit
            max_idle_per_origin=max(settings.max_jobs * 2, 100),
            idle_s=IDLE_S,
            dns_ttl_s=DNS_TTL_S,
        )
        self._targets: dict[tuple[str, str], Target] = {}
        self._deadlines = Deadlines()  # the calls' bounds: one loop timer per tick, not per call

    async def send(
        self, call: HttpCall, limits: Timeouts, *, deadline_at: float
    ) -> tuple[int, dict[str, str], bytes]:
        """Send an unstreamed ``call``; return status, lower-cased headers and the whole (decoded)
        body, or raise a ``RouterError``."""
        total = min(max(deadline_at - time.time(), 0.001), limits.total_s)
        wait = limits.headers(streamed=False)
        loop = asyncio.get_running_loop()
        head_by = loop.time() + wait if wait < total else None
        try:
            target = self._target(call.method, call.url)
            lines = _header_lines(call.headers)
            async with self._deadlines.after(total):
                resp = await self.client.post(
                    target,
                    lines,
                    call.body,
                    connect_timeout=min(total, limits.connect_s),
                    max_bytes=MAX_BODY,
                    exact=True,
                    head_by=head_by,
                )
            body = _decoded(resp.body, resp.headers.get("content-encoding"))
        except HeadersTimeout:
            # the message reaches tenants: it never says where the provider is
            raise UpstreamTimeout(f"no response headers from the provider within {wait} s") from None
        except RouterError:
            raise
        except Exception as exc:
            mapped = transport_error(exc, call.url)
            if mapped is None:
                raise
            raise mapped from None
        return resp.status, resp.headers, body

    async def close(self) -> None:
        await self.client.close()
        await self.client.resolver.close()

    def _target(self, method: str, url: str) -> Target:
        target = self._targets.get((method, url))
        if target is None:
            if len(self._targets) > 10_000:
                self._targets.clear()
            target = self._targets[(method, url)] = _target_of(method, url)
        return target


def _target_of(method: str, url: str) -> Target:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host or port == -1:
        raise UpstreamConnectionError("InvalidURL calling the provider: not an http(s) URL with a host")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise UpstreamConnectionError("InvalidURL calling the provider: an invalid host name") from None
    port = port or (443 if parts.scheme == "https" else 80)
    return Target.of(parts.scheme, host, port, url, FIXED_HEADERS, method)


def _header_lines(headers: dict[str, str]) -> bytes:
    text = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    # a line break in a name or value would end the header early: a request of the caller's making
    if text.count("\n") != len(headers) or text.count("\r") != len(headers):
        raise UpstreamConnectionError("InvalidHeader calling the provider: a line break in a header")
    if not any(name.lower() == "user-agent" for name in headers):
        text += f"User-Agent: {USER_AGENT}\r\n"
    return text.encode()


def _decoded(body: bytes, encoding: str | None) -> bytes:
    """The body without its ``Content-Encoding`` (gzip or deflate, as asked), at most ``MAX_BODY``."""
    if not encoding or not body:
        return body
    encoding = encoding.strip().lower()
    if encoding == "gzip" or encoding == "x-gzip":
        modes = (16 + zlib.MAX_WBITS,)
    elif encoding == "deflate":  # zlib-wrapped as the RFC says, or raw as some servers send it
        modes = (zlib.MAX_WBITS, -zlib.MAX_WBITS)
    else:
        return body  # identity, or one we did not ask for: the adapter reads it as it is
    for wbits in modes:
        inflater = zlib.decompressobj(wbits)
        try:
            out = inflater.decompress(body, MAX_BODY)
        except zlib.error:
            continue
        if inflater.unconsumed_tail:
            raise _undecodable(f"the decoded answer is larger than {MAX_BODY} bytes")
        if not inflater.eof:
            raise _undecodable(f"the {encoding} answer is cut short")
        return out
    raise _undecodable(f"the {encoding} answer does not decode")


def _undecodable(reason: str) -> BadResponse:
    return BadResponse(f"ContentEncodingError calling the provider: {reason}")


def transport_error(exc: BaseException, url: str) -> RouterError | None:
    """The taxonomy's error for a failure of the lean client, or ``None`` when it is not one.

    As ``worker.http.transport_error``'s: the failure's class and reason, never where the provider
    is (an internal gateway's URL, host or address); the attempt in the record names the provider."""
    if isinstance(exc, ConnectTimeout | TimeoutError):
        error: type[RouterError] = UpstreamTimeout
    elif isinstance(exc, HTTPError):
        error = BadResponse
    elif isinstance(exc, OSError):  # ssl.SSLError included: the provider cannot be reached as it should
        error = UpstreamConnectionError
    else:
        return None
    detail = _detail(exc, url)
    return error(f"{type(exc).__name__} calling the provider" + (f": {detail}" if detail else ""))


def _detail(exc: BaseException, url: str) -> str:
    if isinstance(exc, ssl.SSLError):
        # its text may quote the host name (a mismatch): the verification's words, scrubbed below
        text = getattr(exc, "verify_message", None) or exc.reason or ""
    elif isinstance(exc, OSError) and exc.errno and not isinstance(exc, ConnectTimeout):
        # strerror may quote the address: the errno's text does not (a DNS failure's errno is its own)
        text = (exc.strerror or "") if exc.errno < 0 else os.strerror(exc.errno)
        text = text.lower()
    else:
        text = str(exc)
    return without_location(text, url)
