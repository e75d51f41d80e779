"""Width: one worker process holding many calls in flight, at a latency real LLM calls have.

Two rows (``make bench`` runs both once):

* **1,000 in flight, 1 s upstream** (20,000 jobs): ≥ 950 jobs/s sustained, ≤ 400 worker CPU µs a job;
* **10,000 in flight, 10 s upstream** (40,000 jobs): ≥ 950 jobs/s sustained, peak RSS ≤ 600 MB.

Each run: a private ``redis-server``, the simulator in its own process at the row's latency, the jobs
submitted in one ``submit_many`` once the worker process (``llm-router worker --max-jobs W``, both
queues as deployed) is up; the bench then watches the queue empty with a few ``ZCARD`` a second (it
is idle while the worker runs) and reads every record at the end.

* **sustained**: completions per second between the end of the first wave (completion number
  ``max(W, n/10)``) and the start of the last one (``min(n - W, 9n/10)``): the rate a long-running
  worker holds, past the first wave (which also opens ``W`` connections to the simulator) and
  before the last drains. A whole number of waves, so waves of completions do not bias it;
* **CPU per job**: the worker's ``utime + stime`` (``/proc/PID/stat``) from when it is up (its
  heartbeat seen, just before the submit) to the last completion, over the jobs; the same over
  the sustained window alone is printed beside it;
* **peak RSS**: the worker's ``VmHWM`` (``/proc/PID/status``) at the end.

``--baseline-src DIR`` also runs the worker from another source tree (``PYTHONPATH=DIR``: the code
before a change), interleaved run by run with this tree's, and prints the medians of ``--runs``.
Writes ``bench/results/width-DATE.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import uvloop
from output import write_json  # bench/output.py, beside this script
from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table
from sim_ready import wait_for_simulator  # bench/sim_ready.py

from config.catalog import Catalog
from config.settings import Settings
from llm_router.keys import PRIORITIES, active_tenants_key, delayed_key, leases_key
from llm_router.testing.redis_server import RedisServer, free_port
from llm_router.testing.sim_env import simulated_env
from llm_router.testing.worker_procs import terminate
from producer.producer import Producer

ROOT = Path(__file__).resolve().parent.parent
CHAT = {"model": "gpt-4o-mini", "max_tokens": 32, "messages": [{"role": "user", "content": "Say hello."}]}
QUEUE = "bench-width"
# (jobs in flight, upstream latency ms, jobs, targets)
ROWS: dict[str, tuple[int, int, int]] = {"1k": (1000, 1000, 20_000), "10k": (10_000, 10_000, 40_000)}
TARGET_JPS = 950
TARGET_CPU_US = 400  # the 1k row
TARGET_RSS_MB = 600  # the 10k row


def _raise_nofile() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field}")


@contextmanager
def _process(
    args: list[str], env: dict[str, str] | None = None, log: str | None = None, cwd: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    with open(log or os.devnull, "ab") as err:
        proc = subprocess.Popen(
            args, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err, preexec_fn=_raise_nofile
        )
    try:
        yield proc
    finally:
        terminate(proc, 30)


async def _left(redis: Redis, queue: str) -> int:
    """Jobs not yet ended: ready (counted by their tenants' queues), delayed or held."""
    async with redis.pipeline(transaction=False) as pipe:
        for band in PRIORITIES:
            pipe.zcard(active_tenants_key(queue, band))
        pipe.zcard(delayed_key(queue))
        pipe.zcard(leases_key(queue))
        counts = await pipe.execute()
    return sum(counts)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


async def one_run(
    width: int,
    latency_ms: int,
    n: int,
    src: Path,
    timeout_s: float,
    profile: str | None = None,
    log: str | None = None,
) -> dict[str, Any]:
    """One row, once: a fresh Redis and simulator, the jobs queued, then one worker from ``src``
    (watched by py-spy, its raw stacks written to ``profile``, when given)."""
    with RedisServer() as server:
        port = free_port()
        sim_args = [sys.executable, "-m", "llm_router.cli", "simulate", "--port", str(port)]
        with _process([*sim_args, "--latency-ms", f"{latency_ms},{latency_ms}"]) as sim:
            sim_url = f"http://127.0.0.1:{port}"
            await wait_for_simulator(sim_url)
            env = simulated_env(os.environ, redis_url=server.url, sim_url=sim_url, fast_lanes=False)
            env.update(
                LLM_ROUTER_LOG_LEVEL="WARNING",
                LLM_ROUTER_QUEUE_NAME=QUEUE,
                LLM_ROUTER_MAX_JOBS=str(width),
                # the adaptive in-flight limit admits the whole width from the first call: the row
                # measures the worker, not slow start (from 10 at x1.5 a round, 12 rounds to reach
                # 1,000) nor the default cap of 1,000 calls per deployment; its bookkeeping is paid
                LLM_ROUTER_CONCURRENCY_INITIAL=str(width),
                LLM_ROUTER_CONCURRENCY_MAX=str(width),
                PYTHONPATH=str(src),
            )
            settings = Settings(_env_file=None, redis_url=server.url, queue_name=QUEUE)
            producer = await Producer.connect(settings, Catalog.load(settings, env=env))
            redis = Redis.from_url(server.url)
            try:
                jobs = [
                    orjson.dumps({**CHAT, "messages": [{"role": "user", "content": f"Say hello {i}."}]})
                    for i in range(n)
                ]
                worker_args = [sys.executable, "-m", "llm_router.cli", "worker", "--max-jobs", str(width)]
                # run from ``src``: ``python -m`` puts its working directory before PYTHONPATH
                with _process(worker_args, env, log, cwd=src) as worker, _py_spy(worker.pid, profile):
                    await _wait_live(producer, worker)
                    cpu0 = _cpu_seconds(worker.pid)  # past the worker's start-up (imports, catalog)
                    sim_cpu0 = _cpu_seconds(sim.pid)
                    redis_cpu0 = await _redis_cpu(redis)
                    subs = await producer.submit_many(jobs)
                    ids = [s.job_id for s in subs]  # type: ignore[union-attr]
                    samples: list[tuple[float, float]] = []  # (wall time, worker CPU s)
                    deadline = time.monotonic() + timeout_s
                    while await _left(redis, QUEUE):
                        if worker.poll() is not None:
                            raise RuntimeError(f"the worker exited ({worker.returncode})")
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"{await _left(redis, QUEUE)} jobs left after {timeout_s} s")
                        samples.append((time.time(), _cpu_seconds(worker.pid)))
                        await asyncio.sleep(0.25)
                    samples.append((time.time(), _cpu_seconds(worker.pid)))
                    cpu = _cpu_seconds(worker.pid) - cpu0
                    rss = _status_mb(worker.pid, "VmHWM")
                sim_cpu = _cpu_seconds(sim.pid) - sim_cpu0
                sim_rss = _status_mb(sim.pid, "VmHWM")
                redis_cpu = await _redis_cpu(redis) - redis_cpu0
                records = await producer.wait_many(ids, timeout=120)
            finally:
                await redis.aclose()
                await producer.close()
    failed = [r for r in records if r.status != "succeeded"]
    if failed:
        raise RuntimeError(f"{len(failed)} jobs did not succeed, e.g. {failed[0].status} {failed[0].error}")
    ends = sorted(r.finished_at or 0 for r in records)
    lo, hi = max(n // 10, width), min(n * 9 // 10, n - width)
    if hi <= lo:
        raise RuntimeError(f"{n} jobs are too few at width {width}: no steady middle")
    window_cpu = _cpu_between(samples, ends[lo], ends[hi])
    upstream = [
        a.latency_ms or 0.0 for r in records for a in r.attempts if a.outcome == "success" and a.latency_ms
    ]
    worker_ms = [((r.finished_at or 0) - (r.started_at or 0)) * 1000 for r in records]
    first = min(r.started_at or 0 for r in records)
    return {
        "jobs": n,
        "sustained_jps": (hi - lo) / (ends[hi] - ends[lo]),
        "whole_jps": n / (ends[-1] - first),
        "cpu_us_per_job": cpu / n * 1e6,
        "sustained_cpu_us_per_job": window_cpu / (hi - lo) * 1e6,
        "peak_rss_mb": rss,
        "worker_time_p50_ms": _pct(worker_ms, 0.5),
        "worker_time_p99_ms": _pct(worker_ms, 0.99),
        "upstream_p50_ms": _pct(upstream, 0.5),
        "upstream_p99_ms": _pct(upstream, 0.99),
        # a job run more than once (its lease lapsed, or it was deferred) or with more than one
        # attempt: the width should cost neither
        "jobs_run_again": sum(r.runs > 1 for r in records),
        "jobs_with_other_attempts": sum(len(r.attempts) > 1 for r in records),
        "sim_cpu_us_per_job": sim_cpu / n * 1e6,
        "sim_peak_rss_mb": sim_rss,
        "redis_cpu_us_per_job": redis_cpu / n * 1e6,
    }


async def _wait_live(producer: Producer, worker: subprocess.Popen[bytes]) -> None:
    for _ in range(600):
        if await producer.live_workers() >= 1:
            return
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited ({worker.returncode})")
        await asyncio.sleep(0.05)
    raise RuntimeError("the worker did not come up")


@contextmanager
def _py_spy(pid: int, out: str | None) -> Iterator[None]:
    if out is None:
        yield
        return
    spy = Path(sys.executable).parent / "py-spy"
    args = [str(spy), "record", "--pid", str(pid), "--rate", "200", "--format", "raw", "--output", out]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)


