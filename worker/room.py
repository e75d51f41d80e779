"""Waiting for room on a deployment, inside the worker that runs the job.

A job that finds every deployment of its model at its concurrency limit (``busy``,
``llm_router.concurrency``) waits here for a while before it is deferred. Deferring at once would
send it back to the queue to be claimed, started and found busy again a latency later: with a
backlog many times the limit, the fleet would spend its CPU and Redis on jobs going round (the
calls in flight then fall below the limit, the opposite of what admission is for). A waiting job
keeps its worker slot instead, so the backlog stays in the queue, unclaimed.

It is woken when a call of this worker gives a slot of that deployment back (its report written),
one waiter per slot, first come first served; slots given back by other workers are found by a
slow poll (the caller's timeout). The wait is bounded (``LLM_ROUTER_CONCURRENCY_WAIT_S``): a job
that waited that long is deferred off its slot, as before, so jobs of other models are not held up
behind a full deployment for long.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterable


class Room:
    """The jobs of one worker waiting for a slot, by deployment."""

    def __init__(self) -> None:
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}

    async def wait(self, deployments: Iterable[str], timeout: float) -> bool:
        """Until a slot of one of ``deployments`` is given back here, or ``timeout`` seconds: True
        when woken by a slot (the caller then asks for it; another worker may have taken it)."""
        names = list(deployments)
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for name in names:
            self._waiting.setdefault(name, deque()).append(woken)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await asyncio.shield(woken)
            return woken.done() and not woken.cancelled()
        finally:
            for name in names:
                queue = self._waiting.get(name)
                if queue is not None:
                    with contextlib.suppress(ValueError):
                        queue.remove(woken)
                    if not queue:
                        del self._waiting[name]

    def freed(self, deployments: Iterable[str]) -> None:
        """A slot of each of ``deployments`` was given back: wake the longest waiter of each."""
        for name in deployments:
            queue = self._waiting.get(name)
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    break

    def waiting(self) -> int:
        """Jobs waiting now (each counted once)."""
        return len({id(f) for q in self._waiting.values() for f in q if not f.done()})
