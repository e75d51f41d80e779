"""An endpoint's gate, step by step: its concurrency, its queue, its breaker (open, half-open probe,
doubled cooldown, closed again) and which answers count against it."""

from __future__ import annotations

import pytest

from config.settings import Settings
from worker.webhooks.endpoints import Endpoint, Verdict
from worker.webhooks.sender import Answer

SETTINGS = Settings(
    _env_file=None,
    webhook_endpoint_concurrency=2,
    webhook_endpoint_queue=3,
    webhook_breaker_failures=3,
    webhook_breaker_cooldown_s=10,
    webhook_breaker_max_cooldown_s=25,
)
OK, DOWN, BUSY, REFUSED = (
    Answer(200, 5.0),
    Answer(None, 5.0, "cannot connect"),
    Answer(429, 5.0),
    Answer(400, 5.0),
)


def test_concurrency_then_the_queue_then_redis() -> None:
    ep = Endpoint("https://h.example.com", SETTINGS)
    verdicts = []
    for _ in range(6):
        v = ep.admit(100.0)
        verdicts.append(v)
        if v is Verdict.SEND:
            ep.in_flight += 1
        elif v is Verdict.WAIT:
            ep.waiting.append(object())
    assert verdicts == [Verdict.SEND] * 2 + [Verdict.WAIT] * 3 + [Verdict.PUT_OFF]
    assert ep.put_off_until >= 101.0  # when the queue should have drained, a second at least
    ep.in_flight -= 1
    assert ep.can_send()


@pytest.mark.parametrize(
    ("answers", "opens"),
    [
        ([DOWN, DOWN, DOWN], True),
        ([BUSY, BUSY, BUSY], True),  # 429s: overloaded
        ([DOWN, DOWN, OK, DOWN], False),  # in a row only
        ([REFUSED, REFUSED, REFUSED, REFUSED], False),  # a 4xx is an answer: the receiver is there
        ([Answer(None, 0.0, "refused: private", refused=True)] * 4, False),  # our guard, not them
    ],
)
def test_what_opens_the_breaker(answers: list[Answer], opens: bool) -> None:
    ep = Endpoint("https://h.example.com", SETTINGS)
    for a in answers:
        ep.done(a, 100.0)
    assert (not ep.closed) == opens


def test_open_then_one_probe_then_closed_or_longer() -> None:
    ep = Endpoint("https://h.example.com", SETTINGS)
    for _ in range(3):
        ep.done(DOWN, 100.0)
    assert ep.admit(105.0) is Verdict.PUT_OFF and ep.put_off_until == 110.0
    assert ep.admit(110.5) is Verdict.SEND  # half-open: the probe
    assert ep.admit(110.5) is Verdict.WAIT  # one probe at a time
    ep.done(DOWN, 111.0)  # the probe failed: twice the cooldown
    assert ep.open_until == 131.0 and ep.admit(120.0) is Verdict.PUT_OFF
    assert ep.admit(131.0) is Verdict.SEND
    ep.done(DOWN, 131.0)
    assert ep.open_until == 156.0  # capped at the max cooldown (25 s)
    assert ep.admit(156.0) is Verdict.SEND
    ep.done(OK, 156.5)  # the probe answered: closed, cooldown back to its start
    assert ep.closed and ep.failures == 0 and ep.cooldown_s == 10
    assert ep.admit(157.0) is Verdict.SEND
