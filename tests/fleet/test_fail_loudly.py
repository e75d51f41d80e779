"""Fatal errors end a worker with a non-zero status and a one-line reason on stderr (and in its log),
so a supervisor that restarts on failure brings it back and its operator sees why. Before: a worker
whose Redis was demoted, or which could not start (Redis at maxmemory), exited silently with 0."""

from __future__ import annotations

import asyncio
import time

import redis as sync_redis

from config.settings import Settings
from llm_router.testing.redis_server import RedisServer, free_port
from producer.producer import Producer

from .conftest import Cli, Procs, fleet_env

REASON = "error: redis_unusable: "


async def _live(env: dict[str, str], url: str) -> bool:
    producer = await Producer.connect(
        Settings(_env_file=None, redis_url=url, queue_name=env["LLM_ROUTER_QUEUE_NAME"])
    )
    try:
        return await producer.live_workers() >= 1
    finally:
        await producer.close()


async def _exit(cli: Cli, timeout: float) -> int:
    return await asyncio.to_thread(cli.wait, timeout)


def _logged(cli: Cli, reason: str) -> bool:
    """The reason is in the log too (a JSON line off a terminal), not only in the last line."""
    return any('"worker stopped"' in line and reason in line for line in cli.stderr().splitlines())


async def test_a_worker_whose_redis_is_demoted_exits_non_zero_with_the_reason(sim, procs: Procs, until):
    with RedisServer() as primary, RedisServer() as other:
        env = fleet_env(sim.url, redis_url=primary.url, LLM_ROUTER_REDIS_RETRY_S="1")
        worker = procs.start(env, "worker")
        await until(lambda: _live(env, primary.url), timeout=20, what="the worker's heartbeat")
        with sync_redis.Redis(port=primary.port) as r:
            r.replicaof("127.0.0.1", other.port)
        demoted = time.monotonic()
        code = await _exit(worker, 30)
        took = time.monotonic() - demoted
    assert code == 1, worker.stderr()
    assert worker.last_line().startswith(REASON + "Redis is a read-only replica"), worker.last_line()
    assert primary.url in worker.last_line()
    assert _logged(worker, "read-only replica")
    # it rode the refusal out for LLM_ROUTER_REDIS_RETRY_S (a failover behind one endpoint ends it), no longer
    assert 1 <= took < 10, (took, worker.stderr()[-4000:])


async def test_a_worker_that_cannot_start_exits_non_zero_with_the_reason(sim, procs: Procs):
    with RedisServer() as server:
        with sync_redis.Redis(port=server.port) as r:
            r.config_set("maxmemory", 1)  # every write refused: "OOM command not allowed…"
        full = procs.start(fleet_env(sim.url, redis_url=server.url), "worker")
        gone = procs.start(
            fleet_env(sim.url, redis_url=f"redis://127.0.0.1:{free_port()}/0", LLM_ROUTER_REDIS_RETRY_S="1"),
            "worker",
        )
        codes = await asyncio.gather(_exit(full, 30), _exit(gone, 30))
    assert codes == [1, 1], (full.stderr(), gone.stderr())
    assert full.last_line().startswith(REASON + "Redis refuses writes: out of memory"), full.last_line()
    assert _logged(full, "out of memory")
    assert gone.last_line().startswith(REASON + "cannot reach Redis at redis://127.0.0.1:"), gone.last_line()
    assert "within 1 s" in gone.last_line()
