"""Admission that learns, measured: a dead provider at cold start, an overloaded one, and hedging.
One private ``redis-server``, the simulator, worker processes (``llm_router.concurrency``,
``worker.hedge``).

1. **cold start**: two workers as shipped (the shipped catalog and worker size), three provider keys,
   OpenAI direct answering 503 to everything, 1,000 jobs for gpt-4o: how many calls reach the dead
   provider (target ≤ 60; before adaptive admission 483), and whether every job succeeds;
2. **overload**: one deployment that answers 429 above 50 calls at once (100 ms a call, no
   Retry-After), two workers of 100 slots, 5,000 jobs: the share of calls refused (target < 2 %),
   the calls in flight at the provider (sampled every 50 ms between the first second and the last
   tenth of the run: median, p10, and the provider's own time-weighted mean; target near 50, no
   oscillation), jobs/s (the ceiling is 500);
3. **hedging**: one model on two deployments whose time to first token is 200 ms for 95 % of calls and
   2,000 ms for 5 % (independently per call: two simulator latency rules, the second with
   ``probability: 0.05``), interactive streamed jobs 16 at a time: latency p50/p99 (submit to record)
   without hedging and with ``hedge: true`` (the learned p90), hedges started, and the extra spend
   (target: p99 ≤ 2.5 x p50, extra ≤ 10 %).

Prints a table and writes JSON to ``bench/results/``. Part of ``make bench``; ``--quick`` for a
smaller run; ``--rows`` picks rows (``cold,overload,hedge``). ``--baseline-src DIR`` runs row 1 first
with the code in DIR (``/work/wt/before``, a checkout from before this round) in a process of its own
whose workers and simulator run that code too, and prints both columns.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
import yaml
from output import write_json  # bench/output.py, beside this script
from rich.console import Console
from rich.table import Table

from config.catalog import Catalog
from config.settings import DEFAULT_CATALOG, Settings
from llm_router.testing.redis_server import RedisServer, free_port
from llm_router.testing.sim_env import simulated_env
from producer.producer import Producer

SHIPPED_KEYS = {
    "OPENAI_API_KEY": "sk-sim-openai",
    "AISA_API_KEY": "sk-sim-aisa",
    "OPENROUTER_API_KEY": "sk-sim-openrouter",
}
# the overload and hedging rows' catalog: providers told apart by their keys in the simulator
KEYS = {"ADM_P1_API_KEY": "sk-adm-p1", "ADM_P2_API_KEY": "sk-adm-p2"}
PRICE = {"input": 1.0, "output": 4.0}


def _catalog_spec() -> dict[str, Any]:
    providers = {
        f"p{i}": {"format": "openai", "base_url": f"https://p{i}.invalid/v1", "key_env": f"ADM_P{i}_API_KEY"}
        for i in (1, 2)
    }

    def deps(model: str, *names: str) -> list[dict[str, Any]]:
        return [{"provider": n, "model": model, "price": PRICE} for n in names]

    return {
        "providers": providers,
        "models": {
            "adm-solo": {"vendor": "sim", "deployments": deps("adm-solo", "p1")},
            "adm-hedge": {"vendor": "sim", "deployments": deps("adm-hedge", "p1", "p2")},
        },
    }


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)] if ordered else float("nan")


def _job(i: int, model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": f"job {i}"}], **extra}


@contextmanager
def _simulator() -> Iterator[str]:
    port = free_port()
    args = [sys.executable, "-m", "llm_router.cli", "simulate", "--port", str(port)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextmanager
def _workers(env: dict[str, str], count: int, max_jobs: int | None = None) -> Iterator[None]:
    args = [sys.executable, "-m", "llm_router.cli", "worker"]
    if max_jobs:
        args += ["--max-jobs", str(max_jobs)]
    procs = [
        subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(count)
    ]
    try:
        yield
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


async def _sim(http: aiohttp.ClientSession, url: str, method: str, path: str, body: Any = None) -> Any:
    for _ in range(300):  # the simulator may still be starting
        try:
            async with http.request(method, f"{url}{path}", json=body) as r:
                assert r.status == 200, await r.text()
                return await r.json()
        except aiohttp.ClientConnectionError:
            await asyncio.sleep(0.05)
    raise RuntimeError("the simulator did not start")


async def _calls_to(http: aiohttp.ClientSession, url: str, credential: str, model: str) -> int:
    calls = (await _sim(http, url, "GET", "/_sim/calls"))["calls"]
    return sum(
        sum(c["statuses"].values()) for c in calls if c["credential"] == credential and c["model"] == model
    )


async def _live(producer: Producer, n: int, queue: str | None = None) -> None:
    for _ in range(1200):
        if await producer.live_workers(queue) >= n:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{n} workers did not come up")


async def cold_start(server: RedisServer, jobs: int) -> dict[str, Any]:
    """Row 1: the shipped catalog, two workers as shipped, OpenAI direct dead from the start."""
    queue = "bench-adm-cold"
    with _simulator() as sim_url:
        env = simulated_env(os.environ, redis_url=server.url, sim_url=sim_url, keys=SHIPPED_KEYS)
        env.update(LLM_ROUTER_QUEUE_NAME=queue, LLM_ROUTER_LOG_LEVEL="WARNING")
        settings = Settings(_env_file=None, redis_url=server.url, queue_name=queue)
        producer = await Producer.connect(settings, Catalog.from_path(DEFAULT_CATALOG, env=SHIPPED_KEYS))
        async with aiohttp.ClientSession() as http:
            dead = {"credential": "sk-sim-openai", "model": "gpt-4o", "kind": "status", "status": 503}
            await _sim(http, sim_url, "POST", "/_sim/faults", {"rules": [dead]})
            try:
                with _workers(env, 2):
                    await _live(producer, 2)
                    t0 = time.monotonic()
                    subs = await producer.submit_many([_job(i, "gpt-4o") for i in range(jobs)])
                    ids = [getattr(s, "job_id", s) for s in subs]
                    records = await producer.wait_many(ids, timeout=300)
                    elapsed = time.monotonic() - t0
                dead_calls = await _calls_to(http, sim_url, "sk-sim-openai", "gpt-4o")
            finally:
                await producer.close()
    return {
        "jobs": jobs,
        "succeeded": sum(r.status == "succeeded" for r in records),
        "dead_provider_calls": dead_calls,
        "jps": round(jobs / elapsed, 1),
    }


async def overload(server: RedisServer, catalog: Path, jobs: int) -> dict[str, Any]:
    """Row 2: adm-solo refuses past 50 calls at once; two workers of 100 slots."""
    queue = "bench-adm-overload"
    with _simulator() as sim_url:
        env = simulated_env(os.environ, redis_url=server.url, sim_url=sim_url, keys=KEYS)
        env.update(
            LLM_ROUTER_CONFIG=str(catalog), LLM_ROUTER_QUEUE_NAME=queue, LLM_ROUTER_LOG_LEVEL="WARNING"
        )
        settings = Settings(_env_file=None, redis_url=server.url, queue_name=queue)
        producer = await Producer.connect(settings, Catalog.from_path(catalog, env=KEYS, upstream=sim_url))
        async with aiohttp.ClientSession() as http:
            slow = {"credential": "sk-adm-p1", "kind": "latency", "latency_ms": 100}
            await _sim(http, sim_url, "POST", "/_sim/faults", {"rules": [slow]})
            cap = {"credential": "sk-adm-p1", "model": "adm-solo", "max_concurrent": 50}
            try:
                with _workers(env, 2, max_jobs=100):
                    await _live(producer, 2)
                    await _sim(http, sim_url, "POST", "/_sim/capacity", {"rules": [cap]})
                    samples: list[tuple[float, int]] = []
                    t0 = time.monotonic()

                    async def sample() -> None:
                        while True:
                            (rule,) = (await _sim(http, sim_url, "GET", "/_sim/capacity"))["rules"]
                            samples.append((time.monotonic() - t0, rule["in_flight"]))
                            await asyncio.sleep(0.05)

                    sampler = asyncio.create_task(sample())
                    try:
                        subs = await producer.submit_many([_job(i, "adm-solo") for i in range(jobs)])
                        ids = [getattr(s, "job_id", s) for s in subs]
                        records = await producer.wait_many(ids, timeout=600)
                    finally:
                        sampler.cancel()
                    elapsed = time.monotonic() - t0
                    (rule,) = (await _sim(http, sim_url, "GET", "/_sim/capacity"))["rules"]
                    limit = await producer.redis.hget("llm-router:conc:p1/adm-solo", "limit")
            finally:
                await producer.close()
    steady = [n for t, n in samples if 1.0 <= t <= elapsed * 0.9]
    return {
        "jobs": jobs,
        "succeeded": sum(r.status == "succeeded" for r in records),
        "refused_pct": round(100 * rule["rejected"] / max(rule["rejected"] + rule["served"], 1), 2),
        "refused": rule["rejected"],
        "in_flight_median": statistics.median(steady) if steady else None,
        "in_flight_p10": _pct(steady, 0.1),
        "in_flight_mean": rule["mean_in_flight"],
        "below_30_pct": round(100 * sum(n < 30 for n in steady) / max(len(steady), 1), 1),
        "learned_limit": float(limit) if limit else None,
        "jps": round(jobs / elapsed, 1),
    }


async def _interactive(producer: Producer, n: int, tag: str, at_once: int, **extra: Any) -> dict[str, Any]:
    gate = asyncio.Semaphore(at_once)
    latencies: list[float] = []
    cost = 0.0
    hedges = 0

    async def one(i: int) -> None:
        nonlocal cost, hedges
        async with gate:
            t0 = time.monotonic()
            sub = await producer.submit(_job(i, "adm-hedge", stream=True, **extra), interactive=True)
            record = await producer.wait(sub.job_id, timeout=60)
            latencies.append((time.monotonic() - t0) * 1000)
        assert record.status == "succeeded", (tag, record.error)
        cost += record.usage.cost if record.usage else 0.0
        hedges += any(a.hedge == "second" for a in record.attempts)

    await asyncio.gather(*(one(i) for i in range(n)))
    return {
        "p50_ms": round(_pct(latencies, 0.5), 1),
        "p99_ms": round(_pct(latencies, 0.99), 1),
        "cost_usd": cost,
        "hedged_jobs": hedges,
    }


async def hedging(server: RedisServer, catalog: Path, jobs: int) -> dict[str, Any]:
    """Row 3: TTFT 200 ms (95 %) or 2,000 ms (5 %) on both deployments of adm-hedge."""
    queue = "bench-adm-hedge"
    with _simulator() as sim_url:
        env = simulated_env(os.environ, redis_url=server.url, sim_url=sim_url, keys=KEYS)
        env.update(
            LLM_ROUTER_CONFIG=str(catalog), LLM_ROUTER_QUEUE_NAME=queue, LLM_ROUTER_LOG_LEVEL="WARNING"
        )
        settings = Settings(_env_file=None, redis_url=server.url, queue_name=queue)
        producer = await Producer.connect(settings, Catalog.from_path(catalog, env=KEYS, upstream=sim_url))
        rules = [
            {"model": "adm-hedge", "kind": "latency", "latency_ms": 200},
            {"model": "adm-hedge", "kind": "latency", "latency_ms": 1800, "probability": 0.05},
        ]
        async with aiohttp.ClientSession() as http:
            await _sim(http, sim_url, "POST", "/_sim/faults", {"rules": rules})
            try:
                with _workers(env, 1):
                    await _live(producer, 1, settings.interactive_queue_name)
                    # the fleet learns each deployment's time to first token (the hedge waits for p90)
                    await _interactive(producer, 100, "warm", 16)
                    plain = await _interactive(producer, jobs, "plain", 16)
                    hedged = await _interactive(producer, jobs, "hedged", 16, hedge=True)
                    learned = {
                        dep: await producer.redis.hget(f"llm-router:conc:{dep}/adm-hedge", "q")
                        for dep in ("p1", "p2")
                    }
            finally:
                await producer.close()
    return {
        "jobs": jobs,
        "plain": plain,
        "hedged": hedged,
        "learned_p90_ms": {k: float(v) if v else None for k, v in learned.items()},
        "extra_spend_pct": round(100 * (hedged["cost_usd"] / plain["cost_usd"] - 1), 2),
    }


async def measure(quick: bool, rows: set[str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, RedisServer() as server:
        catalog = Path(tmp) / "catalog.yaml"
        catalog.write_text(yaml.safe_dump(_catalog_spec()))
        if "cold" in rows:
            results["cold"] = await cold_start(server, 1000)
        if "overload" in rows:
            results["overload"] = await overload(server, catalog, 1500 if quick else 5000)
        if "hedge" in rows:
            results["hedge"] = await hedging(server, catalog, 300 if quick else 1000)
    return results


def _baseline(src: Path) -> dict[str, Any]:
    """Row 1 with the code in ``src``: this script in a process whose path (and whose workers' and
    simulator's) puts that tree first."""
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{Path(__file__).parent}"}
    args = [sys.executable, str(Path(__file__).resolve()), "--print-json", "--rows", "cold"]
    out = subprocess.run(args, env=env, cwd=src, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _table(results: dict[str, Any]) -> Table:
    base = results.get("baseline", {}).get("cold")
    t = Table(title="admission that learns")
    t.add_column("row")
    t.add_column("measured", justify="right")
    t.add_column("target")
    if "cold" in results:
        c = results["cold"]
        before = f" (before: {base['dead_provider_calls']})" if base else ""
        t.add_row(
            f"cold start: calls to the dead provider, {c['jobs']:,} jobs",
            f"{c['dead_provider_calls']}{before}",
            "≤ 60",
        )
        t.add_row("cold start: jobs succeeded", f"{c['succeeded']:,} of {c['jobs']:,}", "all")
    if "overload" in results:
        o = results["overload"]
        t.add_row(
            f"overload (429 past 50): calls refused, {o['jobs']:,} jobs", f"{o['refused_pct']:.2f} %", "< 2 %"
        )
        t.add_row(
            "overload: in flight median / p10 / mean",
            f"{o['in_flight_median']} / {o['in_flight_p10']} / {o['in_flight_mean']:.1f}",
            "near 50",
        )
        t.add_row("overload: samples under 30 in flight", f"{o['below_30_pct']:.1f} %", "no oscillation")
        t.add_row("overload: learned limit, jobs/s", f"{o['learned_limit']}, {o['jps']}", "≤ 500 jobs/s")
    if "hedge" in results:
        h = results["hedge"]
        for name in ("plain", "hedged"):
            r = h[name]
            ratio = r["p99_ms"] / r["p50_ms"]
            how = "hedge: true (p90)" if name == "hedged" else "no hedge"
            t.add_row(
                f"TTFT 200 ms / 5 % 2 s, {how}: p50 / p99",
                f"{r['p50_ms']:.0f} / {r['p99_ms']:.0f} ms ({ratio:.1f}x)",
                "p99 ≤ 2.5x p50" if name == "hedged" else "",
            )
        t.add_row(
            "hedging: jobs hedged, extra spend",
            f"{h['hedged']['hedged_jobs']} of {h['jobs']:,}, {h['extra_spend_pct']:+.1f} %",
            "≤ 10 %",
        )
    return t


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", default="cold,overload,hedge")
    parser.add_argument(
        "--baseline-src", type=Path, help="a source tree to measure the cold start with first"
    )
    parser.add_argument("--print-json", action="store_true", help=argparse.SUPPRESS)  # a baseline's run
    args = parser.parse_args()
    rows = set(args.rows.split(","))
    if args.print_json:
        print(json.dumps(await measure(args.quick, rows)))
        return
    results: dict[str, Any] = {"date": datetime.now(UTC).isoformat()}
    if args.baseline_src:
        results["baseline"] = await asyncio.to_thread(_baseline, args.baseline_src.resolve())
    results.update(await measure(args.quick, rows))
    Console(width=120).print(_table(results))
    write_json("admission", results)


if __name__ == "__main__":
    uvloop.run(main())
