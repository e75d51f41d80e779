"""SimConfig: how one simulator instance behaves, loadable from a YAML profile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, field_validator

from llm_router.simulator.batches import LaneSimConfig
from llm_router.simulator.faults import FaultRule


class SimConfig(BaseModel):
    """Latency, initial fault rules, the model allow-list and the random seed of a simulator.

    A YAML profile has the same fields, e.g.::

        latency_ms: [20, 80]        # uniform per request; a single number means fixed
        models: [gpt-4o-mini, gpt-4o]
        seed: 7
        rules:
          - {credential: sk-flaky, kind: status, status: 429, retry_after: 1, probability: 0.3}
    """

    model_config = ConfigDict(extra="forbid")

    latency_ms: tuple[float, float] = (0, 0)
    rules: list[FaultRule] = []
    models: list[str] | None = None
    seed: int = 0
    # the flex tier and the Files/Batch APIs (``batches.LaneSimConfig``); None: their defaults
    lanes: LaneSimConfig | None = None

    @field_validator("latency_ms", mode="before")
    @classmethod
    def _fixed_latency(cls, value: Any) -> Any:
        # A bare number in a profile is the common case "always this slow".
        if isinstance(value, int | float) and not isinstance(value, bool):
            return (value, value)
        return value

    @field_validator("latency_ms")
    @classmethod
    def _ordered_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        lo, hi = value
        if lo < 0 or hi < lo:
            raise ValueError("latency_ms must be (min, max) with 0 <= min <= max")
        return value

    @classmethod
    def from_yaml(cls, path: str | Path) -> SimConfig:
        """Load a profile; an empty file is the default configuration."""
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        return cls.model_validate(data or {})
