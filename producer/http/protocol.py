"""The server's HTTP connections: aiohttp's own refusals in our error shape, never echoing headers.

aiohttp answers a request it cannot parse (a header over its size limits, a malformed request line,
a smuggling attempt such as both ``Content-Length`` and ``Transfer-Encoding``, a bare CR) by itself,
before any middleware runs: a ``text/plain`` 400 quoting the offending bytes, and a log line whose
traceback quotes them too (a whole ``Authorization`` header, say). ``JsonErrorsHandler`` answers the
documented JSON error object instead (``invalid_request``, or ``payload_too_large``; the message
names the kind of error, never the bytes) and logs the status, the kind and the client only.

``run`` serves the app as ``aiohttp.web.run_app`` would (signals, graceful shutdown) with this
handler on every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from http import HTTPStatus

import orjson
import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from llm_router.errors import InvalidRequest, PayloadTooLarge, RouterError
from producer.http.errors import JSON, error_body

log = structlog.get_logger("producer.http")

# aiohttp's parser errors → what the tenant is told (the class name says which rule was broken)
_REASONS = {
    "LineTooLong": "a request line or header is over the server's size limit",
    "BadStatusLine": "the request line is malformed",
    "BadHttpMethod": "the request method is malformed",
    "InvalidHeader": "a header is malformed",
    "TransferEncodingError": "the transfer encoding is malformed or conflicts with Content-Length",
    "ContentLengthError": "Content-Length is malformed",
    "InvalidURLError": "the request target is malformed",
}


class JsonErrorsHandler(RequestHandler):
    """aiohttp's connection handler, with its own error answers in our shape and without echoes."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        kind = type(exc).__name__ if exc is not None else None
        if status >= 500:
            # a bug of ours reaching aiohttp: its traceback is ours, not the client's bytes
            log.error("request failed", status=status, error=kind, remote=request.remote, exc_info=exc)
        else:
            log.warning("malformed request refused", status=status, error=kind, remote=request.remote)
        if request.writer.output_size > 0:
            raise ConnectionError("the answer had started; the connection is dropped")
        error: RouterError
        if status >= 500:
            error = RouterError("internal server error")
        elif status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
            error = PayloadTooLarge("the request is over the server's size limits")
        else:
            reason = _REASONS.get(kind or "", "the HTTP request is malformed")
            error = InvalidRequest(f"malformed HTTP request: {reason}")
        response = web.Response(status=status, body=orjson.dumps(error_body(error)), content_type=JSON)
        response.force_close()
        return response


# connections accepted by the kernel before the server takes them: aiohttp's 128 overflowed when a
# burst of clients connected at once (an open loop of 200 requests/s whose answers take a second),
# and a dropped connection attempt is retried by its client only after a second (SYN retransmission),
# so requests took 1-3 s longer. As uvicorn and gunicorn (2048); the kernel caps it at somaxconn.
BACKLOG = 2048


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return JsonErrorsHandler(self, loop=self._loop, **self._kwargs)


class _Runner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp builds its Server with arguments only it knows; the subclass adds one method
        server.__class__ = _Server
        return server


def run(
    app: web.Application, host: str, port: int, loop: asyncio.AbstractEventLoop, *, shutdown_timeout: float
) -> None:
    """Serve ``app`` on ``loop`` until SIGINT/SIGTERM, then shut down gracefully (as ``run_app``)."""
    asyncio.set_event_loop(loop)
    task = loop.create_task(_serve(app, host, port, shutdown_timeout))
    try:
        loop.run_until_complete(task)
    except (web.GracefulExit, KeyboardInterrupt):
        pass  # raised by the signal handler out of the loop: the serving task is still suspended
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(task)
        rest = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in rest:
            t.cancel()
        if rest:
            loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def _serve(app: web.Application, host: str, port: int, shutdown_timeout: float) -> None:
    runner = _Runner(app, handle_signals=True, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=BACKLOG).start()
        while True:
            await asyncio.sleep(3600)
    finally:
        await runner.cleanup()
