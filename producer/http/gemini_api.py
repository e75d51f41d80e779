"""Gemini-native endpoint: ``POST /v1/models/{model}:generateContent`` and ``:streamGenerateContent``.

A Gemini ``generateContent`` body becomes our chat job (``producer.gemini_native.gemini_to_chat``), runs
on any catalog model like a chat completion, and its record's ``chat.completion`` goes back out as a
``GenerateContentResponse`` (``chat_completion_to_gemini``). Streams follow Google's two wire shapes:
``?alt=sse`` gives SSE events, otherwise one JSON array written as it grows. Text streams chunk by
chunk; the last event carries what only the final record knows (function calls, finish reason,
token counts), built by the same translator.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from config.settings import Settings
from llm_router.contract import JobRecord
from llm_router.errors import InvalidRequest, WaitTimeout
from producer.gemini_native import chat_completion_to_gemini, gemini_to_chat
from producer.http.ended import follow_stream
from producer.http.errors import error_body, error_response, json_response, read_json, record_error
from producer.http.openai_api import JOB_ID_HEADER, start_interactive, wait_answer
from producer.producer import JobFailed, Producer

routes = web.RouteTableDef()


async def _job(request: web.Request, *, stream: bool) -> dict[str, Any]:
    settings: Settings = request.app["settings"]
    body = await read_json(request, settings.server_max_body_bytes)
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a GenerateContentRequest object")
    # Google's clients may prefix the path's model with "models/"; the path decides the model
    model = request.match_info["model"].removeprefix("models/")
    job = gemini_to_chat({**{k: v for k, v in body.items() if k != "model"}, "model": model})
    if stream:
        job["stream"] = True
    return job


@routes.post("/v1/models/{model}:generateContent")
async def generate_content(request: web.Request) -> web.Response:
    job = await _job(request, stream=False)
    async with start_interactive(request, job) as started:
        record = await wait_answer(request, started)
    return json_response(
        chat_completion_to_gemini(record.response or {}), headers={JOB_ID_HEADER: started.job_id}
    )


def chunk_to_gemini(chunk: dict[str, Any]) -> dict[str, Any] | None:
    """A ``chat.completion.chunk``'s text as a partial ``GenerateContentResponse`` (None if it has none)."""
    candidates = [
        {"content": {"role": "model", "parts": [{"text": text}]}, "index": choice.get("index") or 0}
        for choice in chunk.get("choices") or ()
        if (text := (choice.get("delta") or {}).get("content"))
    ]
    if not candidates:
        return None
    return {"candidates": candidates, "modelVersion": chunk.get("model"), "responseId": chunk.get("id")}


def final_event(record: JobRecord) -> dict[str, Any]:
    """The last streamed response: the full answer's translation less the text already streamed."""
    answer = chat_completion_to_gemini(record.response or {})
    for candidate in answer["candidates"]:
        parts = [p for p in candidate["content"]["parts"] if "text" not in p]
        candidate["content"]["parts"] = parts or [{"text": ""}]
    return answer


class _Writer:
    """Google's two stream shapes: SSE events (``alt=sse``) or one JSON array written piece by piece."""

    def __init__(self, request: web.Request, headers: dict[str, str]) -> None:
        self.request = request
        self.sse = request.query.get("alt") == "sse"
        self.headers = headers
        self.response: web.StreamResponse | None = None
        self._first = True

    async def write(self, obj: dict[str, Any]) -> None:
        if self.response is None:
            content_type = "text/event-stream" if self.sse else "application/json"
            self.response = web.StreamResponse(
                headers={"Content-Type": content_type, "Cache-Control": "no-cache", **self.headers}
            )
            await self.response.prepare(self.request)
        if self.sse:
            await self.response.write(b"data: " + orjson.dumps(obj) + b"\r\n\r\n")
        else:
            await self.response.write((b"[" if self._first else b",\r\n") + orjson.dumps(obj))
        self._first = False

    async def close(self) -> web.StreamResponse:
        assert self.response is not None
        if not self.sse:
            await self.response.write(b"]")
        await self.response.write_eof()
        return self.response


@routes.post("/v1/models/{model}:streamGenerateContent")
async def stream_generate_content(request: web.Request) -> web.StreamResponse:
    job = await _job(request, stream=True)
    producer: Producer = request.app["producer"]
    async with start_interactive(request, job) as started:
        writer = _Writer(request, {JOB_ID_HEADER: started.job_id})
        try:
            async for chunk in follow_stream(
                producer, started.job_id, tenant=started.tenant, timeout_s=started.wait_s
            ):
                piece = chunk_to_gemini(chunk)
                if piece is not None:
                    await writer.write(piece)
            record = await producer.get(started.job_id, tenant=started.tenant)
        except (JobFailed, WaitTimeout) as exc:
            error = record_error(exc.record.error) if isinstance(exc, JobFailed) else exc
            if writer.response is None:
                return error_response(error)  # nothing streamed yet: a plain error with its status
            await writer.write(error_body(error))
            return await writer.close()
        await writer.write(final_event(record))
        return await writer.close()
