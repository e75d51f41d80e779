"""What seeing the fleet costs a worker: drain throughput and worker CPU per job with metrics and traces.

One worker drains a pre-filled queue of chat jobs (claim → simulator at 0 ms → record with cost),
as in ``bench/throughput.py``'s "ours" row, under four configurations:

* **off**: no metrics port, no tracing (what every job pays anyway: the job's log context and the
  dashboard's recent-jobs list);
* **metrics**: ``LLM_ROUTER_METRICS_PORT=0`` (every job recorded; scraped every 2 s meanwhile, where
  Prometheus would every 15-60 s);
* **traces 10 %** and **traces 100 %**: ``LLM_ROUTER_OTEL=1`` with that sampling ratio, spans sent
  by OTLP/HTTP to a local sink that counts them (metrics off).

Runs are interleaved (off, metrics, traces 10 %, traces 100 %, then again in a rotated order); each
figure is the median over the rounds (three by default), "vs off" the ratio of the medians.
Targets: metrics within 3 % of off in worker CPU per job; traces at 10 % within 5 %.
``--baseline-src DIR`` adds a fifth configuration: the same drain with the code in DIR (say an
export of the commit before this change), to see what "off" itself costs.

The drain's figures move with whatever else the machine runs; a second table measures the worker's
hooks alone, in this process (the calls a run makes around a job with one call, Redis' reply
already there, spans encoded for OTLP): the CPU each configuration adds per job, steadier.

Prints the tables and writes ``bench/results/observability-DATE.json``. Run with ``make bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import uvloop
from output import write_json  # bench/output.py, beside this script
from rich.console import Console
from rich.table import Table

from config.catalog import Catalog
from config.settings import Settings
from llm_router.testing.redis_server import RedisServer, free_port
from llm_router.testing.sim_env import simulated_env
from producer.producer import Producer

ROOT = Path(__file__).resolve().parent.parent
CHAT = {"model": "gpt-4o-mini", "max_tokens": 32, "messages": [{"role": "user", "content": "Say hello."}]}
CONFIGS = ("off", "metrics", "traces 10 %", "traces 100 %")


class Sink:
    """An OTLP/HTTP trace receiver that counts spans and drops them (a thread of the bench process)."""

    def __init__(self) -> None:
        self.spans = 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                sink.spans += _count_spans(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def _count_spans(body: bytes) -> int:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    return sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)


def config_env(config: str, sink: Sink) -> dict[str, str]:
    if config == "metrics":
        return {"LLM_ROUTER_METRICS_PORT": "0", "LLM_ROUTER_METRICS_HOST": "127.0.0.1"}
    if config.startswith("traces"):
        ratio = "0.1" if "10 %" in config and "100" not in config else "1.0"
        return {
            "LLM_ROUTER_OTEL": "1",
            "LLM_ROUTER_OTEL_SAMPLE_RATIO": ratio,
            "OTEL_EXPORTER_OTLP_ENDPOINT": sink.url,
            "OTEL_SERVICE_NAME": "llm-router-bench",
        }
    return {}


def drain(env: dict[str, str], src: Path, scrape: bool) -> dict[str, Any]:
    """One worker process draining the queue in burst mode; with ``scrape``, its /metrics is read
    every second while it drains (as Prometheus would)."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "drain_worker.py"), "ours"],
        env={**env, "PYTHONPATH": str(src)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    scrapes = 0
    if scrape:
        port = None
        while proc.poll() is None:
            time.sleep(0.05 if port is None else 2.0)
            port = port or _metrics_port(proc)
            if port is not None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                        r.read()
                        scrapes += 1
                except OSError:
                    pass
    out, err = proc.communicate(timeout=900)
    if proc.returncode != 0 or not out.strip():
        raise RuntimeError(f"worker failed: {err[-2000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["scrapes"] = scrapes
    return result


_ports: dict[int, int] = {}


def _metrics_port(proc: subprocess.Popen[str]) -> int | None:
    """The port a worker logged (``metrics serving``): read from its stderr as it starts."""
    if proc.pid in _ports:
        return _ports[proc.pid]
    assert proc.stderr is not None
    line = proc.stderr.readline()
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if obj.get("event") == "metrics serving":
        _ports[proc.pid] = int(obj["port"])
        return _ports[proc.pid]
    return None


async def fill(producer: Producer, n: int, tag: str) -> list[str]:
    jobs = [orjson.dumps({**CHAT, "messages": [{"role": "user", "content": f"{tag} {i}"}]}) for i in range(n)]
    subs = await producer.submit_many(jobs)
    return [s.job_id for s in subs]  # type: ignore[union-attr]


async def run(n: int, rounds: int, baseline: Path | None) -> dict[str, Any]:
    configs = [*CONFIGS, *(["baseline"] if baseline else [])]
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
    sink = Sink()
    with RedisServer() as server:
        port = free_port()
        sim = subprocess.Popen(
            [sys.executable, "-m", "llm_router.cli", "simulate", "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            sim_url = f"http://127.0.0.1:{port}"
            await _wait_http(f"{sim_url}/_sim/calls")
            env = simulated_env(os.environ, redis_url=server.url, sim_url=sim_url)
            env.update(LLM_ROUTER_LOG_LEVEL="INFO", LLM_ROUTER_LOG_FORMAT="json")
            for name in ("LLM_ROUTER_METRICS_PORT", "LLM_ROUTER_OTEL", "OTEL_EXPORTER_OTLP_ENDPOINT"):
                env.pop(name, None)
            for r in range(rounds):
                order = configs[r % len(configs) :] + configs[: r % len(configs)]
                for config in order:
                    queue = f"bench-obs-{r}-{configs.index(config)}"
                    settings = Settings(_env_file=None, redis_url=server.url, queue_name=queue)
                    producer = await Producer.connect(settings, Catalog.load(settings, env=env))
                    ids = await fill(producer, n, f"{r}-{config}")
                    spans0 = sink.spans
                    src = baseline if config == "baseline" else ROOT
                    result = drain(
                        {**env, **config_env(config, sink), "LLM_ROUTER_QUEUE_NAME": queue},
                        src,  # type: ignore[arg-type]
                        scrape=config == "metrics",
                    )
                    records = await producer.wait_many(ids, timeout=120)
                    assert all(rec.status == "succeeded" for rec in records), config
                    await producer.close()
                    await asyncio.sleep(1.5)  # the last spans' export (the sink counts them)
                    result["spans"] = sink.spans - spans0
                    runs[config].append(result)
                    print(
                        f"round {r + 1} {config:>13}: {result['jobs'] / result['seconds']:,.0f} jobs/s, "
                        f"{result['cpu_s'] / result['jobs'] * 1e6:.0f} CPU µs/job",
                        file=sys.stderr,
                    )
        finally:
            sim.terminate()
            sim.wait(timeout=10)
    return summarize(runs, n, rounds)


# -- the hooks alone, in this process -----------------------------------------------------------------

HOOK_FIELDS = {
    "status": "succeeded",
    "provider": "openai",
    "model": "gpt-4o-mini",
    "response": {"id": "chatcmpl-1", "choices": [{"index": 0, "finish_reason": "stop"}]},
    "usage": {
        "prompt_tokens": 14,
        "completion_tokens": 33,
        "total_tokens": 47,
        "cost": 2.2e-5,
        "cost_nanos": 22_000,
    },
    "fallback_used": False,
}


class _Encode:
    """A span exporter that encodes spans as OTLP/HTTP would, and sends them nowhere."""

    def export(self, spans: Any) -> Any:
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
        from opentelemetry.sdk.trace.export import SpanExportResult

        encode_spans(spans).SerializeToString()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


async def _hook_cost(config: str, n: int) -> float:
    """CPU µs per job of the worker's hooks (job_begins … job_done) under ``config``: the same
    calls a run makes, around a job that made one call, with Redis' reply already there."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

    from config.settings import DEFAULT_CATALOG
    from llm_router import tracing
    from llm_router.testing.sim_env import SIM_KEYS
    from worker import observe

    class Store:
        queue_name = "bench"

    class Runner:
        store = Store()
        inflight: dict[str, Any] = {}

    provider = None
    tracing.reset()
    observe.uninstall()
    if config.startswith("traces"):
        provider = TracerProvider(
            resource=Resource.create({"service.name": "bench"}), sampler=ParentBased(ALWAYS_ON)
        )
        provider.add_span_processor(BatchSpanProcessor(_Encode(), max_queue_size=1_000_000))
        ratio = 1.0 if "100" in config else 0.1
        tracing.install(tracing.Tracing(provider.get_tracer("bench"), provider, root_ratio=ratio))
    if config != "none":
        settings = Settings(
            _env_file=None, queue_name="bench", metrics_port=0 if config == "metrics" else None
        )
        observe.install(settings, Catalog.from_path(DEFAULT_CATALOG, env=SIM_KEYS, upstream="http://sim"))
    runner = Runner()
    request = {**CHAT}

    async def job(i: int) -> None:
        observe.job_begins(runner, f"job-{i}")
        attempts: list[dict[str, Any]] = []
        await observe.job_started(
            request, ["gpt-4o-mini"], 1, attempts, tenant="acme", created_at=time.time()
        )
        now = time.time()
        attempts.append(
            {
                "provider": "openai",
                "model": "gpt-4o-mini",
                "upstream_model": "gpt-4o-mini",
                "outcome": "success",
                "error_code": None,
                "http_status": 200,
                "latency_ms": 1.5,
                "started_at": now,
                "breaker": "closed",
            }
        )
        observe.recording({**HOOK_FIELDS, "finished_at": now, "attempts": attempts})
        observe.job_done()

    for i in range(500):
        await job(i)
    t0 = time.process_time()
    for i in range(n):
        await job(i)
    if provider is not None:
        provider.force_flush()  # the export thread's encoding counts too
    cost = (time.process_time() - t0) / n * 1e6
    observe.uninstall()
    tracing.reset()
    if provider is not None:
        provider.shutdown()
    return cost


async def hooks(n: int, rounds: int) -> dict[str, float]:
    """The median over ``rounds`` of each configuration's hook cost, less that of no hooks at all."""
    configs = ("none", *CONFIGS)
    costs: dict[str, list[float]] = {c: [] for c in configs}
    for _ in range(rounds):
        for config in configs:
            costs[config].append(await _hook_cost(config, n))
    none = statistics.median(costs["none"])
    return {c: statistics.median(v) - none for c, v in costs.items() if c != "none"}


def summarize(runs: dict[str, list[dict[str, Any]]], n: int, rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "jobs": n,
        "rounds": rounds,
        "cpus": os.cpu_count(),
        "configs": {},
    }
    for config, results in runs.items():
        jps = [r["jobs"] / r["seconds"] for r in results]
        cpu = [r["cpu_s"] / r["jobs"] * 1e6 for r in results]
        out["configs"][config] = {
            "jps": jps,
            "cpu_us_per_job": cpu,
            "median_jps": statistics.median(jps),
            "median_cpu_us_per_job": statistics.median(cpu),
            "spans_per_job": statistics.median(r["spans"] / r["jobs"] for r in results),
            "scrapes": sum(r["scrapes"] for r in results),
        }
    off = out["configs"]["off"]
    for stats in out["configs"].values():
        stats["jps_vs_off"] = stats["median_jps"] / off["median_jps"] - 1
        stats["cpu_vs_off"] = stats["median_cpu_us_per_job"] / off["median_cpu_us_per_job"] - 1
        # against the "off" run of the same round, for reference: on a busy machine it moves as much
        paired = zip(stats["cpu_us_per_job"], off["cpu_us_per_job"], strict=True)
        stats["paired_cpu_vs_off"] = statistics.median(a / b for a, b in paired) - 1
    return out


TARGETS = {"metrics": 0.03, "traces 10 %": 0.05}


def report_hooks(r: dict[str, Any]) -> None:
    off_cpu = r["configs"]["off"]["median_cpu_us_per_job"]
    table = Table(title="the worker's hooks alone, in one process (CPU µs per job added; median of rounds)")
    for col in ("config", "µs/job", "of the drain's off CPU/job", "vs off"):
        table.add_column(col, justify="left" if col == "config" else "right")
    off_hooks = r["hooks"]["off"]
    for config, us in r["hooks"].items():
        table.add_row(
            config,
            f"{us:.1f}",
            f"{us / off_cpu:.1%}",
            f"{(us - off_hooks) / off_cpu:+.1%}" if config != "off" else "",
        )
    Console(width=120).print(table)


def report(r: dict[str, Any]) -> None:
    table = Table(
        title=f"observability cost: {r['jobs']:,} jobs a drain, median of {r['rounds']}, {r['cpus']} CPUs, "
        f"{r['date']}"
    )
    for col in ("config", "drain jobs/s", "vs off", "worker CPU µs/job", "vs off", "spans/job", "target"):
        table.add_column(col, justify="left" if col in ("config", "target") else "right")
    for config, s in r["configs"].items():
        target = TARGETS.get(config)
        verdict = ""
        if target is not None:
            verdict = f"CPU/job ≤ +{target:.0%} {'✔' if s['cpu_vs_off'] <= target else '✘'}"
        table.add_row(
            config,
            f"{s['median_jps']:,.0f}",
            f"{s['jps_vs_off']:+.1%}" if config != "off" else "",
            f"{s['median_cpu_us_per_job']:.0f}",
            f"{s['cpu_vs_off']:+.1%}" if config != "off" else "",
            f"{s['spans_per_job']:.2f}",
            verdict,
        )
    Console(width=120).print(table)


async def _wait_http(url: str) -> None:
    for _ in range(300):
        try:
            with urllib.request.urlopen(url, timeout=0.5):
                return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline-src", type=Path, help="a source tree to drain with as 'baseline'")
    parser.add_argument("--hook-jobs", type=int, default=20_000, help="jobs per in-process hook measurement")
    args = parser.parse_args()
    results = uvloop.run(run(args.jobs, args.rounds, args.baseline_src))
    results["hooks"] = uvloop.run(hooks(args.hook_jobs, max(args.rounds, 3)))
    report(results)
    report_hooks(results)
    write_json("observability", results)


if __name__ == "__main__":
    main()
