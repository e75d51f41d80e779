"""One attempt at a webhook: a POST through the SSRF guard, bounded in time and in what it reads.

* the URL goes through the core's parser and the webhook guard (an IP literal is checked before
  connecting; a host name on every address it resolves to, by ``GuardedResolver``: the connection
  goes to an address that was checked, so no DNS rebinding between check and connect);
* redirects are not followed (a receiver answers, it does not send us elsewhere);
* the whole attempt takes at most ``webhook_timeout_s``, connecting ``webhook_connect_timeout_s``;
  at most ``webhook_max_response_bytes`` of the answer are read (its first 200 characters are kept
  when it is not a 2xx);
* no proxy from the environment, no cookies: nothing of one receiver reaches another.

The HTTP is ``worker.http11``'s small keep-alive client (see there why not aiohttp's).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from config.settings import Settings
from llm_router.urls import UnsafeURL, parse_url
from llm_router.webhooks.spec import webhook_guard
from worker.http11 import Client, ConnectTimeout, HTTPError, Target
from worker.images import GuardedResolver, RefusedAddress

USER_AGENT = "llm-router-webhooks/1"
FIXED_HEADERS = f"User-Agent: {USER_AGENT}\r\nContent-Type: application/json\r\n".encode()
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
    """Sends attempts; one per deliverer (its connections kept alive per receiver)."""

    def __init__(self, settings: Settings, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.guard = webhook_guard(settings)
        self.timeout_s = settings.webhook_timeout_s
        self.connect_timeout_s = min(settings.webhook_connect_timeout_s, settings.webhook_timeout_s)
        self.max_bytes = settings.webhook_max_response_bytes
        self.client = Client(GuardedResolver(self.guard), ssl_context=ssl_context)
        self._targets: dict[str, Target | str] = {}  # url → where to send, or why it is refused

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Answer:
        target = self._target(url)
        if isinstance(target, str):
            return Answer(None, 0.0, target, refused=True)
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode()
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout_s):
                resp = await self.client.post(
                    target, lines, body, connect_timeout=self.connect_timeout_s, max_bytes=self.max_bytes
                )
        except RefusedAddress as exc:
            return Answer(None, _ms(started), f"refused: {exc}", refused=True)
        except TimeoutError:
            return Answer(None, _ms(started), f"no answer within {self.timeout_s:g} s")
        except ConnectTimeout as exc:
            return Answer(None, _ms(started), f"cannot connect: {exc}")
        except ssl.SSLError as exc:
            return Answer(None, _ms(started), f"TLS: {exc.reason or exc}"[:KEPT_CHARS])
        except ConnectionResetError:
            return Answer(None, _ms(started), "the connection was closed before an answer")
        except OSError as exc:
            return Answer(None, _ms(started), f"cannot connect: {exc.strerror or exc}"[:KEPT_CHARS])
        except HTTPError as exc:
            return Answer(None, _ms(started), f"bad answer: {exc}"[:KEPT_CHARS])
        if 200 <= resp.status < 300:
            return Answer(resp.status, _ms(started))
        text = resp.body.decode(errors="replace")[:KEPT_CHARS] or None
        wait = retry_after_s(resp.headers.get("retry-after"))
        return Answer(resp.status, _ms(started), text, retry_after_s=wait)

    def _target(self, url: str) -> Target | str:
        target = self._targets.get(url)
        if target is None:
            if len(self._targets) > 10_000:
                self._targets.clear()
            target = self._targets[url] = self._check(url)
        return target

    def _check(self, url: str) -> Target | str:
        """Where to send, or why not: the core's parser and the guard."""
        try:
            parsed = parse_url(url)
            self.guard.check_url(parsed)
        except UnsafeURL as exc:
            return f"refused: {exc}"
        # the host the guard checked is the one we connect to: nothing parses the URL's host again
        return Target.of(parsed.scheme, parsed.host, parsed.port, parsed.url, FIXED_HEADERS)

    async def close(self) -> None:
        await self.client.close()


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
