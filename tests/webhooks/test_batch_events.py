"""Batches of our Batch API tell their end: ``batch.completed``, ``batch.cancelled``, ``batch.failed``
(``batch.expired`` goes the same way, from the same finalize step), through the official OpenAI
SDK with our ``webhook`` extension in ``extra_body``; their lines report nothing of their own."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import openai
import orjson

from .conftest import Receiver, System, secret_of


def line(custom_id: str, text: str, model: str = "gpt-4o-mini") -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 20}
    return orjson.dumps(
        {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    )


async def client_for(system: System, tenant: str) -> openai.AsyncOpenAI:
    key = await system.key_for(tenant)
    return openai.AsyncOpenAI(base_url=f"{system.url}/v1", api_key=key, max_retries=0, timeout=30)


async def create(client: openai.AsyncOpenAI, lines: list[bytes], **extra: Any) -> Any:
    file = await client.files.create(file=("in.jsonl", b"\n".join(lines) + b"\n"), purpose="batch")
    return await client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h", **extra
    )


async def batch_log(system: System, tenant: str, batch_id: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {await system.key_for(tenant)}"}
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{system.url}/v1/batches/{batch_id}/webhooks", headers=headers) as r,
    ):
        assert r.status == 200, await r.text()
        return await r.json()


async def test_a_batch_reports_its_end_once_and_its_lines_do_not(
    system: System, receiver: Receiver, until
) -> None:
    t = f"hooks-batch-{uuid.uuid4().hex[:6]}"
    assert system.cli("webhooks", "set", t, receiver.url("default")).returncode == 0  # lines would use it
    client = await client_for(system, t)
    created = await create(
        client,
        [line(f"r{i}", f"question {i}") for i in range(5)],
        metadata={"run": "one"},
        extra_body={"webhook": {"url": receiver.url("batch")}},
    )
    await until(lambda: receiver.calls["batch"], timeout=30, what="batch.completed")
    batch = await client.batches.retrieve(created.id)
    (call,) = receiver.calls["batch"]
    payload = call.verified(secret_of(t))
    assert payload["type"] == "batch.completed"
    data = payload["data"]
    assert (data["id"], data["object"], data["status"]) == (created.id, "batch", "completed")
    assert data["request_counts"] == {"total": 5, "completed": 5, "failed": 0}
    assert data["output_file_id"] == batch.output_file_id and data["metadata"] == {"run": "one"}

    async def logged() -> dict[str, Any] | None:
        log = await batch_log(system, t, created.id)
        return log if log["state"] == "delivered" else None

    log = await until(logged, timeout=5, what="the delivery logged")
    assert log["event"] == "batch.completed"
    assert log["webhook_id"] == call.headers["webhook-id"]
    assert receiver.calls["default"] == []  # five lines ended: none reported on its own

    other = await client_for(system, f"hooks-other-{uuid.uuid4().hex[:6]}")
    async with aiohttp.ClientSession() as s:  # another tenant's batch log: 404, like an unknown id
        resp = await s.get(
            f"{system.url}/v1/batches/{created.id}/webhooks",
            headers={"Authorization": f"Bearer {other.api_key}"},
        )
        assert resp.status == 404


async def test_a_cancelled_and_a_failed_batch_say_so(system: System, receiver: Receiver, until, sim) -> None:
    t = f"hooks-batch-{uuid.uuid4().hex[:6]}"
    client = await client_for(system, t)
    await sim.faults({"model": "gpt-4.1-nano", "kind": "latency", "latency_ms": 3000})
    try:
        slow = await create(
            client,
            [line(f"s{i}", f"slow {i}", model="gpt-4.1-nano") for i in range(3)],
            extra_body={"webhook": {"url": receiver.url("cancelled")}},
        )
        await until(lambda: _status_in(client, slow.id, {"in_progress"}), timeout=10, what="the batch to run")
        await client.batches.cancel(slow.id)
        await until(lambda: receiver.calls["cancelled"], timeout=20, what="batch.cancelled")
    finally:
        await sim.faults()
    payload = receiver.calls["cancelled"][0].verified(secret_of(t))
    assert payload["type"] == "batch.cancelled" and payload["data"]["id"] == slow.id

    empty = await create(
        client, [b'{"not": "a request"}'], extra_body={"webhook": {"url": receiver.url("failed")}}
    )
    await until(lambda: receiver.calls["failed"], timeout=20, what="batch.failed")
    payload = receiver.calls["failed"][0].verified(secret_of(t))
    assert payload["type"] == "batch.failed" and payload["data"]["id"] == empty.id


async def _status_in(client: openai.AsyncOpenAI, batch_id: str, statuses: set[str]) -> bool:
    return (await client.batches.retrieve(batch_id)).status in statuses
