"""One pass over a route, offline: the walk's order and its decisions, with calls and admissions
answered by the test (no network, no Redis)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from config.catalog import Catalog, Deployment
from config.settings import DEFAULT_CATALOG, Settings
from llm_router.circuit_breaker import Admission, AdmissionState, Policy, ReportKind
from llm_router.contract import JobStatus
from llm_router.errors import (
    ContextLengthExceeded,
    NoDeployment,
    Overloaded,
    RouterError,
    UpstreamInvalidRequest,
)
from worker.breaker import RetryBudget
from worker.providers import Completion
from worker.route_walk import PassResult, RouteWalk

REQUEST = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def answer(text: str = "ok") -> Completion:
    response = {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "x",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
    return Completion(response, prompt_tokens=3, completion_tokens=1)


class Upstream:
    """Answers each deployment by a rule: an error to raise, or an answer (the default)."""

    def __init__(self, errors: dict[str, RouterError] | None = None) -> None:
        self.errors = errors or {}
        self.calls: list[str] = []

    async def __call__(self, dep: Deployment, request: dict[str, Any], deadline_at: float) -> Completion:
        self.calls.append(dep.id)
        error = self.errors.get(dep.id)
        if error is not None:
            raise type(error)(error.message, retry_after=error.retry_after)
        return answer()


def walk(
    catalog: Catalog,
    route: list[str],
    upstream: Upstream,
    *,
    admissions: dict[str, Admission] | None = None,
    later: Callable[[str], Admission] | None = None,
    retries: int = 0,
) -> RouteWalk:
    settings = Settings(_env_file=None, same_deployment_retries=retries, retry_backoff_s=0.01)
    policies = {d.id: Policy.for_deployment(d, settings) for m in route for d in catalog.deployments(m)}

    async def admit(dep: Deployment, est: int) -> Admission:
        return later(dep.id) if later else Admission(AdmissionState.OK)

    async def no_images(request: dict[str, Any]) -> dict[str, Any]:
        return request

    return RouteWalk(
        job_id="j",
        request=dict(REQUEST, model=route[0]),
        request_json=orjson.dumps(REQUEST),
        route=route,
        attempts=[],
        deadline_at=time.time() + 60,
        admissions=admissions or {},
        est_tokens=10,
        clock_offset_s=0.0,
        catalog=catalog,
        settings=settings,
        policies=policies,
        budget=RetryBudget(1.0),
        call=upstream,
        admit=admit,
        inflight={},
        scrub=lambda exc: None,
        inline_images=no_images,
    )


def calls_of(result: PassResult) -> list[tuple[str, str, str | None]]:
    return [(a["provider"], a["outcome"], a["error_code"]) for a in result.fields["attempts"]]


async def test_the_first_admitted_deployment_answers_without_fallback(sim_catalog: Catalog):
    upstream = Upstream()
    result = await walk(sim_catalog, ["gpt-4o"], upstream).run()
    assert upstream.calls == ["openai/gpt-4o"]
    assert result.fields["status"] == JobStatus.SUCCEEDED and result.fields["fallback_used"] is False
    assert [r.kind for r in result.reports] == [ReportKind.SUCCESS]


async def test_a_failing_deployment_falls_back_in_catalog_order_then_to_the_next_model(sim_catalog):
    down = {d: Overloaded("down") for d in ("openai/gpt-4o", "aisa/gpt-4o", "openrouter/openai/gpt-4o")}
    upstream = Upstream(down)
    result = await walk(sim_catalog, ["gpt-4o", "claude-sonnet-4-5"], upstream).run()
    assert upstream.calls == [*down, "anthropic/claude-sonnet-4-5"]
    assert result.fields["model"] == "claude-sonnet-4-5" and result.fields["fallback_used"] is True
    assert [r.kind for r in result.reports] == [ReportKind.FAILURE] * 3 + [ReportKind.SUCCESS]
    assert calls_of(result)[-1] == ("anthropic", "success", None)


async def test_context_length_skips_the_models_whose_window_is_no_larger(sim_catalog: Catalog):
    # gpt-4o (128k) refuses the prompt: gpt-4o-mini (128k) is not worth a call, gpt-4.1 (1M) is
    upstream = Upstream({"openai/gpt-4o": ContextLengthExceeded("too long")})
    result = await walk(sim_catalog, ["gpt-4o", "gpt-4o-mini", "gpt-4.1"], upstream).run()
    assert upstream.calls == ["openai/gpt-4o", "openai/gpt-4.1"]
    assert result.fields["model"] == "gpt-4.1"


async def test_a_callers_error_ends_the_pass_without_fallback(sim_catalog: Catalog):
    upstream = Upstream({"openai/gpt-4o": UpstreamInvalidRequest("bad field")})
    result = await walk(sim_catalog, ["gpt-4o", "gpt-4.1"], upstream).run()
    assert upstream.calls == ["openai/gpt-4o"]
    assert result.fields["status"] == JobStatus.FAILED and not result.retryable
    assert [r.kind for r in result.reports] == [ReportKind.NEUTRAL]


async def test_open_breakers_are_skipped_and_the_pass_says_when_to_come_back(sim_catalog: Catalog):
    now_ms = int(time.time() * 1000)
    admissions = {"openai/gpt-4o": Admission(AdmissionState.OPEN, now_ms + 5_000)}

    def later(dep: str) -> Admission:
        return Admission(AdmissionState.LIMITED, now_ms + 2_000)

    upstream = Upstream()
    result = await walk(sim_catalog, ["gpt-4o"], upstream, admissions=admissions, later=later).run()
    assert upstream.calls == []
    assert result.fields["status"] == JobStatus.FAILED and result.retryable
    assert result.available_at == pytest.approx((now_ms + 2_000) / 1000)  # the soonest of them
    assert [a["error_code"] for a in result.fields["attempts"]] == ["breaker_open"] + ["rate_limited"] * 2


async def test_a_disabled_deployment_is_not_waited_for(sim_catalog: Catalog):
    def later(dep: str) -> Admission:
        return Admission(AdmissionState.DISABLED, int(time.time() * 1000) + 300_000)

    admissions = {"openai/gpt-4o": later("openai/gpt-4o")}
    result = await walk(sim_catalog, ["gpt-4o"], Upstream(), admissions=admissions, later=later).run()
    assert result.fields["status"] == JobStatus.FAILED
    assert result.fields["error"]["code"] == "deployment_disabled"
    assert not result.retryable and result.available_at is None  # fails now instead of deferring


async def test_a_transient_error_is_retried_on_the_same_deployment_when_cheap(sim_catalog: Catalog):
    class Once(Upstream):
        async def __call__(self, dep: Deployment, request: dict[str, Any], deadline_at: float) -> Completion:
            self.calls.append(dep.id)
            if len(self.calls) == 1:
                raise Overloaded("blip", retry_after=0.01)
            return answer()

    upstream = Once()
    result = await walk(sim_catalog, ["gpt-4o"], upstream, retries=1).run()
    assert upstream.calls == ["openai/gpt-4o", "openai/gpt-4o"]
    assert result.fields["status"] == JobStatus.SUCCEEDED
    assert [r.kind for r in result.reports] == [ReportKind.FAILURE, ReportKind.SUCCESS]


async def test_a_route_with_no_enabled_deployment_says_so(sim_catalog: Catalog):
    empty = Catalog.from_path(DEFAULT_CATALOG, env={}, upstream="http://127.0.0.1:9")
    with pytest.raises(NoDeployment):
        await walk(empty, ["gpt-4o"], Upstream()).run()
