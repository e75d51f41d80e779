"""The provider simulator: a real HTTP server speaking vendor wire formats, with injectable faults.

Used by tests, the demo and benchmarks in place of real LLM providers. It speaks the OpenAI
chat-completions format (JSON and SSE) under any path prefix, Anthropic Messages
(``/v1/messages``, JSON and SSE) and Gemini ``generateContent`` (and ``streamGenerateContent``,
SSE); see ``wire`` for how formats plug in, ``tokens`` for the documented token-counting rule,
``faults`` for how fault rules match (mid-stream faults included) and ``prompt_cache`` for the
prompt caching the native formats report.
"""

from __future__ import annotations

from llm_router.simulator.app import create_app
from llm_router.simulator.config import SimConfig
from llm_router.simulator.faults import FaultRule
from llm_router.simulator.server import SimServer, serve_forever, start_simulator
from llm_router.simulator.tokens import count_prompt_tokens, count_text_tokens

__all__ = [
    "FaultRule",
    "SimConfig",
    "SimServer",
    "count_prompt_tokens",
    "count_text_tokens",
    "create_app",
    "serve_forever",
    "start_simulator",
]
