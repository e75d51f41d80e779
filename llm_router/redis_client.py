"""Redis connections: one client per process, built from the settings."""

from __future__ import annotations

from redis.asyncio import Redis

from config.settings import Settings
from llm_router.errors import RouterError


def redis_url(settings: Settings) -> str:
    if not settings.redis_url:
        raise RouterError("REDIS_URL is not set (e.g. redis://127.0.0.1:6379/0)", code="internal_error")
    return settings.redis_url.get_secret_value()


def redis_client(settings: Settings) -> Redis:
    """A client with a connection pool; commands reconnect on their own after a dropped connection."""
    return Redis.from_url(redis_url(settings), health_check_interval=30, socket_connect_timeout=5)
