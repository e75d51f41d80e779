"""Traces of jobs, in one process with the SDK's in-memory exporter: the caller's span, the HTTP
request's, the worker's job, its queue wait, its provider calls and its record, in one trace."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from config.catalog import Catalog
from config.settings import Settings
from llm_router import tracing
from llm_router.keys import record_key
from llm_router.simulator import FaultRule, SimConfig, SimServer, start_simulator
from llm_router.tracing import Tracing, format_traceparent
from producer.http.app import build_app
from producer.http.auth import ApiKeys
from producer.producer import Producer
from worker import observe
from worker.app import build_worker

HI = [{"role": "user", "content": "hi"}]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:  # in this process: its faults are set directly
    server = await start_simulator(SimConfig())
    yield server
    await server.close()


def _catalog(tmp_path: Path, sim_url: str) -> Catalog:
    spec = {
        "providers": {"sim": {"base_url": f"{sim_url}/v1", "key_env": "SIM_KEY"}},
        "models": {
            "m": {
                "vendor": "x",
                "price": {"input": 1, "output": 2},
                "deployments": [{"provider": "sim", "model": "m-up"}],
            }
        },
    }
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(spec))
    return Catalog.from_path(path, env={"SIM_KEY": "sk-sim-0123456789abcdef"})


class Traced:
    def __init__(
        self, exporter: InMemorySpanExporter, producer: Producer, settings: Settings, catalog: Catalog
    ):
        self.exporter = exporter
        self.producer = producer
        self.settings = settings
        self.catalog = catalog

    async def drain(self) -> None:
        """Run a worker in this process until the queue is empty."""
        worker = build_worker(self.settings, self.catalog, burst=True, handle_signals=False)
        try:
            await worker.main()
        finally:
            await worker.close()

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())


@pytest.fixture
async def traced(redis_server: Any, sim: SimServer, tmp_path: Path) -> AsyncIterator[Traced]:
    exporter = InMemorySpanExporter()
    tracing.install(Tracing.with_exporter(exporter))
    settings = Settings(
        _env_file=None,
        redis_url=redis_server.url,
        queue_name=f"trace-{uuid.uuid4().hex[:8]}",
        retry_backoff_s=0.05,
        heartbeat_interval_s=0.2,
    )
    catalog = _catalog(tmp_path, sim.url)
    producer = await Producer.connect(settings, catalog)
    yield Traced(exporter, producer, settings, catalog)
    await producer.close()
    observe.uninstall()
    tracing.reset()


def _one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


async def test_a_job_submitted_in_a_span_joins_its_trace(traced: Traced) -> None:
    tracer = tracing.process_tracing(traced.settings).tracer  # type: ignore[union-attr]
    with tracer.start_as_current_span("caller") as caller:
        sub = await traced.producer.submit(
            {"model": "m", "messages": HI, "max_tokens": 20, "temperature": 0.5}
        )
    await traced.drain()
    record = await traced.producer.get(sub.job_id)
    assert record.status == "succeeded"
    spans = traced.spans()
    trace_id = caller.get_span_context().trace_id
    assert {s.context.trace_id for s in spans} == {trace_id}
    job = _one(spans, "llm_router.job")
    assert job.parent is not None and job.parent.span_id == caller.get_span_context().span_id
    assert job.kind is SpanKind.CONSUMER
    assert job.attributes["llm_router.job_id"] == sub.job_id
    assert job.attributes["gen_ai.request.model"] == "m"
    assert job.attributes["llm_router.cost_usd"] == record.usage.cost  # type: ignore[union-attr]
    assert job.start_time == pytest.approx(record.created_at * 1e9, abs=2e6)  # the trace covers the wait
    [started] = job.events  # the end of the queue wait
    assert started.name == "started" and started.timestamp == pytest.approx(record.started_at * 1e9, abs=2e6)  # type: ignore[operator]
    wait_ms = (record.started_at - record.created_at) * 1000  # type: ignore[operator]
    assert job.attributes["llm_router.queue_wait_ms"] == pytest.approx(wait_ms, abs=2)
    call = _one(spans, "chat m-up")
    assert call.kind is SpanKind.CLIENT and call.parent.span_id == job.context.span_id  # type: ignore[union-attr]
    attrs = call.attributes
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == "m-up"
    assert attrs["gen_ai.provider.name"] == "sim" and attrs["gen_ai.system"] == "sim"
    assert attrs["gen_ai.response.model"] == "m-up"
    assert attrs["gen_ai.request.max_tokens"] == 20 and attrs["gen_ai.request.temperature"] == 0.5
    assert attrs["gen_ai.usage.input_tokens"] == record.usage.prompt_tokens  # type: ignore[union-attr]
    assert attrs["gen_ai.usage.output_tokens"] == record.usage.completion_tokens  # type: ignore[union-attr]
    assert attrs["gen_ai.response.finish_reasons"] == (record.response["choices"][0]["finish_reason"],)  # type: ignore[index]
    latency = record.attempts[0].latency_ms
    assert (call.end_time - call.start_time) / 1e6 == pytest.approx(latency, abs=1)  # type: ignore[operator]
    assert job.end_time >= call.end_time and job.attributes["llm_router.record_ms"] >= 0  # type: ignore[operator]
    assert len(spans) == 3  # the caller's, the job's, its call
    # the trace context rides in the record, not in what goes upstream
    assert "traceparent" not in record.request
    raw = await traced.producer.redis.hget(record_key(traced.producer.scoped(sub.job_id)), "traceparent")
    assert raw.decode().split("-")[1] == f"{trace_id:032x}"


async def test_a_job_outside_any_span_is_its_own_trace(traced: Traced) -> None:
    subs = [await traced.producer.submit({"model": "m", "messages": HI}) for _ in range(2)]
    await traced.drain()
    jobs = [s for s in traced.spans() if s.name == "llm_router.job"]
    assert len(jobs) == 2 and all(j.parent is None for j in jobs)
    assert len({j.context.trace_id for j in jobs}) == 2  # one trace per job
    assert (
        await traced.producer.redis.hget(record_key(traced.producer.scoped(subs[0].job_id)), "traceparent")
        is None
    )


async def test_a_failed_call_and_a_deferral_stay_in_the_job_s_trace(traced: Traced, sim: SimServer) -> None:
    # the first run's call and its retry fail (503): the job is deferred and its second run answers
    sim.add_faults([FaultRule(model="m-up", kind="status", status=503, count=2)])
    sub = await traced.producer.submit({"model": "m", "messages": HI})
    await traced.drain()
    record = await traced.producer.get(sub.job_id)
    assert record.status == "succeeded" and record.runs == 2
    spans = traced.spans()
    runs = sorted((s for s in spans if s.name == "llm_router.job"), key=lambda s: s.start_time or 0)
    assert [r.attributes["llm_router.run"] for r in runs] == [1, 2]
    assert [r.attributes["llm_router.status"] for r in runs] == ["deferred", "succeeded"]
    assert len({s.context.trace_id for s in spans}) == 1
    assert runs[1].parent.span_id == runs[0].context.span_id  # type: ignore[union-attr]
    calls = sorted((s for s in spans if s.name == "chat m-up"), key=lambda s: s.start_time or 0)
    assert [c.status.status_code for c in calls] == [StatusCode.ERROR, StatusCode.ERROR, StatusCode.UNSET]
    assert calls[0].attributes["error.type"] == record.attempts[0].error_code == "overloaded"
    assert calls[0].attributes["http.response.status_code"] == 503


async def test_an_http_request_s_trace_reaches_the_worker(traced: Traced) -> None:
    app = build_app(traced.settings, traced.catalog, redis=traced.producer.redis)
    key = await ApiKeys(traced.producer.redis).create("acme")
    caller_trace, caller_span = 0x1234ABCD << 64 | 0x42, 0xBEEF
    async with TestClient(TestServer(app)) as client:
        resp = await client.post(
            "/v1/jobs",
            json={"model": "m", "messages": HI},
            headers={
                "Authorization": f"Bearer {key}",
                "traceparent": format_traceparent(caller_trace, caller_span, 1),
            },
        )
        assert resp.status == 201, await resp.text()
        job_id = (await resp.json())["id"]
        await traced.drain()
    spans = traced.spans()
    server = _one(spans, "POST /v1/jobs")
    assert server.kind is SpanKind.SERVER
    assert server.context.trace_id == caller_trace and server.parent.span_id == caller_span  # type: ignore[union-attr]
    assert (
        server.attributes["http.response.status_code"] == 201
        and server.attributes["llm_router.tenant"] == "acme"
    )
    job = _one(spans, "llm_router.job")
    assert job.attributes["llm_router.job_id"] == job_id and job.attributes["llm_router.tenant"] == "acme"
    assert job.context.trace_id == caller_trace and job.parent.span_id == server.context.span_id  # type: ignore[union-attr]


async def test_a_sampled_out_trace_records_nothing_and_the_job_still_runs(traced: Traced) -> None:
    exporter = InMemorySpanExporter()
    tracing.install(Tracing.with_exporter(exporter, sample_ratio=0.0))
    observe.uninstall()
    sub = await traced.producer.submit({"model": "m", "messages": HI})
    await traced.drain()
    assert (await traced.producer.get(sub.job_id)).status == "succeeded"
    assert exporter.get_finished_spans() == ()


def test_everything_imports_and_runs_without_opentelemetry(tmp_path: Path) -> None:
    code = """
