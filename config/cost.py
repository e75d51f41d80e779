"""What things cost: prices, the cost of one call, the estimate before a job runs, and money in USD.

**Money** is integer: a price is pico-dollars (1e-12 USD) per token and a cost is nano-dollars
(1e-9 USD), so the hot path multiplies and adds integers, sums never drift (a tenant's ledger is
the exact sum of its jobs' costs, in Redis as in Python) and a cost is rounded once per request,
half up. Money becomes USD only at the edge, through ``nanos_to_usd`` / ``usd_to_nanos``.

**Prices** are data resolved once at start-up, never fetched: from ``genai-prices``' bundled
snapshot (offline; its ``UpdatePrices`` is never started), or from the catalog where it has none or
a gateway differs. Tiered prices follow genai-prices' cliff model: once a request's input tokens
pass a tier's start, all its tokens pay that tier.

**A call's cost** (``call_usage``) is its billed token counts at its deployment's ``Price``: the
provider's own counts when the call succeeded, the estimate below (marked ``estimated``) when a
stream broke before the provider's usage came.

**The estimate before a job runs** needs no download (no tiktoken encodings) and no per-model
tokenizer, so it works on a locked-down host and costs a microsecond a job:

* **prompt tokens** (``prompt_tokens``) = ⌈bytes of the job's canonical JSON request / 4⌉, less the
  characters of its image parts' URLs (``image_parts``: the parts' own, never a ``"url"`` elsewhere
  in the request), plus ``IMAGE_TOKENS`` per image (the reservation prices each at its model's
  ``image_tokens``). Four bytes a token is OpenAI's own rule
  of thumb for English; counting the JSON (keys, quotes, tool schemas) rather than the text alone
  leans high, which is the right side for a reservation.
* **worst case** (``CostModel.worst_case`` of a ``Demand``, built from the request by
  ``demand_of``: the one place every field that multiplies cost enters) = the prompt tokens (plus
  ``TOOL_PROMPT_TOKENS`` when the job offers tools: providers add a tool-use system prompt) and the
  job's ``max_tokens`` (``max_completion_tokens``), or the model's maximum output when it sets none,
  plus the reasoning budget ``reasoning_effort`` may spend beyond it and the predicted output
  (``prediction``) OpenAI may reject and bill as output, times ``n`` choices (each is
  billed its own output), times the attempts the job may pay for (hedges, a stream continued on a
  fallback), priced at the dearest deployment of every model in its fallback chain. A job reserves
  this much of its tenant's credit.
* **prompt only** (``CostModel.prompt_only``) = the prompt tokens at the first deployment of its
  model, with no output: the low end of ``llm-router submit --estimate``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

if TYPE_CHECKING:  # the catalog holds Prices: it imports this module, not the other way round
    from config.catalog import Catalog

PICO_PER_USD_PER_MTOK = Decimal(1_000_000)  # $1 per 1M tokens is 1e6 pico-dollars per token
NANOS_PER_USD = 1_000_000_000

# per image: above OpenAI's 765 for a 1024x1024 high-detail image and Anthropic's ~1,600 for the
# largest image it takes without resizing; Gemini counts 258
IMAGE_TOKENS = 1_600
# Anthropic's tool-use system prompt is 346 tokens (tool_choice auto/none) on Claude 4 models; other
# providers add less for function definitions, whose JSON the byte estimate already counts
TOOL_PROMPT_TOKENS = 350
# the most thinking a reasoning_effort may buy beyond max_tokens: Gemini's thinkingBudget
# (24,576 from "high" up; the Gemini adapter's THINKING_BUDGET, which a test holds this to) is not
# part of maxOutputTokens; OpenAI's and Anthropic's are within it
REASONING_ALLOWANCE: dict[str, int] = {
    "minimal": 512,
    "low": 1_024,
    "medium": 8_192,
    "high": 24_576,
    "xhigh": 24_576,
    "max": 24_576,
}
BYTES_PER_TOKEN = 4


# -- money ------------------------------------------------------------------------------------


def nanos_to_usd(nanos: int) -> float:
    """USD as a JSON number, exact to 1e-9 (the float nearest the decimal value)."""
    return float(Decimal(nanos) / NANOS_PER_USD)


def usd_to_nanos(amount: str | float | Decimal) -> int:
    """Nano-dollars of an amount in USD (``"12.50"``, ``0.1``), rounded half even to the nano-dollar.

    A float goes through its shortest repr (``0.1`` is 100,000,000, not 100,000,000.000000005...);
    ``ValueError`` when the amount is not a finite number.
    """
    try:
        value = Decimal(str(amount))
    except InvalidOperation:
        raise ValueError(f"'{amount}' is not an amount in USD") from None
    if not value.is_finite():
        raise ValueError(f"'{amount}' is not an amount in USD")
    return int((value * NANOS_PER_USD).to_integral_value())


# -- prices -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tier:
    """Rates (pico-USD per token) that apply once input tokens exceed ``start``."""

    start: int
    input: int
    output: int
    cache_read: int
    cache_write: int = -1  # -1: same as input (providers that do not charge cache writes apart)

    @property
    def cache_write_rate(self) -> int:
        return self.input if self.cache_write < 0 else self.cache_write


@dataclass(frozen=True, slots=True)
class Price:
    """A deployment's price: tiers sorted by ``start`` (the first starts at 0) and where it came from."""

    tiers: tuple[Tier, ...]
    source: str

    def tier_for(self, input_tokens: int) -> Tier:
        chosen = self.tiers[0]
        for tier in self.tiers[1:]:
            if input_tokens > tier.start:
                chosen = tier
        return chosen

    def cost_nanos(
        self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0, cache_write_tokens: int = 0
    ) -> int:
        """Nano-dollars for one request, rounded half up once.

        ``prompt_tokens`` counts the whole prompt (OpenAI's meaning); ``cached_tokens`` is the part
        read from a cache and ``cache_write_tokens`` the part written to one, each at its own rate.
        Reasoning (thinking) tokens are output tokens and belong in ``completion_tokens``.
        """
        tier = self.tier_for(prompt_tokens)
        cached = min(max(cached_tokens, 0), prompt_tokens)
        written = min(max(cache_write_tokens, 0), prompt_tokens - cached)
        picos = (
            (prompt_tokens - cached - written) * tier.input
            + cached * tier.cache_read
            + written * tier.cache_write_rate
            + completion_tokens * tier.output
        )
        return (picos + 500) // 1000

    def per_mtok_usd(self) -> dict[str, float]:
        """Base-tier prices in USD per 1M tokens, for display."""
        base = self.tiers[0]
        scale = float(PICO_PER_USD_PER_MTOK)
        return {
            "input_usd_per_mtok": base.input / scale,
            "output_usd_per_mtok": base.output / scale,
            "cache_read_usd_per_mtok": base.cache_read / scale,
            "cache_write_usd_per_mtok": base.cache_write_rate / scale,
        }


