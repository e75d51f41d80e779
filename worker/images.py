"""Fetching image URLs for providers that need the bytes (Gemini's ``inlineData``), SSRF-guarded.

A job's image URL is the caller's input, and the worker runs inside someone's network: fetched
naively it could read a cloud metadata endpoint or an internal service. ``ImageFetcher`` therefore
has a session of its own (not the providers' one) whose every connection goes through the guard:

* the job's URL and every redirect target go through the core's parser and guard
  (``llm_router.urls``, which the producer also checks URLs with at submit): only unambiguous
  ``http``/``https`` URLs (redirects are followed here, one hop at a time, each target checked
  again, at most ``MAX_REDIRECTS``), and aiohttp must read the same host and port from it;
* a host name is resolved by ``GuardedResolver``, which drops addresses the policy refuses and
  fails when none is left (so the connection goes only to an address that was checked: no DNS
  rebinding between check and connect); an IP literal is checked before the request;
* refused unless ``image_fetch_allow_private`` or listed in ``image_fetch_allowlist`` (the
  guard's policy, see ``llm_router.urls``): loopback, private, link-local, CGNAT, multicast,
  reserved, and IPv6 forms embedding them; refused always: the cloud metadata addresses;
* the answer must be 200 with an ``image/*`` content type and at most ``image_fetch_max_bytes``
  (checked against Content-Length and again while reading); the whole fetch, redirects included,
  takes at most ``image_fetch_timeout_s``.

A job's images are held in memory until its call is made, so one job must not be able to take a
worker down (a job of 40 URLs of 20 MB once took one to 3.7 GB, and the next worker after it): a job
fetches at most ``max_images_per_job`` images, ``FETCHES_PER_JOB`` at a time, ``max_image_bytes_per_job``
bytes in all; and at most ``image_inline_jobs`` jobs of a worker process hold fetched images at once
(``scope``: a job takes a slot at its first fetch and gives it back when its walk ends), so a
worker's image memory is bounded by their product whatever its jobs ask for.

A failed fetch is the caller's problem, raised as ``InvalidRequest`` naming the image's param.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from config.settings import Settings
from llm_router.errors import InvalidRequest
from llm_router.urls import AddressGuard, IPNetwork, UnsafeURL, address_allowed, parse_url

__all__ = ["GuardedResolver", "ImageFetcher", "RefusedAddress", "address_allowed"]

MAX_REDIRECTS = 5
FETCHES_PER_JOB = 4
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024


class _Scope:
    """One job's hold on the worker's image memory: the slot it took, if it fetched; given back
    when the job's ``with`` ends. A class, not a generator: each job of a wide worker enters one."""

    __slots__ = ("_slots", "_token", "slot")

    def __init__(self, slots: asyncio.Semaphore) -> None:
        self.slot = False
        self._slots = slots
        self._token: contextvars.Token[_Scope | None] | None = None

    def __enter__(self) -> None:
        self._token = _SCOPE.set(self)

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _SCOPE.reset(self._token)
            self._token = None
        if self.slot:
            self.slot = False
            self._slots.release()


_SCOPE: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar("image_scope", default=None)


class _JobBytes:
    """Bytes a job's images may still take."""

    __slots__ = ("left",)

    def __init__(self, limit: int) -> None:
        self.left = limit


class RefusedAddress(OSError):
    """A host resolved only to addresses the guard refuses."""


class GuardedResolver(AbstractResolver):
    """Resolves through aiohttp's default resolver and keeps only the addresses the guard allows."""

    def __init__(self, guard: AddressGuard) -> None:
        self._inner = DefaultResolver()
        self._guard = guard

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if self._guard.allows(ipaddress.ip_address(r["host"]))]
        if not allowed:
            raise RefusedAddress(f"{host} resolves only to addresses that are refused (private or internal)")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


