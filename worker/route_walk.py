"""One pass over a job's route: admission, calls, same-deployment retries, fallback, outcomes.

The route is the job's model then its fallbacks, each expanded to its enabled deployments in
preference order (AIsa → OpenAI direct → OpenRouter, as the catalog says). A deployment is called
only when admitted: its breaker closed (or a half-open probe lease held) and its rate limits free.
The start script admitted the first one; one reached after failures is admitted on the way. The
error taxonomy decides the rest (``llm_router.errors.ERROR_TABLE``):

* an error marked ``retry_here`` (a 5xx, a reset, a bad body) calls the same deployment again once
  the wait is short; a timeout (no headers, no first token, a stall) never does: a deployment that
  was silent gets no second chance inside the job;
* a 429 with a short ``Retry-After`` (at most the deployment's ``retry_after.max_s``, fitting the
  deadline) is waited out and the same deployment called again when the next deployment of the
  route is another model (``retry_after.wait: auto``); when the same model is served elsewhere the
  walk moves there at once, and with nothing left the job is deferred off its worker slot;
* else fallback moves on to the next deployment; a caller's error ends the pass.

A deployment at its concurrency limit (``busy``, ``llm_router.concurrency``) is passed over for its
model's next deployment without an attempt in the record (it is load spread, not a failure); when
every deployment of the model is busy the pass stops there and the job waits, deferred, rather than
answer with a fallback model. Each model's deployments are taken in the order the start script chose
(its strategy). Each call's report carries its latency (time to first token for a stream) and gives
back its slot; the reports of the calls made so far go with the admission of the next deployment.

A hedged job (``worker.hedge``) races its first call against a second one on the model's next
deployment once the first has produced no token for the hedge delay; the first to a token wins, the
other is cancelled, recorded (``interrupted``, ``hedge_lost``) and billed its prompt by estimate.

A stream a client follows that breaks after tokens went out (``stream_interrupted``) is continued:
the next deployment that can take the text as a prefill (``worker.providers.prefill``) goes on from
it, its chunks published as part of the same answer, up to ``LLM_ROUTER_MAX_CONTINUATIONS`` times.
When no deployment can, or the one asked refuses (a 400), the job ends with the original failure
and the partial text, never with the continuation's error. The record bills what was sent: each
broken call by estimate, the continuation by its usage.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from config.catalog import Catalog, Deployment, RetryAfterSpec
from config.cost import call_usage, image_parts, nanos_to_usd, prompt_tokens, text_tokens
from config.settings import Settings
from llm_router.circuit_breaker import (
    UNCHECKED,
    Admission,
    AdmissionState,
    BreakerReport,
    Policy,
    ReportKind,
    breaker_report,
)
from llm_router.contract import JobStatus, new_attempt
from llm_router.errors import (
    ERROR_TABLE,
    AllDeploymentsFailed,
    DeploymentDisabled,
    NoDeployment,
    RouterError,
    StreamInterrupted,
)
from worker.breaker import RetryBudget, backoff_s, report_kind
from worker.hedge import CALL, CallClock, Race
from worker.providers import ADAPTERS, Completion
from worker.providers.prefill import continuation_request
from worker.streaming import ChunkPublisher

# why a deployment was skipped without a call → the code its attempt records, and its breaker state
_SKIPS: dict[AdmissionState, tuple[str, str]] = {
    AdmissionState.OPEN: ("breaker_open", "open"),
    AdmissionState.HALF_OPEN: ("breaker_open", "half_open"),
    AdmissionState.LIMITED: ("rate_limited", "limited"),
    AdmissionState.DISABLED: ("deployment_disabled", "disabled"),
    AdmissionState.RATE: ("rate_limit_reached", "closed"),
    AdmissionState.TOKENS: ("rate_limit_reached", "closed"),
}
# the breaker state an attempt records for a deployment it was admitted to
_ADMITTED_STATE = {AdmissionState.OK: "closed", AdmissionState.PROBE: "half_open"}


@dataclass(slots=True)
class PassResult:
    """What one pass over the route came to: record fields, breaker reports, and what next."""

    fields: dict[str, Any]
    retryable: bool = False
    retry_after: float | None = None
    # wall-clock time when a skipped deployment becomes available again (all were skipped or limited)
    available_at: float | None = None
    calls_failed: bool = False
    reports: list[BreakerReport] = field(default_factory=list)


@dataclass(slots=True)
class _Busy:
    """A pass that stopped at a model whose deployments were all at their concurrency limit."""

    busy: list[Deployment]
    available: list[float]


Call = Callable[[Deployment, dict[str, Any], float], Awaitable[Completion]]
# admission of a deployment reached on the way, carrying the reports of the calls made since the last
Admit = Callable[[Deployment, int, list[BreakerReport]], Awaitable[Admission]]


@dataclass(slots=True)
class RouteWalk:
    """The state of one pass; ``run`` returns its ``PassResult``."""

    job_id: str
    request: dict[str, Any]
    request_json: bytes
    route: list[str]
    attempts: list[dict[str, Any]]
    deadline_at: float
    admissions: dict[str, Admission]  # what the start script said of the route's deployments
    est_tokens: int  # what rate limits counted the job as (prompt estimate plus max output)
    clock_offset_s: float  # local time - Redis time, to read the scripts' until-times
    catalog: Catalog
    settings: Settings
    policies: dict[str, Policy]
    budget: RetryBudget
    call: Call
    admit: Admit
    inflight: dict[str, dict[str, Any]]
    scrub: Callable[[RouterError], None]
    # replaces https image URLs by data URIs, for providers that cannot fetch them (once per job)
    inline_images: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
    # the streamed variant of ``call``, for jobs with ``stream: true`` (publishes to the job's stream)
    stream: Call | None = None
    # the job's stream: a stream call raises ``stream_interrupted`` only when a client follows it
    publisher: ChunkPublisher | None = None
    reports: list[BreakerReport] = field(default_factory=list)
    # a hedged job: its first call runs alone this long before a second starts (``worker.hedge``)
    hedge_after_s: float | None = None
    # deployments whose concurrency slot this job holds and has not reported yet (the lease keeper
    # renews them; what is left when the job ends is given back)
    held: dict[str, Deployment] = field(default_factory=dict)
    # waits until a slot of one of these deployments is given back in this worker, or the timeout
    # (``worker.room``); None: a busy model defers the job at once
    wait_room: Callable[[list[str], float], Awaitable[bool]] | None = None
    _sent: int = 0  # reports already sent with an admission
    _tried: set[str] = field(default_factory=set)  # deployments called in this run
    _first: bool = True  # no deployment before the one that answers was skipped or failed
    _hedge_usage: list[dict[str, Any]] = field(default_factory=list)  # what a hedge's loser cost
    _inlined: dict[str, Any] | None = None
    # the stream broke after tokens went out to a client: the walk is looking for a continuation
    _interrupted: StreamInterrupted | None = None
    _continuations: int = 0
    _broken_usage: list[dict[str, Any]] = field(default_factory=list)  # what each broken call cost
    # calls whose request the provider has and whose answer has not come: what an abort pays for
    # (deployment, model, request, started at): ``cut_short`` prices and records them
    _on_wire: list[tuple[Deployment, str, dict[str, Any], float]] = field(default_factory=list)

    async def run(self) -> PassResult:
        errors: list[RouterError] = []
        plan = self._plan()
        self._hold_admitted(plan)
        give_up = time.monotonic() + min(
            self.settings.concurrency_wait_s, max(self.deadline_at - time.time() - 0.1, 0)
        )
        while True:
            outcome = await self._pass(plan, errors)
            if not isinstance(outcome, _Busy):
                return outcome
            left = give_up - time.monotonic()
            if self.wait_room is None or left <= 0:
                return self._finish(self._nothing_left(errors, outcome.available, outcome.busy))
            # room is looked for again when a call of this worker gives a slot back, else after
            # about a call's latency (a slot freed by another worker)
            poll = max(min(outcome.available) - time.time(), 0.2) * random.uniform(1, 2)
            await self.wait_room([d.id for d in outcome.busy], min(left, poll))
            for dep in outcome.busy:
                self.admissions.pop(dep.id, None)

    async def _pass(
        self, plan: list[tuple[str, Deployment]], errors: list[RouterError]
    ) -> PassResult | _Busy:
        """One walk down the plan; ``_Busy`` when it stopped at a model whose deployments were all
        at their concurrency limit (the job may wait for room, ``worker.room``)."""
        available: list[float] = []
        busy: list[Deployment] = []
        busy_model: str | None = None  # every deployment of it tried so far was busy
        tried = self._tried  # deployments already called in this run (a hedge's, an earlier pass's)
        needs_context = 0  # after context_length_exceeded: only models with a larger window are worth a try
        for i, (model_id, dep) in enumerate(plan):
            if busy_model is not None and model_id != busy_model:
                break  # its model is busy, not failing: wait for room rather than answer with another
            window = self.catalog.models[model_id].capabilities.context_window
            if window <= needs_context or dep.id in tried:
                continue
            request = self.request
            if self._interrupted is not None:
                request = continuation_request(self.request, dep, self._interrupted.partial_text)
                if request is None:
                    continue  # it cannot go on from the text sent: not worth a call
            admission = self.admissions.get(dep.id, UNCHECKED)
            if admission.state == AdmissionState.UNCHECKED:
                admission = await self._admit(dep)
            if admission.state == AdmissionState.BUSY:
                busy.append(dep)
                busy_model = model_id
                # jittered: the jobs that found it full must not all come back at once
                wait = max(admission.until_ms / 1000 + self.clock_offset_s - time.time(), 0.02)
                available.append(time.time() + wait * random.uniform(0.5, 1.5))
                continue
            if admission.skipped:
                if admission.state == AdmissionState.DISABLED:
                    # our key or the model was refused: not worth waiting for
                    errors.append(DeploymentDisabled(f"{dep.id} is out of rotation (key or model refused)"))
                else:
                    available.append(admission.until_ms / 1000 + self.clock_offset_s)
                self._skipped(dep, model_id, admission.state)
                self._first = False
                continue
            busy_model = None
            next_model = plan[i + 1][0] if i + 1 < len(plan) else None
            if self.hedge_after_s is not None and not tried and self._interrupted is None:
                result, second, second_won = await self._hedged(
                    plan, i, admission.state, errors, request, next_model
                )
                if second is not None:
                    tried.add(second.id)
                self._first = self._first and not second_won
            else:
                result = await self._try(dep, model_id, admission.state, errors, request, next_model)
            tried.add(dep.id)
            if result is not None:
                if self._first:
                    result.fields["fallback_used"] = False
                return self._finish(result)
            self._first = False
            last = errors[-1]
            if isinstance(last, StreamInterrupted):
                before = self._interrupted.partial_text if self._interrupted is not None else ""
                self._broken_usage.append(self._estimated(dep, request, last.partial_text[len(before) :]))
                if self._may_continue(last):
                    self._interrupted = last
                    self._continuations += 1
                    continue
                return await self._end_interrupted(last)
            if self._interrupted is not None:
                # a continuation failed before its first token: another deployment may still take
                # it, but a refusal (the prefill, say) ends the job with the original failure
                if last.spec.fallback:
                    continue
                return await self._end_interrupted(self._interrupted)
            if last.code == "context_length_exceeded":
                needs_context = window  # this model's other deployments have the same window
                continue
            if not (
                last.spec.fallback
                or (last.code == "content_filtered" and self.settings.fallback_on_content_filter)
            ):
                return self._finish(failed_pass(last, self.attempts))
        if self._interrupted is not None:
            return await self._end_interrupted(self._interrupted)
        if not errors and not available:
            route = ", ".join(self.route)
            raise NoDeployment(f"no deployment of {route} is enabled: set a provider key (AISA_API_KEY, say)")
        if busy:
            return _Busy(busy, available)
        return self._finish(self._nothing_left(errors, available, busy))

    def _plan(self) -> list[tuple[str, Deployment]]:
        """The route's deployments: each model's in the order the start script took them (its
        strategy's), those it did not list after them in catalog order."""
        order = {dep_id: i for i, dep_id in enumerate(self.admissions)}
        plan = []
        for model_id in self.route:
            deps = self.catalog.deployments(model_id)
            if order:
                deps = sorted(deps, key=lambda d: order.get(d.id, len(order)))
            plan.extend((model_id, d) for d in deps)
        return plan

    def _hold_admitted(self, plan: list[tuple[str, Deployment]]) -> None:
        """The slot the start script took for this job is held until its call reports (or the job
        ends without calling it)."""
        for _, dep in plan:
            admission = self.admissions.get(dep.id)
            if admission is not None and admission.state.admitted and self.policies[dep.id].limited:
                self.held[dep.id] = dep

    async def _admit(self, dep: Deployment) -> Admission:
        """Admission on the way, with the reports of the calls made since the last one."""
        pending = self.reports[self._sent :]
        admission = await self.admit(dep, self.est_tokens, pending)
        self._sent += len(pending)
        if admission.state.admitted and self.policies[dep.id].limited:
            self.held[dep.id] = dep
        return admission

    def unsent_reports(self) -> list[BreakerReport]:
        """The reports not yet sent, and a neutral one giving back each slot still held by a call
        that never reported (a cancelled run, a deployment admitted but never called)."""
        for dep in list(self.held.values()):
            self._report(dep, ReportKind.NEUTRAL, probe=False)
        return self.reports[self._sent :]

    def _report(self, dep: Deployment, kind: ReportKind, *, probe: bool, **extra: Any) -> None:
        self.held.pop(dep.id, None)
        self.reports.append(breaker_report(dep, kind, self.policies[dep.id], probe=probe, **extra))

    def _redis_ms(self, wall: float) -> int:
        return int((wall - self.clock_offset_s) * 1000)

    def _may_continue(self, exc: StreamInterrupted) -> bool:
        """Whether a broken stream is worth continuing elsewhere: the provider failed (not a filter
        or a refusal), the answer so far is text only, and the job has continuations left."""
        cause = ERROR_TABLE.get(exc.cause)
        return (
            cause is not None
            and cause.fallback
            and self._continuations < self.settings.max_continuations
            and self.publisher is not None
            and bool(exc.partial_text.strip())
            and not self.publisher.tools_sent
        )

    async def _end_interrupted(self, exc: StreamInterrupted) -> PassResult:
        """The job ends with the text it sent: the stream carries the error, the record the partial
        text and what the broken calls cost (by estimate)."""
        if self.publisher is not None:
            await self.publisher.error(exc.to_dict())
        result = failed_pass(exc, self.attempts)
        result.fields["partial_text"] = exc.partial_text
        # the provider bills what it streamed before the break: so does the tenant, on the same
        # estimate as reservations (bytes / 4), marked as estimated
        result.fields["usage"] = sum_usage([*self._broken_usage, *self._hedge_usage])
        self._hedge_usage = []
        return self._finish(result)

    def cut_short(self, streamed: str, error_code: str) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """The walk stopped by a cancel or its deadline: an ``interrupted`` attempt (``error_code``)
        for every call its provider still had, priced by estimate (the prompt, which the provider
        read, as a hedge's loser pays; the first also the text ``streamed`` from it), and what the
        walk costs with them and with any broken stream or hedge's loser before (``None``: nothing).
        A call cut before its first token is no cheaper to its provider."""
        before = self._interrupted.partial_text if self._interrupted is not None else ""
        usages = [*self._broken_usage, *self._hedge_usage]
        cut = []
        now = time.time()
        for k, (dep, model_id, request, started) in enumerate(self._on_wire):
            usage = self._estimated(dep, request, streamed[len(before) :] if k == 0 else "")
            usages.append(usage)
            cut.append(_cut_attempt(dep, model_id, started, (now - started) * 1000, error_code, usage))
        self._on_wire = []
        return cut, (sum_usage(usages) if usages else None)

    def _estimated(self, dep: Deployment, request: dict[str, Any], streamed: str) -> dict[str, Any]:
        """What a call that broke after streaming ``streamed`` costs, by estimate."""
        request_json = self.request_json if request is self.request else orjson.dumps(request)
        return estimated_usage(dep, request_json, streamed)

    async def _try(
        self,
        dep: Deployment,
        model_id: str,
        admitted: AdmissionState,
        errors: list[RouterError],
        request: dict[str, Any],
        next_model: str | None = None,
        race: tuple[Race, str] | None = None,
    ) -> PassResult | None:
        """Call one deployment, retrying it while that is cheap; ``None`` when it did not answer.
        ``race``: the hedge this call is one attempt of, and its name there."""
        policy = self.policies[dep.id]
        probe = admitted == AdmissionState.PROBE
        retries = 0 if probe else self.settings.same_deployment_retries
        attempt = 0
        waited_429 = False
        continuing = self._interrupted is not None
        while True:
            started = time.time()
            t0 = time.perf_counter()
            self.inflight[self.job_id] = {
                "provider": dep.provider,
                "model": model_id,
                "upstream_model": dep.upstream_model,
                "started_at": started,
            }
            self.budget.call()
            clock = CallClock(started=t0, race=race[0] if race else None, name=race[1] if race else "")
            token = CALL.set(clock)
            try:
                if ADAPTERS[dep.format].needs_image_bytes:
                    if self._inlined is None:
                        self._inlined = await self.inline_images(self.request)
                    if request is self.request:
                        request = self._inlined
                    else:  # a continuation: the same request, inlined, plus its prefill
                        prefill = request["messages"][-1]
                        request = {**request, "messages": [*self._inlined["messages"], prefill]}
                call = self.stream if self.stream is not None and self.request.get("stream") else self.call
                if continuing and self.publisher is not None and self._interrupted is not None:
                    self.publisher.continue_after(request["messages"][-1]["content"])
                wire = (dep, model_id, request, started)
                self._on_wire.append(wire)
                try:
                    completion = await call(dep, request, self.deadline_at)
                except asyncio.CancelledError:
                    raise  # still on the wire: the provider read the prompt (``aborted_usage``)
                except BaseException:
                    self._on_wire.remove(wire)
                    raise
                self._on_wire.remove(wire)
            except RouterError as exc:
                self.scrub(exc)
                self.attempts.append(_attempt(dep, model_id, started, t0, exc, _ADMITTED_STATE.get(admitted)))
                errors.append(exc)
                kind = report_kind(exc)
                until_ms = 0
                if kind == ReportKind.LIMITED and (exc.retry_after is not None or not policy.limited):
                    # without a Retry-After, a deployment with a concurrency limit is not held: the
                    # report cuts its limit instead (llm_router.concurrency)
                    wait = (
                        exc.retry_after
                        if exc.retry_after is not None
                        else self.settings.rate_limited_default_s
                    )
                    until_ms = self._redis_ms(time.time() + wait)
                elif kind == ReportKind.DISABLED:
                    until_ms = self._redis_ms(time.time() + self.settings.disable_cooldown_s)
                self._report(dep, kind, probe=probe, until_ms=until_ms, started_ms=self._redis_ms(started))
                probe = False
                if kind == ReportKind.LIMITED:
                    wait_429 = None if waited_429 else self._wait_for_429(exc, dep, model_id, next_model)
                    if wait_429 is not None:
                        waited_429 = True
                        self._hold(dep)
                        await asyncio.sleep(wait_429)
                        continue
                elif exc.retry_here and attempt < retries:
                    wait = (
                        exc.retry_after
                        if exc.retry_after is not None
                        else backoff_s(
                            attempt, self.settings.retry_backoff_s / 4, self.settings.max_inline_wait_s
                        )
                    )
                    if (
                        wait <= self.settings.max_inline_wait_s
                        and time.time() + wait < self.deadline_at
                        and self.budget.allow_retry()
                    ):
                        attempt += 1
                        self._hold(dep)
                        await asyncio.sleep(wait)
                        continue
                return None
            finally:
                CALL.reset(token)
            self.attempts.append(_attempt(dep, model_id, started, t0, None, _ADMITTED_STATE.get(admitted)))
            delta = 0
            if dep.tpm:
                delta = completion.prompt_tokens + completion.completion_tokens - self.est_tokens
            latency = clock.ttft_ms()
            if latency is None:
                latency = (time.perf_counter() - t0) * 1000
            self._report(
                dep,
                ReportKind.SUCCESS,
                probe=probe,
                tokens_delta=delta,
                latency_ms=latency,
                started_ms=self._redis_ms(started),
            )
            result = _succeeded(dep, model_id, completion, self.attempts)
            if continuing and self.publisher is not None:
                self._continued(result)
            result.fields["fallback_used"] = True
            return result

    async def _hedged(
        self,
        plan: list[tuple[str, Deployment]],
        i: int,
        admitted: AdmissionState,
        errors: list[RouterError],
        request: dict[str, Any],
        next_model: str | None,
    ) -> tuple[PassResult | None, Deployment | None, bool]:
        """``plan[i]``'s call, raced by a second one on the model's next deployment if no token came
        within the hedge delay (``worker.hedge``). Returns the result (``None``: no attempt
        answered), the second deployment if one was called, and whether it won."""
        model_id, dep = plan[i]
        race = Race()
        mark = len(self.attempts)
        first = asyncio.create_task(
            self._try(dep, model_id, admitted, errors, request, next_model, (race, "first"))
        )
        decided = asyncio.create_task(race.decided.wait())
        tasks: dict[asyncio.Task[PassResult | None], tuple[Deployment, float]] = {first: (dep, time.time())}
        try:
            done, _ = await asyncio.wait(
                {first, decided}, timeout=self.hedge_after_s, return_when=asyncio.FIRST_COMPLETED
            )
            target = None if done else await self._hedge_target(plan, i)
            if target is None:  # it answered, failed or streamed in time; or nowhere to hedge
                return await first, None, False
            second_dep, second_admitted = target
            second = asyncio.create_task(
                self._try(
                    second_dep, model_id, second_admitted, errors, request, next_model, (race, "second")
                )
            )
            tasks[second] = (second_dep, time.time())
            names = {first: "first", second: "second"}
            winner = await self._winner(race, names, decided)
            if winner is None:
                return None, second_dep, False  # neither answered: the walk goes on past both
            for task, (lost_dep, since) in tasks.items():
                if task is not winner:
                    await self._lost(task, lost_dep, model_id, since, slow=task is first)
            result = await winner
            self._mark_hedge(mark, names, tasks, winner, result)
            return result, second_dep, winner is second
        finally:
            decided.cancel()
            for task in tasks:
                if not task.done():  # this job was cancelled or timed out mid-race
                    task.cancel()

    async def _hedge_target(
        self, plan: list[tuple[str, Deployment]], i: int
    ) -> tuple[Deployment, AdmissionState] | None:
        """Another deployment of ``plan[i]``'s model that admits the job now, in plan order: one after
        it, or one before it that was busy when the walk passed (a hedge never answers with another
        model, nor waits for room)."""
        model_id = plan[i][0]
        for j, (other_model, dep) in enumerate(plan):
            if other_model != model_id or j == i or dep.id in self._tried:
                continue
            admission = self.admissions.get(dep.id, UNCHECKED)
            if admission.state in (AdmissionState.UNCHECKED, AdmissionState.BUSY):
                admission = await self._admit(dep)
            if admission.state.admitted:
                return dep, admission.state
        return None

    @staticmethod
    async def _winner(
        race: Race, names: dict[asyncio.Task[PassResult | None], str], decided: asyncio.Task[Any]
    ) -> asyncio.Task[PassResult | None] | None:
        """The attempt that produced a token first (a stream's first chunk, an unstreamed answer),
        or ``None`` when both ended without one."""
        by_name = {name: task for task, name in names.items()}
        running = set(names)
        while running:
            waiting: set[asyncio.Task[Any]] = set(running)
            if not decided.done():
                waiting.add(decided)
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if race.winner is not None:
                return by_name[race.winner]
            for task in done & running:
                running.discard(task)
                exc = task.exception()
                if exc is not None:
                    raise exc
                if task.result() is not None and race.claim(names[task]):
                    return task
        return None

    async def _lost(
        self,
        task: asyncio.Task[PassResult | None],
        dep: Deployment,
        model_id: str,
        since: float,
        *,
        slow: bool,
    ) -> None:
        """The attempt that lost the race: cancelled, in the record as ``interrupted`` (``hedge_lost``),
        its slot given back and its prompt billed by estimate (what a call cancelled before its first
        token costs: the provider read the prompt). One that had answered too (two unstreamed answers
        in the same instant) is billed what it cost."""
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
        self._on_wire = [wire for wire in self._on_wire if wire[0] is not dep]  # billed here
        if not task.cancelled():
            finished = task.result()
            if finished is not None:
                self._hedge_usage.append(finished.fields["usage"])
            return
        elapsed_ms = (time.time() - since) * 1000
        usage = estimated_usage(dep, self.request_json, "")
        self._hedge_usage.append(usage)
        self.attempts.append(_cut_attempt(dep, model_id, since, elapsed_ms, "hedge_lost", usage))
        # the first attempt's wait so far (past the hedge delay) is a lower bound on its latency: that
        # it was slow is what the learned percentile must hear. The second's is no sample: it lost
        # to a call that started earlier, often after a few milliseconds, which would drag the
        # deployment's learned latency (and its baseline) down
        self._report(dep, ReportKind.NEUTRAL, probe=False, latency_ms=elapsed_ms if slow else None)

    def _mark_hedge(
        self,
        mark: int,
        names: dict[asyncio.Task[PassResult | None], str],
        tasks: dict[asyncio.Task[PassResult | None], tuple[Deployment, float]],
        winner: asyncio.Task[PassResult | None],
        result: PassResult | None,
    ) -> None:
        """Which attempt of the record was which side of the race, and the winner's cost; the race's
        attempts in the order they started (the loser is recorded when it loses)."""
        self.attempts[mark:] = sorted(self.attempts[mark:], key=lambda a: a["started_at"])
        side = {(d.provider, d.upstream_model): names[t] for t, (d, _) in tasks.items()}
        for attempt in self.attempts[mark:]:
            name = side.get((attempt["provider"], attempt["upstream_model"]))
            if name is not None:
                attempt["hedge"] = name
        if result is not None and result.fields.get("usage") is not None:
            for attempt in reversed(self.attempts[mark:]):
                if attempt.get("hedge") == names[winner] and attempt["outcome"] == "success":
                    attempt["cost"] = result.fields["usage"]["cost"]
                    break

    def _hold(self, dep: Deployment) -> None:
        """The job calls ``dep`` again (a retry): its slot stays held."""
        if self.policies[dep.id].limited:
            self.held[dep.id] = dep

    def _wait_for_429(
        self, exc: RouterError, dep: Deployment, model_id: str, next_model: str | None
    ) -> float | None:
        """Seconds to wait out a 429 and call ``dep`` again, or ``None`` to move on (see the module).

        ``auto`` waits only when what comes next is another model: the same model elsewhere is as
        good an answer at once, and with nothing next the job is deferred off its worker slot."""
        spec = dep.retry_after or RetryAfterSpec()
        mode = spec.wait or "auto"
        longest = spec.max_s if spec.max_s is not None else self.settings.max_inline_wait_s
        if exc.retry_after is None or mode == "never":
            return None
        if mode == "auto" and next_model in (None, model_id):
            return None
        wait = exc.retry_after
        if wait > longest or time.time() + wait >= self.deadline_at or not self.budget.allow_retry():
            return None
        return wait

    def _continued(self, result: PassResult) -> None:
        """A continuation answered: the record is the whole answer the client saw, one id, and the
        cost of every call that made it."""
        assert self.publisher is not None
        fields = result.fields
        usage = sum_usage([*self._broken_usage, fields["usage"]])
        response = fields["response"]
        if self.publisher.head is not None:
            response["id"], response["created"] = self.publisher.head
        choices = response.get("choices") or []
        if choices:
            choices[0]["message"]["content"] = "".join(self.publisher.text)
        response["usage"] = {
            **response["usage"],
            "prompt_tokens": usage["prompt_tokens"],
            "completion_tokens": usage["completion_tokens"],
            "total_tokens": usage["total_tokens"],
            "cost": usage["cost"],
        }
        fields["usage"] = usage

    def _skipped(self, dep: Deployment, model_id: str, why: AdmissionState) -> None:
        code, state = _SKIPS[why]
        last = self.attempts[-1] if self.attempts else None
        if (
            last
            and last["outcome"] == "skipped"
            and last["provider"] == dep.provider
            and (last["upstream_model"] == dep.upstream_model and last["error_code"] == code)
        ):
            return  # a job waiting out an open breaker would otherwise list it on every pass
        self.attempts.append(
            new_attempt(
                provider=dep.provider,
                model=model_id,
                upstream_model=dep.upstream_model,
                outcome="skipped",
                error_code=code,
                latency_ms=0.0,
                started_at=time.time(),
                breaker=state,
            )
        )

    def _nothing_left(
        self, errors: list[RouterError], available: list[float], busy: list[Deployment]
    ) -> PassResult:
        if len(errors) == 1 and not available:
            result = failed_pass(errors[0], self.attempts)
        else:
            recorded = len(errors) + len(available) - len(busy)  # a busy deployment has no attempt
            tail = self.attempts[-recorded:] if recorded > 0 else []
            tried = [a for a in tail if a["outcome"] != "success"]
            summary = ", ".join(
                [f"{a['provider']}/{a['upstream_model']}: {a['error_code']}" for a in tried]
                + [f"{d.provider}/{d.upstream_model}: concurrency_limited" for d in busy]
            )
            codes = {e.code for e in errors}
            last = f"; last: {errors[-1].message}" if errors else ""
            error = AllDeploymentsFailed(
                f"every deployment failed or is unavailable ({summary}){last}"[:1000],
                code=codes.pop() if len(codes) == 1 and not available else None,
            )
            result = failed_pass(error, self.attempts)
        result.retryable = bool(available) or any(e.retryable for e in errors)
        result.calls_failed = bool(errors)
        retry_afters = [e.retry_after for e in errors if e.retry_after is not None]
        result.retry_after = retry_afters[-1] if retry_afters else None  # the latest heard, not the first
        result.available_at = min(available) if available else None
        return result

    def _finish(self, result: PassResult) -> PassResult:
        fields = result.fields
        if self._hedge_usage and fields["status"] == JobStatus.SUCCEEDED:
            # the tenant pays what was consumed: the answer, and the hedge's loser by estimate
            usage = sum_usage([fields["usage"], *self._hedge_usage])
            fields["usage"] = usage
            fields["response"]["usage"]["cost"] = usage["cost"]
        result.reports = self.unsent_reports()
        return result


def _attempt(
    dep: Deployment, model_id: str, started: float, t0: float, exc: RouterError | None, breaker: str | None
) -> dict[str, Any]:
    return new_attempt(
        provider=dep.provider,
        model=model_id,
        upstream_model=dep.upstream_model,
        outcome="success" if exc is None else "error",
        error_code=None if exc is None else exc.code,
        http_status=200 if exc is None else exc.http_status,
        latency_ms=round((time.perf_counter() - t0) * 1000, 3),
        started_at=started,
        breaker=breaker,
    )


def _succeeded(
    dep: Deployment, model_id: str, completion: Completion, attempts: list[dict[str, Any]]
) -> PassResult:
    # lanes: a call the provider served on its flex tier is billed at the deployment's flex price
    lane = "flex" if completion.response.get("service_tier") == "flex" and "flex" in dep.lane_prices else None
    usage = call_usage(
        dep.price_for(lane),
        completion.prompt_tokens,
        completion.completion_tokens,
        cached_tokens=completion.cached_tokens,
        cache_write_tokens=completion.cache_write_tokens,
        reasoning_tokens=completion.reasoning_tokens,
    )
    response = completion.response
    response["model"] = model_id
    response["usage"]["cost"] = usage["cost"]
    fields = {
        "status": JobStatus.SUCCEEDED,
        "finished_at": time.time(),
        "attempts": attempts,
        "provider": dep.provider,
        "model": model_id,
        "response": response,
        "usage": usage,
    }
    if lane is not None:
        fields["lane"] = lane
    return PassResult(fields)


def sum_usage(usages: list[dict[str, Any]]) -> dict[str, Any]:
    """Several calls' usage as one (a broken stream and its continuation): counts and cost added,
    ``estimated`` when any part was."""
    total: dict[str, Any] = {
        key: sum(int(u.get(key) or 0) for u in usages)
        for key in (
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "cached_tokens",
            "cache_write_tokens",
            "reasoning_tokens",
            "cost_nanos",
        )
    }
    total["cost"] = nanos_to_usd(total["cost_nanos"])
    if any(u.get("estimated") for u in usages):
        total["estimated"] = True
    return total


def _cut_attempt(
    dep: Deployment, model_id: str, started: float, elapsed_ms: float, error_code: str, usage: dict[str, Any]
) -> dict[str, Any]:
    """The attempt of a call cut short by us (a hedge it lost, a cancel, the deadline), billed ``usage``."""
    attempt = new_attempt(
        provider=dep.provider,
        model=model_id,
        upstream_model=dep.upstream_model,
        outcome="interrupted",
        error_code=error_code,
        latency_ms=round(elapsed_ms, 3),
        started_at=started,
        breaker="closed",
    )
    attempt["cost"] = usage["cost"]
    return attempt


def estimated_usage(dep: Deployment, request_json: bytes, text: str) -> dict[str, Any]:
    """What a call that streamed ``text`` and then broke (or was aborted) costs, by the reservation's
    estimate, marked as estimated: the provider's own usage never came."""
    prompt = prompt_tokens(request_json, *image_parts(orjson.loads(request_json)))
    return call_usage(dep.price, prompt, text_tokens(text), estimated=True)


def failed_pass(exc: RouterError, attempts: list[dict[str, Any]]) -> PassResult:
    fields = {
        "status": JobStatus.FAILED,
        "finished_at": time.time(),
        "attempts": list(attempts),
        "error": exc.to_dict(),
    }
    return PassResult(fields, retryable=exc.retryable, retry_after=exc.retry_after, calls_failed=True)
