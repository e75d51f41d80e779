"""Continuing a partial answer on another deployment, by prefill: a capability of a wire format.

When a stream a client is following breaks after tokens went out, the walk asks the next deployment
to go on from the text already sent rather than start over. How depends on the deployment
(``Deployment.prefill``, else its format's default ``PREFILL_BY_FORMAT``):

* ``last_message``: the text as a final assistant message. Anthropic continues it (its "prefill"),
  Gemini continues a final ``model`` turn, OpenRouter passes it on.
* ``prefix``: the same message marked ``"prefix": true``, as Mistral and DeepSeek want it.
* ``none``: the deployment cannot continue (OpenAI's own API, Claude 4.6 and later).

Anthropic refuses a prefill that ends in whitespace, so the prefill is the text without its
trailing whitespace; the publisher drops that whitespace from the continuation's first token if it
comes again (``ChunkPublisher.continue_after``). A prefill is never sent where it would change the
answer's nature: several choices, structured output, or Anthropic with extended thinking (which
refuses one). The continuation's output is capped at what the first call had left, so the two
calls together stay within the job's reservation (``config.cost.demand_of``).
"""

from __future__ import annotations

from typing import Any

from config.catalog import Deployment
from config.cost import text_tokens

PREFILL_BY_FORMAT: dict[str, str] = {"anthropic": "last_message", "gemini": "last_message", "openai": "none"}


def prefill_style(dep: Deployment) -> str:
    """How ``dep`` continues a partial answer: ``last_message``, ``prefix`` or ``none``."""
    return dep.prefill or PREFILL_BY_FORMAT.get(dep.format, "none")


def continuation_request(request: dict[str, Any], dep: Deployment, text: str) -> dict[str, Any] | None:
    """``request`` asking ``dep`` to go on from ``text`` (the answer so far), or ``None`` when it
    cannot: no prefill there, a request a prefill would change, or no output left to ask for."""
    style = prefill_style(dep)
    prefill = text.rstrip()
    if style == "none" or not prefill:
        return None
    if (request.get("n") or 1) != 1 or (request.get("response_format") or {}).get("type", "text") != "text":
        return None
    if dep.format == "anthropic" and request.get("reasoning_effort"):
        return None  # extended thinking refuses a prefill
    cap = request.get("max_completion_tokens") or request.get("max_tokens") or dep.max_output
    left = int(cap) - text_tokens(text)
    if left < 1:
        return None
    message: dict[str, Any] = {"role": "assistant", "content": prefill}
    if style == "prefix":
        message["prefix"] = True
    out = {**request, "messages": [*request["messages"], message]}
    out["max_completion_tokens" if "max_completion_tokens" in request else "max_tokens"] = left
    return out
