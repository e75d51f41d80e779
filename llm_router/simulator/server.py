"""Running the simulator: in-process for tests (``start_simulator``) or as a blocking server."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from types import TracebackType
from typing import Any

from aiohttp import web

from llm_router.simulator.app import create_app
from llm_router.simulator.config import SimConfig
from llm_router.simulator.faults import FaultRule
from llm_router.simulator.state import STATE, SimState

# In-flight requests get this long to finish on close; held (`hang`) requests let go at once.
_SHUTDOWN_TIMEOUT_S = 2.0


class SimServer:
    """A running simulator: its base ``url`` (no path) and ``port``; ``close()`` stops it.

    The in-process helpers (``add_faults``, ``calls``, ``reset``) do what the ``/_sim`` control
    API does, without a round trip.
    """

    def __init__(self, runner: web.AppRunner, app: web.Application, host: str, port: int) -> None:
        self._runner = runner
        self.app = app
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def state(self) -> SimState:
        return self.app[STATE]

    def add_faults(self, rules: list[FaultRule], *, replace: bool = False) -> None:
        self.state.faults.add(rules, replace=replace)

    def calls(self) -> dict[str, Any]:
        return self.state.calls.snapshot()

    def reset(self) -> None:
        self.state.reset()

    async def close(self) -> None:
        await self._runner.cleanup()

    async def __aenter__(self) -> SimServer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def start_simulator(
    config: SimConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> SimServer:
    """Start a simulator on the running loop; ``port=0`` picks a free port (see ``.port``)."""
    app = create_app(config)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=_SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    bound_port = runner.addresses[0][1]
    return SimServer(runner, app, host, bound_port)


def serve_forever(config: SimConfig, host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM, printing one line with the URL once listening."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_serve(config, host, port))


async def _serve(config: SimConfig, host: str, port: int) -> None:
    server = await start_simulator(config, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"llm-router simulator listening on {server.url}", flush=True)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await server.close()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    with contextlib.suppress(ImportError):
        import uvloop

        return uvloop.new_event_loop
    return None
