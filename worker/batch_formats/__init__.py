"""Provider batch formats, one pure module per API (the catalog's ``lanes.batch.api``): OpenAI's
Files + Batch API, Anthropic's Message Batches, Gemini's batch mode. Each builds a job's item from
the request the synchronous adapter would send (``worker.providers``), reads the batch's state and
turns its answers into items; ``base.to_result`` parses an item with the deployment's adapter."""

from __future__ import annotations

from worker.batch_formats import anthropic, gemini, openai
from worker.batch_formats.base import ItemResult, RawItem, Remote, to_result

__all__ = ["ItemResult", "RawItem", "Remote", "anthropic", "gemini", "openai", "to_result"]
