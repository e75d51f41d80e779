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

A stream a client follows that breaks after tokens went out (``stream_interrupted``) is continued:
the next deployment that can take the text as a prefill (``worker.providers.prefill``) goes on from
it, its chunks published as part of the same answer, up to ``LLM_ROUTER_MAX_CONTINUATIONS`` times.
When no deployment can, or the one asked refuses (a 400), the job ends with the original failure
and the partial text, never with the continuation's error. The record bills what was sent: each
broken call by estimate, the continuation by its usage.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from config.catalog import Catalog, Deployment, RetryAfterSpec
from config.cost import call_usage, nanos_to_usd, prompt_tokens, text_tokens
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


Call = Callable[[Deployment, dict[str, Any], float], Awaitable[Completion]]
Admit = Callable[[Deployment, int], Awaitable[Admission]]


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
    _inlined: dict[str, Any] | None = None
    # the stream broke after tokens went out to a client: the walk is looking for a continuation
    _interrupted: StreamInterrupted | None = None
    _continuations: int = 0
    _broken_usage: list[dict[str, Any]] = field(default_factory=list)  # what each broken call cost

    async def run(self) -> PassResult:
        errors: list[RouterError] = []
        available: list[float] = []
        first = True
        needs_context = 0  # after context_length_exceeded: only models with a larger window are worth a try
        plan = [(m, d) for m in self.route for d in self.catalog.deployments(m)]
        for i, (model_id, dep) in enumerate(plan):
            window = self.catalog.models[model_id].capabilities.context_window
            if window <= needs_context:
                continue
            request = self.request
            if self._interrupted is not None:
                request = continuation_request(self.request, dep, self._interrupted.partial_text)
                if request is None:
                    continue  # it cannot go on from the text sent: not worth a call
            admission = self.admissions.get(dep.id, UNCHECKED)
            if admission.state == AdmissionState.UNCHECKED:
                admission = await self.admit(dep, self.est_tokens)
            if admission.skipped:
                if admission.state == AdmissionState.DISABLED:
                    # our key or the model was refused: not worth waiting for
                    errors.append(DeploymentDisabled(f"{dep.id} is out of rotation (key or model refused)"))
                else:
                    available.append(admission.until_ms / 1000 + self.clock_offset_s)
                self._skipped(dep, model_id, admission.state)
                first = False
                continue
            next_model = plan[i + 1][0] if i + 1 < len(plan) else None
            result = await self._try(dep, model_id, admission.state, errors, request, next_model)
            if result is not None:
                if first:
                    result.fields["fallback_used"] = False
                return self._finish(result)
            first = False
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
        return self._finish(self._nothing_left(errors, available))

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
        result.fields["usage"] = sum_usage(self._broken_usage)
        return self._finish(result)

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
    ) -> PassResult | None:
        """Call one deployment, retrying it while that is cheap; ``None`` when it did not answer."""
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
                completion = await call(dep, request, self.deadline_at)
            except RouterError as exc:
                self.scrub(exc)
                self.attempts.append(_attempt(dep, model_id, started, t0, exc, _ADMITTED_STATE.get(admitted)))
                errors.append(exc)
                kind = report_kind(exc)
                until_ms = 0
                if kind == ReportKind.LIMITED:
                    wait = (
                        exc.retry_after
                        if exc.retry_after is not None
                        else self.settings.rate_limited_default_s
                    )
                    until_ms = int((time.time() + wait - self.clock_offset_s) * 1000)
                elif kind == ReportKind.DISABLED:
                    until_ms = int(
                        (time.time() + self.settings.disable_cooldown_s - self.clock_offset_s) * 1000
                    )
                self.reports.append(breaker_report(dep, kind, policy, probe=probe, until_ms=until_ms))
                probe = False
                if kind == ReportKind.LIMITED:
                    wait_429 = None if waited_429 else self._wait_for_429(exc, dep, model_id, next_model)
                    if wait_429 is not None:
                        waited_429 = True
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
                        await asyncio.sleep(wait)
                        continue
                return None
            self.attempts.append(_attempt(dep, model_id, started, t0, None, _ADMITTED_STATE.get(admitted)))
            delta = 0
            if dep.tpm:
                delta = completion.prompt_tokens + completion.completion_tokens - self.est_tokens
            self.reports.append(
                breaker_report(dep, ReportKind.SUCCESS, policy, probe=probe, tokens_delta=delta)
            )
            result = _succeeded(dep, model_id, completion, self.attempts)
            if continuing and self.publisher is not None:
                self._continued(result)
            result.fields["fallback_used"] = True
            return result

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

    def _nothing_left(self, errors: list[RouterError], available: list[float]) -> PassResult:
        if len(errors) == 1 and not available:
            result = failed_pass(errors[0], self.attempts)
        else:
            tried = [a for a in self.attempts[-(len(errors) + len(available)) :] if a["outcome"] != "success"]
            summary = ", ".join(f"{a['provider']}/{a['upstream_model']}: {a['error_code']}" for a in tried)
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
        result.reports = self.reports
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
    usage = call_usage(
        dep.price,
        completion.prompt_tokens,
        completion.completion_tokens,
        cached_tokens=completion.cached_tokens,
        cache_write_tokens=completion.cache_write_tokens,
        reasoning_tokens=completion.reasoning_tokens,
    )
    response = completion.response
    response["model"] = model_id
    response["usage"]["cost"] = usage["cost"]
    return PassResult(
        {
            "status": JobStatus.SUCCEEDED,
            "finished_at": time.time(),
            "attempts": attempts,
            "provider": dep.provider,
            "model": model_id,
            "response": response,
            "usage": usage,
        }
    )


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


def estimated_usage(dep: Deployment, request_json: bytes, text: str) -> dict[str, Any]:
    """What a call that streamed ``text`` and then broke (or was aborted) costs, by the reservation's
    estimate, marked as estimated: the provider's own usage never came."""
    return call_usage(dep.price, prompt_tokens(request_json), text_tokens(text), estimated=True)


def failed_pass(exc: RouterError, attempts: list[dict[str, Any]]) -> PassResult:
    fields = {
        "status": JobStatus.FAILED,
        "finished_at": time.time(),
        "attempts": list(attempts),
        "error": exc.to_dict(),
    }
    return PassResult(fields, retryable=exc.retryable, retry_after=exc.retry_after, calls_failed=True)
