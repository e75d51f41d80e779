"""OpenAI's Files API for batches: upload, read, list and delete files, each owned by one tenant.

A file's metadata is a Redis hash (``llm-router:file:<id>``) expiring after ``record_ttl_s``; its
bytes live in the same hash (field ``content``, so one expiry covers both) or, when ``files_dir`` is
set, in a file of that name under it (swept once its hash has expired). A tenant's files are also in a
sorted set by creation time, for listing. Another tenant's file answers 404, as an unknown id does.

Uploads are read part by part with the size cap (``files_max_bytes``) checked as bytes arrive: an
oversized file is refused with 413 without ever being held whole.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from pathlib import Path
from typing import Any

import orjson
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from redis.asyncio import Redis

from llm_router.errors import InvalidRequest, PayloadTooLarge, ResourceNotFound
from llm_router.keys import file_key, tenant_files_key
from producer.http.errors import json_response

META_FIELDS = ("tenant", "filename", "purpose", "bytes", "created_at", "expires_at")
# purposes we accept on upload; batch outputs are written by the server only
UPLOAD_PURPOSES = frozenset({"batch"})
READ_CHUNK = 256 * 1024
MULTIPART_SLACK = 64 * 1024  # headers and boundaries around the file part
SWEEP_GRACE_S = 300.0  # a disk file younger than this may be an upload whose hash is not written yet


def new_file_id() -> str:
    return "file-" + secrets.token_hex(12)


class FileStore:
    """Files of every tenant; one per server process, on the server's Redis client."""

    def __init__(self, redis: Redis, *, ttl_s: int, files_dir: Path | None = None) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self.files_dir = files_dir
        if files_dir is not None:
            files_dir.mkdir(parents=True, exist_ok=True)

    def _path(self, file_id: str) -> Path:
        assert self.files_dir is not None
        return self.files_dir / file_id

    async def put(
        self, tenant: str, *, filename: str, purpose: str, content: bytes, file_id: str | None = None
    ) -> dict[str, Any]:
        """Store ``content`` as a file of ``tenant`` (overwriting ``file_id`` if given); its file object."""
        file_id = file_id or new_file_id()
        if self.files_dir is not None:
            await asyncio.to_thread(_write_atomic, self._path(file_id), content)
        return await self._commit(tenant, file_id, filename, purpose, len(content), content)

    async def _commit(
        self, tenant: str, file_id: str, filename: str, purpose: str, size: int, content: bytes | None
    ) -> dict[str, Any]:
        now = int(time.time())
        meta = {
            "tenant": tenant,
            "filename": filename,
            "purpose": purpose,
            "bytes": size,
            "created_at": now,
            "expires_at": now + self.ttl_s,
        }
        fields: dict[str, Any] = dict(meta)
        if self.files_dir is None and content is not None:
            fields["content"] = content
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(file_key(file_id))
            pipe.hset(file_key(file_id), mapping=fields)
            pipe.expire(file_key(file_id), self.ttl_s)
            pipe.zadd(tenant_files_key(tenant), {file_id: now})
            pipe.expire(tenant_files_key(tenant), self.ttl_s)
            await pipe.execute()
        return file_object(file_id, meta)

    async def upload(
        self, tenant: str, part: BodyPartReader, *, purpose: str, max_bytes: int
    ) -> dict[str, Any]:
        """Read a multipart file part chunk by chunk, refusing it once it passes ``max_bytes``."""
        filename = part.filename or "upload.jsonl"
        file_id = new_file_id()
        buf = bytearray()
        tmp = None if self.files_dir is None else self._path(file_id + ".part")
        sink = None if tmp is None else await asyncio.to_thread(open, tmp, "wb")
        try:
            size = 0
            while chunk := await part.read_chunk(READ_CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLarge(f"the file is over the limit of {max_bytes} bytes", param="file")
                if sink is None:
                    buf += chunk
                else:
                    await asyncio.to_thread(sink.write, chunk)
            if sink is not None and tmp is not None:
                await asyncio.to_thread(sink.close)
                sink = None
                await asyncio.to_thread(os.replace, tmp, self._path(file_id))
                return await self._commit(tenant, file_id, filename, purpose, size, None)
            return await self._commit(tenant, file_id, filename, purpose, size, bytes(buf))
        finally:
            if sink is not None:
                await asyncio.to_thread(sink.close)
            if tmp is not None:
                tmp.unlink(missing_ok=True)

    async def meta(self, tenant: str, file_id: str) -> dict[str, Any]:
        """The file object of ``tenant``'s file; ``ResourceNotFound`` for unknown, expired or foreign ids."""
        values = await self.redis.hmget(file_key(file_id), list(META_FIELDS))
        meta = _decode_meta(values)
        if meta is None or meta["tenant"] != tenant:
            raise ResourceNotFound(f"No such File object: {file_id}", param="file_id")
        return file_object(file_id, meta)

    async def content(self, tenant: str, file_id: str) -> bytes:
        """The file's bytes (after the same ownership check as ``meta``)."""
        await self.meta(tenant, file_id)
        if self.files_dir is not None:
            try:
                return await asyncio.to_thread(self._path(file_id).read_bytes)
            except FileNotFoundError:
                pass  # written by a server with inline storage: look in Redis
        data = await self.redis.hget(file_key(file_id), "content")
        if data is None:
            raise ResourceNotFound(f"No such File object: {file_id}", param="file_id")
        return bytes(data)

    async def list(
        self, tenant: str, *, limit: int, after: str | None, order: str, purpose: str | None
    ) -> tuple[list[dict[str, Any]], bool]:
        """A page of ``tenant``'s files (``order`` by creation time) after the id ``after``."""
        key = tenant_files_key(tenant)
        ids = [i.decode() for i in await self.redis.zrange(key, 0, -1, desc=order == "desc")]
        if after is not None:
            if after not in ids:
                raise InvalidRequest(f"no file '{after}' to list after", param="after")
            ids = ids[ids.index(after) + 1 :]
        out: list[dict[str, Any]] = []
        gone: list[str] = []
        for start in range(0, len(ids), 500):
            window = ids[start : start + 500]
            async with self.redis.pipeline(transaction=False) as pipe:
                for file_id in window:
                    pipe.hmget(file_key(file_id), list(META_FIELDS))
                rows = await pipe.execute()
            for file_id, values in zip(window, rows, strict=True):
                meta = _decode_meta(values)
                if meta is None:
                    gone.append(file_id)
                elif purpose is None or meta["purpose"] == purpose:
                    out.append(file_object(file_id, meta))
            if len(out) > limit:
                break
        if gone:  # expired files leave their index entry behind; drop it on the way
            await self.redis.zrem(key, *gone)
        return out[:limit], len(out) > limit

    async def delete(self, tenant: str, file_id: str) -> None:
        await self.meta(tenant, file_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(file_key(file_id))
            pipe.zrem(tenant_files_key(tenant), file_id)
            await pipe.execute()
        if self.files_dir is not None:
            await asyncio.to_thread(self._path(file_id).unlink, True)

    async def sweep(self) -> int:
        """Delete disk files whose metadata has expired (and uploads abandoned half-way)."""
        if self.files_dir is None:
            return 0
        names = await asyncio.to_thread(_old_files, self.files_dir, time.time() - SWEEP_GRACE_S)
        if not names:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.exists(file_key(name.removesuffix(".part")))
            exists = await pipe.execute()
        stale = [n for n, present in zip(names, exists, strict=True) if not present or n.endswith(".part")]
        for name in stale:
            await asyncio.to_thread(self._path(name).unlink, True)
        return len(stale)


def _old_files(directory: Path, before: float) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith("file-") and p.stat().st_mtime < before]


def _write_atomic(path: Path, content: bytes) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(content)
    os.replace(tmp, path)


def _decode_meta(values: list[bytes | None]) -> dict[str, Any] | None:
    if values[0] is None:
        return None
    tenant, filename, purpose, size, created_at, expires_at = (v.decode() if v else "" for v in values)
    return {
        "tenant": tenant,
        "filename": filename,
        "purpose": purpose,
        "bytes": int(size or 0),
        "created_at": int(created_at or 0),
        "expires_at": int(expires_at or 0),
    }


def file_object(file_id: str, meta: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's ``file`` object."""
    return {
        "id": file_id,
        "object": "file",
        "bytes": meta["bytes"],
        "created_at": meta["created_at"],
        "expires_at": meta["expires_at"],
        "filename": meta["filename"],
        "purpose": meta["purpose"],
        "status": "processed",
        "status_details": None,
    }


# -- HTTP handlers ------------------------------------------------------------------------------

FILES = web.AppKey("llm_router.files", FileStore)


async def create_file(request: web.Request) -> web.Response:
    """``POST /v1/files``: multipart ``purpose`` and ``file`` (OpenAI's SDK sends the purpose first)."""
    store = request.app[FILES]
    max_bytes: int = request.app["settings"].files_max_bytes
    if request.content_length is not None and request.content_length > max_bytes + MULTIPART_SLACK:
        raise PayloadTooLarge(f"the file is over the limit of {max_bytes} bytes", param="file")
    if not request.content_type.startswith("multipart/"):
        raise InvalidRequest("upload the file as multipart/form-data with `file` and `purpose`")
    try:
        purpose, created = await _read_form(request, store, max_bytes)
    except (ValueError, HttpProcessingError) as exc:  # aiohttp's words for a malformed multipart body
        raise InvalidRequest(f"malformed multipart body: {exc}") from None
    if created is None:
        missing = "file" if purpose else "purpose"
        raise InvalidRequest(f"Missing required parameter: '{missing}'", param=missing)
    return json_response(created)


async def _read_form(
    request: web.Request, store: FileStore, max_bytes: int
) -> tuple[str | None, dict[str, Any] | None]:
    """The form's ``purpose`` and the file object made of its ``file`` part (other parts skipped)."""
    reader = await request.multipart()
    purpose: str | None = None
    created: dict[str, Any] | None = None
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            continue
        if part.name == "purpose":
            purpose = (await _small_field(part)).strip()
            if purpose not in UPLOAD_PURPOSES:
                raise InvalidRequest(
                    f"purpose '{purpose}' is not supported here; use 'batch'", param="purpose"
                )
        elif part.name == "file" and created is None:
            if purpose is None:
                raise InvalidRequest("send the `purpose` field before the file", param="purpose")
            created = await store.upload(request["tenant"], part, purpose=purpose, max_bytes=max_bytes)
        else:
            await _small_field(part, 64 * 1024)  # another field (the SDK may add some): read, capped, dropped
    return purpose, created


async def _small_field(part: BodyPartReader, limit: int = 1024) -> str:
    """A short form field, read up to ``limit`` bytes: a chunked body has no length to check first."""
    data = bytearray()
    while chunk := await part.read_chunk(256):
        data += chunk
        if len(data) > limit:
            raise PayloadTooLarge(f"form field '{part.name}' is over {limit} bytes")
    return data.decode("utf-8", errors="replace")


async def get_file(request: web.Request) -> web.Response:
    return json_response(await request.app[FILES].meta(request["tenant"], request.match_info["file_id"]))


async def get_file_content(request: web.Request) -> web.Response:
    """The file's bytes, as OpenAI serves them (``application/octet-stream``)."""
    data = await request.app[FILES].content(request["tenant"], request.match_info["file_id"])
    return web.Response(body=data, content_type="application/octet-stream")


async def list_files(request: web.Request) -> web.Response:
    q = request.query
    limit = _int_param(q.get("limit"), "limit", default=10_000, high=10_000)
    order = q.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("order must be 'asc' or 'desc'", param="order")
    data, has_more = await request.app[FILES].list(
        request["tenant"],
        limit=limit,
        after=q.get("after") or None,
        order=order,
        purpose=q.get("purpose") or None,
    )
    return json_response(list_object(data, has_more))


async def delete_file(request: web.Request) -> web.Response:
    file_id = request.match_info["file_id"]
    await request.app[FILES].delete(request["tenant"], file_id)
    return json_response({"id": file_id, "object": "file", "deleted": True})


def list_object(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """OpenAI's cursor page: the SDK pages on with ``after=last_id`` while ``has_more``."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def _int_param(raw: str | None, name: str, *, default: int, high: int) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be an integer", param=name) from None
    if not 1 <= value <= high:
        raise InvalidRequest(f"{name} must be between 1 and {high}", param=name)
    return value


def setup_files(app: web.Application, store: FileStore) -> None:
    """Add the ``/v1/files`` routes, serving ``store``."""
    app[FILES] = store
    app.router.add_post("/v1/files", create_file)
    app.router.add_get("/v1/files", list_files)
    app.router.add_get("/v1/files/{file_id}", get_file)
    app.router.add_get("/v1/files/{file_id}/content", get_file_content)
    app.router.add_delete("/v1/files/{file_id}", delete_file)


def dumps_lines(lines: list[dict[str, Any]]) -> bytes:
    """JSONL: one compact JSON object per line, each ending in a newline."""
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)
