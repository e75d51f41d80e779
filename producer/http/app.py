"""The HTTP API's aiohttp application: routes, middlewares and what handlers share.

Keys on the application, for every module that adds routes (the batch and files API included):

* ``app["settings"]``: ``config.settings.Settings``
* ``app["catalog"]``: ``config.catalog.Catalog``
* ``app["redis"]``: the process's ``redis.asyncio.Redis`` client (one pool for everything)
* ``app["producer"]``: a ``producer.producer.Producer`` on that client
* ``app["ended"]``: ``producer.http.ended.EndedWaiter``, job-end notifications for waiters
* ``app["api_keys"]``: ``producer.http.auth.ApiKeys`` (``None`` when auth is disabled)
* ``app["metrics"]``, ``app["fleet"]``, ``app["tracing"]``: ``producer.http.observability``
* ``app["refused"]``: why the server stopped serving (an evicting Redis found after start), raised by
  ``run_server``
* ``app["redis_watch"]``: ``producer.http.redis_watch.RedisWatch``, whether Redis answers (waiters
  give up with 503 ``redis_unavailable`` when it does not)
* ``app[limits.LIMITS]``: ``producer.http.limits.TenantLimits``, per-tenant requests and large bodies

Middlewares, outermost first: observability (counts, times and traces every request), errors
(every failure is the JSON error object, unknown routes 404; once a request has a job, every answer
carries its id), the fronts' error shapes (the Gemini front's routes answer in Google's shape,
``gemini_api.gemini_errors``, the Messages front's in Anthropic's, ``messages_api.anthropic_errors``),
and the gate: body limit (a declared body over the limit answers 413 unread), authentication (sets
``request["tenant"]`` on every ``/v1`` and ``/v1beta`` request; handlers read the tenant only from
there), tenant limits (requests in progress), and Redis errors (a Redis that fails or does not answer
within ``LLM_ROUTER_REDIS_TIMEOUT_S`` is 503 ``redis_unavailable`` with ``Retry-After``, in each
front's shape). aiohttp's own refusals of requests it cannot parse are in our shape too
(``protocol``).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from config.catalog import Catalog
from config.settings import Settings
from llm_router.errors import (
    InvalidRequest,
    PayloadTooLarge,
    RedisUnusable,
    RequestTimeout,
    ResourceNotFound,
    RouterError,
)
from llm_router.gc_tuning import tune_gc
from llm_router.redis_checks import check_eviction_policy
from llm_router.redis_client import redis_client
from producer.http import (
    batches,
    dashboard,
    gemini_api,
    jobs_api,
    limits,
    messages_api,
    observability,
    openai_api,
    openapi,
    responses_api,
    webhooks_api,
)
from producer.http.auth import ApiKeys
from producer.http.ended import EndedWaiter, is_outage, unavailable
from producer.http.errors import error_response, with_job_id
from producer.http.interactive import GONE, GoneWatch
from producer.http.keep_fresh import KeepFresh
from producer.http.protocol import run as serve
from producer.http.redis_watch import RedisWatch
from producer.producer import Producer

log = structlog.get_logger("producer.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
DEFAULT_TENANT = "default"
FILES_PATH = "/v1/files"
MULTIPART_SLACK = 1024 * 1024  # a file upload's form fields and boundaries around the file itself


def _method_not_allowed(request: web.Request, exc: web.HTTPMethodNotAllowed) -> web.Response:
    error = RouterError(f"{request.method} is not allowed on {request.path}", code="method_not_allowed")
    response = error_response(error)
    response.headers["Allow"] = ",".join(sorted(exc.allowed_methods))
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return with_job_id(request, await handler(request))
    except RouterError as exc:
        response = error_response(exc)
        if isinstance(exc, PayloadTooLarge | RequestTimeout):
            response.force_close()  # the body was not read to its end: it must not be parsed next
    except web.HTTPNotFound:
        response = error_response(ResourceNotFound(f"no route {request.method} {request.path}"))
    except web.HTTPMethodNotAllowed as exc:
        response = _method_not_allowed(request, exc)
    except web.HTTPRequestEntityTooLarge:
        response = error_response(PayloadTooLarge("the body is over the server's limit"))
        response.force_close()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error_response(InvalidRequest(exc.reason, code="invalid_request"))
    except (ConnectionResetError, asyncio.CancelledError):
        raise  # the client went away mid-answer: nothing to answer, nothing to log
    except RedisError as exc:  # raised outside the Redis middleware (observability, say)
        if not is_outage(exc):
            log.exception("unhandled error", method=request.method, path=request.path)
            response = error_response(RouterError("internal server error"))
        else:
            response = error_response(unavailable(exc, request.app.get("redis_watch")))
    except Exception:
        log.exception("unhandled error", method=request.method, path=request.path)
        response = error_response(RouterError("internal server error"))
    return with_job_id(request, response)


def body_limit(settings: Settings, path: str) -> int:
    """The largest body a route accepts: a batch file upload, or a JSON request."""
    if path == FILES_PATH:
        return max(settings.files_max_bytes + MULTIPART_SLACK, settings.server_max_body_bytes)
    return settings.server_max_body_bytes


def _api_key(request: web.Request) -> str | None:
    """The key the request sends (any characters: an unknown key is refused by the lookup)."""
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if key := request.headers.get("x-api-key"):
        return key
    if gemini_api.is_gemini_request(request):  # Google's clients send their key these ways
        return request.headers.get("x-goog-api-key") or request.query.get("key")
    return None


@web.middleware
async def front_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors on the Gemini front's routes in Google's shape, on the Messages path in Anthropic's
    (one layer for both: a layer is a coroutine in and out of every request, ~20 µs cold)."""
    if gemini_api.is_gemini_request(request):
        return await gemini_api.gemini_errors(request, handler)
    if messages_api.is_messages_path(request.path):
        return await messages_api.anthropic_errors(request, handler)
    return await handler(request)


