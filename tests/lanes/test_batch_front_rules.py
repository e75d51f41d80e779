"""The batch front's lane rules on their own: which lane and deadline a line's job gets
(``batch_lines.job_for``), a streamed line refused, and the tracker's reads of a large idle batch
spacing out. (A cancelled line leaving the batch lane: the core's cancel script, tested in
tests/core/test_record_scripts.py.)"""

from __future__ import annotations

import time
from typing import Any

import orjson

from producer.http.batch_lines import Line, job_for, parse_lines
from producer.http.batch_runner import TRACK_IDLE_MIN_S, _Progress

MODEL = "gpt-4o-mini"


def line(custom_id: str, text: str, **body: Any) -> dict[str, Any]:
    request = {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 20, **body}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": request}


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(x) + b"\n" for x in lines)


def test_a_line_names_its_lane_or_gets_its_batchs() -> None:
    """``job_for``: the batch's lane for a line that names none; a line's lane and service tier win;
    the deadline is what is left of the window unless the line's own is sooner."""

    def job(**body: Any) -> dict[str, Any]:
        request = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], **body}
        return job_for("batch_x", Line(0, "c", body=request), 1000.0, "auto")

    assert job()["lane"] == "auto" and job()["deadline_s"] == 1000.0
    assert job(lane="batch")["lane"] == "batch"
    assert "lane" not in job(service_tier="flex")  # validation makes it the flex lane
    assert job(service_tier="flex", lane="now")["lane"] == "now"  # a clash validation refuses
    for tier in ("default", "priority", "scale", "fast"):
        assert job(service_tier=tier)["lane"] == "now"
    assert job(service_tier="auto")["lane"] == "auto"
    assert job(deadline_s=60)["deadline_s"] == 60
    assert job(deadline_s=5000)["deadline_s"] == 1000.0
    assert job(deadline_s="soon")["deadline_s"] == "soon"  # validation names it
    plain = job_for("batch_x", Line(0, "c", body={"model": MODEL}), 1000.0, None)
    assert "lane" not in plain  # a batch made before lanes keeps its lines as they were


def test_a_streamed_line_is_refused() -> None:
    raw = jsonl([line("s", "x", stream=True), line("ok", "y")])
    refused, ok = parse_lines(raw, "/v1/chat/completions")
    assert refused.error is not None and refused.error["param"] == "body.stream"
    assert ok.error is None


def test_the_tracker_reads_a_large_idle_batch_less_often() -> None:
    """Lines may wait hours in provider batches: while none ends, the tracker's reads of a large
    batch's statuses space out (up to one per pending/2000 s), and come back to every tick when one
    ends; a small batch is read every tick."""
    large = _Progress(pending=[[i, f"c{i}"] for i in range(20_000)])
    waits = []
    for _ in range(8):
        large.slow_down(changed=False)
        waits.append(large.idle_s)
    assert waits[0] == TRACK_IDLE_MIN_S and waits == sorted(waits) and waits[-1] == 10.0
    large.slow_down(changed=True)
    assert large.idle_s == 0.0 and large.read_after <= time.monotonic()
    small = _Progress(pending=[[0, "c0"]])
    for _ in range(5):
        small.slow_down(changed=False)
    assert small.idle_s == TRACK_IDLE_MIN_S
