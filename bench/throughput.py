"""Throughput benchmark: llm-router's job path against the network's and arq's own limits.

All in one run on one machine, so the ratios hold however busy it is:

1. **limit**: raw aiohttp requests/s to the simulator (0 ms latency, concurrency 64);
2. **engine**: arq no-op jobs/s drained by one arq worker with llm-router's arq settings;
3. **ours**: jobs/s drained by one llm-router worker (claim → simulator → record with cost, settled
   against its tenant's credit), with Redis commands and read events (≈ round trips) per job and
   the worker's CPU µs per job;
4. **bulk submit**: jobs/s enqueued with records by ``Producer.submit_many`` for a tenant with
   credit (each job reserves its worst case), against arq's ``enqueue_job`` (``asyncio.gather`` in
   chunks of 500), both with the collector settings of our bulk submitter (``submitter_gc``).

Prints a table and writes JSON to ``bench/results/``. Run with ``make bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import uvloop
from arq.connections import RedisSettings, create_pool
from output import write_json  # bench/output.py, beside this script
from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table
from sim_ready import wait_for_simulator  # bench/sim_ready.py

from config.catalog import Catalog
from config.settings import Settings
from llm_router.credits import Ledger
from llm_router.gc_tuning import tune_gc
from llm_router.testing.redis_server import RedisServer, free_port
from llm_router.testing.sim_env import simulated_env
from producer.producer import Producer

ROOT = Path(__file__).resolve().parent.parent
CHAT = {"model": "gpt-4o-mini", "max_tokens": 32, "messages": [{"role": "user", "content": "Say hello."}]}


async def limit(sim_url: str, n: int, concurrency: int = 64) -> float:
    body = orjson.dumps({**CHAT, "model": "gpt-4o-mini"})
    headers = {"Authorization": "Bearer sk-sim-openai", "Content-Type": "application/json"}
    left = n

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            async with session.post(f"{sim_url}/v1/chat/completions", data=body, headers=headers) as r:
                await r.read()
                assert r.status == 200

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        return n / (time.perf_counter() - t0)


async def fill_noop_queue(redis_url: str, queue: str, n: int) -> None:
    """arq's job format for a no-op function, written in pipelines (the engine's input)."""
    redis = Redis.from_url(redis_url)
    now = int(time.time() * 1000)
    for start in range(0, n, 1000):
        async with redis.pipeline(transaction=False) as pipe:
            for i in range(start, min(start + 1000, n)):
                job_id = f"noop-{i}"
                pipe.set(
                    f"arq:job:{job_id}", orjson.dumps({"t": None, "f": "noop", "a": [], "k": {}, "et": now})
                )
                pipe.zadd(queue, {job_id: now})
            await pipe.execute()
    await redis.aclose()


def drain(kind: str, env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "drain_worker.py"), kind],
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if out.returncode != 0 or not out.stdout.strip():
        raise RuntimeError(f"{kind} worker failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


async def redis_counters(redis: Redis) -> tuple[int, int]:
    stats = await redis.info("stats")
    return int(stats["total_commands_processed"]), int(stats["total_reads_processed"])


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def end_to_end(redis_url: str, env: dict[str, str], n: int) -> dict[str, float]:
    """A running worker; the clock runs from the bulk submit to the last record read by ``wait_many``."""
    queue = "bench-e2e"
    settings = Settings(_env_file=None, redis_url=redis_url, queue_name=queue)
    producer = await Producer.connect(settings, Catalog.load(settings, env=env))
    worker = subprocess.Popen(
        [sys.executable, "-m", "llm_router.cli", "worker"],
        env={**env, "LLM_ROUTER_QUEUE_NAME": queue},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(600):
            if await producer.live_workers():
                break
            await asyncio.sleep(0.05)
        jobs = [
            orjson.dumps({**CHAT, "messages": [{"role": "user", "content": f"Hello {i}."}]}) for i in range(n)
        ]
        cpu0 = _cpu_seconds(worker.pid)
        t0 = time.perf_counter()
        submitted = await producer.submit_many(jobs)
        records = await producer.wait_many([s.job_id for s in submitted], timeout=600)  # type: ignore[union-attr]
        seconds = time.perf_counter() - t0
        cpu = _cpu_seconds(worker.pid) - cpu0
        assert all(r.status == "succeeded" for r in records)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        await producer.close()
    return {"e2e_jps": n / seconds, "e2e_worker_cpu_us_per_job": cpu / n * 1e6}


@contextmanager
def submitter_gc() -> Iterator[None]:
    """The collector as a process of ours that submits in bulk has it (``llm-router submit``, the
    server: ``llm_router.gc_tuning``), for both sides of the bulk row: our submit and arq's enqueue.
    With Python's defaults the collections cost our submit ~3 µs a job (bench/README.md)."""
    thresholds = gc.get_threshold()
    tune_gc()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


async def arq_enqueue(redis_url: str, queue: str, n: int) -> float:
    pool = await create_pool(
        RedisSettings.from_dsn(redis_url),
        job_serializer=orjson.dumps,
        job_deserializer=orjson.loads,
        default_queue_name=queue,
    )
    t0 = time.perf_counter()
    for start in range(0, n, 500):
        await asyncio.gather(
            *(pool.enqueue_job("noop", _job_id=f"arq-{i}") for i in range(start, min(start + 500, n)))
        )
    rate = n / (time.perf_counter() - t0)
    await pool.aclose()
    return rate


