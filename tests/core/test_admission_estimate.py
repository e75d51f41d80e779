"""One token estimate: the producer computes it once at submit, and the start script's rate-limit
admission reads that number from the record instead of estimating on its own."""

from __future__ import annotations

from config.catalog import Catalog
from config.settings import Settings
from llm_router.store import Started, Store
from producer.validation import Validator

HI = [{"role": "user", "content": "hello there"}]


def test_the_admission_estimate_is_the_prompt_estimate_plus_the_max_output(sim_catalog: Catalog) -> None:
    v = Validator(sim_catalog, Settings(_env_file=None))
    capped = v.prepare({"model": "gpt-4o", "messages": HI, "max_tokens": 300}, now=1.0)
    assert capped.prompt_tokens > 0 and capped.est_tokens == capped.prompt_tokens + 300
    newer = v.prepare({"model": "gpt-4o", "messages": HI, "max_completion_tokens": 7}, now=1.0)
    assert newer.est_tokens == newer.prompt_tokens + 7
    open_ended = v.prepare({"model": "gpt-4o", "messages": HI}, now=1.0)
    assert open_ended.est_tokens == open_ended.prompt_tokens


async def test_the_start_script_admits_with_the_producers_number(sim_catalog: Catalog, bare_redis) -> None:
    job = Validator(sim_catalog, Settings(_env_file=None)).prepare(
        {"model": "gpt-4o", "messages": HI, "max_tokens": 300}, now=1.0
    )
    store = Store(bare_redis, queue_name="q", record_ttl_s=60)
    await store.submit_batch([store.submit_command(job)])
    # a 600-token-per-minute deployment: the job's estimate moves its budget by exactly that many tokens
    await bare_redis.hset("llm-router:routing:r", "gpt-4o", "d|0|600|1")
    started = await store.start(f"{job.tenant}/{job.job_id}", "w", 1.0, "llm-router:routing:r")
    assert isinstance(started, Started) and started.est_tokens == job.est_tokens
    now_ms, tat = int(started.redis_now_ms), int(await bare_redis.get("llm-router:tpm:d"))
    assert abs(tat - (now_ms + job.est_tokens * 60_000 // 600)) <= 2
