"""The control API under ``/_sim``: inject and list faults, read call counters, reset.

No auth: it is a test fixture's remote control, bound to loopback by default.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError

from llm_router.simulator.faults import FaultRule
from llm_router.simulator.state import STATE

_JSON = "application/json"


class FaultUpdate(BaseModel):
    """Body of ``POST /_sim/faults``."""

    model_config = ConfigDict(extra="forbid")

    rules: list[FaultRule]
    replace: bool = False


def add_control_routes(router: web.UrlDispatcher) -> None:
    """Mount the ``/_sim`` endpoints."""
    router.add_post("/_sim/faults", add_faults)
    router.add_get("/_sim/faults", list_faults)
    router.add_delete("/_sim/faults", clear_faults)
    router.add_get("/_sim/calls", list_calls)
    router.add_post("/_sim/reset", reset)
    router.add_get("/_sim/health", health)


async def add_faults(request: web.Request) -> web.Response:
    """Add (or with ``replace``, swap in) rules whose time windows start now."""
    try:
        update = FaultUpdate.model_validate_json(await request.read())
    except ValidationError as exc:
        return _json({"error": {"message": _describe(exc), "type": "invalid_request"}}, status=400)
    faults = request.app[STATE].faults
    faults.add(update.rules, replace=update.replace)
    return _json({"rules": faults.describe()})


async def list_faults(request: web.Request) -> web.Response:
    return _json({"rules": request.app[STATE].faults.describe()})


async def clear_faults(request: web.Request) -> web.Response:
    request.app[STATE].faults.clear()
    return _json({"rules": []})


async def list_calls(request: web.Request) -> web.Response:
    return _json(request.app[STATE].calls.snapshot())


async def reset(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    return _json({"ok": True})


async def health(request: web.Request) -> web.Response:
    return _json({"ok": True})


def _describe(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in exc.errors()
    )


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type=_JSON)
