"""The CLI's lanes: ``submit --lane --deadline``, ``submit --estimate`` per lane, ``llm-router lanes``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from llm_router.cli.lanes import parse_duration, with_defaults
from llm_router.testing.sim_env import simulated_env

JOB = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 100}


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llm_router.cli", *args], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def env(redis_server, sim, lanes_queue) -> dict[str, str]:
    e = simulated_env(os.environ, redis_url=redis_server.url, sim_url=sim.url)
    e["LLM_ROUTER_QUEUE_NAME"] = lanes_queue
    return e


def test_durations() -> None:
    assert [parse_duration(t) for t in ("6h", "30m", "90s", "2d", "15")] == [21600, 1800, 90, 172800, 15]
    for bad in ("six hours", "0", "-1h", "5w"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    # a line's own lane and deadline win over the command's
    own = with_defaults(orjson.dumps({**JOB, "lane": "now"}), "auto", 60)
    assert own == {**JOB, "lane": "now", "deadline_s": 60}
    assert with_defaults(b"not json", "auto", None) == b"not json"


def test_estimate_shows_the_cost_per_lane(env, tmp_path: Path) -> None:
    src = tmp_path / "jobs.jsonl"
    src.write_bytes(b"\n".join(orjson.dumps(JOB) for _ in range(4)) + b"\n")
    res = cli(env, "submit", str(src), "--estimate", "--json", "--lane", "auto", "--deadline", "6h")
    assert res.returncode == 0, res.stderr
    total = orjson.loads(res.stdout)["total"]["cost_by_lane"]
    assert set(total) == {"now", "flex", "batch"}
    assert abs(total["batch"] * 2 - total["now"]) < 1e-8 and abs(total["flex"] * 2 - total["now"]) < 1e-8
    table = cli(env, "submit", str(src), "--estimate")
    assert table.returncode == 0 and "cost per lane" in table.stdout
    bad = cli(env, "submit", str(src), "--deadline", "soon")
    assert bad.returncode == 2 and "--deadline" in bad.stderr


async def test_submit_with_a_lane_and_the_lanes_command(env, lanes, sim_lanes, tmp_path: Path) -> None:
    await sim_lanes(turnaround_s=[0.3, 0.4])
    src = tmp_path / "jobs.jsonl"
    src.write_bytes(b"\n".join(orjson.dumps(JOB) for _ in range(3)) + b"\n")
    out = tmp_path / "out.jsonl"
    res = cli(env, "submit", str(src), "--lane", "batch", "--deadline", "10m", "--wait", "--out", str(out))
    assert res.returncode == 0, res.stderr
    records = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [r["lane"] for r in records] == ["batch"] * 3
    assert all(r["deadline_at"] - r["created_at"] == pytest.approx(600) for r in records)
    shown = cli(env, "lanes", "--json")
    assert shown.returncode == 0, shown.stderr
    report = orjson.loads(shown.stdout)
    assert {"open_batches", "waiting_for_a_batch", "redispatched", "wasted_results"} <= report.keys()
    assert "openai/gpt-4o-mini" in report["learned_turnaround_s"]
    assert cli(env, "lanes").returncode == 0
