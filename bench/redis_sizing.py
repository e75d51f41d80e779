"""Redis memory and CPU per job on the real redis-server: the figures of the README's sizing table.

On a private ``redis-server`` (Debian's, as in production: jemalloc) with the simulator and one worker
process, for ``--jobs`` jobs (10,000) each of a short prompt (a 40-byte chat line) and a 1 KB prompt:

* **queued**: ``INFO memory`` ``used_memory`` after ``Producer.submit_many`` minus before, per job,
  and ``MEMORY USAGE`` of one job's keys (its record, its request's key, its share of the ready queue);
* **finished**: a worker runs them all (simulator answers of ~20 tokens, or of 1 KB for the third
  column: a JSON schema asks for a 1,000-character string); ``used_memory`` of what is left per job
  (the record with its answer, attempts and cost, and its request) and ``MEMORY USAGE`` of one
  finished record;
* **stream chunk**: ``--stream-jobs`` (1,000) streamed jobs; ``MEMORY USAGE`` of each job's stream
  divided by its entries (``XLEN``), kept ``LLM_ROUTER_STREAM_TTL_S`` after the job ends;
* **Redis CPU and commands**: ``INFO cpu`` (``used_cpu_user`` + ``used_cpu_sys``) and
  ``total_commands_processed`` deltas over the submit and over the run, per job (Lua's inner calls
  count as commands);
* **an idle worker**: what one worker process with nothing to do costs Redis per second (its polls,
  abort checks and heartbeats), serving the bulk queue, and the interactive queue (polled every 5 ms).

Prints a table and writes ``bench/results/sizing-DATE.json``. ``python bench/redis_sizing.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from output import write_json  # bench/output.py, beside this script
from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table

from config.settings import Settings
from llm_router import keys
from llm_router.keys import RECORD_PREFIX, STREAM_PREFIX
from llm_router.testing.redis_server import RedisServer, free_port
from llm_router.testing.sim_env import simulated_env
from llm_router.testing.worker_procs import terminate
from producer.producer import Producer

SHORT = "Say hello to the fleet, in one line."
LONG = "x" * 1000


async def _stats(redis: Redis) -> tuple[int, float, int]:
    memory, cpu, stats = await asyncio.gather(redis.info("memory"), redis.info("cpu"), redis.info("stats"))
    return (
        int(memory["used_memory"]),
        float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
        int(stats["total_commands_processed"]),
    )


async def _usage(redis: Redis, pattern: str) -> list[int]:
    keys = [k async for k in redis.scan_iter(match=pattern, count=1000)]
    return [int(await redis.memory_usage(k, samples=0) or 0) for k in keys[:200]]


def _median(values: list[int]) -> float:
    values = sorted(values)
    return float(values[len(values) // 2]) if values else 0.0


def _answer_format(size: int) -> dict[str, Any]:
    """A response format the simulator answers with a JSON object holding a ``size``-character string."""
    schema = {"type": "object", "properties": {"a": {"type": "string", "minLength": size}}, "required": ["a"]}
    return {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}}


async def one_kind(
    redis: Redis,
    url: str,
    env: dict[str, str],
    tmp: Path,
    n: int,
    prompt: str,
    stream: bool,
    answer: int = 0,
) -> dict[str, Any]:
    """Submit ``n`` jobs with ``prompt``, measure them queued, run them with one worker, measure them
    finished (``answer``: the answer's size in characters, else the simulator's sentence)."""
    queue = f"sizing-{len(prompt)}-{int(stream)}-{answer}"
    env = {**env, "LLM_ROUTER_QUEUE_NAME": queue, "LLM_ROUTER_MAX_JOBS": "200"}
    settings = Settings(_env_file=None, redis_url=url, queue_name=queue)
    producer = await Producer.connect(settings)
    extra = _answer_format(answer) if answer else {}
    jobs = [
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": f"{i} {prompt}"}],
            "stream": stream,
            **extra,
        }
        for i in range(n)
    ]
    try:
        await redis.flushdb()
        mem0, cpu0, cmd0 = await _stats(redis)
        subs = await producer.submit_many(jobs)
        mem1, cpu1, cmd1 = await _stats(redis)
        ids = [s.job_id for s in subs]  # type: ignore[union-attr]
        record_queued = _median(await _usage(redis, RECORD_PREFIX + "*"))
        # the request's own key (a tree from before it kept the request in the record)
        request_prefix = getattr(keys, "REQUEST_PREFIX", None)
        request_queued = _median(await _usage(redis, request_prefix + "*")) if request_prefix else 0.0
        # the queue's own share: its ready queues (one per tenant and band) per job queued
        queue_bytes = sum(await _usage(redis, f"{queue}:ready:*")) / max(n, 1)
        _, cpu2, cmd2 = await _stats(redis)
        with open(tmp / f"worker-{queue}.log", "wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "llm_router.cli", "worker", "--queues", "bulk"], env=env, stderr=log
            )
            try:
                # one ZCARD a tenth of a second, not a waiter's reads: the run's figures are the worker's
                while await producer.store.queued() or await redis.zcard(f"{queue}:leases"):
                    await asyncio.sleep(0.1)
                mem3, cpu3, cmd3 = await _stats(redis)
            finally:
                terminate(worker)
        records = await producer.wait_many(ids, timeout=60)
        ok = sum(r.status == "succeeded" for r in records)
        record_done = _median(await _usage(redis, RECORD_PREFIX + "*"))
        streams = [k async for k in redis.scan_iter(match=STREAM_PREFIX + "*", count=1000)]
        chunk_bytes: list[int] = []
        chunks: list[int] = []
        for key in streams[:200]:
            size, length = await redis.memory_usage(key, samples=0), await redis.xlen(key)
            if length:
                chunk_bytes.append(int(size or 0) // length)
                chunks.append(length)
    finally:
        await producer.close()
    return {
        "jobs": n,
        "prompt_bytes": len(prompt),
        "stream": stream,
        "succeeded": ok,
        "queued_bytes_per_job": (mem1 - mem0) / n,
        "queued_record_bytes": record_queued,
        "queued_request_bytes": request_queued,
        "queued_queue_entry_bytes": queue_bytes,
        "finished_bytes_per_job": (mem3 - mem0) / n,
        "finished_record_bytes": record_done,
        "submit_redis_cpu_us_per_job": (cpu1 - cpu0) / n * 1e6,
        "submit_commands_per_job": (cmd1 - cmd0) / n,
        # the worker's claims, scripts and end-of-run bookkeeping, plus its polls and heartbeats
        "run_redis_cpu_us_per_job": (cpu3 - cpu2) / n * 1e6,
        "run_commands_per_job": (cmd3 - cmd2) / n,
        "stream_bytes_per_chunk": _median(chunk_bytes),
        "stream_chunks_per_job": _median(chunks),
    }


async def idle_worker(
    redis: Redis, env: dict[str, str], tmp: Path, queues: str, seconds: float
) -> dict[str, float]:
    """Redis CPU ms and commands per second that one idle worker process costs."""
    with open(tmp / f"idle-{queues}.log", "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "llm_router.cli", "worker", "--queues", queues], env=env, stderr=log
        )
        try:
            await asyncio.sleep(5)  # started and polling
            _, cpu0, cmd0 = await _stats(redis)
            await asyncio.sleep(seconds)
            _, cpu1, cmd1 = await _stats(redis)
        finally:
            terminate(worker)
    return {"redis_cpu_ms_per_s": (cpu1 - cpu0) / seconds * 1000, "commands_per_s": (cmd1 - cmd0) / seconds}


def _simulator() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llm_router.cli", "simulate", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_sim/calls", timeout=0.5):
                return proc, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the simulator did not start")


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
    }
    sim, sim_url = _simulator()
    try:
        with RedisServer() as server:
            redis = Redis.from_url(server.url)
            info = await redis.info("server")
            results["redis_version"] = info["redis_version"]
            results["maxmemory_policy"] = (await redis.config_get("maxmemory-policy"))["maxmemory-policy"]
            env = simulated_env(os.environ, redis_url=server.url, sim_url=sim_url, fast_lanes=False)
            env["LLM_ROUTER_LOG_LEVEL"] = "WARNING"
            try:
                results["short"] = await one_kind(redis, server.url, env, tmp, args.jobs, SHORT, False)
                results["long"] = await one_kind(redis, server.url, env, tmp, args.jobs, LONG, False)
                results["long_answer"] = await one_kind(
                    redis, server.url, env, tmp, args.jobs, LONG, False, answer=1000
                )
                results["streamed"] = await one_kind(
                    redis, server.url, env, tmp, args.stream_jobs, SHORT, True
                )
                await redis.flushdb()
                for queues in ("bulk", "interactive"):
                    results[f"idle_{queues}"] = await idle_worker(redis, env, tmp, queues, args.idle_s)
            finally:
                await redis.aclose()
    finally:
        sim.terminate()
        sim.wait(timeout=10)
    return results


def report(r: dict[str, Any]) -> None:
    table = Table(
        title=f"Redis per job: {r['short']['jobs']:,} jobs, Redis {r['redis_version']}, {r['date']}"
    )
    for col in ("what", "40-byte prompt", "1 KB prompt", "1 KB prompt, 1 KB answer"):
        table.add_column(col, justify="left" if col == "what" else "right")
    s, long_, answer = r["short"], r["long"], r["long_answer"]

    def row(what: str, key: str, fmt: str = "{:,.0f}") -> None:
        table.add_row(what, fmt.format(s[key]), fmt.format(long_[key]), fmt.format(answer[key]))

    queued = long_["queued_bytes_per_job"]
    row(
        f"queued: used_memory per job (B; 1 KB prompt: target ≤ 2,500 {'✔' if queued <= 2500 else '✘'})",
        "queued_bytes_per_job",
    )
    row("queued: record (MEMORY USAGE, B)", "queued_record_bytes")
    row("queued: its request's key (MEMORY USAGE, B)", "queued_request_bytes")
    row("queued: queue entry (B, its share of the ready queue)", "queued_queue_entry_bytes")
    row("finished: used_memory per job (B)", "finished_bytes_per_job")
    row("finished: record (MEMORY USAGE, B)", "finished_record_bytes")
    row("submit: Redis CPU µs per job", "submit_redis_cpu_us_per_job", "{:,.1f}")
    row("submit: commands per job", "submit_commands_per_job", "{:,.1f}")
    row("run: Redis CPU µs per job", "run_redis_cpu_us_per_job", "{:,.1f}")
    row("run: commands per job", "run_commands_per_job", "{:,.1f}")
    st = r["streamed"]
    table.add_row(
        f"stream: bytes per chunk ({st['jobs']:,} streamed jobs)",
        f"{st['stream_bytes_per_chunk']:,.0f}",
        "",
        "",
    )
    table.add_row("stream: chunks per job (simulator answers)", f"{st['stream_chunks_per_job']:,.0f}", "", "")
    table.add_row(
        "streamed job finished: used_memory per job (B)", f"{st['finished_bytes_per_job']:,.0f}", "", ""
    )
    for queues in ("bulk", "interactive"):
        idle = r[f"idle_{queues}"]
        table.add_row(
            f"an idle worker on the {queues} queue, per second",
            f"{idle['redis_cpu_ms_per_s']:.1f} ms CPU",
            f"{idle['commands_per_s']:,.0f} commands",
            "",
        )
    Console(width=140).print(table)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=10_000)
    p.add_argument("--stream-jobs", type=int, default=1_000)
    p.add_argument("--idle-s", type=float, default=10.0, help="how long each idle worker is watched")
    args = p.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory(prefix="llm-router-sizing-") as tmp:
        results = asyncio.run(run(args, Path(tmp)))
    report(results)
    write_json("sizing", results)


if __name__ == "__main__":
    main()
