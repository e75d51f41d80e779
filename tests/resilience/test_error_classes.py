"""Every upstream error class: the retries it gets, whether fallback moves on, the job's end, the breaker.

The job runner runs in-process against the simulator and a real Redis. Model ``m`` has two
deployments (``a`` then ``b``, different credentials, so a fault can hit ``a`` alone); model
``wide`` has a larger context window and is ``m``'s fallback.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from email.utils import formatdate
from pathlib import Path
from time import time

import pytest
import yaml
from arq import Retry

from config.catalog import Catalog
from config.settings import Settings
from llm_router.keys import DEFAULT_TENANT, SICK_KEY, scoped_id
from llm_router.simulator import FaultRule, SimConfig, SimServer, start_simulator
from producer.producer import Producer
from worker.breaker import routing_table
from worker.http import create_session
from worker.job_runner import JobRunner

HI = [{"role": "user", "content": "hi"}]
A, B, W = "sk-sim-a-0123456789", "sk-sim-b-0123456789", "sk-sim-w-0123456789"


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    server = await start_simulator(SimConfig())
    yield server
    await server.close()


@pytest.fixture
async def rig(redis_server, sim: SimServer, tmp_path: Path, redis):
    spec = {
        "providers": {
            "a": {"base_url": f"{sim.url}/v1", "key_env": "A_KEY"},
            "b": {"base_url": f"{sim.url}/v1", "key_env": "B_KEY"},
            "w": {"base_url": f"{sim.url}/v1", "key_env": "W_KEY"},
        },
        "models": {
            "m": {
                "vendor": "x",
                "price": {"input": 1, "output": 2},
                "capabilities": {"context_window": 8000},
                "fallbacks": ["wide"],
                "deployments": [{"provider": "a", "model": "m"}, {"provider": "b", "model": "m"}],
            },
            "wide": {
                "vendor": "x",
                "price": {"input": 1, "output": 2},
                "capabilities": {"context_window": 200000},
                "deployments": [{"provider": "w", "model": "wide"}],
            },
        },
    }
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(spec))
    catalog = Catalog.from_path(path, env={"A_KEY": A, "B_KEY": B, "W_KEY": W})
    settings = Settings(
        _env_file=None,
        redis_url=redis_server.url,
        queue_name=f"classes-{uuid.uuid4().hex[:6]}",
        call_timeout_s=0.5,
        retry_backoff_s=0.2,
        max_inline_wait_s=0.3,
        retry_budget_ratio=1.0,
    )
    producer = await Producer.connect(settings, catalog)
    session = create_session(settings)
    runner = JobRunner(producer.store, catalog, settings, session, "test-worker")
    key, table = routing_table(catalog, settings)
    await redis.hset(key, mapping=table)
    yield producer, runner, sim
    await session.close()
    await producer.close()


def _codes(record) -> list[tuple[str, str | None]]:
    return [(a.provider, a.error_code) for a in record.attempts]


RETRIED_THEN_B = [("a", "x"), ("a", "x"), ("b", None)]

# (fault on deployment a, expected (provider, code) attempts, expected a's breaker mark)
CLASSES = [
    pytest.param(
        {"kind": "status", "status": 429, "retry_after": 30},
        [("a", "rate_limited"), ("b", None)],
        "limited",
        id="429-moves-on-at-once",
    ),
    pytest.param(
        {"kind": "status", "status": 529},
        [("a", "overloaded"), ("a", "overloaded"), ("b", None)],
        None,
        id="529-overloaded",
    ),
    pytest.param(
        {"kind": "status", "status": 503},
        [("a", "overloaded"), ("a", "overloaded"), ("b", None)],
        None,
        id="503-overloaded",
    ),
    pytest.param(
        {"kind": "status", "status": 500},
        [("a", "upstream_error"), ("a", "upstream_error"), ("b", None)],
        None,
        id="500",
    ),
    pytest.param(
        {"kind": "status", "status": 502},
        [("a", "upstream_error"), ("a", "upstream_error"), ("b", None)],
        None,
        id="502",
    ),
    pytest.param(
        {"kind": "status", "status": 504},
        [("a", "timeout"), ("b", None)],  # a silent deployment gets no second call: move on
        None,
        id="504",
    ),
    pytest.param(
        {"kind": "hang", "hang_s": 5},
        [("a", "timeout"), ("b", None)],  # a silent deployment gets no second call: move on
        None,
        id="read-timeout",
    ),
    pytest.param(
        {"kind": "reset"},
        [("a", "connection_error"), ("a", "connection_error"), ("b", None)],
        None,
        id="connection-reset",
    ),
    pytest.param(
        {"kind": "malformed"},
        [("a", "bad_response"), ("a", "bad_response"), ("b", None)],
        None,
        id="malformed-json",
    ),
    pytest.param(
        {"kind": "truncated"},
        [("a", "bad_response"), ("a", "bad_response"), ("b", None)],
        None,
        id="truncated-body",
    ),
    pytest.param(
        {"kind": "status", "status": 401}, [("a", "auth_failed"), ("b", None)], "disabled", id="401"
    ),
    pytest.param(
        {"kind": "status", "status": 403}, [("a", "auth_failed"), ("b", None)], "disabled", id="403"
    ),
    pytest.param(
        {"kind": "status", "status": 404}, [("a", "upstream_not_found"), ("b", None)], "disabled", id="404"
    ),
    pytest.param(
        {"kind": "status", "status": 402},
        [("a", "provider_out_of_credits"), ("b", None)],
        "disabled",
        id="402",
    ),
    pytest.param(
        {"kind": "status", "status": 400, "error_code": "context_length_exceeded"},
        [("a", "context_length_exceeded"), ("w", None)],
        None,
        id="context-length-to-a-wider-model",
    ),
]


@pytest.mark.parametrize(("fault", "expected", "mark"), CLASSES)
async def test_error_class_retries_and_fallback(rig, redis, fault, expected, mark) -> None:
    producer, runner, sim = rig
    sim.add_faults([FaultRule(credential=A, model="m", **fault)])
    sub = await producer.submit({"model": "m", "messages": HI})
    await runner.run(scoped_id(DEFAULT_TENANT, sub.job_id))
    record = await producer.get(sub.job_id)
    assert record.status == "succeeded", record.error
    assert _codes(record) == expected
    sick = await redis.hget(SICK_KEY, "a/m")
    assert (sick.decode().split("|")[0] if sick else None) == mark


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        pytest.param({"kind": "status", "status": 400}, "upstream_invalid_request", id="caller-error"),
        pytest.param(
            {"kind": "status", "status": 400, "error_code": "content_policy_violation"},
            "content_filtered",
            id="content-filter",
        ),
    ],
)
async def test_final_errors_neither_retry_nor_fall_back_nor_trip(rig, redis, fault, code) -> None:
    producer, runner, sim = rig
    sim.add_faults([FaultRule(credential=A, model="m", **fault)])
    sub = await producer.submit({"model": "m", "messages": HI})
    await runner.run(scoped_id(DEFAULT_TENANT, sub.job_id))
    record = await producer.get(sub.job_id)
    assert record.status == "failed" and record.error["code"] == code
    assert _codes(record) == [("a", code)]
    assert record.error["message"]  # the provider's message reaches the caller
    assert (
        not await redis.exists("llm-router:breaker:a/m")
        or int(await redis.hget("llm-router:breaker:a/m", "c") or 0) == 0
    )


async def test_retry_after_as_an_http_date_defers_the_job_until_then(rig, redis) -> None:
    producer, runner, sim = rig
    when = formatdate(time() + 4, usegmt=True)
    for cred in (A, B):
        sim.add_faults(
            [FaultRule(credential=cred, model="m", kind="status", status=429, retry_after_date=when)]
        )
    sub = await producer.submit({"model": "m", "fallbacks": [], "messages": HI})
    with pytest.raises(Retry) as info:
        await runner.run(scoped_id(DEFAULT_TENANT, sub.job_id))
    assert 2500 <= info.value.defer_score <= 4500  # until the date (HTTP dates have 1 s resolution)
    record = await producer.get(sub.job_id)
    assert record.status == "deferred" and _codes(record) == [("a", "rate_limited"), ("b", "rate_limited")]


async def test_a_route_out_of_rotation_fails_at_once_instead_of_waiting(rig) -> None:
    producer, runner, sim = rig
    for cred in (A, B):
        sim.add_faults([FaultRule(credential=cred, model="m", kind="status", status=401)])
    first = await producer.submit({"model": "m", "fallbacks": [], "messages": HI})
    await runner.run(scoped_id(DEFAULT_TENANT, first.job_id))
    record = await producer.get(first.job_id)
    assert record.status == "failed" and record.error["code"] == "auth_failed"
    # both deployments are now out of rotation for the fleet: the next job is refused without a call
    # (and is not deferred for the cooldown: a bad key does not heal by waiting)
    second = await producer.submit(
        {"model": "m", "fallbacks": [], "messages": [{"role": "user", "content": "2"}]}
    )
    await runner.run(scoped_id(DEFAULT_TENANT, second.job_id))
    record = await producer.get(second.job_id)
    assert record.status == "failed" and record.error["code"] == "deployment_disabled"
    assert [(a.provider, a.outcome) for a in record.attempts] == [("a", "skipped"), ("b", "skipped")]
