"""A new job for the store's scripts, as the producer would make it (tests of the Lua, no producer)."""

from __future__ import annotations

import time
from typing import Any

from llm_router.store import NewJob, body_digest

REQUEST = b'{"messages":[{"content":"hi","role":"user"}],"model":"m"}'


def new_job(
    job_id: str = "j1",
    *,
    tenant: str = "t",
    request: bytes = REQUEST,
    now: float | None = None,
    **fields: Any,
) -> NewJob:
    """Model ``m`` alone on its route, created ``now`` (default: this moment), due within a minute."""
    now = time.time() if now is None else now
    return NewJob(
        job_id=job_id,
        digest=body_digest(request),
        request=request,
        route=["m"],
        route_json=b'["m"]',
        model_requested="m",
        tenant=tenant,
        created_at=now,
        deadline_at=now + 60,
        **fields,
    )
