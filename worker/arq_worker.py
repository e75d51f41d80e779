"""arq's ``Worker`` with what durability and throughput need; arq's poll loop, signals, shutdown
grace, health checks and abort set are kept.

* **Claiming** (``start_jobs``): one Lua script claims every due job of a poll with a short lease
  (see ``worker.lease``), in one round trip, where arq claims each job with a WATCH/MULTI of three
  round trips and an in-progress TTL of the job timeout + 10 s that nobody refreshes.
* **Redis outages** (``_poll_iteration``): arq lets a connection error end the worker process; here
  the poll loop logs it, backs off and carries on, so a worker survives a Redis restart or a
  failover (``LOADING`` included). A Redis that answers but refuses writes (``READONLY`` from a
  demoted primary, ``OOM``…) is ridden out the same way, reconnecting each time so an endpoint that
  moved to the new primary is followed, for ``refusal_limit_s``; past it the worker stops with
  ``RedisUnusable`` and the reason, and its process exits non-zero.
* **Refilling** (``_poll_iteration``): the loop ticks every 10 ms but reads the queue every
  ``poll_delay`` unless many slots came free, so a wide worker refills within a tick of a wave.
* **Running** (``run_job``, ``finish_job``): every job is ``run_llm_job(job_id)``, whose record holds
  everything; arq's per-job reads and result serialisation are skipped, and its end-of-run
  bookkeeping is one script on the store's auto-pipeline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from signal import Signals
from typing import Any

import structlog
from arq import Retry, Worker
from arq.utils import timestamp_ms
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from llm_router.errors import JobCancelled, RedisUnusable
from llm_router.redis_checks import write_refusal
from llm_router.store import Settlement, Store
from worker import observe
from worker.claims import Claims

log = structlog.get_logger("llm_router.worker")

ABORT_CHECK_S = 0.25
ABORTED = {
    "status": "cancelled",
    "error": JobCancelled("cancelled by the client while it ran").to_dict(),
}
NOTHING_PAID = Settlement(cost_nanos=0, model="", prompt_tokens=0, completion_tokens=0)
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)


class LeasedWorker(Worker):
    """An arq worker whose job claims are leases, and which outlives Redis restarts."""

    def __init__(
        self,
        *args: Any,
        lease_s: float,
        read_every_s: float | None = None,
        refusal_limit_s: float = 60.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        # the loop ticks every poll_delay, but reads the queue only every read_every_s, unless a
        # fortieth of the slots came free since the last read: a wide worker refills its slots within
        # a tick of a wave of jobs ending, an idle one costs Redis no more reads
        self.read_every_s = read_every_s or self.poll_delay_s
        self._last_read = 0.0
        self._freed = 0
        self._wake_after = max(1, self.max_jobs // 40)
        self.lease_ms = int(lease_s * 1000)
        self._store: Store | None = None
        self._claims: Claims | None = None
        self._run: Callable[[str], Awaitable[None]] | None = None
        self._outage_s = 0.0
        self._next_abort_check = 0.0
        self.refusal_limit_s = refusal_limit_s
        self._refused_since: float | None = None

    def handle_sig_wait_for_completion(self, signum: Signals) -> None:
        log.warning(
            "stopping: no new jobs; running ones get the grace period",
            signal=Signals(signum).name,
            running=len(self.tasks),
        )
        super().handle_sig_wait_for_completion(signum)

    async def _cancel_aborted_jobs(self) -> None:
        # arq reads its abort set on every poll: a round trip per poll, 200 a second for the
        # interactive queue's worker; a cancel can wait a quarter of a second
        # while Redis refuses writes this runs (and writes) on every poll, so a poll that passes
        # proves Redis takes writes again
        now = self.loop.time()
        if now < self._next_abort_check and self._refused_since is None:
            return
        self._next_abort_check = now + ABORT_CHECK_S
        await super()._cancel_aborted_jobs()

    async def finish_job(
        self,
        job_id: str,
        finish: bool,
        result_data: bytes | None,
        result_timeout_s: float | None,
        keep_result_forever: bool,
        incr_score: int | None,
        keep_in_progress: float | None,
    ) -> None:
        # arq's MULTI of up to six commands as one script on the store's auto-pipeline; results are
        # never kept (keep_result=0), so there is none to write
        if self._claims is None or result_data is not None:
            await super().finish_job(
                job_id,
                finish,
                result_data,
                result_timeout_s,
                keep_result_forever,
                incr_score,
                keep_in_progress,
            )
            return
        await self._claims.arq_finish(
            job_id,
            done=finish,
            incr_score=incr_score,
            keep_in_progress_ms=None if keep_in_progress is None else int(keep_in_progress * 1000),
        )

    def use_store(
        self, store: Store, claims: Claims, run: Callable[[str], Awaitable[None]] | None = None
    ) -> None:
        """The store (records), claims and arq's bookkeeping; ``run`` runs one job by id (the runner)."""
        self._store = store
        self._claims = claims
        self._run = run

    async def run_job(self, job_id: str, score: int) -> None:
        """Run one claimed job: the runner reads everything from the record, so arq's per-job reads
        (the job payload, its try counter, the abort flag: a MULTI of four commands) and its result
        serialisation are skipped; the end of the run is one script on the auto-pipeline."""
        if self._run is None or self._store is None:
            await super().run_job(job_id, score)
            return
        task = asyncio.current_task()
        assert task is not None
        self.job_tasks[job_id] = task  # where arq's abort check finds it
        done, incr_score = True, None
        try:
            async with asyncio.timeout(self.job_timeout_s):
                await self._run(job_id)
            self.jobs_complete += 1
        except Retry as exc:
            done = False
            if exc.defer_score:
                incr_score = exc.defer_score + (timestamp_ms() - score)
            self.jobs_retried += 1
        except asyncio.CancelledError:
            if job_id in self.aborting_tasks:  # a cancel of the running job: it has ended
                self.aborting_tasks.discard(job_id)
                self.jobs_failed += 1
                # the runner ends it cancelled when the abort lands in the walk; landing anywhere else
                # (its start, a deferral's write) must still end it, or its reservation and queue
                # slot would never be released (the script ignores a job that already ended)
                ended = {**ABORTED, "finished_at": time.time()}
                await asyncio.shield(self._store.finish(job_id, ended, settlement=NOTHING_PAID))
            else:  # stopping: the runner put the job back; it runs again
                done = False
                self.jobs_retried += 1
        except TimeoutError:  # past arq's job timeout (the runner stops itself before): run again
            log.warning("job exceeded the worker's job timeout; it will run again", job_id=job_id)
            done = False
            self.jobs_retried += 1
        except Exception as exc:  # the runner lets nothing else out; if it did, the job runs again
            log.exception("job run raised", job_id=job_id, error=repr(exc))
            done = False
            self.jobs_retried += 1
        finally:
            self.job_tasks.pop(job_id, None)
            observe.job_done()
        await asyncio.shield(
            self._claims.arq_finish(job_id, done=done, incr_score=incr_score, keep_in_progress_ms=None)
        )

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        free = self.max_jobs - self.job_counter
        if free <= 0 or self._claims is None:
            return
        # all of the poll's candidates: the front of the queue may be held by other workers
        candidates = [j for j in (b.decode() for b in job_ids) if j not in self.tasks]
        for job_id, score in await self._claims.claim(candidates, self.lease_ms, free):
            # job_counter and the semaphore move together, as in arq; only claimed jobs count
            await self.sem.acquire()
            self.job_counter += 1
            task = self.loop.create_task(self.run_job(job_id, score))
            task.add_done_callback(self._job_done)
            self.tasks[job_id] = task

    def _job_done(self, _task: asyncio.Task[Any]) -> None:
        self._release_sem_dec_counter_on_complete()
        self._freed += 1

    async def _poll_iteration(self) -> None:
        self._reap()
        now = self.loop.time()
        if self._freed < self._wake_after and now - self._last_read < self.read_every_s:
            return
        self._last_read = now
        self._freed = 0
        try:
            await super()._poll_iteration()
        except AuthenticationError:
            raise  # our credentials are refused: nothing to wait for
        except REDIS_DOWN as exc:
            await self._back_off("redis unavailable, retrying", exc)
        except ResponseError as exc:
            if (reason := write_refusal(exc)) is None:
                raise
            if self._refused_since is None:
                self._refused_since = now
            elif now - self._refused_since > self.refusal_limit_s:
                raise RedisUnusable(f"{reason} (for {now - self._refused_since:.0f} s)") from exc
            # a refusing connection stays open: drop the idle ones (running jobs' exchanges are left
            # alone), so the next connection finds where Redis is now
            await self.pool.connection_pool.disconnect(inuse_connections=False)
            await self._back_off("redis refuses writes, retrying", exc)
        else:
            if self._outage_s:
                log.info("redis is back")
            self._outage_s = 0.0
            self._refused_since = None

    async def _back_off(self, what: str, exc: Exception) -> None:
        self._outage_s = min(max(self._outage_s * 2, 0.1), 2.0)
        log.warning(what, retry_in_s=self._outage_s, error=repr(exc))
        await asyncio.sleep(self._outage_s)

    def _reap(self) -> None:
        """Drop finished job tasks before arq sees them: arq re-raises a task's error from its poll,
        one per poll, which would stall polling after an outage killed many tasks at once. A job
        whose task died keeps its queue entry; its lease lapses and a worker runs it again."""
        for job_id, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[job_id]
                if not task.cancelled() and (exc := task.exception()) is not None:
                    log.warning("job task died; the job will run again", job_id=job_id, error=repr(exc))
