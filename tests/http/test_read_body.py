"""Reading a request's body (``producer.http.errors.read_body``) on a real aiohttp server: a body that
came whole with its head is taken at once, one still arriving is read as it comes; both are bounded
by the route's limit and mark a large body (parsed off the event loop, in its tenant's large-body
slot)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from llm_router.errors import RouterError
from producer.http.errors import read_body
from producer.http.limits import LARGE

LARGE_BYTES = 100  # server_large_body_bytes here
LIMIT = 1000


async def _echo(request: web.Request) -> web.Response:
    try:
        body = await read_body(request, LIMIT)
    except RouterError as exc:
        return web.json_response({"error": exc.code})
    whole = request.content.is_eof()
    return web.json_response({"body": body.decode(), "large": bool(request.get(LARGE)), "whole": whole})


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    app = web.Application()
    app["settings"] = SimpleNamespace(server_large_body_bytes=LARGE_BYTES, server_body_timeout_s=0.5)
    app.router.add_post("/", _echo)
    async with TestServer(app) as srv:
        yield srv


async def _send(server: TestServer, head: bytes, *parts: bytes, pause_s: float = 0.0) -> dict[str, object]:
    """One request written as ``head`` and ``parts`` (each its own write, ``pause_s`` apart: a body
    still arriving when the handler reads it), and the handler's JSON answer."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(head + (parts[0] if parts and not pause_s else b""))
        for part in parts if pause_s else parts[1:]:
            await asyncio.sleep(pause_s)
            writer.write(part)
        await writer.drain()
        # the answer by its length: a server that refused a body still arriving may keep reading
        # (and the connection open) after answering
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        answer = await asyncio.wait_for(reader.readexactly(length), timeout=5)
    finally:
        writer.close()
    return orjson.loads(answer)  # type: ignore[no-any-return]


def _head(length: int | None) -> bytes:
    size = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return f"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{size}\r\n\r\n".encode()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@pytest.mark.parametrize("size", [0, 10, LARGE_BYTES, LARGE_BYTES + 1])
async def test_a_body_that_came_whole_is_taken_and_marked_large_past_the_threshold(
    server: TestServer, size: int
) -> None:
    answer = await _send(server, _head(size), b"x" * size)
    assert answer == {"body": "x" * size, "large": size > LARGE_BYTES, "whole": True}


async def test_a_whole_chunked_body_over_the_limit_is_refused(server: TestServer) -> None:
    body = _chunk(b"x" * (LIMIT + 1)) + b"0\r\n\r\n"
    assert await _send(server, _head(None), body) == {"error": "payload_too_large"}


async def test_a_body_still_arriving_is_read_to_its_end(server: TestServer) -> None:
    parts = (_chunk(b"a" * 60), _chunk(b"b" * 60), b"0\r\n\r\n")
    answer = await _send(server, _head(None), *parts, pause_s=0.05)
    assert answer == {"body": "a" * 60 + "b" * 60, "large": True, "whole": True}


async def test_a_body_still_arriving_is_refused_once_past_the_limit(server: TestServer) -> None:
    parts = (_chunk(b"x" * 600), _chunk(b"x" * 600))  # and no end: the read stops at the limit
    assert await _send(server, _head(None), *parts, pause_s=0.05) == {"error": "payload_too_large"}


async def test_a_body_that_stops_arriving_times_out(server: TestServer) -> None:
    parts = (_chunk(b"{"), _chunk(b"}"))  # the second part after the server's 0.5 s
    assert await _send(server, _head(None), *parts, pause_s=0.8) == {"error": "request_timeout"}
