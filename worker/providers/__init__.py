"""Provider adapters, one module per wire format, looked up by the catalog's ``format``."""

from __future__ import annotations

from worker.providers import anthropic, gemini, openai
from worker.providers.base import Adapter, Completion, HttpCall

ADAPTERS: dict[str, Adapter] = {"openai": openai, "anthropic": anthropic, "gemini": gemini}  # type: ignore[dict-item]

__all__ = ["ADAPTERS", "Adapter", "Completion", "HttpCall"]
