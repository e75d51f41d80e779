"""The delivery loop: take what is due, send it endpoint by endpoint, write down what happened.

One process at a time delivers: the holder of the ``webhooks`` role (``llm_router.roles``); every
``llm-router worker`` contends for it (``LLM_ROUTER_WEBHOOKS_IN_WORKER``), and so does
``llm-router webhooks run``. Holding the role, a process loops:

1. writes the outcomes of the attempts that ended since its last turn (one write for all of them);
2. takes the deliveries due now (``Outbox.claim``: each leased ``webhook_lease_s``, so those of a
   process that dies come due again and another holder sends them: at least once);
3. hands each to its endpoint (``endpoints``): sent now, queued in memory behind the endpoint's
   attempts in flight, or put off in Redis (breaker open, queue full); an attempt is a task of its
   own, never an arq job, so a slow receiver holds no job slot;
4. sleeps ``webhook_poll_s`` unless it took a full batch.

An attempt is signed with every secret of its tenant that signs now (two during a rotation's grace).
2xx delivers; 410 disables the endpoint (``<tenant> <url>``) and ends the delivery; anything else is
retried with exponential backoff and jitter (``Retry-After`` honoured) until ``webhook_max_age_s``
after the end, and never past its record's expiry (the attempts are written into the record).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
import structlog
from hiredis import pack_command
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from config.settings import Settings
from llm_router.keys import WEBHOOKS_ROLE, split_scoped
from llm_router.roles import run_role
from llm_router.tenants import TenantPolicies
from llm_router.webhooks.events import job_body, webhook_id
from llm_router.webhooks.outbox import (
    JOB,
    Claimed,
    Outbox,
    defer_command,
    disabled_field,
    ended_commands,
    retry_commands,
)
from llm_router.webhooks.signing import SecretState, derive_key, master_key, sign
from worker.webhooks.endpoints import Endpoint, Verdict
from worker.webhooks.sender import Answer, Sender

log = structlog.get_logger("worker.webhooks")

RECORD_MARGIN_S = 3600.0  # retries stop this long before the record (which holds the log) expires
CLOSE_TIMEOUT_S = 2.0


@dataclass(slots=True)
class Delivery:
    """A taken delivery, ready to send."""

    claimed: Claimed
    tenant: str
    url: str
    event: str
    msg_id: str
    body: bytes
    since_ms: int  # Redis ms its first attempt was due
    deadline_ms: int  # no attempt after this (Redis ms)


class Deliverer:
    """Delivers while its process holds the role (``run``); ``close`` hands back what it holds."""

    def __init__(self, redis: Redis, settings: Settings, *, sender: Sender | None = None) -> None:
        self.settings = settings
        self.redis = redis
        self.outbox = Outbox(redis)
        self.policies = TenantPolicies(redis, settings, cache_s=settings.webhook_refresh_s)
        self.master = master_key(settings)
        self.sender = sender or Sender(settings)
        self.endpoints: dict[str, Endpoint] = {}
        self.held: dict[str, Delivery] = {}  # member → delivery, sent or waiting
        self.outcomes: list[tuple[Any, ...]] = []  # commands not yet written
        self.disabled: set[str] = set()
        self.attempting: set[asyncio.Task[None]] = set()
        self.offset_ms = 0.0  # Redis' clock minus ours
        self._keys: dict[tuple[str, int], bytes] = {}
        self._disabled_at = 0.0
        self._lease_ms = int(settings.webhook_lease_s * 1000)
        self._closing = False

    # -- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver until cancelled; Redis going away pauses it, nothing more."""
        while True:
            try:
                full = await self.turn()
            except (RedisError, OSError) as exc:
                log.warning("webhooks: redis unavailable", error=repr(exc))
                await asyncio.sleep(min(1.0, self.settings.webhook_poll_s * 10))
                continue
            if not full:
                await asyncio.sleep(self.settings.webhook_poll_s)

    async def turn(self) -> bool:
        """One turn: write outcomes, take what is due, dispatch it. ``True`` when it took a full batch."""
        await self.flush()
        if time.monotonic() - self._disabled_at > self.settings.webhook_refresh_s:
            self.disabled = set(await self.outbox.disabled())
            self._disabled_at = time.monotonic()
        free = self.settings.webhook_max_in_flight - len(self.held)
        if free <= 0:
            return False
        want = min(free, self.settings.webhook_claim_batch)
        now_ms, claimed = await self.outbox.claim(want, self._lease_ms)
        self.offset_ms = now_ms - time.time() * 1000
        for c in claimed:
            self.take(c)
        return len(claimed) >= want

    async def flush(self) -> None:
        """Write the outcomes gathered so far, in one write; kept for the next turn if Redis fails
        (each is safe to apply twice)."""
        if not self.outcomes:
            return
        commands, self.outcomes = self.outcomes, []
        try:
            await self._send(commands)
        except (RedisError, OSError):
            self.outcomes[:0] = commands
            raise

    async def _send(self, commands: list[tuple[Any, ...]]) -> None:
        """One write of packed commands, then their replies (an error reply is one command's: a
        delivery whose outcome Redis refused comes due again when its lease ends)."""
        packed = b"".join([pack_command(c) for c in commands])
        pool = self.redis.connection_pool
        conn = await pool.get_connection()
        try:
            await conn.send_packed_command(packed, check_health=False)
            for _ in commands:
                try:
                    await conn.read_response()
                except ResponseError as exc:
                    log.error("webhooks: an outcome was refused", error=repr(exc))
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)

    def redis_ms(self) -> int:
        return int(time.time() * 1000 + self.offset_ms)

    # -- dispatch -----------------------------------------------------------------------------

    def take(self, c: Claimed) -> None:
        if c.member in self.held:
            return  # ours already (waiting, or its attempt in flight); the claim renewed its lease
        delivery = self.prepare(c)
        if delivery is None:  # its record expired, or it carries no webhook
            self.outcomes.extend(ended_commands(c, None))
            return
        if disabled_field(delivery.tenant, delivery.url) in self.disabled:
            why = "the endpoint is disabled since it answered 410 (`llm-router webhooks enable`)"
            self.conclude(delivery, Answer(None, 0.0, why), attempted=False)
            return
        endpoint = self.endpoints.get(delivery.url)
        if endpoint is None:
            endpoint = self.endpoints[delivery.url] = Endpoint(delivery.url, self.settings)
        now = time.monotonic()
        verdict = endpoint.admit(now)
        if verdict is Verdict.SEND:
            self.start(delivery, endpoint)
        elif verdict is Verdict.WAIT:
            self.held[c.member] = delivery
            endpoint.waiting.append(delivery)
        else:
            at = self.redis_ms() + int((endpoint.put_off_until - now) * 1000)
            self.outcomes.append(defer_command(c, at))

    def prepare(self, c: Claimed) -> Delivery | None:
        """What to send for a taken delivery, from the fields the claim read."""
        f = c.fields
        if f[0] is None or not f[1]:
            return None
        spec = orjson.loads(f[1])
        tenant = f[2].decode() if f[2] else split_scoped(c.ref)[0]
        if c.kind == JOB:
            event, body = job_body(split_scoped(c.ref)[1], f, spec.get("include") or [])
            ended_s = float(f[4]) if f[4] else time.time()
        else:
            if not f[4]:
                return None  # a batch ends with its event written: none means no webhook then
            body = f[4]
            event = orjson.loads(body)["type"]
            ended_s = max(float(x) for x in (*f[5:], b"0") if x)
        ended_ms = int(ended_s * 1000)
        since_ms = c.since_ms if c.since_ms is not None else ended_ms
        deadline_ms = min(
            since_ms + int(self.settings.webhook_max_age_s * 1000),
            ended_ms
            + int(
                (self.settings.record_ttl_s - min(RECORD_MARGIN_S, self.settings.record_ttl_s / 10)) * 1000
            ),
        )
        return Delivery(
            claimed=c,
            tenant=tenant,
            url=spec["url"],
            event=event,
            msg_id=webhook_id(c.kind, c.ref, f[3]),
            body=body,
            since_ms=since_ms,
            deadline_ms=deadline_ms,
        )

    def start(self, delivery: Delivery, endpoint: Endpoint) -> None:
        self.held[delivery.claimed.member] = delivery
        endpoint.in_flight += 1
        task = asyncio.ensure_future(self.attempt(delivery, endpoint))
        self.attempting.add(task)
        task.add_done_callback(self.attempting.discard)

    async def attempt(self, delivery: Delivery, endpoint: Endpoint) -> None:
        answer: Answer | None = None
        try:
            keys = await self.signing_keys(delivery.tenant)
            now = int(time.time())
            headers = {
                "webhook-id": delivery.msg_id,
                "webhook-timestamp": str(now),
                "webhook-signature": sign(keys, delivery.msg_id, now, delivery.body),
            }
            answer = await self.sender.post(delivery.url, delivery.body, headers)
            self.conclude(delivery, answer)
        except RedisError as exc:  # the tenant's secret version could not be read: try again soon
            log.warning("webhooks: redis unavailable", error=repr(exc))
            self.put_off(delivery, 1000)
        except Exception:  # a bug: the delivery comes due again when its lease ends
            log.exception("webhooks: attempt failed", url=_shown(delivery.url))
        finally:
            endpoint.in_flight -= 1
            self.held.pop(delivery.claimed.member, None)
            if answer is not None:
                endpoint.done(answer, time.monotonic())
            self.after(endpoint)

    def after(self, endpoint: Endpoint) -> None:
        """An attempt ended: start what waits for the endpoint, or put it off if its breaker opened."""
        while endpoint.waiting and endpoint.can_send() and not self._closing:
            self.start(endpoint.waiting.popleft(), endpoint)
        if endpoint.waiting and not endpoint.closed and endpoint.open_until > time.monotonic():
            at = self.redis_ms() + int((endpoint.open_until - time.monotonic()) * 1000)
            while endpoint.waiting:
                delivery = endpoint.waiting.popleft()
                self.held.pop(delivery.claimed.member, None)
                self.outcomes.append(defer_command(delivery.claimed, at))
        if endpoint.idle and endpoint.closed and not endpoint.failures:
            self.endpoints.pop(endpoint.url, None)  # nothing to remember about a healthy endpoint

    def put_off(self, delivery: Delivery, ms: int) -> None:
        self.outcomes.append(defer_command(delivery.claimed, self.redis_ms() + ms))

    # -- outcomes -----------------------------------------------------------------------------

    def conclude(self, delivery: Delivery, answer: Answer, *, attempted: bool = True) -> None:
        """Write down one attempt (or a delivery ended without one) and what comes next."""
        c = delivery.claimed
        attempt = c.attempts + (1 if attempted else 0)
        entry: dict[str, Any] = {
            "at": round(time.time(), 3),
            "delivery": c.delivery,
            "attempt": attempt,
            "status": answer.status,
            "latency_ms": answer.latency_ms if attempted else None,
            "error": answer.error,
            "outcome": "delivered",
            "next_attempt_at": None,
        }
        if answer.ok:
            self.outcomes.extend(ended_commands(c, orjson.dumps(entry)))
            return
        if answer.status == 410 or not attempted:
            entry["outcome"] = "disabled"
            if answer.status == 410:
                info = {
                    "at": entry["at"],
                    "status": 410,
                    "event": delivery.event,
                    "webhook_id": delivery.msg_id,
                }
                self.outcomes.append(self.outbox.disable_command(delivery.tenant, delivery.url, info))
                self.disabled.add(disabled_field(delivery.tenant, delivery.url))
                log.warning(
                    "webhook endpoint disabled (410)", tenant=delivery.tenant, url=_shown(delivery.url)
                )
        else:
            delay_ms = self.backoff_ms(attempt, answer.retry_after_s)
            at = self.redis_ms() + delay_ms
            if answer.refused or at > delivery.deadline_ms:
                entry["outcome"] = "failed"
            else:
                entry["outcome"] = "retrying"
                entry["next_attempt_at"] = round((at - self.offset_ms) / 1000, 3)
                self.outcomes.extend(retry_commands(c, at, attempt, delivery.since_ms, orjson.dumps(entry)))
                return
        self.outcomes.extend(ended_commands(c, orjson.dumps(entry)))

    def backoff_ms(self, attempt: int, retry_after: float | None) -> int:
        """Exponential from ``webhook_backoff_s``, jittered (half to all of it), capped; at least what
        ``Retry-After`` asked (up to the cap)."""
        s = self.settings
        delay = min(s.webhook_backoff_s * 2 ** min(attempt - 1, 40), s.webhook_backoff_max_s)
        delay *= random.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, min(retry_after, s.webhook_backoff_max_s))
        return int(delay * 1000)

    async def signing_keys(self, tenant: str) -> list[bytes]:
        """The secrets that sign for ``tenant`` now: its current one, and its previous one during a
        rotation's grace period (its policy is cached a couple of seconds)."""
        state = SecretState.of((await self.policies.get(tenant)).stored)
        out = []
        for version in state.versions(time.time()):
            key = self._keys.get((tenant, version))
            if key is None:
                if len(self._keys) > 10_000:
                    self._keys.clear()
                key = self._keys[(tenant, version)] = derive_key(self.master, tenant, version)
            out.append(key)
        return out

    # -- stopping -----------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop: attempts in flight are cut off, and everything held is due again at once (another
        holder sends it; a receiver may see a cut-off attempt twice), outcomes written if Redis lets."""
        self._closing = True
        for task in list(self.attempting):
            task.cancel()
        await asyncio.gather(*self.attempting, return_exceptions=True)
        now = self.redis_ms()
        self.outcomes.extend(defer_command(d.claimed, now) for d in self.held.values())
        self.held.clear()
        with contextlib.suppress(RedisError, TimeoutError, OSError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self.flush()
        await self.sender.close()


def _shown(url: str) -> str:
    """A receiver URL as logs may show it: no query (receivers put tokens there), no credentials."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"


async def run_deliveries(redis: Redis, settings: Settings) -> None:
    """Contend for the ``webhooks`` role and deliver while holding it, until cancelled."""

    async def work() -> None:
        deliverer = Deliverer(redis, settings)
        try:
            await deliverer.run()
        finally:
            await deliverer.close()

    await run_role(redis, WEBHOOKS_ROLE, work, ttl_s=settings.webhook_role_ttl_s)


def start_deliveries(redis: Redis, settings: Settings) -> asyncio.Task[None] | None:
    """The delivery role as a task of this process, or ``None`` (logged) when it cannot sign."""
    if settings.webhook_master_key is None or not settings.webhook_master_key.get_secret_value():
        log.info("webhook deliveries off in this process: LLM_ROUTER_WEBHOOK_MASTER_KEY is not set")
        return None
    return asyncio.ensure_future(run_deliveries(redis, settings))


async def stop_deliveries(task: asyncio.Task[None] | None) -> None:
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
