"""``/v1/jobs`` over plain HTTP: bulk submit, read, follow the stream, cancel; tenants never meet."""

from __future__ import annotations

import time
import uuid
from typing import Any

import aiohttp
import orjson


def job(content: str = "Say hello.", **extra: Any) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": content}],
        **extra,
    }


async def wait_status(
    s: aiohttp.ClientSession, url: str, headers: dict[str, str], until: Any
) -> dict[str, Any]:
    async def ended() -> dict[str, Any] | None:
        record = await (await s.get(url, headers=headers)).json()
        return record if record["status"] in ("succeeded", "failed", "cancelled") else None

    return await until(ended, timeout=20, what=url)  # type: ignore[no-any-return]


async def test_bulk_submit_then_read_each_record(api: Any, until: Any) -> None:
    headers = api.headers("acme")
    body = {"jobs": [job(f"line {i}") for i in range(5)] + [{"model": "gpt-4o-mini"}, "not an object"]}
    async with aiohttp.ClientSession() as s:
        r = await s.post(f"{api.url}/v1/jobs", json=body, headers=headers)
        assert r.status == 200
        data = (await r.json())["data"]
        assert len(data) == 7
        assert all(d["created"] is True for d in data[:5])
        assert data[5]["error"]["code"] == "invalid_request" and data[5]["error"]["param"] == "messages"
        assert data[5]["error"]["status"] == 400
        assert data[6]["error"]["code"] == "invalid_request"
        for d in data[:5]:
            record = await wait_status(s, f"{api.url}/v1/jobs/{d['id']}", headers, until)
            assert record["status"] == "succeeded" and record["tenant"] == "acme"
            assert record["response"]["usage"]["cost"] > 0


async def test_single_job_idempotent_by_job_id(api: Any) -> None:
    headers = api.headers("acme")
    body = job(job_id=f"idem-{uuid.uuid4().hex[:8]}")
    async with aiohttp.ClientSession() as s:
        first = await s.post(f"{api.url}/v1/jobs", json=body, headers=headers)
        again = await s.post(f"{api.url}/v1/jobs", json=body, headers=headers)
        other = await s.post(f"{api.url}/v1/jobs", json={**body, "max_tokens": 17}, headers=headers)
        assert first.status == 201 and (await first.json())["created"] is True
        assert again.status == 200 and (await again.json()) == {"id": body["job_id"], "created": False}
        assert other.status == 409 and (await other.json())["error"]["code"] == "idempotency_conflict"


async def test_tenant_comes_from_the_key_and_isolates_jobs(api: Any, until: Any) -> None:
    a, b = api.headers("tenant-a"), api.headers("tenant-b")
    async with aiohttp.ClientSession() as s:
        r = await s.post(f"{api.url}/v1/jobs", json=job(tenant="tenant-b"), headers=a)
        assert r.status == 201
        job_id = (await r.json())["id"]
        record = await wait_status(s, f"{api.url}/v1/jobs/{job_id}", a, until)
        assert record["tenant"] == "tenant-a"  # the body's tenant is ignored
        for method, path in (
            ("GET", f"/v1/jobs/{job_id}"),
            ("GET", f"/v1/jobs/{job_id}/events"),
            ("DELETE", f"/v1/jobs/{job_id}"),
        ):
            r = await s.request(method, f"{api.url}{path}", headers=b)
            # another tenant's job answers exactly like an unknown one
            unknown = await s.request(method, f"{api.url}{path.replace(job_id, 'no-such-job')}", headers=b)
            assert r.status == unknown.status == 404, (method, path)
            assert (await r.json())["error"]["code"] == (await unknown.json())["error"]["code"] == "not_found"


async def test_events_replay_the_stream_then_the_outcome(api: Any, until: Any) -> None:
    headers = api.headers("acme")
    async with aiohttp.ClientSession() as s:
        r = await s.post(f"{api.url}/v1/jobs", json=job(stream=True, max_tokens=24), headers=headers)
        job_id = (await r.json())["id"]
        record = await wait_status(s, f"{api.url}/v1/jobs/{job_id}", headers, until)
        # joining after the end replays everything from the start
        r = await s.get(f"{api.url}/v1/jobs/{job_id}/events", headers=headers)
        assert r.status == 200 and r.content_type == "text/event-stream"
        raw = (await r.read()).decode()
    events = [e for e in raw.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    end = events[-2]
    assert end.startswith("event: end\n")
    outcome = orjson.loads(end.split("data: ", 1)[1])
    assert outcome["id"] == job_id and outcome["status"] == "succeeded" and outcome["usage"]["cost"] > 0
    chunks = [orjson.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert chunks and all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c["choices"])
    assert text == record["response"]["choices"][0]["message"]["content"]


async def test_cancel_a_queued_job_then_not_again(idle_api: Any) -> None:
    headers = idle_api.headers("canceller")
    async with aiohttp.ClientSession() as s:
        r = await s.post(f"{idle_api.url}/v1/jobs", json=job(), headers=headers)
        job_id = (await r.json())["id"]
        r = await s.delete(f"{idle_api.url}/v1/jobs/{job_id}", headers=headers)
        assert r.status == 200
        record = await r.json()
        assert record["status"] == "cancelled" and record["error"]["code"] == "cancelled"
        r = await s.delete(f"{idle_api.url}/v1/jobs/{job_id}", headers=headers)
        assert r.status == 409 and (await r.json())["error"]["code"] == "job_not_cancellable"
        # a cancelled job's events end at once with its outcome
        started = time.monotonic()
        raw = (
            await (await s.get(f"{idle_api.url}/v1/jobs/{job_id}/events", headers=headers)).read()
        ).decode()
        assert '"status":"cancelled"' in raw and raw.endswith("data: [DONE]\n\n")
        assert time.monotonic() - started < 5


async def test_local_image_paths_are_refused(api: Any, tmp_path: Any) -> None:
    image = tmp_path / "cat.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    body = {"model": "gpt-4o-mini", "prompt": "What is this?", "image": str(image)}
    async with aiohttp.ClientSession() as s:
        r = await s.post(f"{api.url}/v1/jobs", json=body, headers=api.headers("acme"))
        assert r.status == 400
        error = (await r.json())["error"]
        assert error["code"] == "invalid_request" and error["param"] == "image"


async def test_malformed_bodies(api: Any) -> None:
    headers = {**api.headers("acme"), "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as s:
        for body, param in ((b"{not json", None), (b"[1, 2]", None), (b'{"jobs": []}', "jobs"), (b"", None)):
            r = await s.post(f"{api.url}/v1/jobs", data=body, headers=headers)
            assert r.status == 400, body
            error = (await r.json())["error"]
            assert error["code"] == "invalid_request" and error["param"] == param, body
