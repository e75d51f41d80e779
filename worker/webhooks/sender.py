"""One attempt at a webhook: a POST through the SSRF guard, bounded in time and in what it reads.

* the URL goes through the core's parser and the webhook guard (an IP literal is checked before
  connecting; a host name on every address it resolves to, by ``GuardedResolver``: no DNS
  rebinding between check and connect), and aiohttp must read the same host from it;
* redirects are not followed (a receiver answers, it does not send us elsewhere);
* the whole attempt takes at most ``webhook_timeout_s``, connecting ``webhook_connect_timeout_s``;
  at most ``webhook_max_response_bytes`` of the answer are read (its first 200 characters are kept
  when it is not a 2xx);
* no proxy from the environment, no cookies kept between receivers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import aiohttp
from yarl import URL

from config.settings import Settings
from llm_router.urls import UnsafeURL, parse_url
from llm_router.webhooks.spec import webhook_guard
from worker.images import GuardedResolver, RefusedAddress

USER_AGENT = "llm-router-webhooks/1"
KEPT_CHARS = 200


@dataclass(frozen=True, slots=True)
class Answer:
    """What one attempt got: a status (``None`` when no HTTP answer came) or an error."""

    status: int | None
    latency_ms: float
    error: str | None = None
    retry_after_s: float | None = None
    refused: bool = False  # the guard refused the address: no retry can succeed

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def breaks(self) -> bool:
        """Whether it counts against the endpoint's breaker: the receiver is away or overloaded."""
        return self.status is None or self.status == 429 or self.status >= 500


def retry_after_s(value: str | None) -> float | None:
    """``Retry-After`` in seconds (a number, or an HTTP date)."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None


class Sender:
    """Sends attempts; one per deliverer (one session, its connections kept alive per receiver)."""

    def __init__(self, settings: Settings) -> None:
        self.guard = webhook_guard(settings)
        self.timeout = aiohttp.ClientTimeout(
            total=settings.webhook_timeout_s, sock_connect=settings.webhook_connect_timeout_s
        )
        self.max_bytes = settings.webhook_max_response_bytes
        self._targets: dict[str, URL | str] = {}  # url → what to request, or why it is refused
        self._session: aiohttp.ClientSession | None = None

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Answer:
        target = self._target(url)
        if isinstance(target, str):
            return Answer(None, 0.0, target, refused=True)
        started = time.perf_counter()
        try:
            async with self._get_session().post(
                target, data=body, headers=headers, allow_redirects=False, timeout=self.timeout
            ) as resp:
                head = await resp.content.read(self.max_bytes)
                status = resp.status
                wait = retry_after_s(resp.headers.get("Retry-After")) if status >= 300 else None
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, RefusedAddress):
                return Answer(None, _ms(started), f"refused: {exc.os_error}", refused=True)
            return Answer(None, _ms(started), f"cannot connect: {exc.os_error.strerror or exc.os_error}")
        except TimeoutError:
            return Answer(None, _ms(started), f"no answer within {self.timeout.total:g} s")
        except aiohttp.ClientError as exc:
            return Answer(None, _ms(started), f"{type(exc).__name__}: {exc}"[:KEPT_CHARS])
        if 200 <= status < 300:
            return Answer(status, _ms(started))
        text = head.decode(errors="replace")[:KEPT_CHARS] or None
        return Answer(status, _ms(started), text, retry_after_s=wait)

    def _target(self, url: str) -> URL | str:
        target = self._targets.get(url)
        if target is None:
            if len(self._targets) > 10_000:
                self._targets.clear()
            target = self._targets[url] = _check(url, self)
        return target

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                resolver=GuardedResolver(self.guard), limit=0, ttl_dns_cache=60, enable_cleanup_closed=True
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                trust_env=False,  # a proxy would connect on our behalf, past the guard
                cookie_jar=aiohttp.DummyCookieJar(),  # one receiver's cookies never go to another
                auto_decompress=False,
                headers={"User-Agent": USER_AGENT},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _check(url: str, sender: Sender) -> URL | str:
    """The URL to request, or why not: the core's parser and the guard, and one reading of its host."""
    try:
        parsed = parse_url(url)
        sender.guard.check_url(parsed)
    except UnsafeURL as exc:
        return f"refused: {exc}"
    target = URL(parsed.url)
    # the same host for both parsers, or the guard checked another host than the one we reach
    if (target.host or "").rstrip(".").lower() != parsed.host or (target.port or 0) != parsed.port:
        return "refused: the URL is ambiguous (its host parses two ways)"
    return target


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
