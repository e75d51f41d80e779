"""A wake-up claims at once, whenever it comes in the run loop's step.

arq's loop (``arq.utils.poll``) sleeps what is left of ``poll_delay`` after each step. A job submitted
in that sleep used to wait it out: a claim that came early in a step left most of the step as a
sleep, so the next job, submitted as soon as the first ended, waited most of a step before its claim.
The worker here has a 2 s step, so that wait would be a second or more; a wake-up must cut it short.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path
from typing import Any

import yaml

from config.catalog import Catalog
from config.settings import Settings
from llm_router.simulator import SimConfig, start_simulator
from producer.producer import Producer
from worker.app import build_worker

HI = [{"role": "user", "content": "hi"}]
STEP_S = 2.0


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


async def test_a_job_submitted_right_after_another_ended_is_claimed_within_the_step(
    redis_server: Any, tmp_path: Path
) -> None:
    sim = await start_simulator(SimConfig())
    settings = Settings(_env_file=None, redis_url=redis_server.url, queue_name=f"wake-{uuid.uuid4().hex[:8]}")
    catalog = _catalog(tmp_path, sim.url)
    producer = await Producer.connect(settings, catalog)
    worker = build_worker(settings, catalog, handle_signals=False, poll_delay=STEP_S, max_jobs=4)
    running = asyncio.create_task(worker.main())
    try:
        first = await producer.submit({"model": "m", "messages": HI, "max_tokens": 5})
        assert (await producer.wait(first.job_id, timeout=30)).status == "succeeded"
        waits = []
        for _ in range(3):  # each right after the one before ended: early in a step of the loop
            sub = await producer.submit({"model": "m", "messages": HI, "max_tokens": 5})
            record = await producer.wait(sub.job_id, timeout=30)
            assert record.status == "succeeded"
            waits.append(record.started_at - record.created_at)  # type: ignore[operator]
        # waiting out the step would take over a second each time; a claim on the wake-up takes ms
        assert max(waits) < STEP_S / 4, waits
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await worker.close()
        await producer.close()
        await sim.close()
