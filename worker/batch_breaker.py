"""Batch-API health as its own breaker: a deployment's batch lane is the deployment ``<id>#batch`` in
the breaker state, apart from its synchronous API. Batches that fail to be created, that cannot be
read, that fail or expire count as failures; a completed batch as a success. While the lane's
breaker is not closed the batcher forms no batch there (parked jobs go back to `now` by their
deadlines) and ``auto`` does not choose it."""

from __future__ import annotations

import dataclasses

from redis.asyncio import Redis
from redis.exceptions import RedisError

from config.catalog import ConcurrencySpec, Deployment
from config.settings import Settings
from llm_router.circuit_breaker import AdmissionState, BreakerReport, Policy, ReportKind, breaker_report
from llm_router.keys import SICK_KEY
from llm_router.store import Store

SUFFIX = "#batch"


def batch_lane_id(dep_id: str) -> str:
    return dep_id + SUFFIX


async def batch_lane_healthy(redis: Redis, dep_id: str) -> bool:
    """Whether the deployment's batch lane's breaker is closed (one read of the fleet's sick hash)."""
    try:
        return not await redis.hexists(SICK_KEY, batch_lane_id(dep_id))
    except RedisError:
        return True


class BatchBreakers:
    """The batch lanes' breakers of the batcher: admission before a batch is formed, a report per
    batch-API outcome (sent with the next admission, as the route walk sends its reports)."""

    def __init__(self, store: Store, deployments: list[Deployment], settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.lanes = {
            d.id: dataclasses.replace(
                d, id=batch_lane_id(d.id), rpm=None, tpm=None, concurrency=ConcurrencySpec(max=0)
            )
            for d in deployments
        }
        self.policies = {dep_id: Policy.for_deployment(lane, settings) for dep_id, lane in self.lanes.items()}
        self._pending: dict[str, list[BreakerReport]] = {dep_id: [] for dep_id in self.lanes}
        self._probing: dict[str, bool] = {}

    async def admit(self, dep_id: str) -> bool:
        """Whether a batch may be created on the deployment's batch lane now."""
        reports, self._pending[dep_id] = self._pending[dep_id], []
        policy = self.policies[dep_id]
        admitted = await self.store.admit(
            self.lanes[dep_id].id,
            0,
            0,
            policy.probes,
            "batcher",
            0,
            int(self.settings.lanes_poll_s * 1000 * 10 + 60_000),
            reports=reports,
        )
        self._probing[dep_id] = admitted.admission.state == AdmissionState.PROBE
        return admitted.admission.state.admitted

    def report(self, dep_id: str, ok: bool) -> None:
        kind = ReportKind.SUCCESS if ok else ReportKind.FAILURE
        probe = self._probing.pop(dep_id, False)
        report = breaker_report(self.lanes[dep_id], kind, self.policies[dep_id], probe=probe)
        self._pending[dep_id].append(report)

    async def flush(self, dep_id: str) -> None:
        """Send the reports not yet sent (a tick that formed no batch still tells what it saw)."""
        if self._pending[dep_id]:
            await self.admit(dep_id)
