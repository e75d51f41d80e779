"""Per-tenant policy: one Redis hash per tenant, each key falling back to a process setting.

``llm-router tenants set TENANT key=value…`` writes it, ``llm-router tenants show TENANT`` reads it,
and every part of the system that needs a per-tenant knob reads it here, through ``TenantPolicies``
(which caches each tenant's policy a few seconds: a submit path must not pay a Redis read per job).
A knob is a row of ``KNOBS``: its type, the setting it falls back to, and what it means. A knob
added by a later feature is one more row.

Besides knobs the hash holds state a feature manages through its own commands, which ``tenants
set`` refuses: ``webhook_secret_version`` and ``webhook_previous_until`` (``llm-router webhooks
rotate``: which signing secrets sign, ``llm_router.webhooks.signing``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from config.settings import Settings
from llm_router.errors import InvalidRequest
from llm_router.keys import tenant_policy_key
from llm_router.urls import UnsafeURL, parse_url


@dataclass(frozen=True, slots=True)
class Knob:
    """One per-tenant setting: its type, the process setting it falls back to, and its meaning."""

    type: type
    setting: str
    help: str
    minimum: int | float | None = 0
    check: Callable[[Any], None] | None = None  # raises ValueError saying what is wrong


def _http_url(value: str) -> None:
    try:
        parse_url(value)
    except UnsafeURL as exc:
        raise ValueError(f"must be an http(s) URL: {exc}") from None


def _lane(value: str) -> None:
    if value not in ("now", "flex", "batch", "auto"):
        raise ValueError("must be one of now, flex, batch, auto")


KNOBS: dict[str, Knob] = {
    "max_queued": Knob(
        int, "tenant_max_queued", "jobs queued or running at once; past it, 429 too_many_queued"
    ),
    "max_images_per_job": Knob(int, "max_images_per_job", "image parts in one job"),
    "max_image_bytes_per_job": Knob(
        int, "max_image_bytes_per_job", "bytes of image data in one job (inline data, and fetched URLs)"
    ),
    "webhook_url": Knob(
        str,
        "webhook_default_url",
        "where the tenant's bulk jobs and batches without a webhook of their own report their end "
        "(`llm-router webhooks set`)",
        check=_http_url,
    ),
    "max_http_requests": Knob(
        int,
        "tenant_max_http_requests",
        "HTTP requests in progress at once on one server process; past it, 429 too_many_requests",
        minimum=1,
    ),
    "max_large_requests": Knob(
        int,
        "tenant_max_large_requests",
        "request bodies over LLM_ROUTER_SERVER_LARGE_BODY_BYTES read and parsed at once (the rest wait)",
        minimum=1,
    ),
    "max_files": Knob(int, "tenant_max_files", "files stored at once; past it, 403 quota_exceeded"),
    "max_file_bytes": Knob(
        int, "tenant_max_file_bytes", "bytes of files stored at once; past it, 403 quota_exceeded"
    ),
    "default_lane": Knob(
        str,
        "default_lane",
        "the lane of the tenant's submitted jobs that name none: now, flex, batch or auto (README Lanes)",
        check=_lane,
    ),
}


def parse_value(name: str, raw: str) -> int | float | str | bool:
    """``raw`` (from the command line) as knob ``name``'s type; ``InvalidRequest`` naming it if not."""
    knob = KNOBS.get(name)
    if knob is None:
        raise InvalidRequest(
            f"unknown tenant setting {name!r}; known: {', '.join(sorted(KNOBS))}", param=name
        )
    try:
        if knob.type is bool:
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            value: Any = raw.lower() in ("true", "1", "yes")
        else:
            value = knob.type(raw)
    except ValueError:
        raise InvalidRequest(f"{name} takes a {knob.type.__name__}, not {raw!r}", param=name) from None
    if knob.minimum is not None and isinstance(value, int | float) and value < knob.minimum:
        raise InvalidRequest(f"{name} must be at least {knob.minimum}", param=name)
    if knob.check is not None:
        try:
            knob.check(value)
        except ValueError as exc:
            raise InvalidRequest(f"{name} {exc}", param=name) from None
    return value