import sys
for name in ("opentelemetry", "opentelemetry.trace", "opentelemetry.context", "opentelemetry.sdk"):
    sys.modules[name] = None  # as if the [otel] extra were not installed
from config.settings import Settings
from llm_router import tracing
from producer.http import app
from worker import app as worker_app, observe
assert not tracing.available()
settings = Settings(_env_file=None, otel=True)
assert tracing.process_tracing(settings) is None
assert tracing.job_trace_fields(settings) == []
print("ok")
"""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={"PYTHONPATH": str(ROOT)}, capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "ok", out.stderr


def test_tracing_is_off_unless_asked_for() -> None:
    settings = Settings(_env_file=None)
    assert not tracing.wanted(settings, env={})
    assert tracing.wanted(settings, env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing.wanted(Settings(_env_file=None, otel=True), env={})
    assert not tracing.wanted(Settings(_env_file=None, otel=True), env={"OTEL_SDK_DISABLED": "true"})


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        (
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            (0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, 1),
        ),
        ("00-00000000000000000000000000000000-b7ad6b7169203331-01", None),  # an all-zero trace id
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331", None),
        ("garbage", None),
    ],
)
def test_traceparents_are_parsed_strictly(value: str, parsed: Any) -> None:
    assert tracing.parse_traceparent(value) == parsed
