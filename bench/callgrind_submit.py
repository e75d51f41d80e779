"""A bulk submit's cost counted in instructions, which this host's timings cannot resolve.

Two runs of the same submit here differ by more than a small change does (14-22 µs of ``EVALSHA`` a
job, same script, same minute), so changes to the submit path are compared in instructions, counted
by valgrind's callgrind (repeatable within ~1 % for Redis, ~0.1 % for the producer):

* **Redis**: ``redis-server`` runs under callgrind; the tree's submit script takes 1,000 and then
  3,000 jobs in calls of ``SUBMIT_GROUP``, for a tenant without credit and one with credit, and the
  difference over 2,000 jobs is the script's instructions a job (start-up and loading cancel out).
* **the producer**: this tree's ``Producer.submit_many`` of 2,000 jobs runs under callgrind, with
  instrumentation switched on after a warm-up (``callgrind_control -i on``) and the collector off;
  Redis runs natively.

``--baseline-src DIR`` counts another source tree the same way, for an A/B. Needs valgrind; not
part of ``make bench``.

    python bench/callgrind_submit.py --baseline-src ../other-tree
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

CHAT = {"model": "gpt-4o-mini", "max_tokens": 16}
JOBS_A, JOBS_B = 1_000, 3_000  # the script's count is (B - A) / (B - A jobs)
PRODUCER_JOBS = 2_000
VALGRIND = ("valgrind", "--tool=callgrind")
ME = (sys.executable, str(Path(__file__).resolve()))


def _total(out: Path) -> int:
    for line in out.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {out}")


def _script_run(jobs: int, metered: bool) -> int:
    """Instructions redis-server executed to start, take ``jobs`` submits and stop."""
    import redis

    from llm_router.keys import credits_key
    from llm_router.store import Store
    from llm_router.testing.jobs import new_job
    from llm_router.testing.redis_server import free_port

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        server = subprocess.Popen(
            [*VALGRIND, f"--callgrind-out-file={out}", "redis-server", "--port", str(port), "--save", ""],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        r = redis.Redis(port=port)
        deadline = time.monotonic() + 60
        while True:
            try:
                r.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        tenant = "paid" if metered else "free"
        if metered:
            r.hset(credits_key(tenant), mapping={"balance": 10**15, "reserved": 0, "spent": 0})

        async def submit() -> None:
            from redis.asyncio import Redis

            aredis = Redis(port=port)
            store = Store(aredis, queue_name="q", record_ttl_s=3600)
            for start in range(0, jobs, 1_000):
                batch = []
                for i in range(start, min(start + 1_000, jobs)):
                    request = orjson.dumps({**CHAT, "messages": [{"role": "user", "content": f"Hi {i}."}]})
                    job = new_job(f"j{i}", tenant=tenant, request=request, reserve_nanos=1000, est_tokens=40)
                    batch.append(store.submit_command(job))
                replies = await store.submit_batch(batch)
                assert all(reply == 1 for reply in replies), replies
            await aredis.aclose()

        asyncio.run(submit())
        r.shutdown(nosave=True)
        server.wait(timeout=120)
        return _total(out)


def _producer_run() -> None:
    """Runs inside callgrind (``--instr-atstart=no``): counts only the measured submit."""
    import uvloop

    from config.catalog import Catalog
    from config.settings import Settings
    from llm_router.testing.sim_env import simulated_env
    from producer.producer import Producer

    async def main(url: str) -> None:
        env = simulated_env(os.environ, redis_url=url, sim_url="http://127.0.0.1:1")
        settings = Settings(_env_file=None, redis_url=url, queue_name="bench-callgrind")
        producer = await Producer.connect(settings, Catalog.load(settings, env=env))
        jobs = [
            orjson.dumps({**CHAT, "messages": [{"role": "user", "content": f"Say hello {i}."}]})
            for i in range(PRODUCER_JOBS)
        ]
        await producer.submit_many(jobs[:200])
        await producer.submit_many(jobs[: PRODUCER_JOBS // 2])  # every path warm
        gc.disable()
        subprocess.run(["callgrind_control", "-i", "on", str(os.getpid())], capture_output=True, check=True)
        await producer.submit_many(jobs)
        subprocess.run(["callgrind_control", "-i", "off", str(os.getpid())], capture_output=True, check=True)
        await producer.close()

    uvloop.run(main(os.environ["CALLGRIND_REDIS_URL"]))


def _count_producer(src: Path) -> int:
    from llm_router.testing.redis_server import RedisServer

    with RedisServer() as server, tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        subprocess.run(
            [*VALGRIND, "--instr-atstart=no", f"--callgrind-out-file={out}", *ME, "--one", "producer"],
            cwd=src,
            env={**os.environ, "PYTHONPATH": str(src), "CALLGRIND_REDIS_URL": server.url},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=True,
        )
        return _total(out) // PRODUCER_JOBS


def _count_script(src: Path, metered: bool) -> int:
    out = subprocess.run(
        [*ME, "--one", "script", *(["--metered"] if metered else [])],
        cwd=src,
        env={**os.environ, "PYTHONPATH": str(src)},
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-src", type=Path, help="also count this source tree")
    parser.add_argument("--one", choices=["script", "producer"], help=argparse.SUPPRESS)
    parser.add_argument("--metered", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one == "producer":
        _producer_run()
        return
    if args.one == "script":
        a, b = _script_run(JOBS_A, args.metered), _script_run(JOBS_B, args.metered)
        print((b - a) // (JOBS_B - JOBS_A))
        return
    trees = [("this tree", Path.cwd())]
    if args.baseline_src:
        trees.insert(0, ("baseline", args.baseline_src.resolve()))
    for name, src in trees:
        free, paid = _count_script(src, False), _count_script(src, True)
        producer = _count_producer(src)
        print(
            f"{name:10s} Redis instructions a job: {free:,} (tenant without credit), {paid:,} (with credit); "
            f"producer instructions a job: {producer:,}"
        )


if __name__ == "__main__":
    main()
