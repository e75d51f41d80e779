"""Vision jobs (``model``, ``prompt``, ``image``) normalised into chat jobs.

``image`` may be an https URL, a ``data:`` URI, a local file path or bare base64; files and bare
base64 become ``data:`` URIs with the type sniffed from the bytes, so the worker never reads the
producer's disk.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any

from llm_router.errors import InvalidRequest

# magic bytes → MIME type of the image formats the providers accept
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"RIFF", "image/webp"),
)


def sniff_mime(data: bytes) -> str | None:
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            if mime == "image/webp" and data[8:12] != b"WEBP":
                continue
            return mime
    return None


def image_url(image: str, *, param: str = "image") -> str:
    """An ``image_url.url`` value for a URL, data URI, local path or bare base64 string."""
    if not isinstance(image, str) or not image:
        raise InvalidRequest("image must be a non-empty string (URL, path or base64)", param=param)
    if image.startswith(("https://", "data:")):
        return image
    if image.startswith("http://"):
        raise InvalidRequest("image URLs must use https://", param=param)
    if len(image) < 4096:
        path = Path(image).expanduser()
        if path.is_file():
            data = path.read_bytes()
            mime = sniff_mime(data)
            if mime is None:
                raise InvalidRequest(f"{image} is not a PNG, JPEG, GIF or WebP image", param=param)
            return f"data:{mime};base64,{base64.b64encode(data).decode()}"
    try:
        data = base64.b64decode(image, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(
            "image is neither an https URL, a data: URI, an existing file nor base64", param=param
        ) from None
    mime = sniff_mime(data)
    if mime is None:
        raise InvalidRequest("the base64 image is not a PNG, JPEG, GIF or WebP image", param=param)
    return f"data:{mime};base64,{image}"


def vision_to_chat(job: dict[str, Any]) -> dict[str, Any]:
    """Turn ``{"model", "prompt", "image", ...}`` into a chat job; other keys are kept."""
    out = {k: v for k, v in job.items() if k not in ("prompt", "image", "detail")}
    prompt = job.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise InvalidRequest("a vision job needs a non-empty prompt", param="prompt")
    part: dict[str, Any] = {"url": image_url(job.get("image"))}  # type: ignore[arg-type]
    if job.get("detail") is not None:
        part["detail"] = job["detail"]
    out["messages"] = [
        {
            "role": "user",
            "content": [{"type": "text", "text": prompt}, {"type": "image_url", "image_url": part}],
        }
    ]
    return out
