"""The model catalog: typed loading of ``catalog.yaml`` into models, aliases and deployments.

The catalog is data: providers (wire format, base URL, key variable), models (capabilities,
aliases, fallbacks, deployments in preference order) and price overrides. A deployment is a model on
a provider; it is enabled only when its provider's key (or, for local servers, base URL) is set, so
with only ``AISA_API_KEY`` every model runs through AIsa.

Blocks that tune a deployment are set on its provider and overridden per deployment (some per model
too), unset fields falling back to the ``LLM_ROUTER_*`` settings: ``breaker`` (thresholds, also per
model), ``timeouts`` (a call's limits), ``retry_after`` (a 429's short wait, also per model),
``prefill`` (how it continues a cut answer, also per model) and ``concurrency`` (the adaptive
in-flight limit's seed and cap, ``llm_router.concurrency``) and ``lanes`` (the flex tier and provider
batch lane it offers, with their discounts: README "Lanes"). Per model, ``strategy`` says how its
deployments are chosen among (``ordered``, ``least_busy``, ``latency``, ``cost``), each deployment's
``weight`` tilting the choice.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from config.cost import FREE, IMAGE_TOKENS, Price, discounted, price_from_genai_prices, price_from_rates
from config.routes import RouteSpec
from config.settings import Settings

WireFormat = Literal["openai", "anthropic", "gemini"]
# how a deployment continues a partial answer (a stream cut after tokens went to a client): the text
# as a final assistant message (Anthropic's prefill, Gemini's model turn, OpenRouter), the same
# message marked ``prefix: true`` (Mistral, DeepSeek), or not at all; unset, its wire format's default
Prefill = Literal["last_message", "prefix", "none"]
# how a model's deployments are chosen among: catalog order (the first healthy one with room), fewest
# calls in flight, lowest fleet-learned latency (time to first token for streams), or lowest price
Strategy = Literal["ordered", "least_busy", "latency", "cost"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_B = TypeVar("_B", bound=_Strict)


class PriceOverride(_Strict):
    """USD per 1M tokens."""

    input: float
    output: float
    cache_read: float | None = None
    cache_write: float | None = None


class BreakerSpec(_Strict):
    """Circuit-breaker thresholds; unset fields take the global defaults from the settings."""

    window_s: float | None = None
    failure_rate: float | None = None
    min_calls: int | None = None
    consecutive: int | None = None
    cooldown_s: float | None = None
    max_cooldown_s: float | None = None
    probes: int | None = None


class TimeoutSpec(_Strict):
    """A call's time limits in seconds; unset fields take the global settings (``worker.http.Timeouts``).

    ``connect_s`` the TCP/TLS connect, ``headers_s`` the wait for the response headers (streamed and
    unstreamed calls alike), ``first_token_s`` a stream's first event after its headers, ``idle_s``
    the longest quiet between a stream's events, ``total_s`` an unstreamed call as a whole."""

    connect_s: float | None = Field(default=None, gt=0)
    headers_s: float | None = Field(default=None, gt=0)
    first_token_s: float | None = Field(default=None, gt=0)
    idle_s: float | None = Field(default=None, gt=0)
    total_s: float | None = Field(default=None, gt=0)


class RetryAfterSpec(_Strict):
    """What a 429 with a short ``Retry-After`` does (per provider, model or deployment).

    ``wait``: ``auto`` waits it out and calls the same deployment again when the next deployment of
    the route serves another model (a fallback is a different answer), and moves on when the same
    model is served elsewhere (or, with nothing after it, defers the job off its worker slot);
    ``always`` waits whenever the wait is short; ``never`` moves on at once. ``max_s``: the longest
    wait sat out in the job's worker slot (unset: ``LLM_ROUTER_MAX_INLINE_WAIT_S``)."""

    wait: Literal["auto", "always", "never"] | None = None
    max_s: float | None = Field(default=None, ge=0)


class ConcurrencySpec(_Strict):
    """A deployment's adaptive in-flight limit (``llm_router.concurrency``): where it starts (and
    starts over after a long idle spell) and the most it may grow to; unset fields take
    ``LLM_ROUTER_CONCURRENCY_INITIAL`` / ``LLM_ROUTER_CONCURRENCY_MAX``. ``max: 0`` turns the limit
    off for the deployment (no slots; a 429 without Retry-After then holds it as before)."""

    initial: int | None = Field(default=None, ge=1)
    max: int | None = Field(default=None, ge=0)


