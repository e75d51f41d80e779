"""The OpenAI Batch API end to end: the official SDK against ``llm-router serve``, workers and the
simulator (separate processes, talking through Redis), plus the batch runner in-process on a queue
no worker serves, for what must not depend on timing (re-enqueuing after a crash, 10,000 lines)."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from openai.types import Batch, FileObject
from openai.types.chat import ChatCompletion
from redis.asyncio import Redis

from llm_router.keys import batch_work_key
from llm_router.testing.redis_server import RedisServer
from llm_router.testing.sim_env import simulated_env
from producer.http.batch_lines import job_id_for
from producer.http.batch_runner import BatchRunner
from producer.http.files import FileStore
from producer.producer import Producer

Until = Callable[..., Awaitable[object]]
MODEL = "gpt-4o-mini"
SMALL_FILE_CAP = 8 * 1024


def line(custom_id: str, text: str, **over: Any) -> dict[str, Any]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 20}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body, **over}


def jsonl(lines: list[Any]) -> bytes:
    return b"".join((x if isinstance(x, bytes) else orjson.dumps(x)) + b"\n" for x in lines)


def tenant() -> str:
    return f"batch-{uuid.uuid4().hex[:8]}"


async def wait_status(
    client: openai.AsyncOpenAI, batch_id: str, until: Until, statuses: set[str], timeout: float = 30
) -> Batch:
    # lines run in provider batches (the `auto` lane): the batcher role may first move from a worker
    # an earlier test killed, then a batch forms, and the simulator takes a second or two
    async def check() -> Batch | None:
        batch = await client.batches.retrieve(batch_id)
        return batch if batch.status in statuses else None

    return await until(check, timeout=timeout, what=f"batch {batch_id} to reach {statuses}")  # type: ignore[return-value]


async def read_lines(client: openai.AsyncOpenAI, file_id: str) -> dict[str, dict[str, Any]]:
    """A result file's lines by ``custom_id``."""
    content = await client.files.content(file_id)
    return {row["custom_id"]: row for row in map(orjson.loads, content.read().splitlines())}


async def test_sdk_batch_flow(api: Any, until: Until) -> None:
    who = tenant()
    client = api.async_openai(who)
    marker = uuid.uuid4().hex
    requests = [line(f"req-{i}", f"{marker} question {i}") for i in range(12)]

    uploaded = await client.files.create(file=("in.jsonl", jsonl(requests)), purpose="batch")
    assert isinstance(uploaded, FileObject)
    assert uploaded.id.startswith("file-") and uploaded.purpose == "batch" and uploaded.status == "processed"
    assert uploaded.bytes == len(jsonl(requests)) and uploaded.filename == "in.jsonl"
    assert (await client.files.content(uploaded.id)).read() == jsonl(requests)

    created = await client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"run": marker},
    )
    assert created.status in ("validating", "in_progress") and created.metadata == {"run": marker}
    batch = await wait_status(client, created.id, until, {"completed", "failed", "expired", "cancelled"})
    assert batch.status == "completed", batch
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (
        12,
        12,
        0,
    )
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at and batch.error_file_id is None
    assert batch.usage is not None and batch.usage.total_tokens > 0

    assert batch.output_file_id is not None
    output = await client.files.retrieve(batch.output_file_id)
    assert output.purpose == "batch_output"
    rows = await read_lines(client, batch.output_file_id)
    assert set(rows) == {r["custom_id"] for r in requests}
    for row in rows.values():
        assert row["id"].startswith("batch_req_") and row["error"] is None
        assert row["response"]["status_code"] == 200
        completion = ChatCompletion.model_validate(row["response"]["body"])
        assert completion.choices[0].message.content
        assert row["response"]["body"]["usage"]["cost"] >= 0

    # each line is a job of the caller's tenant, readable by its id
    job_id = rows["req-3"]["response"]["request_id"]
    assert job_id == job_id_for(batch.id, 3)
    async with (
        aiohttp.ClientSession(headers=api.headers(who)) as http,
        http.get(f"{api.url}/v1/jobs/{job_id}") as resp,
    ):
        assert resp.status == 200
        record = await resp.json()
    assert record["tenant"] == who and record["status"] == "succeeded"
    assert record["metadata"] == {"batch_id": batch.id, "custom_id": "req-3"}

    listed = [b.id async for b in client.batches.list(limit=1)]
    assert batch.id in listed
    with pytest.raises(openai.ConflictError):  # a completed batch cannot be cancelled
        await client.batches.cancel(batch.id)


