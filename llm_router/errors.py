"""One exception tree for llm-router, with stable codes.

Every error carries a stable ``code``, an HTTP-like ``status``, an error ``type``, the ``param`` it
concerns (if any), whether the job may be tried again later (``retryable``: a deferred pass), whether
the same deployment is worth a second call inside the job (``retry_here``), whether it counts against
the deployment's ``breaker`` and whether ``fallback`` moves on to the next deployment. Nothing
downstream parses messages: it reads these attributes, which come from one table (``ERROR_TABLE``).

    RouterError
    ├── RequestError                caller's fault; refused at enqueue, never retried
    │   ├── InvalidRequest              invalid_request (400)
    │   ├── UnsupportedCapability       unsupported_capability (400)
    │   ├── ModelNotFound               model_not_found (404)
    │   ├── IdempotencyConflict         idempotency_conflict (409)
    │   ├── PayloadTooLarge             payload_too_large (413)
    │   ├── InsufficientCredits         insufficient_credits (402)
    │   ├── TooManyQueued               too_many_queued (429)
    │   ├── TooManyRequests             too_many_requests (429: HTTP requests in progress)
    │   ├── QuotaExceeded               quota_exceeded (403: a tenant's files, count or bytes)
    │   └── RequestTimeout              request_timeout (408: the body arrived too slowly)
    ├── AccessError                 the HTTP API's own refusals
    │   ├── InvalidApiKey               invalid_api_key (401)
    │   └── ResourceNotFound            not_found (404: an unknown id, or another tenant's)
    ├── JobError                    about a job as a whole
    │   ├── JobNotFound                 job_not_found (404)
    │   ├── JobNotCancellable           job_not_cancellable (409)
    │   ├── JobNotEnded                 job_not_ended (409: deleting what still runs)
    │   ├── DeadlineExceeded            deadline_exceeded (504)
    │   ├── JobCancelled                cancelled (499)
    │   ├── WaitTimeout                 wait_timeout (408)
    │   ├── NoWorkers                   no_workers (503)
    │   └── WorkerLost                  worker_lost (500)
    ├── RedisUnusable               redis_unusable (503): a process cannot work with its Redis
    ├── RedisUnavailable            redis_unavailable (503): Redis did not answer in time; retry
    └── UpstreamFailure             a provider's fault; a failed job reports status 502
        ├── RateLimited                 rate_limited
        ├── Overloaded                  overloaded
        ├── UpstreamError               upstream_error
        ├── UpstreamTimeout             timeout
        ├── UpstreamConnectionError     connection_error
        ├── BadResponse                 bad_response
        ├── ContextLengthExceeded       context_length_exceeded
        ├── ContentFiltered             content_filtered
        ├── AuthFailed                  auth_failed
        ├── UpstreamNotFound            upstream_not_found
        ├── UpstreamInvalidRequest      upstream_invalid_request (400: the provider refused the request)
        ├── ProviderOutOfCredits        provider_out_of_credits
        ├── NoDeployment                no_deployment
        ├── DeploymentDisabled          deployment_disabled
        ├── StreamInterrupted           stream_interrupted
        └── AllDeploymentsFailed        all_deployments_failed
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    """How one error code behaves: its status and type, and what the worker does about it."""

    status: int
    type: str
    retryable: bool = False
    breaker: bool = False
    fallback: bool = False
    # a second call to the same deployment inside the job (a transient 5xx, a reset) is worth it;
    # a deployment that was silent (a timeout) or rate limited (see the walk's 429 policy) moves on
    retry_here: bool = False


# The one table from code to status, type and policy. Upstream codes report status 502 on a job:
# 401/402 are reserved for the caller's own key and credit.
ERROR_TABLE: dict[str, ErrorSpec] = {
    "invalid_request": ErrorSpec(400, "invalid_request_error"),
    "unsupported_capability": ErrorSpec(400, "invalid_request_error"),
    "model_not_found": ErrorSpec(404, "not_found_error"),
    "idempotency_conflict": ErrorSpec(409, "conflict_error"),
    "payload_too_large": ErrorSpec(413, "invalid_request_error"),
    "insufficient_credits": ErrorSpec(402, "insufficient_credits_error"),
    "too_many_queued": ErrorSpec(429, "rate_limit_error"),
    "too_many_requests": ErrorSpec(429, "rate_limit_error"),
    "quota_exceeded": ErrorSpec(403, "invalid_request_error"),
    "request_timeout": ErrorSpec(408, "invalid_request_error"),
    "invalid_api_key": ErrorSpec(401, "authentication_error"),
    "not_found": ErrorSpec(404, "not_found_error"),
    "method_not_allowed": ErrorSpec(405, "invalid_request_error"),
    "job_not_found": ErrorSpec(404, "not_found_error"),
    "job_not_cancellable": ErrorSpec(409, "conflict_error"),
    "job_not_ended": ErrorSpec(409, "conflict_error"),
    "deadline_exceeded": ErrorSpec(504, "server_error"),
    "cancelled": ErrorSpec(499, "invalid_request_error"),
    "wait_timeout": ErrorSpec(408, "server_error"),
    "no_workers": ErrorSpec(503, "server_error"),
    "worker_lost": ErrorSpec(500, "server_error"),
    "internal_error": ErrorSpec(500, "server_error"),
    "redis_unusable": ErrorSpec(503, "server_error"),
    "redis_unavailable": ErrorSpec(503, "server_error"),
    # the provider refused the caller's request: the caller's fault (400, the type OpenAI's SDKs map
    # to BadRequestError, like our own invalid_request), final: no retry, no breaker, no fallback
    "upstream_invalid_request": ErrorSpec(400, "invalid_request_error"),
    # upstream outcomes: try again later / count against breaker / move on to fallback / call the
    # same deployment again at once. A timeout (no headers, no first token, a stall) moves on: a
    # deployment that was silent gets no second chance inside the job. A 429 waits only by the
    # walk's Retry-After policy (per model in the catalog)
    "rate_limited": ErrorSpec(502, "upstream_error", retryable=True, breaker=False, fallback=True),
    "overloaded": ErrorSpec(
        502, "upstream_error", retryable=True, breaker=True, fallback=True, retry_here=True
    ),
    "upstream_error": ErrorSpec(
        502, "upstream_error", retryable=True, breaker=True, fallback=True, retry_here=True
    ),
    "timeout": ErrorSpec(502, "upstream_error", retryable=True, breaker=True, fallback=True),
    "connection_error": ErrorSpec(
        502, "upstream_error", retryable=True, breaker=True, fallback=True, retry_here=True
    ),
    "bad_response": ErrorSpec(
        502, "upstream_error", retryable=True, breaker=True, fallback=True, retry_here=True
    ),
    "context_length_exceeded": ErrorSpec(502, "upstream_error", fallback=True),
    "content_filtered": ErrorSpec(502, "upstream_error"),
    "auth_failed": ErrorSpec(502, "upstream_error", breaker=True, fallback=True),
    "upstream_not_found": ErrorSpec(502, "upstream_error", breaker=True, fallback=True),
    "provider_out_of_credits": ErrorSpec(502, "upstream_error", breaker=True, fallback=True),
    "no_deployment": ErrorSpec(502, "upstream_error"),
    # a deployment skipped without a call: open breaker or rate limit (it will be back), or out of
    # rotation after our key or the model was refused (it will not, until a cooldown or a reset)
    "breaker_open": ErrorSpec(502, "upstream_error", retryable=True, fallback=True),
    "rate_limit_reached": ErrorSpec(502, "upstream_error", retryable=True, fallback=True),
    "deployment_disabled": ErrorSpec(502, "upstream_error", fallback=True),
    # tokens already went out to a client when the upstream stream broke: the deployment's breaker
    # counts it; the walk continues the answer on a fallback that can take it as a prefill (never
    # a plain fallback, which would start the answer over), else the job ends with the partial text
    "stream_interrupted": ErrorSpec(502, "upstream_error", breaker=True),
    "all_deployments_failed": ErrorSpec(502, "upstream_error", retryable=True),
}


class RouterError(Exception):
    """Base of every llm-router error; ``code`` selects the behaviour from ``ERROR_TABLE``."""

    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        http_status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.param = param
        # the status the upstream answered with, kept for attempts; distinct from our own status
        self.http_status = http_status
        self.retry_after = retry_after

    @property
    def spec(self) -> ErrorSpec:
        return ERROR_TABLE.get(self.code, ERROR_TABLE["internal_error"])

    @property
    def status(self) -> int:
        return self.spec.status

    @property
    def type(self) -> str:
        return self.spec.type

    @property
    def retryable(self) -> bool:
        return self.spec.retryable

    @property
    def retry_here(self) -> bool:
        return self.spec.retry_here

    def to_dict(self) -> dict[str, Any]:
        """The error object: the same shape in records, the CLI and the HTTP API."""
        return {
            "code": self.code,
            "status": self.status,
            "message": self.message,
            "param": self.param,
            "type": self.type,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RouterError:
        """Rebuild the most specific error class for an error object read from a record."""
        code = str(data.get("code") or "internal_error")
        klass = _BY_CODE.get(code, RouterError)
        return klass(str(data.get("message") or code), param=data.get("param"), code=code)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class RequestError(RouterError):
    """The caller's request is wrong; refused before anything is enqueued."""


