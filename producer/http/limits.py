"""What one tenant may take of a server process: requests in progress, and large bodies in work.

* **Requests**: a tenant has at most ``max_http_requests`` requests in progress on one server
  process (its policy, else ``LLM_ROUTER_TENANT_MAX_HTTP_REQUESTS``); past it, 429
  ``too_many_requests`` with ``Retry-After``. The count is per process: N replicas allow N times as
  many, the same way they multiply every other capacity.
* **Large bodies** (over ``LLM_ROUTER_SERVER_LARGE_BODY_BYTES``, 1 MiB): read, parsed and validated
  at most ``max_large_requests`` (1) at a time per tenant, the parsing and validation on a small
  thread pool (``LLM_ROUTER_SERVER_PARSE_THREADS``) instead of the event loop. A 20 MB chat body
  costs the loop hundreds of milliseconds to seconds of CPU; on the loop, a tenant sending eight at
  once stalled every other tenant's small chats for half a minute. On a thread the loop keeps
  turning: the validation is Python code, which hands the GIL over every switch interval, and what
  holds it longer (one ``orjson.loads``, tens of milliseconds for 20 MB) is bounded by the body limit;
  the tenant's own bodies queue behind each other rather than in front of everyone else's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from aiohttp import web

from config.settings import Settings
from llm_router.errors import TooManyRequests
from llm_router.tenants import TenantPolicies

T = TypeVar("T")
LARGE = "llm_router.large_body"  # request key: the body was large (parse and validate off the loop)


class _Gate:
    """A per-tenant count with a limit given at each entry (a tenant's policy may change)."""

    __slots__ = ("held", "waiters")

    def __init__(self) -> None:
        self.held = 0
        self.waiters: list[asyncio.Future[None]] = []

    def wake(self) -> None:
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)
                return


class TenantLimits:
    """The process's per-tenant counts, and the thread pool large bodies are parsed on."""

    def __init__(self, settings: Settings, policies: TenantPolicies) -> None:
        self.settings = settings
        self.policies = policies
        self._requests: dict[str, int] = {}
        self._large: dict[str, _Gate] = {}
        self.pool = ThreadPoolExecutor(settings.server_parse_threads, thread_name_prefix="llm-router-parse")

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def off_loop(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on the parse pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, lambda: fn(*args, **kwargs))

    @contextlib.asynccontextmanager
    async def request(self, tenant: str) -> AsyncIterator[None]:
        """One request of ``tenant`` in progress; ``TooManyRequests`` past its limit."""
        limit = (await self.policies.get(tenant)).get("max_http_requests")
        count = self._requests.get(tenant, 0)
        if count >= limit:
            raise TooManyRequests(
                f"tenant '{tenant}' has {count} requests in progress on this server, its limit",
                retry_after=1.0,
            )
        self._requests[tenant] = count + 1
        try:
            yield
        finally:
            left = self._requests[tenant] - 1
            if left:
                self._requests[tenant] = left
            else:
                del self._requests[tenant]

    @contextlib.asynccontextmanager
    async def large(self, tenant: str) -> AsyncIterator[None]:
        """Work on one large body of ``tenant``: waits while it has ``max_large_requests`` in work."""
        limit = max((await self.policies.get(tenant)).get("max_large_requests"), 1)
        gate = self._large.setdefault(tenant, _Gate())
        while gate.held >= limit:
            waiter = asyncio.get_running_loop().create_future()
            gate.waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    gate.wake()  # it was this one's turn: pass it on
                raise
            finally:
                gate.waiters.remove(waiter)
        gate.held += 1
        try:
            yield
        finally:
            gate.held -= 1
            if gate.waiters:
                gate.wake()
            elif not gate.held:
                del self._large[tenant]

    def in_progress(self, tenant: str) -> int:
        """The tenant's requests in progress on this process (for tests and the dashboard)."""
        return self._requests.get(tenant, 0)


LIMITS = web.AppKey("llm_router.limits", TenantLimits)
