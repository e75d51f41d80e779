"""Timeouts for many tasks at once, at a tick's precision.

``asyncio.timeout`` schedules a loop timer per ``async with`` and cancels it on the way out: with
uvloop each is a libuv timer made, started, stopped and closed, 8 to 10 µs on a slow host, and a worker
holding a thousand calls in flight enters three of them a job (the job's timeout, its deadline, the
provider call's). Those deadlines are seconds to minutes long and a few milliseconds late is no
harm, so here every deadline falling in the same tick shares one timer: entering one is a dict
insert, leaving it a dict delete, and the timer is cancelled when its tick holds nothing more.

The semantics are ``asyncio.timeout``'s (3.11): the task is cancelled at the deadline, the
outermost expired block turns that ``CancelledError`` into ``TimeoutError``, and a cancel from
elsewhere (``task.cancel()``) stays a ``CancelledError``.
"""

from __future__ import annotations

import asyncio
import math
from types import TracebackType

TICK_S = 0.05


class Deadlines:
    """Deadlines of one event loop, grouped by tick (``TICK_S``): ``async with deadlines.after(s)``."""

    __slots__ = ("_loop", "_slots", "tick_s")

    def __init__(self, tick_s: float = TICK_S) -> None:
        self.tick_s = tick_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: dict[int, _Slot] = {}

    def after(self, delay_s: float) -> Deadline:
        """A deadline ``delay_s`` from now (it fires up to a tick late)."""
        return Deadline(self, asyncio.get_running_loop().time() + delay_s)

    def at(self, when: float) -> Deadline:
        """A deadline at ``when``, in the loop's clock (``loop.time()``)."""
        return Deadline(self, when)

    @property
    def pending(self) -> int:
        """Ticks holding a deadline: the loop timers scheduled."""
        return len(self._slots)

    def _enter(self, deadline: Deadline) -> _Slot:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new loop (tests run several): the old one's timers are gone
            self._loop, self._slots = loop, {}
        tick = math.ceil(deadline.when / self.tick_s)
        slot = self._slots.get(tick)
        if slot is None:
            slot = self._slots[tick] = _Slot(tick)
            slot.handle = loop.call_at(tick * self.tick_s, self._fire, tick)
        slot.members[deadline] = None
        return slot

    def _leave(self, deadline: Deadline, slot: _Slot) -> None:
        members = slot.members
        members.pop(deadline, None)
        if not members and self._slots.get(slot.tick) is slot:
            del self._slots[slot.tick]
            if slot.handle is not None:
                slot.handle.cancel()

    def _fire(self, tick: int) -> None:
        slot = self._slots.pop(tick, None)
        if slot is None:
            return
        for deadline in slot.members:
            deadline._expire()
        slot.members.clear()


class _Slot:
    __slots__ = ("handle", "members", "tick")

    def __init__(self, tick: int) -> None:
        self.tick = tick
        self.members: dict[Deadline, None] = {}
        self.handle: asyncio.TimerHandle | None = None


class Deadline:
    """One ``async with`` block's deadline (made by ``Deadlines.after`` or ``Deadlines.at``)."""

    __slots__ = ("_cancelling", "_deadlines", "_slot", "_task", "expired", "when")

    def __init__(self, deadlines: Deadlines, when: float) -> None:
        self._deadlines = deadlines
        self.when = when
        self.expired = False
        self._slot: _Slot | None = None
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0

    async def __aenter__(self) -> Deadline:
        if self._task is not None:
            raise RuntimeError("a Deadline is entered once")
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a Deadline is entered inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._slot = self._deadlines._enter(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        if self.expired:
            assert self._task is not None
            # ours was the cancel; another one since (the task stopped from outside) stays a cancel
            if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc_val
        elif self._slot is not None:
            self._deadlines._leave(self, self._slot)
        self._slot = None

    def _expire(self) -> None:
        self.expired = True
        self._slot = None
        assert self._task is not None
        self._task.cancel()