class InvalidRequest(RequestError):
    code = "invalid_request"


class UnsupportedCapability(RequestError):
    code = "unsupported_capability"


class ModelNotFound(RequestError):
    code = "model_not_found"


class IdempotencyConflict(RequestError):
    code = "idempotency_conflict"


class PayloadTooLarge(RequestError):
    code = "payload_too_large"


class InsufficientCredits(RequestError):
    """The tenant's remaining credit does not cover the job's reservation (its worst-case cost)."""

    code = "insufficient_credits"


class TooManyQueued(RequestError):
    """The tenant has more jobs queued or running than its limit; ``retry_after`` says when to retry."""

    code = "too_many_queued"


class TooManyRequests(RequestError):
    """The tenant has its limit of HTTP requests in progress on this server; ``retry_after`` says when."""

    code = "too_many_requests"


class QuotaExceeded(RequestError):
    """A tenant's stored files would pass its count or bytes limit."""

    code = "quota_exceeded"


class RequestTimeout(RequestError):
    """The request's body did not arrive within the server's time for it (a slow or stalled client)."""

    code = "request_timeout"


class AccessError(RouterError):
    """The HTTP API's own refusals: who is calling, and what they may see."""


class InvalidApiKey(AccessError):
    code = "invalid_api_key"


class ResourceNotFound(AccessError):
    """An id the caller cannot see: unknown, expired, or another tenant's (the same answer)."""

    code = "not_found"


