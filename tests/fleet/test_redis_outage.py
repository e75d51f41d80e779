"""A sick Redis never hangs a caller nor loses its handle (issue 18).

Real processes (a server, a worker, the CLI) on a private redis-server with AOF, which the tests stop
(SIGSTOP: it keeps its connections and answers nothing, like a partition or a stuck primary) and kill
(SIGKILL, then a restart from its AOF). ``LLM_ROUTER_REDIS_TIMEOUT_S`` is 1 s here: every answer
during the outage must come within that plus one second of the request (or of the outage, for a
request that was waiting when it began), as 503 ``redis_unavailable`` with ``Retry-After`` and, for a
job already accepted, its id; the job goes on, and a retry with the same ``Idempotency-Key`` gets its
answer, paid once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis as sync_redis
from redis.asyncio import Redis

from llm_router.credits import Ledger
from llm_router.keys import credits_key, workers_key
from llm_router.testing.redis_server import RedisServer, free_port
from llm_router.testing.server_proc import ServerProcess
from llm_router.testing.worker_procs import WorkerProcess
from producer.http.auth import ApiKeys

from .conftest import fleet_env

TIMEOUT_S = 1.0
BOUND_S = TIMEOUT_S + 1.0  # the target: the setting plus one second
LEASE_S = 10.0  # the default lease: a job a lost claim reply took is run again once it lapses
JOB_ID_HEADER = "x-llm-router-job-id"
SLOW_MODEL = "gpt-4.1-mini"  # the simulator answers it slowly in these tests


def chat(model: str = "gpt-4o-mini", **extra: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}], **extra}


@dataclass
class Stack:
    redis: RedisServer
    server: ServerProcess
    worker: WorkerProcess
    key: str
    tenant: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def stop_redis(self) -> None:
        assert self.redis.proc is not None
        self.redis.proc.send_signal(signal.SIGSTOP)

    def resume_redis(self) -> None:
        assert self.redis.proc is not None
        self.redis.proc.send_signal(signal.SIGCONT)


@pytest.fixture(scope="module")
def stack(sim: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("outage")
    data = logs / "redis"
    data.mkdir()
    redis = RedisServer(appendonly=True, data_dir=data).start()
    env = fleet_env(
        sim.url,
        redis_url=redis.url,
        LLM_ROUTER_REDIS_TIMEOUT_S=str(TIMEOUT_S),
        LLM_ROUTER_HEARTBEAT_INTERVAL_S="0.3",
        LLM_ROUTER_HEARTBEAT_TTL_S="1.5",
    )
    tenant = f"outage-{uuid.uuid4().hex[:6]}"

    async def setup() -> str:
        client = Redis.from_url(redis.url)
        try:
            await Ledger(client).add(tenant, "100")
            return await ApiKeys(client).create(tenant)
        finally:
            await client.aclose()

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:  # a loop may be running here
        key = pool.submit(asyncio.run, setup()).result()
    server = ServerProcess(env, logs / "server.log")
    worker = WorkerProcess(env, logs / "worker.log")
    try:
        server.wait_ready()
        probe = sync_redis.Redis.from_url(redis.url)
        deadline = time.monotonic() + 30
        while not probe.zcard(workers_key(env["LLM_ROUTER_QUEUE_NAME"] + ":interactive")):
            assert worker.alive() and time.monotonic() < deadline, worker.log_tail()
            time.sleep(0.05)
        probe.close()
        yield Stack(redis, server, worker, key, tenant)
    finally:
        server.stop()
        worker.stop()
        if redis.proc is not None:
            redis.proc.send_signal(signal.SIGCONT)
        redis.stop()


async def _post(
    s: aiohttp.ClientSession, url: str, body: Any, headers: dict[str, str]
) -> aiohttp.ClientResponse:
    r = await s.post(url, json=body, headers=headers)
    await r.read()
    return r


async def _chat_ok(stack: Stack, s: aiohttp.ClientSession) -> None:
    r = await _post(s, f"{stack.server.url}/v1/chat/completions", chat(), stack.headers)
    assert r.status == 200, await r.text()


async def _timed(coro: Any) -> tuple[float, Any]:
    t0 = time.monotonic()
    result = await coro
    return time.monotonic() - t0, result


def _unavailable(r: aiohttp.ClientResponse, body: bytes, status: int = 503) -> None:
    assert r.status == status, (r.status, body[:300])
    assert int(r.headers["Retry-After"]) >= 1
    error = orjson.loads(body)["error"]
    code = error.get("code") if isinstance(error.get("code"), str) else error["details"][0]["reason"].lower()
    assert code == "redis_unavailable", error


async def test_a_frozen_redis_answers_every_caller_within_the_timeout(
    stack: Stack, sim: Any, until: Any
) -> None:
    url = stack.server.url
    await sim.faults({"kind": "latency", "model": SLOW_MODEL, "latency_ms": 2500})
    try:
        async with aiohttp.ClientSession() as s:
            await until(lambda: _ready(s, url), what="server ready")
            await _chat_ok(stack, s)
            r = await _post(s, f"{url}/v1/jobs", chat(), stack.headers)
            done_id = (await r.json())["id"]
            waiting_key = f"waiting-{uuid.uuid4().hex[:8]}"
            waiting = asyncio.create_task(
                _timed(
                    _read_all(
                        s,
                        f"{url}/v1/chat/completions",
                        chat(SLOW_MODEL),
                        {**stack.headers, "Idempotency-Key": waiting_key},
                    )
                )
            )
            streaming = asyncio.create_task(
                _timed(
                    _read_all(s, f"{url}/v1/chat/completions", chat(SLOW_MODEL, stream=True), stack.headers)
                )
            )
            await asyncio.sleep(0.5)  # both accepted, both waiting on their jobs

            freeze_s = 3.5  # longer than the heartbeats' TTL (1.5 s)
            stack.stop_redis()
            frozen_at = time.monotonic()
            try:
                fresh = await _create_key_while_frozen(stack)
                gemini = f"{url}/v1beta/models/gpt-4o-mini:generateContent"
                calls = {
                    "get a job": s.get(f"{url}/v1/jobs/{done_id}", headers=stack.headers),
                    "submit a job": s.post(f"{url}/v1/jobs", json=chat(), headers=stack.headers),
                    "chat": s.post(f"{url}/v1/chat/completions", json=chat(), headers=stack.headers),
                    "stream": s.post(
                        f"{url}/v1/chat/completions", json=chat(stream=True), headers=stack.headers
                    ),
                    "gemini": s.post(
                        gemini, json={"contents": [{"parts": [{"text": "hi"}]}]}, headers=stack.headers
                    ),
                    "messages": s.post(
                        f"{url}/v1/messages",
                        json={
                            "model": "gpt-4o-mini",
                            "max_tokens": 8,
                            "messages": [{"role": "user", "content": "hi"}],
                        },
                        headers=stack.headers,
                    ),
                    "files": s.get(f"{url}/v1/files", headers=stack.headers),
                    "batches": s.get(f"{url}/v1/batches", headers=stack.headers),
                    "an uncached key": s.get(
                        f"{url}/v1/models", headers={"Authorization": f"Bearer {fresh}"}
                    ),
                }
                answers = await asyncio.gather(*(_timed(_read(c)) for c in calls.values()))
                ready_wait, (ready, _) = await _timed(_read(s.get(f"{url}/readyz")))
                (waited, (r_wait, body_wait)), (streamed, (r_stream, body_stream)) = await asyncio.gather(
                    waiting, streaming
                )
                waited_since_freeze = time.monotonic() - frozen_at  # an upper bound for both
                await asyncio.sleep(max(0.0, freeze_s - (time.monotonic() - frozen_at)))
            finally:
                stack.resume_redis()
            resumed_at = time.monotonic()

            report = {name: round(w, 2) for name, (w, _) in zip(calls, answers, strict=True)}
            print(f"\nwaits during the freeze (s): {report}; readyz {ready_wait:.2f}")
            for name, (wait, (r, body)) in zip(calls, answers, strict=True):
                # Anthropic's overload is 529 overloaded_error: what its SDKs retry
                _unavailable(r, body, 529 if name == "messages" else 503)
                assert wait <= BOUND_S, (name, wait)
            # each front answers the outage in its own shape
            bodies = {name: orjson.loads(body) for name, (_, (_, body)) in zip(calls, answers, strict=True)}
            assert bodies["messages"]["type"] == "error", bodies["messages"]  # Anthropic's
            assert bodies["gemini"]["error"]["status"] == "UNAVAILABLE", bodies["gemini"]  # Google's
            assert bodies["chat"]["error"]["type"], bodies["chat"]  # OpenAI's
            assert ready.status == 503 and ready_wait <= BOUND_S
            # the two calls waiting on their jobs when Redis stopped: 503, their job named
            _unavailable(r_wait, body_wait)
            assert r_wait.headers[JOB_ID_HEADER] == waiting_key
            _unavailable(r_stream, body_stream)
            assert r_stream.headers.get(JOB_ID_HEADER)
            assert waited_since_freeze <= BOUND_S + 0.5, (waited, streamed, waited_since_freeze)

            # heartbeats expired during the freeze: the workers are not taken for dead
            wait_after, _ = await _timed(_chat_ok(stack, s))
            since = time.monotonic() - resumed_at
            print(f"first chat after the freeze: {wait_after:.2f} s, {since:.2f} s after the resume")
            # the retry of the call that got 503 finds its job: its answer, paid once
            r = await _post(
                s,
                f"{url}/v1/chat/completions",
                chat(SLOW_MODEL),
                {**stack.headers, "Idempotency-Key": waiting_key},
            )
            assert r.status == 200 and r.headers[JOB_ID_HEADER] == waiting_key
            record = await (await s.get(f"{url}/v1/jobs/{waiting_key}", headers=stack.headers)).json()
            assert record["status"] == "succeeded" and record["runs"] == 1
    finally:
        await sim.faults()


async def test_redis_killed_mid_chat_then_a_retry_gets_the_first_jobs_answer(
    stack: Stack, sim: Any, until: Any
) -> None:
    url = stack.server.url
    key = f"kill-{uuid.uuid4().hex[:8]}"
    headers = {**stack.headers, "Idempotency-Key": key}
    await sim.faults({"kind": "latency", "model": SLOW_MODEL, "latency_ms": 2500})
    try:
        async with aiohttp.ClientSession() as s:
            await until(lambda: _ready(s, url), what="server ready")
            before = _calls(await sim.calls(), SLOW_MODEL)
            first = asyncio.create_task(
                _timed(_post(s, f"{url}/v1/chat/completions", chat(SLOW_MODEL), headers))
            )
            await asyncio.sleep(0.7)  # accepted and running
            await asyncio.sleep(1.2)  # past the AOF's once-a-second fsync
            stack.redis.kill()
            killed_at = time.monotonic()
            _, r = await first
            body = await r.read()
            since = time.monotonic() - killed_at
            print(f"\nthe chat waiting when Redis died answered {r.status} {since:.2f} s after")
            _unavailable(r, body)
            assert r.headers[JOB_ID_HEADER] == key  # the handle: the client can find its job
            assert time.monotonic() - killed_at <= BOUND_S + 0.5
            await asyncio.to_thread(stack.redis.start)

            async def answered() -> aiohttp.ClientResponse | None:
                r = await _post(s, f"{url}/v1/chat/completions", chat(SLOW_MODEL), headers)
                return r if r.status == 200 else None

            r = await until(answered, timeout=20, what="the retry answered")
            assert r.headers[JOB_ID_HEADER] == key
            answer = await r.json()
            assert answer["choices"][0]["message"]["content"]
            record = await (await s.get(f"{url}/v1/jobs/{key}", headers=stack.headers)).json()
        assert record["status"] == "succeeded"
        assert _calls(await sim.calls(), SLOW_MODEL) - before == 1  # one provider call: one job
        client = Redis.from_url(stack.redis.url)
        try:
            # nothing stays reserved. The module's first test's calls made during its freeze may still
            # hold theirs: a submit Redis ran on waking, a claim whose reply the worker never read
            # (held until its lease lapses, then run): each settles once it ends
            async def settled() -> bool:
                return int((await client.hgetall(credits_key(stack.tenant)))[b"reserved"]) == 0

            await until(settled, timeout=LEASE_S + 10, what="every reservation released")
        finally:
            await client.aclose()
        assert record["usage"]["cost_nanos"] > 0
    finally:
        await sim.faults()


def _calls(snapshot: dict[str, Any], model: str) -> int:
    return sum(int(row["count"]) for row in snapshot["calls"] if row["model"] == model)


async def _ready(s: aiohttp.ClientSession, url: str) -> bool:
    try:
        return (await s.get(f"{url}/readyz")).status == 200
    except aiohttp.ClientError:
        return False


async def _read(call: Any) -> tuple[aiohttp.ClientResponse, bytes]:
    r = await call
    return r, await r.read()


async def _read_all(
    s: aiohttp.ClientSession, url: str, body: Any, headers: dict[str, str]
) -> tuple[aiohttp.ClientResponse, bytes]:
    r = await s.post(url, json=body, headers=headers)
    return r, await r.read()


async def _create_key_while_frozen(stack: Stack) -> str:
    """A key the server never saw (nothing cached it): any string, since the lookup cannot answer."""
    return "lr-" + uuid.uuid4().hex


# -- the CLI ----------------------------------------------------------------------------------------


class BlackHole:
    """A TCP listener that accepts connections and never answers: a frozen Redis, as clients see it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.sock = socket.create_server(("127.0.0.1", self.port), backlog=128)
        self.held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def test_cli_commands_give_up_on_a_silent_redis(sim: Any, tmp_path: Path) -> None:
    hole = BlackHole()
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(orjson.dumps(chat()) + b"\n")
    env = fleet_env(
        sim.url, redis_url=f"redis://127.0.0.1:{hole.port}/0", LLM_ROUTER_REDIS_TIMEOUT_S=str(TIMEOUT_S)
    )
    commands = {
        "status": ["status", "some-job"],
        "submit": ["submit", str(jobs)],
        "credits": ["credits", "show", "acme"],
        "keys": ["keys", "list"],
        "tenants": ["tenants", "show", "acme"],
        "health": ["health"],
    }
    try:
        started = {
            name: (
                time.monotonic(),
                subprocess.Popen(
                    [sys.executable, "-m", "llm_router.cli", *args],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                ),
            )
            for name, args in commands.items()
        }
        results = {}
        for name, (t0, proc) in started.items():
            try:
                out, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise AssertionError(f"`llm-router {name}` hung on a silent Redis") from None
            results[name] = (time.monotonic() - t0, proc.returncode, out + err)
    finally:
        hole.close()
    print("\nCLI on a silent Redis (s, exit):", {n: (round(w, 1), c) for n, (w, c, _) in results.items()})
    for name, (_, code, text) in results.items():
        if name == "health":
            assert code == 4 and text.startswith("down"), text
        else:
            assert code == 1 and "redis_unavailable" in text, (name, text)
