"""The live dashboard at ``/dashboard``: the fleet on one page, for admin keys only.

Queue depth and the oldest waiting job's age, throughput and success rate over time, breakers per
deployment, cost today by model and by tenant, the jobs in the queues and the latest ended ones with
a drill-down to the record (attempts, cost, response). Plain HTML and uPlot, vendored under
``static/`` (nothing is fetched at build or run time); live over server-sent events.

**Access**: an admin key (``llm-router keys create TENANT --admin``, or any key of a tenant in
``LLM_ROUTER_ADMIN_TENANTS``). A browser signs in once with the key in a form; the key is then kept
in an HttpOnly, SameSite=Strict cookie scoped to ``/dashboard`` (as a browser keeps basic-auth
credentials). Scripts may send ``Authorization: Bearer KEY`` instead. With ``--no-auth`` the
dashboard is open, like the rest of the server.

**Where the data comes from** (one sampler per server process, only while someone watches, every
``LLM_ROUTER_DASHBOARD_REFRESH_S``): ``FleetReader`` (queues, workers, breakers), ``BreakerBoard``
(window counts of the deployments that have any), today's usage counters (``Ledger``'s hash: jobs,
failures and cost per tenant and model; throughput and success rate are their differences between
samples), the recent-jobs list the workers write, and the front of each queue. No work per job
beyond the workers' recent list.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from pathlib import Path
from typing import Any

import orjson
import structlog
from aiohttp import web

from llm_router.circuit_breaker import BreakerBoard
from llm_router.errors import InvalidApiKey, JobNotFound
from llm_router.keys import PRIORITIES, RECENT_KEY, active_tenants_key, ready_key, record_key, usage_key
from llm_router.lanes_view import lanes_report
from llm_router.metrics import FleetReader, FleetSnapshot
from producer.http.auth import ApiKeys
from producer.http.errors import json_response, sse_data, start_sse

log = structlog.get_logger("producer.http")

COOKIE = "llm_router_admin"
COOKIE_MAX_AGE_S = 12 * 3600
STATIC = Path(__file__).with_name("static")
HISTORY = 300  # samples kept for a page that opens now (10 minutes at the default 2 s)
RECENT_SHOWN = 50
QUEUED_SHOWN = 20
RECHECK_EVERY = 15  # pushes between checks that the viewer's key is still an admin key
NANOS = 1_000_000_000

routes = web.RouteTableDef()


def setup(app: web.Application) -> None:
    """The dashboard's routes and its sampler (``app["dashboard"]``); needs ``app["fleet"]``."""
    app["dashboard"] = Feed(app)
    app.router.add_routes(routes)
    app.router.add_static("/dashboard/static", STATIC, append_version=False)

    async def stop(app: web.Application) -> None:
        await app["dashboard"].stop()

    app.on_cleanup.append(stop)


# -- access ---------------------------------------------------------------------------------------