@web.middleware
async def gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """What every request passes before its handler, in order: the body limit (a declared body over
    it answers 413 unread), authentication (``request["tenant"]`` on every ``/v1`` and ``/v1beta``
    request), the tenant's requests in progress (``limits``). Redis away, silent past
    ``LLM_ROUTER_REDIS_TIMEOUT_S`` or refusing writes, here or in the handler, is 503
    ``redis_unavailable`` (with ``Retry-After``), raised as our error so each front's error
    middleware answers it in its shape (any other Redis error is a bug: 500, logged). One layer, not
    four: each cost every request a coroutine in and out."""
    try:
        limit = body_limit(request.app["settings"], request.path)
        if request.content_length is not None and request.content_length > limit:
            response = error_response(
                PayloadTooLarge(f"the body is {request.content_length} bytes; the limit is {limit} bytes")
            )
            response.force_close()  # the unread body must not be parsed as the next request
            return response
        path = request.path
        if not (path.startswith(("/v1/", "/v1beta/")) or path in ("/v1", "/v1beta")):
            return await handler(request)
        keys: ApiKeys | None = request.app["api_keys"]
        tenant = DEFAULT_TENANT if keys is None else await keys.tenant_for(_api_key(request))
        request["tenant"] = tenant
        async with request.app[limits.LIMITS].request(tenant):
            return await handler(request)
    except RedisError as exc:
        if not is_outage(exc):
            raise
        raise unavailable(exc, request.app.get("redis_watch")) from None


