"""Token counting for the simulator: a documented approximation, no tokenizer download.

The rule (responses' ``usage`` follows it exactly, so tests can predict it):

* **text**: ``ceil(len(text.encode("utf-8")) / 4)``; the empty string is 0 tokens.
* **prompt** = 3 tokens priming the reply, plus for every message:
  4 tokens of overhead
  + its ``content``: a string by the text rule; a list of parts where a ``text`` part counts
  its ``text`` by the text rule, an ``image_url`` part counts 85 tokens when its ``detail`` is
  ``"low"`` and 765 otherwise (gpt-4o's tokens for a 1024 x 1024 image; ``gpt-4o-mini`` bills the
  same image as OpenAI does, 2,833 low and 25,501 otherwise: 2,833 + 5,667 a tile), and any other
  part counts the text rule over its compact JSON;
  ``null``/absent content is 0
  + its ``name`` by the text rule
  + its ``tool_calls`` and ``function_call`` by the text rule over their compact JSON;
  plus, when tools (or legacy functions) are offered, the text rule over the compact JSON of the
  whole list.
* **completion** = per choice, the text rule over the generated ``content``; a tool or function
  call counts its ``name`` plus its ``arguments`` string by the text rule; choices add up.
  ``total_tokens = prompt_tokens + completion_tokens``.

The Anthropic and Gemini formats follow the same rule over their own structure, so a simple
request counts the same in all three formats:

* **Anthropic**: 3 priming + the text rule over the compact JSON of ``tools`` (``cache_control``
  left out) + ``system`` as one message (4 + its text) when given + per message 4 + its blocks:
  ``text`` by the text rule, ``image`` 765, ``tool_use`` its name plus the compact JSON of its
  input, ``tool_result`` its text (string or text blocks; images 765), ``thinking`` its text, any
  other block the compact JSON of it. Completion: text, tool calls (name + JSON input) and
  thinking text, each by the text rule.
* **Gemini**: 3 priming + the compact JSON of ``tools`` + ``systemInstruction`` as one message
  (4 + its parts) when given + per content 4 + its parts: ``text`` by the text rule,
  ``inlineData``/``fileData`` 765, any other part the compact JSON of it. Completion
  (``candidatesTokenCount``): text and function calls (name + JSON args) of every candidate;
  thoughts are counted apart (``thoughtsTokenCount``).

"Compact JSON" is ``orjson.dumps(value)``: no whitespace, keys in the order given, non-ASCII left
unescaped - the same bytes as ``json.dumps(value, separators=(",", ":"), ensure_ascii=False)``.
"""

from __future__ import annotations

from typing import Any

import orjson

MESSAGE_OVERHEAD = 4
REPLY_PRIMING = 3
IMAGE_LOW_DETAIL = 85
IMAGE_OTHER_DETAIL = 765
# models that bill an image as many more tokens, at a lower price: (low detail, otherwise)
IMAGE_TOKENS_BY_MODEL: dict[str, tuple[int, int]] = {"gpt-4o-mini": (2_833, 2_833 + 4 * 5_667)}


def count_text_tokens(text: str) -> int:
    """Tokens in ``text``: ceil(UTF-8 byte length / 4)."""
    size = len(text) if text.isascii() else len(text.encode("utf-8"))
    return (size + 3) // 4


def count_json_tokens(value: Any) -> int:
    """Tokens in the compact JSON serialisation of ``value``."""
    return (len(orjson.dumps(value)) + 3) // 4


def count_prompt_tokens(messages: list[Any], tools: list[Any] | None = None, model: str = "") -> int:
    """Prompt tokens of a chat request to ``model``, by the rule in this module's docstring."""
    images = IMAGE_TOKENS_BY_MODEL.get(model.rsplit("/", 1)[-1], (IMAGE_LOW_DETAIL, IMAGE_OTHER_DETAIL))
    total = REPLY_PRIMING
    for message in messages:
        total += MESSAGE_OVERHEAD
        if not isinstance(message, dict):
            continue
        total += _content_tokens(message.get("content"), images)
        name = message.get("name")
        if isinstance(name, str):
            total += count_text_tokens(name)
        for key in ("tool_calls", "function_call"):
            value = message.get(key)
            if value:
                total += count_json_tokens(value)
    if tools:
        total += count_json_tokens(tools)
    return total


def _content_tokens(content: Any, images: tuple[int, int]) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return count_text_tokens(content)
    if isinstance(content, list):
        return sum(_part_tokens(part, images) for part in content)
    return count_json_tokens(content)


def _part_tokens(part: Any, images: tuple[int, int]) -> int:
    if isinstance(part, dict):
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            return count_text_tokens(part["text"])
        if kind == "image_url":
            image = part.get("image_url")
            detail = image.get("detail") if isinstance(image, dict) else None
            return images[0] if detail == "low" else images[1]
    return count_json_tokens(part)


def anthropic_block_tokens(block: Any) -> int:
    """Tokens of one Anthropic content block, by the rule in this module's docstring."""
    if not isinstance(block, dict):
        return count_json_tokens(block)
    kind = block.get("type")
    if kind == "text" and isinstance(block.get("text"), str):
        return count_text_tokens(block["text"])
    if kind == "image":
        return IMAGE_OTHER_DETAIL
    if kind == "tool_use":
        return count_text_tokens(str(block.get("name", ""))) + count_json_tokens(block.get("input") or {})
    if kind == "tool_result":
        content = block.get("content")
        if isinstance(content, list):
            return sum(anthropic_block_tokens(b) for b in content)
        return count_text_tokens(content) if isinstance(content, str) else 0
    if kind == "thinking" and isinstance(block.get("thinking"), str):
        return count_text_tokens(block["thinking"])
    return count_json_tokens({k: v for k, v in block.items() if k != "cache_control"})


def gemini_part_tokens(part: Any) -> int:
    """Tokens of one Gemini part, by the rule in this module's docstring."""
    if isinstance(part, dict):
        if isinstance(part.get("text"), str):
            return count_text_tokens(part["text"])
        if "inlineData" in part or "fileData" in part:
            return IMAGE_OTHER_DETAIL
    return count_json_tokens(part)
