"""The worker's aiohttp session (streams, image fetches, batches), each call's time limits, and
transport failures mapped to the taxonomy. Unstreamed provider calls go through the lean client of
``worker.provider_client`` under the same limits.

Every call is bounded at each stage (``Timeouts``, resolved per deployment from the catalog's
``timeouts:`` block over the global settings): the connect, the wait for the response headers (a
provider that accepts the connection and never answers is abandoned there, streamed or not), then
for an unstreamed call its whole exchange and for a stream its first event and every quiet gap.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from config.catalog import Deployment, TimeoutSpec
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


@dataclass(frozen=True, slots=True)
class Timeouts:
    """One deployment's time limits in seconds (the catalog's ``timeouts:`` block over the settings).

    ``headers_s`` None: a streamed call waits ``first_token_s`` for its headers, an unstreamed one
    ``total_s`` (its headers come with its whole answer); set, it bounds both alike."""

    connect_s: float
    headers_s: float | None
    first_token_s: float
    idle_s: float
    total_s: float

    @classmethod
    def of(cls, dep: Deployment, settings: Settings) -> Timeouts:
        spec = dep.timeouts or TimeoutSpec()
        return cls(
            connect_s=spec.connect_s or settings.connect_timeout_s,
            headers_s=spec.headers_s or settings.headers_timeout_s,
            first_token_s=spec.first_token_s or settings.stream_ttft_s,
            idle_s=spec.idle_s or settings.stream_idle_s,
            total_s=spec.total_s or settings.call_timeout_s,
        )

    def headers(self, *, streamed: bool) -> float:
        """How long a call waits for its response headers."""
        if self.headers_s is not None:
            return min(self.headers_s, self.total_s) if not streamed else self.headers_s
        return self.first_token_s if streamed else self.total_s


def create_session(settings: Settings) -> aiohttp.ClientSession:
    """One session per process: pooled keep-alive connections sized for ``max_jobs`` calls in flight."""
    connector = aiohttp.TCPConnector(
        limit=max(settings.max_jobs * 2, 100), limit_per_host=0, ttl_dns_cache=300, enable_cleanup_closed=True
    )
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout_s)
    return aiohttp.ClientSession(
        connector=connector, timeout=timeout, raise_for_status=False, trust_env=False
    )


async def open_response(
    session: aiohttp.ClientSession, call: HttpCall, limits: Timeouts, *, deadline_at: float, streamed: bool
) -> aiohttp.ClientResponse:
    """Send ``call`` and wait for its response headers, within the deployment's limits and the job's
    deadline; the caller reads (and releases) the response. Raises ``UpstreamTimeout`` when the
    headers do not come in time, else what the transport raised."""
    left = max(deadline_at - time.time(), 0.001)
    total = left if streamed else min(left, limits.total_s)
    # no rounding of the limits up to whole seconds (aiohttp's default past 5 s): a limit is a limit
    timeout = aiohttp.ClientTimeout(
        total=total, sock_connect=min(total, limits.connect_s), ceil_threshold=float("inf")
    )
    wait = limits.headers(streamed=streamed)
    if wait >= total:  # the call's own limit comes first (an unstreamed call's, by default)
        return await session.request(
            call.method, call.url, data=call.body, headers=call.headers, timeout=timeout
        )
    try:
        async with asyncio.timeout(wait):
            return await session.request(
                call.method, call.url, data=call.body, headers=call.headers, timeout=timeout
            )
    except TimeoutError:
        # the message reaches tenants: it never says where the provider is
        raise UpstreamTimeout(f"no response headers from the provider within {wait} s") from None


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
    return without_location(str(exc), url)


def without_location(text: str, url: str) -> str:
    """``text`` with the provider's URL, host and port (``url``'s) replaced by ``<provider>``."""
    parts = urlsplit(url)
    for where in (url, parts.netloc, parts.hostname):
        if where:
            text = text.replace(where, "<provider>")
    return text
