"""What an open breaker costs a job: worker time with the primary skipped against a healthy primary.

2,000 jobs on gpt-4o (OpenAI direct, then AIsa) through one worker and the simulator (0 ms), twice:
with the primary healthy, and with its breaker open (the start script skips it without a call and
AIsa answers). Reports worker time per job (record ``finished_at - started_at``) at p50 and p99 and
the difference. Run with ``make bench``.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import uvloop
from output import write_json  # bench/output.py, beside this script
from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table

from config.catalog import Catalog
from config.settings import Settings
from llm_router.keys import SICK_KEY
from llm_router.testing.redis_server import RedisServer, free_port
from llm_router.testing.sim_env import simulated_env
from producer.producer import Producer

KEYS = {"OPENAI_API_KEY": "sk-sim-openai", "AISA_API_KEY": "sk-sim-aisa"}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


async def _phase(producer: Producer, n: int, tag: str) -> list[float]:
    jobs = [
        orjson.dumps(
            {"model": "gpt-4o", "fallbacks": [], "messages": [{"role": "user", "content": f"{tag} {i}"}]}
        )
        for i in range(n)
    ]
    subs = await producer.submit_many(jobs)
    records = await producer.wait_many([s.job_id for s in subs], timeout=300)  # type: ignore[union-attr]
    assert all(r.status == "succeeded" for r in records)
    expected = "aisa" if tag == "open" else "openai"
    assert all(r.provider == expected for r in records), tag
    return [((r.finished_at or 0) - (r.started_at or 0)) * 1000 for r in records]


async def run(n: int) -> dict[str, Any]:
    with RedisServer() as server:
        port = free_port()
        sim = subprocess.Popen(
            [sys.executable, "-m", "llm_router.cli", "simulate", "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        sim_url = f"http://127.0.0.1:{port}"
        env = simulated_env(os.environ, redis_url=server.url, sim_url=sim_url, keys=KEYS)
        env.update(LLM_ROUTER_QUEUE_NAME="bench-breakers", LLM_ROUTER_LOG_LEVEL="WARNING")
        worker = subprocess.Popen(
            [sys.executable, "-m", "llm_router.cli", "worker", "--max-jobs", "10"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        settings = Settings(_env_file=None, redis_url=server.url, queue_name="bench-breakers")
        producer = await Producer.connect(settings, Catalog.load(settings, env=env))
        redis = Redis.from_url(server.url)
        try:
            async with aiohttp.ClientSession() as s:
                for _ in range(300):
                    try:
                        async with s.get(f"{sim_url}/_sim/health"):
                            break
                    except aiohttp.ClientError:
                        await asyncio.sleep(0.05)
            while not await producer.live_workers():
                await asyncio.sleep(0.05)
            await _phase(producer, 200, "warm")
            healthy = await _phase(producer, n, "healthy")
            await redis.hset(SICK_KEY, "openai/gpt-4o", f"open|{int(time.time() * 1000) + 3_600_000}")
            skipped = await _phase(producer, n, "open")
        finally:
            worker.terminate()
            worker.wait(timeout=30)
            sim.terminate()
            sim.wait(timeout=10)
            await producer.close()
            await redis.aclose()
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "jobs": n,
        "healthy_p50_ms": _pct(healthy, 0.5),
        "healthy_p99_ms": _pct(healthy, 0.99),
        "open_p50_ms": _pct(skipped, 0.5),
        "open_p99_ms": _pct(skipped, 0.99),
        "extra_p50_ms": _pct(skipped, 0.5) - _pct(healthy, 0.5),
        "extra_p99_ms": _pct(skipped, 0.99) - _pct(healthy, 0.99),
        "healthy_mean_ms": statistics.fmean(healthy),
        "open_mean_ms": statistics.fmean(skipped),
    }


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    r = uvloop.run(run(n))
    table = Table(title=f"breaker open vs healthy primary, {n:,} jobs, worker time per job (ms)")
    for col in ("", "p50", "p99", "mean"):
        table.add_column(col, justify="right" if col else "left")
    table.add_row(
        "healthy primary",
        f"{r['healthy_p50_ms']:.2f}",
        f"{r['healthy_p99_ms']:.2f}",
        f"{r['healthy_mean_ms']:.2f}",
    )
    table.add_row(
        "primary's breaker open",
        f"{r['open_p50_ms']:.2f}",
        f"{r['open_p99_ms']:.2f}",
        f"{r['open_mean_ms']:.2f}",
    )
    table.add_row("extra (target p50 < 2 ms)", f"{r['extra_p50_ms']:+.2f}", f"{r['extra_p99_ms']:+.2f}", "")
    Console(width=100).print(table)
    write_json("breakers", r)


if __name__ == "__main__":
    main()
