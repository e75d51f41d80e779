"""create_app: the simulator's aiohttp application and its routes.

Chat routes accept any path prefix (``/v1``, ``/api/v1``, ``/openai/v1``, none) because
OpenAI-compatible vendors mount the same API under different prefixes. Each chat route pairs a
path suffix with a ``WireFormat``: ``chat/completions`` (OpenAI), ``messages`` (Anthropic, at
``/v1/messages``) and ``models/{model}:generateContent`` / ``:streamGenerateContent`` (Gemini, at
``/v1beta/models/...``).
"""

from __future__ import annotations

from aiohttp import web

from llm_router.simulator import (
    anthropic_batches,
    anthropic_format,
    gemini_batches,
    gemini_format,
    openai_format,
)
from llm_router.simulator.batches import LANES, add_lane_routes
from llm_router.simulator.capacity import add_capacity_routes, limited
from llm_router.simulator.config import SimConfig
from llm_router.simulator.control import add_control_routes
from llm_router.simulator.pipeline import chat_handler
from llm_router.simulator.state import STATE, SimState
from llm_router.simulator.wire import WireFormat

_ANY_PREFIX = "/{prefix:(?:.*/)?}"
_CHAT_ROUTES: dict[str, WireFormat] = {
    "chat/completions": openai_format.OPENAI,
    "messages": anthropic_format.ANTHROPIC,
    "models/{model:[^/]+?}:generateContent": gemini_format.GEMINI,
    "models/{model:[^/]+?}:streamGenerateContent": gemini_format.GEMINI,
}
# Base64 images make legitimate chat bodies large; aiohttp's default cap is 1 MiB.
_MAX_BODY = 64 * 1024 * 1024


def create_app(config: SimConfig | None = None) -> web.Application:
    """A fresh simulator app (its own rules, counters and random sequence)."""
    app = web.Application(client_max_size=_MAX_BODY)
    app[STATE] = SimState.from_config(config or SimConfig())
    add_control_routes(app.router)
    add_capacity_routes(app)
    add_lane_routes(app, (config or SimConfig()).lanes)  # Files + Batch APIs, the flex tier
    anthropic_batches.add_routes(app, app[LANES])  # Message Batches
    gemini_batches.add_routes(app, app[LANES])  # batch mode
    for suffix, fmt in _CHAT_ROUTES.items():
        app.router.add_post(_ANY_PREFIX + suffix, limited(chat_handler(fmt), fmt))
    app.router.add_get(_ANY_PREFIX + "models", openai_format.list_models)
    app.router.add_get(_ANY_PREFIX + "models/{model:.+}", openai_format.retrieve_model)
    app.on_shutdown.append(_release_held_requests)
    return app


async def _release_held_requests(app: web.Application) -> None:
    app[STATE].stopping.set()
