"""Webhook deliveries in Redis: made due, taken with a lease, retried, ended, logged, replayed.

A delivery is a member of the due set (``keys.WEBHOOKS_DUE_KEY``) scored by when it is due (Redis
ms): ``j|<tenant>/<job id>`` for a job's end, ``b|<batch id>`` for a batch's, with ``|r<n>`` after
it for the n-th replay (a replay is a delivery of its own, so it cannot be lost to the end of one
still in flight). Its body is made from the record when it is sent (``events``).

* **Made due** by the Lua step that ends the job (``job_ended``) or the batch, atomically with it.
* **Taken** by ``CLAIM_LUA``: the deliveries due now, each pushed a lease ahead (a deliverer that
  dies with them leaves them to come due again: at least once), with what their bodies need
  (``events.JOB_FIELDS``) and their retry state, in one round trip.
* **Retried** (``retry_commands``): due again later; ``webhooks:retry`` keeps ``<attempts>|<since
  ms>`` (written only once an attempt failed, so a delivery that succeeds first time costs no state).
* **Ended** (``ended_commands``): off the due set. Every attempt is a field of the job's record (or
  batch hash), ``webhook:<ms>:<delivery>:<attempt>`` holding JSON (``at``, ``delivery``, ``attempt``,
  ``status``, ``latency_ms``, ``error``, ``outcome``, ``next_attempt_at``): it expires with the
  record, and the deliverer stops retrying before that.
* **Disabled** endpoints (a 410) are in ``webhooks:disabled`` as ``<tenant> <url>``.

The deliverer (``worker.webhooks``) sends the outcome commands of many deliveries as one write.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from llm_router.errors import InvalidRequest, JobNotFound
from llm_router.keys import (
    WEBHOOKS_DISABLED_KEY,
    WEBHOOKS_DUE_KEY,
    WEBHOOKS_RETRY_KEY,
    batch_key,
    record_key,
)
from llm_router.lua import LUA_PRELUDE
from llm_router.webhooks.events import BATCH_EVENTS, BATCH_FIELDS, JOB_EVENTS, JOB_FIELDS, webhook_id

JOB, BATCH = "j", "b"
ENDED = {JOB: frozenset(JOB_EVENTS), BATCH: frozenset(BATCH_EVENTS)}
LOG_PREFIX = "webhook:"
MAX_CLAIM = 1000  # Lua's unpack takes a few thousand values at most


def _lua_list(names: tuple[str, ...]) -> str:
    return ", ".join(f"'{n}'" for n in names)


# KEYS: due set, retry hash.  ARGV: how many at most, lease ms.  Returns {redis now ms, then per
# delivery: member, retry state ('' if none), the fields its body needs}.
CLAIM_LUA = (
    LUA_PRELUDE
    + f"""
