"""The queue under the fleet: Redis cost per job, an idle worker, queue waits, scale-out past arq's
read window, fairness and priorities. One private ``redis-server``, the simulator, worker processes.

1. **redis cost**: 2,000 jobs through two workers while a producer waits for them, at 0 ms and at
   2 s provider latency: Redis CPU µs and commands per job (``INFO commandstats``, the server's
   ``/proc`` CPU) — waiting by listening, claims that never walk past held jobs;
2. **idle**: one worker with nothing to do for 10 s: its CPU share and the Redis commands it sends;
3. **queue wait** at low load: 200 jobs one at a time on each queue (bulk, interactive): p50/p99 of
   ``started_at - created_at``;
4. **scale-out**: 1, 2, 4 and 8 workers with ``--max-jobs 25`` and ``queue_read_limit`` 50, 2 s
   provider latency: jobs in flight at once and jobs/s (past the read limit once 4 workers run);
5. **fairness**: one tenant floods 20,000 jobs, another then submits 100: the second's queue wait
   p50/p99 against the same 100 on an empty queue;
6. **priorities**: 5,000 ``low`` jobs, then 50 ``high`` ones: when the high ones start.

Prints a table and writes JSON to ``bench/results/``. Part of ``make bench``; ``--quick`` for a
smaller run. ``--baseline-src DIR`` runs rows 1-5 first with the code in DIR (say a checkout from
before the queue's rewrite: ``git worktree add /tmp/before 6fd4555``), in a process of its own whose
workers run that code too, and prints both columns; a baseline without tenants or priorities floods
and submits as one tenant (its FIFO is what fairness is measured against) and skips row 6.
"""

from __future__ import annotations

import argparse
import asyncio
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

import uvloop
from output import write_json  # bench/output.py, beside this script
from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table

from config.catalog import Catalog
from config.settings import Settings
from llm_router.contract import JobRecord
from producer.producer import Producer, Submitted

try:
    from llm_router.testing.redis_server import RedisServer, free_port
    from llm_router.testing.sim_env import simulated_env
except ImportError:  # a baseline tree from before the harness moved to llm_router/testing/
    from llm_router.redis_server import RedisServer, free_port  # type: ignore[no-redef]
    from llm_router.sim_env import simulated_env  # type: ignore[no-redef]

# a baseline from before tenant-scoped ids: one tenant, waits by id
TENANTS = hasattr(Producer, "scoped")

CHAT = {
    "model": "gpt-4o-mini",
    "max_tokens": 16,
    "fallbacks": [],
    "messages": [{"role": "user", "content": "hi"}],
}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)] if ordered else float("nan")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def simulator(latency_ms: int) -> Iterator[str]:
    port = free_port()
    args = [sys.executable, "-m", "llm_router.cli", "simulate", "--port", str(port)]
    if latency_ms:
        args += ["--latency-ms", f"{latency_ms},{latency_ms}"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextmanager
def workers(
    env: dict[str, str], count: int, max_jobs: int, queues: str = "bulk"
) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llm_router.cli",
                "worker",
                "--max-jobs",
                str(max_jobs),
                "--queues",
                queues,
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]
    try:
        yield procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


async def _producer(redis_url: str, queue: str, env: dict[str, str]) -> Producer:
    settings = Settings(_env_file=None, redis_url=redis_url, queue_name=queue)
    return await Producer.connect(settings, Catalog.load(settings, env=env))


async def _live(producer: Producer, n: int, queue: str | None = None) -> None:
    for _ in range(1200):
        if await producer.live_workers(queue) >= n:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{n} workers did not come up")


def _tenant(name: str) -> dict[str, str]:
    return {"tenant": name} if TENANTS else {}


def _handles(subs: list[Any]) -> list[Any]:
    """What ``wait_many`` takes: the submissions (they carry the tenant), or a baseline's ids."""
    ok = [s for s in subs if isinstance(s, Submitted)]
    return ok if TENANTS else [s.job_id for s in ok]


def _peak(records: list[JobRecord]) -> int:
    """Most jobs running at once, from the records' start and end times."""
    events = sorted(
        [(r.started_at or 0, 1) for r in records] + [(r.finished_at or 0, -1) for r in records],
        key=lambda e: (e[0], e[1]),
    )
    peak = now = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


def _jobs(n: int, tag: str, **extra: Any) -> list[dict[str, Any]]:
    return [{**CHAT, "messages": [{"role": "user", "content": f"{tag} {i}"}], **extra} for i in range(n)]


async def _by_command(redis: Redis) -> dict[str, tuple[int, int]]:
    """Calls and CPU µs per command (a script's own calls count under their names too)."""
    stats = await redis.info("commandstats")
    return {k.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for k, v in stats.items()}