async def test_bad_lines_go_to_the_error_file(api: Any, until: Until) -> None:
    client = api.async_openai(tenant())
    rows = [
        line("ok-1", "first"),
        b"{not json",
        line("ok-2", "second"),
        line("ok-1", "same custom_id again"),
        line("wrong-url", "x", url="/v1/embeddings"),
        line("wrong-method", "x", method="GET"),
        {"custom_id": "no-body", "method": "POST", "url": "/v1/chat/completions", "body": "hi"},
        line(
            "unknown-model",
            "x",
            body={"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]},
        ),
        {"method": "POST", "url": "/v1/chat/completions", "body": {}},
        b"",  # blank lines are not requests
        line("ok-3", "third"),
        # valid, so it runs, and fails at its worker: past its deadline before it starts
        line(
            "too-late",
            "x",
            body={"model": MODEL, "messages": [{"role": "user", "content": "x"}], "deadline_s": 1e-6},
        ),
    ]
    uploaded = await client.files.create(file=("mixed.jsonl", jsonl(rows)), purpose="batch")
    created = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch = await wait_status(client, created.id, until, {"completed", "failed"})
    assert batch.status == "completed"
    assert batch.request_counts is not None
    counts = batch.request_counts
    assert (counts.total, counts.completed, counts.failed) == (11, 3, 8)
    assert batch.output_file_id and batch.error_file_id
    assert set(await read_lines(client, batch.output_file_id)) == {"ok-1", "ok-2", "ok-3"}

    content = (await client.files.content(batch.error_file_id)).read().splitlines()
    errors = [orjson.loads(x) for x in content]
    failed = errors.pop()  # in input order: the line that ran is last
    assert failed["custom_id"] == "too-late" and failed["error"]["code"] == "deadline_exceeded"
    assert failed["response"]["status_code"] == 504 and failed["response"]["request_id"] == job_id_for(
        batch.id, 11
    )
    assert failed["response"]["body"]["error"]["code"] == "deadline_exceeded"
    assert len(errors) == 7 and all(e["response"] is None for e in errors)
    codes = [(e["custom_id"], e["error"]["code"]) for e in errors]
    assert codes == [
        (None, "invalid_json"),
        ("ok-1", "duplicate_custom_id"),
        ("wrong-url", "invalid_url"),
        ("wrong-method", "invalid_method"),
        ("no-body", "invalid_body"),
        ("unknown-model", "model_not_found"),
        (None, "missing_custom_id"),
    ]
    assert batch.errors is not None and batch.errors.data is not None
    assert [(e.line, e.code) for e in batch.errors.data][:2] == [
        (2, "invalid_json"),
        (4, "duplicate_custom_id"),
    ]


async def test_the_batch_usage_counts_what_every_line_was_charged(api: Any, sim: Any, until: Until) -> None:
    # a line cut by its deadline mid-call pays the prompt its provider read: the batch's cost says so
    who = tenant()
    client = api.async_openai(who)
    slow = {"model": "o4-mini", "messages": [{"role": "user", "content": "x " * 400}], "deadline_s": 1.0}
    uploaded = await client.files.create(
        file=("usage.jsonl", jsonl([line("ok", "hi"), line("cut", "x", body={**slow, "fallbacks": []})])),
        purpose="batch",
    )
    await sim.faults({"model": "o4-mini", "kind": "latency", "latency_ms": 4000})
    try:
        created = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        batch = await wait_status(client, created.id, until, {"completed", "failed"})
    finally:
        await sim.faults()
    assert batch.request_counts is not None and batch.request_counts.failed == 1
    costs = []
    async with aiohttp.ClientSession() as s:
        for i in range(2):
            r = await s.get(f"{api.url}/v1/jobs/{job_id_for(batch.id, i)}", headers=api.headers(who))
            costs.append(((await r.json()).get("usage") or {}).get("cost") or 0)
    assert costs[1] > 0  # the cut line was charged
    assert batch.model_dump()["usage"]["cost"] == pytest.approx(sum(costs), abs=1e-9)


async def test_cancel_ends_cancelled_with_partial_files(idle_api: Any, until: Until) -> None:
    """On a server whose queue no worker serves (limit: 3 queued per tenant), so nothing runs."""
    who = tenant()
    client = idle_api.async_openai(who)
    rows = [line(f"c-{i}", f"cancel me {i}") for i in range(5)]
    uploaded = await client.files.create(file=("c.jsonl", jsonl(rows)), purpose="batch")
    created = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch = await wait_status(client, created.id, until, {"in_progress"})
    assert batch.request_counts is not None and batch.request_counts.failed == 2  # over the tenant's limit

    cancelling = await client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
    batch = await wait_status(client, batch.id, until, {"cancelled"})
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (
        5,
        0,
        5,
    )
    assert batch.output_file_id is None and batch.error_file_id and batch.cancelled_at
    errors = await read_lines(client, batch.error_file_id)
    assert {k: v["error"]["code"] for k, v in errors.items()} == {
        "c-0": "batch_cancelled",
        "c-1": "batch_cancelled",
        "c-2": "batch_cancelled",
        "c-3": "too_many_queued",
        "c-4": "too_many_queued",
    }
    job_url = f"{idle_api.url}/v1/jobs/{job_id_for(batch.id, 0)}"
    async with aiohttp.ClientSession(headers=idle_api.headers(who)) as http, http.get(job_url) as resp:
        assert (await resp.json())["status"] == "cancelled"

    assert (await client.batches.cancel(batch.id)).status == "cancelled"  # cancelling again changes nothing


async def test_another_tenants_batch_and_files_are_not_found(idle_api: Any, until: Until) -> None:
    owner = idle_api.async_openai(tenant())
    other = idle_api.async_openai(tenant())
    uploaded = await owner.files.create(file=("o.jsonl", jsonl([line("a", "b")])), purpose="batch")
    batch = await owner.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    for call in (
        other.files.retrieve(uploaded.id),
        other.files.content(uploaded.id),
        other.files.delete(uploaded.id),
        other.batches.retrieve(batch.id),
        other.batches.cancel(batch.id),
        other.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        ),
        owner.batches.retrieve("batch_nope"),
    ):
        with pytest.raises(openai.NotFoundError):
            await call
    assert [b.id async for b in other.batches.list()] == []
    assert [f.id async for f in other.files.list()] == []
    assert uploaded.id in [f.id async for f in owner.files.list()]
    await owner.batches.cancel(batch.id)
    await wait_status(owner, batch.id, until, {"cancelled"})


