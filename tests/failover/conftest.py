"""Failover fixtures: ``llm-router serve`` and a worker on the rig's catalog (``tests/failover/rig.py``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import yaml
from redis.asyncio import Redis

from config.catalog import Catalog
from config.settings import Settings
from llm_router.testing.redis_server import RedisServer
from llm_router.testing.server_proc import ServerProcess
from llm_router.testing.worker_procs import WorkerProcess
from producer.http.auth import ApiKeys
from producer.producer import Producer
from tests.failover.rig import KEYS, TENANT, Rig, catalog_spec, worker_env


@pytest.fixture(scope="session")
def failover_env(
    redis_server: RedisServer, sim: Any, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    path = tmp_path_factory.mktemp("failover") / "catalog.yaml"
    path.write_text(yaml.safe_dump(catalog_spec()))
    return worker_env(redis_server, sim.url, path)


@pytest.fixture(scope="session")
def failover_procs(
    failover_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, WorkerProcess]]:
    logs = tmp_path_factory.mktemp("failover-logs")
    server = ServerProcess(failover_env, logs / "server.log")
    worker = WorkerProcess(failover_env, logs / "worker.log")
    try:
        server.wait_ready()
        yield server, worker
    finally:
        server.stop()
        worker.stop()


@pytest.fixture
async def rig(
    failover_env: dict[str, str], failover_procs: tuple[ServerProcess, WorkerProcess], sim: Any
) -> AsyncIterator[Rig]:
    server, worker = failover_procs
    settings = Settings(
        _env_file=None,
        redis_url=failover_env["REDIS_URL"],
        queue_name=failover_env["LLM_ROUTER_QUEUE_NAME"],
        interactive_queue_name=failover_env["LLM_ROUTER_INTERACTIVE_QUEUE_NAME"],
    )
    catalog = Catalog.from_path(failover_env["LLM_ROUTER_CONFIG"], env=KEYS, upstream=sim.url)
    producer = await Producer.connect(settings, catalog, tenant=TENANT)
    redis = Redis.from_url(failover_env["REDIS_URL"])
    try:
        key = await ApiKeys(redis).create(TENANT)
        deadline = time.monotonic() + 30
        while await producer.live_workers(settings.interactive_queue_name) == 0:
            assert worker.alive(), worker.log_tail()
            assert time.monotonic() < deadline, "the worker did not start"
            await asyncio.sleep(0.05)
        yield Rig(server.url, key, producer, worker.log_path)
    finally:
        await sim.faults()
        await redis.aclose()
        await producer.close()
