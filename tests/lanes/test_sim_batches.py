"""The simulator's Files and Batch APIs and flex tier, driven by the official openai SDK and checked
against its types (openai.types.Batch, FileObject)."""

from __future__ import annotations

import asyncio
import time

import openai
import orjson
import pytest
from openai.types import Batch, FileObject

from tests.lanes.conftest import sim_lane_counters


def _lines(n: int, model: str = "gpt-4o-mini") -> bytes:
    rows = [
        {
            "custom_id": f"job-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": model,
                "messages": [{"role": "user", "content": f"hello {i}"}],
                "max_tokens": 20,
            },
        }
        for i in range(n)
    ]
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


@pytest.fixture
def client(sim) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{sim.url}/v1", api_key="sk-sim", max_retries=0)


async def _until_status(
    client: openai.AsyncOpenAI, batch_id: str, statuses: set[str], timeout: float = 10
) -> Batch:
    deadline = time.monotonic() + timeout
    while True:
        raw = await client.batches.with_raw_response.retrieve(batch_id)
        batch = Batch.model_validate(orjson.loads(raw.content))  # strict: the SDK's own type
        if batch.status in statuses:
            return batch
        assert time.monotonic() < deadline, f"batch stayed {batch.status}"
        await asyncio.sleep(0.05)


async def test_upload_create_complete_and_read_results(client, sim_lanes) -> None:
    await sim_lanes(turnaround_s=[0.2, 0.4], seed=1)
    raw = await client.files.with_raw_response.create(file=("in.jsonl", _lines(5)), purpose="batch")
    uploaded = FileObject.model_validate(orjson.loads(raw.content))
    assert uploaded.purpose == "batch" and uploaded.bytes == len(_lines(5))
    created = await client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"k": "v"},
    )
    assert created.status == "in_progress" and created.metadata == {"k": "v"}
    done = await _until_status(client, created.id, {"completed"})
    assert done.request_counts is not None and done.request_counts.completed == 5
    assert done.error_file_id is None and done.output_file_id
    content = (await client.files.content(done.output_file_id)).content
    rows = [orjson.loads(line) for line in content.splitlines()]
    assert sorted(r["custom_id"] for r in rows) == [f"job-{i}" for i in range(5)]
    body = rows[0]["response"]["body"]
    assert rows[0]["response"]["status_code"] == 200 and body["object"] == "chat.completion"
    assert body["usage"]["prompt_tokens"] > 0
    listed = await client.batches.list()
    assert any(b.id == created.id for b in listed.data)


async def test_per_item_failures_go_to_the_error_file(client, sim_lanes) -> None:
    await sim_lanes(turnaround_s=[0.1, 0.1], item_failure=0.5, seed=3)
    f = await client.files.create(file=("in.jsonl", _lines(20)), purpose="batch")
    b = await client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = await _until_status(client, b.id, {"completed"})
    assert done.request_counts is not None
    assert (
        0 < done.request_counts.failed < 20
        and done.request_counts.completed + done.request_counts.failed == 20
    )
    errors = [orjson.loads(x) for x in (await client.files.content(done.error_file_id)).content.splitlines()]
    assert all(e["response"]["status_code"] == 500 for e in errors)


async def test_expiry_and_cancellation(client, sim_lanes) -> None:
    await sim_lanes(never_complete=1.0, expiry_s=0.3)
    f = await client.files.create(file=("in.jsonl", _lines(3)), purpose="batch")
    b = await client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    expired = await _until_status(client, b.id, {"expired"})
    lines = (await client.files.content(expired.error_file_id)).content.splitlines()
    assert [orjson.loads(x)["error"]["code"] for x in lines] == ["batch_expired"] * 3

    await sim_lanes(never_complete=1.0)
    b = await client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    cancelling = await client.batches.cancel(b.id)
    assert cancelling.status == "cancelling"
    cancelled = await _until_status(client, b.id, {"cancelled"})
    assert cancelled.cancelled_at is not None
    with pytest.raises(openai.ConflictError):
        await client.batches.cancel(b.id)


async def test_bad_requests_name_the_field(client) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await client.batches.create(
            input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert err.value.body["param"] == "input_file_id"
    f = await client.files.create(file=("in.jsonl", _lines(1)), purpose="batch")
    with pytest.raises(openai.BadRequestError) as err:
        await client.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h")
    assert err.value.body["param"] == "endpoint"
    with pytest.raises(openai.NotFoundError):
        await client.batches.retrieve("batch_nope")


async def test_flex_is_slower_and_sometimes_unavailable(client, sim, sim_lanes) -> None:
    await sim_lanes(flex_latency_ms=[150, 150], flex_unavailable=0.0)
    msgs = [{"role": "user", "content": "hi"}]
    t0 = time.perf_counter()
    answer = await client.chat.completions.create(model="gpt-4o-mini", messages=msgs, service_tier="flex")
    assert time.perf_counter() - t0 >= 0.15 and answer.service_tier == "flex"
    await sim_lanes(flex_unavailable=1.0)
    with pytest.raises(openai.RateLimitError) as err:
        await client.chat.completions.create(model="gpt-4o-mini", messages=msgs, service_tier="flex")
    assert "Resource unavailable" in str(err.value)
    plain = await client.chat.completions.create(model="gpt-4o-mini", messages=msgs)  # `now` is untouched
    assert plain.service_tier == "default"
    assert (await sim_lane_counters(sim))["flex_429"] >= 1
