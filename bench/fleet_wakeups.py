"""What an idle fleet costs Redis per interactive job: W workers waiting, jobs submitted one at a time.

A job submitted to an empty queue used to publish a wake-up that every waiting worker answered with a
claim, W - 1 of them empty; a hand-off (README "Hand-offs") goes to one worker, started. For each
fleet size this starts a private Redis, the simulator and W ``llm-router worker --queues interactive``
processes, sends ``-n`` jobs one at a time through ``Producer`` (each waited for before the next),
and reads Redis' ``INFO commandstats`` and CPU over them: scripts and commands per job (the claims
among them), Redis CPU per job, and the queue wait (``started_at - created_at``) from the records.
Not part of ``make bench`` (a minute a fleet size); run it from the tree it measures:

    python bench/fleet_wakeups.py --workers 1,4,8 -n 500
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

import uvloop
from http_latency import _pct, process  # bench/http_latency.py, beside this script
from output import write_json  # bench/output.py
from redis.asyncio import Redis

from config.catalog import Catalog
from config.settings import Settings
from llm_router.keys import workers_key
from llm_router.testing.redis_server import RedisServer, free_port
from llm_router.testing.sim_env import simulated_env
from producer.producer import Producer

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
WARMUP = 20
QUEUE = "bench-wakeups"


async def _redis_cpu(redis: Redis) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def measure(workers: int, n: int) -> dict[str, Any]:
    with RedisServer() as redis_server:
        sim_port = free_port()
        sim_url = f"http://127.0.0.1:{sim_port}"
        env = simulated_env(os.environ, redis_url=redis_server.url, sim_url=sim_url, fast_lanes=False)
        env.update(LLM_ROUTER_QUEUE_NAME=QUEUE, LLM_ROUTER_LOG_LEVEL="WARNING")
        cli = [sys.executable, "-m", "llm_router.cli"]
        with process([*cli, "simulate", "--port", str(sim_port)], env, f"{sim_url}/_sim/calls"):
            fleet = [
                subprocess.Popen(
                    [*cli, "worker", "--queues", "interactive"],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for _ in range(workers)
            ]
            redis = Redis.from_url(redis_server.url)
            settings = Settings(_env_file=None, redis_url=redis_server.url, queue_name=QUEUE)
            producer = await Producer.connect(settings, Catalog.load(settings, env=env))
            try:
                while await redis.zcard(workers_key(settings.interactive_queue_name)) < workers:
                    await asyncio.sleep(0.1)
                for _ in range(WARMUP):
                    sub = await producer.submit(CHAT, interactive=True)
                    await producer.wait(sub.job_id, timeout=30)
                await asyncio.sleep(1.5)  # every worker idle again, past a safety look
                await redis.config_resetstat()
                cpu0, t0 = await _redis_cpu(redis), time.perf_counter()
                waits = []
                for _ in range(n):
                    sub = await producer.submit(CHAT, interactive=True)
                    record = await producer.wait(sub.job_id, timeout=30)
                    waits.append((record.started_at - record.created_at) * 1000)  # type: ignore[operator]
                elapsed, cpu1 = time.perf_counter() - t0, await _redis_cpu(redis)
                stats = await redis.info("commandstats")
            finally:
                await producer.close()
                await redis.aclose()
                for proc in fleet:
                    proc.terminate()
                for proc in fleet:
                    proc.wait()
    calls = sum(int(v["calls"]) for v in stats.values())
    scripts = sum(int(stats.get(k, {}).get("calls", 0)) for k in ("cmdstat_evalsha", "cmdstat_eval"))
    return {
        "workers": workers,
        "jobs": n,
        "jobs_per_s": n / elapsed,
        "redis_cpu_us_per_job": (cpu1 - cpu0) / n * 1e6,
        "commands_per_job": calls / n,
        "scripts_per_job": scripts / n,
        "queue_wait_p50_ms": _pct(waits, 0.5),
        "queue_wait_p90_ms": _pct(waits, 0.9),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,4", help="fleet sizes, comma-separated")
    parser.add_argument("-n", type=int, default=500, help="jobs per fleet size, one at a time")
    args = parser.parse_args()
    rows = []
    for w in (int(x) for x in args.workers.split(",")):
        row = uvloop.run(measure(w, args.n))
        rows.append(row)
        print(
            f"{w} workers: {row['jobs_per_s']:.0f} jobs/s one at a time; per job {row['scripts_per_job']:.2f}"
            f" scripts, {row['commands_per_job']:.1f} commands, Redis {row['redis_cpu_us_per_job']:.0f} µs;"
            f" queue wait p50 {row['queue_wait_p50_ms']:.2f} ms, p90 {row['queue_wait_p90_ms']:.2f} ms"
        )
    write_json("fleet-wakeups", {"date": datetime.now(UTC).isoformat(timespec="seconds"), "rows": rows})


if __name__ == "__main__":
    main()