local due, retry = KEYS[1], KEYS[2]
local limit, lease_ms = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = now_ms()
local out = {{now}}
local members = redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, limit)
if #members == 0 then return out end
local states = redis.call('HMGET', retry, unpack(members))
local leased = {{}}
local until_ms = fmt(now + lease_ms)
for i, m in ipairs(members) do
  leased[#leased + 1] = until_ms
  leased[#leased + 1] = m
  local kind, ref = string.match(m, '^(%a)|([^|]+)')
  local fields
  if kind == 'j' then
    fields = redis.call('HMGET', RECORD .. ref, {_lua_list(JOB_FIELDS)})
  else
    fields = redis.call('HMGET', BATCH .. ref, {_lua_list(BATCH_FIELDS)})
  end
  out[#out + 1] = m
  out[#out + 1] = states[i] or ''
  out[#out + 1] = fields
end
redis.call('ZADD', due, unpack(leased))
return out
"""
)

# KEYS: the job's record (or batch hash), due set, retry hash.  ARGV: the delivery's member, the
# statuses that end it (comma-separated).  Returns the replay's member; -2 no record, -1 no
# webhook, -3 not ended yet.
REPLAY_LUA = (
    LUA_PRELUDE
    + """
local key, due, retry = KEYS[1], KEYS[2], KEYS[3]
local base, ended = ARGV[1], ARGV[2]
local v = redis.call('HMGET', key, 'status', 'webhook')
if not v[1] then return -2 end
if not v[2] or v[2] == '' then return -1 end
if not string.find(',' .. ended .. ',', ',' .. v[1] .. ',', 1, true) then return -3 end
local n = redis.call('HINCRBY', key, 'webhook_replays', 1)
local member = base .. '|r' .. n
local now = fmt(now_ms())
redis.call('ZADD', due, now, member)
redis.call('HSET', retry, member, '0|' .. now)
return member
"""
)


def job_member(scoped: str) -> str:
    return f"{JOB}|{scoped}"


def batch_member(batch_id: str) -> str:
    return f"{BATCH}|{batch_id}"


def ref_key(kind: str, ref: str) -> str:
    """The hash a delivery's body comes from and its attempts go to: the record, or the batch."""
    return record_key(ref) if kind == JOB else batch_key(ref)


@dataclass(slots=True)
class Claimed:
    """A delivery taken by a deliverer: what it is and how far it got."""

    member: str
    kind: str  # JOB or BATCH
    ref: str  # the scoped job id, or the batch id
    delivery: int  # 0, or the replay's number
    attempts: int  # attempts made before this one
    since_ms: int | None  # when its first attempt was due (None: when the job ended)
    fields: list[Any]  # events.JOB_FIELDS or BATCH_FIELDS, raw

    @property
    def key(self) -> str:
        return ref_key(self.kind, self.ref)

    @property
    def had_state(self) -> bool:
        return self.since_ms is not None


def decode_claim(reply: list[Any]) -> tuple[int, list[Claimed]]:
    """``CLAIM_LUA``'s reply: (Redis' now in ms, the deliveries)."""
    now = int(reply[0])
    out = []
    for i in range(1, len(reply), 3):
        member = reply[i].decode()
        kind, ref, *replay = member.split("|")
        state = reply[i + 1]
        attempts, since = (0, None)
        if state:
            a, _, s = state.decode().partition("|")
            attempts, since = int(a), int(s)
        delivery = int(replay[0][1:]) if replay else 0
        out.append(Claimed(member, kind, ref, delivery, attempts, since, reply[i + 2]))
    return now, out


def log_field(at_ms: int, delivery: int, attempt: int) -> str:
    """An attempt's field in the record: names sort in time order."""
    return f"{LOG_PREFIX}{at_ms:013d}:{delivery}:{attempt}"


def ended_commands(c: Claimed, entry: bytes | None) -> list[tuple[Any, ...]]:
    """The delivery is over (delivered, given up, disabled, or its record gone)."""
    cmds: list[tuple[Any, ...]] = [("ZREM", WEBHOOKS_DUE_KEY, c.member)]
    if entry is not None:
        cmds.append(("HSET", c.key, *_entry_pair(entry)))
    if c.had_state:
        cmds.append(("HDEL", WEBHOOKS_RETRY_KEY, c.member))
    return cmds


def retry_commands(
    c: Claimed, at_ms: int, attempts: int, since_ms: int, entry: bytes
) -> list[tuple[Any, ...]]:
    """The attempt failed: due again at ``at_ms`` (only if nobody ended it meanwhile)."""
    return [
        ("ZADD", WEBHOOKS_DUE_KEY, "XX", at_ms, c.member),
        ("HSET", WEBHOOKS_RETRY_KEY, c.member, f"{attempts}|{since_ms}"),
        ("HSET", c.key, *_entry_pair(entry)),
    ]


def defer_command(c: Claimed, at_ms: int) -> tuple[Any, ...]:
    """Not attempted now (its endpoint's breaker is open, or its queue full): due at ``at_ms``."""
    return ("ZADD", WEBHOOKS_DUE_KEY, "XX", at_ms, c.member)


def _entry_pair(entry: bytes) -> tuple[str, bytes]:
    head = orjson.loads(entry)
    return log_field(int(head["at"] * 1000), head["delivery"], head["attempt"]), entry


def disabled_field(tenant: str, url: str) -> str:
    return f"{tenant} {url}"


@dataclass(frozen=True, slots=True)
class DeliveryLog:
    """What became of a job's (or batch's) webhook: its state and every attempt."""

    tenant: str
    url: str | None
    include: list[str]
    webhook_id: str
    event: str | None  # None until the job ended
    state: str  # none | waiting (not ended) | pending | delivered | failed | disabled
    next_attempt_at: float | None
    attempts: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "object": "webhook.log",
            "url": self.url,
            "include": self.include,
            "webhook_id": self.webhook_id,
            "event": self.event,
            "state": self.state,
            "next_attempt_at": self.next_attempt_at,
            "attempts": self.attempts,
        }


class Outbox:
    """The Redis side of webhook deliveries; one per process, on the process's client."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._claim = redis.register_script(CLAIM_LUA)
        self._replay = redis.register_script(REPLAY_LUA)

    async def claim(self, limit: int, lease_ms: int) -> tuple[int, list[Claimed]]:
        """Take up to ``limit`` deliveries due now, each leased ``lease_ms``."""
        reply = await self._claim(
            keys=[WEBHOOKS_DUE_KEY, WEBHOOKS_RETRY_KEY], args=[min(limit, MAX_CLAIM), lease_ms]
        )
        return decode_claim(reply)

    async def replay(self, kind: str, ref: str, public_id: str) -> str:
        """Deliver an ended job's (or batch's) event again, with the same ``webhook-id``; returns the
        replay's member. ``JobNotFound`` or ``InvalidRequest`` saying why not."""
        base = f"{kind}|{ref}"
        res = await self._replay(
            keys=[ref_key(kind, ref), WEBHOOKS_DUE_KEY, WEBHOOKS_RETRY_KEY],
            args=[base, ",".join(sorted(ENDED[kind]))],
        )
        if res == -2:
            raise JobNotFound(f"no job or batch '{public_id}' (unknown or expired)", param="id")
        if res == -1:
            raise InvalidRequest(f"'{public_id}' has no webhook: there is nothing to replay", param="id")
        if res == -3:
            raise InvalidRequest(f"'{public_id}' has not ended yet: its webhook is not due", param="id")
        return res.decode()

    async def log(self, kind: str, ref: str) -> DeliveryLog | None:
        """The delivery log of a job (``JOB``, its scoped id) or batch; ``None`` when it is gone."""
        raw = await self.redis.hgetall(ref_key(kind, ref))
        if not raw:
            return None
        spec = orjson.loads(raw[b"webhook"]) if raw.get(b"webhook") else None
        status = (raw.get(b"status") or b"").decode()
        events = JOB_EVENTS if kind == JOB else BATCH_EVENTS
        attempts = [orjson.loads(raw[k]) for k in sorted(k for k in raw if k.startswith(b"webhook:"))]
        base = f"{kind}|{ref}"
        members = [base] + [f"{base}|r{i}" for i in range(1, int(raw.get(b"webhook_replays") or 0) + 1)]
        scores = [s for s in await self.redis.zmscore(WEBHOOKS_DUE_KEY, members) if s is not None]
        if spec is None:
            state = "none"
        elif status not in events:
            state = "waiting"
        elif scores:
            state = "pending"
        elif attempts:
            state = attempts[-1]["outcome"]
        else:
            state = "failed"  # ended without an attempt: its record outlived the due entry
        return DeliveryLog(
            tenant=(raw.get(b"tenant") or b"default").decode(),
            url=spec["url"] if spec else None,
            include=spec.get("include") or [] if spec else [],
            webhook_id=webhook_id(kind, ref, raw.get(b"created_at")),
            event=events.get(status),
            state=state,
            next_attempt_at=min(scores) / 1000 if scores else None,
            attempts=attempts,
        )

    async def disabled(self) -> dict[str, dict[str, Any]]:
        """Every disabled endpoint (``<tenant> <url>``) and why."""
        raw = await self.redis.hgetall(WEBHOOKS_DISABLED_KEY)
        return {k.decode(): orjson.loads(v) for k, v in raw.items()}

    async def disabled_info(self, tenant: str, url: str) -> dict[str, Any] | None:
        raw = await self.redis.hget(WEBHOOKS_DISABLED_KEY, disabled_field(tenant, url))
        return orjson.loads(raw) if raw else None

    def disable_command(self, tenant: str, url: str, info: dict[str, Any]) -> tuple[Any, ...]:
        return ("HSET", WEBHOOKS_DISABLED_KEY, disabled_field(tenant, url), orjson.dumps(info))

    async def enable(self, tenant: str, url: str) -> bool:
        """Deliver to the endpoint again; ``True`` if it was disabled."""
        return bool(await self.redis.hdel(WEBHOOKS_DISABLED_KEY, disabled_field(tenant, url)))
