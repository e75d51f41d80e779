"""OpenAI's Files API for batches: upload, read, list and delete files, each owned by one tenant.

A file's metadata is a Redis hash (``llm-router:file:<id>``) expiring after ``record_ttl_s``. Its bytes
live in a Redis string beside it (``…:content``, same expiry), or, when ``files_dir`` is set
(``LLM_ROUTER_FILES_DIR``: the way to keep large files out of Redis' memory), in a file of that name
under it (swept once its hash has expired). A tenant's files are also in a sorted set by creation
time, for listing and for its quota. Another tenant's file answers 404, as an unknown id does.

Nothing holds a whole file in the server's memory: an upload is read part by part, the size cap
(``files_max_bytes``) and the tenant's quota (``max_files``, ``max_file_bytes``: 403
``quota_exceeded``) checked as bytes arrive, each part appended to Redis or written to disk; a
download is streamed the same way, a range at a time. An upload that goes quiet for
``server_body_timeout_s`` or lasts past ``files_upload_timeout_s`` is refused (408).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from redis.asyncio import Redis

from llm_router.errors import InvalidRequest, PayloadTooLarge, QuotaExceeded, RequestTimeout, ResourceNotFound
from llm_router.keys import file_content_key, file_key, tenant_files_key
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
        """Store ``content`` as a file of ``tenant`` (overwriting ``file_id`` if given); its file object.
        (The server's own files, batch outputs: they count toward the tenant's quota, never refused.)"""
        file_id = file_id or new_file_id()
        if self.files_dir is not None:
            await asyncio.to_thread(_write_atomic, self._path(file_id), content)
        else:
            await self.redis.set(file_content_key(file_id), content, ex=self.ttl_s)
        return await self._commit(tenant, file_id, filename, purpose, len(content))

    async def _commit(
        self, tenant: str, file_id: str, filename: str, purpose: str, size: int
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
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(file_key(file_id))
            pipe.hset(file_key(file_id), mapping=meta)
            pipe.expire(file_key(file_id), self.ttl_s)
            if self.files_dir is None:
                pipe.expire(file_content_key(file_id), self.ttl_s)
            pipe.zadd(tenant_files_key(tenant), {file_id: now})
            pipe.expire(tenant_files_key(tenant), self.ttl_s)
            await pipe.execute()
        return file_object(file_id, meta)

    async def usage(self, tenant: str) -> tuple[int, int]:
        """The tenant's stored files: how many, and their bytes (expired ones not counted)."""
        ids = await self.redis.zrange(tenant_files_key(tenant), 0, -1)
        if not ids:
            return 0, 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for file_id in ids:
                pipe.hget(file_key(file_id.decode()), "bytes")
            sizes = [int(b) for b in await pipe.execute() if b is not None]
        return len(sizes), sum(sizes)

    async def upload(
        self,
        tenant: str,
        part: BodyPartReader,
        *,
        purpose: str,
        max_bytes: int,
        quota: tuple[int, int] = (0, 0),
        idle_s: float = 30.0,
    ) -> dict[str, Any]:
        """Read a multipart file part chunk by chunk into its storage, refusing it once it passes
        ``max_bytes`` or would take the tenant past ``quota`` (files, bytes; 0: no limit), or when no
        bytes came for ``idle_s``."""
        filename = part.filename or "upload.jsonl"
        file_id = new_file_id()
        max_files, max_total = quota
        count, used = await self.usage(tenant) if any(quota) else (0, 0)
        if max_files and count + 1 > max_files:
            raise QuotaExceeded(
                f"tenant '{tenant}' has {count} files, its limit (delete some first)", param="file"
            )
        tmp = None if self.files_dir is None else self._path(file_id + ".part")
        sink = None if tmp is None else await asyncio.to_thread(open, tmp, "wb")
        content_key = file_content_key(file_id)
        size = 0
        try:
            while True:
                try:
                    async with asyncio.timeout(idle_s):
                        chunk = await part.read_chunk(READ_CHUNK)
                except TimeoutError:
                    raise RequestTimeout(f"the upload sent nothing for {idle_s:g} s", param="file") from None
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLarge(f"the file is over the limit of {max_bytes} bytes", param="file")
                if max_total and used + size > max_total:
                    raise QuotaExceeded(
                        f"tenant '{tenant}' files would pass its limit of {max_total} bytes "
                        f"({used} stored; delete some first)",
                        param="file",
                    )
                if sink is None:
                    async with self.redis.pipeline(transaction=False) as pipe:
                        pipe.append(content_key, chunk)
                        pipe.expire(content_key, self.ttl_s)  # an abandoned upload does not stay
                        await pipe.execute()
                else:
                    await asyncio.to_thread(sink.write, chunk)
            if sink is not None and tmp is not None:
                await asyncio.to_thread(sink.close)
                sink = None
                await asyncio.to_thread(os.replace, tmp, self._path(file_id))
            elif size == 0:
                await self.redis.set(content_key, b"", ex=self.ttl_s)
            created = await self._commit(tenant, file_id, filename, purpose, size)
            content_key = ""  # committed: kept
            return created
        finally:
            if sink is not None:
                await asyncio.to_thread(sink.close)
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            if content_key and self.files_dir is None:
                await self.redis.delete(content_key)

    async def meta(self, tenant: str, file_id: str) -> dict[str, Any]:
        """The file object of ``tenant``'s file; ``ResourceNotFound`` for unknown, expired or foreign ids."""
        values = await self.redis.hmget(file_key(file_id), list(META_FIELDS))
        meta = _decode_meta(values)
        if meta is None or meta["tenant"] != tenant:
            raise ResourceNotFound(f"No such File object: {file_id}", param="file_id")
        return file_object(file_id, meta)

    async def content(self, tenant: str, file_id: str) -> bytes:
        """The file's bytes whole (after the same ownership check as ``meta``): for the batch runner,
        which reads a batch's lines; HTTP downloads are streamed (``chunks``)."""
        return b"".join([c async for c in self.chunks(tenant, file_id)])

    async def chunks(self, tenant: str, file_id: str, size: int = READ_CHUNK) -> AsyncIterator[bytes]:
        """The file's bytes, ``size`` at a time (after the ownership check of ``meta``)."""
        await self.meta(tenant, file_id)
        if self.files_dir is not None:
            try:
                handle = await asyncio.to_thread(open, self._path(file_id), "rb")
            except FileNotFoundError:
                pass  # written by a server with Redis storage: look there
            else:
                try:
                    while chunk := await asyncio.to_thread(handle.read, size):
                        yield chunk
                finally:
                    await asyncio.to_thread(handle.close)
                return
        key = file_content_key(file_id)
        total = await self.redis.strlen(key)
        if not total and not await self.redis.exists(key):
            # stored by an earlier version, inside the metadata hash
            data = await self.redis.hget(file_key(file_id), "content")
            if data is None:
                raise ResourceNotFound(f"No such File object: {file_id}", param="file_id")
            yield bytes(data)
            return
        for start in range(0, total, size):
            yield await self.redis.getrange(key, start, min(start + size, total) - 1)

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
            pipe.delete(file_key(file_id), file_content_key(file_id))
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
    settings = request.app["settings"]
    max_bytes: int = settings.files_max_bytes
    if request.content_length is not None and request.content_length > max_bytes + MULTIPART_SLACK:
        raise PayloadTooLarge(f"the file is over the limit of {max_bytes} bytes", param="file")
    if not request.content_type.startswith("multipart/"):
        raise InvalidRequest("upload the file as multipart/form-data with `file` and `purpose`")
    policy = await request.app["producer"].policies.get(request["tenant"])
    quota = (policy.get("max_files"), policy.get("max_file_bytes"))
    try:
        async with asyncio.timeout(settings.files_upload_timeout_s):
            purpose, created = await _read_form(request, store, max_bytes, quota)
    except TimeoutError:
        raise RequestTimeout(
            f"the upload did not end within {settings.files_upload_timeout_s:g} s", param="file"
        ) from None
    except (ValueError, HttpProcessingError) as exc:  # aiohttp's words for a malformed multipart body
        raise InvalidRequest(f"malformed multipart body: {exc}") from None
    if created is None:
        missing = "file" if purpose else "purpose"
        raise InvalidRequest(f"Missing required parameter: '{missing}'", param=missing)
    return json_response(created)


async def _read_form(
    request: web.Request, store: FileStore, max_bytes: int, quota: tuple[int, int]
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
            created = await store.upload(
                request["tenant"],
                part,
                purpose=purpose,
                max_bytes=max_bytes,
                quota=quota,
                idle_s=request.app["settings"].server_body_timeout_s,
            )
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


async def get_file_content(request: web.Request) -> web.StreamResponse:
    """The file's bytes, as OpenAI serves them (``application/octet-stream``), streamed a range at a
    time: ten downloads of a 100 MB file hold ten ranges in memory, not ten files."""
    store = request.app[FILES]
    file_id = request.match_info["file_id"]
    meta = await store.meta(request["tenant"], file_id)
    chunks = store.chunks(request["tenant"], file_id)
    first = await anext(chunks, b"")  # a file gone meanwhile is still a clean 404
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = meta["bytes"]
    await response.prepare(request)
    await response.write(first)
    async for chunk in chunks:
        await response.write(chunk)
    await response.write_eof()
    return response


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
