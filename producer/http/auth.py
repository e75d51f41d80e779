"""API keys: which tenant a request speaks for.

A key is ``lr-`` plus 32 URL-safe random characters, shown once by ``llm-router keys create``. Redis
keeps only its SHA-256 (hex) in the hash ``APIKEYS_KEY`` (hash → tenant) and, beside it in
``APIKEY_META_KEY``, a short prefix and creation time so ``keys list`` and ``keys revoke`` can name a key
without holding it. An optional YAML file (``api_keys_file``: ``{key: tenant}``) adds keys read at start;
they are hashed on load too. The server caches lookups for ``CACHE_TTL_S`` so a revoked key stops working
within that long, and a hot key costs no Redis round trip per request; the server's background task
(``producer.http.keep_fresh``) looks the keys used lately up again before they go stale
(``ApiKeys.refresh``), so a key sending one request every few seconds costs none either.

**Admin keys** open the dashboard (``/dashboard``): a key created with ``keys create TENANT --admin``
(its hash is also in ``APIKEY_ADMINS_KEY``), or any key of a tenant listed in
``LLM_ROUTER_ADMIN_TENANTS``. An admin key is still its tenant's key for the ``/v1`` API.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml
from redis.asyncio import Redis

from llm_router.errors import InvalidApiKey, InvalidRequest
from llm_router.keys import APIKEY_ADMINS_KEY, APIKEY_META_KEY, APIKEYS_KEY

KEY_PREFIX = "lr-"
SHOWN_PREFIX_LEN = len(KEY_PREFIX) + 6  # what `keys list` shows: enough to tell keys apart, useless to use
CACHE_TTL_S = 3.0
CACHE_MAX = 10_000
TENANT_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


def key_hash(key: str) -> str:
    # aiohttp hands over a header's bytes that are not UTF-8 as surrogates: hashed as they came, so
    # a key with such a byte is merely unknown (401), never an encoding crash
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def check_tenant(tenant: str) -> str:
    """Tenants follow the job contract's rule for ``tenant`` (1-128 of ``A-Za-z0-9._-``)."""
    if not (1 <= len(tenant) <= 128) or not set(tenant) <= TENANT_CHARS:
        raise InvalidRequest("a tenant is 1-128 characters of A-Z a-z 0-9 . _ -", param="tenant")
    return tenant


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What ``keys list`` shows of a key: never the key itself."""

    prefix: str
    tenant: str
    created_at: float | None
    source: str  # "redis" or "file"
    admin: bool = False


class ApiKeys:
    """Create, list, revoke and look up keys; one instance per process (it holds the lookup cache)."""

    def __init__(
        self,
        redis: Redis,
        *,
        keys_file: Path | None = None,
        admin_tenants: frozenset[str] = frozenset(),
        cache_ttl_s: float = CACHE_TTL_S,
    ) -> None:
        self.redis = redis
        self.admin_tenants = admin_tenants
        self._file: dict[str, str] = {}  # hash → tenant, from api_keys_file
        self._file_prefixes: dict[str, str] = {}
        if keys_file is not None:
            self._load_file(keys_file)
        self.cache_ttl_s = cache_ttl_s
        self._cache: dict[str, tuple[str, float]] = {}  # hash → (tenant, believed until)
        self._used: dict[str, float] = {}  # hash → when a request last sent the key

    def _load_file(self, path: Path) -> None:
        raw: Any = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a mapping of API key to tenant")
        for key, tenant in raw.items():
            if not isinstance(key, str) or not isinstance(tenant, str) or not key:
                raise ValueError(f"{path}: every entry must be `key: tenant` (strings)")
            digest = key_hash(key)
            self._file[digest] = check_tenant(tenant)
            self._file_prefixes[digest] = key[:SHOWN_PREFIX_LEN]

    async def create(self, tenant: str, *, admin: bool = False) -> str:
        """A new key for ``tenant`` (``admin``: it also opens the dashboard); the only time the key
        exists outside its holder's hands."""
        check_tenant(tenant)
        key = KEY_PREFIX + secrets.token_urlsafe(24)  # 24 bytes → 32 URL-safe characters
        digest = key_hash(key)
        info: dict[str, Any] = {"prefix": key[:SHOWN_PREFIX_LEN], "tenant": tenant, "created_at": time.time()}
        if admin:
            info["admin"] = True
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(APIKEYS_KEY, digest, tenant)
            pipe.hset(APIKEY_META_KEY, digest, orjson.dumps(info))
            if admin:
                pipe.sadd(APIKEY_ADMINS_KEY, digest)
            await pipe.execute()
        return key

    async def list(self) -> list[KeyInfo]:
        """Every key's prefix and tenant (Redis keys, then the file's), sorted by tenant."""
        tenants = await self.redis.hgetall(APIKEYS_KEY)
        metas = await self.redis.hgetall(APIKEY_META_KEY)
        out: list[KeyInfo] = []
        for digest, tenant in tenants.items():
            meta = orjson.loads(metas[digest]) if digest in metas else {}
            out.append(
                KeyInfo(
                    prefix=meta.get("prefix") or "?",
                    tenant=tenant.decode(),
                    created_at=meta.get("created_at"),
                    source="redis",
                    admin=bool(meta.get("admin")) or tenant.decode() in self.admin_tenants,
                )
            )
        for digest, tenant in self._file.items():
            out.append(
                KeyInfo(
                    prefix=self._file_prefixes[digest],
                    tenant=tenant,
                    created_at=None,
                    source="file",
                    admin=tenant in self.admin_tenants,
                )
            )
        return sorted(out, key=lambda k: (k.tenant, k.prefix))

    async def revoke(self, prefix: str) -> KeyInfo:
        """Remove one Redis key: the key itself (what a person holds after a leak), or the one key
        whose shown prefix starts with ``prefix`` (what ``keys list`` shows)."""
        digest = key_hash(prefix)
        if digest in self._file:
            raise InvalidRequest(
                f"that key comes from the keys file ({self._file_prefixes[digest]}…): remove it there "
                "and restart the servers",
                param="prefix",
            )
        tenant = await self.redis.hget(APIKEYS_KEY, digest) if prefix else None
        if tenant is not None:  # the whole key
            raw = await self.redis.hget(APIKEY_META_KEY, digest)
            shown = {"prefix": prefix[:SHOWN_PREFIX_LEN], "tenant": tenant.decode()}
            meta = orjson.loads(raw) if raw else shown
            return await self._remove(digest, meta)
        metas = await self.redis.hgetall(APIKEY_META_KEY)
        matches = [
            (d, orjson.loads(m)) for d, m in metas.items() if orjson.loads(m)["prefix"].startswith(prefix)
        ]
        if not prefix or not matches:
            shown = prefix[:SHOWN_PREFIX_LEN] + ("…" if len(prefix) > SHOWN_PREFIX_LEN else "")
            raise InvalidRequest(f"no API key is or starts with {shown!r}", param="prefix")
        if len(matches) > 1:
            raise InvalidRequest(
                f"{len(matches)} API keys start with {prefix!r}; give more of it", param="prefix"
            )
        return await self._remove(*matches[0])

    async def _remove(self, digest: bytes | str, meta: dict[str, Any]) -> KeyInfo:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(APIKEYS_KEY, digest)
            pipe.hdel(APIKEY_META_KEY, digest)
            pipe.srem(APIKEY_ADMINS_KEY, digest)
            await pipe.execute()
        return KeyInfo(
            prefix=meta["prefix"], tenant=meta["tenant"], created_at=meta.get("created_at"), source="redis"
        )

    async def tenant_for(self, key: str | None) -> str:
        """The tenant of ``key``; ``InvalidApiKey`` for a missing or unknown key."""
        if not key:
            raise InvalidApiKey("missing API key (send `Authorization: Bearer <key>`)")
        digest = key_hash(key)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[1] > now:
            self._used[digest] = now
            return hit[0]
        tenant = self._file.get(digest)
        if tenant is None:
            raw = await self.redis.hget(APIKEYS_KEY, digest)
            tenant = raw.decode() if raw is not None else None
        if tenant is None:
            # unknown keys are not cached: a key created a moment ago must work at once
            raise InvalidApiKey("invalid API key")
        if len(self._cache) >= CACHE_MAX:
            self._cache.clear()
            self._used.clear()
        self._cache[digest] = (tenant, now + self.cache_ttl_s)
        self._used[digest] = now
        return tenant

    async def refresh(self, within_s: float) -> None:
        """Look up again, in one round trip, the cached keys used within ``within_s``: each is
        believed ``cache_ttl_s`` more, and one revoked meanwhile is forgotten (refused from its next
        request). A key looked up meanwhile is left as it is (that lookup is newer)."""
        begun = time.monotonic()
        for digest, used in list(self._used.items()):
            if begun - used > within_s:
                del self._used[digest]
                self._cache.pop(digest, None)
        digests = [d for d in self._used if d in self._cache and d not in self._file]
        if not digests:
            return
        tenants = await self.redis.hmget(APIKEYS_KEY, digests)
        until = begun + self.cache_ttl_s
        for digest, raw in zip(digests, tenants, strict=True):
            hit = self._cache.get(digest)
            if hit is None or hit[1] > until:
                continue  # forgotten, or looked up since this read began
            if raw is None:
                self._cache.pop(digest, None)  # revoked
            else:
                self._cache[digest] = (raw.decode(), until)

    async def is_admin(self, key: str | None) -> bool:
        """Whether ``key`` is a valid admin key (see the module docstring)."""
        if not key:
            return False
        try:
            tenant = await self.tenant_for(key)
        except InvalidApiKey:
            return False
        if tenant in self.admin_tenants:
            return True
        return bool(await self.redis.sismember(APIKEY_ADMINS_KEY, key_hash(key)))
