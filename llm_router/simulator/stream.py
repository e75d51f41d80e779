"""Writing server-sent events: the one place stream chunks leave the simulator."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiohttp import web

from llm_router.simulator.wire import StreamFault

_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


async def send_events(
    request: web.Request, events: Sequence[bytes], fault: StreamFault | None = None
) -> web.StreamResponse:
    """Send pre-encoded SSE ``events`` (each ``data: ...\\n\\n``), honouring a stream fault."""
    response = web.StreamResponse(headers=_SSE_HEADERS)
    try:
        await response.prepare(request)
        if fault is None:
            # One write: the client still parses separate events, and the bench stays cheap.
            await response.write(b"".join(events))
        else:
            await _send_spoiled(request, response, events, fault)
        await response.write_eof()
    except ConnectionError:
        # The client went away mid-stream; that is its right, not a server error worth a traceback.
        pass
    return response


async def _send_spoiled(
    request: web.Request, response: web.StreamResponse, events: Sequence[bytes], fault: StreamFault
) -> None:
    for index, event in enumerate(events):
        if index == fault.cut_after:
            if request.transport is not None:
                request.transport.abort()
            raise ConnectionResetError("stream cut by a simulated fault")
        if index == fault.stall_after and fault.stall_s > 0:
            await asyncio.sleep(fault.stall_s)
        await response.write(event)
