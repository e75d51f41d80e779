"""Chaos at the HTTP edge (issue 18): clients that leave mid-stream, a Redis that stops answering, a
Redis killed and restarted, all during one run of chats through the server.

CI size: 120 chat clients, 24 at a time, a 3 s SIGSTOP of Redis with ``LLM_ROUTER_REDIS_TIMEOUT_S=1``
(``make chaos``: 2,000 clients, 64 at a time, 20 s with the default 5 s). Half the chats stream; a
tenth of the clients leave after their first chunk (their jobs are cancelled, or had ended); the
others retry what did not answer (503, a broken connection) with the same ``Idempotency-Key`` until
they have an answer, as an SDK would. Redis is stopped once a third of the clients are done and
SIGKILLed (then restarted from its AOF) at two thirds. Then: every job ended (none queued, running
or deferred: 0 stuck), every client that stayed has its answer and its job (0 lost), the tenant's
ledger equals the sum of its records' costs with nothing left reserved, and no HTTP call waited
during the freeze longer than the setting plus one second.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from redis.asyncio import Redis

from llm_router.credits import Ledger
from llm_router.keys import credits_key, record_key, scoped_id, workers_key
from llm_router.testing.redis_server import RedisServer
from llm_router.testing.server_proc import ServerProcess
from llm_router.testing.sim_env import simulated_env
from llm_router.testing.worker_procs import Fleet
from producer.http.auth import ApiKeys

CLIENTS = int(os.environ.get("LLM_ROUTER_CHAOS_CLIENTS", "120"))
CONCURRENCY = int(os.environ.get("LLM_ROUTER_CHAOS_CONCURRENCY", "24" if CLIENTS <= 500 else "64"))
FREEZE_S = float(os.environ.get("LLM_ROUTER_CHAOS_FREEZE_S", "3"))
REDIS_TIMEOUT_S = float(os.environ.get("LLM_ROUTER_CHAOS_REDIS_TIMEOUT_S", "1"))
RUN_LIMIT_S = 120 + CLIENTS * 0.1
TERMINAL = {"succeeded", "failed", "cancelled"}


class Run:
    """What the clients saw: each HTTP attempt's start and end, and each client's outcome."""

    def __init__(self) -> None:
        self.attempts: list[tuple[float, float, int]] = []
        self.outcomes: dict[str, str] = {}  # key → answered | left | error:<code>
        self.done = 0
        self.freeze: tuple[float, float] | None = None

    def longest_wait_in_freeze(self) -> float:
        """The longest any HTTP call waited while Redis was stopped (from the later of its start and
        the freeze's start)."""
        assert self.freeze is not None
        start, end = self.freeze
        waits = [e - max(s, start) for s, e, _ in self.attempts if e > start and s < end]
        return max(waits, default=0.0)


async def _client(s: aiohttp.ClientSession, url: str, i: int, headers: dict[str, str], run: Run) -> None:
    key = f"chaos-{i}-{uuid.uuid4().hex[:8]}"
    stream = i % 2 == 0
    leaves = i % 10 == 0  # a tenth of the clients: streamed, and gone after their first chunk
    body = {
        "model": "gpt-4o-mini",
        "max_tokens": 40,
        "messages": [{"role": "user", "content": f"chaos client {i}"}],
        "stream": stream,
    }
    give_up = time.monotonic() + RUN_LIMIT_S
    while time.monotonic() < give_up:
        t0 = time.monotonic()
        status = 0
        try:
            async with s.post(
                f"{url}/v1/chat/completions", json=body, headers={**headers, "Idempotency-Key": key}
            ) as r:
                status = r.status
                if leaves and r.status == 200:
                    await r.content.readline()
                    r.close()  # gone, mid-stream
                    run.outcomes[key] = "left"
                    return
                data = await r.read()
                retry_after = float(r.headers.get("Retry-After") or 0.5)
        except (aiohttp.ClientError, TimeoutError):
            data, retry_after = b"", 0.5
        finally:
            run.attempts.append((t0, time.monotonic(), status))
        outcome = _outcome(status, data, stream)
        if outcome is not None:
            run.outcomes[key] = outcome
            return
        await asyncio.sleep(min(retry_after, 1.0))  # as an SDK would, with the same key
    run.outcomes[key] = "gave up"


def _outcome(status: int, data: bytes, stream: bool) -> str | None:
    """The client's final outcome, or ``None`` when it should retry (Redis away, no worker seen yet,
    the connection broken, a stream cut off by Redis)."""
    if status == 200 and not stream:
        return "answered"
    if status == 200:
        events = [line[6:] for line in data.split(b"\n") if line.startswith(b"data: ")]
        if not events or events[-1] != b"[DONE]":
            return None  # the connection broke mid-stream
        errors = [orjson.loads(e).get("error") for e in events[:-1] if b'"error"' in e]
        codes = [e.get("code") for e in errors if isinstance(e, dict)]
        if "redis_unavailable" in codes:
            return None
        return f"error:{codes[-1]}" if codes else "answered"
    if status in (0, 503):
        return None
    return f"error:{orjson.loads(data)['error']['code']}"


async def test_clients_that_leave_a_stopped_redis_and_a_killed_one_lose_nothing(
    sim: Any, tmp_path: Path, until: Any
) -> None:
    data_dir = tmp_path / "redis"
    data_dir.mkdir()
    redis = RedisServer(appendonly=True, data_dir=data_dir).start()
    queue = f"chaos-http-{uuid.uuid4().hex[:6]}"
    env = simulated_env(os.environ, redis_url=redis.url, sim_url=sim.url)
    env.update(
        LLM_ROUTER_QUEUE_NAME=queue,
        LLM_ROUTER_REDIS_TIMEOUT_S=str(REDIS_TIMEOUT_S),
        LLM_ROUTER_HEARTBEAT_INTERVAL_S="0.3",
        LLM_ROUTER_HEARTBEAT_TTL_S="1.5",
        LLM_ROUTER_LEASE_S="2",
        LLM_ROUTER_RETRY_BACKOFF_S="0.2",
        LLM_ROUTER_RETRY_BACKOFF_MAX_S="0.5",
        LLM_ROUTER_LOG_LEVEL="ERROR",
    )
    env.pop("LLM_ROUTER_AUTH_DISABLED", None)
    tenant = f"chaos-{uuid.uuid4().hex[:6]}"
    client = Redis.from_url(redis.url)
    await Ledger(client).add(tenant, "1000")
    headers = {"Authorization": f"Bearer {await ApiKeys(client).create(tenant)}"}
    await client.aclose()
    fleet = Fleet(env, tmp_path)
    server = ServerProcess(env, tmp_path / "server.log")
    run = Run()
    await sim.faults(
        {"kind": "stall", "after_chunks": 2, "stall_s": 0.8, "probability": 0.6},
        {"kind": "latency", "latency_ms": 150},
    )
    try:
        for _ in range(2):
            fleet.start(max_jobs=50)
        server.wait_ready()
        probe = Redis.from_url(redis.url)
        await until(lambda: probe.zcard(workers_key(f"{queue}:interactive")), what="workers")
        await probe.aclose()

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
            gate = asyncio.Semaphore(CONCURRENCY)

            async def one(i: int) -> None:
                async with gate:
                    await _client(s, server.url, i, headers, run)
                    run.done += 1

            clients = asyncio.gather(*(one(i) for i in range(CLIENTS)))
            faults = asyncio.create_task(_faults(redis, run, until))
            await clients
            await faults

        # every job ends (0 stuck), and its record exists (0 lost)
        client = Redis.from_url(redis.url)
        keys = list(run.outcomes)

        async def all_ended() -> bool:
            statuses = [await client.hget(record_key(scoped_id(tenant, k)), "status") for k in keys]
            return all(s is not None and s.decode() in TERMINAL for s in statuses)

        await until(all_ended, timeout=60, what="every job ended")
        records = [await client.hgetall(record_key(scoped_id(tenant, k))) for k in keys]
        ledger = await client.hgetall(credits_key(tenant))
        await client.aclose()
    finally:
        await sim.faults()
        server.stop()
        fleet.stop_all()
        if redis.proc is not None:
            redis.proc.send_signal(signal.SIGCONT)
        redis.stop()

    outcomes = Counter(o.split(":")[0] for o in run.outcomes.values())
    statuses = Counter(r[b"status"].decode() for r in records)
    left = [k for k, o in run.outcomes.items() if o == "left"]
    left_statuses = Counter(r[b"status"].decode() for k, r in zip(keys, records, strict=True) if k in left)
    spent = sum(int(orjson.loads(r[b"usage"])["cost_nanos"]) for r in records if b"usage" in r)
    longest = run.longest_wait_in_freeze()
    retried = len(run.attempts) - len(run.outcomes)
    print(
        f"\nchaos at the edge: {CLIENTS} clients, outcomes {dict(outcomes)}, jobs {dict(statuses)}; "
        f"the clients that left: {dict(left_statuses)}; {retried} retried calls; "
        f"longest wait during the {FREEZE_S:g} s freeze {longest:.2f} s (setting {REDIS_TIMEOUT_S:g} s)"
    )
    assert len(run.outcomes) == CLIENTS and outcomes["gave up"] == 0
    assert outcomes["left"] == len(range(0, CLIENTS, 10))
    assert set(statuses) <= TERMINAL
    assert left_statuses["cancelled"] >= 1  # leaving stopped jobs (some had ended before the close)
    assert outcomes["answered"] >= (CLIENTS - outcomes["left"]) * 0.95
    assert int(ledger[b"spent"]) == spent and int(ledger[b"reserved"]) == 0
    assert longest <= REDIS_TIMEOUT_S + 1.0, longest


async def _faults(redis: RedisServer, run: Run, until: Any) -> None:
    """One freeze once a third of the clients are done, one kill and restart at two thirds."""
    await until(lambda: run.done >= CLIENTS // 3, timeout=RUN_LIMIT_S, what="a third done")
    assert redis.proc is not None
    redis.proc.send_signal(signal.SIGSTOP)
    start = time.monotonic()
    await asyncio.sleep(FREEZE_S)
    redis.proc.send_signal(signal.SIGCONT)
    run.freeze = (start, time.monotonic())
    await until(lambda: run.done >= CLIENTS * 2 // 3, timeout=RUN_LIMIT_S, what="two thirds done")
    redis.kill()
    await asyncio.sleep(0.5)
    await asyncio.to_thread(redis.start)