async def test_create_refuses_bad_parameters(idle_api: Any) -> None:
    client = idle_api.async_openai(tenant())
    uploaded = await client.files.create(file=("p.jsonl", jsonl([line("a", "b")])), purpose="batch")
    for kwargs, param in (
        ({"endpoint": "/v1/embeddings"}, "endpoint"),
        ({"completion_window": "1h"}, "completion_window"),
        ({"metadata": {"k": 1}}, "metadata"),
    ):
        body = {"input_file_id": uploaded.id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
        with pytest.raises(openai.BadRequestError) as info:
            await client.post("/batches", body={**body, **kwargs}, cast_to=Batch)
        assert info.value.body["param"] == param  # type: ignore[index]


async def test_idempotency_key_names_one_batch(api: Any, until: Until) -> None:
    client = api.async_openai(tenant())
    uploaded = await client.files.create(
        file=("i.jsonl", jsonl([line(f"i-{i}", f"idem {i}") for i in range(4)])), purpose="batch"
    )
    key = {"Idempotency-Key": uuid.uuid4().hex}
    args = {"input_file_id": uploaded.id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    first = await client.batches.create(**args, extra_headers=key)  # type: ignore[arg-type]
    again = await client.batches.create(**args, extra_headers=key)  # type: ignore[arg-type]
    assert again.id == first.id
    other = await client.batches.create(**args)  # type: ignore[arg-type]
    assert other.id != first.id
    done = await wait_status(client, first.id, until, {"completed"})
    assert done.request_counts is not None and done.request_counts.total == 4


@pytest.fixture(scope="module")
def disk_api(
    api: Any, sim: Any, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """A second server on the same Redis and queues as ``api`` (so ``api``'s workers run its jobs),
    keeping files on disk, with a small file cap."""
    files_dir = tmp_path_factory.mktemp("files")
    env = simulated_env(os.environ, redis_url=redis_server.url, sim_url=sim.url)
    env.update(
        LLM_ROUTER_QUEUE_NAME=api.settings.queue_name,
        LLM_ROUTER_INTERACTIVE_QUEUE_NAME=api.settings.interactive_queue_name,
        LLM_ROUTER_FILES_MAX_BYTES=str(SMALL_FILE_CAP),
        LLM_ROUTER_FILES_DIR=str(files_dir),
        LLM_ROUTER_LOG_LEVEL="WARNING",
    )
    env.pop("LLM_ROUTER_AUTH_DISABLED", None)
    server = type(api.server)(env, Path(str(api.server.log_path)).with_name("server-disk.log"))
    try:
        server.wait_ready()
        yield type(api)(url=server.url, settings=api.settings, server=server), files_dir
    finally:
        server.stop()


async def test_file_over_the_cap_is_413(disk_api: Any) -> None:
    server, files_dir = disk_api
    client = server.async_openai(tenant())
    with pytest.raises(openai.APIStatusError) as info:
        await client.files.create(file=("big.jsonl", b"x" * (SMALL_FILE_CAP + 1)), purpose="batch")
    assert info.value.status_code == 413
    assert not [p for p in files_dir.iterdir() if p.name.endswith(".part")]


async def test_disk_files_and_a_batch_read_from_another_server(disk_api: Any, api: Any, until: Until) -> None:
    server, files_dir = disk_api
    who = tenant()
    uploaded = await server.async_openai(who).files.create(
        file=("d.jsonl", jsonl([line(f"d-{i}", f"disk {i}") for i in range(3)])), purpose="batch"
    )
    assert (files_dir / uploaded.id).exists()
    batch = await server.async_openai(who).batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    # the other server process sees and advances the same batch: its state lives in Redis
    done = await wait_status(api.async_openai(who), batch.id, until, {"completed"})
    assert done.output_file_id is not None
    rows = await read_lines(server.async_openai(who), done.output_file_id)
    assert set(rows) == {"d-0", "d-1", "d-2"}


# -- the runner in-process, on a queue no worker serves ----------------------------------------


@pytest.fixture
async def runner(producer: Producer, redis: Redis) -> BatchRunner:
    files = FileStore(redis, ttl_s=600)
    return BatchRunner(redis, producer, files, ttl_s=600)


async def _new_batch(runner: BatchRunner, who: str, content: bytes) -> str:
    uploaded = await runner.files.put(who, filename="in.jsonl", purpose="batch", content=content)
    batch_id = f"batch_{uuid.uuid4().hex}"
    now = int(time.time())
    fields = {
        "id": batch_id,
        "tenant": who,
        "status": "validating",
        "endpoint": "/v1/chat/completions",
        "input_file_id": uploaded["id"],
        "completion_window": "24h",
        "created_at": now,
        "expires_at": now + 86400,
    }
    assert await runner.create(batch_id, who, fields)
    return batch_id


async def test_ten_thousand_lines_enqueue_once_even_when_enqueued_again(
    runner: BatchRunner, producer: Producer, redis: Redis
) -> None:
    who = tenant()
    n = 10_000
    batch_id = await _new_batch(runner, who, jsonl([line(f"r{i}", f"big {i}") for i in range(n)]))
    started = time.monotonic()
    await runner.ingest(batch_id)
    took = time.monotonic() - started
    batch = await runner.load(batch_id)
    assert batch is not None and batch["status"] == "in_progress" and batch["total"] == n
    assert await producer.store.queued() == n
    assert took < 5, f"enqueuing {n} lines took {took:.2f} s"

    # a server that died after enqueuing, before recording it: the next one enqueues again
    await redis.hdel(batch_work_key(batch_id), "done")
    assert await runner.update(batch_id, ["in_progress"], {"status": "validating"}) == 1
    await runner.ingest(batch_id)
    assert await producer.store.queued() == n  # the same jobs, found, not made twice
    assert (await runner.load(batch_id) or {})["status"] == "in_progress"

    # a finished line counts at the next read; then cancelling ends every other one
    record = await producer.cancel(job_id_for(batch_id, 7), tenant=who)
    assert record.status == "cancelled"
    batch = await runner.advance(batch_id)
    assert batch is not None and (batch["completed"], batch["failed"]) == (0, 1)
    assert await runner.update(batch_id, ["in_progress"], {"status": "cancelling"}) == 1
    started = time.monotonic()
    batch = await runner.advance(batch_id)  # cancels the queued jobs
    batch = await runner.advance(batch_id)  # all ended: finalize
    assert batch is not None and batch["status"] == "cancelled", batch
    assert time.monotonic() - started < 10
    assert await producer.store.queued() == 0
    errors = (await runner.files.content(who, batch["error_file_id"])).splitlines()
    assert len(errors) == n
    assert {orjson.loads(e)["error"]["code"] for e in errors} == {"batch_cancelled"}
    assert orjson.loads(errors[8])["custom_id"] == "r8"


async def test_a_batch_past_its_window_expires(runner: BatchRunner, producer: Producer, redis: Redis) -> None:
    who = tenant()
    batch_id = await _new_batch(runner, who, jsonl([line(f"e{i}", f"expire {i}") for i in range(4)]))
    await runner.ingest(batch_id)
    assert await producer.store.queued() == 4
    assert await runner.update(batch_id, ["in_progress"], {"expires_at": int(time.time()) - 1}) == 1
    batch = await runner.advance(batch_id)
    assert batch is not None and batch["status"] == "expired" and batch["expired_at"]
    assert (batch["total"], batch["completed"], batch["failed"]) == (4, 0, 4)
    assert await producer.store.queued() == 0  # its queued jobs will not run
    errors = [orjson.loads(x) for x in (await runner.files.content(who, batch["error_file_id"])).splitlines()]
    assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [
        (f"e{i}", "batch_expired") for i in range(4)
    ]
    assert await runner.advance(batch_id) == batch  # ended: reading again changes nothing


async def test_two_servers_finalize_a_batch_once(
    runner: BatchRunner, producer: Producer, redis: Redis
) -> None:
    """Two runners (two server processes) advance the same batch at once: it ends once, one set of files."""
    who = tenant()
    other = BatchRunner(redis, producer, FileStore(redis, ttl_s=600), ttl_s=600)
    batch_id = await _new_batch(runner, who, jsonl([line(f"t{i}", f"twice {i}") for i in range(300)]))
    await asyncio.gather(runner.ingest(batch_id), other.ingest(batch_id))
    assert await producer.store.queued() == 300
    for i in range(300):  # every job ends (cancelled on its own): the batch is complete
        await producer.cancel(job_id_for(batch_id, i), tenant=who)
    first, second = await asyncio.gather(runner.advance(batch_id), other.advance(batch_id))
    ended = await runner.load(batch_id)
    assert ended is not None and ended["status"] == "completed" and ended["failed"] == 300
    assert ended["id"] not in {i.decode() for i in await redis.smembers(runner.active_key)}
    for seen in (first, second):  # each saw it ended, or saw the other finalizing it
        assert seen is not None and seen["status"] in ("finalizing", "completed")
    errors = (await runner.files.content(who, ended["error_file_id"])).splitlines()
    assert len(errors) == 300 and orjson.loads(errors[0])["error"]["code"] == "cancelled"
