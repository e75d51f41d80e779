"""One call's first-token moment, and the race of a hedged request.

A hedged interactive job (``hedge: true`` or ``hedge: {"after_ms": N}``) whose first call has not
produced a token by the deployment's learned time-to-first-token percentile (or N ms) starts a
second attempt on the model's next deployment while the first keeps going; the first attempt to
produce a token wins and the other is cancelled (``worker.route_walk`` runs the race). A streamed
call's token is its first published chunk; an unstreamed call's is its whole answer.

Each call runs with a ``CallClock`` in a context variable (one per task, so the two attempts of a
race each see their own): ``worker.streaming.stream_call`` calls ``first_token()`` just before it
publishes its first chunk, which stamps the time (the call's time to first token, a latency sample
for its deployment) and, in a race, claims the job's stream for that attempt or, if the other attempt
claimed it first, ends this one with ``HedgeLost`` before it publishes anything.
"""

from __future__ import annotations

import asyncio
import time
from contextvars import ContextVar
from dataclasses import dataclass, field


class HedgeLost(asyncio.CancelledError):
    """The other attempt of a hedge produced a token first. A cancellation (not an ``Exception``), so
    that it leaves the stream reader as a cancel does, closing the connection on its way out."""


@dataclass(slots=True)
class Race:
    """The two attempts of a hedged call; ``winner`` names the first to claim a token."""

    winner: str | None = None
    decided: asyncio.Event = field(default_factory=asyncio.Event)

    def claim(self, name: str) -> bool:
        """``name`` produced a token: True if it wins (or already had)."""
        if self.winner is None:
            self.winner = name
            self.decided.set()
        return self.winner == name


@dataclass(slots=True)
class CallClock:
    """One call: when it started, when its first token came, and the race it runs in (if hedged)."""

    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    race: Race | None = None
    name: str = ""

    def ttft_ms(self) -> float | None:
        return None if self.first_token_at is None else (self.first_token_at - self.started) * 1000


CALL: ContextVar[CallClock | None] = ContextVar("llm_router_call", default=None)


def first_token() -> None:
    """The current call is about to publish its first token (later calls change nothing)."""
    clock = CALL.get()
    if clock is None or clock.first_token_at is not None:
        return
    clock.first_token_at = time.perf_counter()
    if clock.race is not None and not clock.race.claim(clock.name):
        raise HedgeLost()


def hedge_after_s(hedge_ms: int | None, learned_ms: float, samples: int, min_samples: int) -> float | None:
    """How long a hedged job's first call runs alone: ``after_ms`` when the job gave one, else the
    deployment's learned percentile once it has ``min_samples`` samples; ``None``: no hedge."""
    if hedge_ms is None:
        return None
    if hedge_ms > 0:
        return hedge_ms / 1000
    if samples >= min_samples and learned_ms > 0:
        return learned_ms / 1000
    return None
