"""Two trees' interactive paths side by side: what a change does to the HTTP chat completion.

``http_latency.py`` runs one tree's stack; on a shared machine two runs of it differ by more than a
change worth a fraction of a millisecond. This starts a stack per tree at once (each its own Redis,
simulator, ``llm-router serve`` and worker, with that tree first on ``PYTHONPATH``) and sends each
request to the simulator directly and to both stacks, each path in each place of the order in turn,
so drift and the neighbours' load hit both trees equally. Prints each tree's latency, overhead over
the direct call, ``http_latency.py``'s spans, and the CPU its server and its Redis spent per request
(``/proc``, ``INFO cpu``), and writes JSON to ``bench/results/``.

    python bench/http_ab.py /work/main /path/to/other/tree -n 1000
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import uvloop
from http_latency import CHAT, WARMUP, _rows, _stack, _timed, breakdown  # bench/http_latency.py
from output import write_json  # bench/output.py, beside this script
from quiet_gc import collector_off  # bench/quiet_gc.py
from redis.asyncio import Redis


def _server_cpu_s(url: str) -> float:
    """CPU seconds (user + system) of the ``llm-router serve`` process answering at ``url``."""
    port = url.split(":")[2].split("/")[0]
    (pid,) = subprocess.run(
        ["pgrep", "-f", f"serve --port {port}$"], capture_output=True, text=True
    ).stdout.split()
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()  # noqa: SIM115
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _redis_cpu_s(url: str) -> float:
    redis = Redis.from_url(url)
    try:
        cpu = await redis.info("cpu")
    finally:
        await redis.aclose()
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


async def run(trees: dict[str, str], n: int) -> dict[str, Any]:
    async with AsyncExitStack() as stack:
        stacks = {}
        here = os.getcwd()
        for name, tree in trees.items():
            # the stack's processes start here, as ``python -m``: sys.path begins with their working
            # directory, so the tree must be that as well as on PYTHONPATH (a tree as the working
            # directory wins over PYTHONPATH)
            os.environ["PYTHONPATH"] = tree
            os.chdir(tree)
            try:
                stacks[name] = await stack.enter_async_context(_stack())
            finally:
                os.chdir(here)
        paths = {"direct": next(iter(stacks.values()))[1]["direct"]}
        paths |= {name: s[1]["llm-router"] for name, s in stacks.items()}
        sent: dict[str, list[tuple[str, float, float]]] = {name: [] for name in paths}
        latencies: dict[str, list[float]] = {name: [] for name in paths}
        cpu: dict[str, list[float]] = {}
        orders = list(itertools.permutations(paths))
        async with aiohttp.ClientSession() as session:
            with collector_off():
                for i in range(n + WARMUP):
                    if i == WARMUP:
                        cpu = {
                            k: [_server_cpu_s(s[1]["llm-router"][0]), await _redis_cpu_s(s[0])]
                            for k, s in stacks.items()
                        }
                    body = orjson.dumps(
                        {**CHAT, "messages": [{"role": "user", "content": f"Say hello {i}."}]}
                    )
                    order = orders[i % len(orders)]  # every path in every place in turn: none always second
                    for name in order:
                        counted = i >= WARMUP
                        url, key = paths[name]
                        ms = await _timed(session, url, body, key, sent[name] if counted else None)
                        if counted:
                            latencies[name].append(ms)
        for name, s in stacks.items():
            cpu[name] = [
                (_server_cpu_s(s[1]["llm-router"][0]) - cpu[name][0]) / n * 1e6,
                (await _redis_cpu_s(s[0]) - cpu[name][1]) / n * 1e6,
            ]
        spans = {name: await breakdown(s[0], sent[name]) for name, s in stacks.items()}
    rows = _rows(latencies)
    date = datetime.now(UTC).isoformat()
    for name, (server_us, redis_us) in cpu.items():
        rows[name] |= {"server_cpu_us_per_request": server_us, "redis_cpu_us_per_request": redis_us}
    return {"date": date, "requests": n, "trees": trees, "paths": rows, "spans": spans}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", help="the first tree (its root: the directory with llm_router/)")
    parser.add_argument("b", help="the second tree")
    parser.add_argument("-n", type=int, default=1000, help="requests per path")
    args = parser.parse_args()
    a, b = str(Path(args.a).resolve()), str(Path(args.b).resolve())
    if a == b:
        parser.error("two different trees, please")
    trees = {f"a: {Path(a).name}": a, f"b: {Path(b).name}": b}
    results = uvloop.run(run(trees, args.n))
    for name, row in results["paths"].items():
        line = f"{name:>16}: p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms"
        if name in results["spans"]:
            line += f"; overhead p50 {row['overhead_p50_ms']:.2f}, p99 {row['overhead_p99_ms']:.2f}"
            line += f"; CPU per request: server {row['server_cpu_us_per_request']:.0f} µs,"
            line += f" Redis {row['redis_cpu_us_per_request']:.0f} µs"
            line += "; spans p50/p99 " + ", ".join(
                f"{span} {v['p50_ms']:.2f}/{v['p99_ms']:.2f}" for span, v in results["spans"][name].items()
            )
        print(line)
    write_json("http-ab", results)


if __name__ == "__main__":
    main()
