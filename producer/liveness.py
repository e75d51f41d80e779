"""Whether any worker serves a queue, without taking a Redis outage for a dead fleet.

Workers prove they live by writing a heartbeat to Redis every ``heartbeat_interval_s``; a producer
counts those younger than ``heartbeat_ttl_s``. While Redis is stopped or restarting nobody can write
one, so an outage longer than the TTL leaves every heartbeat expired although every worker lives,
and the first interactive call after it would be refused with ``no_workers``. Redis' own clock
cannot tell the two apart (it runs on while Redis is stopped, and the heartbeats carry the workers'
clocks), so the evidence asked for is a fresh beat: when none is live but workers beat within the
last hour and did not sign off (a worker that stops cleanly leaves the set at once), they get two
heartbeat intervals to beat again before the queue counts as served by nobody. A fleet scaled to
zero, or a queue nobody ever served, is refused at once.
"""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from config.settings import Settings
from llm_router.keys import workers_key

POLL_S = 0.1
# how long a count of live workers is believed: an interactive call asked Redis on each request. A
# worker's heartbeat outlives it by heartbeat_ttl_s (10 s) anyway, so this adds little staleness;
# "nobody" is never remembered, so a fleet coming up is seen at once
LIVE_FRESH_S = 1.0


async def live_workers(redis: Redis, settings: Settings, queue: str) -> int:
    """Workers with a live heartbeat on ``queue``, waiting out a heartbeat gap left by an outage."""
    key = workers_key(queue)
    live = await _live(redis, key, settings.heartbeat_ttl_s)
    if live or not await redis.zcard(key):
        return live
    deadline = time.monotonic() + 2 * settings.heartbeat_interval_s
    while time.monotonic() < deadline:
        await asyncio.sleep(POLL_S)
        live = await _live(redis, key, settings.heartbeat_ttl_s)
        if live:
            return live
    return 0


async def _live(redis: Redis, key: str, ttl_s: float) -> int:
    return int(await redis.zcount(key, time.time() - ttl_s, "+inf"))


class LiveWorkers:
    """``live_workers`` for one client, a count above zero remembered for ``fresh_s``."""

    def __init__(self, redis: Redis, settings: Settings, fresh_s: float = LIVE_FRESH_S) -> None:
        self.redis = redis
        self.settings = settings
        self.fresh_s = fresh_s
        self._known: dict[str, tuple[int, float]] = {}  # queue -> (count, believed until)
        self._asked: dict[str, float] = {}  # queue -> when a caller last asked

    async def count(self, queue: str) -> int:
        known = self._known.get(queue)
        now = time.monotonic()
        self._asked[queue] = now
        if known is not None and now < known[1]:
            return known[0]
        live = await live_workers(self.redis, self.settings, queue)
        if live:
            self._known[queue] = (live, time.monotonic() + self.fresh_s)
        else:
            self._known.pop(queue, None)
        return live

    async def refresh(self, within_s: float) -> None:
        """Count again, in one round trip, the queues asked about within ``within_s``, so their
        callers find a fresh count (the HTTP server's ``keep_fresh``: a caller sending a request
        every few seconds found the count stale every time, and paid a round trip before its
        submit). A queue found served by nobody is forgotten: its next caller asks, and waits out a
        heartbeat gap as ``live_workers`` does."""
        begun = time.monotonic()
        for queue, asked in list(self._asked.items()):
            if begun - asked > within_s:
                del self._asked[queue]
        queues = [q for q in self._asked if q in self._known]
        if not queues:
            return
        since = time.time() - self.settings.heartbeat_ttl_s
        async with self.redis.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.zcount(workers_key(queue), since, "+inf")
            counts = await pipe.execute()
        until = time.monotonic() + self.fresh_s
        for queue, live in zip(queues, counts, strict=True):
            if live:
                self._known[queue] = (int(live), until)
            else:
                self._known.pop(queue, None)
