"""The admission tests' rig: a catalog of their own (providers told apart by their keys in the
simulator), the simulator's capacity rules, and the environment of worker processes on it.

``adm-solo`` is one deployment (``p1``) for the overload test; ``adm-pick`` is one model on three
providers chosen among by latency, ``adm-least`` by calls in flight (``p3`` weighs 2) and
``adm-cost`` by price (``p2`` cheapest, then ``p3``, then ``p1``); ``adm-hedge`` one model on two
providers for hedged requests.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import aiohttp

from llm_router.testing.redis_server import RedisServer
from llm_router.testing.sim_env import simulated_env

KEYS = {f"ADM_P{i}_API_KEY": f"sk-adm-p{i}" for i in (1, 2, 3)}
P1, P2, P3 = "sk-adm-p1", "sk-adm-p2", "sk-adm-p3"
PRICE = {"input": 1.0, "output": 4.0}


def catalog_spec() -> dict[str, Any]:
    providers = {
        f"p{i}": {"format": "openai", "base_url": f"https://p{i}.invalid/v1", "key_env": f"ADM_P{i}_API_KEY"}
        for i in (1, 2, 3)
    }

    def deps(model: str, *names: str) -> list[dict[str, Any]]:
        return [{"provider": n, "model": model, "price": PRICE} for n in names]

    def priced(model: str, prices: dict[str, float]) -> list[dict[str, Any]]:
        return [
            {"provider": n, "model": model, "price": {"input": x, "output": 4 * x}} for n, x in prices.items()
        ]

    return {
        "providers": providers,
        "models": {
            "adm-solo": {"vendor": "sim", "deployments": deps("adm-solo", "p1")},
            "adm-pick": {
                "vendor": "sim",
                "strategy": "latency",
                "deployments": deps("adm-pick", "p1", "p2", "p3"),
            },
            "adm-hedge": {"vendor": "sim", "deployments": deps("adm-hedge", "p1", "p2")},
            "adm-least": {
                "vendor": "sim",
                "strategy": "least_busy",
                "deployments": [*deps("adm-least", "p1", "p2"), {**deps("adm-least", "p3")[0], "weight": 2}],
            },
            "adm-cost": {
                "vendor": "sim",
                "strategy": "cost",
                "deployments": priced("adm-cost", {"p1": 3.0, "p2": 0.5, "p3": 1.0}),
            },
        },
    }


def worker_env(redis: RedisServer, sim_url: str, catalog: Path, queue: str, **extra: str) -> dict[str, str]:
    env = simulated_env(os.environ, redis_url=redis.url, sim_url=sim_url, keys=KEYS)
    env.update(
        LLM_ROUTER_CONFIG=str(catalog),
        LLM_ROUTER_QUEUE_NAME=queue,
        LLM_ROUTER_LOG_LEVEL="WARNING",
        LLM_ROUTER_HEARTBEAT_INTERVAL_S="0.2",
        **extra,
    )
    return env


async def set_capacity(sim_url: str, *rules: dict[str, Any]) -> None:
    """The simulator's capacity rules (none: every limit dropped)."""
    async with aiohttp.ClientSession() as s:
        if rules:
            r = await s.post(f"{sim_url}/_sim/capacity", json={"rules": list(rules)})
        else:
            r = await s.delete(f"{sim_url}/_sim/capacity")
        assert r.status == 200, await r.text()


async def capacity(sim_url: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as s:
        r = await s.get(f"{sim_url}/_sim/capacity")
        return (await r.json())["rules"]


async def statuses(sim_url: str, credential: str, model: str) -> dict[str, int]:
    """What the simulator answered ``credential`` for ``model`` so far, by status."""
    async with aiohttp.ClientSession() as s:
        calls = (await (await s.get(f"{sim_url}/_sim/calls")).json())["calls"]
    out: dict[str, int] = {}
    for c in calls:
        if c["credential"] == credential and c["model"] == model:
            for status, n in c["statuses"].items():
                out[status] = out.get(status, 0) + n
    return out
