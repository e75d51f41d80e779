"""Running OpenAI batches as jobs: the batch state in Redis, enqueuing lines, tracking, finalizing.

Unlike OpenAI's batches, ours run on any provider of the catalog with fallback, and every line is a
job of its own (``GET /v1/jobs/{batch_id}-{line index}`` shows its record, attempts, lane and cost).

Lines run on the lanes (README "Lanes"): each is a job of lane ``auto`` (``WINDOW_LANES``) whose
deadline is the window's end, so the workers hand it to the batcher, which runs it in a provider
batch at that provider's batch price (about half) and sends it back to `now`, with its fallback
chain, when its provider batch is late for the deadline. The reservation is the `now` price; the
settlement, once, the lane's. A tenant whose ``default_lane`` is set gets that lane instead, and a
line that names a lane (or a service tier) keeps its own (``batch_lines``). Cancel (and expiry)
ends the lines still parked for, or inside, a provider batch and takes them out of it (the core's
cancel script); the provider batch, once it has no member left, is cancelled by the batcher.

State lives in Redis only, so any server process can pick a batch up after another one died:

- ``llm-router:batch:<id>``: a hash with the batch object's fields; its status changes only through
  ``UPDATE_LUA``, a compare-and-set on the status, so two servers never both move it on.
- ``llm-router:batch:<id>:work``: the enqueued lines (``[index, custom_id]`` pairs) and the refused
  ones, written once enqueuing is over (``done``).
- ``llm-router:role:batch:<id>``: a lease (``llm_router.roles``) held while enqueuing or finalizing a batch.
- ``llm-router:batches:active:<queue>``: ids of batches not yet ended, which the trackers walk. A
  batch belongs to the bulk queue its jobs went to; only servers on that queue advance it, since
  cancelling a job takes it off its queue.

Lifecycle: ``validating`` (lines parsed and enqueued in chunks through ``submit_many``) →
``in_progress`` → ``finalizing`` (output and error files written) → ``completed``; ``failed`` when no
line is usable; ``cancelling`` → ``cancelled``; ``expired`` when the completion window ends first.
Each server's tracker advances every active batch about twice a second with one pipelined status
read of its unfinished jobs; reading a batch advances it too, so progress never waits for a tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from redis.asyncio import Redis

from llm_router.errors import IdempotencyConflict, InvalidRequest, ResourceNotFound, RouterError
from llm_router.keys import (
    WEBHOOKS_DUE_KEY,
    active_batches_key,
    batch_key,
    batch_work_key,
    scoped_id,
    tenant_batches_key,
)
from llm_router.roles import RoleLease
from llm_router.webhooks.events import batch_body
from producer.http.batch_lines import (
    UsageSum,
    batch_error,
    batch_errors,
    job_for,
    job_id_for,
    parse_lines,
    record_line,
    refusal,
    refused_line,
)
from producer.http.files import FileStore, dumps_lines
from producer.producer import Producer

log = structlog.get_logger("producer.http.batches")

BATCH_ID = re.compile(r"batch_[0-9a-f]{32}")

ENDPOINTS = frozenset({"/v1/chat/completions"})
COMPLETION_WINDOWS = {"24h": 24 * 3600}
# the lane of a window's lines that name none (``batch_lines``): a window this long leaves room for a
# provider batch, so ``auto`` takes one whenever its expected turnaround fits before the window's end
WINDOW_LANES = {"24h": "auto"}
ENDED = frozenset({"completed", "failed", "cancelled", "expired"})
MAX_LINES = 50_000  # OpenAI's limit per batch
SUBMIT_CHUNK = 2000  # lines per submit_many call; the lease is renewed and cancel checked between them
READ_CHUNK = 1000  # records read per pipeline when finalizing
LOCK_MS = 30_000
CANCEL_CONCURRENCY = 64
CANCEL_RESEND_S = 2.0  # running jobs of a cancelling batch are asked again this often
CANCEL_GRACE_S = 120.0  # a cancelling batch ends this long after the cancel, finished or not
# while none of a batch's lines ends (they may wait hours in provider batches), the tracker reads their
# statuses less and less often: from every tick up to one read per pending/TRACK_READS_PER_S seconds
# (between the two bounds); a reader (``GET /v1/batches/{id}``) always reads them
TRACK_IDLE_MIN_S = 0.5
TRACK_IDLE_MAX_S = 30.0
TRACK_READS_PER_S = 2000
INT_FIELDS = frozenset(
    {"created_at", "expires_at", "in_progress_at", "finalizing_at", "completed_at", "failed_at"}
    | {"expired_at", "cancelling_at", "cancelled_at", "total", "completed", "failed", "refused"}
)
JSON_FIELDS = frozenset({"errors", "metadata", "usage", "webhook"})


def derived_file_id(batch_id: str, kind: str) -> str:
    """The batch's output or error file id: the same on every finalization, so a retry overwrites."""
    return "file-" + hashlib.blake2b(f"{batch_id}:{kind}".encode(), digest_size=12).hexdigest()


