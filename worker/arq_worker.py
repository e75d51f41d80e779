"""arq's ``Worker`` with the two changes durability needs, and nothing else of arq's loop rewritten.

* **Claiming** (``start_jobs``): one Lua script claims every due job of a poll with a short lease
  (see ``worker.lease``), in one round trip, where arq claims each job with a WATCH/MULTI of three
  round trips and an in-progress TTL of the job timeout + 10 s that nobody refreshes.
* **Redis outages** (``_poll_iteration``): arq lets a connection error end the worker process; here
  the poll loop logs it, backs off and carries on, so a worker survives a Redis restart.
"""

from __future__ import annotations

import asyncio
from signal import Signals
from typing import Any

import structlog
from arq import Worker
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from llm_router.store import Store

log = structlog.get_logger("llm_router.worker")

REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)


class LeasedWorker(Worker):
    """An arq worker whose job claims are leases, and which outlives Redis restarts."""

    def __init__(self, *args: Any, lease_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lease_ms = int(lease_s * 1000)
        self._store: Store | None = None
        self._outage_s = 0.0

    def handle_sig_wait_for_completion(self, signum: Signals) -> None:
        log.warning(
            "stopping: no new jobs; running ones get the grace period",
            signal=Signals(signum).name,
            running=len(self.tasks),
        )
        super().handle_sig_wait_for_completion(signum)

    def use_store(self, store: Store) -> None:
        self._store = store

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        free = self.max_jobs - self.job_counter
        if free <= 0 or self._store is None:
            return
        # all of the poll's candidates: the front of the queue may be held by other workers
        candidates = [j for j in (b.decode() for b in job_ids) if j not in self.tasks]
        for job_id, score in await self._store.claim(candidates, self.lease_ms, free):
            # job_counter and the semaphore move together, as in arq; only claimed jobs count
            await self.sem.acquire()
            self.job_counter += 1
            task = self.loop.create_task(self.run_job(job_id, score))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task

    async def _poll_iteration(self) -> None:
        self._reap()
        try:
            await super()._poll_iteration()
        except REDIS_DOWN as exc:
            self._outage_s = min(max(self._outage_s * 2, 0.1), 2.0)
            log.warning("redis unavailable, retrying", retry_in_s=self._outage_s, error=repr(exc))
            await asyncio.sleep(self._outage_s)
        else:
            if self._outage_s:
                log.info("redis is back")
            self._outage_s = 0.0

    def _reap(self) -> None:
        """Drop finished job tasks before arq sees them: arq re-raises a task's error from its poll,
        one per poll, which would stall polling after an outage killed many tasks at once. A job
        whose task died keeps its queue entry; its lease lapses and a worker runs it again."""
        for job_id, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[job_id]
                if not task.cancelled() and (exc := task.exception()) is not None:
                    log.warning("job task died; the job will run again", job_id=job_id, error=repr(exc))
