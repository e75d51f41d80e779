"""Job records: submit, start, finish, cancel, read, token streams and compare parents.

A job's record is a Redis hash at ``keys.record_key(id)``; JSON-valued fields are orjson bytes; its
request is a key of its own (``keys.request_key``) until the job ends. Each state change is one Lua
script of ``llm_router.record_lua`` (atomic, one round trip): ``submit`` creates the record and the
request and makes the job due in its queue in the same step (SET-NX semantics on the record make it
the idempotency key; a bulk submit sends ``SUBMIT_GROUP`` jobs to a call), ``start`` marks a job
running and returns its request, ``finish`` writes the outcome unless the job already ended,
``cancel`` takes a queued job off its queue. Scripts run on Redis' own clock-free inputs: times are
passed in by the caller.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from enum import Enum, IntEnum, StrEnum
from typing import Any, Final

import msgpack
import orjson
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

try:
    from hiredis import pack_command
except ImportError:  # pragma: no cover - hiredis is a dependency
    pack_command = None

from config.cost import nanos_to_usd
from llm_router.autopipe import PING, AutoPipeline
from llm_router.circuit_breaker import (
    Admission,
    BreakerReport,
    Transition,
    decode_admission,
    decode_admissions,
    decode_transitions,
)
from llm_router.contract import JobRecord, JobStatus
from llm_router.keys import (
    PRIORITIES,
    RECORD_PREFIX,
    active_tenants_key,
    delayed_key,
    leases_key,
    ready_key,
    record_key,
    request_key,
    scoped_id,
    slots_key,
    split_scoped,
    stream_key,
    worker_info_key,
    workers_key,
)
from llm_router.record_lua import (
    ADMIT_LUA,
    CANCEL_LUA,
    CHILD_REFUSED_LUA,
    DELETE_ENDED_LUA,
    FINISH_LUA,
    START_LUA,
    SUBMIT_LUA,
    UNSTART_LUA,
)
from llm_router.tracing import TRACEPARENT_FIELD

JSON_FIELDS = ("request", "route", "attempts", "response", "usage", "error", "metadata", "webhook")
FLOAT_FIELDS = ("created_at", "deadline_at", "started_at", "finished_at")


# jobs per submit script call: Redis runs a call's jobs back to back (~10 µs each), so a group is held
# to about what one 16 KB pipeline read of single-job calls held Redis before (other clients wait)
SUBMIT_GROUP = 50


def body_digest(body: bytes) -> str:
    return hashlib.blake2b(body, digest_size=16).hexdigest()


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs a µs per job in bulk submits
class NewJob:
    """What a new record starts with; ``request`` is the canonical JSON that ``digest`` hashes."""

    job_id: str
    digest: str
    request: bytes
    route: list[str]
    route_json: bytes
    model_requested: str
    tenant: str
    created_at: float
    deadline_at: float
    metadata: dict[str, Any] | None = None
    reserve_nanos: int = 0  # the worst-case cost held from the tenant's credit until the job settles
    prompt_tokens: int = 0  # estimated without a tokenizer (config.cost.prompt_tokens)
    # what rate limits count the job as before it runs: prompt_tokens plus its max output, if set
    est_tokens: int = 0
    routed_by: str | None = None  # a route chose the model: which rule
    cache_key: str | None = None  # the response cache's key within the tenant, and its TTL
    cache_ttl: int = 0
    parent: str | None = None  # the compare job this job is one side of (its id, in the same tenant)
    priority: str = "normal"  # its band in the queue: high, normal or low
    queue: str | None = None  # the job's queue when it is not the bulk one (a cancel must find it)
    tenant_given: bool = True  # the job named its tenant (else a producer's default tenant applies)
    # request fields no provider sees, comma-separated (``ChatJob.ignored_fields``)
    ignored: str | None = None
    traceparent: str | None = None  # the submitter's trace context: the worker's spans join its trace
    # JSON {"url", "include"}: the job's end is delivered there (``llm_router.webhooks``); b"" when
    # the job asked for none, so its tenant's default endpoint does not apply either
    webhook: bytes | None = None
    # a hedged interactive job: 0 hedges after the deployment's learned percentile, N after N ms
    hedge: int | None = None
    # the lane it asked for (``contract.Lane``); None: the tenant's default (``now`` for interactive jobs)
    lane: str | None = None
    # the channel of the server that waits for the job (``keys.notify_channel``): its end sends the
    # whole record there (``decode_ended``)
    notify: str | None = None

    def optional_fields(self) -> list[Any]:
        """Record fields only some jobs have, as field/value pairs for the submit script (strings)."""
        out: list[Any] = []
        if self.routed_by is not None:
            out += ("routed_by", self.routed_by)
        if self.cache_key is not None:  # a cache is per tenant
            out += ("cache_key", f"{self.tenant}:{self.cache_key}", "cache_ttl", str(self.cache_ttl))
        if self.parent is not None:
            out += ("parent", scoped_id(self.tenant, self.parent))
        if self.priority != "normal":  # the queue's scripts read it back when they requeue the job
            out += ("priority", self.priority)
        if self.queue is not None:
            out += ("queue", self.queue)
        if self.ignored is not None:
            out += ("ignored", self.ignored)
        if self.traceparent is not None:
            out += (TRACEPARENT_FIELD, self.traceparent)
        if self.webhook:
            out += ("webhook", self.webhook)
        if self.hedge is not None:
            out += ("hedge", str(self.hedge))
        if self.lane is not None and self.lane != "now":  # a record without a lane ran `now`
            out += ("lane", self.lane)
        if self.notify is not None:
            out += ("notify", self.notify)
        return out


class SubmitReply(IntEnum):
    """What the submit script did with one job."""

    CREATED = 1
    EXISTS = 0  # the same job (same body, same tenant) was there: nothing reserved again
    CONFLICT = -1  # another job has this id
    NO_CREDIT = -2  # the tenant's credit does not cover the reservation
    QUEUE_FULL = -3  # the tenant has its limit of jobs queued or running


_SUBMIT_REPLIES = {int(r): r for r in SubmitReply}  # a dict read: SubmitReply(code) costs ~0.5 µs a job


@dataclass(frozen=True, slots=True)
class Started:
    """What the start script read and decided for a job a worker is about to run."""

    previous_status: str  # queued, deferred, or running (its last run was cut short)
    request: bytes
    route: bytes
    deadline_at: float
    attempts: bytes
    runs: int
    passes: int
    previous_worker: str
    admissions: dict[str, Admission]  # deployment → what admission said, for the route
    redis_now_ms: int
    cached: bytes  # the cached answer ('' on a miss or without cache)
    parent: str | None
    cancel_requested: bool
    est_tokens: int
    lost_runs: int  # runs of this job that ended with their worker's death, counting the last one
    queue: str = ""  # the job's queue when it is not the bulk one (the interactive queue's name)
    # a hedged job: None not hedged, 0 after the learned percentile, else after this many ms
    hedge_ms: int | None = None
    # the admitted deployment's learned latency percentile (ms) and its sample count (hedged jobs)
    learned_ms: float = 0.0
    learned_samples: int = 0
    lane: str = ""  # the lane it asked for or was sent back to ('' is `now`; README "Lanes")
    tenant: str = ""
    traceparent: str = ""  # the caller's trace context ('' when none came)
    created_at: float | None = None
    first_started_at: float | None = None  # when its first run started (this one, if it is the first)

    @classmethod
    def decode(cls, pairs: list[Any]) -> Started | str | None:
        """The script's reply: ``None`` (no record), a status (the job already ended), or ``Started``."""
        if pairs is None:
            return None
        v = dict(zip(pairs[::2], pairs[1::2], strict=True))  # its names stay bytes: no decode each
        status = v[b"status"].decode()
        if len(v) == 1:
            return status
        learned = v.get(b"learned")
        at, at_first = v.get(b"created_at"), v.get(b"first_started_at")
        return cls(
            previous_status=status,
            request=v[b"request"],
            route=v[b"route"],
            deadline_at=float(v[b"deadline_at"]),
            attempts=v[b"attempts"] or b"",
            runs=int(v[b"runs"]),
            passes=int(v[b"passes"]),
            previous_worker=(v[b"previous_worker"] or b"").decode(),
            admissions=decode_admissions(v[b"admissions"]),
            redis_now_ms=int(v[b"redis_now_ms"]),
            cached=v[b"cached"] or b"",
            parent=v[b"parent"].decode() or None,
            cancel_requested=bool(v[b"cancel_requested"]),
            est_tokens=int(v[b"est_tokens"]),
            lost_runs=int(v[b"lost_runs"]),
            queue=(v.get(b"queue") or b"").decode(),
            hedge_ms=int(v[b"hedge"]) if v.get(b"hedge") else None,
            learned_ms=float(learned.split(b"|")[0]) if learned else 0.0,
            learned_samples=int(learned.split(b"|")[1]) if learned else 0,
            lane=(v.get(b"lane") or b"").decode(),
            tenant=(v.get(b"tenant") or b"").decode(),
            traceparent=(v.get(b"traceparent") or b"").decode(),
            created_at=float(at) if at else None,
            first_started_at=float(at_first) if at_first else None,
        )

    @classmethod
    def from_json(cls, v: dict[str, Any]) -> Started | str:
        """The same reply as a hand-off sends it (``record_lua.hand_job``): a JSON object of its
        name/value pairs, numbers as numbers, Lua's empty table an empty object. ``decode`` and this
        read one reply two ways; a test holds them to the same ``Started``."""
        status: str = v["status"]
        if len(v) == 1:
            return status
        learned = v.get("learned")
        at, at_first = v.get("created_at"), v.get("first_started_at")
        return cls(
            previous_status=status,
            request=v["request"].encode(),
            route=v["route"].encode(),
            deadline_at=float(v["deadline_at"]),
            attempts=(v["attempts"] or "").encode(),
            runs=int(v["runs"]),
            passes=int(v["passes"]),
            previous_worker=v["previous_worker"] or "",
            admissions=decode_admissions(v["admissions"] or []),
            redis_now_ms=int(v["redis_now_ms"]),
            cached=(v["cached"] or "").encode(),
            parent=v["parent"] or None,
            cancel_requested=bool(v["cancel_requested"]),
            est_tokens=int(v["est_tokens"]),
            lost_runs=int(v["lost_runs"]),
            queue=v.get("queue") or "",
            hedge_ms=int(v["hedge"]) if v.get("hedge") else None,
            learned_ms=float(learned.split("|")[0]) if learned else 0.0,
            learned_samples=int(learned.split("|")[1]) if learned else 0,
            lane=v.get("lane") or "",
            tenant=v.get("tenant") or "",
            traceparent=v.get("traceparent") or "",
            created_at=float(at) if at else None,
            first_started_at=float(at_first) if at_first else None,
        )


