"""The SSE writer's mid-stream fault hook (stall, cut), ready for a future FaultRule kind."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from llm_router.simulator.stream import send_events
from llm_router.simulator.wire import StreamFault

EVENTS = [f"data: {i}\n\n".encode() for i in range(5)]


@pytest.fixture
async def stream_url() -> AsyncIterator[str]:
    async def handler(request: web.Request) -> web.StreamResponse:
        cut = request.query.get("cut")
        stall = request.query.get("stall")
        fault = None
        if cut or stall:
            fault = StreamFault(
                cut_after=int(cut) if cut else None, stall_after=int(stall) if stall else None, stall_s=0.2
            )
        return await send_events(request, EVENTS, fault)

    app = web.Application()
    app.router.add_get("/s", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/s"
    await runner.cleanup()


async def test_plain_stream(stream_url: str, http: aiohttp.ClientSession) -> None:
    async with http.get(stream_url) as response:
        assert response.content_type == "text/event-stream"
        assert await response.read() == b"".join(EVENTS)


async def test_stall_delays_the_rest(stream_url: str, http: aiohttp.ClientSession) -> None:
    started = time.monotonic()
    async with http.get(stream_url, params={"stall": "2"}) as response:
        first = await response.content.readuntil(b"\n\n") + await response.content.readuntil(b"\n\n")
        assert first == b"".join(EVENTS[:2])
        assert await response.read() == b"".join(EVENTS[2:])
    assert time.monotonic() - started >= 0.2


async def test_cut_drops_the_connection_mid_stream(stream_url: str, http: aiohttp.ClientSession) -> None:
    async with http.get(stream_url, params={"cut": "2"}) as response:
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
