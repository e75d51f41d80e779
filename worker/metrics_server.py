"""A worker process's own HTTP port (``LLM_ROUTER_METRICS_PORT``): ``/metrics``, ``/healthz``, ``/readyz``.

It runs on the worker's event loop, so a scrape reads the recorded values on the thread that writes
them (no locks on the hot path), and a loop blocked for good stops answering ``/healthz``, which is
what a liveness probe is for. Each worker process needs its own port; port 0 picks a free one, which
is logged (``metrics serving``). ``/readyz`` is Redis answering within ``LLM_ROUTER_READY_TIMEOUT_S``.
"""

from __future__ import annotations

import orjson
import structlog
from aiohttp import web
from redis.asyncio import Redis

from llm_router.metrics import CONTENT_TYPE, Exposition, FleetReader, redis_ready

log = structlog.get_logger("llm_router.worker")


class MetricsServer:
    """The port's aiohttp application, started and stopped on the worker's loop."""

    def __init__(
        self,
        *,
        exposition: Exposition,
        fleet: FleetReader,
        redis: Redis,
        host: str,
        port: int,
        ready_timeout_s: float,
    ) -> None:
        self.exposition = exposition
        self.fleet = fleet
        self.redis = redis
        self.host = host
        self.port = port
        self.ready_timeout_s = ready_timeout_s
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        """Listen; returns the port (the one picked when asked for 0)."""
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        log.info("metrics serving", url=f"http://{self.host}:{self.port}/metrics", port=self.port)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def metrics(self, request: web.Request) -> web.Response:
        snapshot = await self.fleet.read()
        return web.Response(body=self.exposition.render(snapshot), headers={"Content-Type": CONTENT_TYPE})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        reason = await redis_ready(self.redis, self.ready_timeout_s)
        if reason is None:
            return web.json_response({"status": "ready"})
        return web.Response(
            status=503,
            body=orjson.dumps({"status": "unready", "reason": reason}),
            content_type="application/json",
        )
