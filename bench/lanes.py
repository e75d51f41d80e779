"""What lanes save: the issue's fixed scenario, all-`now` against `auto`, in one bench run.

The scenario (issue 25): discounts 50 % for batch and flex; the simulator's synchronous latency 1 s,
flex 3-10 s with 5 % of flex calls answering 429 `resource unavailable`, batch turnaround uniform
20-60 s; 10,000 jobs, 30 % due within 2 minutes and 70 % within 30 minutes. **Time is scaled down
by ``--scale`` (default 10)**: every duration above (latencies, turnaround, deadlines) and the
lane settings (poll, batch age, expected times, margin) are divided by it, so the run takes minutes
rather than an hour; the workers' own CPU cost per job is not scaled.

Three runs of the same jobs (fresh ids) on the same fleet (2 worker processes, the simulator, a
private redis-server): every job `now`; every job `auto`; every job `auto` with one in five remote
batches never completing. Then the mixed-provider pair (``--mixed-jobs``, default ``--jobs``): the same
scenario with a third of the jobs on each of gpt-4o-mini, claude-haiku-4-5 and gemini-2.5-flash (OpenAI
Files + Batch, Anthropic Message Batches, Gemini batch mode), all `now` and then `auto`, with dollars
saved and deadlines missed per provider of the model asked for. ``--only openai|mixed`` runs one part.
Reported per run: dollars (sum of the records' costs), saved against the
all-`now` run, deadlines missed (failed with ``deadline_exceeded`` or finished after their
deadline), jobs per lane, re-dispatches to `now`, wasted results (batch answers for jobs that had
already run `now`: the operator's spend, and the saving net of it), provider calls per job
(synchronous calls + batch lines), wall time. Run with ``make bench`` (``python bench/lanes.py
[--jobs N] [--scale S]``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import uvloop
import yaml
from output import write_json  # bench/output.py, beside this script
from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table

from config.catalog import Catalog
from config.settings import Settings
from llm_router.keys import LANES_STATS_KEY, LANES_TURNAROUND_KEY
from llm_router.testing.redis_server import RedisServer, free_port
from llm_router.testing.sim_env import simulated_env
from llm_router.testing.worker_procs import WorkerProcess
from producer.producer import Producer

QUEUE = "bench-lanes"
MODEL = "gpt-4o-mini"
# the mixed-provider runs: one model per provider, each with its own batch format (OpenAI Files +
# Batch, Anthropic Message Batches, Gemini batch mode), a third of the jobs each
MIXED = {"gpt-4o-mini": "openai", "claude-haiku-4-5": "anthropic", "gemini-2.5-flash": "gemini"}


def _jobs(n: int, scale: float, lane: str, models: list[str] | None = None) -> list[bytes]:
    """The same jobs every run (same prompts, so the same answers and tokens); fresh ids each run."""
    rng = random.Random(25)
    models = models or [MODEL]
    out = []
    for i in range(n):
        urgent = rng.random() < 0.3
        out.append(
            orjson.dumps(
                {
                    "model": models[i % len(models)],
                    "messages": [{"role": "user", "content": f"{i}: summarise item {rng.randrange(10**6)}"}],
                    "max_tokens": 200,
                    "lane": lane,
                    "deadline_s": (120 if urgent else 1800) / scale,
                }
            )
        )
    return out


async def _sim(url: str, path: str, body: Any = None) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s:
        if body is None:
            async with s.get(url + path) as r:
                return dict(await r.json())
        async with s.post(url + path, json=body) as r:
            assert r.status == 200, await r.text()
            return dict(await r.json())


def _calls(calls: dict[str, Any]) -> int:
    """Synchronous chat calls the simulator answered (every credential, model and outcome)."""
    return int(calls["total"])


def _missed(r: Any) -> bool:
    failed = r.status != "succeeded" and (r.error or {}).get("code") == "deadline_exceeded"
    return failed or (r.finished_at or 0) > r.deadline_at


def _by_provider(records: list[Any]) -> dict[str, dict[str, Any]]:
    """Per provider of the model asked for (the mixed runs): dollars, deadlines missed, lanes."""
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        p = out.setdefault(
            MIXED.get(r.request.get("model"), "other"),
            {"jobs": 0, "cost_nanos": 0, "missed": 0, "lanes": Counter()},
        )
        p["jobs"] += 1
        p["cost_nanos"] += r.usage.cost_nanos if r.usage else 0
        p["missed"] += _missed(r)
        p["lanes"][r.lane] += 1
    for p in out.values():
        p["lanes"] = dict(p["lanes"])
    return out


async def _run(
    producer: Producer,
    redis: Redis,
    sim_url: str,
    lanes_cfg: dict[str, Any],
    n: int,
    scale: float,
    lane: str,
    models: list[str] | None = None,
) -> dict[str, Any]:
    await _sim(sim_url, "/_sim/lanes", lanes_cfg)
    await redis.delete(LANES_STATS_KEY, LANES_TURNAROUND_KEY)  # each run learns from the seed
    calls_before = _calls(await _sim(sim_url, "/_sim/calls"))
    lines_before = (await _sim(sim_url, "/_sim/lanes"))["counters"]["batch_lines"]
    t0 = time.time()
    subs = await producer.submit_many(_jobs(n, scale, lane, models))
    ids = [s.job_id for s in subs]  # type: ignore[union-attr]
    records = await producer.wait_many(ids, timeout=3600 / scale + 120)
    wall = time.time() - t0
    sim_lanes = await _sim(sim_url, "/_sim/lanes")
    calls = _calls(await _sim(sim_url, "/_sim/calls")) - calls_before
    stats = {k.decode(): int(v) for k, v in (await redis.hgetall(LANES_STATS_KEY)).items()}
    missed = sum(1 for r in records if _missed(r))
    cost = sum(r.usage.cost_nanos for r in records if r.usage)
    return {
        "lane": lane,
        "never_complete": lanes_cfg.get("never_complete", 0.0),
        "jobs": n,
        "succeeded": sum(r.status == "succeeded" for r in records),
        "cost_usd": cost / 1e9,
        "cost_nanos": cost,
        "deadlines_missed": missed,
        "per_lane": dict(Counter(r.lane for r in records)),
        "per_provider": dict(Counter(r.provider for r in records)),
        "mixed": models is not None,
        "by_provider": _by_provider(records) if models is not None else {},
        "redispatched": stats.get("redispatched", 0),
        "wasted_results": stats.get("wasted_results", 0),
        "wasted_usd": stats.get("wasted_nanos", 0) / 1e9,
        "sync_calls": calls,
        "batch_lines": sim_lanes["counters"]["batch_lines"] - lines_before,
        "provider_calls_per_job": 0.0,
        "wall_s": round(wall, 1),
    }


async def run(n: int, scale: float, only: str = "all", mixed_jobs: int | None = None) -> dict[str, Any]:
    lat = 1000 / scale
    lanes_cfg = {
        "flex_latency_ms": [3000 / scale - lat, 10000 / scale - lat],  # the 1 s of every call comes on top
        "flex_unavailable": 0.05,
        "turnaround_s": [20 / scale, 60 / scale],
        "seed": 25,
    }
    with RedisServer() as server, tempfile.TemporaryDirectory() as tmp:
        profile = Path(tmp) / "sim.yaml"
        profile.write_text(yaml.safe_dump({"latency_ms": [lat, lat], "seed": 25}))
        port = free_port()
        sim = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llm_router.cli",
                "simulate",
                "--port",
                str(port),
                "--profile",
                str(profile),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        sim_url = f"http://127.0.0.1:{port}"
        env = simulated_env(os.environ, redis_url=server.url, sim_url=sim_url)
        env.update(
            LLM_ROUTER_QUEUE_NAME=QUEUE,
            LLM_ROUTER_LOG_LEVEL="WARNING",
            LLM_ROUTER_LANES_POLL_S=str(5 / scale),
            LLM_ROUTER_LANES_BATCH_AGE_S=str(10 / scale),
            LLM_ROUTER_LANES_NOW_EXPECTED_S=str(10 / scale),
            LLM_ROUTER_LANES_MARGIN_S=str(20 / scale),
            LLM_ROUTER_LANES_BATCH_EXPECTED_S=str(60 / scale),
            LLM_ROUTER_LANES_FLEX_EXPECTED_S=str(15 / scale),
            # provider batches of up to 500 jobs: the 7,000 with slack fill many, so "one in five never
            # completes" is about many batches, not one
            LLM_ROUTER_LANES_BATCH_SIZE="500",
        )
        workers = [WorkerProcess(env, Path(tmp) / f"worker-{i}.log") for i in range(2)]
        settings = Settings(_env_file=None, redis_url=server.url, queue_name=QUEUE)
        producer = await Producer.connect(settings, Catalog.load(settings, env=env))
        redis = Redis.from_url(server.url)
        try:
            for _ in range(300):
                try:
                    await _sim(sim_url, "/_sim/health")
                    break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
            while await producer.live_workers() < len(workers):
                await asyncio.sleep(0.05)
            runs = []
            if only in ("all", "openai"):
                runs += [
                    await _run(producer, redis, sim_url, lanes_cfg, n, scale, "now"),
                    await _run(producer, redis, sim_url, lanes_cfg, n, scale, "auto"),
                    await _run(
                        producer, redis, sim_url, {**lanes_cfg, "never_complete": 0.2}, n, scale, "auto"
                    ),
                ]
            if only in ("all", "mixed"):
                m, models = mixed_jobs or n, list(MIXED)
                runs += [
                    await _run(producer, redis, sim_url, lanes_cfg, m, scale, "now", models),
                    await _run(producer, redis, sim_url, lanes_cfg, m, scale, "auto", models),
                ]
        finally:
            for w in workers:
                w.stop()
            sim.terminate()
            sim.wait(timeout=10)
            await producer.close()
            await redis.aclose()
    for r in runs:
        # each run against the all-`now` run of the same jobs (the first of its kind)
        baseline = next(b for b in runs if b["lane"] == "now" and b["mixed"] == r["mixed"])
        base = baseline["cost_nanos"]
        r["saved_pct"] = round(100 * (1 - r["cost_nanos"] / base), 1) if base else 0.0
        for name, p in r["by_provider"].items():
            was = baseline["by_provider"][name]["cost_nanos"]
            p["cost_usd"] = p["cost_nanos"] / 1e9
            p["saved_pct"] = round(100 * (1 - p["cost_nanos"] / was), 1) if was else 0.0
        # what the operator saves: the tenants' savings less the answers nobody used (wasted spend)
        spent = r["cost_nanos"] + r["wasted_usd"] * 1e9
        r["net_saved_pct"] = round(100 * (1 - spent / base), 1) if base else 0.0
        r["missed_pct"] = round(100 * r["deadlines_missed"] / r["jobs"], 2)
        r["provider_calls_per_job"] = round((r["sync_calls"] + r["batch_lines"]) / r["jobs"], 3)
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "jobs": n,
        "mixed_jobs": mixed_jobs or n,
        "scale": scale,
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument(
        "--mixed-jobs", type=int, default=None, help="jobs of the mixed runs (default --jobs)"
    )
    parser.add_argument("--scale", type=float, default=10.0, help="time is divided by this")
    parser.add_argument("--only", choices=("all", "openai", "mixed"), default="all")
    args = parser.parse_args()
    r = uvloop.run(run(args.jobs, args.scale, args.only, args.mixed_jobs))
    table = Table(title=f"lanes: 30 % due in 2 min, 70 % in 30 min (time / {args.scale:g})")
    for col in (
        "run",
        "jobs",
        "cost $",
        "saved",
        "missed",
        "per lane",
        "re-dispatched",
        "wasted",
        "calls/job",
        "wall",
    ):
        table.add_column(col, justify="left" if col in ("run", "per lane") else "right")
    names = {
        (False, "now", 0.0): "all now",
        (False, "auto", 0.0): "auto",
        (False, "auto", 0.2): "auto, 1 in 5 batches never complete",
        (True, "now", 0.0): "mixed providers, all now",
        (True, "auto", 0.0): "mixed providers, auto",
    }
    for run_ in r["runs"]:
        table.add_row(
            names[(run_["mixed"], run_["lane"], run_["never_complete"])],
            f"{run_['jobs']:,}",
            f"{run_['cost_usd']:.4f}",
            f"{run_['saved_pct']:.1f} %",
            f"{run_['deadlines_missed']} ({run_['missed_pct']:.2f} %)",
            " ".join(f"{k}:{v}" for k, v in sorted(run_["per_lane"].items())),
            str(run_["redispatched"]),
            f"{run_['wasted_results']} (${run_['wasted_usd']:.4f}; net saved {run_['net_saved_pct']:.1f} %)",
            f"{run_['provider_calls_per_job']:.2f}",
            f"{run_['wall_s']:.0f}s",
        )
    Console(width=160).print(table)
    mixed = [x for x in r["runs"] if x["mixed"]]
    if mixed:
        per = Table(title="mixed providers, per provider of the model asked for")
        for col in ("provider", "run", "jobs", "cost $", "saved", "missed", "per lane"):
            per.add_column(col, justify="left" if col in ("provider", "run", "per lane") else "right")
        for name in MIXED.values():
            for run_ in mixed:
                p = run_["by_provider"].get(name)
                if p is None:
                    continue
                per.add_row(
                    name,
                    run_["lane"],
                    f"{p['jobs']:,}",
                    f"{p['cost_usd']:.4f}",
                    f"{p['saved_pct']:.1f} %",
                    str(p["missed"]),
                    " ".join(f"{k}:{v}" for k, v in sorted(p["lanes"].items())),
                )
        Console(width=160).print(per)
    print("targets: saved >= 40 % (ceiling 50 %), deadlines missed <= 1 %")
    write_json("lanes", r)


if __name__ == "__main__":
    main()
