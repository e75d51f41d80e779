"""serve_forever in a real process: one URL line when listening, clean exit on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from llm_router.simulator import SimServer, start_simulator


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_serve_forever_prints_url_and_stops_on_signal(
    tmp_path: Path, http: aiohttp.ClientSession, sig: signal.Signals
) -> None:
    profile = tmp_path / "profile.yaml"
    profile.write_text("models: [only-model]\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llm_router.simulator", "--port", "0", "--profile", str(profile),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=10)).decode()
        url = line.strip().rsplit(" ", 1)[-1]
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
        async with http.get(f"{url}/v1/models", headers={"Authorization": "Bearer k"}) as response:
            assert [m["id"] for m in (await response.json())["data"]] == ["only-model"]
        proc.send_signal(sig)
        assert await asyncio.wait_for(proc.wait(), timeout=10) == 0
        assert proc.stdout is not None
        assert await proc.stdout.read() == b""  # exactly one line
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_start_simulator_reports_the_real_port() -> None:
    first = await start_simulator()
    async with first, await start_simulator() as second:
        assert isinstance(first, SimServer)
        assert first.port > 0 and second.port > 0 and first.port != second.port
        assert first.url == f"http://127.0.0.1:{first.port}"
