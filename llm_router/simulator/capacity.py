"""Capacity: a provider that answers 429 above N concurrent calls, as an overloaded one does.

A capacity rule matches requests by credential and model (exact; None matches any), like a fault
rule; while ``max_concurrent`` of its requests are being served (latency and streaming included),
the next one gets the format's 429 at once (with a ``Retry-After`` header when ``retry_after`` is
set), counted as "429" in the call log. Each rule keeps its own statistics since it was set: calls
in flight now, the peak, the time-weighted mean in flight, served and rejected counts.

It wraps the chat handlers (``limited``), so the request pipeline and its fault rules are
untouched: a rejected request never reaches them; an admitted one gets whatever they decide.
Rules are set at run time (``POST /_sim/capacity``, ``GET`` to read them back with their
statistics, ``DELETE`` to drop them) or in-process (``SimServer.app[CAPACITY].set``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llm_router.simulator.state import STATE
from llm_router.simulator.wire import Rejection, WireFormat

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class CapacityRule(BaseModel):
    """How many concurrent requests a credential (and model) is served before it gets 429s."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    credential: str | None = None
    model: str | None = None
    max_concurrent: int = Field(ge=1)
    retry_after: float | None = Field(None, ge=0)
    """Seconds to put in the 429's ``Retry-After`` header; None sends none."""


class CapacityUpdate(BaseModel):
    """Body of ``POST /_sim/capacity``."""

    model_config = ConfigDict(extra="forbid")

    rules: list[CapacityRule]
    replace: bool = True


@dataclass(slots=True)
class _Gate:
    rule: CapacityRule
    since: float = field(default_factory=time.monotonic)
    in_flight: int = 0
    peak: int = 0
    served: int = 0
    rejected: int = 0
    _area: float = 0.0  # in-flight x seconds, for the time-weighted mean
    _at: float = field(default_factory=time.monotonic)

    def _advance(self) -> None:
        now = time.monotonic()
        self._area += self.in_flight * (now - self._at)
        self._at = now

    def enter(self) -> bool:
        self._advance()
        if self.in_flight >= self.rule.max_concurrent:
            self.rejected += 1
            return False
        self.in_flight += 1
        self.served += 1
        self.peak = max(self.peak, self.in_flight)
        return True

    def leave(self) -> None:
        self._advance()
        self.in_flight -= 1

    def describe(self) -> dict[str, Any]:
        self._advance()
        elapsed = max(self._at - self.since, 1e-9)
        return {
            **self.rule.model_dump(),
            "in_flight": self.in_flight,
            "peak": self.peak,
            "mean_in_flight": round(self._area / elapsed, 3),
            "served": self.served,
            "rejected": self.rejected,
            "age_s": round(elapsed, 3),
        }


class CapacityBook:
    """The capacity rules of one simulator, with their live counts."""

    def __init__(self) -> None:
        self._gates: list[_Gate] = []

    def set(self, rules: list[CapacityRule], *, replace: bool = True) -> None:
        fresh = [_Gate(rule) for rule in rules]
        self._gates = fresh if replace else [*self._gates, *fresh]

    def describe(self) -> list[dict[str, Any]]:
        return [g.describe() for g in self._gates]

    def gate(self, credential: str | None, model: str | None) -> _Gate | None:
        """The first rule that matches, or None (no limit)."""
        for gate in self._gates:
            rule = gate.rule
            if (rule.credential is None or rule.credential == credential) and (
                rule.model is None or rule.model == model
            ):
                return gate
        return None

    def __bool__(self) -> bool:
        return bool(self._gates)


CAPACITY = web.AppKey("llm_router_simulator_capacity", CapacityBook)


def limited(handler: Handler, fmt: WireFormat) -> Handler:
    """``handler`` behind the app's capacity rules (a request over its rule's limit gets a 429)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        book = request.app[CAPACITY]
        if not book:
            return await handler(request)
        raw = await request.read()  # aiohttp keeps the body: the handler reads it again for free
        try:
            credential: str | None = fmt.authenticate(request)
        except Rejection:
            credential = None
        model = fmt.peek_model(request, raw)
        gate = book.gate(credential, model)
        if gate is None:
            return await handler(request)
        if not gate.enter():
            request.app[STATE].calls.record(credential, model, "429")
            response = fmt.error(Rejection(429, model=model))
            if gate.rule.retry_after is not None:
                response.headers["Retry-After"] = f"{gate.rule.retry_after:g}"
            return response
        try:
            return await handler(request)
        finally:
            gate.leave()

    return handle


def add_capacity_routes(app: web.Application) -> None:
    """The book on the app, and its ``/_sim/capacity`` endpoints."""
    app[CAPACITY] = CapacityBook()
    app.router.add_post("/_sim/capacity", _set)
    app.router.add_get("/_sim/capacity", _list)
    app.router.add_delete("/_sim/capacity", _clear)


async def _set(request: web.Request) -> web.Response:
    try:
        update = CapacityUpdate.model_validate_json(await request.read())
    except ValidationError as exc:
        message = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
        return _json({"error": {"message": message, "type": "invalid_request"}}, status=400)
    book = request.app[CAPACITY]
    book.set(update.rules, replace=update.replace)
    return _json({"rules": book.describe()})


async def _list(request: web.Request) -> web.Response:
    return _json({"rules": request.app[CAPACITY].describe()})


async def _clear(request: web.Request) -> web.Response:
    request.app[CAPACITY].set([])
    return _json({"rules": []})


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")
