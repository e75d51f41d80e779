"""Per-deployment prices, resolved once at start-up; cost arithmetic in integer money.

Prices come from ``genai-prices``' bundled data (offline; its ``UpdatePrices`` is never started) or
from the catalog where it has none or a gateway differs. A resolved price is integer pico-dollars
(1e-12 USD) per token so the hot path does integer arithmetic only, and costs are integer
nano-dollars (1e-9 USD), rounded half up once per request. Tiered prices follow genai-prices'
cliff model: once a request's input tokens pass a tier's start, all its tokens pay that tier.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

PICO_PER_USD_PER_MTOK = Decimal(1_000_000)  # $1 per 1M tokens is 1e6 pico-dollars per token
NANOS_PER_USD = 1_000_000_000


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


def nanos_to_usd(nanos: int) -> float:
    """USD as a JSON number, exact to 1e-9 (the float nearest the decimal value)."""
    return float(Decimal(nanos) / NANOS_PER_USD)


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
