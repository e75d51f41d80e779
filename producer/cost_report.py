"""What a file of jobs would cost, without enqueueing it (``llm-router submit --estimate``)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from config.cost import nanos_to_usd
from llm_router.errors import RouterError
from producer.validation import Validator


@dataclass(slots=True)
class ModelEstimate:
    """One model's jobs: how many, their estimated prompt tokens, and the cost range in nano-USD:
    ``low`` = the prompts alone at the model's first deployment, ``high`` = the reservations
    (prompt + max output at the dearest deployment of each job's fallback chain)."""

    model: str
    jobs: int = 0
    prompt_tokens: int = 0
    low_nanos: int = 0
    high_nanos: int = 0
    # per lane its first deployment offers (now, flex, batch): prompt + max output at the lane's price
    lane_nanos: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "jobs": self.jobs,
            "prompt_tokens": self.prompt_tokens,
            "cost_low": nanos_to_usd(self.low_nanos),
            "cost_high": nanos_to_usd(self.high_nanos),
            "cost_by_lane": {lane: nanos_to_usd(n) for lane, n in self.lane_nanos.items()},
        }


@dataclass(slots=True)
class Estimate:
    models: dict[str, ModelEstimate] = field(default_factory=dict)
    refused: list[tuple[int, RouterError]] = field(default_factory=list)

    @property
    def total(self) -> ModelEstimate:
        total = ModelEstimate("total")
        for m in self.models.values():
            total.jobs += m.jobs
            total.prompt_tokens += m.prompt_tokens
            total.low_nanos += m.low_nanos
            total.high_nanos += m.high_nanos
            for lane, nanos in m.lane_nanos.items():
                total.lane_nanos[lane] = total.lane_nanos.get(lane, 0) + nanos
        return total


def estimate(validator: Validator, lines: Iterable[tuple[int, bytes | str | dict[str, Any]]]) -> Estimate:
    """Validate each numbered line as a job and add it to its model's estimate; refused lines are
    listed with their error (they would be refused at submit too)."""
    out = Estimate()
    now = time.time()
    for number, line in lines:
        try:
            job = validator.prepare(line, now=now, allow_files=True, new_id=f"estimate-{number}")
        except RouterError as exc:
            out.refused.append((number, exc))
            continue
        model = job.route[0]
        row = out.models.get(model)
        if row is None:
            row = out.models[model] = ModelEstimate(model)
        row.jobs += 1
        row.prompt_tokens += job.prompt_tokens
        row.low_nanos += validator.costs.prompt_only(model, job.prompt_tokens)
        row.high_nanos += job.reserve_nanos
        deps = validator.catalog.deployments(model)
        if deps:
            dep = deps[0]
            out_tokens = job.est_tokens - job.prompt_tokens or dep.max_output
            for lane in ("now", "flex", "batch"):
                if lane == "now" or lane in dep.lane_prices:
                    cost = dep.price_for(lane).cost_nanos(job.prompt_tokens, out_tokens)
                    row.lane_nanos[lane] = row.lane_nanos.get(lane, 0) + cost
    return out