# what the start script replies: ``None`` (no record), the status of a job that already ended, or
# ``Started``
StartReply = Started | str | None


class NotStarted(Enum):
    """A job whose start script has not run yet (its claim did not start it)."""

    NOT_STARTED = 0


NOT_STARTED: Final = NotStarted.NOT_STARTED


@dataclass(frozen=True, slots=True)
class Admitted:
    """The admit script's reply: the admission, and the breakers the reports sent with it moved."""

    admission: Admission
    transitions: list[Transition]


class FinishReply(IntEnum):
    WRITTEN = 1
    ALREADY_ENDED = 0  # the job had ended: nothing written, nothing settled
    NO_RECORD = -2
    NOT_MEMBER = -3  # a provider batch's result for a job no longer in that batch (sent back to `now`)


@dataclass(frozen=True, slots=True)
class Finished:
    reply: FinishReply
    transitions: list[Transition]


class UnstartReply(IntEnum):
    PUT_BACK = 1  # queued again, its slots given back, due
    ENDED = 2  # it ended meanwhile: only its lease was removed
    LEFT_ALONE = 0  # its lease lapsed (another worker's now), or it is not running on this worker


class CancelReply(StrEnum):
    CANCELLED = "cancelled"  # a queued job, ended now
    ABORTING = "aborting"  # a running (or claimed) job: its worker ends it
    NOT_FOUND = "not_found"
    ALREADY_ENDED = "ended"
    PARENT = "parent"  # a compare job: its sides are cancelled, and it ends with the last of them