def _pico(usd_per_mtok: Decimal | float | int | str | None) -> int:
    if usd_per_mtok is None:
        return 0
    return int((Decimal(str(usd_per_mtok)) * PICO_PER_USD_PER_MTOK).to_integral_value())


def price_from_rates(
    input_usd_per_mtok: float | str,
    output_usd_per_mtok: float | str,
    cache_read_usd_per_mtok: float | str | None = None,
    cache_write_usd_per_mtok: float | str | None = None,
    *,
    source: str,
) -> Price:
    """A flat price from USD-per-1M-token rates (catalog overrides)."""
    cache = cache_read_usd_per_mtok if cache_read_usd_per_mtok is not None else input_usd_per_mtok
    write = _pico(cache_write_usd_per_mtok) if cache_write_usd_per_mtok is not None else -1
    return Price(
        tiers=(Tier(0, _pico(input_usd_per_mtok), _pico(output_usd_per_mtok), _pico(cache), write),),
        source=source,
    )


FREE = Price(tiers=(Tier(0, 0, 0, 0),), source="free")


def discounted(price: Price, discount: float, lane: str) -> Price:
    """``price`` less ``discount`` (0.5: half price) on every rate: a lane's price (batch, flex)."""
    keep = Decimal(str(1 - discount))

    def cut(rate: int) -> int:
        return int((Decimal(rate) * keep).to_integral_value())

    return Price(
        tiers=tuple(
            Tier(
                t.start,
                cut(t.input),
                cut(t.output),
                cut(t.cache_read),
                -1 if t.cache_write < 0 else cut(t.cache_write),
            )
            for t in price.tiers
        ),
        source=f"{price.source}@{lane}-{discount:g}",
    )


