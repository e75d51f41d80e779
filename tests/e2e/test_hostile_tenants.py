"""A tenant cannot spend past its credit through any field that multiplies cost, its images cannot
take a worker's memory, and a cut-off bulk submit keeps its handles (real workers, simulator, Redis)."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
import uuid
from typing import Any

import orjson
import pytest

from llm_router.credits import Ledger
from llm_router.errors import InsufficientCredits
from llm_router.keys import credits_key, record_key
from llm_router.store import Store
from producer.producer import Producer, Submitted

PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d4944415478da63f8cf"
        "c0f01f0005000201ff8a0b3a450000000049454e44ae426082"
    )
).decode()
TEXT = "Summarise the following in one line. " + "The quick brown fox jumps over the lazy dog. " * 6
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}, "region": {"type": "string"}},
                "required": ["query", "region"],
            },
        },
    }
]

# one job per field that multiplies what a job can cost; the reservation must cover each
FIELDS: dict[str, dict[str, Any]] = {
    "n": {"model": "gpt-4o-mini", "n": 16, "max_tokens": 40, "messages": [{"role": "user", "content": TEXT}]},
    "images": {
        "model": "gpt-4o-mini",
        "max_tokens": 40,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": TEXT},
                    *[{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}] * 4,
                ],
            }
        ],
    },
    "tools": {
        "model": "gpt-4o-mini",
        "max_tokens": 40,
        "n": 4,
        "tools": TOOLS,
        "tool_choice": "required",
        "messages": [{"role": "user", "content": TEXT}],
    },
    "reasoning": {
        "model": "gemini-2.5-flash",
        "max_tokens": 40,
        "reasoning_effort": "high",
        "messages": [{"role": "user", "content": TEXT}],
    },
    # the efforts above "high" think as much on Gemini
    "reasoning xhigh": {
        "model": "gemini-2.5-flash",
        "fallbacks": [],  # priced alone: a dearer fallback's price would hide what it thinks
        "max_tokens": 40,
        "reasoning_effort": "xhigh",
        "messages": [{"role": "user", "content": TEXT}],
    },
    # OpenAI bills the predicted tokens it rejects as output, beyond max_tokens (the simulator's reply
    # never matches a prediction)
    "prediction": {
        "model": "gpt-4o",
        "fallbacks": [],
        "max_tokens": 40,
        "prediction": {"type": "content", "content": "The quick brown fox. " * 400},
        "messages": [{"role": "user", "content": TEXT}],
    },
    # with an image in the job, only the image part's URL leaves the prompt's estimate: a "url" in
    # a tool's schema is text the provider bills
    "images and url text": {
        "model": "gpt-4o-mini",
        "fallbacks": [],
        "max_tokens": 40,
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "lookup",
                    "parameters": {"type": "object", "url": "https://x.example/" + "A" * 40_000},
                },
            }
        ],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": TEXT},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                ],
            }
        ],
    },
    # a followed stream cut after tokens goes on elsewhere (Gemini, down the chain, takes the prefill):
    # two calls, each paying for the long prompt
    "continuation": {
        "model": "claude-sonnet-4-5",
        "max_tokens": 40,
        "stream": True,
        "messages": [{"role": "user", "content": TEXT * 8}],
    },
    # a hedged interactive job whose first deployment is slow races a second call on the next one:
    # both are paid for (the loser its prompt, by estimate)
    "hedge": {
        "model": "gpt-4o",
        "max_tokens": 40,
        "hedge": {"after_ms": 50},
        "messages": [{"role": "user", "content": TEXT * 8}],
    },
}
# fields whose jobs a client follows (the interactive queue), and the fault that makes them pay more
INTERACTIVE = {"continuation", "hedge"}
FAULTS: dict[str, dict[str, Any]] = {
    "continuation": {
        "credential": "sk-sim-anthropic",
        "model": "claude-sonnet-4-5",
        "kind": "cut",
        "after_chunks": 5,
    },
    "hedge": {"credential": "sk-sim-openai", "model": "gpt-4o", "kind": "latency", "latency_ms": 800},
}


@pytest.mark.parametrize("field", sorted(FIELDS))
async def test_concurrent_submits_never_spend_past_the_credit(e2e: Producer, sim, field: str) -> None:
    tenant = f"spend-{field}-{uuid.uuid4().hex[:6]}"
    job = FIELDS[field]
    interactive = field in INTERACTIVE
    reserve = e2e.validator.prepare(dict(job), now=0, interactive=interactive).reserve_nanos
    credit = reserve * 5  # room for five jobs' worst case at once
    ledger = Ledger(e2e.redis)
    await ledger.add(tenant, str(credit / 1e9))
    producers = [await Producer.connect(e2e.settings, e2e.catalog) for _ in range(6)]
    if field in FAULTS:
        await sim.faults(FAULTS[field])
    try:
        batches = await asyncio.gather(
            *(
                p.submit_many(
                    [{**job, "messages": [*job["messages"], {"role": "user", "content": f"{i}-{k}"}]}] * 1,
                    tenant=tenant,
                    interactive=interactive,
                )
                for i, p in enumerate(producers)
                for k in range(10)
            )
        )
        results = [r for batch in batches for r in batch]
        accepted = [r for r in results if isinstance(r, Submitted)]
        assert accepted and any(isinstance(r, InsufficientCredits) for r in results)
        records = await e2e.wait_many(accepted, timeout=60)
    finally:
        for p in producers:
            await p.close()
        await sim.faults()
    assert all(r.status == "succeeded" for r in records), [r.error for r in records]
    if field == "continuation":  # the fault did make jobs pay for two calls
        assert any(r.attempts[0].error_code == "stream_interrupted" for r in records)
    if field == "hedge":  # so did the hedge
        assert any(a.error_code == "hedge_lost" and a.cost for r in records for a in r.attempts)
    raw = {k.decode(): int(v) for k, v in (await e2e.redis.hgetall(credits_key(tenant))).items()}
    # each job reserved its worst case; what it really cost may exceed that (an estimate), by at most
    # one job's overrun at any moment: never the 8-13x of a reservation that ignores a field
    overrun = max(r.usage.cost_nanos for r in records) - reserve
    assert raw["spent"] <= credit + max(overrun, 0), (raw, credit, overrun)
    assert raw["reserved"] == 0 and raw["spent"] == sum(r.usage.cost_nanos for r in records)
    assert all(r.usage.cost_nanos <= reserve for r in records), "a reservation below a job's real cost"


async def test_a_job_with_more_images_than_a_job_may_carry_is_refused_at_submit(e2e: Producer) -> None:
    limit = e2e.settings.max_images_per_job
    part = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    job = {"model": "gpt-4o", "messages": [{"role": "user", "content": [part] * (limit + 1)}]}
    (refused,) = await e2e.submit_many([job])
    assert isinstance(refused, Exception)
    assert (
        refused.code == "invalid_request" and refused.param == f"messages[0].content[{limit}].image_url.url"
    )


def _cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llm_router.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_tenant_policy_is_set_and_shown(worker_env: dict[str, str]) -> None:
    tenant = f"policy-{uuid.uuid4().hex[:6]}"
    shown = _cli(worker_env, "tenants", "show", tenant, "--json")
    assert shown.returncode == 0, shown.stderr
    before = orjson.loads(shown.stdout)["policy"]
    assert before["max_queued"]["set"] is False  # the process setting
    done = _cli(worker_env, "tenants", "set", tenant, "max_queued=7", "max_images_per_job=3", "--json")
    assert done.returncode == 0, done.stderr
    after = orjson.loads(done.stdout)["policy"]
    assert (after["max_queued"]["value"], after["max_queued"]["set"]) == (7, True)
    assert after["max_images_per_job"]["value"] == 3
    unset = orjson.loads(_cli(worker_env, "tenants", "set", tenant, "max_queued=", "--json").stdout)["policy"]
    assert unset["max_queued"]["set"] is False
    for bad in ("bogus=1", "max_queued=lots", "max_queued=-1", "nokeyvalue"):
        refused = _cli(worker_env, "tenants", "set", tenant, bad)
        assert refused.returncode == 2 and refused.stderr.startswith("error: "), (bad, refused.stderr)


async def test_a_cut_off_bulk_submit_keeps_its_handles_and_resumes(
    e2e: Producer, worker_env, tmp_path
) -> None:
    """Redis dies half way through a submit: the ids of the lines it accepted were already printed
    and written to --out; ``--resume`` accepts the rest, and nothing is queued twice."""
    from llm_router.testing.redis_server import RedisServer

    lines = [
        orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"cut {i}"}]})
        for i in range(20_000)
    ]
    src = tmp_path / "jobs.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "handles.jsonl"
    (tmp_path / "redis").mkdir()
    with RedisServer(appendonly=True, data_dir=tmp_path / "redis") as server:
        env = {**worker_env, "REDIS_URL": server.url, "LLM_ROUTER_ENQUEUE_CHUNK": "500"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "llm_router.cli", "submit", str(src), "--out", str(out)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stderr is not None
        printed = [proc.stdout.readline().strip() for _ in range(1000)]  # the first chunks went in
        await asyncio.to_thread(server.kill)  # Redis dies mid-submit
        rest, err = await asyncio.to_thread(proc.communicate, timeout=60)
        printed += rest.split()
        assert proc.returncode != 0
        submit_id = err.splitlines()[0].split()[1]
        assert 1000 <= len(printed) < 20_000
        assert printed == [f"{submit_id}-{n}" for n in range(1, len(printed) + 1)]
        handles = [orjson.loads(x) for x in out.read_bytes().splitlines()]
        assert [h["job_id"] for h in handles] == printed  # --out has them too, as they were accepted
        await asyncio.to_thread(server.start)  # back, from its AOF
        resumed = await asyncio.to_thread(_cli, env, "submit", str(src), "--resume", submit_id)
        assert resumed.returncode == 0, resumed.stderr
        ids = resumed.stdout.split()
        assert ids == [f"{submit_id}-{n}" for n in range(1, 20_001)]
        from redis.asyncio import Redis

        redis = Redis.from_url(server.url)
        try:
            queued = await Store(redis, queue_name=e2e.settings.queue_name, record_ttl_s=60).queued()
            records = await redis.exists(*(record_key(f"default/{i}") for i in ids))
        finally:
            await redis.aclose()
    # every line once: none lost, none twice (a line accepted just before the kill and not yet synced
    # to the AOF is simply accepted again by the resume, under the same id)
    assert queued == records == 20_000
