"""Standard Webhooks signatures, and the per-tenant secrets that make them.

A tenant's secret is never stored: it is ``HMAC-SHA256(master key, tenant, version)``, shown as
``whsec_<base64>`` by ``llm-router webhooks set`` and ``rotate``. Only the version lives in Redis,
in the tenant's policy hash (``llm_router.tenants``): ``webhook_secret_version`` (1 until the first
rotation) and ``webhook_previous_until``: until then the previous version signs as well, so a
receiver that still holds the old secret keeps verifying while it switches (Standard Webhooks puts
several signatures in one header, space-separated).

A signature is ``v1,<base64 of HMAC-SHA256(secret, "<webhook-id>.<webhook-timestamp>.<body>")>``,
what the ``standardwebhooks`` package (and Svix's, and OpenAI's SDK) verifies.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from config.settings import Settings
from llm_router.errors import RouterError
from llm_router.keys import tenant_policy_key

SECRET_PREFIX = "whsec_"
VERSION_FIELD = "webhook_secret_version"
PREVIOUS_UNTIL_FIELD = "webhook_previous_until"
_LABEL = b"llm-router webhook signing secret\x00"


def master_key(settings: Settings) -> bytes:
    """The process's master key; ``RouterError`` saying how to set it when it is missing."""
    if settings.webhook_master_key is None or not settings.webhook_master_key.get_secret_value():
        raise RouterError(
            "LLM_ROUTER_WEBHOOK_MASTER_KEY is not set: webhook signing secrets derive from it "
            "(use a long random value, the same in every process, e.g. `openssl rand -hex 32`)",
            code="internal_error",
        )
    return settings.webhook_master_key.get_secret_value().encode()


def derive_key(master: bytes, tenant: str, version: int) -> bytes:
    """The 32 bytes a tenant's secret of ``version`` is."""
    return hmac.new(master, _LABEL + f"{tenant}\x00{version}".encode(), hashlib.sha256).digest()


def secret_text(key: bytes) -> str:
    """The secret as receivers configure it: ``whsec_`` and its base64."""
    return SECRET_PREFIX + base64.b64encode(key).decode()


def sign(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: one ``v1,…`` per key, space-separated."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode() for key in keys
    )


@dataclass(frozen=True, slots=True)
class SecretState:
    """Which versions of a tenant's secret sign: the current one, and the previous one until
    ``previous_until`` (Unix seconds) after a rotation."""

    version: int = 1
    previous_until: float = 0.0

    @classmethod
    def of(cls, stored: Mapping[str, str]) -> SecretState:
        """From the tenant's policy hash (decoded)."""
        return cls(int(stored.get(VERSION_FIELD) or 1), float(stored.get(PREVIOUS_UNTIL_FIELD) or 0))

    def versions(self, now: float) -> tuple[int, ...]:
        if self.version > 1 and now < self.previous_until:
            return (self.version, self.version - 1)
        return (self.version,)


class Secrets:
    """Reads and rotates tenants' secret versions (the operator's side: ``llm-router webhooks``)."""

    def __init__(self, redis: Redis, master: bytes) -> None:
        self.redis = redis
        self.master = master

    async def state(self, tenant: str) -> SecretState:
        raw = await self.redis.hmget(tenant_policy_key(tenant), [VERSION_FIELD, PREVIOUS_UNTIL_FIELD])
        stored = {k: v.decode() for k, v in zip((VERSION_FIELD, PREVIOUS_UNTIL_FIELD), raw, strict=True) if v}
        return SecretState.of(stored)

    async def rotate(self, tenant: str, grace_s: float) -> SecretState:
        """A new version; the previous one keeps signing ``grace_s`` seconds (0: it stops now)."""
        until = time.time() + grace_s if grace_s > 0 else 0
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(tenant_policy_key(tenant), VERSION_FIELD, 1)
            pipe.hincrby(tenant_policy_key(tenant), VERSION_FIELD, 1)
            pipe.hset(tenant_policy_key(tenant), PREVIOUS_UNTIL_FIELD, repr(until))
            _, version, _ = await pipe.execute()
        return SecretState(int(version), until)

    def secret(self, tenant: str, version: int) -> str:
        return secret_text(derive_key(self.master, tenant, version))
