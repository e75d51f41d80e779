"""Job records: submit, start, finish, cancel, read, token streams and compare parents.

A job's record is a Redis hash at ``keys.record_key(id)``; JSON-valued fields are orjson bytes. Each
state change is one Lua script of ``llm_router.record_lua`` (atomic, one round trip): ``submit``
creates the record and writes arq's job in the same step (SET-NX semantics on the record make it the
idempotency key), ``start`` marks a job running and returns its request, ``finish`` writes the
outcome unless the job already ended, ``cancel`` takes a queued job off arq's queue. Scripts run on
Redis' own clock-free inputs: times are passed in by the caller.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from arq.constants import in_progress_key_prefix, job_key_prefix
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

try:
    from hiredis import pack_command
except ImportError:  # pragma: no cover - hiredis is a dependency
    pack_command = None

from config.cost import nanos_to_usd
from llm_router.autopipe import AutoPipeline
from llm_router.contract import JobRecord, JobStatus
from llm_router.keys import RECORD_PREFIX, RUN_JOB, record_key, stream_key, workers_key
from llm_router.record_lua import (
    ADMIT_LUA,
    CANCEL_LUA,
    CHILD_REFUSED_LUA,
    FINISH_LUA,
    START_LUA,
    SUBMIT_LUA,
)

JSON_FIELDS = ("request", "route", "attempts", "response", "usage", "error", "metadata")
FLOAT_FIELDS = ("created_at", "deadline_at", "started_at", "finished_at")


def body_digest(body: bytes) -> str:
    return hashlib.blake2b(body, digest_size=16).hexdigest()


# arq_job_payload's bytes, by formatting: job ids are restricted to characters JSON needs no escape for
_ARQ_JOB = b'{"t":null,"f":"' + RUN_JOB.encode() + b'","a":["%s"],"k":{},"et":%d}'


def arq_job_payload(job_id: str, enqueue_ms: int) -> bytes:
    """arq's own job format (what ``enqueue_job`` writes), JSON instead of pickle."""
    return orjson.dumps({"t": None, "f": RUN_JOB, "a": [job_id], "k": {}, "et": enqueue_ms})


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
    prompt_tokens: int = 0  # estimated (producer.estimate)
    # optional record fields: routed_by, cache_key/cache_ttl, parent, notify
    extra: list[Any] | None = None


