"""Load benchmark: latency at low load, a wide worker, Redis memory per queued job, scale-out, peer.

All in one run on one machine, against a private ``redis-server`` and the simulator:

1. **latency**: one job at a time (200 jobs, simulator at 0 ms): queue wait, worker overhead (worker
   time minus the upstream call), end to end and end to end minus upstream, p50/p99, next to raw
   aiohttp calls to the simulator one at a time (the upstream baseline);
2. **wide**: simulator at 1,000 ms, one worker with ``--max-jobs 1000``, 5,000 jobs: sustained
   jobs/s and the worker's peak RSS (``VmHWM``);
3. **bulk memory**: Redis bytes per queued job with a 1 KB prompt, 50,000 jobs, no worker;
4. **scale-out**: 1, 2 and 4 workers with ``--max-jobs 25``, simulator at 200 ms, 2,000 jobs each;
5. **peer**: LiteLLM's ``Router.acompletion`` against the simulator at concurrency 64, from its own
   venv under /tmp (skipped with a line saying why if it cannot be installed or run).

Prints a table and writes JSON to ``bench/results/``. Run with ``make bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
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
from output import write_json  # bench/output.py, beside this script
from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table
from sim_ready import wait_for_simulator  # bench/sim_ready.py

from config.catalog import Catalog
from config.settings import Settings
from llm_router.contract import JobRecord
from llm_router.testing.redis_server import RedisServer, free_port
from llm_router.testing.sim_env import simulated_env
from llm_router.testing.worker_procs import terminate
from producer.producer import Producer

ROOT = Path(__file__).resolve().parent.parent
CHAT = {"model": "gpt-4o-mini", "max_tokens": 32, "messages": [{"role": "user", "content": "Say hello."}]}
PEER_VENV = Path("/tmp/litellm-venv")
PEER_SCRIPT = r"""
import asyncio, json, sys, time
from litellm import Router

sim_url, n, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
router = Router(model_list=[{"model_name": "gpt-4o-mini", "litellm_params": {
    "model": "openai/gpt-4o-mini", "api_base": sim_url + "/v1", "api_key": "sk-sim-openai"}}])
messages = [{"role": "user", "content": "Say hello."}]

async def main():
    left = n
    async def client():
        nonlocal left
        while left > 0:
            left -= 1
            await router.acompletion(model="gpt-4o-mini", messages=messages, max_tokens=32)
    for _ in range(50):
        await router.acompletion(model="gpt-4o-mini", messages=messages, max_tokens=32)
    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    print(json.dumps({"rps": n / (time.perf_counter() - t0)}))

