"""A primary down for a minute under steady traffic: a handful of calls to it during the outage, and
all traffic back on it within 30 s of its return (both scaled by ``LLM_ROUTER_FAILOVER_SCALE``)."""

from __future__ import annotations

import asyncio
import time

from tests.failover.rig import ALPHA, Rig, scaled
from tests.failover.test_faults import MODES, Outcome, ask, question

OUTAGE_S = scaled(60)
BACK_WITHIN_S = scaled(30)
EVERY_S = scaled(1)  # steady traffic: a job a second at full size, the three ways in turn


async def test_a_recovered_primary_carries_traffic_again_within_30_s(rig: Rig, sim) -> None:
    began = time.time()  # the outage's window opens when the simulator takes the rule
    await sim.faults(
        {"credential": ALPHA, "model": "claude-sim", "kind": "status", "status": 503, "for_s": OUTAGE_S}
    )
    back = began + OUTAGE_S
    sent: list[tuple[float, asyncio.Task[Outcome]]] = []
    i = 0
    while time.time() < back + BACK_WITHIN_S + scaled(10):
        sent.append((time.time(), asyncio.create_task(ask(rig, MODES[i % 3], question()))))
        i += 1
        await asyncio.sleep(EVERY_S)
    outcomes = [(at, await task) for at, task in sent]
    assert all(out.record.status == "succeeded" and out.text for _, out in outcomes)

    # from some moment after its return, every job was answered by the primary again
    answered_by_alpha = [out.record.provider == "alpha" for _, out in outcomes]
    assert answered_by_alpha[-1]
    last_elsewhere = max(i for i, ok in enumerate(answered_by_alpha) if not ok)
    returned_at = outcomes[last_elsewhere + 1][0]
    assert returned_at - back <= BACK_WITHIN_S, (returned_at - back, BACK_WITHIN_S)

    # during the outage the dead primary got a handful of calls (the breaker's threshold and its
    # probes), not one per job
    failed = [
        a
        for _, out in outcomes
        for a in out.record.attempts
        if a.provider == "alpha" and a.outcome == "error"
    ]
    probes = [a for a in failed if a.breaker == "half_open"]
    during = sum(1 for at, _ in outcomes if at < back)
    assert probes and len(failed) <= 15 < during, (len(failed), len(probes), during)
    print(
        f"outage: {during} jobs, {len(failed)} calls to the dead primary ({len(probes)} probes); "
        f"all traffic back on it {returned_at - back:.2f} s after its return (bound {BACK_WITHIN_S} s)"
    )
