"""Writing server-sent events: the one place stream chunks leave the simulator, faults included."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiohttp import web

from llm_router.simulator.state import STATE
from llm_router.simulator.wire import StreamFault

SSE_CONTENT_TYPE = "text/event-stream"
_SSE_HEADERS = {"Content-Type": SSE_CONTENT_TYPE, "Cache-Control": "no-cache"}
_HOLD_POLL_S = 0.05
_MALFORMED_EVENT = b'data: {"id": "chatcmpl-garbled", "choices": [{"delta": {"cont\n\n'


async def send_events(
    request: web.Request, events: Sequence[bytes], fault: StreamFault | None = None
) -> web.StreamResponse:
    """Send pre-encoded SSE ``events`` (each ending in ``\\n\\n``), spoiled by ``fault`` if given."""
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
        # The client went away mid-stream (or a fault cut it); no traceback worth logging.
        pass
    return response


async def _send_spoiled(
    request: web.Request, response: web.StreamResponse, events: Sequence[bytes], fault: StreamFault
) -> None:
    if fault.after:
        await response.write(b"".join(events[: fault.after]))
    if fault.kind == "error":
        await response.write(fault.error)
        return
    if fault.kind == "malformed":
        # a stray event whose JSON is cut short (a proxy's garbage, say), then the stream goes on
        await response.write(_MALFORMED_EVENT)
        await response.write(b"".join(events[fault.after :]))
        return
    if fault.kind == "stall":
        await hold(request, fault.stall_s)
    if fault.kind == "cut" or fault.close:
        cut(request)
        raise ConnectionResetError("stream cut by a simulated fault")
    await response.write(b"".join(events[fault.after :]))


async def stalled_body(
    request: web.Request, response: web.Response, fault: StreamFault
) -> web.StreamResponse:
    """An unstreamed answer whose body stops halfway for ``stall_s`` (then the rest, or a closed
    connection): a stall fault on a plain request."""
    body = response.body if isinstance(response.body, bytes) else b""
    out = web.StreamResponse(status=response.status, headers={"Content-Type": response.content_type})
    out.content_length = len(body)
    try:
        await out.prepare(request)
        await out.write(body[: len(body) // 2])
        await hold(request, fault.stall_s)
        if fault.close:
            cut(request)
            return out
        await out.write(body[len(body) // 2 :])
        await out.write_eof()
    except ConnectionError:
        pass
    return out


def broken_stream(events: Sequence[bytes]) -> web.Response:
    """A 200 event stream whose first event's JSON is cut short (a ``malformed`` fault on a stream)."""
    first = events[0].rstrip(b"\n")
    return web.Response(body=first[: len(first) // 2] + b"\n\n", headers=_SSE_HEADERS)


def cut(request: web.Request) -> None:
    """Close the connection now: what was written goes out, then no more (no chunked-body end)."""
    if request.transport is not None:
        request.transport.close()


async def hold(request: web.Request, seconds: float) -> None:
    """Wait ``seconds``, but let go at once when the client leaves or the server stops.

    Polled rather than one sleep, so a long hold never keeps a connection (or shutdown) hostage.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    state = request.app.get(STATE)
    while (remaining := deadline - loop.time()) > 0:
        if request.transport is None or request.transport.is_closing() or (state and state.stopping.is_set()):
            return
        await asyncio.sleep(min(remaining, _HOLD_POLL_S))
