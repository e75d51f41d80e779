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

from llm_router.errors import InvalidRequest, PayloadTooLarge

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


def image_url(
    image: str, *, param: str = "image", allow_files: bool = False, max_bytes: int | None = None
) -> str:
    """An ``image_url.url`` value for a URL, data URI, bare base64 string or (``allow_files``) a path.

    Local files are read only when the caller is on the machine that has them (the CLI and the
    client calls); a job arriving from elsewhere must not make the producer read its disk.
    """
    if not isinstance(image, str) or not image:
        raise InvalidRequest("image must be a non-empty string (URL, path or base64)", param=param)
    if image.startswith(("https://", "data:")):
        return image
    if image.startswith("http://"):
        raise InvalidRequest("image URLs must use https://", param=param)
    data = _b64_image(image)
    if data is not None:
        return f"data:{sniff_mime(data)};base64,{image}"
    if allow_files:
        path = Path(image).expanduser()
        try:
            size = path.stat().st_size if path.is_file() else None
        except OSError:  # a name too long, say: not a path we can read
            size = None
        if size is not None:
            if max_bytes is not None and size * 4 // 3 > max_bytes:
                raise PayloadTooLarge(
                    f"{image} is {size} bytes; encoded it exceeds the body limit", param=param
                )
            data = path.read_bytes()
            mime = sniff_mime(data)
            if mime is None:
                raise InvalidRequest(f"{image} is not a PNG, JPEG, GIF or WebP image", param=param)
            return f"data:{mime};base64,{base64.b64encode(data).decode()}"
    what = (
        "an https URL, a data: URI, base64 or an existing image file"
        if allow_files
        else ("an https URL, a data: URI or base64")
    )
    raise InvalidRequest(f"image must be {what}", param=param)


def _b64_image(text: str) -> bytes | None:
    """The decoded bytes when ``text`` is base64 of a known image format, else ``None``."""
    try:
        head = base64.b64decode(text[:64] + "=" * (-len(text[:64]) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    if sniff_mime(head) is None:
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def vision_to_chat(
    job: dict[str, Any], *, allow_files: bool = False, max_bytes: int | None = None
) -> dict[str, Any]:
    """Turn ``{"model", "prompt", "image", ...}`` into a chat job; other keys are kept."""
    out = {k: v for k, v in job.items() if k not in ("prompt", "image", "detail")}
    prompt = job.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise InvalidRequest("a vision job needs a non-empty prompt", param="prompt")
    image = job.get("image")
    part: dict[str, Any] = {"url": image_url(image, allow_files=allow_files, max_bytes=max_bytes)}  # type: ignore[arg-type]
    if job.get("detail") is not None:
        part["detail"] = job["detail"]
    out["messages"] = [
        {
            "role": "user",
            "content": [{"type": "text", "text": prompt}, {"type": "image_url", "image_url": part}],
        }
    ]
    return out