def _cpu_between(samples: list[tuple[float, float]], t0: float, t1: float) -> float:
    """The worker's CPU seconds between two wall times, interpolated between samples."""

    def at(t: float) -> float:
        for (ta, ca), (tb, cb) in itertools.pairwise(samples):
            if ta <= t <= tb:
                return ca + (cb - ca) * (t - ta) / max(tb - ta, 1e-9)
        return samples[-1][1] if t > samples[-1][0] else samples[0][1]

    return at(t1) - at(t0)


async def _redis_cpu(redis: Redis) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def run(args: argparse.Namespace) -> dict[str, Any]:
    trees = {"ours": ROOT}
    if args.baseline_src:
        trees = {"baseline": Path(args.baseline_src).resolve(), **trees}
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "runs": args.runs,
        "rows": {},
    }
    for name in args.rows:
        width, latency_ms, n = ROWS[name]
        n = args.jobs.get(name, n)
        runs: dict[str, list[dict[str, Any]]] = {tree: [] for tree in trees}
        for i in range(args.runs):
            order = list(trees.items()) if i % 2 == 0 else list(trees.items())[::-1]
            for tree, src in order:
                print(f"{name}: run {i + 1}/{args.runs}, {tree}", file=sys.stderr, flush=True)
                profile = f"{args.py_spy}-{name}-{tree}-{i}.txt" if args.py_spy else None
                timeout_s = n / 200 + 4 * latency_ms / 1000 + 60
                got = await one_run(width, latency_ms, n, src, timeout_s, profile, args.worker_log)
                print(f"  {_brief(got)}", file=sys.stderr, flush=True)
                runs[tree].append(got)
        results["rows"][name] = {
            "width": width,
            "latency_ms": latency_ms,
            "jobs": n,
            **{tree: {"median": _median(got), "runs": got} for tree, got in runs.items()},
        }
    return results