async def _redis_stats(redis: Redis) -> tuple[int, float]:
    stats = await redis.info("commandstats")
    calls = sum(int(v["calls"]) for v in stats.values() if isinstance(v, dict))
    cpu = await redis.info("cpu")
    return calls, float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


async def redis_cost(server: RedisServer, base: dict[str, str], latency_ms: int, n: int) -> dict[str, Any]:
    with simulator(latency_ms) as sim_url:
        queue = f"bench-cost-{latency_ms}"
        env = simulated_env(base, redis_url=server.url, sim_url=sim_url)
        env.update(LLM_ROUTER_QUEUE_NAME=queue, LLM_ROUTER_LOG_LEVEL="ERROR")
        producer = await _producer(server.url, queue, env)
        redis = Redis.from_url(server.url)
        try:
            with workers(env, 2, max(n // 2, 50)):
                await _live(producer, 2)
                calls0, cpu0 = await _redis_stats(redis)
                by0 = await _by_command(redis)
                t0 = time.perf_counter()
                subs = await producer.submit_many(_jobs(n, f"cost{latency_ms}"))
                records = await producer.wait_many(_handles(subs), timeout=600)
                seconds = time.perf_counter() - t0
                calls1, cpu1 = await _redis_stats(redis)
                by1 = await _by_command(redis)
        finally:
            await producer.close()
            await redis.aclose()
    assert all(r.status == "succeeded" for r in records)
    return {
        "latency_ms": latency_ms,
        "jobs": n,
        "redis_cpu_us_per_job": (cpu1 - cpu0) / n * 1e6,
        "redis_commands_per_job": (calls1 - calls0) / n,
        "seconds": seconds,
        # per job: [calls, CPU µs] by command, the costliest first
        "by_command": dict(
            sorted(
                (
                    (name, [(c - by0.get(name, (0, 0))[0]) / n, (u - by0.get(name, (0, 0))[1]) / n])
                    for name, (c, u) in by1.items()
                ),
                key=lambda kv: -kv[1][1],
            )[:12]
        ),
    }


async def idle(server: RedisServer, base: dict[str, str], seconds: float) -> dict[str, Any]:
    with simulator(0) as sim_url:
        queue = "bench-idle"
        env = simulated_env(base, redis_url=server.url, sim_url=sim_url)
        env.update(LLM_ROUTER_QUEUE_NAME=queue, LLM_ROUTER_LOG_LEVEL="ERROR")
        producer = await _producer(server.url, queue, env)
        redis = Redis.from_url(server.url)
        try:
            port = free_port()
            server = subprocess.Popen(
                [sys.executable, "-m", "llm_router.cli", "serve", "--port", str(port), "--no-auth"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                with workers(env, 1, 200, queues="interactive,bulk") as procs:
                    await _live(producer, 1)
                    await asyncio.sleep(2.0)  # start-up done
                    calls0, _ = await _redis_stats(redis)
                    cpu0, server0 = _cpu_s(procs[0].pid), _cpu_s(server.pid)
                    await asyncio.sleep(seconds)
                    cpu1, server1 = _cpu_s(procs[0].pid), _cpu_s(server.pid)
                    calls1, _ = await _redis_stats(redis)
            finally:
                server.terminate()
                server.wait(timeout=30)
        finally:
            await producer.close()
            await redis.aclose()
    return {
        "idle_seconds": seconds,
        "idle_worker_cpu_pct": (cpu1 - cpu0) / seconds * 100,
        "idle_server_cpu_pct": (server1 - server0) / seconds * 100,
        "idle_redis_commands_per_s": (calls1 - calls0) / seconds,
    }


def _waits_ms(records: list[JobRecord]) -> list[float]:
    return [((r.started_at or 0) - r.created_at) * 1000 for r in records]


async def queue_wait(server: RedisServer, base: dict[str, str], n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with simulator(0) as sim_url:
        queue = "bench-wait"
        env = simulated_env(base, redis_url=server.url, sim_url=sim_url)
        env.update(LLM_ROUTER_QUEUE_NAME=queue, LLM_ROUTER_LOG_LEVEL="ERROR")
        producer = await _producer(server.url, queue, env)
        try:
            with workers(env, 1, 50, queues="interactive,bulk"):
                await _live(producer, 1)
                await _live(producer, 1, producer.settings.interactive_queue_name)
                for kind, interactive in (("bulk", False), ("interactive", True)):
                    records = []
                    for job in _jobs(n, f"wait-{kind}"):
                        sub = await producer.submit(job, interactive=interactive)
                        records.append(await producer.wait(sub.job_id, timeout=60))
                        await asyncio.sleep(0.02)  # low load: one at a time, not back to back
                    waits = _waits_ms(records)
                    out[f"{kind}_wait_p50_ms"] = _pct(waits, 0.5)
                    out[f"{kind}_wait_p99_ms"] = _pct(waits, 0.99)
        finally:
            await producer.close()
    return out


async def scale_out(
    server: RedisServer, base: dict[str, str], counts: list[int], n_per: int
) -> list[dict[str, Any]]:
    rows = []
    with simulator(2000) as sim_url:
        for count in counts:
            queue = f"bench-scale-{count}"
            env = simulated_env(base, redis_url=server.url, sim_url=sim_url)
            env.update(
                LLM_ROUTER_QUEUE_NAME=queue, LLM_ROUTER_QUEUE_READ_LIMIT="50", LLM_ROUTER_LOG_LEVEL="ERROR"
            )
            producer = await _producer(server.url, queue, env)
            try:
                with workers(env, count, 25):
                    await _live(producer, count)
                    n = n_per * count
                    subs = await producer.submit_many(_jobs(n, f"scale{count}"))
                    records = await producer.wait_many(_handles(subs), timeout=600)
            finally:
                await producer.close()
            first = min(r.started_at or 0 for r in records)
            last = max(r.finished_at or 0 for r in records)
            rows.append(
                {
                    "workers": count,
                    "slots": count * 25,
                    "peak_in_flight": _peak(records),
                    "jps": n / (last - first),
                }
            )
    return rows


async def fairness(server: RedisServer, base: dict[str, str], flood: int, small: int) -> dict[str, Any]:
    with simulator(20) as sim_url:
        queue = "bench-fair"
        env = simulated_env(base, redis_url=server.url, sim_url=sim_url)
        env.update(LLM_ROUTER_QUEUE_NAME=queue, LLM_ROUTER_LOG_LEVEL="ERROR")
        producer = await _producer(server.url, queue, env)
        try:
            with workers(env, 2, 50):
                await _live(producer, 2)
                alone = await producer.submit_many(_jobs(small, "alone"), **_tenant("small"))
                base_records = await producer.wait_many(_handles(alone), timeout=600)
                flooded = await producer.submit_many(_jobs(flood, "flood"), **_tenant("flood"))
                behind = await producer.submit_many(_jobs(small, "behind"), **_tenant("small"))
                small_records = await producer.wait_many(_handles(behind), timeout=600)
                await producer.cancel_many(
                    [s.job_id for s in flooded if isinstance(s, Submitted)], **_tenant("flood")
                )
        finally:
            await producer.close()
    empty, busy = _waits_ms(base_records), _waits_ms(small_records)
    return {
        "flood_jobs": flood,
        "small_jobs": small,
        "empty_wait_p50_ms": _pct(empty, 0.5),
        "empty_wait_p99_ms": _pct(empty, 0.99),
        "behind_flood_wait_p50_ms": _pct(busy, 0.5),
        "behind_flood_wait_p99_ms": _pct(busy, 0.99),
    }


async def priorities(server: RedisServer, base: dict[str, str], low: int, high: int) -> dict[str, Any]:
    with simulator(20) as sim_url:
        queue = "bench-prio"
        env = simulated_env(base, redis_url=server.url, sim_url=sim_url)
        env.update(LLM_ROUTER_QUEUE_NAME=queue, LLM_ROUTER_LOG_LEVEL="ERROR")
        producer = await _producer(server.url, queue, env)
        try:
            lows = await producer.submit_many(_jobs(low, "low", priority="low"))
            highs = await producer.submit_many(_jobs(high, "high", priority="high"))
            with workers(env, 2, 50):  # the workers start once everything is queued
                high_records = await producer.wait_many(highs, timeout=600)
                low_records = await producer.wait_many(lows, timeout=600)
        finally:
            await producer.close()
    last_high = max(r.started_at or 0 for r in high_records)
    lows_before = sum((r.started_at or 0) < last_high for r in low_records)
    return {"low_jobs": low, "high_jobs": high, "low_started_before_the_last_high": lows_before}


async def measure(quick: bool, with_priorities: bool) -> dict[str, Any]:
    q = quick
    base = dict(os.environ)
    results: dict[str, Any] = {}
    with RedisServer() as server:
        results["cost_0ms"] = await redis_cost(server, base, 0, 1000 if q else 2000)
        results["cost_2s"] = await redis_cost(server, base, 2000, 1000 if q else 2000)
        results["idle"] = await idle(server, base, 5.0 if q else 10.0)
        results["wait"] = await queue_wait(server, base, 50 if q else 200)
        results["scale"] = await scale_out(server, base, [1, 2, 4] if q else [1, 2, 4, 8], 50)
        results["fair"] = await fairness(server, base, 5000 if q else 20_000, 100)
        if with_priorities:
            results["prio"] = await priorities(server, base, 1000 if q else 5000, 50)
    return results


def _baseline(src: Path, quick: bool) -> dict[str, Any]:
    """Rows 1-5 with the code in ``src``: this script in a process whose path (and whose workers')
    puts that tree first."""
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{Path(__file__).parent}"}
    args = [sys.executable, str(Path(__file__).resolve()), "--print-json", *(["--quick"] if quick else [])]
    out = subprocess.run(args, env=env, cwd=src, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _table(results: dict[str, Any]) -> Table:
    base = results.get("baseline")
    t = Table(title="the queue under the fleet")
    t.add_column("row")
    if base:
        t.add_column("baseline", justify="right")
    t.add_column("now", justify="right")
    t.add_column("target")

    def row(name: str, fmt: Any, key: Any, target: str = "") -> None:
        cells = [fmt(key(base))] if base else []
        t.add_row(name, *cells, fmt(key(results)), target)

    for k in ("cost_0ms", "cost_2s"):
        ms = results[k]["latency_ms"]
        row(
            f"Redis CPU per job, provider at {ms} ms",
            lambda v: f"{v:.0f} µs",
            lambda r, k=k: r[k]["redis_cpu_us_per_job"],
            "≤ 100 µs",
        )
        row(
            f"Redis commands per job, provider at {ms} ms",
            lambda v: f"{v:.1f}",
            lambda r, k=k: r[k]["redis_commands_per_job"],
        )
    row(
        "idle worker CPU (interactive + bulk)",
        lambda v: f"{v:.2f} %",
        lambda r: r["idle"]["idle_worker_cpu_pct"],
        "≤ 0.5 %",
    )
    row(
        "idle worker: Redis commands/s",
        lambda v: f"{v:.1f}",
        lambda r: r["idle"]["idle_redis_commands_per_s"],
    )
    for kind in ("interactive", "bulk"):
        row(
            f"queue wait, {kind}, p50 / p99",
            lambda v: f"{v[0]:.1f} / {v[1]:.1f} ms",
            lambda r, kind=kind: (r["wait"][f"{kind}_wait_p50_ms"], r["wait"][f"{kind}_wait_p99_ms"]),
        )
    for i, s in enumerate(results["scale"]):
        row(
            f"scale-out: {s['workers']} workers x 25 (read limit 50)",
            lambda v: f"{v[0]} in flight, {v[1]:.1f} jobs/s",
            lambda r, i=i: (r["scale"][i]["peak_in_flight"], r["scale"][i]["jps"]),
            "near-linear",
        )
    f = results["fair"]
    row(
        "fairness: 100 jobs on an empty queue, wait p50 / p99",
        lambda v: f"{v[0]:.0f} / {v[1]:.0f} ms",
        lambda r: (r["fair"]["empty_wait_p50_ms"], r["fair"]["empty_wait_p99_ms"]),
    )
    row(
        f"fairness: the same 100 behind a {f['flood_jobs']:,} flood, p50 / p99",
        lambda v: f"{v[0]:.0f} / {v[1]:.0f} ms",
        lambda r: (r["fair"]["behind_flood_wait_p50_ms"], r["fair"]["behind_flood_wait_p99_ms"]),
        "p50 ≤ 2x empty",
    )
    if "prio" in results:
        p = results["prio"]
        t.add_row(
            f"priorities: {p['high_jobs']} high behind {p['low_jobs']:,} low",
            *(["-"] if base else []),
            f"{p['low_started_before_the_last_high']} low started first",
            "high first (≤ the slots' worth)",
        )
    return t


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--baseline-src", type=Path, help="a source tree to measure rows 1-5 with first")
    parser.add_argument("--print-json", action="store_true", help=argparse.SUPPRESS)  # a baseline's run
    args = parser.parse_args()
    if args.print_json:
        print(json.dumps(await measure(args.quick, with_priorities=False)))
        return
    results: dict[str, Any] = {"date": datetime.now(UTC).isoformat()}
    if args.baseline_src:
        results["baseline"] = await asyncio.to_thread(_baseline, args.baseline_src.resolve(), args.quick)
    results.update(await measure(args.quick, with_priorities=True))
    Console().print(_table(results))
    write_json("claims", results)


if __name__ == "__main__":
    uvloop.run(main())