class BatchLaneSpec(_Strict):
    """A deployment's provider batch lane: its API (``openai``: Files + ``/v1/batches`` JSONL;
    ``anthropic``: Message Batches; ``gemini``: batch mode with inline requests; the deployment's
    format must be the same), the discount on its price, and how many requests and bytes one
    provider batch takes."""

    api: Literal["openai", "anthropic", "gemini"] = "openai"
    discount: float = Field(default=0.5, ge=0, lt=1)
    max_requests: int = Field(default=50_000, ge=1)
    max_bytes: int = Field(default=200 * 1024 * 1024, ge=1)


class FlexLaneSpec(_Strict):
    """A deployment's flex tier (``service_tier: "flex"``): slower, sometimes unavailable, cheaper."""

    discount: float = Field(default=0.5, ge=0, lt=1)


class LanesSpec(_Strict):
    """The lanes a deployment offers beside ``now`` (README "Lanes"); an unset lane is not offered."""

    batch: BatchLaneSpec | None = None
    flex: FlexLaneSpec | None = None


class ProviderSpec(_Strict):
    format: WireFormat = "openai"
    base_url: str | None = None
    base_url_env: str | None = Field(default=None, description="a local server is enabled when this is set")
    key_env: str | None = None
    key_env_fallbacks: list[str] = Field(
        default_factory=list, description="read in order when key_env is unset (GOOGLE_API_KEY for Gemini)"
    )
    key_optional: bool = False
    free: bool = Field(default=False, description="self-hosted: costs nothing unless a deployment says so")
    reasoning_params: bool = Field(
        default=False, description="the API refuses max_tokens and sampling parameters on reasoning models"
    )
    prices_provider: str | None = Field(
        default=None, description="genai-prices provider id when its prices apply; else the vendor's"
    )
    label: str = ""
    headers: dict[str, str] = Field(
        default_factory=dict, description="static headers (anthropic-version, say)"
    )
    breaker: BreakerSpec | None = None
    timeouts: TimeoutSpec | None = None
    retry_after: RetryAfterSpec | None = None
    prefill: Prefill | None = None
    concurrency: ConcurrencySpec | None = None
    lanes: LanesSpec | None = None


class DeploymentSpec(_Strict):
    provider: str
    model: str
    price: PriceOverride | None = None
    rpm: int | None = Field(default=None, gt=0, description="requests per minute, fleet-wide")
    tpm: int | None = Field(default=None, gt=0, description="tokens per minute, fleet-wide")
    breaker: BreakerSpec | None = None
    timeouts: TimeoutSpec | None = None
    retry_after: RetryAfterSpec | None = None
    prefill: Prefill | None = None
    concurrency: ConcurrencySpec | None = None
    lanes: LanesSpec | None = None
    # its share under the model's strategy: least_busy compares calls in flight / weight, latency
    # latency / weight, cost price / weight
    weight: float = Field(default=1.0, gt=0)


class Capabilities(_Strict):
    vision: bool = False
    reasoning: bool = False
    streaming: bool = True
    tools: bool = True
    context_window: int = 128_000
    max_output: int = 4_096
    # the most prompt tokens one image can cost (what a reservation prices each image at): OpenAI's
    # mini and nano models bill an image as many more tokens, at their lower price
    image_tokens: int = Field(default=IMAGE_TOKENS, ge=1)


class ModelSpec(_Strict):
    vendor: str
    breaker: BreakerSpec | None = None
    retry_after: RetryAfterSpec | None = None
    prefill: Prefill | None = None
    strategy: Strategy = "ordered"
    family: str = ""
    prices_ref: str | None = Field(default=None, description="model id in genai-prices, when it differs")
    price: PriceOverride | None = None
    capabilities: Capabilities = Capabilities()
    aliases: list[str] = []
    fallbacks: list[str] = []
    deployments: list[DeploymentSpec]


