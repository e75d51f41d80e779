"""The batcher: the role (``llm_router.roles``, ``keys.LANES_ROLE``) that runs the batch lane.

Every ``poll_s`` the one process holding the role:

1. **forms** a provider batch per deployment from its parked jobs (``lanes:pending:<dep>``) once they
   reach ``LLM_ROUTER_LANES_BATCH_SIZE`` (or the deployment's ``max_requests``) or the oldest waited
   ``LLM_ROUTER_LANES_BATCH_AGE_S``; builds each job's item in the deployment's batch format (the
   body its synchronous adapter would send: ``worker.batch_formats``) and creates the batch in the
   provider's own API (``worker.batch_api``: OpenAI Files + Batch, Anthropic Message Batches, Gemini
   batch mode), the order of its jobs recorded first;
2. **polls** each open batch; when it ended (completed, failed, expired, cancelled) **ingests** its
   output through the finish script, the synchronous lane's (one settlement, same record shape, at
   the deployment's batch price), guarded by the batch's members hash so a job is ingested at most
   once; an item that failed (its error classified by the deployment's adapter, as a synchronous
   call's would be), expired or was cancelled, and every job the batch did not answer, goes back to
   `now` with its fallback chain;
3. **watches deadlines**: a job still waiting (parked or in an unfinished batch) whose deadline minus
   the `now` lane's expected time minus the margin has come goes back to `now` with its fallback
   chain (``lanes_lua.REDISPATCH_LUA``); a batch left without members is cancelled remotely. A result
   that arrives for a job already sent back (or ended) is the operator's wasted spend: counted in
   ``lanes:stats`` and logged, never charged.

Everything it knows lives in Redis (batch hash: deployment, state, remote ids; members; gone), so a
successor picks up where a killed holder stopped: a batch still ``forming`` (the holder died before
it recorded the provider's batch) is found among the provider's recent batches by our batch id (in
OpenAI's metadata, Gemini's display name; a Message Batch has neither, so Anthropic's is created
again), or created again; a ``submitted`` one is polled; an answer ingested before is not ingested again.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import aiohttp
import orjson
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from config.catalog import Catalog, Deployment
from config.cost import call_usage
from config.settings import Settings
from llm_router.contract import JobStatus, new_attempt
from llm_router.errors import RouterError
from llm_router.keys import (
    LANES_DUE_KEY,
    LANES_OPEN_KEY,
    LANES_STATS_KEY,
    LANES_TURNAROUND_KEY,
    lane_batch_key,
    lane_gone_key,
    lane_members_key,
    lane_pending_key,
    record_key,
    request_key,
)
from llm_router.lanes_lua import LaneScripts
from llm_router.store import FinishReply, Store
from worker.batch_api import BatchClient, batchable, client_for
from worker.batch_breaker import BatchBreakers
from worker.batch_formats import RawItem, Remote, to_result
from worker.batch_formats.base import CANCELLED, COMPLETED
from worker.job_runner import _settlement
from worker.providers import ADAPTERS

log = structlog.get_logger("llm_router.batcher")

_KEEP_S = 7 * 24 * 3600  # a done batch's hashes are kept this long (``llm-router lanes``)
_READ_AHEAD = 200  # records read in one round trip while ingesting


def _image_urls(request: dict[str, Any]) -> bool:
    """Whether a message has an image by https URL (a provider that cannot fetch one needs it
    inlined, which the `now` lane does)."""
    for message in request.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else ():
            url = ((part.get("image_url") or {}) if isinstance(part, dict) else {}).get("url")
            if isinstance(url, str) and url.startswith("https://"):
                return True
    return False


class Batcher:
    """The batch lane of the fleet, run by whichever process holds the role."""

    def __init__(
        self, redis: Redis, store: Store, catalog: Catalog, settings: Settings, session: aiohttp.ClientSession
    ) -> None:
        self.redis = redis
        self.store = store
        self.catalog = catalog
        self.settings = settings
        self.session = session
        self.scripts = LaneScripts(redis)
        self.deployments: dict[str, Deployment] = {
            d.id: d for m in catalog.models for d in catalog.deployments(m) if batchable(d)
        }
        self._model_of = {d.id: m for m in catalog.models for d in catalog.deployments(m)}
        self.breakers = BatchBreakers(store, list(self.deployments.values()), settings)

    async def run(self) -> None:
        """The batch lane until cancelled (the role lost). Deadlines are watched by a loop of their
        own: ingesting a large batch takes seconds, and a job's way back to `now` must not wait for
        it (its redispatch and a batch's answer exclude each other atomically, whoever runs first)."""
        watcher = asyncio.create_task(self._watch_loop())
        try:
            while True:
                await self.tick(watch=False)
                await asyncio.sleep(self.settings.lanes_poll_s)
        finally:
            watcher.cancel()

    async def _watch_loop(self) -> None:
        while True:
            try:
                await self._watch_due()
            except (RedisError, OSError) as exc:  # Redis away for a while: the next look retries
                log.warning("lanes: deadlines not read", error=repr(exc))
            await asyncio.sleep(self.settings.lanes_poll_s)

    async def tick(self, watch: bool = True) -> None:
        if watch:
            await self._watch_due()
        for dep in await self._with_pending():
            await self._form(dep)
        for raw in await self.redis.smembers(LANES_OPEN_KEY):
            await self._advance(raw.decode())
        for dep_id in self.deployments:
            await self.breakers.flush(dep_id)

    # -- forming ---------------------------------------------------------------------------------

    async def _with_pending(self) -> list[Deployment]:
        """The deployments with jobs waiting for a batch: one round trip for all (a look per
        deployment was some seventy round trips a tick)."""
        deployments = list(self.deployments.values())
        async with self.redis.pipeline(transaction=False) as pipe:
            for dep in deployments:
                pipe.zcard(lane_pending_key(dep.id))
            counts = await pipe.execute()
        return [dep for dep, count in zip(deployments, counts, strict=True) if count]

    async def _form(self, dep: Deployment) -> None:
        assert dep.lanes is not None and dep.lanes.batch is not None
        size = min(self.settings.lanes_batch_size, dep.lanes.batch.max_requests)
        pending = lane_pending_key(dep.id)
        while True:
            count = await self.redis.zcard(pending)
            if not count:
                return
            oldest = await self.redis.zrange(pending, 0, 0, withscores=True)
            age = time.time() - oldest[0][1] / 1000 if oldest else 0.0
            if count < size and age < self.settings.lanes_batch_age_s:
                return
            if not await self.breakers.admit(dep.id):
                return  # the batch lane's breaker is open: its jobs wait, or go to `now` by their deadline
            batch_id = secrets.token_hex(8)
            jobs = await self.scripts.form(batch_id, dep.id, size, time.time())
            if jobs:
                await self._submit(batch_id, dep, jobs)

    async def _submit(self, batch_id: str, dep: Deployment, jobs: list[str]) -> None:
        """Build the batch's items in the deployment's format and create the provider batch (again,
        after a holder died here). The order of its jobs is recorded first: Anthropic's and Gemini's
        items are known by their position."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for j in jobs:
                pipe.get(request_key(j))
                pipe.hget(record_key(j), "request")  # a record of before request keys
            replies = await pipe.execute()
        requests = [own or field for own, field in zip(replies[::2], replies[1::2], strict=True)]
        client = client_for(self.session, dep)
        items: list[bytes] = []
        order: list[str] = []
        size = 0
        assert dep.lanes is not None and dep.lanes.batch is not None
        for job, raw in zip(jobs, requests, strict=True):
            if not raw:
                continue
            request = orjson.loads(raw)
            if ADAPTERS[dep.format].needs_image_bytes and _image_urls(request):
                await self._send_back(
                    job, batch_id, dep, "images by URL are fetched by the now lane: ran now"
                )
                continue
            try:
                item = client.fmt.item(client.fmt.key(len(order), job), request, dep)
            except RouterError as exc:
                await self._send_back(job, batch_id, dep, f"not expressible in a batch ({exc.code}): ran now")
                continue
            if items and size + len(item) > dep.lanes.batch.max_bytes:
                # past the lane's size: the job waits for the next batch (at the front)
                await self.scripts.unform(job, batch_id, dep.id, 0)
                continue
            items.append(item)
            order.append(job)
            size += len(item)
        if not items:
            await self._done(batch_id)
            return
        await self.redis.hset(lane_batch_key(batch_id), "order", orjson.dumps(order))
        try:
            remote = await client.create(batch_id, items, self.settings.lanes_completion_window)
        except (RouterError, aiohttp.ClientError, TimeoutError) as exc:
            code = exc.code if isinstance(exc, RouterError) else "connection_error"
            self.breakers.report(dep.id, ok=False)
            log.warning("provider batch not created; its jobs go back to now", deployment=dep.id, error=code)
            await self._send_back_all(batch_id, dep, f"batch not created ({code}): ran now")
            await self._done(batch_id)
            return
        await self.redis.hset(
            lane_batch_key(batch_id),
            mapping={
                "state": "submitted",
                "remote_id": remote.id,
                "submitted_at": time.time(),
                "size": len(items),
            },
        )
        log.info(
            "provider batch created", deployment=dep.id, batch=batch_id, remote=remote.id, size=len(items)
        )

    # -- polling ---------------------------------------------------------------------------------

    async def _advance(self, batch_id: str) -> None:
        fields = ("deployment", "state", "remote_id", "submitted_at", "created_at", "cancelled")
        raw = await self.redis.hmget(lane_batch_key(batch_id), *fields)
        h = {k: v.decode() for k, v in zip(fields, raw, strict=True) if v is not None}
        dep = self.deployments.get(h.get("deployment", ""))
        if dep is None:
            await self.redis.srem(LANES_OPEN_KEY, batch_id)
            return
        client = client_for(self.session, dep)
        if h.get("state") == "forming":
            # the holder died between forming the batch and recording the provider's batch: adopt the
            # provider's if it was created (found by our batch id), else create it again
            jobs = [j.decode() for j in await self.redis.hkeys(lane_members_key(batch_id))]
            try:
                created = await client.find(batch_id)
            except (RouterError, aiohttp.ClientError, TimeoutError):
                return  # the provider is unreachable: try again next tick
            if created is not None:
                mapping = {"state": "submitted", "remote_id": created.id, "submitted_at": time.time()}
                await self.redis.hset(lane_batch_key(batch_id), mapping=mapping)
            elif jobs:
                await self._submit(batch_id, dep, jobs)
            else:
                await self._done(batch_id)
            return
        try:
            remote = await client.retrieve(h["remote_id"])
        except (RouterError, aiohttp.ClientError, TimeoutError) as exc:
            self.breakers.report(dep.id, ok=False)
            log.warning("provider batch unreadable for now", batch=batch_id, error=repr(exc))
            return
        if remote.ended:
            self.breakers.report(dep.id, ok=remote.state in (COMPLETED, CANCELLED))
            await self._ingest(batch_id, dep, h, remote, client)
            return
        if h.get("cancelled") is None and not await self.redis.hlen(lane_members_key(batch_id)):
            # every job went back to `now`: the rest of the batch is spend nobody needs
            try:
                await client.cancel(remote.id)
            except (RouterError, aiohttp.ClientError, TimeoutError) as exc:
                log.warning("provider batch not cancelled", batch=batch_id, error=repr(exc))
            await self.redis.hset(lane_batch_key(batch_id), "cancelled", time.time())

    async def _ingest(
        self, batch_id: str, dep: Deployment, h: dict[str, str], remote: Remote, client: BatchClient
    ) -> None:
        submitted_at = float(h.get("submitted_at") or h.get("created_at") or time.time())
        try:
            items = await client.items(remote)
        except (RouterError, aiohttp.ClientError, TimeoutError) as exc:
            self.breakers.report(dep.id, ok=False)
            log.warning("provider batch results unreadable for now", batch=batch_id, error=repr(exc))
            return
        raw_order = await self.redis.hget(lane_batch_key(batch_id), "order")
        order = orjson.loads(raw_order) if raw_order else []
        jobs = {client.fmt.key(i, job): job for i, job in enumerate(order)}
        # a batch recorded before orders were kept names its jobs by id (OpenAI's custom_id)
        named = [(jobs.get(item.key, item.key), item) for item in items]
        for start in range(0, len(named), _READ_AHEAD):
            chunk = named[start : start + _READ_AHEAD]
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id, _ in chunk:
                    pipe.hmget(record_key(job_id), "request", "attempts", "route", "parent")
                    pipe.get(request_key(job_id))
                replies = await pipe.execute()
            # the request from its own key (a record of before request keys has it as a field)
            records = [[own or r[0], *r[1:]] for r, own in zip(replies[::2], replies[1::2], strict=True)]
            for (job_id, item), raw in zip(chunk, records, strict=True):
                await self._item(batch_id, dep, job_id, item, submitted_at, raw)
        await self._send_back_all(
            batch_id, dep, f"the provider batch ended {remote.state} without its answer: ran now"
        )
        if remote.state == COMPLETED:
            # from forming to the last answer ingested: when a job of the next batch can expect its
            # answer (measured to when the batch was seen ended, `auto` sent more urgent jobs to
            # batches that answered after their way back to `now`: bench/README "Lanes")
            seen = time.time() - float(h.get("created_at") or submitted_at)
            old = await self.redis.hget(LANES_TURNAROUND_KEY, dep.id)
            learned = seen if old is None else 0.7 * float(old) + 0.3 * seen
            await self.redis.hset(LANES_TURNAROUND_KEY, dep.id, learned)
        await self._done(batch_id, remote_status=remote.state)

    async def _item(
        self, batch_id: str, dep: Deployment, job_id: str, item: RawItem, submitted_at: float, raw: list[Any]
    ) -> None:
        """One item into its job's record (``raw``: the record's request, attempts, route, parent)."""
        if raw[0] is None:
            return
        request = orjson.loads(raw[0])
        result = to_result(item, request, ADAPTERS[dep.format])
        if result.completion is None:
            # per item, as a synchronous call's failure: the job goes on with its fallback chain
            await self._send_back(job_id, batch_id, dep, f"{result.why}: ran now")
            return
        completion = result.completion
        model_id = self._model_of.get(dep.id, dep.upstream_model)
        usage = call_usage(
            dep.price_for("batch"),
            completion.prompt_tokens,
            completion.completion_tokens,
            cached_tokens=completion.cached_tokens,
            cache_write_tokens=completion.cache_write_tokens,
            reasoning_tokens=completion.reasoning_tokens,
        )
        answer = completion.response
        answer["model"] = model_id
        answer["usage"]["cost"] = usage["cost"]
        now = time.time()
        attempts = orjson.loads(raw[1]) if raw[1] else []
        attempts.append(
            new_attempt(
                provider=dep.provider,
                model=model_id,
                upstream_model=dep.upstream_model,
                outcome="success",
                started_at=submitted_at,
                latency_ms=round((now - submitted_at) * 1000, 3),
                worker="batcher",
            )
        )
        fields = {
            "status": JobStatus.SUCCEEDED,
            "finished_at": now,
            "attempts": attempts,
            "provider": dep.provider,
            "model": model_id,
            "response": answer,
            "usage": usage,
            "lane": "batch",
            "fallback_used": False,
        }
        route = orjson.loads(raw[2]) if raw[2] else [model_id]
        settlement, summary = _settlement(job_id, fields, route, raw[3].decode() if raw[3] else None)
        finished = await self.store.finish(
            job_id, fields, settlement=settlement, summary=summary, member_of=lane_members_key(batch_id)
        )
        if finished.reply == FinishReply.WRITTEN:
            return
        if finished.reply == FinishReply.NOT_MEMBER and not await self.redis.srem(
            lane_gone_key(batch_id), job_id
        ):
            return  # ingested before (a successor reading the same file again): nothing new
        await self.redis.hincrby(LANES_STATS_KEY, "wasted_results", 1)
        await self.redis.hincrby(LANES_STATS_KEY, "wasted_nanos", int(usage["cost_nanos"]))
        log.warning(
            "batch result for a job that already ran elsewhere or ended: wasted spend, not charged",
            job_id=job_id,
            batch=batch_id,
            cost=usage["cost"],
        )

    # -- deadlines -------------------------------------------------------------------------------

    async def _watch_due(self) -> None:
        """Jobs whose time to go back to `now` has come while they wait for a batch (parked, or in
        one that has not answered): sent back, a thousand per look (``lanes:due``)."""
        while True:
            due = await self.redis.zrangebyscore(
                LANES_DUE_KEY, "-inf", int(time.time() * 1000), start=0, num=1000
            )
            if not due:
                return
            jobs = [j.decode() for j in due]
            async with self.redis.pipeline(transaction=False) as pipe:
                for j in jobs:
                    pipe.hmget(record_key(j), "lane_batch", "lane_dep")
                where = await pipe.execute()
            for job, (batch, dep_id) in zip(jobs, where, strict=True):
                dep = self.deployments.get(dep_id.decode() if dep_id else "")
                sent = dep is not None and await self._redispatch(
                    job,
                    batch.decode() if batch else None,
                    dep,
                    "the batch was late for the deadline: ran now"
                    if batch
                    else "the deadline came before a batch formed: ran now",
                )
                if not sent:  # answered by its batch, or ended: nothing to wait for
                    await self.redis.zrem(LANES_DUE_KEY, job)
            if len(jobs) < 1000:
                return

    async def _send_back(self, job_id: str, batch_id: str, dep: Deployment, reason: str) -> None:
        await self._redispatch(job_id, batch_id, dep, reason)

    async def _send_back_all(self, batch_id: str, dep: Deployment, reason: str) -> None:
        for raw in await self.redis.hkeys(lane_members_key(batch_id)):
            await self._redispatch(raw.decode(), batch_id, dep, reason)

    async def _redispatch(self, job_id: str, batch_id: str | None, dep: Deployment, reason: str) -> bool:
        if not await self.scripts.redispatch(
            job_id, self.settings.queue_name, reason, batch_id=batch_id, deployment=dep.id
        ):
            return False
        await self.redis.hincrby(LANES_STATS_KEY, "redispatched", 1)
        log.info("job sent back to the now lane", job_id=job_id, batch=batch_id, reason=reason)
        return True

    async def _done(self, batch_id: str, remote_status: str | None = None) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                lane_batch_key(batch_id),
                mapping={"state": "done", "remote_status": remote_status or "", "done_at": time.time()},
            )
            pipe.srem(LANES_OPEN_KEY, batch_id)
            for key in (lane_batch_key(batch_id), lane_members_key(batch_id), lane_gone_key(batch_id)):
                pipe.expire(key, _KEEP_S)
            await pipe.execute()