def _key(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key") or request.cookies.get(COOKIE)


async def is_admin(request: web.Request, key: str | None = None) -> bool:
    keys: ApiKeys | None = request.app["api_keys"]
    if keys is None:  # --no-auth: the whole server is open
        return True
    return await keys.is_admin(key if key is not None else _key(request))


async def require_admin(request: web.Request) -> None:
    if not await is_admin(request):
        raise InvalidApiKey("the dashboard needs an admin key (llm-router keys create TENANT --admin)")


LOGIN = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>llm-router dashboard: sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/dashboard/static/dashboard.css"></head>
<body class="login"><form method="post" action="/dashboard/login" id="login">
<h1>llm-router</h1><p>The dashboard needs an admin API key.</p>
<label>API key <input type="password" name="key" autocomplete="current-password" autofocus required></label>
<button type="submit">Sign in</button><p class="error">{error}</p></form></body></html>
"""


def _login_page(error: str = "", status: int = 401) -> web.Response:
    return web.Response(
        text=LOGIN.replace("{error}", error),
        status=status,
        content_type="text/html",
        headers={"Cache-Control": "no-store"},
    )


@routes.get("/dashboard")
async def page(request: web.Request) -> web.StreamResponse:
    if not await is_admin(request):
        return _login_page()
    return web.FileResponse(STATIC / "dashboard.html", headers={"Cache-Control": "no-store"})


@routes.post("/dashboard/login")
async def login(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    key = str(form.get("key") or "").strip()
    if not await is_admin(request, key):
        return _login_page("That key is not an admin key.")
    response = _see_dashboard()
    response.set_cookie(
        COOKIE,
        key,
        max_age=COOKIE_MAX_AGE_S,
        path="/dashboard",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    return response


@routes.post("/dashboard/logout")
async def logout(request: web.Request) -> web.StreamResponse:
    response = _see_dashboard()
    response.del_cookie(COOKIE, path="/dashboard")
    return response


def _see_dashboard() -> web.Response:
    return web.Response(status=303, headers={"Location": "/dashboard", "Cache-Control": "no-store"})


# -- data -----------------------------------------------------------------------------------------


@routes.get("/dashboard/api/snapshot")
async def snapshot(request: web.Request) -> web.Response:
    await require_admin(request)
    return json_response(await request.app["dashboard"].sample())


@routes.get("/dashboard/api/jobs/{job_id:.+}")  # a scoped id: <tenant>/<job id>
async def job(request: web.Request) -> web.Response:
    await require_admin(request)
    record = await request.app["producer"].store.get(request.match_info["job_id"])
    if record is None:
        raise JobNotFound("no such job (unknown or expired)", param="job_id")
    return json_response(record.model_dump(mode="json"))


@routes.get("/dashboard/events")
async def events(request: web.Request) -> web.StreamResponse:
    """The live view: the history so far, then a snapshot every refresh."""
    await require_admin(request)
    key = _key(request)
    feed: Feed = request.app["dashboard"]
    queue = feed.subscribe()
    response = await start_sse(request)
    try:
        await response.write(sse_data({"history": list(feed.history)}, event="history"))
        if feed.latest is not None:
            await response.write(sse_data(feed.latest, event="snapshot"))
        pushes = 0
        while True:
            sample = await queue.get()
            await response.write(sse_data(sample, event="snapshot"))
            pushes += 1
            if pushes % RECHECK_EVERY == 0 and not await is_admin(request, key):
                await response.write(sse_data({"reason": "the key is no longer an admin key"}, event="end"))
                break
    except (ConnectionResetError, asyncio.CancelledError):
        pass  # the page went away (or the server stops)
    finally:
        feed.unsubscribe(queue)
    return response


class Feed:
    """Samples the fleet every refresh while anyone watches, and fans the samples out."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.settings = app["settings"]
        self.redis = app["redis"]
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self.latest: dict[str, Any] | None = None
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._task: asyncio.Task[None] | None = None
        self._last: tuple[float, int, int, int] | None = None  # time, day, jobs, failed

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=8)
        self._subscribers.add(queue)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._subscribers.discard(queue)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    async def _run(self) -> None:
        while self._subscribers:
            started = time.monotonic()
            try:
                sample = await self.sample()
            except Exception as exc:  # the page shows the gap; the next sample may work
                log.warning("dashboard sample failed", error=repr(exc))
                sample = {"t": time.time(), "ok": False, "error": f"sample failed: {type(exc).__name__}"}
            for queue in list(self._subscribers):
                if queue.full():
                    with contextlib.suppress(asyncio.QueueEmpty):
                        queue.get_nowait()  # a slow page skips a sample rather than holding them all
                queue.put_nowait(sample)
            await asyncio.sleep(max(self.settings.dashboard_refresh_s - (time.monotonic() - started), 0.05))

    async def sample(self) -> dict[str, Any]:
        """One sample: what every panel of the page shows, and a point of its charts' history."""
        now = time.time()
        fleet: FleetReader = self.app["fleet"]
        snap = await fleet.read()
        out: dict[str, Any] = {
            "t": now,
            "ok": snap.ok,
            "error": snap.error,
            "queues": [
                {
                    "label": q.label,
                    "depth": q.depth,
                    "deferred": q.deferred,
                    "oldest_age_s": q.oldest_age_s,
                    "workers": q.workers,
                }
                for q in snap.queues
            ],
            "credits_reserved": snap.credits_reserved_nanos / NANOS,
        }
        if snap.ok:
            async with asyncio.timeout(self.settings.metrics_read_timeout_s * 2):
                out["breakers"] = await self._breakers(snap)
                out.update(await self._usage(now))
                out["recent"] = await self._recent()
                out["queued"] = await self._queued()
                out["lanes"] = await lanes_report(self.redis, self.app["catalog"], self.settings)
        self.latest = out
        self.history.append(_point(out))
        return out

    async def _breakers(self, snap: FleetSnapshot) -> list[dict[str, Any]]:
        if not snap.breakers:
            return []
        s = self.settings
        rows = await BreakerBoard(self.redis).list(
            window_s=s.breaker_window_s, bucket_s=s.breaker_bucket_s, names=snap.breakers
        )
        for row in rows:  # the fleet reader's state: a hold that ran out shows as closed
            row["state"] = snap.breakers.get(row["deployment"], row["state"])
        return rows

    async def _usage(self, now: float) -> dict[str, Any]:
        day = int(now // 86400)
        raw = await self.redis.hgetall(usage_key(day))
        jobs = failed = 0
        by_model: dict[str, list[int]] = {}
        by_tenant: dict[str, list[int]] = {}
        for k, v in raw.items():
            tenant, _, rest = k.decode().partition("|")
            model, _, fld = rest.rpartition("|")
            n = int(v)
            if fld == "jobs":
                jobs += n
                by_model.setdefault(model, [0, 0])[0] += n
                by_tenant.setdefault(tenant, [0, 0])[0] += n
            elif fld == "failed":
                failed += n
            elif fld == "cost":
                by_model.setdefault(model, [0, 0])[1] += n
                by_tenant.setdefault(tenant, [0, 0])[1] += n
        throughput = success = None
        last = self._last
        if last is not None and last[1] == day and jobs >= last[2] and now > last[0]:
            ended = jobs - last[2]
            throughput = ended / (now - last[0])
            success = 1 - (failed - last[3]) / ended if ended else None
        self._last = (now, day, jobs, failed)
        return {
            "throughput": throughput,
            "success_rate": success,
            "jobs_today": jobs,
            "failed_today": failed,
            "cost_by_model": _ranked(by_model, "model"),
            "cost_by_tenant": _ranked(by_tenant, "tenant"),
        }

    async def _recent(self) -> list[dict[str, Any]]:
        raw = await self.redis.lrange(RECENT_KEY, 0, RECENT_SHOWN - 1)
        out = []
        for line in raw:
            with contextlib.suppress(orjson.JSONDecodeError):
                out.append(orjson.loads(line))
        return out

    async def _queued(self) -> list[dict[str, Any]]:
        """The front of each queue (due first), with each job's status from its record."""
        s = self.settings
        fronts: list[tuple[str, str]] = []
        for label, name in (("interactive", s.interactive_queue_name), ("bulk", s.queue_name)):
            # the next jobs to be claimed: the heads of the first tenants' ready queues, band by band
            for band in PRIORITIES:
                for tenant in await self.redis.zrange(active_tenants_key(name, band), 0, QUEUED_SHOWN - 1):
                    ready = ready_key(name, band, tenant.decode())
                    for job_id in await self.redis.zrange(ready, 0, QUEUED_SHOWN - 1):
                        fronts.append((label, job_id.decode()))
            fronts = fronts[: QUEUED_SHOWN * 2]
        if not fronts:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for _, job_id in fronts:
                pipe.hmget(record_key(job_id), "status", "tenant", "model_requested", "created_at")
            rows = await pipe.execute()
        out = []
        for (label, job_id), (status, tenant, model, created) in zip(fronts, rows, strict=True):
            if status is None:
                continue
            out.append(
                {
                    "id": job_id.partition("/")[2] or job_id,  # the queue holds <tenant>/<job id>
                    "queue": label,
                    "status": status.decode(),
                    "tenant": tenant.decode() if tenant else "default",
                    "model": model.decode() if model else None,
                    "created_at": float(created) if created else None,
                }
            )
        return out


def _ranked(cells: dict[str, list[int]], name: str) -> list[dict[str, Any]]:
    rows = [{name: k, "jobs": v[0], "cost": v[1] / NANOS} for k, v in cells.items()]
    return sorted(rows, key=lambda r: (-r["cost"], -r["jobs"], r[name]))[:30]


def _point(sample: dict[str, Any]) -> dict[str, Any]:
    """What the charts keep of a sample."""
    return {
        "t": sample["t"],
        "depth": {q["label"]: q["depth"] for q in sample.get("queues") or ()},
        "age": {q["label"]: q["oldest_age_s"] or 0.0 for q in sample.get("queues") or ()},
        "throughput": sample.get("throughput"),
        "success_rate": sample.get("success_rate"),
    }
