"""Streamed provider calls: read the upstream's SSE, publish chunks to the job's Redis stream, verify the end.

A stream counts as an answer only when it verifiably finished (the format's terminal event, see each
adapter's ``stream_parser``). It must start within ``stream_ttft_s`` and never go quiet longer than
``stream_idle_s``. A stream that fails before its first token is an ordinary failure: retry or
fallback as the taxonomy says. Once tokens were published, a failure is ``stream_interrupted``: the
job keeps the partial text, the stream carries an error event, and the deployment's breaker counts it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import structlog
from redis.exceptions import RedisError

from config.catalog import Deployment
from config.settings import Settings
from llm_router.errors import BadResponse, RouterError, StreamInterrupted, UpstreamTimeout
from llm_router.store import Store
from worker import observe
from worker.http import transport_error
from worker.providers import ADAPTERS, Completion
from worker.providers.sse import SSEDecoder

log = structlog.get_logger("llm_router.worker")


def wants_usage(request: dict[str, Any]) -> bool:
    """Whether the caller asked for the usage chunk (``stream_options.include_usage``), as OpenAI's
    API wants it asked: without it a stream carries no chunk with ``choices: []``."""
    options = request.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


class ChunkPublisher:
    """Appends a job's chunks to its Redis stream in as few round trips as the tokens allow: whatever
    arrives while one write is in flight goes out together in the next.

    Every format's stream ends with a usage chunk (the record needs it); it is published only when
    the caller asked for it (``include_usage``, set from the request by whoever streams), so a
    live stream and a cached answer streamed end the way OpenAI's API ends them.
    """

    def __init__(
        self,
        store: Store,
        job_id: str,
        model_id: str,
        maxlen: int,
        *,
        include_usage: bool = False,
        scrub: Callable[[str], str] | None = None,
    ) -> None:
        self.store = store
        # keys out of an error's message before it is written: the stream keeps it for hours
        self.scrub = scrub
        self.job_id = job_id
        self.model_id = model_id
        self.maxlen = maxlen
        self.include_usage = include_usage
        self._pending: list[bytes] = []
        self._task: asyncio.Task[None] | None = None
        self.text: list[str] = []  # the answer's text so far: what is paid for if the job is aborted

    def add(self, chunks: list[dict[str, Any]]) -> None:
        for chunk in chunks:
            if not self.include_usage:
                if "usage" in chunk and not chunk.get("choices"):
                    continue  # the usage chunk nobody asked for
                chunk.pop("usage", None)  # OpenAI's `"usage": null` on every chunk, when it was asked
            chunk["model"] = self.model_id  # the catalog model, as in the record
            for choice in chunk.get("choices") or ():
                content = (choice.get("delta") or {}).get("content")
                if content:
                    self.text.append(content)
            self._pending.append(orjson.dumps(chunk))
        if self._pending and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self.store.publish(self.job_id, batch, maxlen=self.maxlen)
            except RedisError as exc:  # followers miss these; the record stays the source of truth
                log.warning("stream publish failed", job_id=self.job_id, error=repr(exc))

    async def drain(self) -> None:
        while self._task is not None and not self._task.done():
            await self._task

    async def error(self, error: dict[str, Any]) -> None:
        await self.drain()
        if self.scrub is not None:
            error = {**error, "message": self.scrub(str(error.get("message") or ""))}
        try:
            await self.store.publish_error(self.job_id, error)
        except RedisError as exc:
            log.warning("stream error event not published", job_id=self.job_id, error=repr(exc))


async def stream_call(
    session: aiohttp.ClientSession,
    dep: Deployment,
    request: dict[str, Any],
    *,
    deadline_at: float,
    settings: Settings,
    publisher: ChunkPublisher,
) -> Completion:
    """One streamed call: its chunks published as they come, its assembled completion returned."""
    adapter: Any = ADAPTERS[dep.format]
    publisher.include_usage = wants_usage(request)
    call = adapter.build_stream_request(request, dep)
    parser = adapter.stream_parser(request, dep)
    decoder = SSEDecoder()
    held: list[dict[str, Any]] = []  # chunks before the first token: a failure now still falls back
    left = max(deadline_at - time.time(), 0.001)
    timeout = aiohttp.ClientTimeout(total=left, sock_connect=min(left, settings.connect_timeout_s))
    try:
        async with session.request(
            call.method, call.url, data=call.body, headers=call.headers, timeout=timeout
        ) as resp:
            if resp.status >= 400:
                headers = {k.lower(): v for k, v in resp.headers.items()}
                raise adapter.classify_error(resp.status, headers, await resp.read())
            # the first-token clock runs until the upstream sends anything at all: a model that
            # thinks before it answers is alive; from then on the idle clock applies
            first_by = time.monotonic() + settings.stream_ttft_s
            heard = False
            while not parser.done:
                wait = settings.stream_idle_s if heard else first_by - time.monotonic()
                try:
                    data = await asyncio.wait_for(resp.content.readany(), timeout=max(wait, 0.001))
                except TimeoutError:
                    what = "went quiet" if heard else "sent nothing"
                    limit = settings.stream_idle_s if heard else settings.stream_ttft_s
                    raise UpstreamTimeout(f"the stream {what} for {limit} s") from None
                if not data:
                    break
                for event in decoder.feed(data):
                    heard = True
                    chunks = parser.feed(event)
                    if not parser.started:
                        held.extend(chunks)
                        continue
                    if held:
                        chunks, held = [*held, *chunks], []
                    publisher.add(chunks)
                    observe.first_token()
                    if parser.done:
                        break
        if not parser.done:
            raise BadResponse("the stream ended without its terminal event")
        completion = parser.completion()  # inside the guard: a bad ending after tokens is an interruption
        if held:  # an answer without a single token still reaches its followers
            publisher.add(held)
    except Exception as exc:
        error = exc if isinstance(exc, RouterError) else transport_error(exc, call.url)
        if error is None:
            raise
        if not parser.started:
            raise error from None
        interrupted = StreamInterrupted(
            f"the stream broke after tokens were sent: {error.code}: {error.message}",
            partial_text=parser.partial_text(),
            http_status=error.http_status,
        )
        await publisher.error(interrupted.to_dict())
        raise interrupted from None
    await publisher.drain()
    return completion
