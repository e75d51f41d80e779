"""The lease keeper is a thread beside the event loop: nothing the loop's thread does meanwhile, and
no error of its own, may end it, or every lease of the worker would lapse."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import redis

from llm_router.keys import leases_key
from llm_router.testing.redis_server import RedisServer
from worker.lease import LeaseKeeper

QUEUE = "test-lease-keeper"


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    c = redis.Redis(host="127.0.0.1", port=redis_server.port)
    c.delete(leases_key(QUEUE))
    c.zadd(leases_key(QUEUE), {"job-a": 1})  # held, its lease long lapsed: a renewal moves it
    yield c
    c.close()


def _keeper(c: redis.Redis, held: Callable[[], list[str]]) -> LeaseKeeper:
    return LeaseKeeper(
        client=c,
        queue_name=QUEUE,
        worker_id="test-worker",
        held=held,
        inflight={},
        lease_s=10,
        interval_s=0.05,
        heartbeat_ttl_s=10,
    )


def test_a_copy_cut_short_by_the_loop_thread_is_taken_again(client: redis.Redis) -> None:
    calls = []

    def held() -> list[str]:  # list(worker.tasks) while the loop's thread adds a job to it
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("dictionary changed size during iteration")
        return ["job-a"]

    _keeper(client, held).beat()
    assert (client.zscore(leases_key(QUEUE), "job-a") or 0) > time.time() * 1000


def test_an_unexpected_error_does_not_end_the_thread(client: redis.Redis) -> None:
    calls = []

    def held() -> list[str]:
        calls.append(1)
        if len(calls) <= 150:  # past the copy's retries: the beat itself fails
            raise RuntimeError("dictionary changed size during iteration")
        return ["job-a"]

    keeper = _keeper(client, held)
    keeper.start()
    try:
        deadline = time.monotonic() + 10
        while (client.zscore(leases_key(QUEUE), "job-a") or 0) < time.time() * 1000:
            assert keeper.is_alive(), "the lease keeper's thread ended"
            assert time.monotonic() < deadline, "the lease was never renewed"
            time.sleep(0.02)
    finally:
        keeper.stop()