# KEYS: batch, tenant index, active set.  ARGV: ttl s, score, batch id, field/value pairs.
CREATE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[3])
return 1
"""

# KEYS: batch, active set, work, webhook due set.  ARGV: allowed statuses (comma-separated), ttl s
# ('' unless the batch ends here), batch id, field/value pairs.  Writes only while the status is an
# allowed one: returns 1, the status found, or -1 for no batch.  A batch with a webhook that ends
# here is due for delivery in the same step (``llm_router.webhooks.outbox``).
UPDATE_LUA = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return -1 end
for s in string.gmatch(ARGV[1], '[^,]+') do
  if s == st then
    if #ARGV > 3 then redis.call('HSET', KEYS[1], unpack(ARGV, 4)) end
    if ARGV[2] ~= '' then
      redis.call('SREM', KEYS[2], ARGV[3])
      redis.call('EXPIRE', KEYS[1], ARGV[2])
      redis.call('EXPIRE', KEYS[3], ARGV[2])
      if redis.call('HEXISTS', KEYS[1], 'webhook') == 1 then
        local t = redis.call('TIME')
        local now = string.format('%d', t[1] * 1000 + math.floor(t[2] / 1000))
        redis.call('ZADD', KEYS[4], 'NX', now, 'b|' .. ARGV[3])
      end
    end
    return 1
  end
end
return st
"""


