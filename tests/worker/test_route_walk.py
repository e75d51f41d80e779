"""One pass over a route, offline: the walk's order and its decisions, with calls and admissions
answered by the test (no network, no Redis)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from config.catalog import Catalog, Deployment
from config.settings import DEFAULT_CATALOG, Settings
from llm_router.circuit_breaker import Admission, AdmissionState, BreakerReport, Policy, ReportKind
from llm_router.contract import JobStatus
from llm_router.errors import (
    ContextLengthExceeded,
    NoDeployment,
    Overloaded,
    RouterError,
    UpstreamInvalidRequest,
)
from worker.breaker import RetryBudget
from worker.hedge import first_token
from worker.providers import Completion
from worker.room import Room
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
        self.sent: list[BreakerReport] = []  # reports that went with an admission on the way

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
    hedge_after_s: float | None = None,
    publisher: Any = None,
    wait_room: Any = None,
    wait_s: float = 2.0,
) -> RouteWalk:
    settings = Settings(
        _env_file=None, same_deployment_retries=retries, retry_backoff_s=0.01, concurrency_wait_s=wait_s
    )
    policies = {d.id: Policy.for_deployment(d, settings) for m in route for d in catalog.deployments(m)}

    async def admit(dep: Deployment, est: int, reports: list[BreakerReport]) -> Admission:
        upstream.sent.extend(reports)
        return later(dep.id) if later else Admission(AdmissionState.OK)

    async def no_images(request: dict[str, Any]) -> dict[str, Any]:
        return request

    return RouteWalk(
        job_id="j",
        request=dict(REQUEST, model=route[0], **({"stream": True} if publisher is not None else {})),
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
        hedge_after_s=hedge_after_s,
        stream=upstream if publisher is not None else None,
        publisher=publisher,
        wait_room=wait_room,
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
    # each failure's report went with the next deployment's admission; the answer's with the record
    assert [r.kind for r in upstream.sent] == [ReportKind.FAILURE] * 3
    assert [r.kind for r in result.reports] == [ReportKind.SUCCESS]
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


# -- admission that learns: busy deployments, the strategy's order, slots, hedges -------------------

OK = Admission(AdmissionState.OK)
UNCHECKED_ = Admission(AdmissionState.UNCHECKED)
GPT4O = ("openai/gpt-4o", "aisa/gpt-4o", "openrouter/openai/gpt-4o")


def busy_for(ms: int) -> Admission:
    return Admission(AdmissionState.BUSY, int(time.time() * 1000) + ms)


async def test_a_busy_deployment_passes_the_job_to_the_models_next_without_an_attempt(sim_catalog):
    upstream = Upstream()
    admissions = {GPT4O[0]: busy_for(200), GPT4O[1]: OK}
    result = await walk(sim_catalog, ["gpt-4o"], upstream, admissions=admissions).run()
    assert upstream.calls == [GPT4O[1]]
    # load spread, not a failure: no attempt for the busy one, and no fallback
    assert calls_of(result) == [("aisa", "success", None)] and result.fields["fallback_used"] is False


async def test_a_model_whose_deployments_are_all_busy_waits_instead_of_falling_back(sim_catalog):
    upstream = Upstream({GPT4O[1]: Overloaded("down")})
    admissions = {GPT4O[0]: busy_for(200)}

    def later(dep: str) -> Admission:
        return busy_for(400) if dep == GPT4O[2] else OK

    t0 = time.time()
    result = await walk(
        sim_catalog, ["gpt-4o", "claude-sonnet-4-5"], upstream, admissions=admissions, later=later
    ).run()
    assert upstream.calls == [GPT4O[1]]  # never claude: gpt-4o is busy, not failing
    assert result.fields["status"] == JobStatus.FAILED and result.retryable
    # back when the first slot is likely free, jittered (x 0.5 to 1.5) so waiters do not come back at once
    assert result.available_at is not None and t0 + 0.09 <= result.available_at <= t0 + 0.31
    assert "concurrency_limited" in result.fields["error"]["message"]


async def test_a_busy_models_job_waits_on_its_worker_and_takes_the_slot_given_back(sim_catalog):
    upstream = Upstream()
    room = Room()
    admissions = {GPT4O[0]: busy_for(5_000)}  # its poll would come back in seconds: a wake-up is sooner
    asked: list[str] = []

    def later(dep: str) -> Admission:
        asked.append(dep)
        # the first time round every deployment of the model is full; after the wake-up, room
        return OK if len(asked) > 2 else busy_for(5_000)

    walker = walk(sim_catalog, ["gpt-4o", "claude-sonnet-4-5"], upstream, admissions=admissions, later=later)
    walker.wait_room = room.wait
    task = asyncio.create_task(walker.run())
    await asyncio.sleep(0.05)
    assert room.waiting() == 1 and not task.done() and upstream.calls == []
    t0 = time.monotonic()
    room.freed([GPT4O[1]])  # a call of this worker gave a slot of AIsa back
    result = await task
    assert time.monotonic() - t0 < 0.5
    assert result.fields["status"] == JobStatus.SUCCEEDED and upstream.calls[0] in GPT4O
    assert calls_of(result) == [(result.fields["provider"], "success", None)]  # waiting is no attempt
    assert room.waiting() == 0


async def test_a_job_waits_for_room_at_most_the_wait_then_is_deferred(sim_catalog):
    upstream = Upstream()
    room = Room()
    admissions = {GPT4O[0]: busy_for(50)}
    t0 = time.monotonic()
    result = await walk(
        sim_catalog,
        ["gpt-4o"],
        upstream,
        admissions=admissions,
        later=lambda dep: busy_for(50),
        wait_room=room.wait,
        wait_s=0.3,
    ).run()
    assert 0.3 <= time.monotonic() - t0 < 1.0 and upstream.calls == []
    assert result.fields["status"] == JobStatus.FAILED and result.retryable and not result.calls_failed
    assert result.available_at is not None  # deferred off its slot, to come back for room


async def test_the_walk_takes_a_models_deployments_in_the_order_the_start_script_chose(sim_catalog):
    upstream = Upstream({GPT4O[2]: Overloaded("down")})
    # least_busy put OpenRouter first: it is called first, then the others in that order
    admissions = {GPT4O[2]: OK, GPT4O[0]: UNCHECKED_, GPT4O[1]: UNCHECKED_}
    await walk(sim_catalog, ["gpt-4o"], upstream, admissions=admissions).run()
    assert upstream.calls == [GPT4O[2], GPT4O[0]]


async def test_reports_give_slots_back_with_the_calls_latency(sim_catalog):
    upstream = Upstream({GPT4O[0]: Overloaded("down")})
    admissions = {GPT4O[0]: OK}
    t0 = int(time.time() * 1000)
    result = await walk(sim_catalog, ["gpt-4o"], upstream, admissions=admissions).run()
    (failed,) = upstream.sent
    (answered,) = result.reports
    assert (failed.slot, failed.latency_ms) == (True, -1)  # a failure is no latency sample
    assert answered.slot and 0 <= answered.latency_ms < 1_000 and answered.deployment == GPT4O[1]
    assert t0 - 5 <= failed.started_ms <= answered.started_ms <= int(time.time() * 1000)


async def test_a_slot_taken_for_a_deployment_never_called_is_given_back(sim_catalog):
    # admitted by the start script, but the walk ended before calling it (a cancel, a timeout)
    w = walk(sim_catalog, ["gpt-4o"], Upstream(), admissions={GPT4O[0]: OK})
    w._hold_admitted(w._plan())
    assert list(w.held) == [GPT4O[0]]
    (report,) = w.unsent_reports()
    assert (report.deployment, report.kind, report.slot) == (GPT4O[0], ReportKind.NEUTRAL, True)
    assert not w.held


class Timed(Upstream):
    """Each deployment answers after its own delay (an unstreamed answer, or a stream's first token)."""

    def __init__(self, delays: dict[str, float], errors: dict[str, RouterError] | None = None) -> None:
        super().__init__(errors)
        self.delays = delays
        self.cancelled: list[str] = []

    async def __call__(self, dep: Deployment, request: dict[str, Any], deadline_at: float) -> Completion:
        self.calls.append(dep.id)
        try:
            await asyncio.sleep(self.delays.get(dep.id, 0))
        except asyncio.CancelledError:
            self.cancelled.append(dep.id)
            raise
        if dep.id in self.errors:
            raise type(self.errors[dep.id])(self.errors[dep.id].message)
        if request.get("stream"):
            first_token()  # what stream_call does before publishing its first chunk
            await asyncio.sleep(0.05)  # the rest of the stream
        return answer(dep.id)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_hedge_races_a_slow_first_call_and_the_first_token_wins(sim_catalog, stream):
    upstream = Timed({GPT4O[0]: 2.0, GPT4O[1]: 0.05})
    publisher = object() if stream else None  # the fake stream publishes nothing itself
    t0 = time.perf_counter()
    w = walk(
        sim_catalog, ["gpt-4o"], upstream, admissions={GPT4O[0]: OK}, hedge_after_s=0.1, publisher=publisher
    )
    result = await w.run()
    assert time.perf_counter() - t0 < 1.0
    assert upstream.calls == [GPT4O[0], GPT4O[1]] and upstream.cancelled == [GPT4O[0]]
    fields = result.fields
    assert fields["status"] == JobStatus.SUCCEEDED and fields["provider"] == "aisa"
    # both attempts in the record, each with its side and its cost; the loser billed its prompt
    lost, won = fields["attempts"]
    assert (lost["provider"], lost["outcome"], lost["error_code"], lost["hedge"]) == (
        "openai",
        "interrupted",
        "hedge_lost",
        "first",
    )
    assert (won["provider"], won["outcome"], won["hedge"]) == ("aisa", "success", "second")
    assert lost["cost"] > 0 and won["cost"] > 0
    assert fields["usage"]["cost"] == pytest.approx(lost["cost"] + won["cost"], abs=1e-9)
    assert fields["usage"]["estimated"] and fields["fallback_used"] is True
    # the loser's slot back, with how long it waited (a sample that it was slow); the winner's too
    reports = {r.deployment: r for r in [*upstream.sent, *result.reports]}
    assert reports[GPT4O[0]].kind == ReportKind.NEUTRAL and reports[GPT4O[0]].latency_ms >= 100
    assert reports[GPT4O[1]].kind == ReportKind.SUCCESS and reports[GPT4O[1]].slot


async def test_a_first_call_that_answers_before_the_hedge_delay_runs_alone(sim_catalog):
    upstream = Timed({GPT4O[0]: 0.01})
    result = await walk(sim_catalog, ["gpt-4o"], upstream, admissions={GPT4O[0]: OK}, hedge_after_s=0.2).run()
    assert upstream.calls == [GPT4O[0]] and result.fields["provider"] == "openai"
    assert "hedge" not in result.fields["attempts"][0] and not result.fields["usage"].get("estimated")


async def test_a_hedge_whose_attempts_both_fail_goes_on_with_the_route(sim_catalog):
    down = {GPT4O[0]: Overloaded("down"), GPT4O[1]: Overloaded("down")}
    upstream = Timed({GPT4O[0]: 0.3, GPT4O[1]: 0.05}, down)
    result = await walk(
        sim_catalog, ["gpt-4o"], upstream, admissions={GPT4O[0]: OK}, hedge_after_s=0.05
    ).run()
    assert upstream.calls == [GPT4O[0], GPT4O[1], GPT4O[2]]
    assert result.fields["provider"] == "openrouter" and not upstream.cancelled


async def test_a_hedge_never_goes_to_another_model(sim_catalog):
    claude = [d.id for d in sim_catalog.deployments("claude-sonnet-4-5")]
    upstream = Timed({claude[0]: 0.3})

    def later(dep: str) -> Admission:  # the model's other deployments are full
        return busy_for(500) if dep in claude else OK

    w = walk(
        sim_catalog,
        ["claude-sonnet-4-5", "gpt-4o"],
        upstream,
        admissions={claude[0]: OK},
        later=later,
        hedge_after_s=0.05,
    )
    result = await w.run()
    assert upstream.calls == [claude[0]] and result.fields["model"] == "claude-sonnet-4-5"
