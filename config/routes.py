"""Routes: a name a job's ``model`` may give instead of a model, resolved to one model at enqueue.

A route lives in the catalog's ``routes:`` section and is one of four kinds:

* ``auto``: the cheapest model among ``models`` that has what the request needs (vision, tools,
  streaming, a context window for its estimated prompt plus its output, enough output tokens);
* ``fixed``: one model for a task type (``code`` → gpt-4.1, ``fast`` → gemini-2.5-flash, …);
* ``size``: by the estimated prompt size, the first rule whose ``max_prompt_tokens`` the prompt
  fits (a rule without a limit takes the rest): short prompts to a cheap model, long ones to a strong one;
* ``weighted``: a split for A/B tests, chosen by a hash of the job id, so a re-submitted job
  (same id) lands on the same side.

Resolution is pure (no I/O): the validator calls ``choose`` with what it knows of the job, then
checks capabilities and reserves credit for the model chosen; the job's fallback chain still applies.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SizeRule(_Strict):
    max_prompt_tokens: int | None = Field(default=None, gt=0, description="None: every larger prompt")
    model: str


class HedgeAfter(_Strict):
    after_ms: int = Field(ge=1, le=600_000)


class RouteSpec(_Strict):
    kind: Literal["auto", "fixed", "size", "weighted"]
    description: str = ""
    model: str | None = None  # fixed
    models: list[str] = []  # auto: the allowed set
    rules: list[SizeRule] = []  # size, in order
    split: dict[str, int] = {}  # weighted: model → weight
    fallbacks: list[str] | None = None  # replaces the chosen model's own fallbacks
    cache: bool | Literal["force"] | None = None  # the route's default for jobs that do not say
    cache_ttl_s: int | None = Field(default=None, gt=0)
    # the route's default for interactive jobs that do not say (`hedge` of the job contract)
    hedge: bool | HedgeAfter | None = None

    @model_validator(mode="after")
    def _shape(self) -> RouteSpec:
        if self.kind == "fixed" and not self.model:
            raise ValueError("a fixed route needs `model`")
        if self.kind == "auto" and not self.models:
            raise ValueError("an auto route needs `models` (the allowed set)")
        if self.kind == "size":
            if not self.rules:
                raise ValueError("a size route needs `rules`")
            if self.rules[-1].max_prompt_tokens is not None:
                raise ValueError(
                    "a size route's last rule must have no max_prompt_tokens (it takes the rest)"
                )
        if self.kind == "weighted" and (not self.split or any(w < 0 for w in self.split.values())):
            raise ValueError("a weighted route needs `split` with non-negative weights")
        if self.kind == "weighted" and sum(self.split.values()) <= 0:
            raise ValueError("a weighted route's weights must not all be 0")
        return self

    def models_named(self) -> list[str]:
        named = [self.model] if self.model else []
        return named + self.models + [r.model for r in self.rules] + list(self.split) + (self.fallbacks or [])


@dataclass(frozen=True, slots=True)
class Need:
    """What a request needs of a model, as the validator sees it."""

    prompt_tokens: int
    max_output: int | None  # the job's max_tokens / max_completion_tokens
    vision: bool
    tools: bool
    stream: bool


@dataclass(frozen=True, slots=True)
class Choice:
    model: str
    rule: str  # why: shown in the record as routed_by


class NoCapableModel(ValueError):
    """No model of the route can serve the request."""


# (model, need) → whether it can serve it; (model, need) → its estimated cost for the request
Capable = Callable[[str, Need], bool]
Cost = Callable[[str, Need], int]


def choose(name: str, spec: RouteSpec, need: Need, job_id: str, capable: Capable, cost: Cost) -> Choice:
    """The model a route gives for this request, and the rule that chose it."""
    if spec.kind == "fixed":
        assert spec.model is not None
        return Choice(spec.model, f"{name}: task route → {spec.model}")
    if spec.kind == "size":
        for rule in spec.rules:
            if rule.max_prompt_tokens is None or need.prompt_tokens <= rule.max_prompt_tokens:
                limit = "rest" if rule.max_prompt_tokens is None else f"≤ {rule.max_prompt_tokens}"
                return Choice(
                    rule.model, f"{name}: prompt ~{need.prompt_tokens} tokens ({limit}) → {rule.model}"
                )
    if spec.kind == "weighted":
        total = sum(spec.split.values())
        bucket = int.from_bytes(hashlib.blake2b(job_id.encode(), digest_size=8).digest(), "big") % total
        upto = 0
        for model, weight in spec.split.items():
            upto += weight
            if bucket < upto:
                shares = "/".join(str(w) for w in spec.split.values())
                return Choice(model, f"{name}: weighted {shares}, bucket {bucket} of {total} → {model}")
    # auto
    fit = [m for m in spec.models if capable(m, need)]
    if not fit:
        wants = [
            w for w, on in (("vision", need.vision), ("tools", need.tools), ("streaming", need.stream)) if on
        ]
        raise NoCapableModel(
            f"route '{name}' has no model for this request "
            f"(needs {', '.join(wants) or 'text'}, ~{need.prompt_tokens} prompt tokens)"
        )
    best = min(fit, key=lambda m: (cost(m, need), spec.models.index(m)))
    return Choice(best, f"{name}: cheapest of {len(fit)} capable → {best}")
