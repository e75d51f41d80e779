"""Provider keys never come to rest (issue 18): an upstream that quotes our key in its error messages,
through every class of error (refusals, rate limits, server errors, errors in the middle of a
stream) and every wire format, leaves no trace of it in Redis (every value of every key), in the
server's and the worker's logs, or in any answer (the chat's, the job's record, its event stream).

Real processes on a private redis-server: the server and a worker whose keys look like real ones
(OpenAI's ``sk-proj-``, Anthropic's ``sk-ant-``, Google's ``AIza``, and one with no known shape, which
only the exact match of configured keys can catch); the simulator quotes whatever key it was sent.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis as sync_redis
from redis.asyncio import Redis

from llm_router.keys import workers_key
from llm_router.testing.redis_server import RedisServer
from llm_router.testing.server_proc import ServerProcess
from llm_router.testing.sim_env import simulated_env
from llm_router.testing.worker_procs import WorkerProcess
from producer.http.auth import ApiKeys

KEYS = {
    "OPENAI_API_KEY": "sk-proj-" + secrets.token_urlsafe(36),
    "ANTHROPIC_API_KEY": "sk-ant-api03-" + secrets.token_urlsafe(48),
    "GEMINI_API_KEY": "AIzaSy" + secrets.token_urlsafe(24)[:33],
    "AISA_API_KEY": secrets.token_hex(20),  # no vendor's shape: only the exact match catches it
}
# model → the error every provider of it answers with, quoting the key: (status, vendor error code)
PLAIN = {
    "gpt-4o-mini": (401, None),  # our key refused: auth_failed, the deployment taken out of rotation
    "claude-sonnet-4-5": (400, None),  # the caller's request refused: final
    "gemini-2.5-flash": (403, None),
    "o3": (404, None),  # upstream_not_found
    "gpt-5-mini": (429, None),  # rate limited: retried until the deadline
    "gpt-4.1": (500, None),  # a server error: retried until the deadline
    "gpt-4o": (400, "context_length_exceeded"),
}
# streamed: an error event after the first tokens, in each format
STREAMED = ["gpt-4.1-nano", "claude-haiku-4-5", "gemini-2.5-pro"]


@pytest.fixture(scope="module")
def stack(
    sim: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, Redis, str, Path]]:
    logs = tmp_path_factory.mktemp("keys-at-rest")
    redis = RedisServer().start()
    queue = f"rest-{uuid.uuid4().hex[:6]}"
    env = simulated_env(os.environ, redis_url=redis.url, sim_url=sim.url, keys=KEYS)
    env.update(
        LLM_ROUTER_QUEUE_NAME=queue,
        LLM_ROUTER_HEARTBEAT_INTERVAL_S="0.3",
        LLM_ROUTER_RETRY_BACKOFF_S="0.2",
        LLM_ROUTER_RETRY_BACKOFF_MAX_S="0.5",
        LLM_ROUTER_LOG_LEVEL="DEBUG",
        LLM_ROUTER_LOG_FORMAT="json",
    )
    env.pop("LLM_ROUTER_AUTH_DISABLED", None)
    server = ServerProcess(env, logs / "server.log")
    worker = WorkerProcess(env, logs / "worker.log")
    try:
        server.wait_ready()
        probe = sync_redis.Redis.from_url(redis.url)
        deadline = time.monotonic() + 30
        while not probe.zcard(workers_key(f"{queue}:interactive")):
            assert worker.alive() and time.monotonic() < deadline, worker.log_tail()
            time.sleep(0.05)
        probe.close()
        yield server, redis.url, queue, logs  # type: ignore[misc]
    finally:
        server.stop()
        worker.stop()
        redis.stop()


def _rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for key in KEYS.values():
        for model in STREAMED:  # first: stream rules pass plain requests by
            rules.append(
                {
                    "credential": key,
                    "model": model,
                    "kind": "stream_error",
                    "after_chunks": 2,
                    "echo_key": True,
                }
            )
        for model, (status, code) in PLAIN.items():
            rules.append(
                {
                    "credential": key,
                    "model": model,
                    "kind": "status",
                    "status": status,
                    "error_code": code,
                    "echo_key": True,
                }
            )
    return rules


async def _values(client: Redis) -> list[bytes]:
    """Every key and every value in Redis, read by type, and each key's DUMP besides."""
    out: list[bytes] = []
    async for key in client.scan_iter(count=1000):
        out.append(key)
        kind = (await client.type(key)).decode()
        if kind == "string":
            out.append(await client.get(key) or b"")
        elif kind == "hash":
            for field, value in (await client.hgetall(key)).items():
                out += [field, value]
        elif kind == "list":
            out += await client.lrange(key, 0, -1)
        elif kind == "set":
            out += list(await client.smembers(key))
        elif kind == "zset":
            out += await client.zrange(key, 0, -1)
        elif kind == "stream":
            for _, fields in await client.xrange(key):
                for field, value in fields.items():
                    out += [field, value]
        out.append(await client.dump(key) or b"")
    return out


def _leaks(text: str) -> list[str]:
    """The keys (whole, or a 12-character piece of their middle) found in ``text``."""
    found = []
    for name, key in KEYS.items():
        middle = key[len(key) // 2 - 6 : len(key) // 2 + 6]
        if key in text or middle in text:
            found.append(name)
    return found


async def test_keys_quoted_by_upstream_errors_are_never_stored_logged_or_answered(
    stack: Any, sim: Any
) -> None:
    server, redis_url, _, logs = stack
    client = Redis.from_url(redis_url)
    api_key = await ApiKeys(client).create("rest")
    headers = {"Authorization": f"Bearer {api_key}"}
    await sim.faults(*_rules())
    answers: list[str] = []
    try:
        async with aiohttp.ClientSession() as s:

            async def call(model: str, stream: bool) -> str:
                body = {
                    "model": model,
                    "max_tokens": 30,
                    "deadline_s": 3,
                    "fallbacks": [],  # each model's own deployments only: every one errs
                    "messages": [{"role": "user", "content": "tell me a story"}],
                    "stream": stream,
                }
                r = await s.post(f"{server.url}/v1/chat/completions", json=body, headers=headers)
                text = await r.text()
                job_id = r.headers["x-llm-router-job-id"]
                record = await (await s.get(f"{server.url}/v1/jobs/{job_id}", headers=headers)).text()
                events = await (await s.get(f"{server.url}/v1/jobs/{job_id}/events", headers=headers)).text()
                return "\n".join([text, record, events])

            calls = [call(m, False) for m in PLAIN] + [call(m, True) for m in STREAMED]
            answers = await asyncio.gather(*calls)
        values = await _values(client)
    finally:
        await sim.faults()
        await client.aclose()
    # the upstreams did quote the keys, and what reached the tenant says so, scrubbed
    assert sum("Incorrect API key provided: ***" in a for a in answers) >= len(PLAIN) + len(STREAMED) - 2
    assert sum('"stream_interrupted"' in a for a in answers) == len(STREAMED)
    for answer in answers:
        assert not _leaks(answer), (_leaks(answer), answer[:2000])
    stored = b"\n".join(values).decode("latin-1")
    assert "Incorrect API key provided: ***" in stored  # records and the streams' error events
    assert not _leaks(stored), _leaks(stored)
    for log in ("server.log", "worker.log"):
        text = (logs / log).read_text(errors="replace")
        assert text.strip(), log  # DEBUG: the worker logs every failure it saw
        assert not _leaks(text), (log, _leaks(text))
