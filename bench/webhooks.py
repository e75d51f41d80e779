"""Webhook delivery under a steady load: 10,000 jobs with webhooks at 500 jobs/s to a local receiver.

One private ``redis-server``, the simulator (0 ms), one worker (``--queues bulk``, not delivering),
``llm-router webhooks run`` as the deliverer (a process of its own, so its CPU is its own), and a
receiver process (aiohttp) that notes when each delivery arrives and verifies a sample of the
signatures with the ``standardwebhooks`` package. Twice, interleaved: jobs without webhooks, then
the same jobs with webhooks, at the same offered load; the difference is what delivery costs.

Reports delivery latency after the job ended (receiver arrival minus the record's ``finished_at``) at
p50/p99, the deliverer's CPU µs per delivery, Redis commands per delivery (the difference of
``total_commands_processed`` between the two runs, per job: the due-set write at the job's end
included) and the worker's and Redis' CPU per job in both. Targets: p99 ≤ 1 s, ≤ 150 CPU µs and
≤ 6 Redis commands per delivery. ``--jobs``, ``--rate`` change the size; run with ``make bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
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
from llm_router.keys import WEBHOOKS_DUE_KEY, active_key
from llm_router.testing.redis_server import RedisServer, free_port
from llm_router.testing.sim_env import simulated_env
from llm_router.webhooks.signing import derive_key, secret_text
from producer.producer import Producer

ROOT = Path(__file__).resolve().parent.parent
MASTER = "bench-master-key-0123456789abcdef"
TENANT = "bench"
VERIFY_EVERY = 50  # the receiver verifies one delivery in this many (verification costs it CPU)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


# -- the receiver (this script run with --receive) -------------------------------------------------


def receive(port: int, out: Path) -> None:
    """Answer 204 to every delivery, note (arrival, job id, webhook-id); write them out on SIGTERM."""
    from aiohttp import web
    from standardwebhooks import Webhook

    hook = Webhook(secret_text(derive_key(MASTER.encode(), TENANT, 1)))
    seen: list[tuple[float, str, str]] = []
    checked = [0, 0]  # verified, failed

    async def handle(request: web.Request) -> web.Response:
        at = time.time()
        body = await request.read()
        msg_id = request.headers["webhook-id"]
        if len(seen) % VERIFY_EVERY == 0:
            try:
                hook.verify(body, dict(request.headers))
                checked[0] += 1
            except Exception:
                checked[1] += 1
        seen.append((at, orjson.loads(body)["data"]["id"], msg_id))
        return web.Response(status=204)

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/hook", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        out.write_bytes(orjson.dumps({"seen": seen, "verified": checked[0], "failed": checked[1]}))
        await runner.cleanup()

    uvloop.run(main())


# -- the run -----------------------------------------------------------------------------------------


async def _wait_http(url: str) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(400):
            try:
                async with s.get(url) as r:
                    if r.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


async def _redis_stats(redis: Redis) -> dict[str, float]:
    stats, cpu = await redis.info("stats"), await redis.info("cpu")
    commands = await redis.info("commandstats")
    out = {
        "commands": float(stats["total_commands_processed"]),
        "cpu": float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
    }
    out.update({f"cmd:{k.removeprefix('cmdstat_')}": float(v["calls"]) for k, v in commands.items()})
    return out


async def phase(
    producer: Producer, redis: Redis, pids: dict[str, int], n: int, rate: float, url: str | None
) -> dict[str, Any]:
    """Submit ``n`` jobs at ``rate`` per second (with a webhook to ``url``, or none); wait for them."""
    tag = "hooked" if url else "plain"
    hook = {"webhook": {"url": url}} if url else {"webhook": False}
    jobs = [
        orjson.dumps(
            {
                "model": "gpt-4o-mini",
                "max_tokens": 16,
                "messages": [{"role": "user", "content": f"{tag} {i}"}],
                **hook,
            }
        )
        for i in range(n)
    ]
    cpu0 = {name: _cpu_seconds(pid) for name, pid in pids.items()}
    stats0 = await _redis_stats(redis)
    tick = 0.01
    per_tick = rate * tick
    ids: list[str] = []
    started = time.perf_counter()
    sent = 0
    while sent < n:
        due = min(n, int((time.perf_counter() - started) / tick * per_tick) + int(per_tick))
        if due > sent:
            subs = await producer.submit_many(jobs[sent:due], tenant=TENANT)
            ids.extend(s.job_id for s in subs)  # type: ignore[union-attr]
            sent = due
        await asyncio.sleep(tick)
    offered_s = time.perf_counter() - started
    # the tenant's queued and running jobs: one read a poll (a status poll of every id would be
    # thousands of commands, counted against the phase)
    deadline = time.monotonic() + 300
    while int(await redis.get(active_key(TENANT)) or 0) > 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return {
        "ids": ids,
        "offered_jps": n / offered_s,
        "cpu0": cpu0,
        "stats0": stats0,
    }


async def finish_phase(
    redis: Redis, pids: dict[str, int], started: dict[str, Any], n: int, settle: Any = None
) -> dict[str, Any]:
    if settle is not None:
        await settle()
    stats = await _redis_stats(redis)
    cpu = {name: _cpu_seconds(pid) - started["cpu0"][name] for name, pid in pids.items()}
    delta = {k: stats.get(k, 0.0) - started["stats0"].get(k, 0.0) for k in stats}
    return {
        "commands_per_job": delta["commands"] / n,
        "redis_cpu_us_per_job": delta["cpu"] / n * 1e6,
        "worker_cpu_us_per_job": cpu["worker"] / n * 1e6,
        "deliverer_cpu_s": cpu["deliverer"],
        "commandstats": {k[4:]: v for k, v in delta.items() if k.startswith("cmd:") and v},
        "offered_jps": started["offered_jps"],
    }


async def run(n: int, rate: float) -> dict[str, Any]:
    results: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "jobs": n,
        "rate": rate,
    }
    procs: list[subprocess.Popen[bytes]] = []
    receipts = Path(f"/tmp/llm-router-bench-webhooks-{os.getpid()}.json")
    with RedisServer() as server:
        sim_port, recv_port = free_port(), free_port()
        env = simulated_env(os.environ, redis_url=server.url, sim_url=f"http://127.0.0.1:{sim_port}")
        env.update(
            LLM_ROUTER_QUEUE_NAME="bench-webhooks",
            LLM_ROUTER_LOG_LEVEL="WARNING",
            LLM_ROUTER_WEBHOOK_MASTER_KEY=MASTER,
            LLM_ROUTER_WEBHOOK_ALLOW="127.0.0.1/32",
            LLM_ROUTER_WEBHOOKS_IN_WORKER="0",
            PYTHONPATH=str(ROOT),
        )

        def spawn(*args: str) -> subprocess.Popen[bytes]:
            proc = subprocess.Popen(
                [sys.executable, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            procs.append(proc)
            return proc

        spawn("-m", "llm_router.cli", "simulate", "--port", str(sim_port))
        spawn(str(Path(__file__)), "--receive", str(recv_port), "--out", str(receipts))
        worker = spawn("-m", "llm_router.cli", "worker", "--queues", "bulk")
        deliverer = spawn("-m", "llm_router.cli", "webhooks", "run")
        settings = Settings(
            _env_file=None, redis_url=server.url, queue_name="bench-webhooks", webhook_allow="127.0.0.1/32"
        )
        producer = await Producer.connect(settings, Catalog.load(settings, env=env))
        redis = Redis.from_url(server.url)
        try:
            await _wait_http(f"http://127.0.0.1:{sim_port}/_sim/calls")
            while not await producer.live_workers():
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)  # the deliverer takes its role, the receiver listens
            pids = {"worker": worker.pid, "deliverer": deliverer.pid}
            url = f"http://127.0.0.1:{recv_port}/hook"

            # warm both paths (connections, scripts, caches), then measure
            await phase(producer, redis, pids, 500, rate, url)
            await asyncio.sleep(1.0)

            started = await phase(producer, redis, pids, n, rate, None)
            plain = await finish_phase(redis, pids, started, n, settle=lambda: asyncio.sleep(1.0))

            started = await phase(producer, redis, pids, n, rate, url)
            hooked_ids = set(started["ids"])

            async def delivered() -> None:
                deadline = time.monotonic() + 120
                while await redis.zcard(WEBHOOKS_DUE_KEY) and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                await asyncio.sleep(1.0)  # the last outcomes written, like the plain phase's idle second

            hooked = await finish_phase(redis, pids, started, n, settle=delivered)
            records = await producer.wait_many(started["ids"], timeout=60, tenant=TENANT)
            assert all(r.status == "succeeded" for r in records), "a job failed"
            finished = {r.id: r.finished_at or 0.0 for r in records}
        finally:
            for proc in reversed(procs):
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
            await producer.close()
            await redis.aclose()
    got = orjson.loads(receipts.read_bytes())
    receipts.unlink()
    seen = [(at, job_id) for at, job_id, _ in got["seen"] if job_id in hooked_ids]
    first: dict[str, float] = {}
    for at, job_id in seen:
        first.setdefault(job_id, at)
    latencies = [(first[j] - finished[j]) * 1000 for j in first]
    results.update(
        plain=plain,
        hooked=hooked,
        delivered=len(first),
        duplicates=len(seen) - len(first),
        verified=got["verified"],
        verify_failed=got["failed"],
        latency_p50_ms=_pct(latencies, 0.50),
        latency_p90_ms=_pct(latencies, 0.90),
        latency_p99_ms=_pct(latencies, 0.99),
        latency_max_ms=max(latencies),
        latency_over_1s=sum(x > 1000 for x in latencies),
        # the worst second of the run: when the tail happened, and how much of it
        latency_by_second=_by_second(first, finished),
        deliverer_cpu_us_per_delivery=(hooked["deliverer_cpu_s"] - plain["deliverer_cpu_s"]) / n * 1e6,
        deliverer_cpu_us_per_delivery_all=hooked["deliverer_cpu_s"] / n * 1e6,
        redis_commands_per_delivery=hooked["commands_per_job"] - plain["commands_per_job"],
        commands_delta={
            k: round((hooked["commandstats"].get(k, 0) - plain["commandstats"].get(k, 0)) / n, 3)
            for k in sorted(set(hooked["commandstats"]) | set(plain["commandstats"]))
            if abs(hooked["commandstats"].get(k, 0) - plain["commandstats"].get(k, 0)) / n >= 0.005
        },
    )
    return results


def _by_second(arrived: dict[str, float], finished: dict[str, float]) -> list[list[float]]:
    """[second of the run, deliveries, max latency ms] for each second the jobs ended in."""
    start = min(finished[j] for j in arrived)
    buckets: dict[int, list[float]] = {}
    for job_id, at in arrived.items():
        buckets.setdefault(int(finished[job_id] - start), []).append((at - finished[job_id]) * 1000)
    return [[s, len(v), round(max(v), 1)] for s, v in sorted(buckets.items())]


def report(r: dict[str, Any]) -> None:
    table = Table(
        title=f"webhooks: {r['jobs']:,} jobs at {r['rate']:.0f} jobs/s, {r['cpus']} CPUs, {r['date']}"
    )
    for col in ("what", "figure", "target"):
        table.add_column(col)
    p, h = r["plain"], r["hooked"]
    table.add_row(
        "offered load (plain / with webhooks)", f"{p['offered_jps']:.0f} / {h['offered_jps']:.0f} jobs/s", ""
    )
    table.add_row(
        "delivered (duplicates)", f"{r['delivered']:,} of {r['jobs']:,} ({r['duplicates']})", "all, once"
    )
    table.add_row(
        "signatures verified (sample)", f"{r['verified']} ok, {r['verify_failed']} failed", "0 failed"
    )
    table.add_row(
        "delivery latency after the job ended, p50 / p99",
        f"{r['latency_p50_ms']:.1f} / {r['latency_p99_ms']:.1f} ms (p90 {r['latency_p90_ms']:.0f}, "
        f"max {r['latency_max_ms']:.0f}, {r['latency_over_1s']} over 1 s)",
        "p99 ≤ 1,000 ms",
    )
    table.add_row(
        "deliverer CPU per delivery",
        f"{r['deliverer_cpu_us_per_delivery']:.0f} µs "
        f"({r['deliverer_cpu_us_per_delivery_all']:.0f} with idle polling)",
        "≤ 150 µs",
    )
    table.add_row("Redis commands per delivery", f"{r['redis_commands_per_delivery']:.2f}", "≤ 6")
    table.add_row(
        "  by command (per job, with minus without)",
        ", ".join(f"{k} {v:+.2f}" for k, v in r["commands_delta"].items()),
        "",
    )
    table.add_row(
        "Redis CPU per job, without / with webhooks",
        f"{p['redis_cpu_us_per_job']:.1f} / {h['redis_cpu_us_per_job']:.1f} µs",
        "",
    )
    table.add_row(
        "worker CPU per job, without / with webhooks",
        f"{p['worker_cpu_us_per_job']:.0f} / {h['worker_cpu_us_per_job']:.0f} µs",
        "",
    )
    Console(width=140).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=500.0, help="offered load, jobs/s")
    parser.add_argument("--receive", type=int, help=argparse.SUPPRESS)  # the receiver process's port
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receive:
        receive(args.receive, args.out)
        return
    results = uvloop.run(run(args.jobs, args.rate))
    report(results)
    write_json("webhooks", results)


if __name__ == "__main__":
    main()
