"""What a worker process records of each job: metrics, trace spans, the log context and the recent-jobs list.

The job's code calls one-line hooks; everything else is here:

* ``job_begins(runner, job_id)``, the first line of ``JobRunner.run``: the job's context for log
  lines; in flight +1.
* ``await job_started(request, route, runs, attempts, …)``, in ``JobRunner.run`` once the start
  script answered (with the record's tenant, trace context and times, which that script reads: no
  round trip of its own): the queue wait; the job's span (joining the caller's trace).
* ``first_token()``, in ``worker.streaming.stream_call``: a streamed call's first token.
* ``recording(fields)``, in ``JobRunner._write``: the record change the run ends with (final,
  deferred, put back).
* ``job_done()``, in ``LeasedWorker.run_job``'s ``finally``: the run's metrics and spans, from
  what the record says (each call's latency, retries, fallback, deferral, tokens, cost); in flight -1.

Calls are read back from the attempts the walk wrote into the record, so the walk itself has no
hook: its per-call work stays what it was. Hooks do nothing until ``install`` ran in the process
(``worker.app.build_worker`` does), and never let an error reach the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from typing import Any

import orjson
import structlog
from redis.asyncio import Redis

from config.catalog import Catalog
from config.settings import Settings
from llm_router import tracing as tr
from llm_router.keys import RECENT_KEY
from llm_router.log_setup import bind_job, current_job
from llm_router.metrics import Exposition, FleetReader, Metrics
from worker.metrics_server import MetricsServer

log = structlog.get_logger("llm_router.worker")

RECENT_MAX = 500  # ended jobs the dashboard lists
RECENT_FLUSH_S = 1.0
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


def _status(value: Any) -> str:
    return getattr(value, "value", value)


class JobObs:
    """One run of one job as observed: the log context of its lines, and what its metrics and
    spans need at the end."""

    __slots__ = (
        "attempts",
        "begun",
        "created_at",
        "fields",
        "first_token_at",
        "inflight",
        "job_id",
        "n0",
        "observer",
        "queue",
        "recording",
        "request",
        "route",
        "runs",
        "started_at",
        "tenant",
        "trace",
        "traceparent",
        "write_started",
    )

    def __init__(self, observer: Observer, job_id: str, queue: str, inflight: dict[str, Any]) -> None:
        self.observer = observer
        self.job_id = job_id
        self.queue = queue
        self.inflight = inflight
        self.begun = time.time()
        self.tenant: str | None = None
        self.traceparent: str | None = None
        self.created_at: float | None = None
        self.started_at: float | None = None
        self.route: list[str] | None = None
        self.request: dict[str, Any] | None = None
        self.runs = 0
        self.attempts: list[dict[str, Any]] | None = None
        self.n0 = 0
        self.fields: dict[str, Any] | None = None
        self.write_started = 0.0
        self.first_token_at: float | None = None
        # (trace id, this run's span id, parent span id or 0, sampled): decided when the run starts
        self.trace: tuple[int, int, int, bool] | None = None
        self.recording = False

    def log_fields(self) -> dict[str, Any]:
        """The job, model, tenant, and the call in flight (or the last one): bound to every line."""
        out: dict[str, Any] = {"job_id": self.job_id.partition("/")[2] or self.job_id, "tenant": self.tenant}
        if self.route:
            out["model"] = self.route[0]
        attempts = self.attempts
        call = self.inflight.get(self.job_id)
        if call is not None:
            out["provider"] = call.get("provider")
            if attempts is not None:
                out["attempt"] = len(attempts) + 1
        elif attempts:
            out["provider"] = attempts[-1].get("provider")
            out["attempt"] = len(attempts)
        if self.recording and self.trace is not None:
            out["trace_id"] = f"{self.trace[0]:032x}"
        return out


class Observer:
    """This process's metrics, tracing and recent-jobs buffer, shared by its arq workers."""

    def __init__(
        self, settings: Settings, catalog: Catalog, *, metrics: Metrics | None, tracing: tr.Tracing | None
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.metrics = metrics
        self.tracing = tracing
        self.labels = {settings.queue_name: "bulk", settings.interactive_queue_name: "interactive"}
        self.recent: deque[tuple[Any, ...]] = deque(maxlen=RECENT_MAX)
        self.server: MetricsServer | None = None
        self._users = 0
        self._flusher: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, catalog: Catalog) -> Observer:
        metrics = (
            None if settings.metrics_port is None else Metrics(tenant_label=settings.metrics_tenant_label)
        )
        return cls(
            settings, catalog, metrics=metrics, tracing=tr.process_tracing(settings, "llm-router-worker")
        )

    async def start(self, redis: Redis) -> None:
        """Once per process: the recent-jobs writer and, when a port is set, the metrics server."""
        self._users += 1
        if self._users > 1:
            return
        self._flusher = asyncio.get_running_loop().create_task(self._flush_recent(redis))
        if self.metrics is not None and self.settings.metrics_port is not None:
            s = self.settings
            catalog = self.catalog
            deployments = [d.id for m in catalog.models for d in catalog.deployments(m, enabled_only=False)]
            fleet = FleetReader(
                redis,
                queues={"bulk": s.queue_name, "interactive": s.interactive_queue_name},
                deployments=deployments,
                heartbeat_ttl_s=s.heartbeat_ttl_s,
                scan_limit=s.metrics_scan_limit,
                timeout_s=s.metrics_read_timeout_s,
            )
            self.server = MetricsServer(
                exposition=Exposition(self.metrics),
                fleet=fleet,
                redis=redis,
                host=s.metrics_host,
                port=s.metrics_port,
                ready_timeout_s=s.ready_timeout_s,
            )
            await self.server.start()

    async def release(self) -> None:
        """A worker of this process stopped; the last one stops the server and writes what is left
        (recent jobs, spans not exported yet)."""
        self._users -= 1
        if self._users > 0:
            return
        provider = self.tracing.provider if self.tracing is not None else None
        if provider is not None and hasattr(provider, "force_flush"):
            try:
                await asyncio.get_running_loop().run_in_executor(None, provider.force_flush, 5000)
            except Exception as exc:  # a collector that is away must not hold the worker's stop
                log.warning("spans not flushed", error=repr(exc))
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(BaseException):
                await self._flusher
            self._flusher = None
        if self.server is not None:
            await self.server.stop()
            self.server = None

    async def _flush_recent(self, redis: Redis) -> None:
        try:
            while True:
                await asyncio.sleep(RECENT_FLUSH_S)
                await self._write_recent(redis)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._write_recent(redis))

    async def _write_recent(self, redis: Redis) -> None:
        if not self.recent:
            return
        batch = [_summary(*entry) for entry in self.recent]
        self.recent.clear()
        try:
            async with redis.pipeline(transaction=False) as pipe:
                pipe.lpush(RECENT_KEY, *batch)  # oldest first, so the newest ends at the head
                pipe.ltrim(RECENT_KEY, 0, RECENT_MAX - 1)
                await pipe.execute()
        except Exception as exc:  # the dashboard misses these; jobs are unaffected
            log.debug("recent jobs not written", error=repr(exc))

    # -- the end of a run ---------------------------------------------------------------------------

    def finish(self, obs: JobObs) -> None:
        now = time.time()
        m = self.metrics
        if m is not None:
            m.in_flight.inc((obs.queue,), -1)
        fields = obs.fields
        if fields is None:
            return
        status = _status(fields["status"])
        attempts = fields.get("attempts") or ()
        new = attempts[obs.n0 :] if obs.attempts is not None else []
        route0 = obs.route[0] if obs.route else str(fields.get("model") or "unknown")
        model = str(fields.get("model") or route0)
        if m is not None:
            self._record(m, obs, fields, status, new, route0, model, now)
        if status in TERMINAL:  # encoded when written: at most RECENT_MAX a second, whatever the rate
            self.recent.append(
                (obs.job_id, obs.tenant, obs.created_at, fields, status, model, len(attempts), now)
            )
        if obs.recording:
            self._spans(obs, fields, status, new, model, now)

    def _record(
        self,
        m: Metrics,
        obs: JobObs,
        fields: dict[str, Any],
        status: str,
        new: list[dict[str, Any]],
        route0: str,
        model: str,
        now: float,
    ) -> None:
        prev: dict[str, Any] | None = None
        for a in new:
            latency = a.get("latency_ms")
            if latency is not None and a.get("outcome") in ("success", "error"):
                key = (a["provider"], a["model"])
                m.upstream_latency.observe(key, latency / 1000)
                if (
                    prev is not None
                    and prev.get("outcome") == "error"
                    and prev["provider"] == a["provider"]
                    and prev["upstream_model"] == a["upstream_model"]
                ):
                    m.retries.inc(key)
            prev = a
        if obs.first_token_at is not None and new:
            last = new[-1]
            m.ttft.observe(
                (last["provider"], last["model"]), max(obs.first_token_at - last["started_at"], 0.0)
            )
        if status in TERMINAL:
            m.jobs.inc((status, model, str(fields.get("provider") or "none")))
            if obs.started_at is not None:
                m.job_duration.observe(
                    (model, status), max(fields.get("finished_at", now) - obs.started_at, 0.0)
                )
            if fields.get("fallback_used"):
                m.fallbacks.inc((route0,))
            usage = fields.get("usage")
            if usage:
                m.usage(
                    model,
                    obs.tenant or "default",
                    int(usage.get("prompt_tokens") or 0),
                    int(usage.get("completion_tokens") or 0),
                    int(usage.get("cost_nanos") or 0),
                )
        elif status == "deferred":
            m.deferrals.inc((obs.queue,))

    def _spans(
        self,
        obs: JobObs,
        fields: dict[str, Any],
        status: str,
        new: list[dict[str, Any]],
        model: str,
        now: float,
    ) -> None:
        """The run's spans, finished: the job's (from its creation on the first run: the queue wait
        is its ``started`` event; to the record's write) and one per provider call."""
        tracing = self.tracing
        assert tracing is not None and obs.trace is not None
        trace_id, span_id, parent_id, _ = obs.trace
        request = obs.request or {}
        for a in new:
            latency = a.get("latency_ms")
            if latency is None:  # a call cut short by a worker that died: its length is unknown
                continue
            began = float(a.get("started_at") or now)
            attrs = tr.attempt_attributes(a, request)
            error = None
            if a.get("outcome") == "success":
                attrs.update(tr.response_attributes(fields, a.get("upstream_model")))
                if obs.first_token_at is not None:
                    attrs["gen_ai.response.time_to_first_chunk"] = obs.first_token_at - began
            elif a.get("error_code"):
                error = (str(a["error_code"]), "")
            tracing.emit(
                f"chat {a.get('upstream_model') or a.get('model')}",
                trace_id=trace_id,
                span_id=_span_id(),
                parent_id=span_id,
                kind="client",
                start_s=began,
                end_s=began + latency / 1000,
                attributes=attrs,
                error=error,
            )
        started = obs.started_at or obs.begun
        first = obs.runs == 1 and obs.created_at is not None
        attrs = {
            "llm_router.job_id": obs.job_id.partition("/")[2] or obs.job_id,  # without its tenant
            "llm_router.tenant": obs.tenant or "default",
            "llm_router.run": obs.runs,
            "llm_router.status": status,
            "gen_ai.request.model": (obs.route or [model])[0],
            "llm_router.record_ms": round((now - (obs.write_started or now)) * 1000, 3),
        }
        if first:
            attrs["llm_router.queue_wait_ms"] = round((started - obs.created_at) * 1000, 3)  # type: ignore[operator]
        usage = fields.get("usage") or {}
        if status in TERMINAL and usage:  # the tokens are on the call's span
            attrs["llm_router.cost_usd"] = float(usage.get("cost") or 0.0)
        error = fields.get("error")
        tracing.emit(
            "llm_router.job",
            trace_id=trace_id,
            span_id=span_id,
            parent_id=parent_id or None,
            remote_parent=bool(parent_id),
            kind="consumer",
            start_s=obs.created_at if first else started,  # type: ignore[arg-type]
            end_s=now,
            attributes=attrs,
            error=(str(error.get("code")), str(error.get("message") or "")[:200])
            if status == "failed" and error
            else None,
            events={"started": started} if first else None,
        )