def batch_object(batch: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's ``batch`` object from the stored fields."""
    return {
        "id": batch["id"],
        "object": "batch",
        "endpoint": batch["endpoint"],
        "errors": batch.get("errors"),
        "input_file_id": batch["input_file_id"],
        "completion_window": batch["completion_window"],
        "status": batch["status"],
        "output_file_id": batch.get("output_file_id"),
        "error_file_id": batch.get("error_file_id"),
        "created_at": batch["created_at"],
        "in_progress_at": batch.get("in_progress_at"),
        "expires_at": batch.get("expires_at"),
        "finalizing_at": batch.get("finalizing_at"),
        "completed_at": batch.get("completed_at"),
        "failed_at": batch.get("failed_at"),
        "expired_at": batch.get("expired_at"),
        "cancelling_at": batch.get("cancelling_at"),
        "cancelled_at": batch.get("cancelled_at"),
        "request_counts": {
            "total": batch.get("total", 0),
            "completed": batch.get("completed", 0),
            "failed": batch.get("failed", 0),
        },
        "metadata": batch.get("metadata"),
        "usage": batch.get("usage"),
    }


def decode_batch(raw: dict[bytes, bytes]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in raw.items():
        name = k.decode()
        if name in INT_FIELDS:
            out[name] = int(v)
        elif name in JSON_FIELDS:
            out[name] = orjson.loads(v)
        else:
            out[name] = v.decode()
    return out


def _encode(fields: dict[str, Any]) -> list[Any]:
    flat: list[Any] = []
    for k, v in fields.items():
        flat.append(k)
        flat.append(orjson.dumps(v) if k in JSON_FIELDS else v)
    return flat


@dataclass(slots=True)
class _Progress:
    """What this process knows of a batch's jobs: finished ones never change, so only the rest are read."""

    pending: list[list[Any]]  # [index, custom_id] of jobs not seen ended
    completed: int = 0
    failed: int = 0
    cancels_sent_at: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    idle_s: float = 0.0  # the tracker's wait between reads while nothing ends (``_read_progress``)
    read_after: float = 0.0  # monotonic

    def slow_down(self, changed: bool) -> None:
        if changed:
            self.idle_s = 0.0
        else:  # lines waiting hours in provider batches: read a large batch less often
            most = min(TRACK_IDLE_MAX_S, max(TRACK_IDLE_MIN_S, len(self.pending) / TRACK_READS_PER_S))
            self.idle_s = min(most, max(TRACK_IDLE_MIN_S, self.idle_s * 2))
        self.read_after = time.monotonic() + self.idle_s


class BatchRunner:
    """Creates, reads, enqueues and finalizes batches; one per server process."""

    def __init__(self, redis: Redis, producer: Producer, files: FileStore, *, ttl_s: int) -> None:
        self.redis = redis
        self.producer = producer
        self.files = files
        self.ttl_s = ttl_s
        self.queue = producer.settings.queue_name
        self.active_key = active_batches_key(self.queue)
        self._create = redis.register_script(CREATE_LUA)
        self._update = redis.register_script(UPDATE_LUA)
        self._progress: dict[str, _Progress] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    # -- state ----------------------------------------------------------------------------------

    async def create(self, batch_id: str, tenant: str, fields: dict[str, Any]) -> bool:
        """Create the batch (status ``validating``) unless ``batch_id`` exists; True if created."""
        window = fields["expires_at"] - fields["created_at"]
        fields = {**fields, "queue": self.queue}
        created = await self._create(
            keys=[batch_key(batch_id), tenant_batches_key(tenant), self.active_key],
            args=[self.ttl_s + window, fields["created_at"], batch_id, *_encode(fields)],
        )
        return bool(created)

    async def load(self, batch_id: str) -> dict[str, Any] | None:
        raw = await self.redis.hgetall(batch_key(batch_id))
        return decode_batch(raw) if raw else None

    async def owned(self, tenant: str, batch_id: str) -> dict[str, Any]:
        """The batch if ``tenant`` owns it; else ``ResourceNotFound`` (an unknown id looks the same)."""
        if not BATCH_ID.fullmatch(batch_id):  # never a lock or work key named by a crafted id
            raise ResourceNotFound(f"No batch found with id '{batch_id}'", param="batch_id")
        batch = await self.load(batch_id)
        if batch is None or batch.get("tenant") != tenant:
            raise ResourceNotFound(f"No batch found with id '{batch_id}'", param="batch_id")
        return batch

    async def update(
        self, batch_id: str, allowed: Sequence[str], fields: dict[str, Any], *, ends: bool = False
    ) -> int | str:
        """Write ``fields`` if the status is one of ``allowed``; 1, else the status found (-1: none)."""
        res = await self._update(
            keys=[batch_key(batch_id), self.active_key, batch_work_key(batch_id), WEBHOOKS_DUE_KEY],
            args=[",".join(allowed), self.ttl_s if ends else "", batch_id, *_encode(fields)],
        )
        return res.decode() if isinstance(res, bytes) else int(res)

    async def list(self, tenant: str, *, limit: int, after: str | None) -> tuple[list[dict[str, Any]], bool]:
        """A page of ``tenant``'s batches, newest first, after the batch id ``after``."""
        key = tenant_batches_key(tenant)
        start = 0
        if after is not None:
            rank = await self.redis.zrevrank(key, after)
            if rank is None:
                raise InvalidRequest(f"no batch '{after}' to list after", param="after")
            start = rank + 1
        out: list[dict[str, Any]] = []
        while len(out) <= limit:
            ids = [i.decode() for i in await self.redis.zrevrange(key, start, start + limit)]
            if not ids:
                break
            start += len(ids)
            async with self.redis.pipeline(transaction=False) as pipe:
                for batch_id in ids:
                    pipe.hgetall(batch_key(batch_id))
                raws = await pipe.execute()
            gone = [i for i, raw in zip(ids, raws, strict=True) if not raw]
            if gone:  # expired batches leave their index entry behind
                await self.redis.zrem(key, *gone)
                start -= len(gone)
            out.extend(decode_batch(raw) for raw in raws if raw)
        return out[:limit], len(out) > limit

    async def _lock(self, batch_id: str) -> RoleLease | None:
        """The batch's lease, if no other server (or task) holds it."""
        lease = RoleLease(self.redis, f"batch:{batch_id}", ttl_s=LOCK_MS / 1000)
        return lease if await lease.acquire() else None

    # -- background work ------------------------------------------------------------------------

    def spawn(self, batch_id: str, what: str = "ingest") -> None:
        """Run ``ingest`` or ``advance`` for the batch in the background (one task per batch)."""
        task = self._tasks.get(batch_id)
        if task is not None and not task.done():
            return
        coro = self.ingest(batch_id) if what == "ingest" else self._advance_quietly(batch_id)
        task = self._tasks[batch_id] = asyncio.create_task(coro)
        task.add_done_callback(lambda done: self._forget(batch_id, done))

    def _forget(self, batch_id: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(batch_id) is task:
            del self._tasks[batch_id]

    async def _advance_quietly(self, batch_id: str) -> None:
        try:
            await self.advance(batch_id)
        except Exception:
            log.exception("advancing a batch failed", batch_id=batch_id)

    async def close(self) -> None:
        """Stop background work; each task's lease is released, so another server takes over at once."""
        tasks = [t for t in self._tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def tick(self) -> None:
        """Advance every active batch once (the tracker's step; safe on any number of servers)."""
        ids = sorted(i.decode() for i in await self.redis.smembers(self.active_key))
        for batch_id in ids:
            try:
                await self.advance(batch_id, from_tracker=True)
            except Exception:
                log.exception("advancing a batch failed", batch_id=batch_id)
        for gone in set(self._progress) - set(ids):
            del self._progress[gone]

    # -- enqueuing ------------------------------------------------------------------------------

    async def ingest(self, batch_id: str) -> None:
        """Parse the input file and enqueue its valid lines as jobs, under the batch's lease.

        Safe to run again after a crash: jobs have ids derived from the batch, so those already
        enqueued are found, not made twice.
        """
        lease = await self._lock(batch_id)
        if lease is None:
            return
        try:
            batch = await self.load(batch_id)
            if batch is None or batch["status"] not in ("validating", "cancelling"):
                return
            if not await self.redis.hexists(batch_work_key(batch_id), "done"):
                await self._enqueue(batch, lease)
            await self._start(batch_id)
        except Exception:
            log.exception("enqueuing a batch failed", batch_id=batch_id)
        finally:
            await lease.release()

    async def _enqueue(self, batch: dict[str, Any], lease: RoleLease) -> None:
        batch_id, tenant = batch["id"], batch["tenant"]
        try:
            content = await self.files.content(tenant, batch["input_file_id"])
        except ResourceNotFound:
            await self._fail(batch_id, [batch_error("invalid_file", "the input file was deleted or expired")])
            return
        lines = parse_lines(content, batch["endpoint"])
        if not lines:
            await self._fail(batch_id, [batch_error("empty_file", "the input file has no requests")])
            return
        if len(lines) > MAX_LINES:
            msg = f"the input file has {len(lines)} requests; a batch holds at most {MAX_LINES}"
            await self._fail(batch_id, [batch_error("too_many_requests", msg)])
            return
        refused = [refusal(ln.index, ln.custom_id, ln.error) for ln in lines if ln.error is not None]
        valid = [ln for ln in lines if ln.error is None]
        window = batch["expires_at"] - batch["created_at"]
        lane = batch.get("lane")  # decided at create: the same on every retry
        jobs: list[list[Any]] = []
        for start in range(0, len(valid), SUBMIT_CHUNK):
            chunk = valid[start : start + SUBMIT_CHUNK]
            if not await lease.renew():
                # too slow: another server holds the batch now and enqueues it again (the same jobs)
                raise LeaseLost(f"lost the lease of {batch_id} while enqueuing")
            if await self.redis.hget(batch_key(batch_id), "status") == b"cancelling":
                cut = batch_error("batch_cancelled", "the batch was cancelled before this request was queued")
                refused += [refusal(ln.index, ln.custom_id, cut) for ln in valid[start:]]
                break
            # each line's deadline is the window's end (module docstring)
            left = max(1.0, batch["expires_at"] - time.time())
            results = await self.producer.submit_many(
                [job_for(batch_id, ln, left, lane) for ln in chunk],
                tenant=tenant,
                max_queued=(await self.producer.policies.get(tenant)).get("max_queued"),
                default_webhook=False,  # the batch reports its end, not each line
            )
            for ln, res in zip(chunk, results, strict=True):
                # a conflict is the job an earlier enqueue of this batch made (its id is derived from
                # the batch, its body from the same file; only its deadline, what was left, differs)
                if isinstance(res, RouterError) and not isinstance(res, IdempotencyConflict):
                    refused.append(refusal(ln.index, ln.custom_id, res.to_dict()))
                else:
                    jobs.append([ln.index, ln.custom_id])
        refused.sort(key=lambda r: r["line"])
        work = {"jobs": orjson.dumps(jobs), "refused": orjson.dumps(refused), "total": len(lines), "done": 1}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(batch_work_key(batch_id), mapping=work)
            pipe.expire(batch_work_key(batch_id), self.ttl_s + window)
            await pipe.execute()
        log.info("batch enqueued", batch_id=batch_id, jobs=len(jobs), refused=len(refused))

    async def _start(self, batch_id: str) -> None:
        """``validating`` → ``in_progress`` once the lines are enqueued (``failed`` if none was usable)."""
        raw_jobs, raw_refused, raw_total = await self.redis.hmget(
            batch_work_key(batch_id), ["jobs", "refused", "total"]
        )
        if raw_jobs is None:
            return  # the batch failed before anything was enqueued
        jobs, refused = orjson.loads(raw_jobs), orjson.loads(raw_refused or b"[]")
        counts: dict[str, Any] = {
            "total": int(raw_total or 0),
            "completed": 0,
            "failed": len(refused),
            "refused": len(refused),
        }
        errors = batch_errors([r for r in refused if r["code"] != "batch_cancelled"])
        if errors is not None:
            counts["errors"] = errors
        if not jobs and await self.update(batch_id, ["validating"], counts) == 1:
            await self._fail(batch_id, errors["data"] if errors else [])
            return
        moved = await self.update(
            batch_id, ["validating"], {**counts, "status": "in_progress", "in_progress_at": int(time.time())}
        )
        if moved != 1:  # cancelled meanwhile: keep the counts; the tracker cancels what was queued
            await self.update(batch_id, ["cancelling"], counts)

    async def _fail(self, batch_id: str, errors: list[dict[str, Any]]) -> None:
        fields: dict[str, Any] = {
            "status": "failed",
            "failed_at": int(time.time()),
            "errors": {"object": "list", "data": errors},
        }
        batch = await self.load(batch_id)
        if batch is not None:
            fields = with_webhook_event(batch, fields)
        # a batch cancelled while its file was found unusable fails too: there is nothing to cancel
        await self.update(batch_id, ["validating", "cancelling"], fields, ends=True)

    # -- tracking -------------------------------------------------------------------------------

    async def advance(self, batch_id: str, *, from_tracker: bool = False) -> dict[str, Any] | None:
        """Bring the batch's counts and status up to date from its jobs; returns the batch."""
        batch = await self.load(batch_id)
        if batch is None:
            await self.redis.srem(self.active_key, batch_id)
            return None
        status = batch["status"]
        if status in ENDED or batch.get("queue", self.queue) != self.queue:
            return batch  # another queue's batch is advanced by the servers of that queue
        if status == "finalizing":  # a finalizer died half-way, or is still at it elsewhere
            await self.finalize(batch_id, batch.get("final_status") or "completed")
            return await self.load(batch_id)
        if status == "validating":  # being enqueued; the tracker resumes it if its enqueuer died
            if from_tracker:
                self.spawn(batch_id, "ingest")
            return batch
        lazy = from_tracker and status == "in_progress"  # a cancel is followed at every tick
        progress = await self._read_progress(batch_id, batch["tenant"], lazy=lazy)
        if progress is None:  # cancelled while being enqueued: enqueuing ends first
            if from_tracker:
                self.spawn(batch_id, "ingest")
            return batch
        if status == "cancelling":
            await self._cancel_pending(batch_id, batch["tenant"], progress)
        # a cancelled batch ends once its jobs have; one whose aborted jobs linger (their worker
        # lost, say) ends anyway after a grace period, those jobs reported as cancelled with it
        gave_up = status == "cancelling" and time.time() - batch.get("cancelling_at", 0) > CANCEL_GRACE_S
        if not progress.pending or gave_up:
            await self.finalize(batch_id, "cancelled" if status == "cancelling" else "completed")
            return await self.load(batch_id)
        if status == "in_progress" and time.time() >= batch["expires_at"]:
            await self._cancel_pending(batch_id, batch["tenant"], progress)
            await self.finalize(batch_id, "expired")
            return await self.load(batch_id)
        counts = {
            "completed": progress.completed,
            "failed": batch.get("refused", 0) + progress.failed,
        }
        if counts["completed"] != batch.get("completed") or counts["failed"] != batch.get("failed"):
            await self.update(batch_id, ["in_progress", "cancelling"], counts)
            batch.update(counts)
        return batch

    async def _read_progress(self, batch_id: str, tenant: str, *, lazy: bool = False) -> _Progress | None:
        """The batch's progress, its unfinished jobs' statuses read again (``lazy``: unless the
        tracker read them recently and nothing had ended)."""
        progress = self._progress.get(batch_id)
        if progress is None:
            raw = await self.redis.hget(batch_work_key(batch_id), "jobs")
            if raw is None:
                return None
            progress = self._progress.setdefault(batch_id, _Progress(pending=orjson.loads(raw)))
        if lazy and time.monotonic() < progress.read_after:
            return progress
        async with progress.lock:  # the tracker and a reader may both be here: count each job once
            before = len(progress.pending)
            if progress.pending:
                ids = [scoped_id(tenant, job_id_for(batch_id, p[0])) for p in progress.pending]
                statuses = await self.producer.store.statuses(ids)
                still = []
                for pair, status in zip(progress.pending, statuses, strict=True):
                    if status == "succeeded":
                        progress.completed += 1
                    elif status is None or status in ("failed", "cancelled"):
                        progress.failed += 1  # None: the record expired, the answer is gone
                    else:
                        still.append(pair)
                progress.pending = still
            progress.slow_down(changed=len(progress.pending) != before)
        return progress

    async def _cancel_pending(self, batch_id: str, tenant: str, progress: _Progress) -> None:
        """Cancel the batch's unfinished jobs: queued ones end now, running ones are aborted."""
        now = time.monotonic()
        if now - progress.cancels_sent_at < CANCEL_RESEND_S:
            return
        progress.cancels_sent_at = now
        gate = asyncio.Semaphore(CANCEL_CONCURRENCY)

        async def cancel(job_id: str) -> None:
            async with gate:
                # a line in the batch lane leaves it too (the cancel script, llm_router.record_lua)
                with contextlib.suppress(RouterError):
                    await self.producer.cancel(job_id, tenant=tenant)

        await asyncio.gather(*(cancel(job_id_for(batch_id, p[0])) for p in progress.pending))

    # -- finalizing -----------------------------------------------------------------------------

    async def finalize(self, batch_id: str, final: str) -> None:
        """Write the output and error files and end the batch as ``final``, once, under its lease."""
        lease = await self._lock(batch_id)
        if lease is None:
            return  # another server (or task) is finalizing it
        try:
            batch = await self.load(batch_id)
            if batch is None or batch["status"] in ENDED:
                return
            if batch["status"] == "cancelling":  # a cancel that came in since the caller looked wins
                final = "cancelled"
            if final == "completed":
                moving = {"status": "finalizing", "final_status": final, "finalizing_at": int(time.time())}
                await self.update(batch_id, ["in_progress"], moving)
            await self._write_results(batch, final, lease)
        finally:
            await lease.release()
            self._progress.pop(batch_id, None)

    async def _write_results(self, batch: dict[str, Any], final: str, lease: RoleLease) -> None:
        batch_id, tenant = batch["id"], batch["tenant"]
        raw_jobs, raw_refused = await self.redis.hmget(batch_work_key(batch_id), ["jobs", "refused"])
        jobs = orjson.loads(raw_jobs or b"[]")
        refused = orjson.loads(raw_refused or b"[]")
        cuts = {
            "cancelled": batch_error(
                "batch_cancelled", "the batch was cancelled before this request finished"
            ),
            "expired": batch_error("batch_expired", "the batch's window ended before this request finished"),
        }
        outputs: list[dict[str, Any]] = []
        errors: list[tuple[int, dict[str, Any]]] = [
            (r["line"] - 1, refused_line(batch_id, r["line"] - 1, r["custom_id"], r)) for r in refused
        ]
        usage = UsageSum()
        for start in range(0, len(jobs), READ_CHUNK):
            window = jobs[start : start + READ_CHUNK]
            records = await self.producer.store.get_many(
                [scoped_id(tenant, job_id_for(batch_id, j[0])) for j in window]
            )
            for (index, custom_id), record in zip(window, records, strict=True):
                ok, line = record_line(batch_id, index, custom_id, record, cuts.get(final))
                if record is not None:  # a line that failed or was cut may have been charged too
                    usage.add(record)
                if ok:
                    outputs.append(line)
                else:
                    errors.append((index, line))
            await lease.renew()
        errors.sort(key=lambda e: e[0])
        fields: dict[str, Any] = {
            "status": final,
            f"{final}_at": int(time.time()),
            "completed": len(outputs),
            "failed": batch.get("total", len(jobs) + len(refused)) - len(outputs),
            "usage": usage.batch_usage(),
        }
        for kind, lines in (("output", outputs), ("error", [e[1] for e in errors])):
            if lines:
                file_id = derived_file_id(batch_id, kind)
                await self.files.put(
                    tenant,
                    filename=f"batch_{batch_id.removeprefix('batch_')}_{kind}.jsonl",
                    purpose="batch_output",
                    content=dumps_lines(lines),
                    file_id=file_id,
                )
                fields[f"{kind}_file_id"] = file_id
        fields = with_webhook_event(batch, fields)
        await self.update(batch_id, ["in_progress", "finalizing", "cancelling"], fields, ends=True)
        log.info("batch ended", batch_id=batch_id, status=final, completed=len(outputs), errors=len(errors))


def with_webhook_event(batch: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` that end ``batch``, plus, when it has a webhook, the event its end delivers (the
    batch object as it will read, written in the same step as the end)."""
    if not batch.get("webhook"):
        return fields
    ended = {**batch, **fields}
    at = fields.get(f"{fields['status']}_at") or time.time()
    return {**fields, "webhook_event": batch_body(batch_object(ended), at)}


class LeaseLost(Exception):
    """This process no longer holds a batch's lease; whoever does carries on."""
