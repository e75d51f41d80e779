"""The server's own observability: ``/metrics``, ``/healthz``, ``/readyz``, and a middleware that counts,
times and traces every request.

* ``/metrics``: the server's requests (``llm_router_http_*``, labelled by route template, never by
  path, so ids do not multiply series) and the fleet's gauges read from Redis at scrape time.
* ``/healthz``: liveness, 200 while the process runs. ``/readyz``: 200 when Redis answers a PING
  within ``LLM_ROUTER_READY_TIMEOUT_S``, else 503; never "workers are live" (workers scale from zero
  on the queue's depth, which needs the server ready first).
* Traces (when on): a SERVER span per request, continuing the caller's ``traceparent`` header; it is
  the active span while the handler runs, so the jobs the request submits carry its context.

None of these needs an API key (they are for probes and Prometheus: keep the port inside the
cluster); the tenant label on cost is off unless ``LLM_ROUTER_METRICS_TENANT_LABEL`` is set.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from llm_router.metrics import CONTENT_TYPE, Exposition, FleetReader, Metrics, redis_ready
from llm_router.tracing import Tracing, process_tracing, set_error

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PROBES = frozenset({"/metrics", "/healthz", "/readyz"})
UNMATCHED = "unmatched"


def setup(app: web.Application) -> None:
    """The metrics, fleet reader and tracing of the app (``app["metrics"]``, ``app["fleet"]``,
    ``app["tracing"]``) and the three routes; ``middleware`` must be among the app's middlewares."""
    settings = app["settings"]
    catalog = app["catalog"]
    app["metrics"] = Metrics(tenant_label=settings.metrics_tenant_label)
    app["exposition"] = Exposition(app["metrics"])
    app["fleet"] = FleetReader(
        app["redis"],
        queues={"bulk": settings.queue_name, "interactive": settings.interactive_queue_name},
        deployments=[d.id for m in catalog.models for d in catalog.deployments(m, enabled_only=False)],
        heartbeat_ttl_s=settings.heartbeat_ttl_s,
        scan_limit=settings.metrics_scan_limit,
        timeout_s=settings.metrics_read_timeout_s,
    )
    app["tracing"] = process_tracing(settings, "llm-router-server")
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)


def route_of(request: web.Request) -> str:
    """The route template (``/v1/jobs/{id}``) a request matched, or ``unmatched``."""
    info = request.match_info
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None)
    if resource is None:
        return UNMATCHED
    return resource.canonical


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Counts and times every request by route and status; a span per request when tracing is on."""
    t0 = time.perf_counter()
    route = route_of(request)
    tracing: Tracing | None = request.app["tracing"]
    span = token = None
    if tracing is not None and request.path not in PROBES:
        span = tracing.start(
            f"{request.method} {route}",
            parent=request.headers.get("traceparent"),
            kind="server",
            attributes={"http.request.method": request.method, "http.route": route, "url.path": request.path},
        )
        token = tracing.activate(span)
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        metrics: Metrics = request.app["metrics"]
        metrics.http_requests.inc((route, str(status)))
        metrics.http_duration.observe((route,), time.perf_counter() - t0)
        if span is not None and tracing is not None:
            span.set_attribute("http.response.status_code", status)
            if "tenant" in request:
                span.set_attribute("llm_router.tenant", request["tenant"])
            if status >= 500:
                set_error(span, str(status))
            span.end()
            tracing.deactivate(token)


async def metrics(request: web.Request) -> web.Response:
    fleet: FleetReader = request.app["fleet"]
    snapshot = await fleet.read()
    body = request.app["exposition"].render(snapshot)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    reason = await redis_ready(request.app["redis"], request.app["settings"].ready_timeout_s)
    if reason is None:
        return web.json_response({"status": "ready"})
    return web.json_response({"status": "unready", "reason": reason}, status=503)