@dataclass(frozen=True, slots=True)
class Settlement:
    """What a job that ends pays and counts in its tenant's usage (once: see ``SETTLE_LUA``)."""

    cost_nanos: int
    model: str
    prompt_tokens: int
    completion_tokens: int

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "cost": self.cost_nanos,
                "model": self.model,
                "prompt": self.prompt_tokens,
                "completion": self.completion_tokens,
            }
        )


class Store:
    """Typed access to records; one instance per process, sharing the caller's Redis client.

    Every job id a ``Store`` method takes is scoped (``keys.scoped_id(tenant, job_id)``): a job lives
    inside its tenant. ``NewJob`` carries the two apart.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        queue_name: str,
        record_ttl_s: int,
        usage_ttl_s: int = 400 * 86400,
        stream_ttl_s: int = 3600,
    ) -> None:
        self.redis = redis
        self.queue_name = queue_name
        self.record_ttl_s = record_ttl_s
        self.usage_ttl_s = usage_ttl_s
        # a token stream outlives its last chunk, and the job's end, by this (the record keeps the answer)
        self.stream_ttl_s = stream_ttl_s
        self._submit = redis.register_script(SUBMIT_LUA)
        self._start = redis.register_script(START_LUA)
        self._finish = redis.register_script(FINISH_LUA)
        self._cancel = redis.register_script(CANCEL_LUA)
        self._delete_ended = redis.register_script(DELETE_ENDED_LUA)
        self._admit = redis.register_script(ADMIT_LUA)
        self._child_refused = redis.register_script(CHILD_REFUSED_LUA)
        self._unstart = redis.register_script(UNSTART_LUA)
        self.workers_key = workers_key(queue_name)
        # the worker's scripts (and arq's end-of-run bookkeeping, ``worker.claims``) share one pipeline
        self.pipe = AutoPipeline(redis)

    def submit_command(
        self, job: NewJob, queue_name: str | None = None, max_queued: int = 0
    ) -> tuple[Any, ...]:
        """One job's part of a submit script call (``submit_batch`` groups them): the queue and limit
        its group shares, its record key, then its arguments (``SUBMIT_LUA``'s per-job layout), each
        a string, as the script would have read them from its ARGV.

        ``max_queued`` refuses the job (-3) while its tenant has that many jobs queued or running.
        """
        job_id = scoped_id(job.tenant, job.job_id)
        optional = job.optional_fields()
        created_at, deadline_at = job.created_at, job.deadline_at
        return (
            queue_name or self.queue_name,
            max_queued,
            RECORD_PREFIX + job_id,
            job_id,
            job.digest,
            job.request,
            job.route_json,
            job.model_requested,
            job.tenant,
            repr(created_at),
            repr(deadline_at),
            str(job.est_tokens),
            str(job.reserve_nanos),
            job.priority,
            orjson.dumps(job.metadata) if job.metadata is not None else b"",
            # the record outlives the deadline by the record TTL: a worker always finds the job to
            # fail it with deadline_exceeded, however long the backlog, and the outcome stays readable
            str(self.record_ttl_s + math.floor(deadline_at - created_at) + 1),
            str(math.floor(created_at * 1000)),  # its place in its ready queue, as a job put back gets it
            str(len(optional)),
            *optional,
        )

    async def submit_batch(self, batch: list[tuple[Any, ...]]) -> list[SubmitReply]:
        """Run many submits (``submit_command``) in one round trip; one ``SubmitReply`` per job, in
        order.

        Jobs go ``SUBMIT_GROUP`` to a script call (consecutive jobs of one queue and limit), packed by
        hiredis and written on one pooled connection: redis-py's own pipeline spends more time packing
        than Redis spends running them, and a call per job costs Redis its per-call overhead and the
        client a reply per job. A call's job arguments travel as one msgpack array (the script
        unpacks it): packing them as ~16 arguments a job cost the producer ~5 µs a job, msgpack
        ~0.4, and Redis reads one argument instead of hundreds.
        """
        if not batch:
            return []
        calls: list[list[Any]] = []
        last_call: dict[Any, tuple[int, int]] = {}  # queue -> its last call, where its wake flag is
        start = 0
        while start < len(batch):
            queue, max_queued = batch[start][0], batch[start][1]
            end = start + 1
            while (
                end < len(batch)
                and end - start < SUBMIT_GROUP
                and batch[end][0] == queue
                and batch[end][1] == max_queued
            ):
                end += 1
            group = batch[start:end]
            args: list[Any] = ["EVALSHA", self._submit.sha, len(group)]
            args += [c[2] for c in group]
            last_call[queue] = (len(calls), len(args) + 2)
            args += (queue, max_queued, "")
            job_args: list[Any] = []
            for c in group:
                job_args += c[3:]
            # strings only (``submit_command``), bytes as msgpack's raw strings: Lua's cmsgpack
            # reads no bin type, and the script sees the strings its ARGV would have held
            args.append(msgpack.packb(job_args, use_bin_type=False))
            calls.append(args)
            start = end
        # the last call to each queue publishes the batch's one wake-up, when its calls made jobs due
        for call, at in last_call.values():
            calls[call][at] = "1"
        if pack_command is None:  # pragma: no cover - hiredis is a dependency
            async with self.redis.pipeline(transaction=False) as pipe:
                for command in calls:
                    pipe.execute_command(*command)
                replies = await pipe.execute()
            return [SubmitReply(int(r)) for reply in replies for r in reply]
        packed = b"".join([PING, *[pack_command(tuple(command)) for command in calls]])
        for _ in range(2):
            replies, missing_script = await self._send_raw(packed, len(calls))
            if not missing_script:
                out = [_SUBMIT_REPLIES[r] for reply in replies for r in reply]
                if len(out) != len(batch):
                    raise RuntimeError(f"the submit script answered {len(out)} codes for {len(batch)} jobs")
                return out
            await self.redis.script_load(SUBMIT_LUA)  # Redis restarted and lost its scripts
        raise RuntimeError("Redis keeps refusing the submit script")

    async def _send_raw(self, packed: bytes, count: int) -> tuple[list[Any], bool]:
        """Send a ``PING`` and ``count`` submit commands, packed, on a connection of the pool; read
        their replies. The ``PING``'s reply is dropped: it is there so that Redis writes the
        hand-off a submit publishes (a waiting worker's job) before these replies, not after
        (``AutoPipeline.send``'s ``publishes_first`` says why)."""
        pool = self.redis.connection_pool
        conn = await pool.get_connection()
        try:
            await conn.send_packed_command(packed, check_health=False)
            await conn.read_response()  # the PING's
            results: list[Any] = []
            missing_script = False
            for _ in range(count):  # read every reply, even after an error, to keep the stream in step
                try:
                    results.append(await conn.read_response())
                except NoScriptError:
                    missing_script = True
                    results.append(None)
            return results, missing_script
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)

    async def start(
        self,
        job_id: str,
        worker_id: str,
        now: float,
        routing_key: str = "",
        probe_lease_ms: int = 60_000,
        slot_lease_ms: int = 10_000,
    ) -> StartReply:
        """Mark the job running, read it, and admit its route's first deployment (one round trip).

        ``None`` when the record is gone, the status of a job that already ended, else ``Started``.
        An admitted job holds a slot of the deployment's concurrency limit for ``slot_lease_ms``
        (renewed while its call runs, ``LeaseWrites.renew_slots``).
        """
        reply = await self.pipe.eval(
            self._start,
            [record_key(job_id)],
            [now, worker_id, job_id, routing_key, probe_lease_ms, slot_lease_ms],
        )
        return Started.decode(reply)

    async def unstart(
        self, job_id: str, queue: str, worker_id: str, reports: Sequence[BreakerReport] = ()
    ) -> UnstartReply:
        """Put back a job started for ``worker_id`` that never ran (``record_lua.UNSTART_LUA``):
        queued again with its start undone, ``reports`` giving back the slots its start took."""
        reply = await self.pipe.eval(
            self._unstart, [record_key(job_id)], [queue, job_id, worker_id, *(r.encode() for r in reports)]
        )
        return UnstartReply(int(reply))

    async def admit(
        self,
        dep_id: str,
        rpm: int,
        tpm: int,
        probes: int,
        job_id: str,
        est_tokens: int,
        probe_lease_ms: int,
        *,
        concurrency: tuple[int, int] = (0, 0),
        slot_lease_ms: int = 10_000,
        reports: Sequence[BreakerReport] = (),
    ) -> Admitted:
        """Admission of one deployment reached after the ones before it failed, with the reports of
        the calls made since the last admission (``concurrency``: its limit's initial and max)."""
        initial, most = concurrency
        reply = await self._admit(
            args=[
                dep_id,
                rpm,
                tpm,
                probes,
                initial,
                most,
                job_id,
                est_tokens,
                probe_lease_ms,
                slot_lease_ms,
                *(r.encode() for r in reports),
            ]
        )
        return Admitted(decode_admission(reply[0], reply[1]), decode_transitions(reply[2:]))

    def finish(
        self,
        job_id: str,
        fields: dict[str, Any],
        reports: Sequence[BreakerReport] = (),
        *,
        settlement: Settlement | None = None,
        summary: bytes = b"",
        member_of: str | None = None,
        release: bool = False,
    ) -> Awaitable[Finished]:
        """Write a record change and the breaker reports of its calls.

        When the change ends the job, ``settlement`` is charged to its tenant and counted in the
        usage, once; ``summary`` goes to its compare parent. ``release``: the run is over, and the
        job leaves this store's queue (its lease; ``Claims.end_run`` with done, in the same step).

        The command is sent now, before the caller's next ``await``; the awaitable returned waits
        for its reply. A caller that waits in a task of its own (a shield) does not hold the write
        back a turn of the event loop.
        """
        argv: list[Any] = [
            self.record_ttl_s,
            job_id,
            2 * len(fields),
            settlement.encode() if settlement is not None else b"",
            self.usage_ttl_s,
            summary,
            self.stream_ttl_s,
            self.queue_name if release else "",
        ]
        for name, value in fields.items():
            argv.append(name)
            argv.append(encode_field(name, value))
        argv.extend(r.encode() for r in reports)
        keys = [record_key(job_id), stream_key(job_id)]
        if member_of is not None:  # lanes: written only while the job is a member of this batch hash
            keys.append(member_of)
        # the end it publishes wakes the server answering the job's caller: that message first
        return _finished(self.pipe.eval_soon(self._finish, keys, argv, publishes_first=True))

    async def create_parent(
        self,
        parent_id: str,
        *,
        request: bytes,
        route: list[str],
        model_requested: str,
        tenant: str,
        created_at: float,
        deadline_at: float,
        pending: int,
    ) -> bool:
        """A compare job: no queue entry of its own; it ends when its last child does (``job_ended``
        in the scripts writes each child's summary into it). ``False`` if the id is taken."""
        key = record_key(parent_id)
        fields: dict[str, Any] = {
            "status": "running",
            "request": request,
            "route": orjson.dumps(route),
            "model_requested": model_requested,
            "tenant": tenant,
            "created_at": created_at,
            "started_at": created_at,
            "deadline_at": deadline_at,
            "attempts": b"[]",
            "pending": pending,
        }
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key, "digest", body_digest(request))
            pipe.hset(key, mapping=fields)
            pipe.expire(key, self.record_ttl_s + int(deadline_at - created_at) + 1)
            created, *_ = await pipe.execute()
        return bool(created)

    async def child_refused(self, parent_id: str, child_id: str, summary: dict[str, Any]) -> None:
        """A side of a compare job refused at submit: it counts as ended, with its error."""
        await self.pipe.eval(
            self._child_refused, [record_key(parent_id)], [child_id, orjson.dumps(summary), parent_id]
        )

    async def publish(self, job_id: str, chunks: Sequence[bytes], *, maxlen: int) -> None:
        """Append chunks (JSON) to the job's stream in one round trip, capped, expiring ``stream_ttl_s``
        after the last chunk."""
        key = stream_key(job_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            for chunk in chunks:
                pipe.xadd(key, {"c": chunk}, maxlen=maxlen, approximate=True)
            pipe.expire(key, self.stream_ttl_s)
            await pipe.execute()

    async def drop_stream(self, job_id: str) -> None:
        """Forget what the job's stream carried: its answer starts over (nobody was following it)."""
        await self.redis.delete(stream_key(job_id))

    async def publish_error(self, job_id: str, error: dict[str, Any]) -> None:
        """The stream's error event: tokens were published, then the upstream stream broke."""
        await self.redis.xadd(stream_key(job_id), {"error": orjson.dumps(error)})

    async def read_stream(
        self, job_id: str, after: str, *, block_ms: int, count: int = 500
    ) -> list[tuple[str, dict[bytes, bytes]]]:
        """Entries after ``after`` (``"0-0"`` from the start), waiting up to ``block_ms`` for new ones
        (0: not at all; Redis' own BLOCK 0 would wait forever)."""
        res = await self.redis.xread({stream_key(job_id): after}, block=block_ms or None, count=count)
        if not res:
            return []
        return [(entry_id.decode(), fields) for entry_id, fields in res[0][1]]

    async def cancel(self, job_id: str, error: dict[str, Any]) -> tuple[CancelReply, str | None]:
        """Cancel a job: (what happened, the status of a job that had already ended)."""
        args = [self.queue_name, job_id, time.time(), orjson.dumps(error), self.usage_ttl_s]
        res = await self.pipe.eval(self._cancel, [record_key(job_id)], args)
        if res == 1:
            return CancelReply.CANCELLED, None
        if res == -2:
            return CancelReply.NOT_FOUND, None
        status = res.decode()
        if status == "aborting":
            return CancelReply.ABORTING, None
        if status == "parent":
            return CancelReply.PARENT, None
        return CancelReply.ALREADY_ENDED, status

    async def delete_ended(self, job_id: str) -> str | None:
        """Delete an ended job (its record, request and stream): ``None`` when deleted, else why not:
        ``"not_found"``, or the status of a job that has not ended."""
        keys = [record_key(job_id), request_key(job_id), stream_key(job_id)]
        res = await self._delete_ended(keys, [])
        if res == 1:
            return None
        return "not_found" if res == -2 else res.decode()

    async def get(self, job_id: str) -> JobRecord | None:
        return (await self.get_many([job_id]))[0]

    async def get_many(self, job_ids: list[str]) -> list[JobRecord | None]:
        """Records with their requests (``keys.request_key``), read in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(record_key(job_id))
                pipe.get(request_key(job_id))
            raws = await pipe.execute()
        return [
            decode_record(j, raws[2 * i], raws[2 * i + 1]) if raws[2 * i] else None
            for i, j in enumerate(job_ids)
        ]

    async def statuses(self, job_ids: list[str]) -> list[str | None]:
        """Only the status of many jobs: what waiting needs, without fetching bodies."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(record_key(job_id), "status")
            raws = await pipe.execute()
        return [r.decode() if r else None for r in raws]

    async def queued(self, queue_name: str | None = None) -> int:
        """Jobs waiting on a queue (due or deferred, not held): a tenant's ready queues summed over
        the tenants with due work, plus the delayed set. Costs a read per active tenant."""
        q = queue_name or self.queue_name
        async with self.redis.pipeline(transaction=False) as pipe:
            for band in PRIORITIES:
                pipe.zrange(active_tenants_key(q, band), 0, -1)
            pipe.zcard(delayed_key(q))
            *tenants, delayed = await pipe.execute()
        async with self.redis.pipeline(transaction=False) as pipe:
            for band, names in zip(PRIORITIES, tenants, strict=True):
                for tenant in names:
                    pipe.zcard(ready_key(q, band, tenant.decode()))
            counts = await pipe.execute()
        return int(sum(counts)) + int(delayed)

    async def live_workers(self, ttl_s: float) -> int:
        return int(await self.redis.zcount(self.workers_key, time.time() - ttl_s, "+inf"))


class LeaseWrites:
    """The record and heartbeat writes of a worker's lease keeper, a thread with a synchronous Redis
    pipeline of its own (it must keep beating while the event loop is busy): the keys and fields are
    the store's, whoever sends them."""

    def __init__(self, queue_name: str, worker_id: str) -> None:
        self.leases_key = leases_key(queue_name)
        self.workers_key = workers_key(queue_name)
        self.worker_id = worker_id
        self.info_key = worker_info_key(worker_id)

    def renew(self, pipe: Any, job_ids: list[str], lease_ms: int) -> None:
        """Every held job's lease runs ``lease_ms`` from now (one command; a job no longer held,
        ended or taken back after a lapse, is left alone)."""
        if job_ids:
            until = int(time.time() * 1000) + lease_ms
            pipe.zadd(self.leases_key, dict.fromkeys(job_ids, until), xx=True)

    def renew_slots(self, pipe: Any, slots: dict[str, list[str]], lease_ms: int) -> None:
        """The concurrency slots of the calls this worker runs (deployment → job ids) last
        ``lease_ms`` from now (one command per deployment; a slot given back meanwhile stays gone)."""
        if slots:
            until = int(time.time() * 1000) + lease_ms
            for dep, job_ids in slots.items():
                pipe.zadd(slots_key(dep), dict.fromkeys(job_ids, until), xx=True)

    def inflight(self, pipe: Any, job_id: str, call: dict[str, Any]) -> None:
        """The call a job is making, so a run cut short still shows that attempt."""
        pipe.hset(record_key(job_id), "inflight", orjson.dumps(call))

    def heartbeat(self, pipe: Any, now: float, info: bytes, ttl_ms: int) -> None:
        """This worker is live on its queue (producers count live workers from these)."""
        pipe.zadd(self.workers_key, {self.worker_id: now})
        pipe.zremrangebyscore(self.workers_key, "-inf", now - 3600)
        pipe.set(self.info_key, info, px=ttl_ms)

    def gone(self, pipe: Any) -> None:
        """This worker stopped: off the live list at once."""
        pipe.zrem(self.workers_key, self.worker_id)
        pipe.delete(self.info_key)


def encode_field(name: str, value: Any) -> bytes | str | int | float:
    if isinstance(value, bytes):  # already JSON-encoded by the caller
        return value
    if name in JSON_FIELDS:
        return orjson.dumps(value)
    if isinstance(value, JobStatus):
        return value.value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (bytes, str, int, float)):
        return value
    return orjson.dumps(value)


