"""The ``llm-router`` command line against the running system: output shapes and exit codes."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import pytest
from openai.types.chat import ChatCompletion

from producer.producer import Producer

PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def cli(env: dict[str, str], *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llm_router.cli", *args],
        env=env,
        input=stdin.decode() if stdin else None,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def env(worker_env: dict[str, str], e2e: Producer) -> dict[str, str]:
    """The environment of a CLI user whose workers are up (``e2e`` waits for them)."""
    return worker_env


def test_submit_prints_ids_in_order_refuses_bad_lines_and_writes_out(env, tmp_path: Path) -> None:
    lines = [
        orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "one"}]}),
        orjson.dumps({"model": "gpt-9", "messages": [{"role": "user", "content": "two"}]}),
        orjson.dumps({"model": "gpt-4o-mini", "prompt": "what is this?", "image": PIXEL}),
        b'{"model": "gpt-4o", "messages": [',
        b"",
        orjson.dumps(
            {
                "model": "claude-3-sonnet",
                "messages": [{"role": "user", "content": "five"}],
                "job_id": f"cli-{uuid.uuid4().hex}",
                "metadata": {"row": 6},
            }
        ),
    ]
    src = tmp_path / "jobs.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out.jsonl"
    res = cli(env, "submit", str(src), "--wait", "--out", str(out))
    assert res.returncode == 1, res.stderr  # two lines were refused
    ids = res.stdout.split()
    assert len(ids) == 3
    err = res.stderr.strip().splitlines()
    assert err[0].startswith("submit ") and "--resume" in err[0]  # how to resume a cut-off submit
    assert err[1].startswith("line 2: model_not_found: Model 'gpt-9' is not available")
    assert err[2].startswith("line 4: invalid_request: malformed JSON")
    rows = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert [r.get("id") or r["line"] for r in rows] == [ids[0], 2, ids[1], 4, ids[2]]
    assert rows[1]["error"]["code"] == "model_not_found" and rows[1]["error"]["param"] == "model"
    for row in (rows[0], rows[2], rows[4]):
        assert row["status"] == "succeeded"
        ChatCompletion.model_validate(row["response"])
    assert rows[4]["metadata"] == {"row": 6} and rows[4]["model"] == "claude-sonnet-4"


def test_submit_all_valid_waits_and_exits_0_then_status_result_cancel(env, tmp_path: Path) -> None:
    src = tmp_path / "ok.jsonl"
    src.write_bytes(
        b"\n".join(
            orjson.dumps({"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": f"q{i}"}]})
            for i in range(5)
        )
    )
    res = cli(env, "submit", str(src), "--wait")
    assert res.returncode == 0, res.stderr
    job_id = res.stdout.split()[0]
    status = cli(env, "status", job_id)
    assert status.returncode == 0
    fields = status.stdout.split()
    assert fields[:4] == [job_id, "succeeded", "gemini-2.5-flash", "gemini"] and float(fields[4]) > 0
    result = cli(env, "result", job_id, "--wait", "5")
    assert result.returncode == 0 and orjson.loads(result.stdout)["id"] == job_id
    cancel = cli(env, "cancel", job_id)
    assert cancel.returncode == 1 and "job_not_cancellable" in cancel.stderr
    missing = cli(env, "status", "no-such-job")
    assert missing.returncode == 1 and missing.stderr.startswith("error: job_not_found")


def test_chat_and_vision_print_the_answer(env, tmp_path: Path) -> None:
    res = cli(env, "chat", "--model", "gpt-4o", "--system", "be brief", "--message", "hello")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("Simulated reply from gpt-4o")
    as_json = cli(
        env,
        "chat",
        "--model",
        "gpt-4.1",
        "--messages",
        '[{"role": "user", "content": "hi"}]',
        "--fallbacks",
        "o1",
        "--json",
    )
    record = orjson.loads(as_json.stdout)
    assert record["status"] == "succeeded" and record["route"] == ["gpt-4.1", "o1"]
    image = tmp_path / "pixel.png"
    image.write_bytes(__import__("base64").b64decode(PIXEL))
    seen = cli(
        env, "vision", "--model", "gpt-4o", "--image", str(image), "--prompt", "what objects are here?"
    )
    assert seen.returncode == 0 and seen.stdout.strip()
    # a bulk file's vision line may name a local image too, as the job contract says
    src = tmp_path / "vision.jsonl"
    src.write_bytes(orjson.dumps({"model": "gpt-4o", "prompt": "what is it?", "image": str(image)}))
    bulk = cli(env, "submit", str(src), "--wait")
    assert bulk.returncode == 0, bulk.stderr


def test_chat_refused_and_no_worker_exit_1(env) -> None:
    bad = cli(env, "chat", "--model", "gpt-9", "--message", "hi")
    assert bad.returncode == 1 and bad.stderr.startswith("error: model_not_found")
    lonely = {**env, "LLM_ROUTER_QUEUE_NAME": f"nobody-{uuid.uuid4().hex[:6]}"}
    res = cli(lonely, "chat", "--model", "gpt-4o", "--message", "hi")
    assert res.returncode == 1 and res.stderr.startswith("error: no_workers")


def test_exit_2_on_bad_input_and_3_on_wait_timeout(env, tmp_path: Path) -> None:
    missing = cli(env, "submit", str(tmp_path / "missing.jsonl"))
    # one line, `error: CODE: message`, as every other error
    assert missing.returncode == 2 and missing.stderr.startswith("error: invalid_usage: cannot read")
    no_image = cli(env, "vision", "--model", "gpt-4o", "--image", str(tmp_path / "no.png"), "--prompt", "x")
    assert no_image.returncode == 2 and no_image.stderr.startswith("error: invalid_usage: --image")
    bad_date = cli(env, "usage", "--tenant", "t", "--since", "2026-13-01")
    assert bad_date.returncode == 2 and "--since" in bad_date.stderr
    assert cli(env, "chat", "--model", "gpt-4o").returncode == 2
    assert cli(env, "frobnicate").returncode == 2
    lonely = {**env, "LLM_ROUTER_QUEUE_NAME": f"nobody-{uuid.uuid4().hex[:6]}"}
    src = tmp_path / "one.jsonl"
    src.write_bytes(orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}))
    res = cli(lonely, "submit", str(src), "--wait", "--timeout", "0.3")
    assert res.returncode == 3 and "wait_timeout" in res.stderr


def test_models_json_lists_catalog_with_labelled_prices(env) -> None:
    res = cli(env, "models", "--json")
    assert res.returncode == 0
    models = {m["id"]: m for m in orjson.loads(res.stdout)}
    assert len(models) >= 26
    gpt4o = models["gpt-4o"]
    assert gpt4o["prices"] == {"input_usd_per_mtok": 2.5, "output_usd_per_mtok": 10.0}
    assert gpt4o["capabilities"]["vision"] is True
    assert "gpt-4o-2024-08-06" in gpt4o["aliases"]
    dep = gpt4o["deployments"][0]
    assert dep["prices"]["source"] == "genai-prices:openai/gpt-4o" and dep["enabled"] is True
    table = cli(env, "models")
    assert table.returncode == 0 and "claude-sonnet-4-5" in table.stdout


def test_simulate_takes_fault_flags(tmp_path: Path) -> None:
    import time
    import urllib.error
    import urllib.request

    from llm_router.testing.redis_server import free_port

    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llm_router.cli",
            "simulate",
            "--port",
            str(port),
            "--fault",
            "model=gpt-4o,kind=status,status=429,retry_after=5",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            data=orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}),
            headers={"Authorization": "Bearer sk-x", "Content-Type": "application/json"},
        )
        while True:
            try:
                urllib.request.urlopen(request, timeout=2)
            except urllib.error.HTTPError as exc:
                assert exc.code == 429 and exc.headers["Retry-After"] == "5"
                break
            except OSError:
                assert time.monotonic() < deadline, "simulator did not start"
                time.sleep(0.05)
            else:
                raise AssertionError("the fault did not fire")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    bad = subprocess.run(
        [sys.executable, "-m", "llm_router.cli", "simulate", "--fault", "kind=bogus"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 2 and "--fault" in bad.stderr
