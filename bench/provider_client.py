"""The client's CPU per unstreamed provider call: aiohttp's session (the worker's before) against the
lean client (``worker.provider_client``), both against the simulator (0 ms, its own process).

Each client sends the same OpenAI chat request ``--calls`` times one after another, then with
``--width`` calls in flight (a pool of that many connections, warmed first), on uvloop as the
worker runs; the CPU is this process's (``time.process_time``: the simulator's is its own), per
call. Interleaved ``--runs`` times; medians. ``python bench/provider_client.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp
import orjson
import uvloop
from rich.console import Console
from rich.table import Table
from sim_ready import wait_for_simulator  # bench/sim_ready.py

from config.settings import Settings
from llm_router.testing.redis_server import free_port
from llm_router.testing.worker_procs import terminate
from worker.http import Timeouts, create_session, open_response
from worker.provider_client import ProviderClient
from worker.providers.base import HttpCall

LIMITS = Timeouts(connect_s=5.0, headers_s=None, first_token_s=30.0, idle_s=30.0, total_s=60.0)
BODY = orjson.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi in a sentence."}]}
)
Send = Callable[[HttpCall], Awaitable[tuple[int, dict[str, str], bytes]]]


def aiohttp_send(session: aiohttp.ClientSession) -> Send:
    """The worker's unstreamed call before: ``open_response`` and a whole read, headers lower-cased."""

    async def send(call: HttpCall) -> tuple[int, dict[str, str], bytes]:
        resp = await open_response(session, call, LIMITS, deadline_at=time.time() + 60, streamed=False)
        async with resp:
            body = await resp.read()
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, body

    return send


def lean_send(client: ProviderClient) -> Send:
    async def send(call: HttpCall) -> tuple[int, dict[str, str], bytes]:
        return await client.send(call, LIMITS, deadline_at=time.time() + 60)

    return send


async def measure(send: Send, call: HttpCall, calls: int, width: int) -> float:
    """CPU µs per call, ``width`` calls in flight."""

    async def lane(n: int) -> None:
        for _ in range(n):
            status, _, _ = await send(call)
            assert status == 200, status

    await asyncio.gather(*(lane(2) for _ in range(width)))  # warm: connections open, DNS cached
    started = time.process_time()
    await asyncio.gather(*(lane(calls // width) for _ in range(width)))
    return (time.process_time() - started) / (calls // width * width) * 1e6


async def main(args: argparse.Namespace) -> None:
    port = free_port()
    sim = subprocess.Popen(
        [sys.executable, "-m", "llm_router.cli", "simulate", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    results: dict[tuple[str, int], list[float]] = {}
    try:
        url = f"http://127.0.0.1:{port}"
        await wait_for_simulator(url)
        call = HttpCall(
            "POST",
            f"{url}/v1/chat/completions",
            {"Content-Type": "application/json", "Authorization": "Bearer sk-sim-openai"},
            BODY,
        )
        settings = Settings(_env_file=None, max_jobs=max(args.width, 100))
        for _ in range(args.runs):
            for width in (1, args.width):
                session = create_session(settings)
                client = ProviderClient(settings)
                try:
                    for name, send in (("aiohttp", aiohttp_send(session)), ("lean", lean_send(client))):
                        us = await measure(send, call, args.calls, width)
                        results.setdefault((name, width), []).append(us)
                finally:
                    await session.close()
                    await client.close()
    finally:
        terminate(sim)
    table = Table(title=f"client CPU µs per unstreamed call (median of {args.runs})")
    table.add_column("in flight", justify="right")
    for name in ("aiohttp", "lean"):
        table.add_column(name, justify="right")
    table.add_column("lean / aiohttp", justify="right")
    for width in (1, args.width):
        old, new = (statistics.median(results[(n, width)]) for n in ("aiohttp", "lean"))
        table.add_row(str(width), f"{old:.0f}", f"{new:.0f}", f"{new / old:.2f}")
    Console().print(table)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=4000, help="calls per client and width")
    parser.add_argument("--width", type=int, default=200, help="calls in flight for the concurrent row")
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs (medians)")
    uvloop.run(main(parser.parse_args()))
