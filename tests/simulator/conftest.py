"""Fixtures for the simulator tests: a fresh simulator per test and a raw HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest

from llm_router.simulator import SimServer, start_simulator

# The repo runs pytest with --import-mode=importlib, so test modules cannot import a shared
# helper module; the few helpers live in each test file and these fixtures.
KEY = "sk-sim-test"


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    server = await start_simulator(port=0)
    yield server
    await server.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@dataclass(frozen=True)
class Reply:
    """A fully read HTTP response."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";")[0]

    def json(self) -> Any:
        return orjson.loads(self.body)


@pytest.fixture
def chat(sim: SimServer, http: aiohttp.ClientSession) -> Callable[..., Awaitable[Reply]]:
    """POST a chat body with the test key (``key=None``: no Authorization) and read the reply."""

    async def post(body: Any, *, key: str | None = KEY, prefix: str = "/v1", timeout: float = 5.0) -> Reply:
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        async with http.post(
            f"{sim.url}{prefix}/chat/completions",
            json=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            return Reply(response.status, dict(response.headers), await response.read())

    return post
