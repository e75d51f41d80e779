"""Fault rules and latency: which request gets which misbehaviour, decided per request.

A rule matches a request by credential (the exact API key) and model, while it is inside its
time window (``after_s`` .. ``after_s + for_s`` seconds after the rule was added), has not used
up its ``count``, and wins its ``probability`` roll. Rules are checked in the order they were
added: ``latency`` rules add their delay and evaluation continues; the first other matching rule
wins and ends evaluation. Every matching rule that fires uses one of its ``count``.

``truncated`` sends a 200 whose body stops halfway through its Content-Length, then closes the
connection (a cut-off transfer, unlike ``malformed`` whose short body is complete).
``content_filter`` answers as the vendor does when its safety system withholds an answer: OpenAI
a 400 ``content_policy_violation``, Anthropic a 200 with ``stop_reason: refusal`` and no content,
Gemini a 200 whose ``promptFeedback.blockReason`` is ``SAFETY`` and which has no candidates.

Mid-stream kinds (``STREAM_KINDS``) spoil a streamed answer after its first ``after_chunks`` events
(SSE events, whatever they carry) went out intact: ``cut`` closes the connection with no terminal
event, ``stall`` sends nothing for ``stall_s`` seconds and then goes on (or, with ``stall_then:
close``, closes; with ``after_chunks: 0`` it is a first token ``stall_s`` late), ``stream_error``
sends an error event in the format's own shape (picked by ``status`` and ``error_code`` like a
``status`` fault's body) and ends the stream, ``malformed_event`` sends one event whose JSON is cut
short and then the rest of the stream intact. They only match streamed requests: a plain request
passes them by without using up their ``count``, unless the rule says ``stream: false``, which
applies the same fault to a plain answer's body: ``cut`` truncates it, ``stall`` stops it halfway
for ``stall_s``, ``malformed_event`` sends it malformed. ``echo_key`` makes a ``status`` or
``stream_error`` fault's message quote the request's API key.

``stream`` (true or false) restricts any rule to streamed or plain requests. ``refuse_prefill``
matches only a request that ends with a partial answer to continue (an assistant prefill) and
answers it the format's 400, as a model without prefill does; other requests pass it by.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

FaultKind = Literal[
    "status",
    "hang",
    "reset",
    "malformed",
    "truncated",
    "latency",
    "content_filter",
    "cut",
    "stall",
    "stream_error",
    "malformed_event",
    "refuse_prefill",
]
STREAM_KINDS = frozenset({"cut", "stall", "stream_error", "malformed_event"})


class FaultRule(BaseModel):
    """One misbehaviour to inject; see the module docstring for how rules are matched."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    credential: str | None = None
    """API key to match exactly; None matches any."""
    model: str | None = None
    """Requested model to match exactly; None matches any."""
    stream: bool | None = None
    """Match only streamed (true) or only plain (false) requests; None matches both."""
    kind: FaultKind
    status: int = Field(500, ge=400, le=599)
    """kind=status: the HTTP status, answered with the vendor's error body for it."""
    retry_after: float | None = Field(None, ge=0)
    """Seconds to put in a ``Retry-After`` header (kind=status)."""
    retry_after_date: str | None = None
    """kind=status: a ``Retry-After`` header given as an HTTP date (wins over ``retry_after``)."""
    error_code: str | None = None
    """kind=status: the vendor error code the body carries (``context_length_exceeded``,
    ``content_policy_violation``, Gemini ``API_KEY_INVALID``...); each format renders it its way."""
    probability: float = Field(1.0, ge=0, le=1)
    after_s: float = Field(0, ge=0)
    """The rule starts applying this many seconds after it was added."""
    for_s: float | None = Field(None, ge=0)
    """...and stops ``for_s`` seconds later; None = forever."""
    count: int | None = Field(None, ge=0)
    """Fire at most this many times; None = unlimited."""
    latency_ms: float = Field(0, ge=0)
    """kind=latency: extra delay before answering."""
    hang_s: float = Field(3600, ge=0)
    """kind=hang: how long to hold the request before closing the connection unanswered."""
    after_chunks: int = Field(0, ge=0)
    """kind=cut/stall/stream_error/malformed_event: how many events go out intact first."""
    stall_s: float = Field(3600, ge=0)
    """kind=stall: how long the stream goes quiet."""
    stall_then: Literal["continue", "close"] = "continue"
    """kind=stall: what happens after the stall: the rest of the stream, or a closed connection."""
    echo_key: bool = False
    """kind=status/stream_error: the error's message quotes the API key the request sent, as
    vendors do ("Incorrect API key provided: sk-…"), so tests can prove it never comes to rest."""


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do to one request: wait ``delay_s``, then apply ``rule`` (None = answer normally)."""

    delay_s: float
    rule: FaultRule | None


@dataclass(slots=True)
class _Entry:
    rule: FaultRule
    added_at: float
    fired: int = 0


class FaultBook:
    """The active rules plus the baseline latency, with the per-rule state they need."""

    def __init__(
        self,
        rules: Iterable[FaultRule] = (),
        *,
        latency_ms: tuple[float, float] = (0, 0),
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._seed = seed
        self._rng = random.Random(seed)
        self._latency_lo, self._latency_hi = latency_ms
        self._entries: list[_Entry] = []
        self.add(rules)

    def add(self, rules: Iterable[FaultRule], *, replace: bool = False) -> None:
        """Activate ``rules`` now (their time windows start at this call)."""
        now = self._clock()
        fresh = [_Entry(rule, now) for rule in rules]
        self._entries = fresh if replace else [*self._entries, *fresh]

    def clear(self) -> None:
        """Drop every rule and restart the random sequence, as if freshly configured."""
        self._entries = []
        self._rng = random.Random(self._seed)

    def describe(self) -> list[dict[str, Any]]:
        """The active rules as JSON-ready dicts, each with how often it fired and its age."""
        now = self._clock()
        return [
            {**e.rule.model_dump(), "fired": e.fired, "age_s": round(now - e.added_at, 3)}
            for e in self._entries
        ]

    def decide(
        self, credential: str | None, model: str | None, *, stream: bool = False, prefill: bool = False
    ) -> Decision | None:
        """The fault plan for one request; None when it should be answered at once, normally."""
        if not self._entries and self._latency_hi <= 0:
            return None
        delay = self._baseline_delay()
        now = self._clock()
        for entry in self._entries:
            rule = entry.rule
            if not _matches(rule, credential, model) or not _active(entry, now):
                continue
            if rule.stream is not None and rule.stream != stream:
                continue
            if rule.kind in STREAM_KINDS and not stream and rule.stream is not False:
                continue
            if rule.kind == "refuse_prefill" and not prefill:
                continue
            if rule.probability < 1 and self._rng.random() >= rule.probability:
                continue
            entry.fired += 1
            if rule.kind == "latency":
                delay += rule.latency_ms / 1000
                continue
            return Decision(delay, rule)
        return Decision(delay, None) if delay > 0 else None

    def _baseline_delay(self) -> float:
        lo, hi = self._latency_lo, self._latency_hi
        if hi <= 0:
            return 0.0
        return (lo if lo >= hi else self._rng.uniform(lo, hi)) / 1000


def _matches(rule: FaultRule, credential: str | None, model: str | None) -> bool:
    return (rule.credential is None or rule.credential == credential) and (
        rule.model is None or rule.model == model
    )


def _active(entry: _Entry, now: float) -> bool:
    rule = entry.rule
    if rule.count is not None and entry.fired >= rule.count:
        return False
    age = now - entry.added_at
    if age < rule.after_s:
        return False
    return rule.for_s is None or age < rule.after_s + rule.for_s
