"""OpenAI's Files and Batch APIs as the batcher calls them (``/files``, ``/batches`` under the
deployment's base URL): what OpenAI-compatible gateways that offer batches also speak. Errors are
classified by the OpenAI adapter's table, like any provider failure."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from config.catalog import Deployment
from worker.providers.openai import build_request, classify_error

ENDPOINT = "/v1/chat/completions"
_TIMEOUT = aiohttp.ClientTimeout(total=120, sock_connect=10)


def batch_line(custom_id: str, request: dict[str, Any], dep: Deployment) -> bytes:
    """One JSONL line of a provider batch: the body a synchronous call to ``dep`` would send."""
    body = orjson.loads(build_request(request, dep).body)
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}) + b"\n"


class BatchAPI:
    """One deployment's Files and Batch APIs."""

    def __init__(self, session: aiohttp.ClientSession, dep: Deployment) -> None:
        self.session = session
        self.dep = dep
        self._auth = {"Authorization": f"Bearer {dep.api_key}"} if dep.api_key else {}

    async def _send(self, method: str, path: str, **kwargs: Any) -> bytes:
        url = f"{self.dep.base_url}/{path}"
        async with self.session.request(method, url, headers=self._auth, timeout=_TIMEOUT, **kwargs) as resp:
            body = await resp.read()
            if resp.status >= 300:
                raise classify_error(resp.status, {k.lower(): v for k, v in resp.headers.items()}, body)
            return body

    async def upload(self, content: bytes, filename: str) -> str:
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", content, filename=filename, content_type="application/jsonl")
        return str(orjson.loads(await self._send("POST", "files", data=form))["id"])

    async def create(self, input_file_id: str, window: str, metadata: dict[str, str]) -> dict[str, Any]:
        body = {
            "input_file_id": input_file_id,
            "endpoint": ENDPOINT,
            "completion_window": window,
            "metadata": metadata,
        }
        return dict(orjson.loads(await self._send("POST", "batches", json=body)))

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        return dict(orjson.loads(await self._send("GET", f"batches/{batch_id}")))

    async def find(self, key: str, value: str) -> dict[str, Any] | None:
        """The most recent batch (of the last 100) whose metadata has ``key: value``, if any."""
        listed = orjson.loads(await self._send("GET", "batches", params={"limit": 100}))
        for batch in listed.get("data") or ():
            if (batch.get("metadata") or {}).get(key) == value:
                return dict(batch)
        return None

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        return dict(orjson.loads(await self._send("POST", f"batches/{batch_id}/cancel")))

    async def content(self, file_id: str) -> bytes:
        return await self._send("GET", f"files/{file_id}/content")