class ImageFetcher:
    """Replaces https image URLs in a request by ``data:`` URIs; one per worker process.

    ``exempt`` networks (added to the ``image_fetch_allowlist`` setting) are allowed even when private
    addresses are not (an internal image CDN, or a test server).
    """

    def __init__(self, settings: Settings, *, exempt: Iterable[IPNetwork | str] = ()) -> None:
        self.settings = settings
        self.guard = AddressGuard.of(
            allow_private=settings.image_fetch_allow_private,
            allowlist=(*settings.image_fetch_networks, *exempt),
        )
        self._session: aiohttp.ClientSession | None = None
        self._slots = asyncio.Semaphore(max(settings.image_inline_jobs, 1))

    def scope(self) -> _Scope:
        """One job's run (``with fetcher.scope():``): the memory slot its fetched images take is
        given back when it ends."""
        return _Scope(self._slots)

    async def inline(self, request: dict[str, Any]) -> dict[str, Any]:
        """A copy of ``request`` whose http(s) image URLs are data URIs; data URIs pass through."""
        targets: dict[str, str] = {}  # url → param of its first use, for errors
        for i, msg in enumerate(request.get("messages") or ()):
            content = msg.get("content") if isinstance(msg, dict) else None
            for k, part in enumerate(content if isinstance(content, list) else ()):
                url = _image_url(part)
                if url and url.startswith(("https://", "http://")):
                    targets.setdefault(url, f"messages[{i}].content[{k}].image_url.url")
        if not targets:
            return request
        if len(targets) > self.settings.max_images_per_job:
            param = list(targets.values())[self.settings.max_images_per_job]
            raise InvalidRequest(
                f"a job carries at most {self.settings.max_images_per_job} images", param=param
            )
        held = _SCOPE.get()
        if held is not None and not held.slot:
            await self._slots.acquire()  # released by scope() when the job's walk ends
            held.slot = True
        budget = _JobBytes(self.settings.max_image_bytes_per_job)
        gate = asyncio.Semaphore(FETCHES_PER_JOB)

        async def one(url: str, param: str) -> str:
            async with gate:
                return await self._data_uri(url, param, budget)

        fetched = await asyncio.gather(*(one(url, param) for url, param in targets.items()))
        inlined = dict(zip(targets, fetched, strict=True))
        messages = []
        for msg in request["messages"]:
            content = msg.get("content")
            if isinstance(content, list) and any(_image_url(p) in inlined for p in content):
                msg = {**msg, "content": [_replace(p, inlined) for p in content]}
            messages.append(msg)
        return {**request, "messages": messages}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _data_uri(self, url: str, param: str, budget: _JobBytes) -> str:
        mime, data = await self.fetch(url, param=param, budget=budget)
        return f"data:{mime};base64,{base64.b64encode(data).decode()}"

    async def fetch(
        self, url: str, *, param: str | None = None, budget: _JobBytes | None = None
    ) -> tuple[str, bytes]:
        """(content type, bytes) of the image at ``url``, following checked redirects."""
        try:
            async with asyncio.timeout(self.settings.image_fetch_timeout_s):
                return await self._follow(url, param, budget)
        except TimeoutError:
            raise InvalidRequest(
                f"fetching the image timed out after {self.settings.image_fetch_timeout_s:g} s", param=param
            ) from None

    async def _follow(self, url: str, param: str | None, budget: _JobBytes | None) -> tuple[str, bytes]:
        session = self._get_session()
        for _ in range(MAX_REDIRECTS + 1):
            target = self._check_target(url, param)
            try:
                async with session.get(target, allow_redirects=False) as resp:
                    if resp.status in _REDIRECTS:
                        location = resp.headers.get("Location")
                        if not location:
                            raise InvalidRequest("the image URL redirects nowhere", param=param)
                        try:
                            url = str(target.join(URL(location)))
                        except ValueError:
                            raise InvalidRequest(
                                "the image URL redirects to a malformed URL", param=param
                            ) from None
                        continue
                    return await self._read(resp, param, budget)
            except aiohttp.ClientConnectorError as exc:
                if isinstance(exc.os_error, RefusedAddress):
                    raise InvalidRequest(
                        f"the image URL's host {target.host} is not allowed: it resolves to a private "
                        "or internal address",
                        param=param,
                    ) from None
                raise InvalidRequest(
                    f"cannot connect to the image URL's host {target.host}", param=param
                ) from None
            except aiohttp.ClientError as exc:
                raise InvalidRequest(
                    f"fetching the image failed: {type(exc).__name__}", param=param
                ) from None
        raise InvalidRequest(f"the image URL redirects more than {MAX_REDIRECTS} times", param=param)

    def _check_target(self, url: str, param: str | None) -> URL:
        """The URL to request, once the core's parser and guard accept it (a host name is checked
        by the resolver, on every address it resolves to)."""
        try:
            parsed = parse_url(url)
            self.guard.check_url(parsed)
        except UnsafeURL as exc:
            raise InvalidRequest(f"the image URL (or a redirect) is refused: {exc}", param=param) from None
        target = URL(parsed.url)
        # the same host for both parsers, or the guard checked another host than the one we reach
        if (target.host or "").rstrip(".").lower() != parsed.host or (target.port or 0) != parsed.port:
            raise InvalidRequest("the image URL is ambiguous (its host parses two ways)", param=param)
        return target

    async def _read(
        self, resp: aiohttp.ClientResponse, param: str | None, budget: _JobBytes | None
    ) -> tuple[str, bytes]:
        if resp.status != 200:
            raise InvalidRequest(f"fetching the image failed: HTTP {resp.status}", param=param)
        mime = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if not mime.startswith("image/"):
            raise InvalidRequest(
                f"the image URL answered {mime or 'no content type'}, not an image", param=param
            )
        limit = self.settings.image_fetch_max_bytes
        if resp.content_length is not None and resp.content_length > limit:
            raise InvalidRequest(
                f"the image is {resp.content_length} bytes; the limit is {limit}", param=param
            )
        data = bytearray()
        async for chunk in resp.content.iter_chunked(_CHUNK):
            data += chunk
            if len(data) > limit:
                raise InvalidRequest(f"the image is over the limit of {limit} bytes", param=param)
            if budget is not None:
                budget.left -= len(chunk)
                if budget.left < 0:
                    raise InvalidRequest(
                        f"the job's images are over {self.settings.max_image_bytes_per_job} bytes in all",
                        param=param,
                    )
        return mime, bytes(data)

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            resolver = GuardedResolver(self.guard)
            connector = aiohttp.TCPConnector(resolver=resolver, limit=64, ttl_dns_cache=60)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.settings.image_fetch_timeout_s),
                trust_env=False,  # a proxy would connect on our behalf, past the guard
                auto_decompress=True,
            )
        return self._session


def _image_url(part: Any) -> str | None:
    if isinstance(part, dict) and part.get("type") == "image_url" and isinstance(part.get("image_url"), dict):
        url = part["image_url"].get("url")
        return url if isinstance(url, str) else None
    return None


def _replace(part: Any, inlined: dict[str, str]) -> Any:
    url = _image_url(part)
    if url not in inlined:
        return part
    return {**part, "image_url": {**part["image_url"], "url": inlined[url]}}
