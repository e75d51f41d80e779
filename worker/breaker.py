"""The worker's side of fleet-wide breakers and rate limits: policies, the routing table, outcomes.

The state itself lives in Redis and changes only in the Lua of ``llm_router.resilience_lua``; this
module turns the catalog and settings into what those scripts read (the routing table a worker
publishes, the thresholds sent with each outcome) and what the worker does locally: jitter, and a
retry budget that keeps same-deployment retries under a share of calls.
"""

from __future__ import annotations

import hashlib
import random
import re
import time
from collections import deque
from dataclasses import dataclass

from config.catalog import BreakerSpec, Catalog, Deployment
from config.settings import Settings
from llm_router.errors import RouterError
from llm_router.keys import routing_key

# outcome kinds, by what an upstream error means for the deployment
SUCCESS, FAILURE, NEUTRAL, LIMITED, DISABLED, RELEASE = "s", "f", "n", "l", "d", "r"
_DISABLING = frozenset({"auth_failed", "upstream_not_found", "provider_out_of_credits"})
_MAX_TOKENS = re.compile(rb'"max_completion_tokens":(\d+)|"max_tokens":(\d+)')


@dataclass(frozen=True, slots=True)
class Policy:
    """A deployment's breaker thresholds, in the integer units the Lua reads."""

    window_ms: int
    bucket_ms: int
    rate_pct: int
    min_calls: int
    consecutive: int
    cooldown_ms: int
    max_cooldown_ms: int
    probes: int

    @classmethod
    def for_deployment(cls, dep: Deployment, settings: Settings) -> Policy:
        spec = dep.breaker or BreakerSpec()

        def pick(name: str) -> float:
            value = getattr(spec, name)
            return float(value if value is not None else getattr(settings, f"breaker_{name}"))

        return cls(
            window_ms=int(pick("window_s") * 1000),
            bucket_ms=max(int(settings.breaker_bucket_s * 1000), 1),
            rate_pct=int(pick("failure_rate") * 100),
            min_calls=int(pick("min_calls")),
            consecutive=int(pick("consecutive")),
            cooldown_ms=int(pick("cooldown_s") * 1000),
            max_cooldown_ms=int(pick("max_cooldown_s") * 1000),
            probes=int(pick("probes")),
        )


def routing_table(catalog: Catalog, settings: Settings) -> tuple[str, dict[str, str]]:
    """The Redis key and value of this worker's routing table: model → ``dep|rpm|tpm|probes;…``.

    Workers with the same enabled deployments and limits share one table (the key is a digest of
    it); the start script reads it to admit a job's route without the worker knowing the route yet.
    """
    table: dict[str, str] = {}
    for model_id in catalog.models:
        entries = [
            f"{d.id}|{d.rpm or 0}|{d.tpm or 0}|{Policy.for_deployment(d, settings).probes}"
            for d in catalog.deployments(model_id)
        ]
        if entries:
            table[model_id] = ";".join(entries)
    digest = hashlib.blake2b(repr(sorted(table.items())).encode(), digest_size=8).hexdigest()
    return routing_key(digest), table


def estimate_tokens(request_json: bytes) -> int:
    """The admission estimate of a request's tokens: its JSON bytes / 4 plus its max output (as the Lua)."""
    n = len(request_json) // 4
    m = _MAX_TOKENS.search(request_json)
    if m:
        n += int(m.group(1) or m.group(2))
    return n


def outcome_kind(exc: RouterError | None) -> str:
    if exc is None:
        return SUCCESS
    if exc.code == "rate_limited":
        return LIMITED
    if exc.code in _DISABLING:
        return DISABLED
    return FAILURE if exc.spec.breaker else NEUTRAL


def outcome(
    dep: Deployment,
    kind: str,
    policy: Policy,
    *,
    probe: bool,
    until_ms: int = 0,
    tokens_delta: int = 0,
) -> str:
    """One outcome for the finish script (see ``resilience_lua.record_outcome``)."""
    jitter = random.randint(80, 120)  # cooldowns of many deployments must not end in step
    return (
        f"{dep.id}|{kind}|{int(probe)}|{max(until_ms, 0)}|{tokens_delta}|{dep.tpm or 0}|{policy.window_ms}|"
        f"{policy.bucket_ms}|{policy.rate_pct}|{policy.min_calls}|{policy.consecutive}|{policy.cooldown_ms}|"
        f"{policy.max_cooldown_ms}|{jitter}|{policy.probes}"
    )


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
