"""Deliveries survive what jobs survive: a receiver down for longer than a Redis restart (AOF) still
gets its delivery, and a worker SIGKILLed in the middle of an attempt leaves it to another worker.
Each test has its own redis-server and worker processes."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from config.catalog import Catalog
from llm_router.keys import WEBHOOKS_ROLE, role_key, scoped_id
from llm_router.testing.redis_server import RedisServer, free_port
from llm_router.testing.worker_procs import Fleet
from llm_router.webhooks.outbox import JOB, Outbox
from producer.producer import Producer

from .conftest import HANG, Receiver, job, secret_of, settings_of, webhook_env

T = "durable"


@dataclass
class Private:
    server: RedisServer
    fleet: Fleet
    producer: Producer
    redis: Redis
    outbox: Outbox

    async def log(self, job_id: str) -> Any:
        try:
            return await self.outbox.log(JOB, scoped_id(T, job_id))
        except Exception:  # Redis restarting
            return None


@pytest.fixture
async def private(sim: Any, sim_catalog: Catalog, tmp_path: Path) -> AsyncIterator[Private]:
    data = tmp_path / "redis"
    data.mkdir()
    server = RedisServer(appendonly=True, data_dir=data).start()
    env = webhook_env(server.url, sim.url, f"durable-{uuid.uuid4().hex[:6]}")
    producer = await Producer.connect(settings_of(env), sim_catalog)
    redis = Redis.from_url(server.url)
    fleet = Fleet(env, tmp_path)
    try:
        yield Private(server, fleet, producer, redis, Outbox(redis))
    finally:
        fleet.stop_all()
        await producer.close()
        await redis.aclose()
        server.stop()


async def _attempts(p: Private, job_id: str) -> list[dict[str, Any]]:
    log = await p.log(job_id)
    return log.attempts if log else []


async def test_a_receiver_down_across_a_redis_restart_still_gets_its_delivery(
    private: Private, until
) -> None:
    p = private
    p.fleet.start()
    await until(p.producer.live_workers, timeout=20, what="a worker")
    receiver = Receiver(free_port())  # nothing listens on its port yet: connections are refused
    sub = await p.producer.submit(job("for a receiver that is away", {"url": receiver.url("late")}), tenant=T)
    await until(lambda: _count(p, sub.job_id, 2), timeout=15, what="two refused attempts")

    await asyncio.to_thread(p.server.restart)  # every due delivery is in the AOF
    restarted = time.time()
    await until(lambda: _after(p, sub.job_id, restarted), timeout=15, what="an attempt after the restart")
    await receiver.start()
    try:
        log = await until(lambda: _state(p, sub.job_id, "delivered"), timeout=15, what="the delivery")
        assert all(w.alive() for w in p.fleet.procs), [w.log_tail() for w in p.fleet.procs]
    finally:
        await receiver.stop()
    (call,) = receiver.calls["late"]
    assert call.verified(secret_of(T))["data"]["id"] == sub.job_id
    outcomes = [(a["status"], a["outcome"]) for a in log.attempts]
    assert outcomes[-1] == (200, "delivered") and len(outcomes) >= 4
    assert all(o == (None, "retrying") for o in outcomes[:-1])
    assert "cannot connect" in log.attempts[0]["error"]
    assert any(a["at"] < restarted for a in log.attempts) and any(a["at"] > restarted for a in log.attempts)


async def test_a_worker_killed_mid_attempt_leaves_the_delivery_to_another(
    private: Private, receiver: Receiver, until
) -> None:
    p = private
    first = p.fleet.start()
    await until(lambda: p.redis.get(role_key(WEBHOOKS_ROLE)), timeout=20, what="the first worker's role")
    second = p.fleet.start()  # live, but the first holds the role
    await until(lambda: _live(p, 2), timeout=20, what="the second worker")
    receiver.plan("crash", HANG)  # the first attempt never gets an answer
    sub = await p.producer.submit(job("delivered through a crash", {"url": receiver.url("crash")}), tenant=T)
    await until(lambda: receiver.calls["crash"], timeout=10, what="the first attempt")

    first.proc.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    await until(lambda: len(receiver.calls["crash"]) == 2, timeout=15, what="the delivery again")
    again_s = time.monotonic() - killed
    log = await until(lambda: _state(p, sub.job_id, "delivered"), timeout=10, what="the log")
    assert second.alive()

    cut, delivered = receiver.calls["crash"]
    assert cut.headers["webhook-id"] == delivered.headers["webhook-id"] and cut.body == delivered.body
    assert delivered.verifies(secret_of(T))
    assert [(a["attempt"], a["status"]) for a in log.attempts] == [(1, 200)]  # the cut one never wrote
    # the role moves within its TTL (1 s), the delivery is due when its lease (3 s) ends
    assert again_s < 1 + 3 + 3, again_s


async def _count(p: Private, job_id: str, n: int) -> bool:
    return len(await _attempts(p, job_id)) >= n


async def _after(p: Private, job_id: str, at: float) -> bool:
    return any(a["at"] > at for a in await _attempts(p, job_id))


async def _state(p: Private, job_id: str, state: str) -> Any:
    log = await p.log(job_id)
    return log if log is not None and log.state == state else None


async def _live(p: Private, n: int) -> bool:
    return await p.producer.live_workers() >= n