def _brief(r: dict[str, Any]) -> str:
    return (
        f"{r['sustained_jps']:,.0f} jobs/s sustained, {r['cpu_us_per_job']:.0f} CPU µs/job, "
        f"{r['peak_rss_mb']:.0f} MB peak RSS; {r['jobs_run_again']} jobs run again, "
        f"{r['jobs_with_other_attempts']} with more than one attempt"
    )


def _median(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def report(r: dict[str, Any]) -> None:
    table = Table(title=f"width: one worker process, {r['cpus']} CPUs, {r['date']}, median of {r['runs']}")
    table.add_column("row")
    table.add_column("tree")
    table.add_column("sustained jobs/s", justify="right")
    table.add_column("whole run", justify="right")
    table.add_column("CPU µs/job (sustained)", justify="right")
    table.add_column("peak RSS", justify="right")
    table.add_column("worker time p50 / p99", justify="right")
    table.add_column("sim / Redis CPU µs/job", justify="right")

    def mark(ok: bool) -> str:
        return "✔" if ok else "✘"

    for name, row in r["rows"].items():
        label = f"{row['width']:,} in flight, {row['latency_ms']:,} ms, {row['jobs']:,} jobs"
        for tree in ("baseline", "ours"):
            if tree not in row:
                continue
            m = row[tree]["median"]
            jps = f"{m['sustained_jps']:,.0f} (≥ {TARGET_JPS} {mark(m['sustained_jps'] >= TARGET_JPS)})"
            cpu = f"{m['cpu_us_per_job']:.0f} ({m['sustained_cpu_us_per_job']:.0f})"
            rss = f"{m['peak_rss_mb']:,.0f} MB"
            if name == "1k":
                cpu += f" ≤ {TARGET_CPU_US} {mark(m['cpu_us_per_job'] <= TARGET_CPU_US)}"
            if name == "10k":
                rss += f" ≤ {TARGET_RSS_MB} {mark(m['peak_rss_mb'] <= TARGET_RSS_MB)}"
            table.add_row(
                label,
                tree,
                jps,
                f"{m['whole_jps']:,.0f}",
                cpu,
                rss,
                f"{m['worker_time_p50_ms']:,.0f} / {m['worker_time_p99_ms']:,.0f} ms",
                f"{m['sim_cpu_us_per_job']:.0f} / {m['redis_cpu_us_per_job']:.0f}",
            )
            label = ""
    Console(width=170).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1k,10k", help="which rows: 1k, 10k or both (comma-separated)")
    parser.add_argument("--jobs-1k", type=int, help=f"jobs of the 1k row (default {ROWS['1k'][2]:,})")
    parser.add_argument("--jobs-10k", type=int, help=f"jobs of the 10k row (default {ROWS['10k'][2]:,})")
    parser.add_argument("--runs", type=int, default=1, help="runs of each row (medians are reported)")
    parser.add_argument("--baseline-src", help="also run the worker from this source tree, interleaved")
    parser.add_argument("--py-spy", metavar="PREFIX", help="py-spy the worker: raw stacks to PREFIX-*.txt")
    parser.add_argument("--worker-log", metavar="FILE", help="append the worker's log (stderr) to FILE")
    args = parser.parse_args()
    args.rows = [x.strip() for x in args.rows.split(",") if x.strip()]
    if unknown := [x for x in args.rows if x not in ROWS]:
        parser.error(f"--rows: unknown {unknown}; choose from {list(ROWS)}")
    args.jobs = {k: v for k, v in (("1k", args.jobs_1k), ("10k", args.jobs_10k)) if v}
    results = uvloop.run(run(args))
    report(results)
    write_json("width", results)


if __name__ == "__main__":
    main()
