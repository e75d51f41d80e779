"""Streamed provider calls: read the upstream's SSE, publish chunks to the job's Redis stream, verify the end.

A stream counts as an answer only when it verifiably finished (the format's terminal event, see each
adapter's ``stream_parser``). Its headers must come within the deployment's headers limit, its first
event within ``first_token_s`` of them, and it must never go quiet longer than ``idle_s``
(``worker.http.Timeouts``). One malformed event is skipped and counted (``ChunkStream``); the stream
goes on.

A stream that fails before its first token is an ordinary failure: nothing was published, so
retry or fallback as the taxonomy says. Once tokens were published it depends on who reads them
(``config.cost.followed_stream``):

* nobody follows the job as it runs (a bulk job): its stream is wiped and the error raised as it
  is, so the walk retries or falls back as for any failure and the record ends with a whole answer
  (a late follower then replays only that one);
* a client follows it (an interactive stream): the error becomes ``stream_interrupted`` with the
  text sent so far, and the walk continues the answer on a fallback by prefill
  (``ChunkPublisher.continue_after``, ``worker.providers.prefill``), or ends with the partial text.
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
from llm_router.errors import BadResponse, RouterError, StreamInterrupted, UpstreamTimeout
from llm_router.store import Store
from worker import observe
from worker.hedge import first_token
from worker.http import Timeouts, open_response, transport_error
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

    After ``continue_after`` the chunks of a continuation (another deployment going on from the
    text sent) are published as if the first call had gone on: its id and creation time, no second
    ``role`` delta, and the whitespace the prefill left out not sent twice.
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
        self.head: tuple[Any, Any] | None = None  # id and created of the first chunk published
        self.tools_sent = False  # a tool-call delta went out: no prefill can continue that answer
        self.continuing = False
        self._owed = ""  # whitespace the prefill left out, dropped from the continuation's first text

    def add(self, chunks: list[dict[str, Any]]) -> None:
        for chunk in chunks:
            if not self.include_usage:
                if "usage" in chunk and not chunk.get("choices"):
                    continue  # the usage chunk nobody asked for
                chunk.pop("usage", None)  # OpenAI's `"usage": null` on every chunk, when it was asked
            if self.continuing and not self._continued(chunk):
                continue
            if self.head is None:
                self.head = (chunk.get("id"), chunk.get("created"))
            chunk["model"] = self.model_id  # the catalog model, as in the record
            for choice in chunk.get("choices") or ():
                d = choice.get("delta") or {}
                content = d.get("content")
                if content:
                    self.text.append(content)
                if d.get("tool_calls") or d.get("function_call") or d.get("refusal"):
                    self.tools_sent = True
            self._pending.append(orjson.dumps(chunk))
        if self._pending and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._flush())

    def continue_after(self, prefill: str) -> None:
        """From now on chunks continue the answer published so far, whose prefill was ``prefill``."""
        self.continuing = True
        self._owed = "".join(self.text)[len(prefill) :]

    def _continued(self, chunk: dict[str, Any]) -> bool:
        """Rewrite a continuation's chunk in place as part of the first answer; False to drop it."""
        if self.head is not None:
            chunk["id"], chunk["created"] = self.head
        choices = []
        for choice in chunk.get("choices") or ():
            d = choice.get("delta") or {}
            d.pop("role", None)
            text = d.get("content")
            if self._owed and isinstance(text, str) and text:
                same = 0
                while same < min(len(text), len(self._owed)) and text[same] == self._owed[same]:
                    same += 1
                d["content"], self._owed = text[same:], ""
            if any(v not in (None, "") for v in d.values()) or choice.get("finish_reason") is not None:
                choices.append(choice)
        if not choices and not chunk.get("usage"):
            return False
        chunk["choices"] = choices
        return True

    async def reset(self) -> None:
        """Forget everything published: the answer starts over (nobody was following it)."""
        await self.drain()
        self.text, self.head, self.tools_sent = [], None, False
        try:
            await self.store.drop_stream(self.job_id)
        except RedisError as exc:
            log.warning("stream reset failed", job_id=self.job_id, error=repr(exc))

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
    limits: Timeouts,
    publisher: ChunkPublisher,
    followed: bool,
) -> Completion:
    """One streamed call: its chunks published as they come, its assembled completion returned."""
    adapter: Any = ADAPTERS[dep.format]
    publisher.include_usage = wants_usage(request)
    call = adapter.build_stream_request(request, dep)
    parser = adapter.stream_parser(request, dep)
    decoder = SSEDecoder()
    held: list[dict[str, Any]] = []  # chunks before the first token: a failure now still falls back
    skipped = 0
    try:
        resp = await open_response(session, call, limits, deadline_at=deadline_at, streamed=True)
        async with resp:
            if resp.status >= 400:
                headers = {k.lower(): v for k, v in resp.headers.items()}
                raise adapter.classify_error(resp.status, headers, await resp.read())
            # the first-token clock runs until the upstream sends anything at all: a model that
            # thinks before it answers is alive; from then on the idle clock applies
            first_by = time.monotonic() + limits.first_token_s
            heard = False
            while not parser.done:
                wait = limits.idle_s if heard else first_by - time.monotonic()
                try:
                    # asyncio.timeout, not wait_for: no task per chunk, and a cancel is never lost
                    async with asyncio.timeout(max(wait, 0.001)):
                        data = await resp.content.readany()
                except TimeoutError:
                    if heard:
                        raise UpstreamTimeout(f"the stream went quiet for {limits.idle_s} s") from None
                    raise UpstreamTimeout(f"no first token within {limits.first_token_s} s") from None
                if not data:
                    break
                for event in decoder.feed(data):
                    heard = True
                    chunks = parser.feed(event)
                    if parser.skipped > skipped:
                        skipped = parser.skipped
                        log.warning(
                            "malformed stream event skipped",
                            job_id=publisher.job_id,
                            deployment=dep.id,
                            skipped=skipped,
                            why=parser.last_skipped,
                        )
                    if not parser.started:
                        held.extend(chunks)
                        continue
                    if held:
                        chunks, held = [*held, *chunks], []
                    first_token()  # in a hedge's race, the attempt that loses stops here
                    publisher.add(chunks)
                    observe.first_token()
                    if parser.done:
                        break
        if not parser.done:
            raise BadResponse("the stream ended without its terminal event")
        completion = parser.completion()  # inside the guard: a bad ending after tokens is an interruption
        if held:  # an answer without a single token still reaches its followers
            first_token()
            publisher.add(held)
    except Exception as exc:
        error = exc if isinstance(exc, RouterError) else transport_error(exc, call.url)
        if error is None:
            raise
        if not parser.started:
            raise error from None
        if not followed:
            # nobody saw these tokens: forget them, and let the walk retry or fall back
            await publisher.reset()
            raise error from None
        await publisher.drain()
        raise StreamInterrupted(
            f"the stream broke after tokens were sent: {error.code}: {error.message}",
            partial_text="".join(publisher.text),
            cause=error.code,
            http_status=error.http_status,
        ) from None
    await publisher.drain()
    return completion
