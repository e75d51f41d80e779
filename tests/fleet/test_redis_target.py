"""Where the settings say Redis is: one URL, Sentinel by two settings or by one redis+sentinel:// URL,
and the passwords kept out of logs. Offline: nothing here connects."""

from __future__ import annotations

import pytest
from redis.asyncio.sentinel import SentinelConnectionPool

from config.settings import Settings
from llm_router.errors import RouterError
from llm_router.redis_client import RedisTarget, redis_client, redis_target, sync_redis_client


@pytest.fixture(autouse=True)
def no_redis_env(monkeypatch) -> None:
    """Only what a test sets names Redis here."""
    for name in ("REDIS_URL", "LLM_ROUTER_REDIS_URL", "LLM_ROUTER_REDIS_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    for name in ("SENTINELS", "SENTINEL_MASTER", "SENTINEL_PASSWORD"):
        monkeypatch.delenv(f"LLM_ROUTER_REDIS_{name}", raising=False)


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def test_a_plain_url_is_one_endpoint() -> None:
    target = redis_target(settings(redis_url="redis://:s3cret@cache:6380/2"))
    assert target == RedisTarget(url="redis://:s3cret@cache:6380/2")
    assert str(target) == "redis://:***@cache:6380/2"


def test_sentinels_by_two_settings_with_passwords_from_their_own_settings(monkeypatch) -> None:
    monkeypatch.setenv("LLM_ROUTER_REDIS_SENTINELS", "s0.redis:26379, s1.redis:26379,[::1]:26380")
    monkeypatch.setenv("LLM_ROUTER_REDIS_SENTINEL_MASTER", "primary")
    monkeypatch.setenv("LLM_ROUTER_REDIS_PASSWORD", "data-pw")
    monkeypatch.setenv("LLM_ROUTER_REDIS_SENTINEL_PASSWORD", "sentinel-pw")
    target = redis_target(Settings(_env_file=None))
    assert target.sentinels == (("s0.redis", 26379), ("s1.redis", 26379), ("::1", 26380))
    assert (target.master, target.db, target.password, target.sentinel_password) == (
        "primary",
        0,
        "data-pw",
        "sentinel-pw",
    )
    assert "pw" not in str(target) and "primary" in str(target)


def test_sentinels_as_one_url() -> None:
    target = redis_target(settings(redis_url="redis+sentinel://:pw@a:26379,b:26380/mymaster/3"))
    assert target.sentinels == (("a", 26379), ("b", 26380))
    assert (target.master, target.db, target.password, target.ssl) == ("mymaster", 3, "pw", False)
    tls = redis_target(settings(redis_url="rediss+sentinel://a:26379/m"))
    assert (tls.master, tls.db, tls.ssl, tls.password) == ("m", 0, True, None)


def test_the_master_default_is_sentinels_own_convention() -> None:
    assert redis_target(settings(redis_sentinels="a:26379")).master == "mymaster"


@pytest.mark.parametrize(
    ("values", "says", "param"),
    [
        ({}, "REDIS_URL is not set", "REDIS_URL"),
        (
            {"redis_url": "redis://x:6379/0", "redis_sentinels": "a:26379"},
            "not both",
            "LLM_ROUTER_REDIS_SENTINELS",
        ),
        ({"redis_sentinels": "a:26379,b"}, "'b' is not host:port", "LLM_ROUTER_REDIS_SENTINELS"),
        ({"redis_sentinels": " , "}, "no sentinel given", "LLM_ROUTER_REDIS_SENTINELS"),
        ({"redis_url": "redis+sentinel://a:26379"}, "names the primary after the sentinels", "REDIS_URL"),
        ({"redis_url": "redis+sentinel://a:26379/m/x"}, "is a number", "REDIS_URL"),
        ({"redis_url": "redis+sentinel://a:99999/m"}, "is not host:port", "REDIS_URL"),
    ],
)
def test_a_wrong_setting_is_named(values: dict[str, str], says: str, param: str) -> None:
    with pytest.raises(RouterError, match=says) as caught:
        redis_target(settings(**values))
    assert caught.value.param == param


async def test_sentinel_clients_ask_the_sentinels_for_the_primary() -> None:
    s = settings(redis_sentinels="127.0.0.1:9,127.0.0.1:10", redis_password="pw")
    client = redis_client(s, socket_timeout=3)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "mymaster"
    assert pool.connection_kwargs["password"] == "pw" and pool.connection_kwargs["socket_timeout"] == 3
    await client.aclose()
    sync = sync_redis_client(s)
    assert sync.connection_pool.service_name == "mymaster"  # type: ignore[attr-defined]
    sync.close()


async def test_a_password_setting_fills_a_url_without_one_and_never_replaces_the_urls() -> None:
    bare = redis_client(settings(redis_url="redis://h:6379/0", redis_password="pw"))
    assert bare.connection_pool.connection_kwargs["password"] == "pw"
    own = redis_client(settings(redis_url="redis://:mine@h:6379/0", redis_password="pw"))
    assert own.connection_pool.connection_kwargs["password"] == "mine"
    await bare.aclose()
    await own.aclose()
