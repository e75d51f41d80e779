"""The HTTP API's aiohttp application: routes, middlewares and what handlers share.

Keys on the application, for every module that adds routes (the batch and files API included):

* ``app["settings"]``: ``config.settings.Settings``
* ``app["catalog"]``: ``config.catalog.Catalog``
* ``app["redis"]``: the process's ``redis.asyncio.Redis`` client (one pool for everything)
* ``app["producer"]``: a ``producer.producer.Producer`` on that client
* ``app["ended"]``: ``producer.http.ended.EndedWaiter``, job-end notifications for waiters
* ``app["api_keys"]``: ``producer.http.auth.ApiKeys`` (``None`` when auth is disabled)

Middlewares, outermost first: errors (every failure is the JSON error object, unknown routes 404;
the Gemini front's routes answer in Google's shape, ``gemini_api.gemini_errors``), body limit (a
declared body over the limit answers 413 unread), authentication (sets ``request["tenant"]`` on
every ``/v1`` and ``/v1beta`` request; handlers read the tenant only from there).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from redis.asyncio import Redis

from config.catalog import Catalog
from config.settings import Settings
from llm_router.errors import InvalidRequest, PayloadTooLarge, ResourceNotFound, RouterError
from llm_router.redis_client import redis_client
from producer.http import batches, gemini_api, jobs_api, openai_api, openapi, webhooks_api
from producer.http.auth import ApiKeys
from producer.http.ended import EndedWaiter
from producer.http.errors import JSON, error_response
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
        return await handler(request)
    except RouterError as exc:
        return error_response(exc)
    except web.HTTPNotFound:
        return error_response(ResourceNotFound(f"no route {request.method} {request.path}"))
    except web.HTTPMethodNotAllowed as exc:
        return _method_not_allowed(request, exc)
    except web.HTTPRequestEntityTooLarge:
        response = error_response(PayloadTooLarge("the body is over the server's limit"))
        response.force_close()
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(InvalidRequest(exc.reason, code="invalid_request"))
    except (ConnectionResetError, asyncio.CancelledError):
        raise  # the client went away mid-answer: nothing to answer, nothing to log
    except Exception:
        log.exception("unhandled error", method=request.method, path=request.path)
        return error_response(RouterError("internal server error"))


def body_limit(settings: Settings, path: str) -> int:
    """The largest body a route accepts: a batch file upload, or a JSON request."""
    if path == FILES_PATH:
        return max(settings.files_max_bytes + MULTIPART_SLACK, settings.server_max_body_bytes)
    return settings.server_max_body_bytes


@web.middleware
async def limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    limit = body_limit(request.app["settings"], request.path)
    if request.content_length is not None and request.content_length > limit:
        response = error_response(
            PayloadTooLarge(f"the body is {request.content_length} bytes; the limit is {limit} bytes")
        )
        response.force_close()  # the unread body must not be parsed as the next request
        return response
    return await handler(request)


def _api_key(request: web.Request) -> str | None:
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
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith(("/v1/", "/v1beta/")) or request.path in ("/v1", "/v1beta"):
        keys: ApiKeys | None = request.app["api_keys"]
        request["tenant"] = DEFAULT_TENANT if keys is None else await keys.tenant_for(_api_key(request))
    return await handler(request)


async def health(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type=JSON)


def build_app(settings: Settings, catalog: Catalog, *, redis: Redis | None = None) -> web.Application:
    """The application; ``redis`` is the caller's client (closed by the caller), else one of its own."""
    app = web.Application(
        middlewares=[error_middleware, gemini_api.gemini_errors, limit_middleware, auth_middleware],
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
    app["ended"] = EndedWaiter(client, producer.store)
    app["api_keys"] = None if settings.auth_disabled else ApiKeys(client, keys_file=settings.api_keys_file)

    async def startup(app: web.Application) -> None:
        await app["ended"].start()

    async def cleanup(app: web.Application) -> None:
        await app["ended"].close()
        if own_redis:
            await client.aclose()

    app.on_startup.append(startup)
    app.on_cleanup.append(cleanup)
    app.router.add_get("/healthz", health)
    app.router.add_get("/openapi.json", openapi.serve)
    app.router.add_routes(jobs_api.routes)
    app.router.add_routes(openai_api.routes)
    app.router.add_routes(gemini_api.routes)
    batches.setup(app)
    webhooks_api.setup(app)
    return app


def run_server(settings: Settings, host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM, on uvloop."""
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
    log.info("serving", url=f"http://{host}:{port}", auth=not settings.auth_disabled)
    web.run_app(
        app,
        host=host,
        port=port,
        loop=uvloop.new_event_loop(),
        access_log=None,
        print=None,
        shutdown_timeout=10,
    )
