"""One pass over a job's route: admission, calls, same-deployment retries, fallback, outcomes.

The route is the job's model then its fallbacks, each expanded to its enabled deployments in
preference order (AIsa → OpenAI direct → OpenRouter, as the catalog says). A deployment is called
only when admitted: its breaker closed (or a half-open probe lease held) and its rate limits free.
The start script admitted the first one; one reached after failures is admitted on the way. The
error taxonomy decides the rest (``llm_router.errors.ERROR_TABLE``): a transient error may retry
the same deployment once the wait is short, then fallback moves on; a caller's error ends the pass.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from config.catalog import Catalog, Deployment
from config.cost import call_usage, prompt_tokens, text_tokens
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
    AllDeploymentsFailed,
    DeploymentDisabled,
    NoDeployment,
    RouterError,
    StreamInterrupted,
)
from worker.breaker import RetryBudget, backoff_s, report_kind
from worker.providers import ADAPTERS, Completion

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
    reports: list[BreakerReport] = field(default_factory=list)
    _inlined: dict[str, Any] | None = None

    async def run(self) -> PassResult:
        errors: list[RouterError] = []
        available: list[float] = []
        first = True
        needs_context = 0  # after context_length_exceeded: only models with a larger window are worth a try
        for model_id in self.route:
            window = self.catalog.models[model_id].capabilities.context_window
            if window <= needs_context:
                continue
            for dep in self.catalog.deployments(model_id):
                admission = self.admissions.get(dep.id, UNCHECKED)
                if admission.state == AdmissionState.UNCHECKED:
                    admission = await self.admit(dep, self.est_tokens)
                if admission.skipped:
                    if admission.state == AdmissionState.DISABLED:
                        # our key or the model was refused: not worth waiting for
                        errors.append(
                            DeploymentDisabled(f"{dep.id} is out of rotation (key or model refused)")
                        )
                    else:
                        available.append(admission.until_ms / 1000 + self.clock_offset_s)
                    self._skipped(dep, model_id, admission.state)
                    first = False
                    continue
                result = await self._try(dep, model_id, admission.state, errors)
                if result is not None:
                    if first:
                        result.fields["fallback_used"] = False
                    return self._finish(result)
                first = False
                last = errors[-1]
                if last.code == "context_length_exceeded":
                    needs_context = window  # this model's other deployments have the same window
                    break
                if isinstance(last, StreamInterrupted):
                    result = failed_pass(last, self.attempts)
                    result.fields["partial_text"] = last.partial_text
                    # the provider bills what it streamed before the break: so does the tenant, on
                    # the same estimate as reservations (bytes / 4), marked as estimated
                    result.fields["usage"] = estimated_usage(dep, self.request_json, last.partial_text)
                    return self._finish(result)
                if not (
                    last.spec.fallback
                    or (last.code == "content_filtered" and self.settings.fallback_on_content_filter)
                ):
                    return self._finish(failed_pass(last, self.attempts))
        if not errors and not available:
            route = ", ".join(self.route)
            raise NoDeployment(f"no deployment of {route} is enabled: set a provider key (AISA_API_KEY, say)")
        return self._finish(self._nothing_left(errors, available))

    async def _try(
        self, dep: Deployment, model_id: str, admitted: AdmissionState, errors: list[RouterError]
    ) -> PassResult | None:
        """Call one deployment, retrying it while that is cheap; ``None`` when it did not answer."""
        policy = self.policies[dep.id]
        probe = admitted == AdmissionState.PROBE
        retries = 0 if probe else self.settings.same_deployment_retries
        attempt = 0
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
                request = self.request
                if ADAPTERS[dep.format].needs_image_bytes:
                    if self._inlined is None:
                        self._inlined = await self.inline_images(self.request)
                    request = self._inlined
                call = self.stream if self.stream is not None and self.request.get("stream") else self.call
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
                if kind != ReportKind.LIMITED and exc.retryable and attempt < retries:
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
            result.fields["fallback_used"] = True
            return result

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
