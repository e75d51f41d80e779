"""arq's ``Worker`` on our queue (``worker.claims``); arq's run loop, signals, shutdown grace, health
checks and abort set are kept.

* **Claiming** (``_poll_iteration``): one Lua script leases up to a free slot's worth of due jobs
  (fairly across tenants, high priority first) and starts the first of them (``Starter``: what the
  runner's own start would do, so a job's call goes out without a round trip after its claim);
  held jobs are in no ready queue, so every worker fills its slots whatever arq's
  ``queue_read_limit`` is, and a claim costs the same however many jobs the fleet holds.
* **Waking, not polling**: a worker claims when something may be there to take: a wake-up published
  by a submit (or a job put back), slots freed while the last claim had filled them all (a backlog),
  a deferred job coming due, or a slow safety look (``safety_poll_s``) for what a lost message missed.
  Between those it sleeps on an event: an idle worker costs neither CPU nor Redis reads.
* **Redis outages** (``_poll_iteration``): arq lets a connection error end the worker process; here
  the loop logs it, backs off and carries on, so a worker survives a Redis restart or a failover
  (``LOADING`` included). A Redis that answers but refuses writes (``READONLY`` from a demoted
  primary, ``OOM``…) is ridden out the same way, reconnecting each time so an endpoint that moved to
  the new primary is followed, for ``refusal_limit_s``; past it the worker stops with
  ``RedisUnusable`` and the reason, and its process exits non-zero.
* **Running** (``run_job``): every job is ``run_llm_job(job_id)``, whose record holds everything;
  arq's per-job reads and result serialisation are skipped. A run that ended its job left the queue
  in the record write that ended it; any other run ends with one script on the store's
  auto-pipeline (``Claims.end_run``: done, again, or deferred).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from signal import Signals
from typing import Any

import structlog
from arq import Retry, Worker
from arq.connections import create_pool
from arq.utils import poll
from redis.exceptions import AuthenticationError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from llm_router.deadlines import Deadlines
from llm_router.errors import JobCancelled, RedisUnusable
from llm_router.keys import hand_channel, wake_channel
from llm_router.redis_checks import write_refusal
from llm_router.store import NOT_STARTED, NotStarted, Settlement, Started, StartReply, Store, UnstartReply
from llm_router.subscription import Subscription
from worker import observe
from worker.claims import Claims, Handed

log = structlog.get_logger("llm_router.worker")

ABORT_CHECK_S = 0.25
ABORTED = {
    "status": "cancelled",
    "error": JobCancelled("cancelled by the client while it ran").to_dict(),
}
NOTHING_PAID = Settlement(cost_nanos=0, model="", prompt_tokens=0, completion_tokens=0)
# jobs a submit may hand a waiting worker before its next claim: a worker that listens but is
# frozen holds that many until their leases lapse, and near the end of them the worker claims again
HAND_SLOTS = 4
TAKEN_BACK_KEPT = 1024  # lost hand-offs remembered, so that their message, should it come, is ignored
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)


class LeasedWorker(Worker):
    """An arq worker whose jobs come from our queue as leases, and which outlives Redis restarts."""

    def __init__(
        self,
        *args: Any,
        lease_s: float,
        safety_poll_s: float = 1.0,
        refusal_limit_s: float = 60.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.lease_ms = int(lease_s * 1000)
        self.safety_poll_s = safety_poll_s
        self._store: Store | None = None
        self._claims: Claims | None = None
        self._run: Callable[[str, StartReply | NotStarted], Awaitable[bool]] | None = None
        self._unstart: Callable[[str, Started, str], Awaitable[UnstartReply]] | None = None
        self._outage_s = 0.0
        self._next_abort_check = 0.0
        self._deadlines = Deadlines()  # the job timeouts of a thousand runs on a few loop timers
        # when to claim: a wake-up arrived, or slots freed behind a claim that had filled them all
        self._wakeup = asyncio.Event()
        # a wake-up published (a submit, a job put back): claimed at once, even within a step; freed
        # slots wait for the step, so that a wide worker's refills gather into one claim
        self._published = asyncio.Event()
        self._backlog = False
        self._next_look = 0.0  # loop time of the next safety look (or of a deferred job coming due)
        self._freed = 0
        self._refill_after = max(1, self.max_jobs // 40)  # a wide worker claims in batches
        self._listener: asyncio.Task[None] | None = None
        # handed jobs (``Claims``: a submit to an empty queue starts its job for a waiting worker) this
        # worker's registration still allows; near the end of them it claims, which registers it again
        self._hand_left = 0
        self._received: list[str] = []  # handed jobs received since the last claim (it acknowledges them)
        # handed jobs waiting for a slot, with what their start replied (undone if they never run)
        self._unslotted: dict[str, StartReply | NotStarted] = {}
        self._taken_back: dict[str, None] = {}  # handed jobs whose message was lost, latest last
        self._putbacks: set[asyncio.Task[None]] = set()
        self._idle_ttl_ms = int((2 * safety_poll_s + 1) * 1000)
        self.refusal_limit_s = refusal_limit_s
        self._refused_since: float | None = None
        self._stopping_since: float | None = None  # loop time of the stop signal
        self._withdrawal: asyncio.Task[None] | None = None

    def handle_sig_wait_for_completion(self, signum: Signals) -> None:
        log.warning(
            "stopping: no new jobs; running ones get the grace period",
            signal=Signals(signum).name,
            running=len(self.tasks),
        )
        super().handle_sig_wait_for_completion(signum)
        if self._stopping_since is None:
            self._stopping_since = self.loop.time()
            if self._claims is not None:  # no more handed jobs (one in flight still runs here)
                self._withdrawal = self.loop.create_task(self._claims.withdraw())

    async def _cancel_aborted_jobs(self) -> None:
        # arq reads its abort set on every poll; a cancel can wait a quarter of a second (while Redis
        # refuses writes it runs, and writes, on every poll: a poll that passes proves Redis is back)
        now = self.loop.time()
        if (now < self._next_abort_check or not self.job_tasks) and self._refused_since is None:
            return
        self._next_abort_check = now + ABORT_CHECK_S
        await super()._cancel_aborted_jobs()

    def use_store(
        self,
        store: Store,
        claims: Claims,
        run: Callable[[str, StartReply | NotStarted], Awaitable[bool]] | None = None,
        unstart: Callable[[str, Started, str], Awaitable[UnstartReply]] | None = None,
    ) -> None:
        """The store (records), claims and the end of runs; ``run`` runs one job by id (the runner),
        given what its start replied when the claim started it (else ``NOT_STARTED``), and says
        whether its last write took the job off the queue already; ``unstart`` undoes the start of
        a handed job that never ran (``JobRunner.put_back_unrun``)."""
        self._store = store
        self._claims = claims
        self._run = run
        self._unstart = unstart
        self._listener = self.loop.create_task(self._listen_for_work(), name="wake-listener")

    async def close(self) -> None:
        if self._claims is not None:
            with contextlib.suppress(Exception):
                await self._claims.withdraw()
        if self._putbacks:
            await asyncio.gather(*self._putbacks, return_exceptions=True)
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
        await super().close()

    async def _listen_for_work(self) -> None:
        """Sets the wake-up event when the queue gets due work, and runs the jobs handed to this
        worker (one subscription per worker)."""
        assert self._store is not None and self._claims is not None
        starter = self._claims.starter
        hand = hand_channel(self.queue_name, starter.worker_id).encode() if starter is not None else None
        delay = 0.1
        while True:
            pubsub = self._store.redis.pubsub()
            sub: Subscription | None = None
            try:
                await pubsub.subscribe(wake_channel(self.queue_name), *([hand] if hand else []))
                sub = Subscription(pubsub)
                self._wakeup.set()  # whatever came while we were not listening
                delay = 0.1
                while True:
                    # read from the connection (``llm_router.subscription``), not ``listen()``: that
                    # reads under the pool's socket timeout, so a quiet channel ended the
                    # subscription every few seconds (and a hand-off meeting no subscriber passed
                    # this worker over); nor ``get_message``, two timers and a health check a message
                    message = await sub.next()
                    try:
                        self._heard(message.channel, message.data, hand)
                    except Exception as exc:  # one bad message must not end the listening
                        log.error("a message on the work channels was not understood", error=repr(exc))
                    if message.channel == hand:
                        # the handed job's task first, up to its call: reading on (the socket
                        # polled) before it delayed an interactive call ~0.1 ms
                        await asyncio.sleep(0)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, ValueError) as exc:
                log.debug("wake-ups lost, listening again", error=repr(exc))
            finally:
                if sub is not None:
                    sub.close()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _heard(self, channel: bytes, data: bytes, hand: bytes | None) -> None:
        if channel == hand:
            self._take_handed(Handed.decode(data))
            return
        due_ms = int(data)
        if due_ms > 1:  # a deferred job: look again when it is due
            at = self.loop.time() + max(due_ms / 1000 - time.time(), 0)
            self._next_look = min(self._next_look, at)
        else:
            self._wakeup.set()
            self._published.set()

    async def main(self) -> None:
        """arq's ``main`` (pool, start-up, the poll loop) with a burst mode that knows our queue: a
        burst worker stops once nothing is ready, delayed or held and its own jobs have ended."""
        if not self.burst:
            await super().main()
            return
        if self._pool is None:
            self._pool = await create_pool(
                self.redis_settings,
                job_deserializer=self.job_deserializer,
                job_serializer=self.job_serializer,
                default_queue_name=self.queue_name,
                expires_extra_ms=self.expires_extra_ms,
            )
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self.on_startup(self.ctx)
        async for _ in poll(self.poll_delay_s):
            await self._poll_iteration()
            if not self.tasks and self._claims is not None and await self._claims.empty():
                return

    async def run_job(self, job_id: str, score: int, started: StartReply | NotStarted = NOT_STARTED) -> None:
        """Run one claimed job: the runner reads everything from the record (``started``: the start
        its claim made), so arq's per-job reads (the job payload, its try counter, the abort flag)
        and its result serialisation are skipped; the end of the run is one script on the
        auto-pipeline, unless the write that ended the job took it off the queue already."""
        if self._run is None or self._claims is None:
            await super().run_job(job_id, score)
            return
        task = asyncio.current_task()
        assert task is not None
        self.job_tasks[job_id] = task  # where arq's abort check finds it
        done, due_ms, released = True, None, False
        try:
            async with self._deadlines.after(self.job_timeout_s):
                released = await self._run(job_id, started)
            self.jobs_complete += 1
        except Retry as exc:
            done = False
            if exc.defer_score:
                due_ms = int(time.time() * 1000) + exc.defer_score
            self.jobs_retried += 1
        except asyncio.CancelledError:
            if job_id in self.aborting_tasks:  # a cancel of the running job: it has ended
                self.aborting_tasks.discard(job_id)
                self.jobs_failed += 1
                # the runner ends it cancelled when the abort lands in the walk; landing anywhere else
                # (its start, a deferral's write) must still end it, or its reservation and queue
                # slot would never be released (the script ignores a job that already ended)
                if self._store is not None:
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
        if not (done and released):  # a job whose record write ended it left the queue in that write
            await asyncio.shield(self._claims.end_run(job_id, done=done, due_ms=due_ms))

    def _take_handed(self, handed: Handed) -> None:
        """Run a job a submit handed this worker: held from now (its lease renewed), run once it has
        a slot. It has one unless a claim took this worker's room while the job was on its way. A
        job this worker already holds, or took back as lost (``Claimed.taken_back``), is not run
        again from a late message."""
        job_id = handed.job_id
        self._received.append(job_id)  # acknowledged at the next claim, run here or not
        if job_id in self.tasks or job_id in self._taken_back:
            observe.handoff(self.queue_name, "late")
            return
        observe.handoff(self.queue_name, "run")
        self.job_counter += 1  # its room is taken now: a claim before its task starts must not take it
        self._unslotted[job_id] = handed.started
        task = self.loop.create_task(self._run_handed(handed))
        task.add_done_callback(functools.partial(self._handed_done, job_id))
        self.tasks[job_id] = task
        self._hand_left -= 1
        if self._hand_left <= 1:  # claim at the next step: the registration is renewed with the room
            self._wakeup.set()

    async def _run_handed(self, handed: Handed) -> None:
        await self.sem.acquire()
        self._unslotted.pop(handed.job_id, None)
        try:
            await self.run_job(handed.job_id, 0, handed.started)
        finally:
            self._release_sem_dec_counter_on_complete()

    def _handed_done(self, job_id: str, task: asyncio.Task[Any]) -> None:
        if job_id in self._unslotted:
            # cancelled (the worker stops) before it had a slot, perhaps before its first step: it
            # never ran, so it goes back to the queue now rather than when its lease lapses
            started = self._unslotted.pop(job_id)
            self.job_counter -= 1
            if self._claims is not None:
                back = self.loop.create_task(self._put_back(job_id, started))
                self._putbacks.add(back)
                back.add_done_callback(self._putbacks.discard)
        self._job_done(job_id, task, release=False)

    async def _put_back(self, job_id: str, started: StartReply | NotStarted) -> None:
        """A handed job that never ran back on its queue: started here, its start is undone in the
        same step (else its record still says running here); not started, it is put back as a run's
        end puts a job back."""
        assert self._claims is not None
        if self._unstart is not None and isinstance(started, Started):
            try:
                await self._unstart(job_id, started, self.queue_name)
                return
            except Exception as exc:  # a lost reply, say: a put-back that ran finds no lease below
                log.warning("cannot undo a handed job's start", job_id=job_id, error=repr(exc))
        await self._claims.end_run(job_id, done=False)

    def _job_done(self, job_id: str, task: asyncio.Task[Any], *, release: bool = True) -> None:
        """A job task ended: its slot is free, and it leaves ``tasks`` now (a sweep of every task at
        each 10 ms tick cost a wide worker ~1 µs a held job, 1M steps a second at 10,000 held). A job
        whose task died keeps its lease until it lapses, and a worker runs it again."""
        if release:  # a handed job's task gives its slot back itself (it may end before it had one)
            self._release_sem_dec_counter_on_complete()
        if self.tasks.get(job_id) is task:  # not a later run of the same job, claimed again here
            del self.tasks[job_id]
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("job task died; the job will run again", job_id=job_id, error=repr(exc))
        self._freed += 1
        if self._backlog and self._freed >= self._refill_after:
            self._wakeup.set()

    async def _poll_iteration(self) -> None:
        """One step of arq's run loop (``arq.utils.poll``), which sleeps whatever is left of
        ``poll_delay_s`` after it: that sleep is spent here instead, and a published wake-up in it
        claims at once. Left to arq, a job submitted just after a quick step (a claim soon after
        the step began) waited out the rest of it: 2.3 ms of an interactive request's 5 ms, at the
        interactive queue's 5 ms step (a bulk worker's is 10 ms). Slots freed behind a full claim
        still wait for the step, which gathers a wide worker's refills into one claim (claiming on
        each cost it 12 % more CPU a job). A worker with no room sleeps the rest in arq's loop:
        claims wait for room."""
        start = self.loop.time()
        while True:
            await self._poll_once()
            rest = self.poll_delay_s - (self.loop.time() - start)
            room = self.max_jobs - self.job_counter if self.allow_pick_jobs else 0
            if rest <= 0 or room <= 0 or self._claims is None:
                return
            try:
                async with asyncio.timeout(rest):
                    await self._published.wait()
            except TimeoutError:
                return

    async def _poll_once(self) -> None:
        # arq cancels its main task once after a signal's grace period; should a wait below have
        # swallowed that cancel, the worker would poll on forever, taking nothing: end it here
        if self.main_task is not None and self.main_task.cancelling():
            raise asyncio.CancelledError
        # and should that one cancel have found no main task to cancel yet (a signal during start-up),
        # a stopping worker whose jobs are all done ends once the grace period is over
        if (
            self._stopping_since is not None
            and not self.tasks
            and self.loop.time() - self._stopping_since > self._job_completion_wait + 1
        ):
            raise asyncio.CancelledError
        if self._claims is None:
            return
        now = self.loop.time()
        # SIGTERM (arq's allow_pick_jobs off): no new jobs, the running ones get their grace period
        room = self.max_jobs - self.job_counter if self.allow_pick_jobs else 0
        if room <= 0 or not (self._wakeup.is_set() or now >= self._next_look):
            # nothing to take: sleep until a wake-up, the next look, or a tick while jobs run (their
            # aborts and the health check are looked at between)
            wait = max(self._next_look - now, 0.0)
            if self.tasks or room <= 0:
                wait = min(wait, self.poll_delay_s)
            # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancel that comes as
            # the event is set, which left a SIGTERMed worker polling forever
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wakeup.wait()
            now = self.loop.time()
            room = self.max_jobs - self.job_counter if self.allow_pick_jobs else 0
        try:
            if room > 0 and (self._wakeup.is_set() or now >= self._next_look):
                self._wakeup.clear()
                self._published.clear()
                self._freed = 0
                await self._claim(room, now)
            await self._cancel_aborted_jobs()
            await self.heart_beat()
        except AuthenticationError:
            raise  # our credentials are refused: nothing to wait for
        except REDIS_DOWN as exc:
            self._wakeup.set()  # look again once Redis is back
            await self._back_off("redis unavailable, retrying", exc)
        except ResponseError as exc:
            if (reason := write_refusal(exc)) is None:
                raise
            # timed from the refusal itself, not from the start of the pass that met it
            refused_at = time.monotonic()
            if self._refused_since is None:
                self._refused_since = refused_at
            elif refused_at - self._refused_since > self.refusal_limit_s:
                raise RedisUnusable(f"{reason} (for {refused_at - self._refused_since:.0f} s)") from exc
            # a refusing connection stays open: drop the idle ones (running jobs' exchanges are left
            # alone), so the next connection finds where Redis is now
            await self.pool.connection_pool.disconnect(inuse_connections=False)
            self._wakeup.set()
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

    async def _claim(self, room: int, now: float) -> None:
        assert self._claims is not None
        received, self._received = self._received, []
        claimed = await self._claims.claim(
            self.lease_ms, room, idle_ttl_ms=self._idle_ttl_ms, hand_slots=HAND_SLOTS, received=received
        )
        # jobs handed to this worker while the claim was on its way, and lost ones it took back
        room -= claimed.on_their_way + len(claimed.taken_back)
        self._hand_left = min(room - len(claimed.jobs), HAND_SLOTS)
        for job_id in claimed.taken_back:
            observe.handoff(self.queue_name, "taken_back")
            self._taken_back[job_id] = None
            while len(self._taken_back) > TAKEN_BACK_KEPT:
                del self._taken_back[next(iter(self._taken_back))]
        for job_id in [*claimed.taken_back, *claimed.jobs]:
            if job_id in self.tasks:  # held here already (a handed job whose message came late)
                continue
            # job_counter and the semaphore move together, as in arq
            await self.sem.acquire()
            self.job_counter += 1
            task = self.loop.create_task(self.run_job(job_id, 0, claimed.started.get(job_id, NOT_STARTED)))
            task.add_done_callback(functools.partial(self._job_done, job_id))
            self.tasks[job_id] = task
        # all the room taken: more may be due, claim again as slots free; else sleep until told
        self._backlog = len(claimed.jobs) == room
        self._next_look = now + self.safety_poll_s
        if claimed.next_due_ms is not None:
            due = now + max(claimed.next_due_ms / 1000 - time.time(), 0)
            self._next_look = min(self._next_look, due)
