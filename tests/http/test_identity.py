"""Job ids are private to their tenant, and ``Idempotency-Key`` names a job inside it, over HTTP."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
import orjson

from producer.http.batches import batch_id_for
from tests.http.test_jobs_api import job, wait_status


async def test_another_tenants_id_behaves_exactly_like_a_free_one(api: Any, until: Any) -> None:
    a, b = api.headers("id-alice"), api.headers("id-bob")
    job_id = f"order-{uuid.uuid4().hex[:8]}"
    async with aiohttp.ClientSession() as s:
        mine = await s.post(f"{api.url}/v1/jobs", json=job("alice's", job_id=job_id), headers=a)
        assert mine.status == 201
        # bob learns nothing (no 409 to tell him the id is taken) and squats nothing: the id is free
        # for him, and names his own job from now on
        theirs = await s.post(f"{api.url}/v1/jobs", json=job("bob's", job_id=job_id), headers=b)
        free = await s.post(
            f"{api.url}/v1/jobs", json=job("bob's", job_id=f"free-{uuid.uuid4().hex[:8]}"), headers=b
        )
        assert theirs.status == free.status == 201
        alices = await wait_status(s, f"{api.url}/v1/jobs/{job_id}", a, until)
        bobs = await wait_status(s, f"{api.url}/v1/jobs/{job_id}", b, until)
        assert (alices["tenant"], bobs["tenant"]) == ("id-alice", "id-bob")
        assert alices["request"]["messages"][0]["content"] == "alice's"
        assert bobs["request"]["messages"][0]["content"] == "bob's"


async def test_idempotency_key_names_one_job_on_jobs(api: Any) -> None:
    headers = {**api.headers("id-acme"), "Idempotency-Key": f"retry-{uuid.uuid4().hex}"}
    async with aiohttp.ClientSession() as s:
        first = await s.post(f"{api.url}/v1/jobs", json=job(), headers=headers)
        again = await s.post(f"{api.url}/v1/jobs", json=job(), headers=headers)
        assert first.status == 201 and again.status == 200
        one, two = await first.json(), await again.json()
        assert one["id"] == two["id"] == headers["Idempotency-Key"] and two["created"] is False
        clash = await s.post(f"{api.url}/v1/jobs", json=job(job_id="something-else"), headers=headers)
        assert clash.status == 400 and (await clash.json())["error"]["param"] == "job_id"
        # a key that is not a job id still names one job (by its digest)
        odd = {**api.headers("id-acme"), "Idempotency-Key": "a key with spaces / and slashes"}
        first_odd = await (await s.post(f"{api.url}/v1/jobs", json=job(), headers=odd)).json()
        again_odd = await (await s.post(f"{api.url}/v1/jobs", json=job(), headers=odd)).json()
        assert first_odd["id"] == again_odd["id"] and again_odd["created"] is False


async def test_idempotency_key_on_a_bulk_request_names_each_line(api: Any) -> None:
    key = f"bulk-{uuid.uuid4().hex[:8]}"
    headers = {**api.headers("id-acme"), "Idempotency-Key": key}
    body = {"jobs": [job(f"line {i}") for i in range(3)] + [job("own", job_id=f"own-{key}")]}
    async with aiohttp.ClientSession() as s:
        first = (await (await s.post(f"{api.url}/v1/jobs", json=body, headers=headers)).json())["data"]
        again = (await (await s.post(f"{api.url}/v1/jobs", json=body, headers=headers)).json())["data"]
    assert [d["id"] for d in first] == [f"{key}-0", f"{key}-1", f"{key}-2", f"own-{key}"]
    assert [d["id"] for d in again] == [d["id"] for d in first]
    assert all(d["created"] for d in first) and not any(d["created"] for d in again)


async def test_a_retried_chat_with_the_same_key_gets_the_first_answer_and_one_call(
    api: Any, sim: Any
) -> None:
    key = f"chat-{uuid.uuid4().hex}"
    headers = {**api.headers("id-chat"), "Idempotency-Key": key}
    # a model no other test here calls: the simulator's count for it is this test's alone
    body = {
        "model": "gpt-4.1-nano",
        "messages": [{"role": "user", "content": f"once {key}"}],
        "max_tokens": 8,
    }
    before = await _calls(sim, "gpt-4.1-nano")
    async with aiohttp.ClientSession() as s:
        first = await s.post(f"{api.url}/v1/chat/completions", json=body, headers=headers)
        again = await s.post(f"{api.url}/v1/chat/completions", json=body, headers=headers)
        assert first.status == again.status == 200
        assert first.headers["x-llm-router-job-id"] == again.headers["x-llm-router-job-id"] == key
        one, two = await first.json(), await again.json()
    assert one["choices"] == two["choices"] and one["usage"]["cost"] == two["usage"]["cost"]
    assert await _calls(sim, "gpt-4.1-nano") - before == 1  # run and paid for once


async def _calls(sim: Any, model: str) -> int:
    return sum(c["count"] for c in (await sim.calls())["calls"] if c["model"] == model)


async def _post_raw(api: Any, path: str, headers: bytes, body: bytes) -> tuple[int, dict[str, Any]]:
    """A request written byte by byte: a header value that is not UTF-8, as no client library sends."""
    reader, writer = await asyncio.open_connection("127.0.0.1", int(api.url.rsplit(":", 1)[1]))
    writer.write(
        b"POST "
        + path.encode()
        + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + headers
        + b"Content-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), orjson.loads(payload) if payload else {}


async def test_an_idempotency_key_that_is_not_utf8_still_names_one_job(api: Any) -> None:
    auth = api.headers("id-acme")["Authorization"].encode()
    key = b"Idempotency-Key: \xff\xfe" + uuid.uuid4().hex.encode() + b"\r\n"
    headers = b"Authorization: " + auth + b"\r\n" + key
    body = orjson.dumps(job())
    first = await _post_raw(api, "/v1/jobs", headers, body)
    again = await _post_raw(api, "/v1/jobs", headers, body)
    assert (first[0], again[0]) == (201, 200), (first, again)
    assert first[1]["id"] == again[1]["id"] and again[1]["created"] is False
    # the chat endpoint and a batch's creation take the same key without an encoding crash
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    other = b"Authorization: " + auth + b"\r\nIdempotency-Key: \xfe" + uuid.uuid4().hex.encode() + b"\r\n"
    status, answer = await _post_raw(api, "/v1/chat/completions", other, orjson.dumps(chat))
    assert status == 200, answer
    status, answer = await _post_raw(
        api, "/v1/batches", headers, orjson.dumps({"input_file_id": "file-none"})
    )
    assert status in (400, 404) and answer["error"]["code"] != "internal_error", answer
    # (refused before its id is made:) the batch's id from such a key, as aiohttp hands it over
    assert batch_id_for("id-acme", "\udcff\udcfekey") == batch_id_for("id-acme", "\udcff\udcfekey")