def price_from_genai_prices(provider_id: str, model_ref: str, when: datetime | None = None) -> Price | None:
    """Resolve a price from genai-prices' bundled snapshot; ``None`` when it does not know the model."""
    from genai_prices import data_snapshot, types

    snapshot = data_snapshot.get_snapshot()
    try:
        provider, model = snapshot.find_provider_model(model_ref, None, provider_id, None)
    except LookupError:
        return None
    except Exception:  # genai-prices raises its own error types for unknown refs
        return None
    mp = model.get_prices(when or datetime.now(tz=UTC))

    def rates(value: object) -> tuple[Decimal, dict[int, Decimal]]:
        if isinstance(value, types.TieredPrices):
            return value.base, {t.start: t.price for t in value.tiers}
        if value is None:
            return Decimal(0), {}
        return Decimal(str(value)), {}

    inp, inp_t = rates(getattr(mp, "input_mtok", None))
    out, out_t = rates(getattr(mp, "output_mtok", None))
    raw_cache = getattr(mp, "cache_read_mtok", None)
    cache, cache_t = rates(raw_cache) if raw_cache is not None else (inp, inp_t)
    raw_write = getattr(mp, "cache_write_mtok", None)
    write, write_t = rates(raw_write) if raw_write is not None else (None, {})
    starts = sorted(set(inp_t) | set(out_t) | set(cache_t) | set(write_t))
    tiers = [Tier(0, _pico(inp), _pico(out), _pico(cache), -1 if write is None else _pico(write))]
    for start in starts:
        prev = tiers[-1]
        tiers.append(
            Tier(
                start,
                _pico(inp_t[start]) if start in inp_t else prev.input,
                _pico(out_t[start]) if start in out_t else prev.output,
                _pico(cache_t[start]) if start in cache_t else prev.cache_read,
                _pico(write_t[start]) if start in write_t else prev.cache_write,
            )
        )
    return Price(tiers=tuple(tiers), source=f"genai-prices:{provider.id}/{model_ref}")


# -- one call ---------------------------------------------------------------------------------


def call_usage(
    price: Price,
    prompt_tokens: int,
    completion_tokens: int,
    *,
    cached_tokens: int = 0,
    cache_write_tokens: int = 0,
    reasoning_tokens: int = 0,
    estimated: bool = False,
) -> dict[str, Any]:
    """One call's billed token counts and their cost, as a record's ``usage`` (``contract.Usage``).

    The counts mean what ``Price.cost_nanos`` says; ``estimated`` marks counts from the estimate
    (``prompt_tokens``/``text_tokens``) rather than the provider's usage, and is left out otherwise.
    """
    nanos = price.cost_nanos(prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens)
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "cached_tokens": cached_tokens,
        "cache_write_tokens": cache_write_tokens,
        "reasoning_tokens": reasoning_tokens,
        "cost": nanos_to_usd(nanos),
        "cost_nanos": nanos,
    }
    if estimated:
        usage["estimated"] = True
    return usage


# -- estimates --------------------------------------------------------------------------------


