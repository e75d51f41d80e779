"""Each receiver URL as the deliverer sees it: how many attempts are in flight, which deliveries wait
in memory for a free one, and its breaker. Kept in the one process that delivers (the role's
holder), so none of it costs Redis anything.

A slow receiver holds at most ``webhook_endpoint_concurrency`` attempts and queues at most
``webhook_endpoint_queue`` deliveries; the rest stay in Redis, due again when the queue should
have drained. A dead one (``webhook_breaker_failures`` failures in a row: no answer, 429, 5xx)
opens its breaker: its deliveries are put off until the cooldown ends, then one probe goes; a
success closes it, a failure doubles the cooldown (up to ``webhook_breaker_max_cooldown_s``). Other
endpoints, another tenant's included, never wait behind it.
"""

from __future__ import annotations

from collections import deque
from enum import Enum
from typing import Any

from config.settings import Settings
from worker.webhooks.sender import Answer

MIN_PUT_OFF_S = 1.0


class Verdict(Enum):
    SEND = "send"
    WAIT = "wait"  # in this endpoint's queue, for the next free attempt
    PUT_OFF = "put_off"  # back to Redis, due at ``Endpoint.put_off_until``


class Endpoint:
    """One receiver URL: attempts in flight, deliveries waiting, breaker state (monotonic times)."""

    __slots__ = (
        "cooldown_s",
        "failures",
        "in_flight",
        "latency_s",
        "open_until",
        "probing",
        "put_off_until",
        "settings",
        "url",
        "waiting",
    )

    def __init__(self, url: str, settings: Settings) -> None:
        self.url = url
        self.settings = settings
        self.in_flight = 0
        self.waiting: deque[Any] = deque()
        self.failures = 0  # in a row
        self.open_until = 0.0  # 0: closed; in the future: open; in the past: half-open
        self.cooldown_s = settings.webhook_breaker_cooldown_s
        self.probing = False
        self.latency_s = 0.05  # a running estimate, for how long a queue takes to drain
        self.put_off_until = 0.0

    @property
    def closed(self) -> bool:
        return self.open_until == 0.0

    def admit(self, now: float) -> Verdict:
        """What to do with one more delivery for this endpoint now."""
        if not self.closed and now < self.open_until:
            self.put_off_until = self.open_until
            return Verdict.PUT_OFF
        if self.closed:
            if self.in_flight < self.settings.webhook_endpoint_concurrency:
                return Verdict.SEND
        elif not self.probing:  # half-open: one probe at a time
            self.probing = True
            return Verdict.SEND
        if len(self.waiting) < self.settings.webhook_endpoint_queue:
            return Verdict.WAIT
        drain_s = len(self.waiting) * self.latency_s / self.settings.webhook_endpoint_concurrency
        self.put_off_until = now + max(drain_s, MIN_PUT_OFF_S)
        return Verdict.PUT_OFF

    def can_send(self) -> bool:
        """Whether a waiting delivery may start now (after an attempt ended)."""
        return self.closed and self.in_flight < self.settings.webhook_endpoint_concurrency

    def done(self, answer: Answer, now: float) -> None:
        """An attempt ended: its latency and its breaker outcome."""
        if answer.latency_ms:
            self.latency_s = 0.8 * self.latency_s + 0.2 * answer.latency_ms / 1000
        if answer.refused:
            return  # our guard's refusal says nothing about the receiver
        was_probe, self.probing = self.probing, False
        if not answer.breaks:
            self.failures = 0
            self.open_until = 0.0
            self.cooldown_s = self.settings.webhook_breaker_cooldown_s
            return
        self.failures += 1
        if was_probe:
            self.cooldown_s = min(self.cooldown_s * 2, self.settings.webhook_breaker_max_cooldown_s)
            self.open_until = now + self.cooldown_s
        elif self.closed and self.failures >= self.settings.webhook_breaker_failures:
            self.open_until = now + self.cooldown_s

    @property
    def idle(self) -> bool:
        return not self.in_flight and not self.waiting
