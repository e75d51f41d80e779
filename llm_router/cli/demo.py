"""``llm-router demo``: the whole system on this machine, end to end, without spending money.

Starts a private Redis (unless ``REDIS_URL`` is set), the provider simulator (unless ``--live``)
with a few faults to show fallback, and worker processes; submits mixed chat and vision jobs in bulk;
waits; prints a table with totals; shuts everything down.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from config.catalog import Catalog
from config.cost import nanos_to_usd
from config.settings import Settings
from llm_router.testing.redis_server import RedisServer, RedisServerMissing
from llm_router.testing.sim_env import simulated_env
from llm_router.testing.worker_procs import WorkerProcess

# a 1x1 PNG, so vision jobs carry a real image without touching the network
TINY_PNG_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
CHAT_MODELS = [
    "gpt-4.1",
    "gpt-4o-mini",
    "claude-sonnet-4-5",
    "gemini-2.5-flash",
    "claude-3-sonnet",
    "grok-4",
    "llama-3.1-70b",
    "mistral-large",
    "gpt-5-mini",
    "gemini-2.0-flash",
    "o1",
    "mixtral-8x7b",
]
VISION_MODELS = ["gpt-4o", "claude-sonnet-4-5", "gemini-2.5-pro", "gpt-4.1-mini"]
PROMPTS = [
    "Summarise the benefits of durable job queues in one sentence.",
    "Write a haiku about circuit breakers.",
    "What is the capital of France?",
    "Explain retries with exponential backoff to a new engineer.",
    "List three uses of Redis.",
]


def demo_jobs(n: int) -> list[dict[str, Any]]:
    """``n`` mixed jobs: every fourth is a vision job; mistral-large falls back to llama-3.1-70b."""
    jobs: list[dict[str, Any]] = []
    chats = 0
    for i in range(n):
        if i % 4 == 3:
            model = VISION_MODELS[(i // 4) % len(VISION_MODELS)]
            # Gemini takes image bytes: the worker would fetch an https image, and the demo stays offline
            url = i % 8 == 7 and not model.startswith("gemini")
            image = "https://example.com/cat.jpg" if url else f"data:image/png;base64,{TINY_PNG_B64}"
            jobs.append(
                {
                    "model": model,
                    "prompt": "What objects are in this image?",
                    "image": image,
                    "max_tokens": 64,
                    "metadata": {"demo": i},
                }
            )
            continue
        model = CHAT_MODELS[chats % len(CHAT_MODELS)]
        chats += 1
        job: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": f"{PROMPTS[i % len(PROMPTS)]} (#{i})"}],
            "max_tokens": 128,
            "metadata": {"demo": i},
        }
        if model == "mistral-large":
            job["fallbacks"] = ["llama-3.1-70b"]
        jobs.append(job)
    return jobs


# faults that show the routing at work: OpenAI's gpt-4.1 is down (AIsa answers instead), and every
# deployment of mistral-large is rate-limited (the job falls back to llama-3.1-70b)
DEMO_FAULTS = [
    {"credential": "sk-sim-openai", "model": "gpt-4.1", "kind": "status", "status": 503},
    {"model": "mistral-large-latest", "kind": "status", "status": 429, "retry_after": 30},
    {"model": "mistral-large", "kind": "status", "status": 429, "retry_after": 30},
    {"model": "mistralai/mistral-large", "kind": "status", "status": 429, "retry_after": 30},
]


def run_demo(*, live: bool = False, jobs: int = 60, workers: int = 2) -> int:
    console = Console(width=None if sys.stdout.isatty() else 150)
    try:
        return asyncio.run(_demo(console, live=live, n_jobs=jobs, n_workers=workers))
    except RedisServerMissing as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 1


async def _demo(console: Console, *, live: bool, n_jobs: int, n_workers: int) -> int:
    from llm_router.simulator import FaultRule, SimConfig, start_simulator
    from producer.producer import Producer, Submitted

    async with contextlib.AsyncExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="llm-router-demo-")))
        redis_url = os.environ.get("REDIS_URL")
        if not redis_url:
            server = stack.enter_context(RedisServer())
            redis_url = server.url
            console.print(f"private redis-server on {redis_url}")
        if live:
            env = {**os.environ, "REDIS_URL": redis_url}
        else:
            sim = await start_simulator(
                SimConfig(latency_ms=(20, 120), rules=[FaultRule(**f) for f in DEMO_FAULTS])
            )
            stack.push_async_callback(sim.close)
            console.print(f"provider simulator on {sim.url} (no real provider is called)")
            env = simulated_env(os.environ, redis_url=redis_url, sim_url=sim.url)
        env["LLM_ROUTER_LOG_LEVEL"] = "WARNING"
        settings = Settings(
            _env_file=None, **{"redis_url": redis_url, "upstream": env.get("LLM_ROUTER_UPSTREAM")}
        )
        catalog = Catalog.load(settings, env=env)
        if live and not any(catalog.deployments(m) for m in catalog.models):
            console.print("[red]error:[/red] --live needs a provider key, e.g. AISA_API_KEY")
            return 1

        procs = [WorkerProcess(env, tmp / f"worker-{i}.log") for i in range(n_workers)]
        stack.callback(lambda: [p.stop() for p in procs])
        producer = await Producer.connect(settings, catalog)
        stack.push_async_callback(producer.close)
        if not await _wait_for_workers(producer, n_workers, procs, console):
            return 1
        console.print(f"{n_workers} workers up (pids {', '.join(str(p.pid) for p in procs)})")

        jobs = demo_jobs(n_jobs)
        t0 = time.perf_counter()
        results = await producer.submit_many(jobs)
        ids = [r.job_id for r in results if isinstance(r, Submitted)]
        refused = [r for r in results if not isinstance(r, Submitted)]
        for r in refused:
            console.print(f"[red]refused:[/red] {r}")
        console.print(f"submitted {len(ids)} jobs in bulk in {(time.perf_counter() - t0) * 1000:.1f} ms")
        with Progress(
            TextColumn("running"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        ) as progress:
            task = progress.add_task("jobs", total=len(ids))
            records = await producer.wait_many(
                ids, timeout=120, on_progress=lambda done, _t: progress.update(task, completed=done)
            )
        wall = time.perf_counter() - t0
        _print_table(console, records, wall)
        ok = all(r.status == "succeeded" for r in records) and not refused
    console.print("shut down workers, simulator and redis" + ("" if ok else "; [red]some jobs failed[/red]"))
    return 0 if ok else 1


async def _wait_for_workers(producer: Any, n: int, procs: list[WorkerProcess], console: Console) -> bool:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if await producer.live_workers() >= n:
            return True
        if not all(p.alive() for p in procs):
            break
        await asyncio.sleep(0.1)
    console.print("[red]error:[/red] workers did not start:")
    for p in procs:
        console.print(p.log_tail())
    return False


def _print_table(console: Console, records: list[Any], wall_s: float) -> None:
    table = Table(title="llm-router demo")
    for col in ("job id", "model", "provider", "status", "latency ms", "tokens", "cost USD"):
        table.add_column(col, justify="right" if col in ("latency ms", "tokens", "cost USD") else "left")
    total_tokens = total_nanos = 0
    for r in records:
        tokens = r.usage.total_tokens if r.usage else 0
        nanos = r.usage.cost_nanos if r.usage else 0
        total_tokens += tokens
        total_nanos += nanos
        answered = r.model or "-"
        model = r.model_requested if answered == r.model_requested else f"{r.model_requested} → {answered}"
        status = (
            r.status.value
            if r.status == "succeeded"
            else f"[red]{r.status.value}: {(r.error or {}).get('code')}[/red]"
        )
        table.add_row(
            r.id[:12],
            model,
            r.provider or "-",
            status,
            f"{r.latency_ms or 0:,.0f}",
            str(tokens),
            f"{nanos_to_usd(nanos):.9f}",
        )
    console.print(table)
    ok = sum(r.status == "succeeded" for r in records)
    fallbacks = sum(1 for r in records if r.fallback_used)
    console.print(
        f"[bold]totals:[/bold] {len(records)} jobs, {ok} succeeded, {len(records) - ok} failed, "
        f"{fallbacks} answered after a fallback, {total_tokens:,} tokens, ${nanos_to_usd(total_nanos):.9f}, "
        f"{wall_s:.2f} s wall ({len(records) / wall_s:.0f} jobs/s)"
    )
