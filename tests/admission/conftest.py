"""Admission fixtures: worker processes on the rig's catalog (or the shipped one), a producer on the
same queue, and the simulator's capacity rules dropped after each test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from config.catalog import Catalog
from config.settings import Settings
from llm_router.testing.redis_server import RedisServer
from llm_router.testing.worker_procs import Fleet
from producer.producer import Producer
from tests.admission.rig import KEYS, catalog_spec, set_capacity, worker_env


@pytest.fixture(scope="session")
def adm_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("admission") / "catalog.yaml"
    path.write_text(yaml.safe_dump(catalog_spec()))
    return path


@pytest.fixture
def queue() -> str:
    return f"admission-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def fleet(
    redis_server: RedisServer, sim: Any, adm_catalog: Path, queue: str, tmp_path: Path
) -> Iterator[Callable[..., Fleet]]:
    """``fleet(**env)``: a fleet of workers on the rig's catalog with extra settings."""
    fleets: list[Fleet] = []

    def make(**extra: str) -> Fleet:
        f = Fleet(worker_env(redis_server, sim.url, adm_catalog, queue, **extra), tmp_path)
        fleets.append(f)
        return f

    yield make
    for f in fleets:
        f.stop_all()


@pytest.fixture
async def producer_a(
    redis_server: RedisServer, queue: str, adm_catalog: Path, sim: Any
) -> AsyncIterator[Producer]:
    settings = Settings(_env_file=None, redis_url=redis_server.url, queue_name=queue, heartbeat_ttl_s=2)
    producer = await Producer.connect(settings, Catalog.from_path(adm_catalog, env=KEYS, upstream=sim.url))
    try:
        yield producer
    finally:
        await producer.close()
        await set_capacity(sim.url)
        await sim.faults()