def _span_id() -> int:
    return random.getrandbits(64) or 1


def _summary(
    job_id: str,
    tenant: str | None,
    created_at: float | None,
    fields: dict[str, Any],
    status: str,
    model: str,
    attempts: int,
    now: float,
) -> bytes:
    """A line of the dashboard's recent jobs (the record itself is one click away)."""
    usage = fields.get("usage") or {}
    error = fields.get("error") or {}
    return orjson.dumps(
        {
            "id": job_id.partition("/")[2] or job_id,  # the job's own id; its tenant beside it
            "tenant": tenant or "default",
            "status": status,
            "model": model,
            "provider": fields.get("provider"),
            "cost": usage.get("cost", 0.0),
            "tokens": usage.get("total_tokens", 0),
            "created_at": created_at,
            "finished_at": fields.get("finished_at", now),
            "error": error.get("code"),
            "attempts": attempts,
        }
    )


# -- the process's observer and the hooks ------------------------------------------------------------

_observer: Observer | None = None


def install(settings: Settings, catalog: Catalog) -> Observer:
    """This process's observer (one for all its arq workers; built again when the settings differ)."""
    global _observer
    if _observer is None or _observer.settings != settings:
        _observer = Observer.from_settings(settings, catalog)
    return _observer


def uninstall() -> None:
    """Hooks do nothing from now on (tests)."""
    global _observer
    _observer = None


