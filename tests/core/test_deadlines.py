"""``Deadlines``: ``asyncio.timeout``'s behaviour, with one loop timer per tick however many blocks
wait in it."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from llm_router.deadlines import Deadlines


async def test_a_block_past_its_deadline_raises_timeout_error_within_a_tick() -> None:
    deadlines = Deadlines(tick_s=0.05)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(TimeoutError):
        async with deadlines.after(0.1) as deadline:
            await asyncio.sleep(5)
    took = loop.time() - start
    assert deadline.expired
    assert 0.1 <= took < 0.1 + 0.05 + 0.1, took  # the tick, and a busy machine's slack
    assert deadlines.pending == 0


async def test_a_block_done_in_time_leaves_no_timer() -> None:
    deadlines = Deadlines()
    async with deadlines.after(10) as deadline:
        assert deadlines.pending == 1
        await asyncio.sleep(0)
    assert not deadline.expired
    assert deadlines.pending == 0


async def test_a_thousand_blocks_in_one_tick_share_one_timer_and_all_expire() -> None:
    deadlines = Deadlines(tick_s=0.05)
    when = asyncio.get_running_loop().time() + 0.2
    outcomes: list[str] = []

    async def one() -> None:
        try:
            async with deadlines.at(when):
                await asyncio.sleep(5)
        except TimeoutError:
            outcomes.append("timeout")

    tasks = [asyncio.create_task(one()) for _ in range(1000)]
    await asyncio.sleep(0)  # each has entered its block
    assert deadlines.pending == 1
    await asyncio.gather(*tasks)
    assert outcomes == ["timeout"] * 1000
    assert deadlines.pending == 0


async def test_blocks_that_leave_early_cancel_their_ticks_timer() -> None:
    deadlines = Deadlines(tick_s=0.05)
    loop = asyncio.get_running_loop()
    handles = []
    for _ in range(20):
        async with deadlines.at(loop.time() + 0.05):
            (slot,) = deadlines._slots.values()
            handles.append(slot.handle)
            await asyncio.sleep(0)
    assert deadlines.pending == 0
    assert all(h is not None and h.cancelled() for h in handles)


async def test_a_cancel_from_outside_stays_a_cancel() -> None:
    deadlines = Deadlines()

    async def body() -> None:
        async with deadlines.after(10):
            await asyncio.sleep(5)

    task = asyncio.create_task(body())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert deadlines.pending == 0


async def test_a_cancel_from_outside_as_the_deadline_expires_stays_a_cancel() -> None:
    """As ``asyncio.timeout``: the deadline and an outside cancel in the same loop turn; the task
    was asked twice, so the block lets the ``CancelledError`` through."""
    deadlines = Deadlines(tick_s=0.05)
    loop = asyncio.get_running_loop()
    when = loop.time() + 0.05
    inside = asyncio.Event()

    async def body() -> None:
        async with deadlines.at(when):
            inside.set()
            await asyncio.sleep(5)

    task = asyncio.create_task(body())
    await inside.wait()
    # cancel the task in the same loop turn as the tick's timer fires
    loop.call_at(deadlines._slots[next(iter(deadlines._slots))].handle.when(), task.cancel)  # type: ignore[union-attr]
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_nested_blocks_the_outer_expiring_first_raise_from_the_outer() -> None:
    deadlines = Deadlines(tick_s=0.05)
    inner_saw: list[type[BaseException]] = []
    with pytest.raises(TimeoutError):
        async with deadlines.after(0.1) as outer:
            try:
                async with deadlines.after(10) as inner:
                    await asyncio.sleep(5)
            except BaseException as exc:
                inner_saw.append(type(exc))
                raise
    assert outer.expired and not inner.expired
    assert inner_saw == [asyncio.CancelledError]  # the inner one passes the outer's cancel on
    assert deadlines.pending == 0


async def test_nested_blocks_the_inner_expiring_first_raise_from_the_inner() -> None:
    deadlines = Deadlines(tick_s=0.05)
    async with deadlines.after(10) as outer:
        with pytest.raises(TimeoutError):
            async with deadlines.after(0.1) as inner:
                await asyncio.sleep(5)
        await asyncio.sleep(0)  # the task is not left cancelled: it goes on
    assert inner.expired and not outer.expired
    assert deadlines.pending == 0


async def test_a_deadline_already_past_fires_at_the_next_turn() -> None:
    deadlines = Deadlines()
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError):
        async with deadlines.at(loop.time() - 1):
            await asyncio.sleep(1)


def test_a_new_loop_does_not_wait_on_a_closed_loops_timer() -> None:
    """Tests run several loops in one process: a tick left pending by a loop closed mid-block is
    not the one a block on the next loop joins (the loops share the monotonic clock)."""
    deadlines = Deadlines(tick_s=0.05)
    old = uvloop.new_event_loop()
    when = old.time() + 0.3

    async def hang() -> None:
        async with deadlines.at(when):
            await asyncio.sleep(5)

    async def abandon() -> None:
        old.create_task(hang())
        await asyncio.sleep(0.01)

    old.run_until_complete(abandon())
    old.close()  # its task never finished: its tick stays in ``deadlines``
    assert deadlines.pending == 1

    async def fresh() -> float:
        with pytest.raises(TimeoutError):
            async with deadlines.at(when):
                await asyncio.sleep(5)
        return asyncio.get_running_loop().time()

    ended = uvloop.run(asyncio.wait_for(fresh(), 2))
    assert when <= ended < when + 0.5


async def test_a_deadline_is_entered_once() -> None:
    deadline = Deadlines().after(1)
    async with deadline:
        pass
    with pytest.raises(RuntimeError):
        async with deadline:
            pass
