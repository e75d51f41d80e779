"""The provider batch APIs as the batcher calls them: the I/O edge of ``worker.batch_formats``.

``client_for(session, dep)`` gives the deployment's client by its lane's ``api``: OpenAI's Files and
Batch APIs (``/files``, ``/batches`` under the base URL), Anthropic's Message Batches
(``/v1/messages/batches``), Gemini's batch mode (``/v1beta/models/{m}:batchGenerateContent``,
``/v1beta/batches/{id}``). Every client creates, retrieves, finds (after a holder died between
creating a batch and recording it), cancels, and reads the items of an ended batch; an error answer
is classified by the deployment's adapter, like any provider failure."""

from __future__ import annotations

from types import ModuleType
from typing import Any, Protocol

import aiohttp
import orjson

from config.catalog import Deployment
from worker.batch_formats import anthropic, gemini, openai
from worker.batch_formats.base import RawItem, Remote
from worker.providers import ADAPTERS
from worker.providers.anthropic import DEFAULT_VERSION

ENDPOINT = openai.ENDPOINT
_TIMEOUT = aiohttp.ClientTimeout(total=120, sock_connect=10)
FORMATS: dict[str, ModuleType] = {"openai": openai, "anthropic": anthropic, "gemini": gemini}


def batchable(dep: Deployment) -> bool:
    """Whether the deployment offers a batch lane the batcher speaks: its lane's API is its own
    format's (an OpenAI-compatible gateway's batches are OpenAI's)."""
    batch = dep.lanes.batch if dep.lanes is not None else None
    return batch is not None and batch.api == dep.format and batch.api in FORMATS


def batch_line(custom_id: str, request: dict[str, Any], dep: Deployment) -> bytes:
    """One JSONL line of an OpenAI batch (kept for callers of the first format)."""
    return openai.item(custom_id, request, dep)


class BatchClient(Protocol):
    fmt: ModuleType

    async def create(self, batch_id: str, items: list[bytes], window: str) -> Remote: ...

    async def retrieve(self, remote_id: str) -> Remote: ...

    async def find(self, batch_id: str) -> Remote | None: ...

    async def cancel(self, remote_id: str) -> None: ...

    async def items(self, remote: Remote) -> list[RawItem]: ...


def client_for(session: aiohttp.ClientSession, dep: Deployment) -> BatchClient:
    api = dep.lanes.batch.api if dep.lanes is not None and dep.lanes.batch is not None else "openai"
    return {"openai": BatchAPI, "anthropic": AnthropicBatches, "gemini": GeminiBatches}[api](session, dep)


class _Http:
    def __init__(self, session: aiohttp.ClientSession, dep: Deployment) -> None:
        self.session = session
        self.dep = dep
        self._classify = ADAPTERS[dep.format].classify_error
        self._auth: dict[str, str] = {}

    async def _send(self, method: str, url: str, **kwargs: Any) -> bytes:
        async with self.session.request(method, url, headers=self._auth, timeout=_TIMEOUT, **kwargs) as resp:
            body = await resp.read()
            if resp.status >= 300:
                raise self._classify(resp.status, {k.lower(): v for k, v in resp.headers.items()}, body)
            return body


class BatchAPI(_Http):
    """One deployment's OpenAI Files and Batch APIs."""

    fmt = openai

    def __init__(self, session: aiohttp.ClientSession, dep: Deployment) -> None:
        super().__init__(session, dep)
        self._auth = {"Authorization": f"Bearer {dep.api_key}"} if dep.api_key else {}

    def _url(self, path: str) -> str:
        return f"{self.dep.base_url}/{path}"

    async def upload(self, content: bytes, filename: str) -> str:
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", content, filename=filename, content_type="application/jsonl")
        return str(orjson.loads(await self._send("POST", self._url("files"), data=form))["id"])

    async def create(self, batch_id: str, items: list[bytes], window: str) -> Remote:
        file_id = await self.upload(b"".join(items), f"{batch_id}.jsonl")
        body = openai.create_body(file_id, window, batch_id)
        return openai.parse_remote(orjson.loads(await self._send("POST", self._url("batches"), json=body)))

    async def retrieve(self, remote_id: str) -> Remote:
        return openai.parse_remote(orjson.loads(await self._send("GET", self._url(f"batches/{remote_id}"))))

    async def find(self, batch_id: str) -> Remote | None:
        """The most recent batch (of the last 100) whose metadata names ``batch_id``, if any."""
        listed = orjson.loads(await self._send("GET", self._url("batches"), params={"limit": 100}))
        return openai.find(listed, batch_id)

    async def cancel(self, remote_id: str) -> None:
        await self._send("POST", self._url(f"batches/{remote_id}/cancel"))

    async def content(self, file_id: str) -> bytes:
        return await self._send("GET", self._url(f"files/{file_id}/content"))

    async def items(self, remote: Remote) -> list[RawItem]:
        out: list[RawItem] = []
        for file_id in (remote.output, remote.errors):
            if file_id:
                out.extend(openai.items(await self.content(file_id)))
        return out


class AnthropicBatches(_Http):
    """One deployment's Message Batches."""

    fmt = anthropic

    def __init__(self, session: aiohttp.ClientSession, dep: Deployment) -> None:
        super().__init__(session, dep)
        self._auth = {"Content-Type": "application/json", "anthropic-version": DEFAULT_VERSION, **dep.headers}
        if dep.api_key:
            self._auth["x-api-key"] = dep.api_key
        self._root = f"{dep.base_url}/v1/messages/batches"

    async def create(self, batch_id: str, items: list[bytes], window: str) -> Remote:
        raw = await self._send("POST", self._root, data=anthropic.create_body(items))
        return anthropic.parse_remote(orjson.loads(raw))

    async def retrieve(self, remote_id: str) -> Remote:
        return anthropic.parse_remote(orjson.loads(await self._send("GET", f"{self._root}/{remote_id}")))

    async def find(self, batch_id: str) -> Remote | None:
        return None  # a Message Batch carries no metadata of ours

    async def cancel(self, remote_id: str) -> None:
        await self._send("POST", f"{self._root}/{remote_id}/cancel")

    async def items(self, remote: Remote) -> list[RawItem]:
        if not remote.output:
            return []
        return anthropic.items(await self._send("GET", anthropic.results_url(remote, self.dep)))


class GeminiBatches(_Http):
    """One deployment's Gemini batch mode (inline requests and responses)."""

    fmt = gemini

    def __init__(self, session: aiohttp.ClientSession, dep: Deployment) -> None:
        super().__init__(session, dep)
        self._auth = {"Content-Type": "application/json", **dep.headers}
        if dep.api_key:
            self._auth["x-goog-api-key"] = dep.api_key
        self._root = f"{dep.base_url}/v1beta"

    async def create(self, batch_id: str, items: list[bytes], window: str) -> Remote:
        url = f"{self._root}/{gemini.model_path(self.dep)}:batchGenerateContent"
        raw = await self._send("POST", url, data=gemini.create_body(batch_id, items))
        return gemini.parse_remote(orjson.loads(raw))

    async def retrieve(self, remote_id: str) -> Remote:
        return gemini.parse_remote(orjson.loads(await self._send("GET", f"{self._root}/{remote_id}")))

    async def find(self, batch_id: str) -> Remote | None:
        listed = orjson.loads(await self._send("GET", f"{self._root}/batches", params={"pageSize": 100}))
        return gemini.find(listed, batch_id)

    async def cancel(self, remote_id: str) -> None:
        await self._send("POST", f"{self._root}/{remote_id}:cancel")

    async def items(self, remote: Remote) -> list[RawItem]:
        return gemini.items(remote)
