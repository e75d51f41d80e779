"""Tenants' credits and usage: topping up, reading balances, and the per-day usage counters.

Reservations and settlements happen inside the job scripts (``llm_router.ledger_lua``); this module
is what people and reports call: ``llm-router credits add|show`` and ``llm-router usage``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any

from redis.asyncio import Redis

from config.cost import nanos_to_usd, usd_to_nanos
from llm_router.errors import InvalidRequest
from llm_router.keys import METERED_KEY, credits_key, usage_key


@dataclass(frozen=True, slots=True)
class Balance:
    """A tenant's credit in USD: ``available`` = ``balance`` - ``reserved``; ``spent`` is the ledger
    (the sum of every settled job's cost)."""

    tenant: str
    balance: float
    reserved: float
    available: float
    spent: float
    added: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class UsageRow:
    day: str
    tenant: str
    model: str
    jobs: int
    failed: int
    prompt_tokens: int
    completion_tokens: int
    cost: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _balance(tenant: str, raw: dict[bytes, bytes]) -> Balance:
    def nanos(name: str) -> int:
        return int(raw.get(name.encode(), b"0"))

    return Balance(
        tenant=tenant,
        balance=nanos_to_usd(nanos("balance")),
        reserved=nanos_to_usd(nanos("reserved")),
        available=nanos_to_usd(nanos("balance") - nanos("reserved")),  # subtracted exactly, then shown
        spent=nanos_to_usd(nanos("spent")),
        added=nanos_to_usd(nanos("added")),
    )


class Ledger:
    """Credits and usage of every tenant, in Redis."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def add(self, tenant: str, amount_usd: str | float | Decimal) -> Balance:
        """Top up (or, with a negative amount, correct) a tenant's credit; the tenant is metered
        from now on."""
        try:
            nanos = usd_to_nanos(amount_usd)
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="amount") from None
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(credits_key(tenant), "balance", nanos)
            pipe.hincrby(credits_key(tenant), "added", nanos)
            pipe.hincrby(credits_key(tenant), "reserved", 0)
            pipe.sadd(METERED_KEY, tenant)  # the credits-reserved gauge sums over these, never a SCAN
            pipe.hgetall(credits_key(tenant))
            *_, raw = await pipe.execute()
        return _balance(tenant, raw)

    async def show(self, tenant: str) -> Balance | None:
        """The tenant's credit, or ``None`` when it has none (it is not metered)."""
        raw = await self.redis.hgetall(credits_key(tenant))
        return _balance(tenant, raw) if raw else None

    async def usage(
        self, *, tenant: str | None = None, since: dt.date | None = None, until: dt.date | None = None
    ) -> list[UsageRow]:
        """Jobs, tokens and cost per tenant, model and UTC day, oldest day first."""
        now_s, _ = await self.redis.time()
        today = int(now_s) // 86400
        first = _day_number(since) if since else today - 30
        last = min(_day_number(until), today) if until else today
        days = list(range(first, last + 1))
        async with self.redis.pipeline(transaction=False) as pipe:
            for day in days:
                pipe.hgetall(usage_key(day))
            raws = await pipe.execute()
        rows: list[UsageRow] = []
        for day, raw in zip(days, raws, strict=True):
            cells: dict[tuple[str, str], dict[str, int]] = {}
            for key, value in raw.items():
                who, _, rest = key.decode().partition("|")
                model, _, field = rest.rpartition("|")
                if tenant is not None and who != tenant:
                    continue
                cells.setdefault((who, model), {})[field] = int(value)
            date = (dt.date(1970, 1, 1) + dt.timedelta(days=day)).isoformat()
            for (who, model), c in sorted(cells.items()):
                rows.append(
                    UsageRow(
                        day=date,
                        tenant=who,
                        model=model,
                        jobs=c.get("jobs", 0),
                        failed=c.get("failed", 0),
                        prompt_tokens=c.get("prompt", 0),
                        completion_tokens=c.get("completion", 0),
                        cost=nanos_to_usd(c.get("cost", 0)),
                    )
                )
        return rows


def _day_number(day: dt.date) -> int:
    return (day - dt.date(1970, 1, 1)).days
