"""The worker's side of fleet-wide breakers and rate limits: the routing table, report kinds, retries.

The state itself lives in Redis and changes only in the Lua of ``llm_router.circuit_breaker``; this
module turns the catalog and settings into what those scripts read (the routing table a worker
publishes) and what the worker does locally: what an error means for a breaker, backoff, and a
retry budget that keeps same-deployment retries under a share of calls.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections import deque

from config.catalog import Catalog, Deployment
from config.settings import Settings
from llm_router.circuit_breaker import Policy, ReportKind
from llm_router.errors import RouterError
from llm_router.keys import routing_key

_DISABLING = frozenset({"auth_failed", "upstream_not_found", "provider_out_of_credits"})


def routing_table(catalog: Catalog, settings: Settings) -> tuple[str, dict[str, str]]:
    """The Redis key and value of this worker's routing table: model →
    ``strategy;dep|rpm|tpm|probes|initial|max|weight;…``.

    Workers with the same enabled deployments and limits share one table (the key is a digest of
    it); the start script reads it to admit a job's route without the worker knowing the route yet.
    A ``cost`` model's deployments are listed by price (per weight), cheapest first: the script then
    takes them in that order, as it does an ``ordered`` model's in catalog order.
    """
    table: dict[str, str] = {}
    for model_id, model in catalog.models.items():
        deps = catalog.deployments(model_id)
        if model.strategy == "cost":
            deps = sorted(deps, key=lambda d: blended_price(d) / d.weight)  # stable: ties keep catalog order
        entries = []
        for d in deps:
            policy = Policy.for_deployment(d, settings)
            entries.append(
                f"{d.id}|{d.rpm or 0}|{d.tpm or 0}|{policy.probes}|{policy.conc_initial}|{policy.conc_max}"
                f"|{d.weight:g}"
            )
        if entries:
            table[model_id] = f"{model.strategy};" + ";".join(entries)
    digest = hashlib.blake2b(repr(sorted(table.items())).encode(), digest_size=8).hexdigest()
    return routing_key(digest), table


def blended_price(dep: Deployment) -> float:
    """What the ``cost`` strategy ranks a deployment by: its first tier's price per token, input and
    output blended 3:1 (a typical request reads more than it writes)."""
    tier = dep.price.tiers[0]
    return (3 * tier.input + tier.output) / 4


def report_kind(exc: RouterError | None) -> ReportKind:
    """What a call's outcome (``None``: it succeeded) means for its deployment's breaker."""
    if exc is None:
        return ReportKind.SUCCESS
    if exc.code == "rate_limited":
        return ReportKind.LIMITED
    if exc.code in _DISABLING:
        return ReportKind.DISABLED
    return ReportKind.FAILURE if exc.spec.breaker else ReportKind.NEUTRAL


class RetryBudget:
    """Same-deployment retries allowed while they stay under ``ratio`` of this worker's calls in
    the last minute. Every worker keeping to it keeps the fleet under it too, without a Redis trip."""

    def __init__(self, ratio: float, window_s: float = 60.0) -> None:
        self.ratio = ratio
        self.window_s = window_s
        self._calls: deque[float] = deque()
        self._retries: deque[float] = deque()

    def _trim(self, now: float) -> None:
        for q in (self._calls, self._retries):
            while q and q[0] < now - self.window_s:
                q.popleft()

    def call(self) -> None:
        self._calls.append(time.monotonic())

    def allow_retry(self) -> bool:
        now = time.monotonic()
        self._trim(now)
        if len(self._retries) + 1 > self.ratio * max(len(self._calls), 1) + 1:
            return False
        self._retries.append(now)
        return True


def backoff_s(attempt: int, base: float, cap: float) -> float:
    """Full-jitter exponential backoff: uniform over [0, min(cap, base · 2^attempt)]."""
    return random.uniform(0, min(cap, base * 2**attempt))