def job_begins(runner: Any, job_id: str) -> None:
    """A run starts (``runner`` is the ``JobRunner``)."""
    observer = _observer
    if observer is None:
        return
    try:
        obs = JobObs(observer, job_id, observer.labels.get(runner.store.queue_name, "bulk"), runner.inflight)
        bind_job(obs)
        if observer.metrics is not None:
            observer.metrics.in_flight.inc((obs.queue,), 1)
    except Exception:
        log.warning("observing a job failed", exc_info=True)


async def job_started(
    request: dict[str, Any],
    route: list[str],
    runs: int,
    attempts: list[dict[str, Any]],
    *,
    tenant: str = "",
    traceparent: str = "",
    created_at: float | None = None,
    first_started_at: float | None = None,
) -> None:
    """The start script answered: the job's request, route, run number and attempts so far, and
    from its record the tenant, the caller's trace context, when it was created and when its first
    run started (the script, or the claim that ran it, set that for a first run)."""
    obs = current_job()
    if not isinstance(obs, JobObs):
        return
    try:
        obs.request, obs.route, obs.runs, obs.attempts, obs.n0 = (
            request,
            route,
            int(runs),
            attempts,
            len(attempts),
        )
        obs.tenant = tenant or "default"
        obs.traceparent = traceparent or None
        obs.created_at = created_at
        obs.started_at = first_started_at if first_started_at is not None else obs.begun
        observer = obs.observer
        first = obs.runs == 1 and obs.created_at is not None and obs.started_at is not None
        if first and observer.metrics is not None:
            observer.metrics.queue_wait.observe((obs.queue,), max(obs.started_at - obs.created_at, 0.0))  # type: ignore[operator]
        if observer.tracing is not None:
            _start_trace(observer.tracing, obs)
    except Exception:
        log.warning("observing a job failed", exc_info=True)


