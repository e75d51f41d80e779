"""HTTP latency benchmark: what the interactive path adds over calling the simulator directly.

At low load (one request at a time), side by side in one run and interleaved request by request so
drift hits both equally:

* **direct**: ``POST /v1/chat/completions`` to the simulator (0 ms latency), the upstream baseline;
* **ours**: the same body to ``llm-router serve`` (API key checked): validate → interactive queue →
  worker → simulator → record → end notification → response, with server and worker as separate
  processes on a private ``redis-server``;
* **litellm proxy** (``bench/litellm_proxy.py``): the same body through LiteLLM's proxy to the same
  simulator; skipped with the reason when it cannot be installed or started here.

The overhead is each path's p50/p99 minus the direct one's. Target for ours: at most 10 ms p50 and
20 ms p99. Prints a table and writes JSON to ``bench/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import uvloop
from litellm_proxy import PeerUnavailable, litellm_proxy  # bench/litellm_proxy.py
from output import write_json  # bench/output.py, beside this script
from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table

from llm_router.testing.redis_server import RedisServer, free_port
from llm_router.testing.sim_env import simulated_env
from llm_router.testing.worker_procs import terminate
from producer.http.auth import ApiKeys

CHAT = {"model": "gpt-4o-mini", "max_tokens": 32, "messages": [{"role": "user", "content": "Say hello."}]}
SIM_KEY = "sk-sim-openai"
WARMUP = 30


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


@contextmanager
def process(args: list[str], env: dict[str, str], ready_url: str, timeout: float = 60) -> Iterator[None]:
    """A child process, once ``ready_url`` answers (any HTTP status counts as up)."""
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{args[2:4]} exited with {proc.returncode}")
            try:
                urllib.request.urlopen(ready_url, timeout=0.5).close()
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{ready_url} did not answer within {timeout} s") from None
                time.sleep(0.05)
        yield
    finally:
        terminate(proc, 30)


async def _wait_worker(redis_url: str, queue: str) -> None:
    redis = Redis.from_url(redis_url)
    try:
        for _ in range(600):
            if await redis.zcount(f"{queue}:workers", time.time() - 10, "+inf"):
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"no worker on {queue}")
    finally:
        await redis.aclose()


async def _create_key(redis_url: str) -> str:
    redis = Redis.from_url(redis_url)
    try:
        return await ApiKeys(redis).create("bench")
    finally:
        await redis.aclose()


async def _timed(session: aiohttp.ClientSession, url: str, body: bytes, key: str) -> float:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    t0 = time.perf_counter()
    async with session.post(url, data=body, headers=headers) as r:
        payload = await r.read()
        if r.status != 200:
            raise RuntimeError(f"{url}: {r.status} {payload[:300]!r}")
    return (time.perf_counter() - t0) * 1000


async def measure(paths: dict[str, tuple[str, str]], n: int) -> dict[str, list[float]]:
    """Each path's latencies (ms), one request at a time, paths interleaved request by request."""
    out: dict[str, list[float]] = {name: [] for name in paths}
    async with aiohttp.ClientSession() as session:
        for i in range(n + WARMUP):
            body = orjson.dumps({**CHAT, "messages": [{"role": "user", "content": f"Say hello {i}."}]})
            for name, (url, key) in paths.items():
                ms = await _timed(session, url, body, key)
                if i >= WARMUP:  # the first calls open connections and warm every process
                    out[name].append(ms)
    return out


async def run(n: int) -> dict[str, Any]:
    with RedisServer() as redis_server:
        sim_port, api_port = free_port(), free_port()
        sim_url, api_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{api_port}"
        queue = "bench-http"
        env = simulated_env(os.environ, redis_url=redis_server.url, sim_url=sim_url)
        env.update(LLM_ROUTER_QUEUE_NAME=queue, LLM_ROUTER_LOG_LEVEL="WARNING")
        cli = [sys.executable, "-m", "llm_router.cli"]
        with (
            process([*cli, "simulate", "--port", str(sim_port)], env, f"{sim_url}/_sim/calls"),
            process([*cli, "serve", "--port", str(api_port)], env, f"{api_url}/healthz"),
            process([*cli, "worker"], env, f"{api_url}/healthz"),
        ):
            await _wait_worker(redis_server.url, f"{queue}:interactive")
            key = await _create_key(redis_server.url)
            paths = {
                "direct": (f"{sim_url}/v1/chat/completions", SIM_KEY),
                "llm-router": (f"{api_url}/v1/chat/completions", key),
            }
            with ExitStack() as stack:
                try:
                    peer_url, peer_key = stack.enter_context(litellm_proxy(sim_url))
                    paths["litellm proxy"] = (f"{peer_url}/v1/chat/completions", peer_key)
                except PeerUnavailable as exc:
                    print(f"litellm proxy: skipped ({exc})")
                latencies = await measure(paths, n)
    direct = latencies["direct"]
    rows = {}
    for name, values in latencies.items():
        rows[name] = {
            "p50_ms": _pct(values, 0.5),
            "p99_ms": _pct(values, 0.99),
            "overhead_p50_ms": _pct(values, 0.5) - _pct(direct, 0.5),
            "overhead_p99_ms": _pct(values, 0.99) - _pct(direct, 0.99),
        }
    return {
        "date": datetime.now(UTC).isoformat(),
        "requests": n,
        "target": {"overhead_p50_ms": 10, "overhead_p99_ms": 20},
        "paths": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=300, help="requests per path")
    args = parser.parse_args()
    results = uvloop.run(run(args.n))
    table = Table(title=f"HTTP chat completion at low load ({args.n} requests each, one at a time)")
    for col in ("path", "p50 ms", "p99 ms", "overhead p50 ms", "overhead p99 ms"):
        table.add_column(col, justify="left" if col == "path" else "right")
    for name, row in results["paths"].items():
        table.add_row(
            name,
            f"{row['p50_ms']:.2f}",
            f"{row['p99_ms']:.2f}",
            "-" if name == "direct" else f"{row['overhead_p50_ms']:.2f}",
            "-" if name == "direct" else f"{row['overhead_p99_ms']:.2f}",
        )
    Console(width=None if sys.stdout.isatty() else 120).print(table)
    ours = results["paths"]["llm-router"]
    met = ours["overhead_p50_ms"] <= 10 and ours["overhead_p99_ms"] <= 20
    print(f"target (<= 10 ms p50, <= 20 ms p99 over direct): {'met' if met else 'MISSED'}")
    write_json("http-latency", results)


if __name__ == "__main__":
    main()
