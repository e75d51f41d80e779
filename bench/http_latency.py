"""HTTP latency benchmark: what the interactive path adds over calling the simulator directly.

At low load (one request at a time), side by side in one run and interleaved request by request so
drift hits both equally:

* **direct**: ``POST /v1/chat/completions`` to the simulator (0 ms latency), the upstream baseline;
* **ours**: the same body to ``llm-router serve`` (API key checked): validate → interactive queue →
  worker → simulator → record → end notification → response, with server and worker as separate
  processes on a private ``redis-server``;
* **litellm proxy** (``bench/litellm_proxy.py``): the same body through LiteLLM's proxy to the same
  simulator; skipped with the reason when it cannot be installed or started here.

Then again with each path taking **10 requests in a row** (a client's loop: the next request goes as
the answer arrives), paths taking turns by block: interleaved, each path rests the others'
processes between their requests, which hid a wait of the worker's poll step (2.3 ms of a 5 ms
request) from the first pattern.

The overhead is each path's p50/p99 minus the direct one's, in the same pattern. Target for ours
(issue #27): at most 2 ms p50 and 5 ms p99, in both patterns.

Under load (``--load-rate``, ``--load-s``): an open loop of 200 requests/s (each sent on its schedule,
whatever the ones before are doing) against a second simulator answering after 1 s, direct and
through llm-router in alternating 5-second phases so drift hits both; the overhead is ours minus
direct at the same percentile. Target: p99 overhead at most 10 ms.

Prints the tables and writes JSON to ``bench/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import ExitStack, asynccontextmanager, contextmanager
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import uvloop
from litellm_proxy import PeerUnavailable, litellm_proxy  # bench/litellm_proxy.py
from output import write_json  # bench/output.py, beside this script
from quiet_gc import collector_off  # bench/quiet_gc.py
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
    log_dir = os.environ.get("BENCH_LOG_DIR")  # where the processes' stderr goes when set
    stderr = open(f"{log_dir}/{args[3]}-{os.getpid()}.log", "wb") if log_dir else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
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


async def _timed(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    key: str,
    sent: list[tuple[str, float, float]] | None = None,
) -> float:
    """The request's latency (ms); ``sent`` gets (job id, sent at, answered at) in wall-clock time
    when the answer names its job."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    wall = time.time()
    t0 = time.perf_counter()
    async with session.post(url, data=body, headers=headers) as r:
        payload = await r.read()
        if r.status != 200:
            raise RuntimeError(f"{url}: {r.status} {payload[:300]!r}")
        job_id = r.headers.get("x-llm-router-job-id")
    elapsed = time.perf_counter() - t0
    if sent is not None and job_id:
        sent.append((job_id, wall, wall + elapsed))
    return elapsed * 1000


async def measure(
    paths: dict[str, tuple[str, str]], n: int, sent: list[tuple[str, float, float]] | None = None
) -> dict[str, list[float]]:
    """Each path's latencies (ms), one request at a time, paths interleaved request by request."""
    out: dict[str, list[float]] = {name: [] for name in paths}
    async with aiohttp.ClientSession() as session:
        with collector_off():
            for i in range(n + WARMUP):
                body = orjson.dumps({**CHAT, "messages": [{"role": "user", "content": f"Say hello {i}."}]})
                for name, (url, key) in paths.items():
                    counted = i >= WARMUP  # the first calls open connections and warm every process
                    ms = await _timed(session, url, body, key, sent if counted else None)
                    if counted:
                        out[name].append(ms)
    return out


async def measure_back_to_back(
    paths: dict[str, tuple[str, str]], n: int, block: int = 10
) -> dict[str, list[float]]:
    """Each path's latencies (ms), one request at a time, ``block`` requests in a row to one path
    (a client's loop: each request sent as the answer before it arrives), paths taking turns by
    block. Interleaved request by request (``measure``), every path gives the others' processes
    a rest between their requests; in a row, a process is still busy with the request before (the
    worker's poll step, say) when the next one comes."""
    out: dict[str, list[float]] = {name: [] for name in paths}
    async with aiohttp.ClientSession() as session:
        with collector_off():
            for start in range(0, n + WARMUP, block):
                for name, (url, key) in paths.items():
                    for i in range(start, min(start + block, n + WARMUP)):
                        body = orjson.dumps(
                            {**CHAT, "messages": [{"role": "user", "content": f"In a row {i}."}]}
                        )
                        ms = await _timed(session, url, body, key)
                        if i >= WARMUP:
                            out[name].append(ms)
    return out