class CatalogFile(_Strict):
    vendor_prices: dict[str, str] = Field(
        default_factory=dict, description="vendor → genai-prices provider id for list prices"
    )
    providers: dict[str, ProviderSpec]
    models: dict[str, ModelSpec]
    routes: dict[str, RouteSpec] = Field(
        default_factory=dict, description="names a job's model may give instead of a model (config.routes)"
    )

    @model_validator(mode="after")
    def _references_resolve(self) -> CatalogFile:
        seen_alias: dict[str, str] = {}
        aliases = {a for m in self.models.values() for a in m.aliases}
        for name, route in self.routes.items():
            if name in self.models or name in aliases:
                raise ValueError(f"routes.{name}: the name is already a model or alias")
            for ref in route.models_named():
                if ref not in self.models and ref not in aliases:
                    raise ValueError(f"routes.{name}: unknown model {ref!r}")
        for name, model in self.models.items():
            for dep in model.deployments:
                if dep.provider not in self.providers:
                    raise ValueError(f"models.{name}: unknown provider {dep.provider!r}")
            for fb in model.fallbacks:
                if fb not in self.models:
                    raise ValueError(f"models.{name}.fallbacks: unknown model {fb!r}")
            for alias in model.aliases:
                if alias in self.models or alias in seen_alias:
                    raise ValueError(f"models.{name}.aliases: {alias!r} is already a model or alias")
                seen_alias[alias] = name
        return self


@dataclass(frozen=True, slots=True)
class Deployment:
    """A model on a provider, ready to call: URL, key and price are resolved once at start-up."""

    id: str
    provider: str
    format: WireFormat
    base_url: str
    upstream_model: str
    price: Price
    api_key: str | None = field(default=None, repr=False)
    enabled: bool = True
    # which parameter rules of its wire format apply (e.g. "openai-reasoning")
    dialect: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    max_output: int = 4096
    rpm: int | None = None
    tpm: int | None = None
    breaker: BreakerSpec | None = None
    timeouts: TimeoutSpec | None = None
    retry_after: RetryAfterSpec | None = None
    prefill: Prefill | None = None
    concurrency: ConcurrencySpec | None = None
    weight: float = 1.0
    lanes: LanesSpec | None = None
    # its price per lane it offers beside `now` ("flex", "batch"): its price less the lane's discount
    lane_prices: dict[str, Price] = field(default_factory=dict)

    def price_for(self, lane: str | None) -> Price:
        """What a call in ``lane`` costs here: the lane's price when the deployment offers it."""
        return self.lane_prices.get(lane or "now", self.price)

    def __repr__(self) -> str:  # the key never shows up in logs or tracebacks
        # the host only: a base URL may carry credentials (user:password@)
        return f"Deployment({self.id!r}, host={urlsplit(self.base_url).hostname!r}, enabled={self.enabled})"


class CatalogError(ValueError):
    """The catalog cannot be used as written (a deployment without a price, say)."""


def replace_origin(url: str, upstream: str | None) -> str:
    """Swap scheme, host and port of ``url`` for ``upstream``'s, keeping the provider's path."""
    if not upstream:
        return url.rstrip("/")
    src, dst = urlsplit(url), urlsplit(upstream)
    return urlunsplit((dst.scheme, dst.netloc, src.path, src.query, "")).rstrip("/")


