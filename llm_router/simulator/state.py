"""The mutable state one simulator app carries: config, fault rules, counters, shutdown flag."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web

from llm_router.simulator.calls import CallLog
from llm_router.simulator.config import SimConfig
from llm_router.simulator.faults import FaultBook
from llm_router.simulator.prompt_cache import PromptCache


@dataclass(slots=True)
class SimState:
    """Everything handlers share, stored on the app under ``STATE`` (no module globals)."""

    config: SimConfig
    faults: FaultBook
    calls: CallLog = field(default_factory=CallLog)
    prompt_cache: PromptCache = field(default_factory=PromptCache)
    models: frozenset[str] | None = None
    # Set when the app shuts down so requests held by a `hang` fault let go at once.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def from_config(cls, config: SimConfig) -> SimState:
        faults = FaultBook(config.rules, latency_ms=config.latency_ms, seed=config.seed)
        models = frozenset(config.models) if config.models is not None else None
        return cls(config=config, faults=faults, models=models)

    def reset(self) -> None:
        """Forget every rule, counter and cached prompt (the config's own rules are not re-added)."""
        self.faults.clear()
        self.calls.clear()
        self.prompt_cache.clear()


STATE = web.AppKey("llm_router_simulator_state", SimState)
