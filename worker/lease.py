"""Leases on running jobs and the worker's heartbeat, kept by a thread of their own.

A worker claims a job by leasing it (the queue's ``leases`` set, scored by when the lease ends,
``lease_s`` after the claim; see ``worker.claims``), where arq itself would hold it for the job
timeout + 10 s and never refresh it. This thread renews the leases of every job the worker holds,
every ``lease_s / 3``, in one command for all of them, so a worker that dies (SIGKILL, OOM, a lost
host) loses its jobs to another worker within ``lease_s``, whatever their length; a live worker
keeps them for as long as they run.

It is a thread, not a task on the event loop, so that a loop that is busy or blocked for longer
than the lease does not let another worker run the same job at the same time. The same round trip
writes the heartbeat that producers count live workers from, the deployment each job is calling
(``inflight``), so a run that is cut short shows the interrupted attempt in its record, and renews
the concurrency slots its calls hold (``llm_router.concurrency``), so a dead worker's slots lapse
within ``lease_s`` too.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import orjson
import redis
import structlog

from llm_router.store import LeaseWrites

log = structlog.get_logger("llm_router.worker")
T = TypeVar("T")


class LeaseKeeper(threading.Thread):
    """Refreshes leases of ``held()`` jobs and this worker's heartbeat until ``stop()``."""

    def __init__(
        self,
        *,
        client: redis.Redis,
        queue_name: str,
        worker_id: str,
        held: Callable[[], Iterable[str]],
        inflight: dict[str, dict[str, Any]],
        lease_s: float,
        interval_s: float,
        heartbeat_ttl_s: float,
        routing: tuple[str, dict[str, str]] | None = None,
        slots: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(name="llm-router-lease-keeper", daemon=True)
        # its own blocking client (``llm_router.redis_client.sync_redis_client``), closed by stop()
        self._client = client
        self._writes = LeaseWrites(queue_name, worker_id)
        self.worker_id = worker_id
        self._held = held
        self._inflight = inflight
        self._slots = slots if slots is not None else {}
        self._lease_ms = int(lease_s * 1000)
        self._interval_s = interval_s
        self._heartbeat_ttl_ms = int(heartbeat_ttl_s * 1000)
        self._stopped = threading.Event()
        self._written: dict[str, int] = {}  # job id → id() of the in-flight entry last written
        self._info = orjson.dumps(
            {"pid": os.getpid(), "host": socket.gethostname(), "started_at": time.time()}
        )
        self.beats = 0
        self._routing = routing
        self._routing_every = max(int(60 / interval_s), 1)

    def run(self) -> None:
        while not self._stopped.is_set():
            try:
                self.beat()
            except redis.RedisError as exc:  # Redis away: keep trying; leases of a live worker resume
                log.warning("lease refresh failed", worker_id=self.worker_id, error=repr(exc))
                # a refusal (READONLY from an endpoint that moved) keeps its connection: reconnect
                self._client.connection_pool.disconnect()
            except Exception as exc:  # never let the thread die: every lease of the worker would lapse
                log.exception("lease refresh failed", worker_id=self.worker_id, error=repr(exc))
            self._stopped.wait(self._interval_s)

    def beat(self) -> None:
        now = time.time()
        held = _copied(lambda: list(self._held()))
        pipe = self._client.pipeline(transaction=False)
        self._writes.renew(pipe, held, self._lease_ms)
        self._writes.renew_slots(pipe, _copied(self._slots_by_deployment), self._lease_ms)
        for job_id, call in _copied(lambda: list(self._inflight.items())):
            if self._written.get(job_id) != id(call):
                self._writes.inflight(pipe, job_id, call)
                self._written[job_id] = id(call)
        for job_id in [j for j in self._written if j not in self._inflight]:
            del self._written[job_id]
        self._writes.heartbeat(pipe, now, self._info, self._heartbeat_ttl_ms)
        if self._routing and self._routing[1] and self.beats % self._routing_every == 0:
            # the routing table the start script admits routes from; re-published now and then so a
            # Redis that lost it (restarted without persistence) has it back within a minute
            key, table = self._routing
            pipe.hset(key, mapping=table)
            pipe.expire(key, 7 * 24 * 3600)
        pipe.execute()
        self.beats += 1

    def _slots_by_deployment(self) -> dict[str, list[str]]:
        """The jobs holding a slot of each deployment."""
        by_deployment: dict[str, list[str]] = {}
        for job_id, deps in list(self._slots.items()):
            for dep_id in list(deps):
                by_deployment.setdefault(dep_id, []).append(job_id)
        return by_deployment

    def stop(self) -> None:
        """Stop beating and take this worker off the live list."""
        self._stopped.set()
        if self.is_alive():
            self.join(timeout=5)
        try:
            pipe = self._client.pipeline(transaction=False)
            self._writes.gone(pipe)
            pipe.execute()
        except redis.RedisError:
            pass
        self._client.close()


def _copied(copy: Callable[[], T]) -> T:
    """``copy()`` of what the event loop's thread changes meanwhile (the worker's jobs, their calls
    and slots): a garbage collection in the middle of a copy may run finalizers, and so switch to
    that thread, whose change makes the copy raise ``RuntimeError``: copy again. Unhandled, it ended
    this thread, and with it the leases of every job the worker held (seen at 10,000 jobs held)."""
    for _ in range(100):
        try:
            return copy()
        except RuntimeError:
            continue
    return copy()
