"""A task cancelled during a Redis command ends cancelled, wherever in the command the cancel lands.

redis-py bounds each write with ``asyncio.wait_for``; on Python 3.11 that returns normally when the
cancel comes as the write has just finished, so the task carried on as if never cancelled. A loop
that lost its cancel so (the worker's batcher, stopped at shutdown just as it sent a command) never
ended, and held the worker's exit until it was killed.
"""

from __future__ import annotations

import asyncio

import pytest

from config.settings import Settings
from llm_router.redis_client import redis_client

STEPS = 60  # loop turns covering a command from its start to its reply (about 15 on asyncio's loop)


async def test_a_cancel_anywhere_in_a_command_is_never_lost(settings: Settings) -> None:
    client = redis_client(settings)
    try:
        await client.ping()  # connected: the command's steps are the same on every try
        lost = []
        for steps in range(STEPS):

            async def command() -> str:
                await client.set("cancel-probe", "x")
                return "carried on"

            task = asyncio.create_task(command())
            for _ in range(steps):
                await asyncio.sleep(0)
            if task.done():
                break  # past the reply: every point of the command was tried
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                continue
            lost.append(steps)
        else:
            pytest.fail(f"the command had not ended after {STEPS} loop turns")
        assert lost == [], f"a cancel at these loop turns was lost: {lost}"
        assert await client.ping()  # a connection left mid-command is not handed out again
    finally:
        await client.aclose()
