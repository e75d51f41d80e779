"""Capacity rules: a simulated provider that answers 429 above N concurrent calls, per credential."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from llm_router.simulator import SimServer

KEY = "sk-sim-test"


def body(model: str = "gpt-4o-mini") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}]}


async def post(http: aiohttp.ClientSession, sim: SimServer, path: str, data: Any) -> Any:
    async with http.post(f"{sim.url}{path}", json=data) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def call(http: aiohttp.ClientSession, sim: SimServer, key: str = KEY) -> tuple[int, str | None, Any]:
    async with http.post(
        f"{sim.url}/v1/chat/completions", json=body(), headers={"Authorization": f"Bearer {key}"}
    ) as response:
        return response.status, response.headers.get("Retry-After"), await response.json()


async def test_calls_past_the_limit_get_the_formats_429_while_the_first_are_served(
    sim: SimServer, http: aiohttp.ClientSession
) -> None:
    await post(http, sim, "/_sim/faults", {"rules": [{"kind": "latency", "latency_ms": 300}]})
    await post(
        http, sim, "/_sim/capacity", {"rules": [{"credential": KEY, "max_concurrent": 3, "retry_after": 1}]}
    )
    replies = await asyncio.gather(*(call(http, sim) for _ in range(5)))
    statuses = sorted(status for status, _, _ in replies)
    assert statuses == [200, 200, 200, 429, 429]
    refused = next(r for r in replies if r[0] == 429)
    assert refused[1] == "1" and refused[2]["error"]["code"] == "rate_limit_exceeded"
    # another credential has no rule: never limited
    assert {s for s, _, _ in await asyncio.gather(*(call(http, sim, "other") for _ in range(5)))} == {200}
    (rule,) = (await (await http.get(f"{sim.url}/_sim/capacity")).json())["rules"]
    assert (rule["served"], rule["rejected"], rule["peak"], rule["in_flight"]) == (3, 2, 3, 0)
    assert 0 < rule["mean_in_flight"] <= 3
    calls = (await (await http.get(f"{sim.url}/_sim/calls")).json())["calls"]
    mine = next(c for c in calls if c["credential"] == KEY)
    assert mine["statuses"] == {"200": 3, "429": 2}
    await http.delete(f"{sim.url}/_sim/capacity")
    assert {s for s, _, _ in await asyncio.gather(*(call(http, sim) for _ in range(5)))} == {200}


async def test_a_bad_capacity_rule_is_refused_with_the_field_named(
    sim: SimServer, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{sim.url}/_sim/capacity", json={"rules": [{"max_concurrent": 0}]}) as response:
        assert response.status == 400
        assert "max_concurrent" in (await response.json())["error"]["message"]
