"""Hostile and careless clients against the real server: slow and heavy bodies, clients that leave,
malformed requests, odd keys (issue 18). A second server (``hostile``) on the shared server's queues
has short body timeouts and the production body limit; the shared server's worker runs its jobs."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from llm_router.testing.server_proc import ServerProcess
from llm_router.testing.sim_env import simulated_env

JOB_ID_HEADER = "x-llm-router-job-id"
BODY_TIMEOUT_S = 1.0


def chat(model: str = "gpt-4o-mini", **extra: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}], **extra}


@pytest.fixture(scope="module")
def hostile(api: Any, sim: Any, http_logs: Path) -> Iterator[Any]:
    """A server on ``api``'s queues (its worker runs the jobs) with a one-second body timeout, the
    default body limit, and JSON logs at INFO (so a test can read what it logs)."""
    env = simulated_env(os.environ, redis_url=api.redis_url, sim_url=sim.url)
    env.update(
        LLM_ROUTER_QUEUE_NAME=api.settings.queue_name,
        LLM_ROUTER_INTERACTIVE_QUEUE_NAME=api.settings.interactive_queue_name,
        LLM_ROUTER_HEARTBEAT_INTERVAL_S="0.5",
        LLM_ROUTER_SERVER_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S),
        LLM_ROUTER_LOG_LEVEL="INFO",
        LLM_ROUTER_LOG_FORMAT="json",
    )
    env.pop("LLM_ROUTER_AUTH_DISABLED", None)
    env.pop("LLM_ROUTER_API_KEYS_FILE", None)
    server = ServerProcess(env, http_logs / "server-hostile.log")
    try:
        server.wait_ready()
        yield dataclasses.replace(api, url=server.url, server=server)
    finally:
        server.stop()


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def raw(url: str, request: bytes, *, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are; the status, headers and body of the answer (read to the close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(url))
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, body


# -- keys and URLs --------------------------------------------------------------------------------


async def test_a_non_ascii_byte_in_the_key_is_401_not_500(api: Any) -> None:
    for header in (
        b"Authorization: Bearer lr-\xff\xfeabc",
        b"x-api-key: lr-\xc3(",
        b"Authorization: Bearer \x80",
    ):
        status, _, body = await raw(
            api.url, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + header + b"\r\n\r\n"
        )
        assert status == 401, (header, body)
        assert orjson.loads(body)["error"]["code"] == "invalid_api_key"


async def test_an_image_url_with_a_backslash_in_its_authority_is_refused_at_submit(api: Any) -> None:
    job = chat(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "http://example.com\\@10.0.0.1/a.png"}},
                ],
            }
        ]
    )
    async with aiohttp.ClientSession() as s:
        for path in ("/v1/chat/completions", "/v1/jobs"):
            r = await s.post(f"{api.url}{path}", json=job, headers=api.headers("urls"))
            error = (await r.json())["error"]
            assert r.status == 400 and error["code"] == "invalid_request", error
            assert "backslash" in error["message"] and "image_url" in (error["param"] or ""), error


def _cli(api: Any, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REDIS_URL": api.redis_url, "LLM_ROUTER_LOG_LEVEL": "WARNING"}
    return subprocess.run(
        [sys.executable, "-m", "llm_router.cli", *args], env=env, capture_output=True, text=True, timeout=30
    )


async def test_keys_revoke_takes_the_whole_key(api: Any) -> None:
    created = _cli(api, "keys", "create", "leaked")
    key = created.stdout.strip()
    revoked = _cli(api, "keys", "revoke", key)  # what a person holds after a leak
    assert revoked.returncode == 0, revoked.stderr
    assert key not in revoked.stdout + revoked.stderr and "leaked" in revoked.stdout
    async with aiohttp.ClientSession() as s:  # never used before: nothing cached it
        r = await s.get(f"{api.url}/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert r.status == 401
    again = _cli(api, "keys", "revoke", key)
    assert again.returncode == 1 and key not in again.stderr  # gone, and the secret not echoed


# -- aiohttp's own refusals -----------------------------------------------------------------------


async def test_malformed_requests_get_the_json_error_and_their_headers_are_never_logged(hostile: Any) -> None:
    secret = "lr-" + uuid.uuid4().hex
    cases = {
        "oversized header": f"Authorization: Bearer {secret}{'A' * 9000}\r\n".encode(),
        "smuggling": (
            f"Authorization: Bearer {secret}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n"
        ).encode(),
        "bare CR in a header": f"Authorization: Bearer {secret}\rX: y\r\n".encode(),
    }
    for name, header in cases.items():
        status, headers, body = await raw(
            hostile.url, b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n0\r\n\r\n"
        )
        assert status == 400, (name, body[:300])
        assert headers["content-type"].startswith("application/json"), (name, headers)
        error = orjson.loads(body)["error"]
        assert error["code"] == "invalid_request" and error["type"] == "invalid_request_error", name
        assert secret not in body.decode(errors="replace"), name
    await asyncio.sleep(0.2)  # the log line is written before the answer; give the file a moment
    log = hostile.server.log_path.read_text(errors="replace")
    assert "malformed request refused" in log
    assert secret not in log and "AAAAAAAAAA" not in log


async def test_json_logs_render_tracebacks(tmp_path: Path) -> None:
    code = (
        "from llm_router.log_setup import configure_logging\n"
        "import structlog, logging\n"
        "configure_logging(fmt='json')\n"
        "try:\n    1/0\nexcept ZeroDivisionError:\n"
        "    structlog.get_logger('t').exception('boom')\n"
        "    logging.getLogger('aiohttp.server').exception('stdlib boom')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    lines = [orjson.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert len(lines) == 2, done.stderr
    for line in lines:
        assert "exc_info" not in line
        assert "Traceback" in line["exception"] and "ZeroDivisionError" in line["exception"]


# -- slow and heavy clients -----------------------------------------------------------------------


async def test_a_trickling_body_is_cut_off(hostile: Any) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(hostile.url))
    body = orjson.dumps(chat())
    t0 = time.monotonic()
    writer.write(
        (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: {hostile.headers('slow')['Authorization']}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
    )
    answer = b""
    try:
        for byte in body:  # one byte every 0.3 s: the body would take many seconds
            writer.write(bytes([byte]))
            await writer.drain()
            try:
                answer = await asyncio.wait_for(reader.read(4096), 0.3)
            except TimeoutError:
                continue
            break
    except ConnectionError:
        pass
    waited = time.monotonic() - t0
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"request_timeout" in answer and b"Connection: close" in answer
    assert waited < BODY_TIMEOUT_S + 1.5, waited


async def test_a_tenant_has_a_limit_of_requests_in_progress(hostile: Any) -> None:
    from redis.asyncio import Redis

    from llm_router.tenants import TenantPolicies

    tenant = f"greedy-{uuid.uuid4().hex[:6]}"
    redis = Redis.from_url(hostile.redis_url)
    await TenantPolicies(redis, hostile.settings).set(tenant, {"max_http_requests": "2"})
    await redis.aclose()
    auth = hostile.headers(tenant)["Authorization"]
    held = []
    for _ in range(2):  # two requests in progress: their bodies never finish arriving
        _, writer = await asyncio.open_connection("127.0.0.1", _port(hostile.url))
        head = f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Length: 100\r\n\r\n"
        writer.write(head.encode() + b"{")
        await writer.drain()
        held.append(writer)
    await asyncio.sleep(0.2)
    async with aiohttp.ClientSession() as s:
        r = await s.post(f"{hostile.url}/v1/jobs", json=chat(), headers={"Authorization": auth})
        assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
        assert (await r.json())["error"]["code"] == "too_many_requests"
        r = await s.post(f"{hostile.url}/v1/jobs", json=chat(), headers=hostile.headers("patient"))
        assert r.status == 201  # another tenant is not held back
        for writer in held:
            writer.close()
        await asyncio.sleep(BODY_TIMEOUT_S + 0.5)  # the held requests end (cut off or closed)
        r = await s.post(f"{hostile.url}/v1/jobs", json=chat(), headers={"Authorization": auth})
        assert r.status == 201


def _heavy_body(megabytes: float) -> bytes:
    """A chat body that costs the most to validate per byte: many small messages. Its model does not
    exist, so it is refused after the validation, and nothing runs."""
    messages = [{"role": "user", "content": "hello world " * 10}] * int(megabytes * 1e6 / 150)
    return orjson.dumps({"model": "no-such-model", "messages": messages})


async def test_one_tenants_large_bodies_do_not_stall_another_tenants_chats(hostile: Any) -> None:
    heavy = _heavy_body(9)
    heavy_headers = {**hostile.headers("heavy"), "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as s:
        # warm up: the other tenant's key cached, the worker's route resolved
        r = await s.post(f"{hostile.url}/v1/chat/completions", json=chat(), headers=hostile.headers("light"))
        assert r.status == 200

        async def send_heavy() -> int:
            r = await s.post(f"{hostile.url}/v1/chat/completions", data=heavy, headers=heavy_headers)
            return r.status

        heavy_calls = [asyncio.create_task(send_heavy()) for _ in range(6)]
        await asyncio.sleep(0.3)  # the bodies are in: their parsing is under way
        waits = []
        while not all(t.done() for t in heavy_calls) and len(waits) < 12:
            t0 = time.perf_counter()
            r = await s.post(
                f"{hostile.url}/v1/chat/completions", json=chat(), headers=hostile.headers("light")
            )
            waits.append(time.perf_counter() - t0)
            assert r.status == 200
        statuses = await asyncio.gather(*heavy_calls)
    assert statuses == [404] * 6  # validated in full, then refused (unknown model)
    print(f"\nsmall chats during six 9 MB bodies of another tenant: max {max(waits):.2f} s, n={len(waits)}")
    # parsed on the event loop, the first small chat waits for every large body (2-3 s here)
    assert max(waits) < 0.8, waits


async def test_file_quota_per_tenant(hostile: Any) -> None:
    from redis.asyncio import Redis

    from llm_router.tenants import TenantPolicies

    tenant = f"hoarder-{uuid.uuid4().hex[:6]}"
    redis = Redis.from_url(hostile.redis_url)
    await TenantPolicies(redis, hostile.settings).set(tenant, {"max_files": "2", "max_file_bytes": "3000"})
    await redis.aclose()
    client = openai.AsyncOpenAI(base_url=f"{hostile.url}/v1", api_key=hostile.key_for(tenant), max_retries=0)
    line = orjson.dumps({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": chat()})

    def lines(size: int) -> bytes:
        return ((line + b"\n") * (size // len(line) + 1))[:size]

    first = await client.files.create(file=("a.jsonl", lines(1000)), purpose="batch")
    with pytest.raises(openai.PermissionDeniedError) as info:  # bytes: 1000 + 2500 > 3000
        await client.files.create(file=("b.jsonl", lines(2500)), purpose="batch")
    assert info.value.body["code"] == "quota_exceeded"  # type: ignore[index]
    await client.files.create(file=("c.jsonl", line + b"\n"), purpose="batch")
    with pytest.raises(openai.PermissionDeniedError):  # count: a third file
        await client.files.create(file=("d.jsonl", line + b"\n"), purpose="batch")
    await client.files.delete(first.id)
    await client.files.create(file=("e.jsonl", line + b"\n"), purpose="batch")  # room again
    listed = [f.filename async for f in client.files.list()]
    assert sorted(listed) == ["c.jsonl", "e.jsonl"]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def test_downloads_are_streamed_not_held(hostile: Any) -> None:
    client = openai.AsyncOpenAI(base_url=f"{hostile.url}/v1", api_key=hostile.key_for("files"), max_retries=0)
    size = 24 * 1024 * 1024
    content = os.urandom(size // 2).hex().encode()
    created = await client.files.create(file=("big.jsonl", content), purpose="batch")
    pid = hostile.server.proc.pid
    before = _rss_mb(pid)
    peak = [before]
    headers = hostile.headers("files")

    async def sample() -> None:
        while True:
            peak.append(_rss_mb(pid))
            await asyncio.sleep(0.01)

    async def download(s: aiohttp.ClientSession) -> int:
        r = await s.get(f"{hostile.url}/v1/files/{created.id}/content", headers=headers)
        n = 0
        async for chunk in r.content.iter_chunked(1024 * 1024):
            n += len(chunk)
        return n

    sampler = asyncio.create_task(sample())
    async with aiohttp.ClientSession() as s:
        sizes = await asyncio.gather(*(download(s) for _ in range(10)))
        sampler.cancel()
        r = await s.get(f"{hostile.url}/v1/files/{created.id}/content", headers=headers)
        assert await r.read() == content
    grown = max(peak) - before
    print(f"\nten concurrent downloads of a 24 MB file: the server's peak RSS grew {grown:.0f} MB")
    assert sizes == [size] * 10
    assert grown < 60, grown  # held whole, ten downloads take 240 MB and more
    await client.files.delete(created.id)


# -- clients that leave ---------------------------------------------------------------------------


async def _record(api: Any, tenant: str, job_id: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s:
        r = await s.get(f"{api.url}/v1/jobs/{job_id}", headers=api.headers(tenant))
        assert r.status == 200, await r.text()
        return await r.json()  # type: ignore[no-any-return]


async def _ended(api: Any, tenant: str, job_id: str, until: Any, timeout: float) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        record = await _record(api, tenant, job_id)
        return record if record["status"] in ("succeeded", "failed", "cancelled") else None

    return await until(done, timeout=timeout, what=f"job {job_id} ended")  # type: ignore[no-any-return]


@pytest.mark.parametrize("keyed", [False, True], ids=["no key", "with a key"])
async def test_a_client_that_drops_a_stream_stops_its_job_and_pays_what_was_streamed(
    api: Any, sim: Any, until: Any, keyed: bool
) -> None:
    # with an Idempotency-Key too: a client that drops an answer it had begun to read is not
    # waiting to retry (only one that left before its answer began is)
    await sim.faults({"kind": "stall", "model": "gpt-4.1-nano", "after_chunks": 3, "stall_s": 20})
    try:
        tenant = "dropper"
        key = {"Idempotency-Key": f"drop-{uuid.uuid4().hex[:8]}"} if keyed else {}
        async with aiohttp.ClientSession() as s:
            r = await s.post(
                f"{api.url}/v1/chat/completions",
                json=chat("gpt-4.1-nano", stream=True, max_tokens=200),
                headers={**api.headers(tenant), **key},
            )
            assert r.status == 200
            job_id = r.headers[JOB_ID_HEADER]
            assert (await r.content.readline()).startswith(b"data: ")
            r.close()  # the client goes away mid-stream
        t0 = time.monotonic()
        record = await _ended(api, tenant, job_id, until, timeout=8)
        print(f"\na dropped stream's job ended {record['status']} {time.monotonic() - t0:.2f} s after")
        assert record["status"] == "cancelled"
        assert record["partial_text"] and record["usage"]["estimated"] and record["usage"]["cost"] > 0
    finally:
        await sim.faults()


@pytest.mark.parametrize("front", ["openai", "gemini"])
async def test_a_client_that_gives_up_a_plain_request_stops_its_job(
    api: Any, sim: Any, until: Any, front: str
) -> None:
    await sim.faults({"kind": "latency", "model": "gpt-4.1-mini", "latency_ms": 20_000})
    try:
        tenant = "impatient"
        job_id = f"leave-{front}-{uuid.uuid4().hex[:8]}"
        headers = api.headers(tenant)  # no Idempotency-Key: the client does not mean to retry
        if front == "openai":
            path, body = "/v1/chat/completions", {**chat("gpt-4.1-mini"), "job_id": job_id}
        else:
            path, body = (
                "/v1beta/models/gpt-4.1-mini:generateContent",
                {"contents": [{"parts": [{"text": "hi"}]}], "job_id": job_id},
            )
        async with aiohttp.ClientSession() as s:
            with pytest.raises(TimeoutError):
                await s.post(
                    f"{api.url}{path}", json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=1.5)
                )
        t0 = time.monotonic()
        record = await _ended(api, tenant, job_id, until, timeout=8)
        print(
            f"\na given-up {front} request's job ended {record['status']} {time.monotonic() - t0:.2f} s after"
        )
        assert record["status"] == "cancelled"
    finally:
        await sim.faults()


async def test_a_client_that_times_out_and_retries_with_its_key_gets_the_first_answer(
    api: Any, sim: Any
) -> None:
    """The OpenAI SDK's documented retry: the first attempt times out, the second is the same
    request. With an Idempotency-Key the first job runs on, and the retry gets its answer, paid once
    (before, the first attempt's disconnect cancelled the job and the retry got a 499)."""
    await sim.faults({"kind": "latency", "model": "gpt-4.1-nano", "latency_ms": 2_000})
    key = f"timeout-{uuid.uuid4().hex[:8]}"
    headers = {**api.headers("impatient-key"), "Idempotency-Key": key}
    body = {**chat("gpt-4.1-nano"), "messages": [{"role": "user", "content": f"once {key}"}]}
    before = sum(c["count"] for c in (await sim.calls())["calls"] if c["model"] == "gpt-4.1-nano")
    try:
        sdk = openai.AsyncOpenAI(
            base_url=f"{api.url}/v1", api_key=api.key_for("impatient-key"), max_retries=2, timeout=1.0
        )
        answer = await sdk.chat.completions.create(**body, extra_headers={"Idempotency-Key": key})
        await sdk.close()
    finally:
        await sim.faults()
    assert answer.choices[0].message.content
    async with aiohttp.ClientSession() as s:
        record = await (await s.get(f"{api.url}/v1/jobs/{key}", headers=headers)).json()
    assert record["status"] == "succeeded"
    after = sum(c["count"] for c in (await sim.calls())["calls"] if c["model"] == "gpt-4.1-nano")
    assert after - before == 1  # one job, one provider call, however many attempts the SDK made


async def test_jobs_api_jobs_keep_running_when_their_follower_leaves(api: Any, sim: Any, until: Any) -> None:
    await sim.faults({"kind": "stall", "model": "gpt-4o", "after_chunks": 2, "stall_s": 1.5})
    try:
        tenant = "background"
        async with aiohttp.ClientSession() as s:
            r = await s.post(
                f"{api.url}/v1/jobs",
                json=chat("gpt-4o", stream=True, max_tokens=50),
                headers=api.headers(tenant),
            )
            job_id = (await r.json())["id"]
            r = await s.get(f"{api.url}/v1/jobs/{job_id}/events", headers=api.headers(tenant))
            assert (await r.content.readline()).startswith(b"data: ")
            r.close()
        record = await _ended(api, tenant, job_id, until, timeout=10)
        assert record["status"] == "succeeded"
    finally:
        await sim.faults()


async def test_every_answer_after_the_submit_names_the_job(api: Any, sim: Any) -> None:
    await sim.faults({"kind": "status", "status": 400, "model": "gpt-4.1-nano"})
    try:
        async with aiohttp.ClientSession() as s:
            r = await s.post(
                f"{api.url}/v1/chat/completions", json=chat("gpt-4.1-nano"), headers=api.headers("named")
            )
            assert r.status == 400 and r.headers.get(JOB_ID_HEADER)
            r = await s.post(
                f"{api.url}/v1beta/models/gpt-4.1-nano:generateContent",
                json={"contents": [{"parts": [{"text": "hi"}]}]},
                headers=api.headers("named"),
            )
            assert r.status == 400 and r.headers.get(JOB_ID_HEADER)
            # refused before there is a job: no id
            r = await s.post(
                f"{api.url}/v1/chat/completions", json=chat("no-such"), headers=api.headers("named")
            )
            assert r.status == 404 and JOB_ID_HEADER not in r.headers
    finally:
        await sim.faults()
