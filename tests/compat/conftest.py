"""The compatibility suite: unmodified third-party clients, used as their docs show, against a real
``llm-router serve``, a real worker process and the simulator (which answers as the providers do).

One server, one worker and the session's simulator serve every compat test. Each test is marked
``@pytest.mark.compat(client, feature, pattern)``; outcomes are recorded here and the last test
(``test_zz_readme_matrix.py``) renders the README's compatibility matrix from them.

Nothing may reach the internet: LiteLLM loads its model-cost map from its own copy
(``LITELLM_LOCAL_MODEL_COST_MAP``, set before anything imports it) and a guard refuses any connection
or name lookup of this process that is not on the loopback, failing the test that tried.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from config.catalog import Catalog
from config.settings import Settings
from llm_router.credits import Ledger
from llm_router.testing.compat_matrix import Case
from llm_router.testing.redis_server import RedisServer
from llm_router.testing.server_proc import ServerProcess
from llm_router.testing.sim_env import simulated_env
from llm_router.testing.worker_procs import WorkerProcess
from producer.http.auth import ApiKeys
from producer.producer import Producer

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # before litellm is imported by any test
os.environ.setdefault("LITELLM_TELEMETRY", "False")

# a tenant whose jobs stay queued (parked on a queue nobody serves) up to the server's limit: 429
BUSY_TENANT = "compat-busy"
MAX_QUEUED = 20
# a tenant with credit for nothing: 402
BROKE_TENANT = "compat-broke"

RESULTS = pytest.StashKey[list[Case]]()
DECLARED = pytest.StashKey[int]()
DESELECTED = pytest.StashKey[int]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "compat(client, feature, pattern): a compatibility matrix cell")
    config.stash[RESULTS] = []
    config.stash[DECLARED] = 0
    config.stash[DESELECTED] = 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    config.stash[DECLARED] = sum(1 for item in items if item.get_closest_marker("compat"))


def pytest_deselected(items: list[pytest.Item]) -> None:
    if items:
        config = items[0].config
        config.stash[DESELECTED] += sum(1 for item in items if item.get_closest_marker("compat"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    marker = item.get_closest_marker("compat")
    if marker is not None and (report.when == "call" or (report.when == "setup" and not report.passed)):
        client, feature, pattern = marker.args
        item.config.stash[RESULTS].append(Case(client, feature, pattern, report.passed))
    return report


# -- nothing leaves the machine ---------------------------------------------------------------


def _loopback(host: Any) -> bool:
    if host in ("localhost", "localhost.", None, ""):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture(scope="session", autouse=True)
def no_internet() -> Iterator[list[str]]:
    """Refuse (and remember) any connection or name lookup of this process beyond the loopback."""
    attempts: list[str] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def check(address: Any) -> None:
        host = address[0] if isinstance(address, tuple) else None
        if isinstance(address, tuple) and not _loopback(host):
            attempts.append(str(address))
            raise OSError(f"compat suite: no connection beyond the loopback ({address})")

    def connect(self: socket.socket, address: Any) -> None:
        check(address)
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        check(address)
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not _loopback(host.decode() if isinstance(host, bytes) else host):
            attempts.append(f"lookup {host}")
            raise socket.gaierror(socket.EAI_NONAME, f"compat suite: no name lookup of {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]
    try:
        yield attempts
    finally:
        socket.socket.connect, socket.socket.connect_ex = real_connect, real_connect_ex  # type: ignore[method-assign]
        socket.getaddrinfo = real_getaddrinfo  # type: ignore[assignment]


@pytest.fixture(autouse=True)
def stayed_local(no_internet: list[str]) -> Iterator[None]:
    before = len(no_internet)
    yield
    assert no_internet[before:] == [], f"the client tried to reach the internet: {no_internet[before:]}"


# -- one server, one worker ---------------------------------------------------------------------


def _run(coro: Any) -> Any:
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


@dataclass
class Front:
    """The running server: ``url`` (no ``/v1``) and an API key per tenant."""

    url: str
    redis_url: str
    _keys: dict[str, str] = field(default_factory=dict)

    def key(self, tenant: str = "compat") -> str:
        if tenant not in self._keys:
            self._keys[tenant] = _run(_create_key(self.redis_url, tenant))
        return self._keys[tenant]


async def _create_key(redis_url: str, tenant: str) -> str:
    redis = Redis.from_url(redis_url)
    try:
        return await ApiKeys(redis).create(tenant)
    finally:
        await redis.aclose()


async def _prepare_tenants(settings: Settings, catalog: Catalog, queue: str) -> None:
    """The broke tenant has credit for nothing; the busy one has its limit of jobs parked."""
    producer = await Producer.connect(settings, catalog)
    try:
        await Ledger(producer.redis).add(BROKE_TENANT, "0.000000001")
        parked = Settings(_env_file=None, redis_url=settings.redis_url, queue_name=f"{queue}-parked")
        parking = await Producer.connect(parked, catalog)
        try:
            jobs = [
                {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"{i}"}]}
                for i in range(MAX_QUEUED)
            ]
            await parking.submit_many(jobs, tenant=BUSY_TENANT)
        finally:
            await parking.close()
    finally:
        await producer.close()


async def _workers_live(settings: Settings, procs: list[WorkerProcess]) -> None:
    redis = Redis.from_url(settings.redis_url.get_secret_value())  # type: ignore[union-attr]
    try:
        deadline = time.monotonic() + 30
        queues = [settings.queue_name, settings.interactive_queue_name]
        while True:
            now = time.time()
            counts = [
                await redis.zcount(f"{q}:workers", now - settings.heartbeat_ttl_s, "+inf") for q in queues
            ]
            if all(counts):
                return
            assert all(p.alive() for p in procs), [p.log_tail() for p in procs]
            assert time.monotonic() < deadline, f"workers did not start: {counts}"
            await asyncio.sleep(0.05)
    finally:
        await redis.aclose()


@pytest.fixture(scope="session")
def front(
    redis_server: RedisServer, sim: Any, sim_catalog: Catalog, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Front]:
    logs: Path = tmp_path_factory.mktemp("compat")
    queue = f"compat-{uuid.uuid4().hex[:8]}"
    env = simulated_env(os.environ, redis_url=redis_server.url, sim_url=sim.url)
    env.update(
        LLM_ROUTER_QUEUE_NAME=queue,
        LLM_ROUTER_INTERACTIVE_QUEUE_NAME=f"{queue}:interactive",
        LLM_ROUTER_HEARTBEAT_INTERVAL_S="0.5",
        LLM_ROUTER_RETRY_BACKOFF_S="0.2",
        LLM_ROUTER_RETRY_BUDGET_RATIO="1.0",
        LLM_ROUTER_TENANT_MAX_QUEUED=str(MAX_QUEUED),
        LLM_ROUTER_LOG_LEVEL="WARNING",
    )
    env.pop("LLM_ROUTER_AUTH_DISABLED", None)
    env.pop("LLM_ROUTER_API_KEYS_FILE", None)
    settings = Settings(
        _env_file=None,
        redis_url=redis_server.url,
        queue_name=queue,
        interactive_queue_name=f"{queue}:interactive",
    )
    server = ServerProcess(env, logs / "server.log")
    worker = WorkerProcess(env, logs / "worker.log")
    try:
        _run(_prepare_tenants(settings, sim_catalog, queue))
        server.wait_ready()
        _run(_workers_live(settings, [worker]))
        yield Front(url=server.url, redis_url=redis_server.url)
    finally:
        server.stop()
        worker.stop()


@pytest.fixture
def compat_run(request: pytest.FixtureRequest) -> tuple[list[Case], int, int]:
    """(the cases recorded so far, how many compat tests were collected, how many were deselected)."""
    config = request.config
    return config.stash[RESULTS], config.stash[DECLARED], config.stash[DESELECTED]