def decode_record(scoped: str, raw: dict[bytes, bytes], request: bytes | None = None) -> JobRecord:
    """A record as users see it; ``request`` is the job's request key (a record written before it
    had one, or a compare parent, keeps its request in a field)."""
    data: dict[str, Any] = {"id": split_scoped(scoped)[1]}
    if request is not None:
        data["request"] = orjson.loads(request)
    children: list[Any] = []
    credits_nanos: int | None = None
    for k, v in raw.items():
        name = k.decode()
        if name in JSON_FIELDS:
            data[name] = orjson.loads(v)
        elif name in FLOAT_FIELDS:
            data[name] = float(v)
        elif name in ("runs", "passes", "lost_runs"):
            data[name] = int(v)
        elif name == "cached":
            data[name] = v == b"1"
        elif name == "credits_remaining":
            credits_nanos = int(v)
        elif name.startswith("child:"):
            children.append(orjson.loads(v))
        elif name in _INTERNAL_FIELDS:
            continue
        elif name == "parent":
            data[name] = split_scoped(v.decode())[1]
        else:
            data[name] = v.decode()
    if credits_nanos is not None:
        usage = data.get("usage") or {}
        data["usage"] = {**usage, "credits_remaining": nanos_to_usd(credits_nanos)}
    if children or "pending" in raw or b"pending" in raw:
        order = {m: i for i, m in enumerate(data.get("route") or ())}
        children.sort(key=lambda c: order.get(c.get("model"), len(order)))
        data["comparison"] = children
    return JobRecord.model_validate(data)