class Store:
    """Typed access to records; one instance per process, sharing the caller's Redis client."""

    def __init__(
        self, redis: Redis, *, queue_name: str, record_ttl_s: int, usage_ttl_s: int = 400 * 86400
    ) -> None:
        self.redis = redis
        self.queue_name = queue_name
        self.record_ttl_s = record_ttl_s
        self.usage_ttl_s = usage_ttl_s
        self._submit = redis.register_script(SUBMIT_LUA)
        self._start = redis.register_script(START_LUA)
        self._finish = redis.register_script(FINISH_LUA)
        self._cancel = redis.register_script(CANCEL_LUA)
        self._admit = redis.register_script(ADMIT_LUA)
        self._child_refused = redis.register_script(CHILD_REFUSED_LUA)
        self.workers_key = workers_key(queue_name)
        # the worker's scripts (and arq's end-of-run bookkeeping, ``worker.claims``) share one pipeline
        self.pipe = AutoPipeline(redis)

    def submit_command(
        self, job: NewJob, queue_name: str | None = None, max_queued: int = 0
    ) -> tuple[Any, ...]:
        """The EVALSHA of one submit; many of them in one write make bulk enqueue a round trip a chunk.

        ``max_queued`` refuses the job (-3) while its tenant has that many jobs queued or running.
        """
        enqueue_ms = int(job.created_at * 1000)
        job_id = job.job_id
        # record and arq job outlive the deadline by the record TTL: a worker always finds the job
        # to fail it with deadline_exceeded, however long the backlog, and the outcome stays readable
        ttl_s = self.record_ttl_s + int(job.deadline_at - job.created_at) + 1
        return (
            "EVALSHA",
            self._submit.sha,
            3,
            RECORD_PREFIX + job_id,
            job_key_prefix + job_id,
            queue_name or self.queue_name,
            job.digest,
            ttl_s,
            _ARQ_JOB % (job_id.encode(), enqueue_ms),
            enqueue_ms,
            ttl_s * 1000,
            job_id,
            job.request,
            job.route_json,
            job.model_requested,
            job.tenant,
            job.created_at,
            job.deadline_at,
            orjson.dumps(job.metadata) if job.metadata is not None else b"",
            job.reserve_nanos,
            max_queued,
            *(job.extra or ()),
        )

    async def submit_batch(self, batch: list[tuple[Any, ...]]) -> list[int]:
        """Run many submits in one round trip; each result is 1 (created), 0 (same body) or -1 (conflict).

        The commands are packed by hiredis and written on one pooled connection: redis-py's own
        pipeline spends more time packing a thousand 30-argument commands than Redis spends running
        them.
        """
        if not batch:
            return []
        if pack_command is None:  # pragma: no cover - hiredis is a dependency
            async with self.redis.pipeline(transaction=False) as pipe:
                for command in batch:
                    pipe.execute_command(*command)
                return [int(r) for r in await pipe.execute()]
        packed = b"".join([pack_command(command) for command in batch])
        for _ in range(2):
            results, missing_script = await self._send_raw(packed, len(batch))
            if not missing_script:
                return results
            await self.redis.script_load(SUBMIT_LUA)  # Redis restarted and lost its scripts
        raise RuntimeError("Redis keeps refusing the submit script")

    async def _send_raw(self, packed: bytes, count: int) -> tuple[list[int], bool]:
        pool = self.redis.connection_pool
        conn = await pool.get_connection()
        try:
            await conn.send_packed_command(packed, check_health=False)
            results: list[int] = []
            missing_script = False
            for _ in range(count):  # read every reply, even after an error, to keep the stream in step
                try:
                    results.append(int(await conn.read_response()))
                except NoScriptError:
                    missing_script = True
                    results.append(0)
            return results, missing_script
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)

    async def start(
        self, job_id: str, worker_id: str, now: float, routing_key: str = "", probe_lease_ms: int = 60_000
    ) -> list[Any] | None:
        """Mark the job running, read it, and admit its route's first deployment (one round trip)."""
        return await self.pipe.eval(
            self._start, [record_key(job_id)], [now, worker_id, job_id, routing_key, probe_lease_ms]
        )

    async def admit(
        self, dep_id: str, rpm: int, tpm: int, probes: int, job_id: str, est_tokens: int, probe_lease_ms: int
    ) -> str:
        res = await self._admit(args=[dep_id, rpm, tpm, probes, job_id, est_tokens, probe_lease_ms])
        return res.decode() if isinstance(res, bytes) else str(res)

    async def finish(
        self,
        job_id: str,
        fields: dict[str, Any],
        outcomes: Sequence[str] = (),
        *,
        settle: str = "",
        summary: bytes = b"",
    ) -> tuple[int, list[str]]:
        """Write a record change and the breaker outcomes of its calls; returns (code, transitions).

        When the change ends the job, ``settle`` (``cost nanos|model|prompt|completion``) is charged
        to its tenant and counted in the usage, once; ``summary`` goes to its compare parent.
        """
        argv: list[Any] = [self.record_ttl_s, job_id, 2 * len(fields), settle, self.usage_ttl_s, summary]
        for name, value in fields.items():
            argv.append(name)
            argv.append(encode_field(name, value))
        argv.extend(outcomes)
        res = await self.pipe.eval(self._finish, [record_key(job_id), stream_key(job_id)], argv)
        return int(res[0]), [t.decode() if isinstance(t, bytes) else str(t) for t in res[1:]]

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
        notify: bool = False,
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
        if notify:
            fields["notify"] = 1
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
        """Append chunks (JSON) to the job's stream in one round trip, capped and expiring with the record."""
        key = stream_key(job_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            for chunk in chunks:
                pipe.xadd(key, {"c": chunk}, maxlen=maxlen, approximate=True)
            pipe.expire(key, self.record_ttl_s)
            await pipe.execute()

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

    async def cancel(self, job_id: str, error: dict[str, Any]) -> int | str:
        keys = [record_key(job_id), job_key_prefix + job_id, self.queue_name, in_progress_key_prefix + job_id]
        res = await self.pipe.eval(
            self._cancel, keys, [job_id, time.time(), orjson.dumps(error), self.usage_ttl_s]
        )
        return res.decode() if isinstance(res, bytes) else int(res)

    async def get(self, job_id: str) -> JobRecord | None:
        raw = await self.redis.hgetall(record_key(job_id))
        return decode_record(job_id, raw) if raw else None

    async def get_many(self, job_ids: list[str]) -> list[JobRecord | None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(record_key(job_id))
            raws = await pipe.execute()
        return [decode_record(j, r) if r else None for j, r in zip(job_ids, raws, strict=True)]

    async def statuses(self, job_ids: list[str]) -> list[str | None]:
        """Only the status of many jobs: what waiting needs, without fetching bodies."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(record_key(job_id), "status")
            raws = await pipe.execute()
        return [r.decode() if r else None for r in raws]

    async def live_workers(self, ttl_s: float) -> int:
        return int(await self.redis.zcount(self.workers_key, time.time() - ttl_s, "+inf"))


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


def decode_record(job_id: str, raw: dict[bytes, bytes]) -> JobRecord:
    data: dict[str, Any] = {"id": job_id}
    children: list[Any] = []
    credits_nanos: int | None = None
    for k, v in raw.items():
        name = k.decode()
        if name in JSON_FIELDS:
            data[name] = orjson.loads(v)
        elif name in FLOAT_FIELDS:
            data[name] = float(v)
        elif name in ("runs", "passes"):
            data[name] = int(v)
        elif name == "cached":
            data[name] = v == b"1"
        elif name == "credits_remaining":
            credits_nanos = int(v)
        elif name.startswith("child:"):
            children.append(orjson.loads(v))
        elif name in _INTERNAL_FIELDS:
            continue
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


# record fields the workers and scripts use that are not part of the record's public shape
_INTERNAL_FIELDS = frozenset(
    {
        "digest",
        "worker",
        "inflight",
        "metered",
        "reserved",
        "notify",
        "cache_key",
        "cache_ttl",
        "no_cache",
        "queue",
        "cancel_requested",
        "pending",
    }
)
