"""Tenants' credits and usage: topping up, reading balances, and the per-day usage counters.

Reservations and settlements happen inside the job scripts (``llm_router.ledger_lua``); this module
is what people and reports call: ``llm-router credits add|show`` and ``llm-router usage``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from redis.asyncio import Redis

from llm_router.errors import InvalidRequest
from llm_router.keys import METERED_KEY, credits_key, usage_key

NANOS = 1_000_000_000


def usd_to_nanos(amount: str | float | Decimal) -> int:
    try:
        value = Decimal(str(amount))
    except InvalidOperation:
        raise InvalidRequest(f"'{amount}' is not an amount in USD", param="amount") from None
    if not value.is_finite():
        raise InvalidRequest(f"'{amount}' is not an amount in USD", param="amount")
    return int((value * NANOS).to_integral_value())


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
    def usd(name: str) -> float:
        return int(raw.get(name.encode(), b"0")) / NANOS

    return Balance(
        tenant=tenant,
        balance=usd("balance"),
        reserved=usd("reserved"),
        available=usd("balance") - usd("reserved"),
        spent=usd("spent"),
        added=usd("added"),
    )


class Ledger:
    """Credits and usage of every tenant, in Redis."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def add(self, tenant: str, amount_usd: str | float | Decimal) -> Balance:
        """Top up (or, with a negative amount, correct) a tenant's credit; the tenant is metered
        from now on."""
        nanos = usd_to_nanos(amount_usd)
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
                        cost=c.get("cost", 0) / NANOS,
                    )
                )
        return rows


def _day_number(day: dt.date) -> int:
    return (day - dt.date(1970, 1, 1)).days
