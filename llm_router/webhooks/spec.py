"""What a job or a batch carries to be told of its end: ``{"url", "include"}``, checked at submit.

The URL goes through the core's parser (``llm_router.urls``) and the webhook guard: private and
internal addresses are refused unless ``LLM_ROUTER_WEBHOOK_ALLOW`` lists their network, metadata
addresses always. A host name is checked again on every address it resolves to when a delivery
connects (``worker.webhooks.sender``), so a name cannot smuggle in what a literal could not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import orjson
from pydantic import ValidationError

from config.settings import Settings
from llm_router.contract import Webhook, invalid_from_validation
from llm_router.errors import InvalidRequest
from llm_router.urls import AddressGuard, UnsafeURL, parse_url

INCLUDES = frozenset({"response"})  # what a job's body may add to its summary


def webhook_guard(settings: Settings) -> AddressGuard:
    """The addresses webhooks may go to: public ones, and the networks of ``webhook_allow``."""
    return AddressGuard.of(allow_private=False, allowlist=settings.webhook_networks)


def check_url(url: str, guard: AddressGuard, *, param: str = "webhook.url") -> str:
    """``url`` if the parser and the guard accept it; else ``InvalidRequest`` naming ``param``."""
    try:
        guard.check_url(parse_url(url))
    except UnsafeURL as exc:
        raise InvalidRequest(f"Invalid value for '{param}': {exc}", param=param) from None
    return url


def encode(url: str, include: Sequence[str] | None = None) -> bytes:
    """The record's ``webhook`` field."""
    return orjson.dumps({"url": url, "include": list(include or ())})


def of_job(webhook: Webhook | Literal[False] | None, guard: AddressGuard) -> bytes | None:
    """A job's validated ``webhook`` key as its record keeps it: JSON, ``b""`` for ``false`` (none,
    not even the tenant's default), ``None`` when absent (the default may apply)."""
    if webhook is None:
        return None
    if webhook is False:
        return b""
    check_url(webhook.url, guard)
    return encode(webhook.url, webhook.include)


def of_batch(raw: Any, guard: AddressGuard) -> bytes | None:
    """``POST /v1/batches``' ``webhook`` (our extension): ``{"url"}``, ``false``, or absent."""
    if raw is None:
        return None
    if raw is False:
        return b""
    try:
        webhook = Webhook.model_validate(raw)
    except ValidationError as exc:
        err = invalid_from_validation(exc)
        param = f"webhook.{err.param}" if err.param else "webhook"
        raise InvalidRequest(err.message.replace(f"'{err.param}'", f"'{param}'"), param=param) from None
    if webhook.include:
        raise InvalidRequest(
            "a batch's events carry the batch object; include has nothing to add there",
            param="webhook.include",
        )
    check_url(webhook.url, guard)
    return encode(webhook.url)
