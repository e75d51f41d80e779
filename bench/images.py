"""Image memory: a worker's peak RSS while 100 jobs of 10 image URLs each run on a Gemini model.

Gemini needs the bytes, so the worker fetches every image (from a local image server, 1 MB each)
and holds them until the call is made. Two runs of the same 100 jobs against one worker with
``--max-jobs 100``:

* **capped**: the defaults (``LLM_ROUTER_IMAGE_INLINE_JOBS=8`` jobs holding images at once, 32 MB
  per job): peak RSS stays bounded by that product whatever the jobs ask;
* **uncapped**: ``LLM_ROUTER_IMAGE_INLINE_JOBS=1000``, as every job held its images before: RSS
  grows with the number of jobs.

Prints a table and writes JSON to ``bench/results/``. Part of ``make bench``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvloop
from aiohttp import web
from output import write_json  # bench/output.py, beside this script
from rich.console import Console
from rich.table import Table

from config.catalog import Catalog
from config.settings import Settings
from llm_router.testing.redis_server import RedisServer, free_port
from llm_router.testing.sim_env import simulated_env
from producer.producer import Producer

JOBS = 100
IMAGES = 10
IMAGE_BYTES = 1024 * 1024
PNG_HEAD = bytes.fromhex("89504e470d0a1a0a")


def _vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


async def image_server() -> tuple[web.AppRunner, str]:
    body = PNG_HEAD + os.urandom(IMAGE_BYTES - len(PNG_HEAD))

    async def image(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="image/png")

    app = web.Application()
    app.router.add_get("/img/{name}", image)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


def jobs(images_url: str, tag: str) -> list[dict[str, Any]]:
    out = []
    for j in range(JOBS):
        parts: list[dict[str, Any]] = [{"type": "text", "text": f"what is in these? {tag} {j}"}]
        parts += [
            {"type": "image_url", "image_url": {"url": f"{images_url}/img/{tag}-{j}-{i}.png"}}
            for i in range(IMAGES)
        ]
        out.append(
            {"model": "gemini-2.5-flash", "max_tokens": 16, "messages": [{"role": "user", "content": parts}]}
        )
    return out


async def run(
    redis: RedisServer, sim_url: str, images_url: str, inline_jobs: int, tag: str
) -> dict[str, Any]:
    queue = f"bench-images-{tag}"
    env = simulated_env(os.environ, redis_url=redis.url, sim_url=sim_url)
    env.update(
        LLM_ROUTER_QUEUE_NAME=queue,
        LLM_ROUTER_IMAGE_INLINE_JOBS=str(inline_jobs),
        LLM_ROUTER_IMAGE_FETCH_ALLOWLIST="127.0.0.1/32",
        LLM_ROUTER_IMAGE_URLS_ALLOW_HTTP="1",
        LLM_ROUTER_LOG_LEVEL="ERROR",
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "llm_router.cli", "worker", "--max-jobs", str(JOBS), "--queues", "bulk"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    settings = Settings(_env_file=None, redis_url=redis.url, queue_name=queue, image_urls_allow_http=True)
    producer = await Producer.connect(settings, Catalog.load(settings, env=env))
    try:
        while await producer.live_workers() < 1:
            await asyncio.sleep(0.05)
        idle = _vm_hwm_mb(worker.pid)
        t0 = time.perf_counter()
        subs = await producer.submit_many(jobs(images_url, tag))
        records = await producer.wait_many(subs, timeout=300)  # type: ignore[arg-type]
        seconds = time.perf_counter() - t0
        peak = _vm_hwm_mb(worker.pid)
    finally:
        await producer.close()
        worker.terminate()
        worker.wait(timeout=30)
    return {
        "inline_jobs": inline_jobs,
        "succeeded": sum(r.status == "succeeded" for r in records),
        "failed": [r.error for r in records if r.status != "succeeded"][:3],
        "idle_rss_mb": idle,
        "peak_rss_mb": peak,
        "seconds": seconds,
    }


async def main() -> None:
    runner, images_url = await image_server()
    port = free_port()
    sim = subprocess.Popen(
        [sys.executable, "-m", "llm_router.cli", "simulate", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sim_url = f"http://127.0.0.1:{port}"
    try:
        with RedisServer() as redis:
            await asyncio.sleep(1.0)  # the simulator's start
            capped = await run(
                redis, sim_url, images_url, Settings(_env_file=None).image_inline_jobs, "capped"
            )
            uncapped = await run(redis, sim_url, images_url, 1000, "uncapped")
    finally:
        sim.terminate()
        sim.wait(timeout=10)
        await runner.cleanup()
    table = Table(
        title=f"image memory: {JOBS} Gemini jobs x {IMAGES} images of {IMAGE_BYTES // 1024} KB, one worker"
    )
    for col in ("run", "jobs holding images at once", "succeeded", "idle RSS", "peak RSS", "seconds"):
        table.add_column(col)
    for name, r in (("capped (defaults)", capped), ("uncapped", uncapped)):
        table.add_row(
            name,
            str(r["inline_jobs"]),
            f"{r['succeeded']}/{JOBS}",
            f"{r['idle_rss_mb']:.0f} MB",
            f"{r['peak_rss_mb']:.0f} MB",
            f"{r['seconds']:.1f}",
        )
    Console().print(table)
    write_json(
        "images",
        {
            "date": datetime.now(UTC).isoformat(),
            "jobs": JOBS,
            "images": IMAGES,
            "capped": capped,
            "uncapped": uncapped,
        },
    )


if __name__ == "__main__":
    uvloop.run(main())