class JobError(RouterError):
    """Something about a job as a whole (lookup, deadline, cancellation, waiting)."""


class JobNotFound(JobError):
    code = "job_not_found"


class JobNotCancellable(JobError):
    code = "job_not_cancellable"


class JobNotEnded(JobError):
    code = "job_not_ended"


class DeadlineExceeded(JobError):
    code = "deadline_exceeded"


class JobCancelled(JobError):
    code = "cancelled"


class WaitTimeout(JobError):
    code = "wait_timeout"


class NoWorkers(JobError):
    code = "no_workers"


class WorkerLost(JobError):
    """The job's runs kept ending with their worker's death: it fails rather than take down more."""

    code = "worker_lost"


class RedisUnusable(RouterError):
    """Redis cannot be used safely or at all: unreachable, a read-only replica, out of memory, or set
    to evict keys; the process stops with this reason rather than run on it."""

    code = "redis_unusable"


class RedisUnavailable(RouterError):
    """Redis did not answer within ``LLM_ROUTER_REDIS_TIMEOUT_S`` (or refused the connection): the
    call failed, not the job; ``retry_after`` says when to try again (an accepted job goes on)."""

    code = "redis_unavailable"

    def __init__(self, message: str, *, retry_after: float | None = 1.0, **kwargs: Any) -> None:
        super().__init__(message, retry_after=retry_after, **kwargs)


class UpstreamFailure(RouterError):
    """A provider failed; ``code`` is the class of failure from the taxonomy."""

    code = "upstream_error"


class RateLimited(UpstreamFailure):
    code = "rate_limited"


class Overloaded(UpstreamFailure):
    code = "overloaded"


class UpstreamError(UpstreamFailure):
    code = "upstream_error"


class UpstreamTimeout(UpstreamFailure):
    code = "timeout"


class UpstreamConnectionError(UpstreamFailure):
    code = "connection_error"


class BadResponse(UpstreamFailure):
    code = "bad_response"


class ContextLengthExceeded(UpstreamFailure):
    code = "context_length_exceeded"


class ContentFiltered(UpstreamFailure):
    code = "content_filtered"


class AuthFailed(UpstreamFailure):
    code = "auth_failed"


class UpstreamNotFound(UpstreamFailure):
    """The provider answered 404: the deployment's model (or its URL) is gone there."""

    code = "upstream_not_found"


class UpstreamInvalidRequest(UpstreamFailure):
    """The provider refused the caller's request: the caller's fault, so no breaker, no fallback.

    Its own code (not ``invalid_request``) so a record tells whether we or the provider refused;
    status and type are the same, which is what clients branch on."""

    code = "upstream_invalid_request"


class ProviderOutOfCredits(UpstreamFailure):
    code = "provider_out_of_credits"


class NoDeployment(UpstreamFailure):
    code = "no_deployment"


class DeploymentDisabled(UpstreamFailure):
    code = "deployment_disabled"


class StreamInterrupted(UpstreamFailure):
    """Tokens went out to a client, then the upstream stream broke (``cause``: the code of how)."""

    code = "stream_interrupted"

    def __init__(
        self, message: str, *, partial_text: str = "", cause: str = "upstream_error", **kwargs: Any
    ) -> None:
        super().__init__(message, **kwargs)
        self.partial_text = partial_text
        self.cause = cause


class AllDeploymentsFailed(UpstreamFailure):
    code = "all_deployments_failed"


def _index(root: type[RouterError]) -> dict[str, type[RouterError]]:
    """Code → the one leaf class raising it (the bases' codes are only defaults)."""
    found: dict[str, type[RouterError]] = {}
    stack = [root]
    while stack:
        klass = stack.pop()
        subclasses = klass.__subclasses__()
        stack.extend(subclasses)
        if subclasses:
            continue
        if klass.code in found:
            other = found[klass.code].__name__
            raise TypeError(f"{klass.__name__} and {other} share the code {klass.code!r}")
        found[klass.code] = klass
    return found


_BY_CODE = _index(RouterError)
