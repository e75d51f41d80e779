"""A deployment's RPM limit holds across the fleet: the rest of the jobs wait or move on."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from config.settings import DEFAULT_CATALOG
from producer.producer import Producer


@pytest.fixture
def catalog_path(tmp_path: Path) -> Path:
    """One model, two deployments: AIsa limited to 1,200 RPM (20 a second), then OpenAI."""
    spec = yaml.safe_load(DEFAULT_CATALOG.read_text())
    model = spec["models"]["gpt-4o-mini"]
    model.update(
        aliases=[],
        fallbacks=[],
        deployments=[
            {"provider": "aisa", "model": "gpt-4o-mini", "rpm": 1200},
            {"provider": "openai", "model": "gpt-4o-mini"},
        ],
    )
    spec["models"] = {"gpt-4o-mini": model}
    spec.pop("routes", None)  # they name models this catalog leaves out
    path = tmp_path / "limited.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


async def test_an_rpm_limit_holds_fleet_wide_and_the_rest_move_on(producer_r: Producer, fleet, until) -> None:
    fleet.start(max_jobs=20)
    fleet.start(max_jobs=20)
    await until(lambda: _live(producer_r, 2), what="two workers")
    jobs = [
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"job {i}"}]} for i in range(100)
    ]
    subs = await producer_r.submit_many(jobs)
    records = await producer_r.wait_many([s.job_id for s in subs], timeout=60)
    assert all(r.status == "succeeded" for r in records)
    limited = sorted(
        a.started_at for r in records for a in r.attempts if a.provider == "aisa" and a.outcome != "skipped"
    )
    moved = [r for r in records if r.provider == "openai"]
    assert limited and moved  # some used the limited deployment, the rest went on to the next
    # never more than the limit's rate: calls 50 ms apart, so at most 21 in any one-second window
    worst = max(sum(1 for t in limited if start <= t < start + 1.0) for start in limited)
    assert worst <= 21, worst
    skipped = [a for r in moved for a in r.attempts if a.outcome == "skipped"]
    assert skipped and all(a.error_code == "rate_limit_reached" for a in skipped)


async def _live(producer: Producer, n: int) -> bool:
    return await producer.live_workers() >= n
