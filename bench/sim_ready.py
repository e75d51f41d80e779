"""Waiting for a simulator the benchmarks started (shared by the bench scripts beside it)."""

from __future__ import annotations

import asyncio

import aiohttp


async def wait_for_simulator(url: str, timeout_s: float = 15.0) -> None:
    """Until the simulator at ``url`` answers its health check; ``RuntimeError`` after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with aiohttp.ClientSession() as s:
        while loop.time() < deadline:
            try:
                async with s.get(f"{url}/_sim/health"):
                    return
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
    raise RuntimeError("simulator did not start")