async def measure_sparse(paths: dict[str, tuple[str, str]], n: int, gap_s: float) -> dict[str, list[float]]:
    """Each path's latencies (ms), one request every ``gap_s`` seconds, paths interleaved: a caller
    that sends a request now and then (a person at a chat window), past every process' caches of
    what a request reads before its submit (the key's tenant, 3 s; the tenant's policy, 5 s; the
    workers' liveness, 1 s)."""
    out: dict[str, list[float]] = {name: [] for name in paths}
    async with aiohttp.ClientSession() as session:
        with collector_off():
            for i in range(n + 1):
                body = orjson.dumps({**CHAT, "messages": [{"role": "user", "content": f"Now and then {i}."}]})
                for name, (url, key) in paths.items():
                    ms = await _timed(session, url, body, key)
                    if i >= 1:
                        out[name].append(ms)
                await asyncio.sleep(gap_s)
    return out


def _rows(latencies: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    direct = latencies["direct"]
    return {
        name: {
            "p50_ms": _pct(values, 0.5),
            "p99_ms": _pct(values, 0.99),
            "overhead_p50_ms": _pct(values, 0.5) - _pct(direct, 0.5),
            "overhead_p99_ms": _pct(values, 0.99) - _pct(direct, 0.99),
        }
        for name, values in latencies.items()
    }


SPANS = {
    "submit": "request sent → job validated (HTTP, auth, body, validation; created_at is stamped here)",
    "queue": "→ job taken (the submit script, the wake-up, the claim; started_at is stamped here)",
    "to call": "→ upstream call sent (the start script, its reply decoded, route, request built)",
    "call": "the upstream call, as the worker timed it",
    "record": "→ answer parsed and priced (finished_at is stamped before the finish script)",
    "answer": "→ answer received (finish script, end notification carrying the record, response)",
}


async def breakdown(redis_url: str, sent: list[tuple[str, float, float]]) -> dict[str, dict[str, float]]:
    """Where each llm-router request's time went, from its record's timestamps and the client's."""
    redis = Redis.from_url(redis_url)
    spans: dict[str, list[float]] = {name: [] for name in SPANS}
    try:
        by_id = {j: (t0, t1) for j, t0, t1 in sent}
        async for key in redis.scan_iter("llm-router:job:*", count=1000):
            job_id = key.decode().rsplit("/", 1)[-1]
            if job_id not in by_id or await redis.type(key) != b"hash":
                continue
            created, started, finished, attempts = await redis.hmget(
                key, "created_at", "started_at", "finished_at", "attempts"
            )
            if not (created and started and finished and attempts):
                continue
            call = orjson.loads(attempts)[-1]
            call_at, call_s = float(call["started_at"]), float(call["latency_ms"]) / 1000
            t0, t1 = by_id[job_id]
            c, s, f = float(created), float(started), float(finished)
            for name, value in (
                ("submit", c - t0),
                ("queue", s - c),
                ("to call", call_at - s),
                ("call", call_s),
                ("record", f - call_at - call_s),
                ("answer", t1 - f),
            ):
                spans[name].append(value * 1000)
    finally:
        await redis.aclose()
    return {
        name: {"p50_ms": _pct(v, 0.5), "p99_ms": _pct(v, 0.99), "mean_ms": sum(v) / len(v)}
        for name, v in spans.items()
        if v
    }


async def _open_loop(
    session: aiohttp.ClientSession,
    url: str,
    key: str,
    rate: float,
    seconds: float,
    tag: str,
    errors: list[str],
) -> list[float]:
    """Latencies (ms) of requests sent every 1/rate s for ``seconds``, each on its own schedule."""
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    n = int(rate * seconds)
    out: list[float] = []

    async def one(i: int) -> None:
        await asyncio.sleep(max(start + i / rate - loop.time(), 0))
        body = orjson.dumps({**CHAT, "messages": [{"role": "user", "content": f"{tag} {i}"}]})
        try:
            out.append(await _timed(session, url, body, key))
        except (aiohttp.ClientError, RuntimeError) as exc:
            errors.append(f"{tag}: {exc!r}"[:300])

    await asyncio.gather(*(one(i) for i in range(n)))
    return out


async def measure_load(
    paths: dict[str, tuple[str, str]], rate: float, seconds: float, phase_s: float = 5.0, warm_s: float = 30.0
) -> dict[str, list[float]]:
    """Each path under the same open-loop rate, in alternating phases of ``phase_s``, after a warm-up
    that is not counted (``warm_s`` for llm-router: its learned limit grows from 10 calls at once,
    x 1.5 a round of calls, and settles in some 25 s at 1 s a call; 3 s direct)."""
    out: dict[str, list[float]] = {name: [] for name in paths}
    errors: list[str] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        # warm-up: connections opened, processes warm, and llm-router's learned in-flight limit for
        # the deployment grown from its cold start (10, x 1.5 per round of 1 s calls) to the load
        for name, (url, key) in paths.items():
            with collector_off():
                await _open_loop(
                    session, url, key, rate, 3.0 if name == "direct" else warm_s, f"warm {name}", errors
                )
        phases = max(int(seconds / phase_s), 1)
        for p in range(phases):
            for name, (url, key) in paths.items():
                with collector_off():  # it collects between phases, with nothing in flight
                    out[name] += await _open_loop(session, url, key, rate, phase_s, f"{name} {p}", errors)
    for line in errors[:10]:
        print("load error:", line)
    print(f"load errors: {len(errors)}")
    return out


@asynccontextmanager
async def _stack(
    sim_args: Sequence[str] = (), **settings: str
) -> AsyncIterator[tuple[str, dict[str, tuple[str, str]]]]:
    """A private Redis, the simulator, ``llm-router serve`` and a worker (``settings`` as
    ``LLM_ROUTER_*`` variables): Redis' URL and the two paths, direct and through llm-router."""
    with RedisServer() as redis_server:
        sim_port, api_port = free_port(), free_port()
        sim_url, api_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{api_port}"
        queue = "bench-http"
        env = simulated_env(os.environ, redis_url=redis_server.url, sim_url=sim_url, fast_lanes=False)
        env.update(LLM_ROUTER_QUEUE_NAME=queue, LLM_ROUTER_LOG_LEVEL="WARNING")
        env.update({f"LLM_ROUTER_{name.upper()}": value for name, value in settings.items()})
        cli = [sys.executable, "-m", "llm_router.cli"]
        with (
            process([*cli, "simulate", "--port", str(sim_port), *sim_args], env, f"{sim_url}/_sim/calls"),
            process([*cli, "serve", "--port", str(api_port)], env, f"{api_url}/healthz"),
            process([*cli, "worker"], env, f"{api_url}/healthz"),
        ):
            await _wait_worker(redis_server.url, f"{queue}:interactive")
            key = await _create_key(redis_server.url)
            yield (
                redis_server.url,
                {
                    "direct": (f"{sim_url}/v1/chat/completions", SIM_KEY),
                    "llm-router": (f"{api_url}/v1/chat/completions", key),
                },
            )


async def run(n: int, sparse: int = 0, gap_s: float = 5.0) -> dict[str, Any]:
    async with _stack() as (redis_url, paths):
        sim_url = paths["direct"][0].removesuffix("/v1/chat/completions")
        with ExitStack() as stack:
            try:
                peer_url, peer_key = stack.enter_context(litellm_proxy(sim_url))
                paths["litellm proxy"] = (f"{peer_url}/v1/chat/completions", peer_key)
            except PeerUnavailable as exc:
                print(f"litellm proxy: skipped ({exc})")
            sent: list[tuple[str, float, float]] = []
            latencies = await measure(paths, n, sent)
            in_a_row = await measure_back_to_back(paths, n)
            now_and_then = await measure_sparse(paths, sparse, gap_s) if sparse else {}
        spans = await breakdown(redis_url, sent)
    return {
        "date": datetime.now(UTC).isoformat(),
        "requests": n,
        "target": {"overhead_p50_ms": 2, "overhead_p99_ms": 5, "load_overhead_p99_ms": 10},
        "paths": _rows(latencies),
        "paths_back_to_back": _rows(in_a_row),
        "paths_sparse": _rows(now_and_then) if now_and_then else {},
        "sparse_gap_s": gap_s,
        "spans": spans,
    }


async def run_load(rate: float, seconds: float, latency_ms: int = 1000) -> dict[str, Any]:
    """Direct and llm-router under the same open-loop rate, upstream answering after ``latency_ms``."""
    # sized for the load, as an operator would: ~rate x latency calls in flight at once
    load = {"max_jobs": "1000", "tenant_max_http_requests": "2000"}
    async with _stack(["--latency-ms", str(latency_ms)], **load) as (_, paths):
        latencies = await measure_load(paths, rate, seconds)
    direct = latencies["direct"]
    rows = {}
    for name, values in latencies.items():
        rows[name] = {
            "requests": len(values),
            "p50_ms": _pct(values, 0.5),
            "p99_ms": _pct(values, 0.99),
            "max_ms": max(values),
            "overhead_p50_ms": _pct(values, 0.5) - _pct(direct, 0.5),
            "overhead_p99_ms": _pct(values, 0.99) - _pct(direct, 0.99),
        }
    return {"rate_per_s": rate, "seconds_per_path": seconds, "upstream_latency_ms": latency_ms, "paths": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=300, help="requests per path")
    parser.add_argument("--load-rate", type=float, default=200, help="open-loop requests/s (0: skip)")
    parser.add_argument("--load-s", type=float, default=30, help="seconds of load per path")
    parser.add_argument(
        "--sparse", type=int, default=20, help="requests per path one every --gap-s (0: skip)"
    )
    parser.add_argument("--gap-s", type=float, default=5.0, help="seconds between the sparse requests")
    args = parser.parse_args()
    results = uvloop.run(run(args.n, args.sparse, args.gap_s))
    table = Table(title=f"HTTP chat completion at low load ({args.n} requests each, one at a time)")
    for col in ("path", "p50 ms", "p99 ms", "overhead p50 ms", "overhead p99 ms"):
        table.add_column(col, justify="left" if col == "path" else "right")
    in_a_row = {f"{name}, 10 in a row": row for name, row in results["paths_back_to_back"].items()}
    sparse = {f"{name}, one every {args.gap_s:g} s": row for name, row in results["paths_sparse"].items()}
    for name, row in {**results["paths"], **in_a_row, **sparse}.items():
        table.add_row(
            name,
            f"{row['p50_ms']:.2f}",
            f"{row['p99_ms']:.2f}",
            "-" if name.startswith("direct") else f"{row['overhead_p50_ms']:.2f}",
            "-" if name.startswith("direct") else f"{row['overhead_p99_ms']:.2f}",
        )
    Console(width=None if sys.stdout.isatty() else 120).print(table)
    spans = Table(title="Where llm-router's time goes (one at a time; record timestamps and the client's)")
    for col in ("span", "p50 ms", "p99 ms", "mean ms", "what"):
        spans.add_column(col, justify="left" if col in ("span", "what") else "right")
    for name, row in results["spans"].items():
        figures = (f"{row[k]:.2f}" for k in ("p50_ms", "p99_ms", "mean_ms"))
        spans.add_row(name, *figures, SPANS[name])
    Console(width=None if sys.stdout.isatty() else 140).print(spans)
    ours = [results["paths"]["llm-router"], results["paths_back_to_back"]["llm-router"]]
    met = all(row["overhead_p50_ms"] <= 2 and row["overhead_p99_ms"] <= 5 for row in ours)
    verdict = "met" if met else "MISSED"
    print(f"target (<= 2 ms p50, <= 5 ms p99 over direct, interleaved and in a row): {verdict}")
    if args.load_rate > 0:
        load = uvloop.run(run_load(args.load_rate, args.load_s))
        results["load"] = load
        table = Table(
            title=f"Under load: open loop at {args.load_rate:.0f} requests/s, upstream "
            f"{load['upstream_latency_ms']} ms, {args.load_s:.0f} s per path"
        )
        for col in ("path", "requests", "p50 ms", "p99 ms", "max ms", "overhead p50 ms", "overhead p99 ms"):
            table.add_column(col, justify="left" if col == "path" else "right")
        for name, row in load["paths"].items():
            table.add_row(
                name,
                str(row["requests"]),
                f"{row['p50_ms']:.1f}",
                f"{row['p99_ms']:.1f}",
                f"{row['max_ms']:.1f}",
                "-" if name == "direct" else f"{row['overhead_p50_ms']:.2f}",
                "-" if name == "direct" else f"{row['overhead_p99_ms']:.2f}",
            )
        Console(width=None if sys.stdout.isatty() else 120).print(table)
        under = load["paths"]["llm-router"]["overhead_p99_ms"]
        print(f"target under load (p99 overhead <= 10 ms): {'met' if under <= 10 else 'MISSED'}")
    write_json("http-latency", results)


if __name__ == "__main__":
    main()
