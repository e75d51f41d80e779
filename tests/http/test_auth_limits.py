"""Keys and tenants, and the server's refusals: 401, 404 routes, 405, 413 unread, 429 with Retry-After."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest

JOB = {"model": "gpt-4o-mini", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}


def cli(api: Any, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REDIS_URL": api.redis_url, "LLM_ROUTER_LOG_LEVEL": "WARNING"}
    return subprocess.run(
        [sys.executable, "-m", "llm_router.cli", *args], env=env, capture_output=True, text=True, timeout=30
    )


async def test_missing_or_wrong_key_is_401(api: Any) -> None:
    async with aiohttp.ClientSession() as s:
        for headers in ({}, {"Authorization": "Bearer lr-wrong"}, {"Authorization": "Basic abc"}):
            r = await s.get(f"{api.url}/v1/models", headers=headers)
            assert r.status == 401, headers
            assert (await r.json())["error"]["code"] == "invalid_api_key"
        # the document and liveness are public
        assert (await s.get(f"{api.url}/openapi.json")).status == 200
    with pytest.raises(openai.AuthenticationError):
        await openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="lr-nope", max_retries=0).models.list()


async def test_other_key_headers(api: Any) -> None:
    key = api.key_for("acme")
    async with aiohttp.ClientSession() as s:
        assert (await s.get(f"{api.url}/v1/models", headers={"x-api-key": key})).status == 200
        # Google's ways of sending a key count only on the Gemini front, which answers a model list
        # asked for with Google's key (google-genai on a custom host) in Gemini's format
        r = await s.get(f"{api.url}/v1/models?key={key}")
        assert r.status == 200 and "models/gpt-4o-mini" in {m["name"] for m in (await r.json())["models"]}
        # ...and never reach an OpenAI route: a Google client's call to a method the Gemini front
        # has not is refused in Google's shape
        r = await s.post(f"{api.url}/v1/jobs?key={key}", json={})
        assert r.status == 404 and (await r.json())["error"]["status"] == "NOT_FOUND"
        r = await s.post(f"{api.url}/v1/jobs?key=not-a-key", json={})  # before the key is looked at
        assert r.status == 404 and (await r.json())["error"]["status"] == "NOT_FOUND"
        path = f"{api.url}/v1/models/no-such-model:generateContent"
        body = {"contents": [{"parts": [{"text": "hi"}]}]}
        for kwargs in ({"params": {"key": key}}, {"headers": {"x-goog-api-key": key}}):
            r = await s.post(path, json=body, **kwargs)
            error = (await r.json())["error"]  # Google's shape on the Gemini front
            assert r.status == 404 and (error["code"], error["status"]) == (404, "NOT_FOUND")
            assert error["details"][0]["reason"] == "MODEL_NOT_FOUND"
        # and on every Gemini route, models.list included (google-genai sends its key this way)
        for kwargs in ({"params": {"key": key}}, {"headers": {"x-goog-api-key": key}}):
            r = await s.get(f"{api.url}/v1beta/models", **kwargs)
            assert r.status == 200 and (await r.json())["models"]
        r = await s.get(f"{api.url}/v1beta/models")
        assert r.status == 401 and (await r.json())["error"]["status"] == "UNAUTHENTICATED"


async def test_keys_cli_create_list_revoke(api: Any, until: Any) -> None:
    created = cli(api, "keys", "create", "cli-tenant")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("lr-") and len(key) == 35
    assert key not in created.stderr
    async with aiohttp.ClientSession() as s:
        r = await s.post(f"{api.url}/v1/jobs", json=JOB, headers={"Authorization": f"Bearer {key}"})
        assert r.status == 201
        job_id = (await r.json())["id"]
        r = await s.get(f"{api.url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"})
        assert (await r.json())["tenant"] == "cli-tenant"
        listed = cli(api, "keys", "list")
        assert listed.returncode == 0, listed.stderr
        line = next(ln for ln in listed.stdout.splitlines() if "cli-tenant" in ln)
        assert key not in listed.stdout and line.startswith(key[:9])
        revoked = cli(api, "keys", "revoke", key[:9])
        assert revoked.returncode == 0, revoked.stderr
        assert "cli-tenant" not in cli(api, "keys", "list").stdout

        # the server caches a key a few seconds at most
        async def refused() -> bool:
            r = await s.get(f"{api.url}/v1/models", headers={"Authorization": f"Bearer {key}"})
            return r.status == 401

        await until(refused, timeout=10, what="revoked key refused")
    assert cli(api, "keys", "create", "bad tenant!").returncode == 1


async def test_unknown_route_and_wrong_method_are_json(api: Any) -> None:
    headers = api.headers("acme")
    async with aiohttp.ClientSession() as s:
        r = await s.get(f"{api.url}/v1/nothing-here", headers=headers)
        assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"
        r = await s.get(f"{api.url}/nowhere")
        assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"
        r = await s.put(f"{api.url}/v1/jobs", headers=headers)
        assert r.status == 405 and (await r.json())["error"]["code"] == "method_not_allowed"


async def test_body_over_limit_is_413_without_reading_it(api: Any) -> None:
    headers = api.headers("acme")
    limit = api.settings.server_max_body_bytes
    # declared too large: refused on the headers alone (the body is never sent in full)
    reader, writer = await asyncio.open_connection("127.0.0.1", int(api.url.rsplit(":", 1)[1]))
    writer.write(
        (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: {headers['Authorization']}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {limit * 100}\r\n\r\n"
        ).encode()
        + b"{"
    )
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(4096), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"payload_too_large" in answer

    # chunked, with no length: read up to the limit, then refused
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(limit // 65536 + 2):
            yield b" " * 65536

    async with aiohttp.ClientSession() as s:
        r = await s.post(f"{api.url}/v1/jobs", data=chunks(), headers=headers)
        assert r.status == 413 and (await r.json())["error"]["code"] == "payload_too_large"
        # under the limit, the same path still works on a fresh connection
        r = await s.post(f"{api.url}/v1/jobs", json=JOB, headers=headers)
        assert r.status == 201


async def test_too_many_queued_is_429_with_retry_after(idle_api: Any) -> None:
    headers = idle_api.headers("busy")
    most = idle_api.settings.tenant_max_queued
    async with aiohttp.ClientSession() as s:
        r = await s.post(f"{idle_api.url}/v1/jobs", json={"jobs": [JOB] * (most + 2)}, headers=headers)
        assert r.status == 200
        data = (await r.json())["data"]
        assert [("id" in d) for d in data] == [True] * most + [False, False]
        assert data[-1]["error"]["code"] == "too_many_queued" and data[-1]["error"]["status"] == 429
        assert int(r.headers["Retry-After"]) >= 1
        r = await s.post(f"{idle_api.url}/v1/jobs", json=JOB, headers=headers)
        assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
        assert (await r.json())["error"]["code"] == "too_many_queued"
        # another tenant is not held back by this one's queue
        r = await s.post(f"{idle_api.url}/v1/jobs", json=JOB, headers=idle_api.headers("calm"))
        assert r.status == 201
