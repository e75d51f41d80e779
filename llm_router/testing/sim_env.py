"""The environment that points workers at the simulator: real keys blanked, placeholder keys set."""

from __future__ import annotations

from collections.abc import Mapping

# placeholder keys, one per provider, so the simulator can tell providers apart by credential
SIM_KEYS = {
    "AISA_API_KEY": "sk-sim-aisa",
    "OPENAI_API_KEY": "sk-sim-openai",
    "OPENROUTER_API_KEY": "sk-sim-openrouter",
    "XAI_API_KEY": "sk-sim-xai",
    "MISTRAL_API_KEY": "sk-sim-mistral",
    "ANTHROPIC_API_KEY": "sk-sim-anthropic",
    "GEMINI_API_KEY": "sk-sim-gemini",
    "DEEPSEEK_API_KEY": "sk-sim-deepseek",
    "GROQ_API_KEY": "sk-sim-groq",
    "DASHSCOPE_API_KEY": "sk-sim-dashscope",
}
_BLANKED_SUFFIXES = ("_API_KEY", "_BASE_URL")
# the simulator's provider batches answer in seconds, not hours: a batcher against it forms and polls
# at that pace (``/v1/batches`` lines run in them). The batcher is one role per Redis, so every
# process pointed at the simulator must agree; a caller's own values win. A short role lease: the
# role moves within seconds when its holder is killed (tests kill workers all the time).
SIM_LANES = {
    "LLM_ROUTER_LANES_POLL_S": "0.2",
    "LLM_ROUTER_LANES_BATCH_AGE_S": "0.5",
    "LLM_ROUTER_LANES_ROLE_TTL_S": "3",
}


def simulated_env(
    base: Mapping[str, str],
    *,
    redis_url: str,
    sim_url: str,
    keys: Mapping[str, str] | None = None,
    fast_lanes: bool = True,
) -> dict[str, str]:
    """``base`` without any real key or base-URL variable, plus the simulator's upstream and keys.

    ``fast_lanes=False`` leaves the batcher at its shipped pace: a benchmark of anything else measures
    the fleet as it ships, not one whose batcher looks at Redis five times a second."""
    env = {k: v for k, v in base.items() if not k.endswith(_BLANKED_SUFFIXES) and k != "GOOGLE_API_KEY"}
    env.update(SIM_KEYS if keys is None else keys)
    env["REDIS_URL"] = redis_url
    env["LLM_ROUTER_UPSTREAM"] = sim_url
    for name, value in SIM_LANES.items() if fast_lanes else ():
        env.setdefault(name, value)
    return env