class Catalog:
    """Models, aliases and deployments, parsed once; shared read-only by producer and worker."""

    def __init__(self, spec: CatalogFile, *, env: Mapping[str, str], upstream: str | None) -> None:
        self.spec = spec
        self.models: dict[str, ModelSpec] = dict(spec.models)
        self.aliases: dict[str, str] = {a: m for m, s in spec.models.items() for a in s.aliases}
        self.routes: dict[str, RouteSpec] = dict(spec.routes)
        self._env = dict(env)  # read once: later changes to the environment do not leak in
        self._upstream = upstream
        self._deployments: dict[str, list[Deployment]] | None = None

    @classmethod
    def load(cls, settings: Settings | None = None, env: Mapping[str, str] | None = None) -> Catalog:
        settings = settings or Settings()
        return cls.from_path(settings.config, env=env, upstream=settings.upstream)

    @classmethod
    def from_path(
        cls, path: Path | str, *, env: Mapping[str, str] | None = None, upstream: str | None = None
    ) -> Catalog:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh)
        return cls(CatalogFile.model_validate(raw), env=os.environ if env is None else env, upstream=upstream)

    def resolve(self, name: str) -> str | None:
        """The catalog id for a model name or alias, or ``None``."""
        if name in self.models:
            return name
        return self.aliases.get(name)

    def deployments(self, model_id: str, *, enabled_only: bool = True) -> list[Deployment]:
        """Deployments of a model in preference order."""
        if self._deployments is None:
            self._deployments = self._build_deployments()
        deps = self._deployments.get(model_id, [])
        return [d for d in deps if d.enabled] if enabled_only else deps

    def _build_deployments(self) -> dict[str, list[Deployment]]:
        cache: dict[tuple[str, str], Price | None] = {}

        def lookup(provider_id: str, ref: str) -> Price | None:
            if (provider_id, ref) not in cache:
                cache[(provider_id, ref)] = price_from_genai_prices(provider_id, ref)
            return cache[(provider_id, ref)]

        out: dict[str, list[Deployment]] = {}
        for model_id, model in self.models.items():
            deps: list[Deployment] = []
            for dep in model.deployments:
                prov = self.spec.providers[dep.provider]
                names = [prov.key_env, *prov.key_env_fallbacks] if prov.key_env else []
                key = next((self._env[n] for n in names if self._env.get(n)), None)
                base = prov.base_url
                if prov.base_url_env:
                    base = self._env.get(prov.base_url_env) or None
                enabled = bool(base) and (bool(key) or prov.key_optional)
                price = self._price(model_id, model, dep, prov, lookup)
                lanes = _merge_lanes(prov.lanes, dep.lanes)
                if lanes is not None and lanes.batch is not None and lanes.batch.api != prov.format:
                    # a batch API the deployment does not speak would never be used, silently
                    raise CatalogError(
                        f"deployment {dep.provider}/{dep.model}: lanes.batch.api is {lanes.batch.api!r}, "
                        f"its format is {prov.format!r} (a batch lane speaks its deployment's format)"
                    )
                deps.append(
                    Deployment(
                        id=f"{dep.provider}/{dep.model}",
                        provider=dep.provider,
                        format=prov.format,
                        base_url=replace_origin(base or "http://unset.invalid", self._upstream),
                        upstream_model=dep.model,
                        price=price,
                        api_key=key or None,
                        enabled=enabled,
                        dialect=(
                            f"{prov.format}-reasoning"
                            if prov.reasoning_params and model.capabilities.reasoning
                            else ""
                        ),
                        headers=dict(prov.headers),
                        max_output=model.capabilities.max_output,
                        rpm=dep.rpm,
                        tpm=dep.tpm,
                        breaker=_merge(_merge(prov.breaker, model.breaker), dep.breaker),
                        timeouts=_merge(prov.timeouts, dep.timeouts),
                        retry_after=_merge(_merge(prov.retry_after, model.retry_after), dep.retry_after),
                        prefill=dep.prefill or model.prefill or prov.prefill,
                        concurrency=_merge(prov.concurrency, dep.concurrency),
                        weight=dep.weight,
                        lanes=lanes,
                        lane_prices=_lane_prices(price, lanes),
                    )
                )
            out[model_id] = deps
        return out

    def _price(
        self, model_id: str, model: ModelSpec, dep: DeploymentSpec, prov: ProviderSpec, lookup
    ) -> Price:
        if dep.price is not None:
            p = dep.price
            return price_from_rates(
                p.input, p.output, p.cache_read, p.cache_write, source=f"catalog:{dep.provider}/{dep.model}"
            )
        if prov.free:
            return FREE
        if prov.prices_provider:
            found = lookup(prov.prices_provider, dep.model)
            if found is not None:
                return found
        vendor_provider = self.spec.vendor_prices.get(model.vendor)
        if vendor_provider:
            found = lookup(vendor_provider, model.prices_ref or model_id)
            if found is not None:
                return found
        if model.price is not None:
            p = model.price
            return price_from_rates(
                p.input, p.output, p.cache_read, p.cache_write, source=f"catalog:{model_id}"
            )
        # a silent $0 would under-bill every job; a catalog edit must say what a deployment costs
        raise CatalogError(
            f"no price for deployment {dep.provider}/{dep.model} of {model_id}: "
            "give it a `price` in the catalog"
        )


def _merge_lanes(outer: LanesSpec | None, inner: LanesSpec | None) -> LanesSpec | None:
    """Each lane a deployment sets replaces its provider's whole (a lane's fields go together)."""
    if outer is None or inner is None:
        return inner or outer
    return LanesSpec(batch=inner.batch or outer.batch, flex=inner.flex or outer.flex)


def _lane_prices(price: Price, lanes: LanesSpec | None) -> dict[str, Price]:
    if lanes is None:
        return {}
    out = {}
    if lanes.flex is not None:
        out["flex"] = discounted(price, lanes.flex.discount, "flex")
    if lanes.batch is not None:
        out["batch"] = discounted(price, lanes.batch.discount, "batch")
    return out


def _merge(outer: _B | None, inner: _B | None) -> _B | None:
    """A block's inner fields (a deployment's) over its outer ones (its provider's); unset fields
    stay unset (global defaults)."""
    if outer is None or inner is None:
        return inner or outer
    return outer.model_copy(update=inner.model_dump(exclude_none=True))
