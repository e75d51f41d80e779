"""The job runner in-process against the simulator and a real Redis: failure paths that must not lose jobs."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml
from arq import Retry

from config.catalog import Catalog, CatalogError
from config.settings import Settings
from llm_router.keys import DEFAULT_TENANT, scoped_id
from llm_router.redact import redact_url
from llm_router.simulator import FaultRule, SimConfig, SimServer, start_simulator
from producer.producer import Producer
from worker.http import create_session
from worker.job_runner import JobRunner

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A port whose listen backlog is full: a connect to it hangs until the client gives up."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(4):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(("127.0.0.1", port))
        fillers.append(c)
    yield port
    for c in fillers:
        c.close()
    server.close()


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    server = await start_simulator(SimConfig())
    yield server
    await server.close()


def _catalog(tmp_path: Path, sim_url: str, dead_url: str) -> Catalog:
    spec = {
        "providers": {
            "dead": {"base_url": dead_url, "key_env": "DEAD_KEY"},
            "sim": {"base_url": f"{sim_url}/v1", "key_env": "SIM_KEY"},
            "gem": {"format": "gemini", "base_url": sim_url, "key_env": "SIM_KEY"},
        },
        "models": {
            "m": {
                "vendor": "x",
                "price": {"input": 1, "output": 2},
                "deployments": [{"provider": "dead", "model": "m"}, {"provider": "sim", "model": "m"}],
            },
            "solo": {
                "vendor": "x",
                "price": {"input": 1, "output": 2},
                "capabilities": {"vision": True},
                "deployments": [{"provider": "sim", "model": "solo"}],
            },
            "gem": {
                "vendor": "x",
                "price": {"input": 1, "output": 2},
                "capabilities": {"vision": True},
                "deployments": [{"provider": "gem", "model": "gemini-2.5-flash"}],
            },
        },
    }
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(spec))
    return Catalog.from_path(
        path, env={"DEAD_KEY": "sk-dead-0123456789abcdef", "SIM_KEY": "sk-sim-0123456789abcdef"}
    )


@pytest.fixture
async def setup(redis_server, sim: SimServer, dead_port: int, tmp_path: Path):
    catalog = _catalog(tmp_path, sim.url, f"http://127.0.0.1:{dead_port}/v1")
    settings = Settings(
        _env_file=None,
        redis_url=redis_server.url,
        queue_name=f"runner-{uuid.uuid4().hex[:6]}",
        connect_timeout_s=0.3,
        retry_backoff_s=0.5,
    )
    producer = await Producer.connect(settings, catalog)
    session = create_session(settings)
    runner = JobRunner(producer.store, catalog, settings, session, "test-worker")
    yield producer, runner, sim
    await session.close()
    await producer.close()


async def test_a_connect_timeout_falls_back_instead_of_ending_the_job(setup) -> None:
    producer, runner, _ = setup
    sub = await producer.submit({"model": "m", "messages": HI, "deadline_s": 60})
    await runner.run(scoped_id(DEFAULT_TENANT, sub.job_id))
    record = await producer.get(sub.job_id)
    assert record.status == "succeeded" and record.provider == "sim"
    # a timeout falls back at once: a deployment that was silent gets no second call inside the job
    assert [(a.provider, a.error_code) for a in record.attempts] == [("dead", "timeout"), ("sim", None)]


async def test_deferral_waits_at_least_the_retry_after_heard(setup) -> None:
    producer, runner, sim = setup
    sim.add_faults([FaultRule(model="solo", kind="status", status=429, retry_after=7)])
    sub = await producer.submit({"model": "solo", "messages": HI})
    with pytest.raises(Retry) as info:
        await runner.run(scoped_id(DEFAULT_TENANT, sub.job_id))
    assert info.value.defer_score == 7000  # not the 0.5 s backoff
    record = await producer.get(sub.job_id)
    assert record.status == "deferred" and record.passes == 1


async def test_a_crash_in_our_code_fails_the_job_visibly(setup, monkeypatch) -> None:
    producer, runner, _ = setup

    def boom(*args, **kwargs):
        raise ZeroDivisionError("bug")

    monkeypatch.setattr("worker.route_walk._succeeded", boom)
    sub = await producer.submit({"model": "solo", "messages": HI})
    await runner.run(
        scoped_id(DEFAULT_TENANT, sub.job_id)
    )  # returns normally: arq must not be the one to drop the job
    record = await producer.get(sub.job_id)
    assert record.status == "failed" and record.error["code"] == "internal_error"


async def test_a_run_that_reaches_the_job_timeout_is_run_again_not_failed(setup) -> None:
    producer, runner, sim = setup
    sim.add_faults([FaultRule(model="solo", kind="latency", latency_ms=3000)])
    runner._run_budget_s = 0.5
    sub = await producer.submit({"model": "solo", "messages": HI, "deadline_s": 600})
    with pytest.raises(Retry):
        await runner.run(scoped_id(DEFAULT_TENANT, sub.job_id))
    record = await producer.get(sub.job_id)
    assert record.status == "queued" and record.error is None


async def test_upstream_keys_never_reach_the_record(setup) -> None:
    producer, runner, sim = setup
    sim.add_faults([FaultRule(model="solo", kind="status", status=400)])
    sub = await producer.submit({"model": "solo", "messages": HI})
    await runner.run(scoped_id(DEFAULT_TENANT, sub.job_id))
    record = await producer.get(sub.job_id)
    assert record.status == "failed" and "sk-sim-0123456789abcdef" not in record.model_dump_json()


def test_a_deployment_without_a_price_stops_the_catalog(tmp_path: Path) -> None:
    spec = {
        "providers": {"p": {"base_url": "https://x.invalid/v1", "key_env": "K"}},
        "models": {"mystery": {"vendor": "nobody", "deployments": [{"provider": "p", "model": "mystery"}]}},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(CatalogError, match="no price for deployment p/mystery"):
        Catalog.from_path(path, env={"K": "k"}).deployments("mystery")


def test_urls_lose_their_credentials_in_messages() -> None:
    assert redact_url("http://user:pw@host:1/v1") == "http://***@host:1/v1"
    assert redact_url("https://api.x.ai/v1") == "https://api.x.ai/v1"


async def test_session_reuses_connections(setup) -> None:
    _, runner, _ = setup
    assert isinstance(runner.session.connector, aiohttp.TCPConnector)


async def test_images_are_fetched_for_providers_that_need_bytes_and_guarded(setup) -> None:
    """Gemini takes bytes, so the worker fetches the image first, and its SSRF guard refuses a
    loopback address; an OpenAI-format provider gets the URL as it is and answers."""
    producer, runner, _ = setup
    job = {"prompt": "what is this?", "image": "https://127.0.0.1/cat.png"}
    gem = await producer.submit({"model": "gem", **job})
    await runner.run(scoped_id(DEFAULT_TENANT, gem.job_id))
    refused = await producer.get(gem.job_id)
    assert refused.status == "failed" and refused.error["code"] == "invalid_request"
    assert refused.error["param"] == "messages[0].content[1].image_url.url"
    plain = await producer.submit({"model": "solo", **job})
    await runner.run(scoped_id(DEFAULT_TENANT, plain.job_id))
    assert (await producer.get(plain.job_id)).status == "succeeded"
