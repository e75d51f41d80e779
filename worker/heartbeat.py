"""Per-worker heartbeats: producers count live workers from them before an interactive call."""

from __future__ import annotations

import asyncio
import os
import socket
import time

import structlog

from llm_router.store import Store

log = structlog.get_logger("llm_router.worker")


async def beat_forever(store: Store, worker_id: str, interval_s: float, ttl_s: float) -> None:
    """Refresh this worker's heartbeat until cancelled; a Redis hiccup is logged, not fatal."""
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": time.time()}
    while True:
        try:
            await store.heartbeat(worker_id, info, ttl_s)
        except Exception as exc:  # the next beat may succeed; the worker must not die of this
            log.warning("heartbeat failed", worker_id=worker_id, error=repr(exc))
        await asyncio.sleep(interval_s)
