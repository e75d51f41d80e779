"""The worker's side of the lanes (README "Lanes"): which lane a started job runs in, handing a
batch-lane job to the batcher, a flex call that falls back to `now`, and what the record says.

``auto`` takes the cheapest lane whose expected completion meets the deadline with a margin:
``batch`` when the deadline leaves the batch's expected turnaround (learned from the batches that
completed, in ``lanes:turnaround``; seeded by ``LLM_ROUTER_LANES_BATCH_EXPECTED_S``) plus the `now`
lane's expected time (the re-dispatch a late batch may need) plus the margin; else ``flex`` when
the deadline leaves its expected time plus the margin; else ``now``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from config.catalog import Catalog, Deployment
from config.settings import Settings
from llm_router.errors import RateLimited
from llm_router.keys import LANES_TURNAROUND_KEY
from llm_router.lanes_lua import LaneScripts, ParkReply

__all__ = ["LaneChoice", "Lanes", "ParkReply"]
from worker.batch_api import batchable
from worker.batch_breaker import batch_lane_healthy
from worker.providers import Completion

Call = Callable[[Deployment, dict[str, Any], float], Awaitable[Completion]]


@dataclass(frozen=True, slots=True)
class LaneChoice:
    lane: str  # now, flex or batch
    reason: str | None
    deployment: Deployment | None = None  # the batch lane's deployment


class Lanes:
    """Lane decisions of one worker process."""

    def __init__(self, redis: Redis, catalog: Catalog, settings: Settings) -> None:
        self.redis = redis
        self.catalog = catalog
        self.settings = settings
        self.scripts = LaneScripts(redis)
        # why a job's flex call ran `now` instead (a 429 resource unavailable), by job id
        self.notes: dict[str, str] = {}

    def batch_deployment(self, route: list[str]) -> Deployment | None:
        """The deployment a batch-lane job is batched on: its model's first that offers a batch."""
        for dep in self.catalog.deployments(route[0]):
            if batchable(dep):
                return dep
        return None

    def offers_flex(self, route: list[str]) -> bool:
        return any("flex" in d.lane_prices for d in self.catalog.deployments(route[0]))

    async def batch_turnaround_s(self, dep_id: str) -> float:
        try:
            raw = await self.redis.hget(LANES_TURNAROUND_KEY, dep_id)
        except RedisError:
            raw = None
        return float(raw) if raw else self.settings.lanes_batch_expected_s

    async def choose(
        self, request: dict[str, Any], route: list[str], deadline_at: float, lane: str, *, interactive: bool
    ) -> LaneChoice:
        """The lane a started ``batch`` or ``auto`` job runs in, and why (an interactive job, which a
        caller waits for, never goes to a batch)."""
        s = self.settings
        streamed = bool(request.get("stream"))
        dep = None if streamed or interactive else self.batch_deployment(route)
        if lane == "batch":
            if streamed or interactive:
                return LaneChoice("now", "a streamed or interactive job never goes to a batch")
            if dep is None:
                return LaneChoice("now", f"no deployment of {route[0]} offers a batch lane")
            return LaneChoice("batch", "asked", dep)
        left = deadline_at - time.time()
        if dep is not None and await batch_lane_healthy(self.redis, dep.id):
            expected = await self.batch_turnaround_s(dep.id)
            if left >= expected + s.lanes_now_expected_s + s.lanes_margin_s:
                return LaneChoice(
                    "batch", f"auto: a batch is expected in {expected:.0f}s, the deadline in {left:.0f}s", dep
                )
        flex = self.offers_flex(route)
        if flex and left >= s.lanes_flex_expected_s + s.lanes_margin_s:
            if streamed or interactive:
                why = "a streamed or interactive job never waits for a batch"
            elif dep is None:
                why = f"{route[0]} offers no batch lane"
            else:
                why = f"the deadline in {left:.0f}s leaves no room for a batch (or its breaker is open)"
            return LaneChoice("flex", f"auto: {why}")
        if dep is None and not flex:
            return LaneChoice("now", f"auto: {route[0]} offers no cheaper lane")
        return LaneChoice("now", f"auto: the deadline in {left:.0f}s leaves no room for a cheaper lane")

    async def park(self, job_id: str, choice: LaneChoice, deadline_at: float) -> ParkReply:
        assert choice.deployment is not None
        return await self.scripts.park(
            job_id,
            choice.deployment.id,
            int(time.time() * 1000),
            choice.reason or "asked",
            int(self.due_at(deadline_at) * 1000),
        )

    def due_at(self, deadline_at: float) -> float:
        """When a batch-lane job goes back to `now` if its batch has not answered: its deadline less
        the `now` lane's expected time and the margin."""
        return deadline_at - self.settings.lanes_now_expected_s - self.settings.lanes_margin_s

    def wrap(self, call: Call, job_id: str, lane: str) -> Call:
        """``call`` as the job's lane makes it: a flex job's calls fall back to `now` on a flex 429 (a
        refusal comes before any token, so a stream may fall back too)."""
        if lane != "flex":
            return call

        async def flex(dep: Deployment, request: dict[str, Any], deadline_at: float) -> Completion:
            return await self.flex_call(call, job_id, dep, request, deadline_at)

        return flex

    async def flex_call(
        self, call: Call, job_id: str, dep: Deployment, request: dict[str, Any], deadline_at: float
    ) -> Completion:
        """A flex call; when the flex tier answers 429 (resource unavailable) and the deadline has not
        come, the same deployment's `now` tier at once (the job is billed what answered)."""
        try:
            return await call(dep, request, deadline_at)
        except RateLimited as exc:
            if time.time() >= deadline_at:
                raise
            self.notes[job_id] = f"flex unavailable on {dep.id} ({exc.message[:80]}): ran now"
            return await call(dep, {k: v for k, v in request.items() if k != "service_tier"}, deadline_at)

    def mark(self, job_id: str, fields: dict[str, Any], lane: str, reason: str | None) -> None:
        """The record's ``lane`` and ``lane_reason`` for a run that ends the job."""
        note = self.notes.pop(job_id, None)
        if fields.get("status") not in ("succeeded", "failed", "cancelled"):
            return
        if fields.get("lane") == "flex":  # the provider served it on its flex tier
            if reason is not None:
                fields["lane_reason"] = reason
            return
        if lane == "now" and reason is None and note is None:
            return  # a `now` job's record says nothing more
        fields["lane"] = "now"
        fields["lane_reason"] = (
            note or reason or ("flex not offered on the deployment that answered" if lane == "flex" else None)
        )
