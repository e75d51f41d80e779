"""Waiting for room on a deployment inside a worker (``worker.room``): woken one per slot given back,
first come first served, or at the timeout."""

from __future__ import annotations

import asyncio
import time

from worker.room import Room


async def test_each_slot_given_back_wakes_the_longest_waiter_of_that_deployment() -> None:
    room = Room()
    woken: list[str] = []

    async def wait(name: str, deps: list[str]) -> None:
        if await room.wait(deps, 5):
            woken.append(name)

    tasks = [
        asyncio.create_task(wait("first", ["a"])),
        asyncio.create_task(wait("either", ["b", "a"])),
        asyncio.create_task(wait("second", ["a"])),
    ]
    await asyncio.sleep(0.01)
    assert room.waiting() == 3
    room.freed(["a"])
    await asyncio.sleep(0.01)
    assert woken == ["first"]
    room.freed(["b"])  # "either" waits on b too: woken by b, and no longer counted on a
    await asyncio.sleep(0.01)
    room.freed(["a"])
    await asyncio.gather(*tasks)
    assert woken == ["first", "either", "second"] and room.waiting() == 0


async def test_a_wait_ends_at_its_timeout_and_a_slot_nobody_waits_for_is_not_kept() -> None:
    room = Room()
    room.freed(["a"])  # given back before anyone waited: nothing to remember
    t0 = time.monotonic()
    assert await room.wait(["a"], 0.1) is False
    assert 0.09 <= time.monotonic() - t0 < 0.5 and room.waiting() == 0
