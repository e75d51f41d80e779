"""Fixtures for the simulator tests: a fresh simulator per test and a raw HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from simkit import KEY, Chat

from llm_router.simulator import SimServer, start_simulator


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    server = await start_simulator(port=0)
    yield server
    await server.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def chat(sim: SimServer, http: aiohttp.ClientSession) -> Chat:
    """POST a chat body; the response is read (``await r.read()`` is cached) before returning."""

    async def post(
        body: Any,
        *,
        key: str | None = KEY,
        prefix: str = "/v1",
        timeout: float = 5.0,
    ) -> aiohttp.ClientResponse:
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        async with http.post(
            f"{sim.url}{prefix}/chat/completions",
            json=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            await response.read()
            return response

    return post
