"""Admin keys, and the dashboard's routes as a script sees them: sign-in, snapshot, drill-down, SSE."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import aiohttp
from redis.asyncio import Redis

from llm_router.keys import APIKEY_ADMINS_KEY
from producer.http.auth import ApiKeys

from .conftest import ObsFleet, http, wait_until

HI = [{"role": "user", "content": "hi"}]


async def test_admin_keys_are_marked_listed_and_revoked(redis: Redis) -> None:
    tenant = f"adm-{uuid.uuid4().hex[:6]}"
    keys = ApiKeys(redis)
    admin, plain = await keys.create(tenant, admin=True), await keys.create(tenant)
    assert await keys.is_admin(admin) and not await keys.is_admin(plain)
    assert not await keys.is_admin("lr-not-a-key") and not await keys.is_admin(None)
    listed = {k.prefix: k.admin for k in await keys.list() if k.tenant == tenant}
    assert listed == {admin[:9]: True, plain[:9]: False}
    # a tenant named in LLM_ROUTER_ADMIN_TENANTS: all its keys are admin keys
    assert await ApiKeys(redis, admin_tenants=frozenset({tenant})).is_admin(plain)
    await keys.revoke(admin[:9])
    assert not await keys.is_admin(admin)
    assert await redis.scard(APIKEY_ADMINS_KEY) == len(await redis.smembers(APIKEY_ADMINS_KEY))


def test_keys_create_admin_on_the_command_line(obs_fleet: ObsFleet) -> None:
    tenant = f"cli-{uuid.uuid4().hex[:6]}"
    cmd = [sys.executable, "-m", "llm_router.cli", "keys"]
    made = subprocess.run(
        [*cmd, "create", tenant, "--admin"], env=obs_fleet.env, capture_output=True, text=True
    )
    assert made.returncode == 0 and made.stdout.startswith("lr-"), made.stderr
    listed = subprocess.run([*cmd, "list", "--json"], env=obs_fleet.env, capture_output=True, text=True)
    mine = [k for k in json.loads(listed.stdout) if k["tenant"] == tenant]
    assert [k["admin"] for k in mine] == [True]
    status, _, _ = http(
        "GET", f"{obs_fleet.url}/dashboard/api/snapshot", headers=_bearer(made.stdout.strip())
    )
    assert status == 200


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_the_dashboard_needs_an_admin_key(obs_fleet: ObsFleet) -> None:
    url = f"{obs_fleet.url}/dashboard"
    status, body, headers = http("GET", url)
    assert status == 401 and b'name="key"' in body and headers["Content-Type"].startswith("text/html")
    assert http("GET", url, headers=_bearer(obs_fleet.user_key))[0] == 401  # a tenant's key is not enough
    for path in ("/api/snapshot", "/events", "/api/jobs/x"):
        status, body, _ = http("GET", url + path, headers=_bearer(obs_fleet.user_key))
        assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
    status, body, _ = http("GET", url, headers=_bearer(obs_fleet.admin_key))
    assert status == 200 and b"uPlot.iife.min.js" in body
    # the charting library is served from the package itself
    status, body, _ = http("GET", f"{url}/static/uPlot.iife.min.js")
    assert status == 200 and body.startswith(b"/*! https://github.com/leeoniya/uPlot (v1.6.32) */")


def test_signing_in_sets_a_strict_http_only_cookie(obs_fleet: ObsFleet) -> None:
    import urllib.parse
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)

    def login(key: str) -> tuple[int, dict[str, str], bytes]:
        data = urllib.parse.urlencode({"key": key}).encode()
        req = urllib.request.Request(f"{obs_fleet.url}/dashboard/login", data=data, method="POST")
        try:
            with opener.open(req, timeout=10) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    status, _, body = login(obs_fleet.user_key)
    assert status == 401 and b"not an admin key" in body
    status, headers, _ = login(obs_fleet.admin_key)
    assert status == 303 and headers["Location"] == "/dashboard"
    cookie = headers["Set-Cookie"]
    assert cookie.startswith("llm_router_admin=") and "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie and "Path=/dashboard" in cookie
    value = cookie.split(";")[0]
    assert http("GET", f"{obs_fleet.url}/dashboard", headers={"Cookie": value})[0] == 200


async def test_snapshot_drill_down_and_live_events(obs_fleet: ObsFleet) -> None:
    [job_id] = obs_fleet.submit([{"model": "gpt-4o-mini", "messages": HI}])
    obs_fleet.wait_ended([job_id])
    headers = _bearer(obs_fleet.admin_key)
    # the dashboard sees every tenant: it names a job by its scoped id, <tenant>/<job id>
    status, body, _ = http("GET", f"{obs_fleet.url}/dashboard/api/jobs/acme/{job_id}", headers=headers)
    record = json.loads(body)
    assert status == 200 and record["id"] == job_id and record["attempts"][0]["outcome"] == "success"
    assert record["usage"]["cost"] > 0 and record["response"]["object"] == "chat.completion"
    assert http("GET", f"{obs_fleet.url}/dashboard/api/jobs/nope", headers=headers)[0] == 404

    async with (
        aiohttp.ClientSession(headers=headers) as session,
        session.get(f"{obs_fleet.url}/dashboard/events", timeout=aiohttp.ClientTimeout(total=20)) as r,
    ):
        assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
        events: list[tuple[str, dict]] = []
        event = None
        async for raw in r.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                events.append((event or "", json.loads(line[6:])))
                if sum(e == "snapshot" for e, _ in events) >= 2:
                    break
    assert events[0][0] == "history"
    snap = next(d for e, d in events if e == "snapshot")
    assert snap["ok"] and {q["label"]: q["workers"] for q in snap["queues"]} == {"bulk": 2, "interactive": 2}
    # the lanes panel: what `llm-router lanes` shows
    assert {"open_batches", "waiting_for_a_batch", "redispatched", "wasted_usd"} <= set(snap["lanes"])
    # the workers write the recent list about once a second

    def recent() -> dict | None:
        body = http("GET", f"{obs_fleet.url}/dashboard/api/snapshot", headers=headers)[1]
        return next((j for j in json.loads(body)["recent"] if j["id"] == job_id), None)

    mine = wait_until(recent, 10, "the job in the recent list", every=0.2)
    assert mine["tenant"] == "acme" and mine["status"] == "succeeded" and mine["model"] == "gpt-4o-mini"
    assert mine["provider"] == "openai" and mine["attempts"] == 1 and mine["cost"] > 0