asyncio.run(main())
"""


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def _p50_p99(prefix: str, values: list[float]) -> dict[str, float]:
    return {f"{prefix}_p50_ms": _pct(values, 0.5), f"{prefix}_p99_ms": _pct(values, 0.99)}


def _raise_nofile() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@contextmanager
def simulator(latency_ms: int) -> Iterator[str]:
    port = free_port()
    sim = subprocess.Popen(
        [sys.executable, "-m", "llm_router.cli", "simulate", "--port", str(port)]
        + (["--latency-ms", f"{latency_ms},{latency_ms}"] if latency_ms else []),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_raise_nofile,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        sim.terminate()
        sim.wait(timeout=10)


@contextmanager
def workers(env: dict[str, str], count: int, max_jobs: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(count):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "llm_router.cli", "worker", "--max-jobs", str(max_jobs)],
                    env={**env, "LLM_ROUTER_MAX_JOBS": str(max_jobs)},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    preexec_fn=_raise_nofile,
                )
            )
        yield procs
    finally:
        for p in procs:
            p.terminate()  # all at once, then each waited for
        for p in procs:
            terminate(p, 30)


async def _wait_workers(producer: Producer, count: int) -> None:
    for _ in range(600):
        if await producer.live_workers() >= count:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{count} worker(s) did not come up")


def _jobs(n: int, tag: str, content: str = "Say hello") -> list[bytes]:
    return [
        orjson.dumps({**CHAT, "messages": [{"role": "user", "content": f"{content} {tag} {i}."}]})
        for i in range(n)
    ]


async def _connect(redis_url: str, queue: str, env: dict[str, str]) -> Producer:
    settings = Settings(_env_file=None, redis_url=redis_url, queue_name=queue)
    return await Producer.connect(settings, Catalog.load(settings, env=env))


def _upstream_ms(record: JobRecord) -> float:
    ok = [a for a in record.attempts if a.outcome == "success" and a.latency_ms is not None]
    assert ok, f"job {record.id} has no successful attempt with a latency"
    return ok[-1].latency_ms or 0.0


async def raw_sequential(sim_url: str, n: int) -> list[float]:
    body = orjson.dumps(CHAT)
    headers = {"Authorization": "Bearer sk-sim-openai", "Content-Type": "application/json"}
    out: list[float] = []
    async with aiohttp.ClientSession() as session:
        for i in range(n + 20):
            t0 = time.perf_counter()
            async with session.post(f"{sim_url}/v1/chat/completions", data=body, headers=headers) as r:
                await r.read()
                assert r.status == 200
            if i >= 20:  # the first calls open the connection and warm the server
                out.append((time.perf_counter() - t0) * 1000)
    return out


async def latency(redis_url: str, base_env: dict[str, str], sim_url: str, n: int) -> dict[str, Any]:
    queue = "bench-latency"
    env = {**base_env, "LLM_ROUTER_QUEUE_NAME": queue}
    producer = await _connect(redis_url, queue, env)
    try:
        with workers(env, 1, 10):
            await _wait_workers(producer, 1)
            for i in range(20):  # warm: connections, caches
                await producer.wait((await producer.submit(_jobs(1, f"warm{i}")[0])).job_id, timeout=60)
            records: list[JobRecord] = []
            for i in range(n):
                sub = await producer.submit(_jobs(1, f"lat{i}")[0])
                records.append(await producer.wait(sub.job_id, timeout=60))
    finally:
        await producer.close()
    assert all(r.status == "succeeded" for r in records)
    wait, overhead, e2e, e2e_minus = [], [], [], []
    for r in records:
        up = _upstream_ms(r)
        assert r.started_at and r.finished_at
        wait.append((r.started_at - r.created_at) * 1000)
        overhead.append((r.finished_at - r.started_at) * 1000 - up)
        e2e.append((r.finished_at - r.created_at) * 1000)
        e2e_minus.append((r.finished_at - r.created_at) * 1000 - up)
    upstream = [_upstream_ms(r) for r in records]
    raw = await raw_sequential(sim_url, n)
    return {
        "latency_jobs": n,
        **_p50_p99("queue_wait", wait),
        **_p50_p99("worker_overhead", overhead),
        **_p50_p99("e2e", e2e),
        **_p50_p99("e2e_minus_upstream", e2e_minus),
        **_p50_p99("upstream_in_record", upstream),
        **_p50_p99("raw_sim", raw),
    }


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


async def wide(redis_url: str, base_env: dict[str, str], n: int, max_jobs: int) -> dict[str, Any]:
    queue = "bench-wide"
    env = {**base_env, "LLM_ROUTER_QUEUE_NAME": queue}
    # the adaptive in-flight limit admits the whole width from the first call, as in bench/width.py:
    # from its default 10 at x1.5 a round it took 12 of the run's ~12 rounds to reach 1,000
    env["LLM_ROUTER_CONCURRENCY_INITIAL"] = env["LLM_ROUTER_CONCURRENCY_MAX"] = str(max_jobs)
    producer = await _connect(redis_url, queue, env)
    try:
        with workers(env, 1, max_jobs) as procs:
            await _wait_workers(producer, 1)
            jobs = _jobs(n, "wide")
            cpu0 = _cpu_seconds(procs[0].pid)
            t0 = time.perf_counter()
            subs = await producer.submit_many(jobs)
            records = await producer.wait_many([s.job_id for s in subs], timeout=150)  # type: ignore[union-attr]
            seconds = time.perf_counter() - t0
            rss = _vm_hwm_mb(procs[0].pid)
            cpu = _cpu_seconds(procs[0].pid) - cpu0
    finally:
        await producer.close()
    ok = sum(r.status == "succeeded" for r in records)
    first = min(r.started_at or 0 for r in records)
    last = max(r.finished_at or 0 for r in records)
    worker_ms = [((r.finished_at or 0) - (r.started_at or 0)) * 1000 for r in records]
    # sustained: the middle 80 % of completions, past the first wave (which also opens a thousand
    # connections to the simulator) and before the last one drains
    ends = sorted(r.finished_at or 0 for r in records)
    lo, hi = ends[n // 10], ends[n * 9 // 10]
    return {
        "wide_jobs": n,
        "wide_max_jobs": max_jobs,
        "wide_succeeded": ok,
        "wide_jps": n / (last - first),
        "wide_sustained_jps": (n * 9 // 10 - n // 10) / (hi - lo),
        "wide_submit_to_wait_jps": n / seconds,
        "wide_peak_rss_mb": rss,
        "wide_worker_cpu_us_per_job": cpu / n * 1e6,
        **_p50_p99("wide_worker_time", worker_ms),
        **_p50_p99("wide_upstream", [_upstream_ms(r) for r in records]),
    }


async def bulk_memory(redis: Redis, redis_url: str, env: dict[str, str], n: int) -> dict[str, Any]:
    queue = "bench-bulk-memory"
    producer = await _connect(redis_url, queue, env)
    prompt = "x" * 1000
    try:
        before = int((await redis.info("memory"))["used_memory"])
        subs = await producer.submit_many(_jobs(n, "", prompt))
        after = int((await redis.info("memory"))["used_memory"])
    finally:
        await producer.close()
    assert all(not isinstance(s, Exception) for s in subs)
    return {
        "bulk_jobs": n,
        "bulk_prompt_bytes": len(prompt),
        "bulk_used_memory_delta": after - before,
        "bulk_bytes_per_job": (after - before) / n,
    }


async def scale_out(redis_url: str, base_env: dict[str, str], n: int, counts: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {"scale_jobs": n}
    for count in counts:
        queue = f"bench-scale-{count}"
        env = {**base_env, "LLM_ROUTER_QUEUE_NAME": queue}
        producer = await _connect(redis_url, queue, env)
        try:
            with workers(env, count, 25):
                await _wait_workers(producer, count)
                t0 = time.perf_counter()
                subs = await producer.submit_many(_jobs(n, f"scale{count}"))
                records = await producer.wait_many([s.job_id for s in subs], timeout=120)  # type: ignore[union-attr]
                seconds = time.perf_counter() - t0
        finally:
            await producer.close()
        assert all(r.status == "succeeded" for r in records)
        out[f"scale_{count}_jps"] = n / seconds
    for count in counts:
        out[f"scale_{count}_ratio"] = out[f"scale_{count}_jps"] / out[f"scale_{counts[0]}_jps"]
    return out


def peer(sim_url: str, n: int, concurrency: int = 64) -> dict[str, Any]:
    python = PEER_VENV / "bin" / "python"
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
    env.pop("PYTHONPATH", None)
    try:
        probe = [str(python), "-c", "import litellm"]
        if not python.exists() or subprocess.run(probe, capture_output=True, timeout=120).returncode:
            if not python.exists():
                venv = [shutil.which("python3") or "python3", "-m", "venv", str(PEER_VENV)]
                subprocess.run(venv, check=True, timeout=120)
            pip = [str(python), "-m", "pip", "install", "-q", "litellm"]
            subprocess.run(pip, capture_output=True, timeout=300, check=True)
        out = subprocess.run(
            [str(python), "-c", PEER_SCRIPT, sim_url, str(n), str(concurrency)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if out.returncode != 0:
            return {"peer_skipped": f"LiteLLM run failed: {out.stderr.strip().splitlines()[-1:]}"}
        return {"peer_requests": n, "peer_rps": json.loads(out.stdout.strip().splitlines()[-1])["rps"]}
    except (subprocess.SubprocessError, OSError) as exc:
        return {"peer_skipped": f"LiteLLM could not be installed or run: {exc!r}"}


def _ours_jps() -> float | None:
    found = sorted((ROOT / "bench" / "results").glob("throughput-*.json"))
    if not found:
        return None
    return float(json.loads(found[-1].read_text())["ours_jps"])


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
    }
    with RedisServer() as server:
        redis = Redis.from_url(server.url)
        try:
            with simulator(0) as sim_url:
                await wait_for_simulator(sim_url)
                env = simulated_env(os.environ, redis_url=server.url, sim_url=sim_url)
                env["LLM_ROUTER_LOG_LEVEL"] = "WARNING"
                results.update(await latency(server.url, env, sim_url, args.latency_jobs))
                await redis.flushdb()
                results.update(await bulk_memory(redis, server.url, env, args.bulk_jobs))
                await redis.flushdb()
                if args.peer:
                    results.update(peer(sim_url, args.peer_requests))
                else:
                    results["peer_skipped"] = "--no-peer"
            with simulator(1000) as sim_url:
                await wait_for_simulator(sim_url)
                env = simulated_env(os.environ, redis_url=server.url, sim_url=sim_url)
                env["LLM_ROUTER_LOG_LEVEL"] = "WARNING"
                results.update(await wide(server.url, env, args.wide_jobs, 1000))
                await redis.flushdb()
            with simulator(200) as sim_url:
                await wait_for_simulator(sim_url)
                env = simulated_env(os.environ, redis_url=server.url, sim_url=sim_url)
                env["LLM_ROUTER_LOG_LEVEL"] = "WARNING"
                results.update(await scale_out(server.url, env, args.scale_jobs, [1, 2, 4]))
        finally:
            await redis.aclose()
    ours = _ours_jps()
    if ours is not None:
        results["ours_jps_from_throughput"] = ours
        if "peer_rps" in results:
            results["ours_over_peer"] = ours / results["peer_rps"]
    return results


def report(r: dict[str, Any]) -> None:
    table = Table(title=f"llm-router under load, {r['cpus']} CPUs, {r['date']}")
    table.add_column("what")
    table.add_column("figure", justify="right")
    table.add_column("target / note")

    def ms(key: str) -> str:
        return f"{r[key + '_p50_ms']:.2f} / {r[key + '_p99_ms']:.2f} ms"

    n = r["latency_jobs"]
    table.add_row(f"latency ({n} jobs, one at a time, 0 ms sim) p50 / p99", "", "")
    table.add_row("  upstream baseline: raw aiohttp → simulator", ms("raw_sim"), "")
    table.add_row("  upstream call as recorded in attempts", ms("upstream_in_record"), "")
    table.add_row("  queue wait (started - created)", ms("queue_wait"), "")
    table.add_row("  worker overhead (worker time - upstream)", ms("worker_overhead"), "")
    table.add_row("  end to end (finished - created)", ms("e2e"), "")
    table.add_row("  end to end - upstream", ms("e2e_minus_upstream"), "")
    wide_ok = r["wide_sustained_jps"] >= 900
    rss_ok = r["wide_peak_rss_mb"] <= 250
    table.add_row(
        f"wide: {r['wide_jobs']:,} jobs, 1 worker, max_jobs {r['wide_max_jobs']}, 1,000 ms sim, sustained",
        f"{r['wide_sustained_jps']:,.0f} jobs/s",
        f"target ≥ 900 {'✔' if wide_ok else '✘'} (middle 80 % of completions)",
    )
    table.add_row(
        "wide: whole run, first start → last finish",
        f"{r['wide_jps']:,.0f} jobs/s",
        f"{r['wide_submit_to_wait_jps']:,.0f} submit → wait; the first wave opens the connections",
    )
    table.add_row(
        "wide: worker time (finished - started) p50 / p99",
        ms("wide_worker_time"),
        f"upstream {ms('wide_upstream')}; {r['wide_worker_cpu_us_per_job']:.0f} worker CPU µs/job",
    )
    table.add_row(
        "wide: worker peak RSS (VmHWM)",
        f"{r['wide_peak_rss_mb']:,.0f} MB",
        f"target ≤ 250 MB {'✔' if rss_ok else '✘'}",
    )
    per_job = r["bulk_bytes_per_job"]
    table.add_row(
        f"bulk memory: Redis per queued job, 1 KB prompt, {r['bulk_jobs']:,} jobs",
        f"{per_job:,.0f} B",
        f"target ≤ 2,500 B {'✔' if per_job <= 2500 else '✘'}",
    )
    for count in (1, 2, 4):
        table.add_row(
            f"scale-out: {count} worker(s), max_jobs 25, 200 ms sim, {r['scale_jobs']:,} jobs",
            f"{r[f'scale_{count}_jps']:,.0f} jobs/s",
            f"{r[f'scale_{count}_ratio']:.2f}x of 1 worker (ideal {count}x)",
        )
    if "peer_rps" in r:
        table.add_row("peer: LiteLLM Router.acompletion, c=64, 0 ms sim", f"{r['peer_rps']:,.0f} req/s", "")
        if "ours_over_peer" in r:
            ok = r["ours_over_peer"] >= 5
            table.add_row(
                "ours (throughput.py drain) / peer",
                f"{r['ours_over_peer']:.1f}x",
                f"ours {r['ours_jps_from_throughput']:,.0f} jobs/s; target ≥ 5x {'✔' if ok else '✘'}",
            )
    Console(width=150).print(table)
    if "peer_skipped" in r:
        print(f"peer skipped: {r['peer_skipped']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-jobs", type=int, default=200)
    parser.add_argument("--wide-jobs", type=int, default=10_000)
    parser.add_argument("--bulk-jobs", type=int, default=50_000)
    parser.add_argument("--scale-jobs", type=int, default=2000)
    parser.add_argument("--peer-requests", type=int, default=2000)
    parser.add_argument("--no-peer", dest="peer", action="store_false")
    args = parser.parse_args()
    results = uvloop.run(run(args))
    report(results)
    write_json("load", results)


if __name__ == "__main__":
    main()
