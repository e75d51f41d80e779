"""The worker's one HTTP client: a shared aiohttp session, and transport failures mapped to the taxonomy."""

from __future__ import annotations

import asyncio
import os
from urllib.parse import urlsplit

import aiohttp

from config.settings import Settings
from llm_router.errors import BadResponse, RouterError, UpstreamConnectionError, UpstreamTimeout
from worker.providers.base import HttpCall

# aiohttp's transport exceptions → our error classes, most specific first (subclasses before bases)
_TRANSPORT_ERRORS: tuple[tuple[type[BaseException], type[RouterError]], ...] = (
    (aiohttp.ServerTimeoutError, UpstreamTimeout),
    (asyncio.TimeoutError, UpstreamTimeout),
    (aiohttp.ClientPayloadError, BadResponse),
    (aiohttp.ServerDisconnectedError, UpstreamConnectionError),
    (aiohttp.ClientConnectionError, UpstreamConnectionError),
    (aiohttp.ClientResponseError, BadResponse),
    (aiohttp.ClientError, UpstreamConnectionError),
)


def create_session(settings: Settings) -> aiohttp.ClientSession:
    """One session per process: pooled keep-alive connections sized for ``max_jobs`` calls in flight."""
    connector = aiohttp.TCPConnector(
        limit=max(settings.max_jobs * 2, 100), limit_per_host=0, ttl_dns_cache=300, enable_cleanup_closed=True
    )
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout_s)
    return aiohttp.ClientSession(
        connector=connector, timeout=timeout, raise_for_status=False, trust_env=False
    )


async def send(
    session: aiohttp.ClientSession, call: HttpCall, timeout_s: float, connect_timeout_s: float = 10.0
) -> tuple[int, dict[str, str], bytes]:
    """Send ``call``; return status, lower-cased headers and the whole body, or raise a ``RouterError``."""
    try:
        async with session.request(
            call.method,
            call.url,
            data=call.body,
            headers=call.headers,
            timeout=aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(timeout_s, connect_timeout_s)),
        ) as resp:
            body = await resp.read()
            headers = {k.lower(): v for k, v in resp.headers.items()}
            return resp.status, headers, body
    except Exception as exc:
        mapped = transport_error(exc, call.url)
        if mapped is None:
            raise
        raise mapped from None


def transport_error(exc: BaseException, url: str) -> RouterError | None:
    """The taxonomy's error for an aiohttp transport failure, or ``None`` when it is not one.

    Its message reaches tenants (records, answers): it names the failure, never where the provider
    is (an internal gateway's URL, host or address); the attempt in the record names the provider."""
    for exc_type, error in _TRANSPORT_ERRORS:
        if isinstance(exc, exc_type):
            detail = _detail(exc, url)
            return error(f"{type(exc).__name__} calling the provider" + (f": {detail}" if detail else ""))
    return None


def _detail(exc: BaseException, url: str) -> str:
    os_error = getattr(exc, "os_error", None)  # a failed connect: its reason, without the address
    if isinstance(os_error, OSError):  # its strerror may quote the address: the errno's text does not
        return os.strerror(os_error.errno).lower() if os_error.errno else type(os_error).__name__
    text = str(exc)
    parts = urlsplit(url)
    for where in (url, parts.netloc, parts.hostname):
        if where:
            text = text.replace(where, "<provider>")
    return text
