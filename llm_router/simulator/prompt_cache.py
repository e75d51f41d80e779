"""Prompt caching as the vendors bill it: prefixes seen before are read from a cache.

One memory per simulator (reset by ``POST /_sim/reset``), keyed by credential, model and a digest
of the prompt prefix, bounded to ``MAX_ENTRIES`` (least recently used go first). The formats use
it their own way: Anthropic writes and reads at explicit ``cache_control`` breakpoints, Gemini
caches implicitly every prompt prefix (all but the last turn). A prefix shorter than
``MIN_TOKENS`` is never cached, as with the real APIs (1,024 tokens for most of their models).
"""

from __future__ import annotations

from collections import OrderedDict

MIN_TOKENS = 1024
MAX_ENTRIES = 10_000


class PromptCache:
    """Which prompt prefixes each (credential, model) has had cached."""

    def __init__(self) -> None:
        self._seen: OrderedDict[tuple[str | None, str, bytes], int] = OrderedDict()

    def hit(self, credential: str | None, model: str, digest: bytes) -> bool:
        key = (credential, model, digest)
        if key in self._seen:
            self._seen.move_to_end(key)
            return True
        return False

    def store(self, credential: str | None, model: str, digest: bytes, tokens: int) -> None:
        if tokens < MIN_TOKENS:
            return
        self._seen[(credential, model, digest)] = tokens
        self._seen.move_to_end((credential, model, digest))
        while len(self._seen) > MAX_ENTRIES:
            self._seen.popitem(last=False)

    def clear(self) -> None:
        self._seen.clear()
