"""The failover tests' rig: a catalog of their own, a worker and ``llm-router serve`` on it, and
every fault timing scaled down.

``LLM_ROUTER_FAILOVER_SCALE`` (0.1 in ``make test``, 1 in ``make chaos``) multiplies every full-size
timing of the issue: the timeouts (headers 10 s, first token 10 s, idle 10 s, a whole unstreamed
call 30 s), the breaker's cooldowns (5 s doubling to 20 s), the faults (a 120 s silence, a first
token 20 s late, an outage of 60 s) and the bounds asserted on them (recovery within 30 s).

The catalog: ``fo-main`` is the same model (``claude-sim``, Anthropic's format) on two providers,
``alpha`` then ``beta``, falling back to ``fo-other`` (another model, OpenAI's format); ``fo-solo`` is
served by ``alpha`` alone and falls back to ``fo-other``. ``fo-gemini`` and ``fo-prefix`` are one
model on two providers each, in Gemini's format and in OpenAI's with ``prefill: prefix``, for
continuations in every wire format. Providers are told apart by their keys in the simulator.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai

from llm_router.testing.redis_server import RedisServer
from llm_router.testing.sim_env import simulated_env
from producer.producer import Producer

SCALE = float(os.environ.get("LLM_ROUTER_FAILOVER_SCALE", "0.1"))
# machine overhead on top of a scaled bound (queue pickup, a Redis round trip or two, HTTP relay)
SLACK_S = 0.6


def scaled(seconds: float) -> float:
    return seconds * SCALE


HEADERS_S = scaled(10)
FIRST_TOKEN_S = scaled(10)
IDLE_S = scaled(10)
TOTAL_S = scaled(30)
MAX_INLINE_WAIT_S = scaled(2)
KEYS = {
    "FO_ALPHA_API_KEY": "sk-fo-alpha",
    "FO_BETA_API_KEY": "sk-fo-beta",
    "FO_GAMMA_API_KEY": "sk-fo-gamma",
    "FO_DELTA_API_KEY": "sk-fo-delta",
    "FO_EPSILON_API_KEY": "sk-fo-epsilon",
    "FO_MISTRAL_API_KEY": "sk-fo-mistral",
    "FO_MISTRAL2_API_KEY": "sk-fo-mistral2",
}
ALPHA, BETA = "sk-fo-alpha", "sk-fo-beta"
ANTHROPIC = {"format": "anthropic", "headers": {"anthropic-version": "2023-06-01"}}
PRICE = {"input": 1.0, "output": 4.0}


def catalog_spec() -> dict[str, Any]:
    def provider(name: str, fmt: dict[str, Any], url: str, **extra: Any) -> dict[str, Any]:
        return {**fmt, "base_url": url, "key_env": f"FO_{name.upper()}_API_KEY", **extra}

    # the primary's limits come from its catalog block; the others' from the settings (the same
    # values): both paths of the `timeouts:` block are exercised
    timeouts = {"headers_s": HEADERS_S, "first_token_s": FIRST_TOKEN_S, "idle_s": IDLE_S, "total_s": TOTAL_S}
    return {
        "providers": {
            "alpha": provider("alpha", ANTHROPIC, "https://alpha.invalid", timeouts=timeouts),
            "beta": provider("beta", ANTHROPIC, "https://beta.invalid"),
            "gamma": provider("gamma", {"format": "openai"}, "https://gamma.invalid/v1"),
            "delta": provider("delta", {"format": "gemini"}, "https://delta.invalid"),
            "epsilon": provider("epsilon", {"format": "gemini"}, "https://epsilon.invalid"),
            "mistral": provider(
                "mistral", {"format": "openai"}, "https://mistral.invalid/v1", prefill="prefix"
            ),
            "mistral2": provider(
                "mistral2", {"format": "openai"}, "https://mistral2.invalid/v1", prefill="prefix"
            ),
        },
        "models": {
            "fo-main": {
                "vendor": "test",
                "price": PRICE,
                "deployments": [
                    {"provider": "alpha", "model": "claude-sim"},
                    {"provider": "beta", "model": "claude-sim"},
                ],
                "fallbacks": ["fo-other"],
            },
            "fo-solo": {
                "vendor": "test",
                "price": PRICE,
                "deployments": [{"provider": "alpha", "model": "solo-sim"}],
                "fallbacks": ["fo-other"],
            },
            "fo-other": {
                "vendor": "test",
                "price": PRICE,
                "deployments": [{"provider": "gamma", "model": "gpt-sim"}],
            },
            "fo-gemini": {
                "vendor": "test",
                "price": PRICE,
                "deployments": [
                    {"provider": "delta", "model": "gemini-sim"},
                    {"provider": "epsilon", "model": "gemini-sim"},
                ],
            },
            "fo-prefix": {
                "vendor": "test",
                "price": PRICE,
                "deployments": [
                    {"provider": "mistral", "model": "mistral-sim"},
                    {"provider": "mistral2", "model": "mistral-sim"},
                ],
            },
        },
    }


def worker_env(redis_server: RedisServer, sim_url: str, catalog: Path) -> dict[str, str]:
    queue = f"failover-{uuid.uuid4().hex[:8]}"
    env = simulated_env(os.environ, redis_url=redis_server.url, sim_url=sim_url, keys=KEYS)
    env.update(
        LLM_ROUTER_CONFIG=str(catalog),
        LLM_ROUTER_QUEUE_NAME=queue,
        LLM_ROUTER_INTERACTIVE_QUEUE_NAME=f"{queue}:interactive",
        LLM_ROUTER_HEADERS_TIMEOUT_S=str(HEADERS_S),
        LLM_ROUTER_STREAM_TTFT_S=str(FIRST_TOKEN_S),
        LLM_ROUTER_STREAM_IDLE_S=str(IDLE_S),
        LLM_ROUTER_CALL_TIMEOUT_S=str(TOTAL_S),
        LLM_ROUTER_CONNECT_TIMEOUT_S=str(scaled(10)),
        LLM_ROUTER_MAX_INLINE_WAIT_S=str(MAX_INLINE_WAIT_S),
        LLM_ROUTER_RETRY_BACKOFF_S=str(scaled(1)),
        LLM_ROUTER_RETRY_BACKOFF_MAX_S=str(scaled(10)),
        LLM_ROUTER_RETRY_BUDGET_RATIO="1.0",
        # the breaker at its defaults, scaled: a rolling minute in 10 s buckets, cooldown 5 s
        # doubling to 20 s
        LLM_ROUTER_BREAKER_WINDOW_S=str(scaled(60)),
        LLM_ROUTER_BREAKER_BUCKET_S=str(scaled(10)),
        LLM_ROUTER_BREAKER_COOLDOWN_S=str(scaled(5)),
        LLM_ROUTER_BREAKER_MAX_COOLDOWN_S=str(scaled(20)),
        LLM_ROUTER_HEARTBEAT_INTERVAL_S="0.5",
        LLM_ROUTER_LOG_LEVEL="WARNING",
    )
    env.pop("LLM_ROUTER_AUTH_DISABLED", None)
    env.pop("LLM_ROUTER_API_KEYS_FILE", None)
    return env


@dataclass
class Rig:
    """The server's base ``url``, an API key of tenant ``TENANT``, a ``producer`` for bulk jobs and
    records, and the worker's log (its skipped-event lines)."""

    url: str
    key: str
    producer: Producer
    worker_log: Path

    def client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=self.key, max_retries=0, timeout=60)


TENANT = "failover"
