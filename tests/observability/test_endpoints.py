"""Metrics, health and readiness of real processes: two workers with port 0 on one host, the server,
and the JSON log lines of a job; ``llm-router health``'s verdicts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from llm_router.testing.redis_server import RedisServer, free_port
from llm_router.testing.sim_env import simulated_env
from llm_router.testing.worker_procs import WorkerProcess, terminate

from .conftest import ObsFleet, http, json_lines, wait_until

HI = [{"role": "user", "content": "hi"}]


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    status, body, headers = http("GET", f"{url}/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain"), body[:200]
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def total(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for lab, v in samples.get(name, ()) if all(lab.get(k) == x for k, x in labels.items()))


def test_two_workers_on_one_host_each_serve_their_own_port(obs_fleet: ObsFleet) -> None:
    a, b = obs_fleet.worker_metrics
    assert a != b
    for url in (a, b):
        s = scrape(url)
        assert total(s, "llm_router_workers_live", queue="bulk") == 2  # read from Redis, the same anywhere
        assert total(s, "llm_router_redis_up") == 1
        assert http("GET", f"{url}/healthz")[0] == 200
        assert json.loads(http("GET", f"{url}/readyz")[1]) == {"status": "ready"}


def test_jobs_show_up_in_the_workers_and_the_server_s_metrics(obs_fleet: ObsFleet, sim: Any) -> None:
    before = [scrape(u) for u in obs_fleet.worker_metrics]
    # the first deployment of gpt-4.1-nano fails: a retry on it, then the fallback to AIsa answers;
    # two failures in a row open its breaker
    _faults(sim, [{"credential": "sk-sim-openai", "model": "gpt-4.1-nano", "kind": "status", "status": 500}])
    try:
        ok = obs_fleet.submit([{"model": "gpt-4o-mini", "messages": HI} for _ in range(6)])
        fell_back = obs_fleet.submit([{"model": "gpt-4.1-nano", "messages": HI}])
        records = obs_fleet.wait_ended(ok + fell_back)
    finally:
        _faults(sim, [])
    assert all(r["status"] == "succeeded" for r in records)
    after = [scrape(u) for u in obs_fleet.worker_metrics]

    def delta(name: str, **labels: str) -> float:
        return sum(
            total(a, name, **labels) - total(b, name, **labels) for a, b in zip(after, before, strict=True)
        )

    assert delta("llm_router_jobs_total", status="succeeded", model="gpt-4o-mini", provider="openai") == 6
    assert delta("llm_router_jobs_total", status="succeeded", model="gpt-4.1-nano", provider="aisa") == 1
    assert delta("llm_router_job_duration_seconds_count", model="gpt-4o-mini", status="succeeded") == 6
    assert delta("llm_router_queue_wait_seconds_count", queue="bulk") == 7
    assert delta("llm_router_upstream_latency_seconds_count", provider="openai", model="gpt-4o-mini") == 6
    assert delta("llm_router_retries_total", provider="openai", model="gpt-4.1-nano") == 1
    assert delta("llm_router_fallbacks_total", model="gpt-4.1-nano") == 1
    tokens = sum(r["usage"]["prompt_tokens"] + r["usage"]["completion_tokens"] for r in records)
    assert delta("llm_router_tokens_total") == tokens
    assert abs(delta("llm_router_cost_usd_total") - sum(r["usage"]["cost"] for r in records)) < 1e-9
    assert all(total(a, "llm_router_jobs_in_flight") == 0 for a in after)

    server = scrape(obs_fleet.url)
    assert total(server, "llm_router_http_requests_total", route="/v1/jobs", status="200") >= 2
    assert total(server, "llm_router_http_requests_total", route="/v1/jobs/{id}", status="200") >= 7
    assert not any(
        "/v1/jobs/" + i in lab["route"] for i in ok for lab, _ in server["llm_router_http_requests_total"]
    )
    assert total(server, "llm_router_breaker_state", deployment="openai/gpt-4.1-nano", state="open") == 1
    assert total(server, "llm_router_breaker_state", deployment="aisa/gpt-4.1-nano", state="closed") == 1
    assert total(server, "llm_router_queue_depth", queue="bulk") == 0


def test_every_log_line_of_a_job_names_it(obs_fleet: ObsFleet, sim: Any) -> None:
    _faults(
        sim, [{"model": "gpt-4o-mini", "kind": "status", "status": 400}]
    )  # the caller's error: no fallback
    try:
        [job_id] = obs_fleet.submit([{"model": "gpt-4o-mini", "messages": HI, "fallbacks": []}])
        [record] = obs_fleet.wait_ended([job_id])
    finally:
        _faults(sim, [])
    assert record["status"] == "failed"

    def line() -> dict[str, Any] | None:
        for w in obs_fleet.workers:
            for obj in json_lines(w.log_path):
                if obj.get("event") == "job failed" and obj.get("job_id") == job_id:
                    return obj
        return None

    found = wait_until(line, 10, "the job's log line")
    assert found["tenant"] == "acme" and found["model"] == "gpt-4o-mini"
    assert found["provider"] == "openai" and found["attempt"] == 1
    assert found["level"] == "warning" and "timestamp" in found


def test_the_server_s_probes(obs_fleet: ObsFleet) -> None:
    assert http("GET", f"{obs_fleet.url}/healthz")[:1] == (200,)
    status, body, _ = http("GET", f"{obs_fleet.url}/readyz")
    assert status == 200 and json.loads(body) == {"status": "ready"}


def test_readiness_follows_redis_and_liveness_does_not(sim: Any, tmp_path: Any) -> None:
    with RedisServer() as redis:
        env = simulated_env(os.environ, redis_url=redis.url, sim_url=sim.url)
        env.update(
            LLM_ROUTER_QUEUE_NAME=f"ready-{uuid.uuid4().hex[:6]}",
            LLM_ROUTER_READY_TIMEOUT_S="0.5",
            LLM_ROUTER_LOG_FORMAT="json",
            LLM_ROUTER_LOG_LEVEL="INFO",
        )
        port, metrics_port = free_port(), free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "llm_router.cli", "serve", "--port", str(port), "--no-auth"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        worker = WorkerProcess(
            {**env, "LLM_ROUTER_METRICS_PORT": str(metrics_port), "LLM_ROUTER_METRICS_HOST": "127.0.0.1"},
            tmp_path / "worker.log",
        )
        urls = [f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}"]
        try:
            for url in urls:
                wait_until(lambda url=url: _status(f"{url}/readyz") == 200, 30, f"{url} ready")
            redis.stop(cleanup=False)
            for url in urls:
                t0 = time.monotonic()
                status, body, _ = http("GET", f"{url}/readyz")
                assert status == 503 and json.loads(body)["status"] == "unready"
                assert time.monotonic() - t0 < 3
                assert _status(f"{url}/healthz") == 200
                assert _status(f"{url}/metrics") == 200  # the fleet gauges are left out: redis_up 0
        finally:
            terminate(server)
            worker.stop()


def _status(url: str) -> int:
    try:
        return http("GET", url, timeout=3)[0]
    except OSError:
        return 0


def _health(env: dict[str, str], *args: str) -> tuple[int, str]:
    out = subprocess.run(
        [sys.executable, "-m", "llm_router.cli", "health", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1, out
    return out.returncode, lines[0]


def test_health_says_healthy_degraded_or_down(obs_fleet: ObsFleet, redis_server: RedisServer) -> None:
    code, line = _health(obs_fleet.env)
    assert code == 0 and line.startswith("healthy: interactive 2 workers"), line

    # a queue whose only job waits too long, and one with a worker but nothing to do
    import redis as sync_redis

    queue = f"health-{uuid.uuid4().hex[:6]}"
    client = sync_redis.Redis.from_url(redis_server.url)
    now = time.time()
    client.zadd(queue, {"old-job": (now - 120) * 1000})
    client.zadd(f"{queue}:interactive:workers", {"some-worker": now})
    env = {
        **obs_fleet.env,
        "LLM_ROUTER_QUEUE_NAME": queue,
        "LLM_ROUTER_INTERACTIVE_QUEUE_NAME": f"{queue}:interactive",
    }
    code, line = _health(env, "--max-age", "60")
    assert code == 1 and line.startswith("degraded: bulk has 1 due and no live worker"), line
    assert re.search(r"bulk's oldest waiting job is 12\d s old \(over 60 s\)", line), line

    client.zrem(f"{queue}:interactive:workers", "some-worker")  # no worker anywhere, a job due
    code, line = _health(env, "--json")
    verdict = json.loads(line)
    assert code == 4 and verdict["status"] == "down" and "no worker is live" in verdict["reason"]
    client.delete(queue)
    client.close()

    dead = {**obs_fleet.env, "REDIS_URL": f"redis://:s3cret@127.0.0.1:{free_port()}/0"}
    code, line = _health(dead, "--timeout", "1")
    assert code == 4 and line.startswith("down: redis at 127.0.0.1:"), line
    assert "s3cret" not in line


def _faults(sim: Any, rules: list[dict[str, Any]]) -> None:
    status, body, _ = http("POST", f"{sim.url}/_sim/faults", body={"rules": rules, "replace": True})
    assert status == 200, body