class TenantPolicy:
    """One tenant's effective knobs: what it set, else the process settings."""

    def __init__(self, tenant: str, stored: dict[str, str], settings: Settings) -> None:
        self.tenant = tenant
        self.stored = stored
        self._settings = settings

    def get(self, name: str) -> Any:
        knob = KNOBS[name]
        raw = self.stored.get(name)
        if raw is None:
            return getattr(self._settings, knob.setting)
        return parse_value(name, raw)

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """Every knob with its effective value and whether the tenant set it."""
        return {
            name: {"value": self.get(name), "set": name in self.stored, "help": knob.help}
            for name, knob in sorted(KNOBS.items())
        }


class TenantPolicies:
    """Reads and writes tenants' policies; reads are cached ``cache_s`` seconds per process, and a
    process that calls ``refresh`` every so often (the HTTP server does) keeps the policies of the
    tenants it served lately read ahead of their requests."""

    def __init__(self, redis: Redis, settings: Settings, *, cache_s: float = 5.0) -> None:
        self.redis = redis
        self.settings = settings
        self.cache_s = cache_s
        self._cache: dict[str, tuple[float, TenantPolicy]] = {}
        self._asked: dict[str, float] = {}  # tenant -> when a caller last read its policy

    async def get(self, tenant: str) -> TenantPolicy:
        now = time.monotonic()
        self._asked[tenant] = now
        hit = self._cache.get(tenant)
        if hit is not None and now - hit[0] < self.cache_s:
            return hit[1]
        raw = await self.redis.hgetall(tenant_policy_key(tenant))
        policy = TenantPolicy(tenant, {k.decode(): v.decode() for k, v in raw.items()}, self.settings)
        if len(self._cache) > 10_000:  # many tenants: keep memory bounded
            self._cache.clear()
            self._asked.clear()
            self._asked[tenant] = now
        self._cache[tenant] = (now, policy)
        return policy

    async def refresh(self, within_s: float) -> None:
        """Read again, in one round trip, the cached policies of the tenants read within
        ``within_s``: a tenant sending a request every few seconds found its policy stale every
        time, and paid a round trip before its submit. A policy read meanwhile is left as it is (it
        is newer than this read)."""
        begun = time.monotonic()
        for tenant, asked in list(self._asked.items()):
            if begun - asked > within_s:
                del self._asked[tenant]
                self._cache.pop(tenant, None)
        tenants = [t for t in self._asked if t in self._cache]
        if not tenants:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for tenant in tenants:
                pipe.hgetall(tenant_policy_key(tenant))
            raws = await pipe.execute()
        for tenant, raw in zip(tenants, raws, strict=True):
            hit = self._cache.get(tenant)
            if hit is not None and hit[0] > begun:
                continue
            values = {k.decode(): v.decode() for k, v in raw.items()}
            self._cache[tenant] = (begun, TenantPolicy(tenant, values, self.settings))

    async def set(self, tenant: str, values: dict[str, str]) -> TenantPolicy:
        """Set knobs (validated first: nothing is written when one is wrong); an empty value unsets."""
        parsed = {name: parse_value(name, raw) for name, raw in values.items() if raw != ""}
        unset = [name for name, raw in values.items() if raw == ""]
        for name in unset:
            if name not in KNOBS:
                parse_value(name, "")  # the unknown-knob error
        async with self.redis.pipeline(transaction=True) as pipe:
            if parsed:
                pipe.hset(tenant_policy_key(tenant), mapping={k: str(v) for k, v in parsed.items()})
            if unset:
                pipe.hdel(tenant_policy_key(tenant), *unset)
            await pipe.execute()
        self._cache.pop(tenant, None)
        return await self.get(tenant)