def decode_ended(message: bytes) -> tuple[str, list[bytes]]:
    """A job's end as the server waiting for it hears it on its own channel (``job_ended`` in
    ``llm_router.ledger_lua``): its scoped id, and what ``decode_ended_record`` makes its record of."""
    fields = msgpack.unpackb(message, raw=True)
    return fields[-1].decode(), fields


def ended_field(fields: list[bytes], name: bytes) -> bytes | None:
    """One raw field of an ended message (``decode_ended``), without decoding the record."""
    for i in range(0, len(fields) - 2, 2):
        if fields[i] == name:
            return fields[i + 1]
    return None


def decode_ended_record(scoped: str, fields: list[bytes]) -> JobRecord:
    """The record of an ended message (``decode_ended``), exactly as ``Store.get`` reads it."""
    raw = dict(zip(fields[0:-2:2], fields[1:-2:2], strict=True))
    return decode_record(scoped, raw, fields[-2] or None)


# record fields the workers and scripts use that are not part of the record's public shape
_INTERNAL_FIELDS = frozenset(
    {
        "digest",
        "worker",
        "inflight",
        "metered",
        "reserved",
        "cache_key",
        "cache_ttl",
        "no_cache",
        "queue",
        "cancel_requested",
        "pending",
        "hedge",
        "notify",
    }
)


async def _finished(reply: Awaitable[Any]) -> Finished:
    res = await reply
    return Finished(FinishReply(int(res[0])), decode_transitions(res[1:]))
