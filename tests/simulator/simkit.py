"""Shared helpers of the simulator tests (a uniquely named module, importable from any test)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

KEY = "sk-sim-test"
Chat = Callable[..., Awaitable[aiohttp.ClientResponse]]


def user(text: str = "Hello there") -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def body(text: str = "Hello there", **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": user(text), **extra}


async def poll(check: Callable[[], Awaitable[bool]], *, deadline_s: float = 3.0, every_s: float = 0.02) -> float:
    """Await ``check`` until it is true; return the seconds it took. Fails after ``deadline_s``."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > deadline_s:
            raise AssertionError(f"condition not met within {deadline_s}s")
        await asyncio.sleep(every_s)
    return time.monotonic() - start