async def run(n: int) -> dict[str, Any]:
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "jobs": n,
        "cpus": os.cpu_count(),
    }
    with RedisServer() as server:
        port = free_port()
        sim = subprocess.Popen(
            [sys.executable, "-m", "llm_router.cli", "simulate", "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        sim_url = f"http://127.0.0.1:{port}"
        try:
            await wait_for_simulator(sim_url)
            redis = Redis.from_url(server.url)
            env = simulated_env(os.environ, redis_url=server.url, sim_url=sim_url)
            env["LLM_ROUTER_LOG_LEVEL"] = "WARNING"

            results["limit_rps"] = await limit(sim_url, n)

            await fill_noop_queue(server.url, "bench-engine", n)
            engine = drain("engine", {**env, "LLM_ROUTER_QUEUE_NAME": "bench-engine"})
            results["engine_jps"] = engine["jobs"] / engine["seconds"]
            results["engine_cpu_us_per_job"] = engine["cpu_s"] / engine["jobs"] * 1e6

            settings = Settings(_env_file=None, redis_url=server.url, queue_name="bench-ours")
            catalog = Catalog.load(settings, env=env)
            producer = await Producer.connect(settings, catalog)
            jobs = [
                orjson.dumps({**CHAT, "messages": [{"role": "user", "content": f"Say hello {i}."}]})
                for i in range(n)
            ]
            # the tenant has credit, as a paying one has: every job reserves its worst case at submit
            # and settles when it ends (the row's "reservations")
            await Ledger(producer.redis).add(producer.tenant, 1_000)
            # a process's first submit also builds the catalog's price table (~0.2 s, once): measured
            # apart, on a queue of its own, so that the bulk row is the rate a producer keeps
            warm_settings = Settings(_env_file=None, redis_url=server.url, queue_name="bench-warm")
            warm = Producer(producer.redis, catalog, warm_settings)
            t0 = time.perf_counter()
            await warm.submit_many(jobs[:100])
            results["first_submit_100_ms"] = (time.perf_counter() - t0) * 1000
            with submitter_gc():
                t0 = time.perf_counter()
                submitted = await producer.submit_many(jobs)
                results["bulk_submit_jps"] = n / (time.perf_counter() - t0)
            ids = [s.job_id for s in submitted]  # type: ignore[union-attr]
            assert len(ids) == n

            before = await redis_counters(redis)
            ours = drain("ours", {**env, "LLM_ROUTER_QUEUE_NAME": "bench-ours"})
            after = await redis_counters(redis)
            records = await producer.wait_many(ids, timeout=60)
            ok = sum(r.status == "succeeded" for r in records)
            assert ok == n, f"{n - ok} jobs did not succeed"
            results["ours_jps"] = ours["jobs"] / ours["seconds"]
            results["ours_cpu_us_per_job"] = ours["cpu_s"] / ours["jobs"] * 1e6
            results["ours_redis_commands_per_job"] = (after[0] - before[0]) / n
            results["ours_redis_reads_per_job"] = (after[1] - before[1]) / n
            await producer.close()

            results.update(await end_to_end(server.url, env, n))
            with submitter_gc():
                results["arq_enqueue_jps"] = await arq_enqueue(server.url, "bench-arq-enqueue", n)
            await redis.aclose()
        finally:
            sim.terminate()
            sim.wait(timeout=10)
    results["ours_over_engine"] = results["ours_jps"] / results["engine_jps"]
    results["ours_over_limit"] = results["ours_jps"] / results["limit_rps"]
    results["bulk_over_arq_enqueue"] = results["bulk_submit_jps"] / results["arq_enqueue_jps"]
    return results


def report(r: dict[str, Any]) -> None:
    table = Table(title=f"llm-router throughput, {r['jobs']:,} jobs, {r['cpus']} CPUs, {r['date']}")
    table.add_column("what")
    table.add_column("figure", justify="right")
    table.add_column("target / note")
    table.add_row(
        "limit: raw aiohttp → simulator, c=64", f"{r['limit_rps']:,.0f} req/s", "the network's ceiling"
    )
    table.add_row(
        "engine: arq no-op jobs, one worker",
        f"{r['engine_jps']:,.0f} jobs/s",
        f"{r['engine_cpu_us_per_job']:.0f} CPU µs/job",
    )
    table.add_row(
        "ours: drain, one worker",
        f"{r['ours_jps']:,.0f} jobs/s",
        f"{r['ours_cpu_us_per_job']:.0f} CPU µs/job",
    )
    table.add_row("ours / engine", f"{r['ours_over_engine']:.2f}", "target ≥ 0.50")
    table.add_row(
        "ours, submit → worker → wait, 20k jobs",
        f"{r['e2e_jps']:,.0f} jobs/s",
        f"{r['e2e_worker_cpu_us_per_job']:.0f} worker CPU µs/job",
    )
    table.add_row("ours / limit", f"{r['ours_over_limit']:.2f}", "")
    table.add_row("Redis commands per job (worker)", f"{r['ours_redis_commands_per_job']:.1f}", "")
    table.add_row("Redis read events per job (≈ round trips)", f"{r['ours_redis_reads_per_job']:.2f}", "")
    ok = r["bulk_submit_jps"] >= 50_000
    table.add_row(
        "bulk submit with records and reservations",
        f"{r['bulk_submit_jps']:,.0f} jobs/s",
        f"target ≥ 50,000 {'✔' if ok else '✘'} (a process's first 100: {r['first_submit_100_ms']:,.0f} ms)",
    )
    table.add_row(
        "arq enqueue_job (gather, 500)",
        f"{r['arq_enqueue_jps']:,.0f} jobs/s",
        f"bulk is {r['bulk_over_arq_enqueue']:.1f}x arq",
    )
    Console(width=110).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    args = parser.parse_args()
    results = uvloop.run(run(args.jobs))
    report(results)
    write_json("throughput", results)


if __name__ == "__main__":
    main()