def build_app(settings: Settings, catalog: Catalog, *, redis: Redis | None = None) -> web.Application:
    """The application; ``redis`` is the caller's client (closed by the caller), else one of its own."""
    app = web.Application(
        middlewares=[
            observability.middleware,
            error_middleware,
            front_errors,
            gate,
        ],
        # aiohttp's own cap for read()/post(): the largest route's; JSON routes cap lower themselves
        client_max_size=body_limit(settings, FILES_PATH),
    )
    own_redis = redis is None
    client = redis or redis_client(settings)
    producer = Producer(client, catalog, settings)
    app["settings"] = settings
    app["catalog"] = catalog
    app["redis"] = client
    app["producer"] = producer
    app["redis_watch"] = watch = RedisWatch(client, timeout_s=settings.redis_timeout_s)
    app["ended"] = EndedWaiter(client, producer.store, watch=watch)
    app[GONE] = GoneWatch()
    app[limits.LIMITS] = limits.TenantLimits(settings, producer.policies)
    app["api_keys"] = (
        None
        if settings.auth_disabled
        else ApiKeys(client, keys_file=settings.api_keys_file, admin_tenants=settings.admin_tenant_set)
    )

    later: list[asyncio.Task[None]] = []
    fresh = KeepFresh()
    app["refused"] = []  # why the server refused to go on serving (see _check_when_reachable)

    async def startup(app: web.Application) -> None:
        # an evicting Redis loses jobs silently: refuse to serve on one (RedisUnusable ends run_app)
        try:
            await check_eviction_policy(client, accept_eviction=settings.accept_eviction)
        except (RedisError, OSError) as exc:
            # Redis away at start: serve (not ready) and check once it answers
            log.warning(
                "Redis unreachable at start; its eviction policy is checked when it answers", error=str(exc)
            )
            later.append(asyncio.create_task(_check_when_reachable(app, client, settings)))
        watch.start()
        await app["ended"].start()
        # what every interactive request reads before its submit, read ahead of it (``keep_fresh``)
        fresh.add("liveness", producer.liveness.fresh_s / 2, producer.liveness.refresh)
        fresh.add("policies", producer.policies.cache_s / 2, producer.policies.refresh)
        if app["api_keys"] is not None:
            fresh.add("api-keys", app["api_keys"].cache_ttl_s / 2, app["api_keys"].refresh)

    async def cleanup(app: web.Application) -> None:
        for task in later:
            task.cancel()
        await fresh.close()
        await app["ended"].close()
        await app[GONE].close()
        await watch.close()
        app[limits.LIMITS].close()
        if own_redis:
            await client.aclose()

    app.on_startup.append(startup)
    app.on_cleanup.append(cleanup)
    observability.setup(app)  # /metrics, /healthz, /readyz
    dashboard.setup(app)  # /dashboard
    app.router.add_get("/openapi.json", openapi.serve)
    app.router.add_routes(jobs_api.routes)
    app.router.add_routes(openai_api.routes)
    app.router.add_routes(gemini_api.routes)
    app.router.add_routes(responses_api.routes)
    app.router.add_routes(messages_api.routes)
    batches.setup(app)
    webhooks_api.setup(app)
    return app


async def _check_when_reachable(app: web.Application, client: Redis, settings: Settings) -> None:
    delay = 0.5
    while True:
        await asyncio.sleep(delay)
        try:
            await check_eviction_policy(client, accept_eviction=settings.accept_eviction)
            return
        except RedisUnusable as exc:
            # stop serving: run_server raises it once aiohttp has shut down
            log.error("refusing to serve", reason=exc.message)
            app["refused"].append(exc)
            signal.raise_signal(signal.SIGTERM)
            return
        except (RedisError, OSError):
            delay = min(delay * 2, 1.0)


def run_server(settings: Settings, host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM, on uvloop; raises ``RedisUnusable`` when Redis may lose jobs."""
    import uvloop

    catalog = Catalog.load(settings)
    if settings.auth_disabled:
        log.warning(
            "AUTHENTICATION IS DISABLED: every caller is tenant 'default' and needs no key; "
            "use this only on a machine you alone can reach",
            host=host,
            port=port,
        )
    app = build_app(settings, catalog)
    tune_gc()  # start-up's objects out of every collection; a full one cost a request ~100 ms
    log.info("serving", url=f"http://{host}:{port}", auth=not settings.auth_disabled)
    serve(app, host, port, uvloop.new_event_loop(), shutdown_timeout=10)
    if app["refused"]:
        raise app["refused"][0]