def image_parts(request: dict[str, Any]) -> tuple[int, int]:
    """The image parts of a chat body's messages: how many, and the characters of their URLs (what
    ``prompt_tokens`` counts as ``IMAGE_TOKENS`` each instead of as text). Only the parts themselves:
    a ``"url"`` anywhere else (a tool's schema, a response format) is text the provider bills."""
    count = chars = 0
    for message in request.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for part in content:
            if isinstance(part, dict) and part.get("type") == "image_url":
                count += 1
                image = part.get("image_url")
                url = image.get("url") if isinstance(image, dict) else None
                if isinstance(url, str):
                    chars += len(url)  # at most its bytes in the JSON: the estimate errs high
    return count, chars


def prompt_tokens(request: bytes, images: int = 0, image_chars: int = 0) -> int:
    """Estimated prompt tokens of a job's canonical JSON request (see the module's doc): its bytes
    less ``image_chars`` (its image parts' URLs, ``image_parts``), plus ``IMAGE_TOKENS`` per image."""
    size = len(request) - image_chars
    return -(-max(size, 0) // BYTES_PER_TOKEN) + images * IMAGE_TOKENS


def text_tokens(text: str) -> int:
    """Estimated tokens of generated text (what a broken stream published): ⌈UTF-8 bytes / 4⌉."""
    return -(-len(text.encode()) // BYTES_PER_TOKEN)


class Demand(NamedTuple):
    """What a request can make a provider bill at most: the inputs of its worst-case cost (a tuple:
    built once per job at submit, where a frozen dataclass cost a microsecond more)."""

    prompt_tokens: int  # the estimate, images included, tool-use prompt included
    max_output: int | None  # max_tokens / max_completion_tokens; None: the model's maximum
    extra_output: int = 0  # thinking a reasoning_effort may spend beyond max_output
    choices: int = 1  # n: every choice is billed its own output
    attempts: int = 1  # calls the job may pay for in full (hedged attempts, continuations)
    # image parts: each costs its model's ``image_tokens`` (``prompt_tokens`` above counts them at
    # IMAGE_TOKENS, and the cost model swaps that for each model's own)
    images: int = 0


def followed_stream(request: dict[str, Any], interactive: bool) -> bool:
    """Whether a client reads the job's stream as it is written: a streamed job on the interactive
    queue (the HTTP chat endpoints and ``chat_stream`` submit there and follow at once), and a
    streamed Response (``answer_format: "responses"``: the request that creates a background one
    relays its events at once). Such a stream, cut after tokens went out, is continued on a fallback
    rather than restarted: its client has the tokens already."""
    return request.get("stream") is True and (interactive or request.get("answer_format") == "responses")


def demand_of(
    request: dict[str, Any],
    prompt: int,
    *,
    interactive: bool = False,
    continuations: int = 1,
    hedged: bool = False,
    images: int = 0,
) -> Demand:
    """The one function every cost-multiplying field of a request enters (see the module's doc):
    ``n``, images (``images`` of them, counted in ``prompt`` at ``IMAGE_TOKENS`` each, priced at each
    model's ``image_tokens``), tools, reasoning budgets, a followed stream's continuations
    (``followed_stream``: each is a call billed on top of the partial answer before it; the worker
    caps a continuation's output at what the first call had left, so each fits one more attempt) and
    a hedge (``hedged``: the job's or its route's ``hedge``, on an interactive job: a second attempt
    that may run alongside the first; the loser is billed what it consumed, at most a whole call).
    A later field that multiplies cost is added here and to the overspend test. A job's lane
    (README "Lanes") does not enter: a batch or flex job reserves the `now` price, as it may be sent
    back to `now`, and it pays once (a batch's answer that arrives after that is the operator's
    wasted spend, never the tenant's); ``tests/lanes/test_lane_money.py`` holds it to that."""
    get = request.get
    max_out = get("max_completion_tokens") or get("max_tokens")
    if get("tools") or get("functions"):
        prompt += TOOL_PROMPT_TOKENS
    effort = get("reasoning_effort")
    extra = REASONING_ALLOWANCE.get(effort, 0) if isinstance(effort, str) else 0
    prediction = get("prediction")
    if prediction:
        # OpenAI's predicted outputs: the predicted tokens it rejects are billed as output, beyond
        # max_tokens (the prediction's bytes already count once, in the prompt, at the input price)
        extra += -(-len(orjson.dumps(prediction)) // BYTES_PER_TOKEN)
    n = get("n")
    # by position: keywords cost a bulk submit half a microsecond a job
    return Demand(
        prompt,  # prompt_tokens
        max_out if isinstance(max_out, int) else None,  # max_output
        extra,  # extra_output
        max(int(n), 1) if n else 1,  # choices
        (1 + max(continuations, 0) if interactive and followed_stream(request, interactive) else 1)
        + int(hedged),  # attempts
        images,
    )


# a distinct price of a route: its first tier's input and output rates (picos), the tiers above it as
# (start, input, output), its model's max output, and what an image costs it beyond IMAGE_TOKENS
_Row = tuple[int, int, tuple[tuple[int, int, int], ...], int, int]


class CostModel:
    """Prices of the catalog's models for estimates, read once; answers in nano-USD."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        # per route: its distinct (tiers as (start, input, output) picos, model's max output), so
        # a job's reservation is a few multiplications, not a price lookup per deployment
        self._rows: dict[tuple[str, ...], list[_Row]] = {}
        # answers by (route, demand): a bulk file repeats a few shapes of job, and a lookup costs a
        # tenth of the walk over the route's prices (bounded: cleared when full)
        self._worst: dict[tuple[tuple[str, ...], Demand], int] = {}

    def _route_rows(self, route: tuple[str, ...]) -> list[_Row]:
        rows = self._rows.get(route)
        if rows is None:
            distinct: dict[tuple[tuple[tuple[int, int, int], ...], int, int], None] = {}
            for model_id in route:
                caps = self.catalog.models[model_id].capabilities
                image_extra = caps.image_tokens - IMAGE_TOKENS
                for dep in self.catalog.deployments(model_id):
                    tiers = tuple((t.start, t.input, t.output) for t in dep.price.tiers)
                    distinct[(tiers, caps.max_output, image_extra)] = None
            # the first tier's rates apart from the tiers above it: no slice per row and job
            rows = self._rows[route] = [(t[0][1], t[0][2], t[1:], m, i) for t, m, i in distinct]
        return rows

    def worst_case(self, route: list[str] | tuple[str, ...], demand: Demand) -> int:
        """The most the job can cost on any deployment of its chain: its reservation."""
        if type(route) is tuple:
            known = self._worst.get((route, demand))
            if known is not None:
                return known
            if len(self._worst) >= 8192:
                self._worst.clear()
            nanos = self._worst[(route, demand)] = self._worst_case(route, demand)
            return nanos
        return self._worst_case(route, demand)

    def _worst_case(self, route: list[str] | tuple[str, ...], demand: Demand) -> int:
        worst = 0
        rows = self._rows.get(route) if type(route) is tuple else None
        for rate_in, rate_out, higher, model_max, image_extra in rows or self._route_rows(tuple(route)):
            prompt = demand.prompt_tokens + demand.images * image_extra
            for start, tier_in, tier_out in higher:  # as Price.tier_for: the last tier passed
                if prompt > start:
                    rate_in, rate_out = tier_in, tier_out
            out = min(demand.max_output, model_max) if demand.max_output else model_max
            out = (out + demand.extra_output) * demand.choices
            picos = (prompt * rate_in + out * rate_out) * demand.attempts
            if picos > worst:
                worst = picos
        return (worst + 500) // 1000

    def prompt_only(self, model_id: str, prompt: int) -> int:
        """The prompt alone at the model's first deployment: the least the job can cost."""
        deps = self.catalog.deployments(model_id)
        return deps[0].price.cost_nanos(prompt, 0) if deps else 0

    def typical(self, model_id: str, prompt: int, output: int) -> int:
        """A request's cost at the model's first deployment (how ``auto`` routes rank models)."""
        deps = self.catalog.deployments(model_id)
        return deps[0].price.cost_nanos(prompt, output) if deps else 1 << 62