def _start_trace(tracing: tr.Tracing, obs: JobObs) -> None:
    """This run's place in a trace: under the record's trace context, or a new trace (sampled once)."""
    parsed = tr.parse_traceparent(obs.traceparent) if obs.traceparent else None
    if parsed is not None:
        trace_id, parent_id, flags = parsed
        sampled = bool(flags & 1)
    else:
        trace_id, parent_id = random.getrandbits(128) or 1, 0
        sampled = tracing.sample_root(trace_id, "llm_router.job")
    obs.trace = (trace_id, _span_id(), parent_id, sampled)
    obs.recording = sampled and tracing.can_emit


def first_token() -> None:
    """A streamed call published its first token (later calls of the same stream change nothing)."""
    obs = current_job()
    if obs is not None and getattr(obs, "first_token_at", 0) is None:
        obs.first_token_at = time.time()  # type: ignore[attr-defined]


def recording(fields: dict[str, Any]) -> None:
    """The run writes ``fields`` to the record; a job that will run again keeps its trace."""
    obs = current_job()
    if not isinstance(obs, JobObs):
        return
    obs.fields = fields
    obs.write_started = time.time()
    if (
        obs.trace is not None
        and obs.traceparent is None
        and _status(fields.get("status")) not in TERMINAL
        and tr.TRACEPARENT_FIELD not in fields
    ):
        trace_id, span_id, _, sampled = obs.trace
        fields[tr.TRACEPARENT_FIELD] = tr.format_traceparent(trace_id, span_id, int(sampled))


def handoff(queue_name: str, outcome: str) -> None:
    """A job handed to this worker (README "Hand-offs"): ``run``, ``taken_back`` (its message was lost
    and the worker's claim took it back) or ``late`` (a message that came after all: ignored)."""
    observer = _observer
    if observer is None or observer.metrics is None:
        return
    observer.metrics.handoffs.inc((observer.labels.get(queue_name, "bulk"), outcome))


def job_done() -> None:
    """The run is over (the record written, or the job deferred, put back or abandoned)."""
    obs = current_job()
    if not isinstance(obs, JobObs):
        return
    bind_job(None)
    try:
        obs.observer.finish(obs)
    except Exception:
        log.warning("observing a job failed", exc_info=True)
