"""Fault injection and the control API: every fault kind as a real client sees it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from llm_router.simulator import FaultRule, SimConfig, SimServer, start_simulator

Chat = Callable[..., Awaitable[Any]]  # the `chat` fixture; returns a read reply
KEY = "sk-sim-test"


def body(model: str = "gpt-4o-mini") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}]}


async def add_rules(
    http: aiohttp.ClientSession, sim: SimServer, *rules: dict[str, Any], replace: bool = False
) -> Any:
    async with http.post(
        f"{sim.url}/_sim/faults", json={"rules": list(rules), "replace": replace}
    ) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def calls(http: aiohttp.ClientSession, sim: SimServer) -> dict[str, Any]:
    async with http.get(f"{sim.url}/_sim/calls") as response:
        data: dict[str, Any] = await response.json()
        return data


async def poll(check: Callable[[], Awaitable[bool]], deadline_s: float = 3.0) -> None:
    """Await ``check`` until it holds; fail after ``deadline_s``."""
    deadline = time.monotonic() + deadline_s
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


# status -> (error.type, error.code)
STATUS_ERRORS = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    402: ("insufficient_quota", "insufficient_credits"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    502: ("server_error", "bad_gateway"),
    503: ("server_error", "service_unavailable"),
}


@pytest.mark.parametrize("status", list(STATUS_ERRORS))
async def test_status_faults_use_vendor_error_bodies(
    sim: SimServer, http: aiohttp.ClientSession, chat: Chat, status: int
) -> None:
    await add_rules(http, sim, {"kind": "status", "status": status})
    reply = await chat(body())
    assert reply.status == status
    assert reply.content_type == "application/json"
    error = reply.json()["error"]
    assert (error["type"], error["code"]) == STATUS_ERRORS[status]
    assert error["message"]


@pytest.mark.parametrize(("retry_after", "header"), [(2, "2"), (1.5, "1.5")])
async def test_429_with_retry_after_header(
    sim: SimServer, http: aiohttp.ClientSession, retry_after: float, header: str
) -> None:
    await add_rules(http, sim, {"kind": "status", "status": 429, "retry_after": retry_after})
    async with http.post(
        f"{sim.url}/v1/chat/completions", json=body(), headers={"Authorization": f"Bearer {KEY}"}
    ) as response:
        assert response.status == 429
        assert response.headers["Retry-After"] == header
        assert (await response.json())["error"]["code"] == "rate_limit_exceeded"


async def test_hang_outlasts_a_client_timeout(
    sim: SimServer, http: aiohttp.ClientSession, chat: Chat
) -> None:
    await add_rules(http, sim, {"kind": "hang", "hang_s": 5})
    started = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        await chat(body(), timeout=0.2)
    assert time.monotonic() - started < 2
    await poll(lambda: _has_outcome(http, sim, "hang"))


async def test_hang_then_closes_without_answer(
    sim: SimServer, http: aiohttp.ClientSession, chat: Chat
) -> None:
    await add_rules(http, sim, {"kind": "hang", "hang_s": 0.2})
    started = time.monotonic()
    with pytest.raises(aiohttp.ClientConnectionError):
        await chat(body(), timeout=5)
    assert time.monotonic() - started >= 0.2


async def test_reset_drops_the_connection(sim: SimServer, http: aiohttp.ClientSession, chat: Chat) -> None:
    await add_rules(http, sim, {"kind": "reset", "count": 1})
    with pytest.raises(aiohttp.ClientConnectionError):
        await chat(body())
    assert (await chat(body())).status == 200


async def test_malformed_body_does_not_parse(sim: SimServer, http: aiohttp.ClientSession, chat: Chat) -> None:
    await add_rules(http, sim, {"kind": "malformed"})
    reply = await chat(body())
    assert reply.status == 200 and reply.content_type == "application/json"
    with pytest.raises(json.JSONDecodeError):
        json.loads(reply.body)


async def test_rules_keyed_by_credential(sim: SimServer, http: aiohttp.ClientSession, chat: Chat) -> None:
    await add_rules(http, sim, {"credential": "sk-a", "kind": "status", "status": 429})
    assert (await chat(body(), key="sk-a")).status == 429
    assert (await chat(body(), key="sk-b")).status == 200


async def test_rules_keyed_by_model(sim: SimServer, http: aiohttp.ClientSession, chat: Chat) -> None:
    await add_rules(http, sim, {"model": "gpt-4o", "kind": "status", "status": 503})
    assert (await chat(body("gpt-4o"))).status == 503
    assert (await chat(body("gpt-4o-mini"))).status == 200


async def test_first_matching_rule_wins(sim: SimServer, http: aiohttp.ClientSession, chat: Chat) -> None:
    await add_rules(http, sim, {"kind": "status", "status": 502}, {"kind": "status", "status": 503})
    assert (await chat(body())).status == 502


async def test_probability_zero_never_fires(sim: SimServer, http: aiohttp.ClientSession, chat: Chat) -> None:
    await add_rules(http, sim, {"kind": "status", "status": 500, "probability": 0})
    statuses = [(await chat(body())).status for _ in range(20)]
    assert statuses == [200] * 20


async def test_partial_probability_is_seeded(http: aiohttp.ClientSession) -> None:
    rule = FaultRule(kind="status", status=500, probability=0.5)
    runs = []
    for _ in range(2):
        async with await start_simulator(SimConfig(rules=[rule], seed=3)) as sim:
            url = f"{sim.url}/v1/chat/completions"
            statuses = []
            for _ in range(30):
                async with http.post(url, json=body(), headers={"Authorization": "Bearer k"}) as r:
                    statuses.append(r.status)
            runs.append(statuses)
    assert runs[0] == runs[1]
    assert {200, 500} == set(runs[0])


async def test_count_limits_firings(sim: SimServer, http: aiohttp.ClientSession, chat: Chat) -> None:
    await add_rules(http, sim, {"kind": "status", "status": 500, "count": 3})
    statuses = [(await chat(body())).status for _ in range(5)]
    assert statuses == [500, 500, 500, 200, 200]
    (rule,) = (await (await http.get(f"{sim.url}/_sim/faults")).json())["rules"]
    assert rule["fired"] == 3


async def test_time_window(sim: SimServer, http: aiohttp.ClientSession, chat: Chat) -> None:
    added = time.monotonic()
    await add_rules(http, sim, {"kind": "status", "status": 503, "after_s": 0.3, "for_s": 0.3})
    assert (await chat(body())).status == 200

    async def status_is(expected: int) -> bool:
        return bool((await chat(body())).status == expected)

    await poll(lambda: status_is(503))
    assert time.monotonic() - added >= 0.3
    await poll(lambda: status_is(200))
    assert time.monotonic() - added >= 0.6


async def test_latency_range_is_respected(http: aiohttp.ClientSession) -> None:
    async with await start_simulator(SimConfig(latency_ms=(150, 250))) as sim:
        for _ in range(2):
            started = time.monotonic()
            async with http.post(
                f"{sim.url}/v1/chat/completions", json=body(), headers={"Authorization": "Bearer k"}
            ) as r:
                assert r.status == 200
            assert 0.15 <= time.monotonic() - started < 1.5


async def test_latency_rule_adds_delay_and_evaluation_continues(
    sim: SimServer, http: aiohttp.ClientSession, chat: Chat
) -> None:
    await add_rules(http, sim, {"kind": "latency", "latency_ms": 200}, {"kind": "status", "status": 429})
    started = time.monotonic()
    assert (await chat(body())).status == 429
    assert time.monotonic() - started >= 0.2


async def test_a_slow_call_is_counted_when_it_arrives_even_if_its_client_gives_up(
    sim: SimServer, http: aiohttp.ClientSession
) -> None:
    await add_rules(http, sim, {"model": "gpt-4o", "kind": "latency", "latency_ms": 30_000})

    async def slow_call() -> None:
        async with http.post(
            f"{sim.url}/v1/chat/completions", json=body("gpt-4o"), headers={"Authorization": "Bearer sk-gone"}
        ):
            pass

    call = asyncio.create_task(slow_call())

    async def counted() -> bool:
        snapshot = await calls(http, sim)
        return [(c["credential"], c["count"]) for c in snapshot["calls"]] == [("sk-gone", 1)]

    try:
        await poll(counted)  # while the call still waits out its 30 s
    finally:
        call.cancel()  # its client gives up; the count stays
        with contextlib.suppress(asyncio.CancelledError):
            await call
    assert await counted()


async def test_calls_are_counted_per_credential_and_model(
    sim: SimServer, http: aiohttp.ClientSession, chat: Chat
) -> None:
    await add_rules(http, sim, {"credential": "sk-b", "kind": "status", "status": 429, "count": 1})
    await add_rules(http, sim, {"credential": "sk-c", "kind": "reset"})
    await chat(body(), key="sk-a")
    await chat(body(), key="sk-a")
    await chat(body("gpt-4o"), key="sk-a")
    await chat({"model": "gpt-4o", "messages": []}, key="sk-a")
    await chat(body(), key="sk-b")
    await chat(body(), key="sk-b")
    await chat(body(), key=None)
    with pytest.raises(aiohttp.ClientConnectionError):
        await chat(body(), key="sk-c")
    snapshot = await calls(http, sim)
    assert snapshot["total"] == 8
    by_key = {(c["credential"], c["model"]): (c["count"], c["statuses"]) for c in snapshot["calls"]}
    assert by_key == {
        ("sk-a", "gpt-4o-mini"): (2, {"200": 2}),
        ("sk-a", "gpt-4o"): (2, {"200": 1, "400": 1}),
        ("sk-b", "gpt-4o-mini"): (2, {"429": 1, "200": 1}),
        (None, "gpt-4o-mini"): (1, {"401": 1}),
        ("sk-c", "gpt-4o-mini"): (1, {"reset": 1}),
    }


async def test_reset_clears_rules_and_counters(
    sim: SimServer, http: aiohttp.ClientSession, chat: Chat
) -> None:
    await add_rules(http, sim, {"kind": "status", "status": 500})
    assert (await chat(body())).status == 500
    async with http.post(f"{sim.url}/_sim/reset") as response:
        assert response.status == 200
    assert await calls(http, sim) == {"total": 0, "calls": []}
    assert (await chat(body())).status == 200


async def test_control_api_lists_replaces_and_deletes(sim: SimServer, http: aiohttp.ClientSession) -> None:
    await add_rules(http, sim, {"kind": "status", "status": 500}, {"kind": "latency", "latency_ms": 5})
    listed = await add_rules(http, sim, {"kind": "status", "status": 502}, replace=True)
    assert [r["status"] for r in listed["rules"]] == [502]
    async with http.get(f"{sim.url}/_sim/faults") as response:
        (rule,) = (await response.json())["rules"]
    assert rule["kind"] == "status" and rule["fired"] == 0 and rule["credential"] is None
    async with http.delete(f"{sim.url}/_sim/faults") as response:
        assert (await response.json()) == {"rules": []}
    async with http.get(f"{sim.url}/_sim/faults") as response:
        assert (await response.json()) == {"rules": []}


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b'{"rules": {}}',
        b'{"rules": [{"kind": "explode"}]}',
        b'{"rules": [{"kind": "status", "status": 200}]}',
        b'{"rules": [{"kind": "status", "probability": 2}]}',
        b'{"rules": [{"kind": "status", "colour": "red"}]}',
        b'{"rules": [], "extra": 1}',
    ],
)
async def test_bad_control_bodies_are_400(sim: SimServer, http: aiohttp.ClientSession, raw: bytes) -> None:
    async with http.post(f"{sim.url}/_sim/faults", data=raw) as response:
        assert response.status == 400
        assert (await response.json())["error"]["message"]


async def test_in_process_helpers(sim: SimServer, chat: Chat) -> None:
    sim.add_faults([FaultRule(kind="status", status=503, count=1)])
    assert (await chat(body())).status == 503
    assert sim.calls()["total"] == 1
    sim.reset()
    assert sim.calls() == {"total": 0, "calls": []}


async def test_close_releases_a_held_request(http: aiohttp.ClientSession) -> None:
    sim = await start_simulator(SimConfig(rules=[FaultRule(kind="hang")]))
    request = asyncio.ensure_future(
        http.post(f"{sim.url}/v1/chat/completions", json=body(), headers={"Authorization": "Bearer k"})
    )

    async def held() -> bool:
        return bool(sim.calls()["total"] == 1)

    await poll(held)
    started = time.monotonic()
    await sim.close()
    assert time.monotonic() - started < 1.5
    with pytest.raises(aiohttp.ClientConnectionError):
        await request


async def _has_outcome(http: aiohttp.ClientSession, sim: SimServer, outcome: str) -> bool:
    snapshot = await calls(http, sim)
    return any(outcome in c["statuses"] for c in snapshot["calls"])


def test_rules_serialise_round_trip() -> None:
    rule = FaultRule(credential="sk-x", model="m", kind="status", status=429, retry_after=1, count=2)
    assert FaultRule.model_validate(orjson.loads(orjson.dumps(rule.model_dump()))) == rule
