"""Validation at enqueue: a job is refused with a stable code naming its field, or prepared for Redis.

Nothing invalid reaches the queue: the body's schema (``ChatJob``), its size, its model and
fallbacks against the catalog and the capabilities they need are all checked here.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import orjson
from pydantic import ValidationError

from config.catalog import Catalog
from config.cost import CostModel, demand_of, image_parts, prompt_tokens
from config.routes import Need, NoCapableModel, RouteSpec, choose
from config.settings import Settings
from llm_router.contract import ChatJob, image_urls, invalid_from_validation, normalise_data_uris
from llm_router.errors import (
    InvalidRequest,
    ModelNotFound,
    PayloadTooLarge,
    RouterError,
    UnsupportedCapability,
)
from llm_router.keys import DEFAULT_TENANT
from llm_router.store import NewJob, body_digest
from llm_router.urls import AddressGuard, UnsafeURL, parse_url
from llm_router.webhooks import spec as webhook_spec
from producer.common_shape import CommonJob, common_job
from producer.gemini_native import gemini_to_chat
from producer.vision import vision_to_chat

# what a validated job becomes: the payload of its new record (the store owns its layout)

AnyJob = ChatJob | CommonJob  # a job as validated: by the model, or of the common shape (``common_job``)


class Validator:
    """Checks jobs against the schema and the catalog; built once, used for every job."""

    def __init__(self, catalog: Catalog, settings: Settings) -> None:
        self.catalog = catalog
        self.settings = settings
        self._routes: dict[tuple[Any, ...], tuple[list[str], tuple[str, ...], bytes]] = {}
        self.costs = CostModel(catalog)
        # what no worker may ever fetch (cloud metadata addresses) is refused at submit; private
        # addresses depend on the fetching worker's settings (and a provider fetches them itself)
        self.image_guard = AddressGuard(allow_private=True)
        self.webhook_guard = webhook_spec.webhook_guard(settings)

    def parse(self, raw: bytes | str | dict[str, Any]) -> dict[str, Any]:
        """Raw JSON (a JSONL line, say) or a dict → a dict, enforcing the body size limit."""
        if isinstance(raw, dict):
            try:
                size = len(orjson.dumps(raw))  # ~1 µs for a typical job: cheap enough to always measure
            except orjson.JSONEncodeError:
                size = 0  # validation names the bad field; the encoded request is measured again later
            obj = raw
        else:
            if isinstance(raw, str):
                raw = raw.encode()
            size = len(raw)
            if size <= self.settings.max_body_bytes:
                try:
                    obj = orjson.loads(raw)
                except orjson.JSONDecodeError as exc:
                    raise InvalidRequest(f"malformed JSON: {exc}") from None
        if size > self.settings.max_body_bytes:
            raise PayloadTooLarge(
                f"job body is {size} bytes; the limit is {self.settings.max_body_bytes} bytes"
            )
        if not isinstance(obj, dict):
            raise InvalidRequest("a job must be a JSON object")
        return obj

    def prepare(
        self,
        raw: bytes | str | dict[str, Any],
        *,
        now: float,
        interactive: bool = False,
        new_id: str | None = None,
        allow_files: bool = False,
    ) -> NewJob:
        """Validate one job; ``new_id`` is its id unless the job names its own ``job_id``.

        ``allow_files`` lets a vision job's ``image`` be a local path (the CLI, the client calls).
        """
        obj = self.parse(raw)
        common = common_job(obj)  # plain text to a model: ChatJob's verdict without its cost
        if common is not None:
            return self._prepare(common, obj, now=now, interactive=interactive, new_id=new_id)
        if "messages" not in obj and ("image" in obj or "prompt" in obj):
            obj = vision_to_chat(obj, allow_files=allow_files, max_bytes=self.settings.max_body_bytes)
        elif "messages" not in obj and "contents" in obj:  # a Gemini-native generateContent body
            obj = gemini_to_chat(obj)
        obj = normalise_data_uris(obj)
        try:
            job = ChatJob.model_validate(obj)
        except ValidationError as exc:
            raise invalid_from_validation(exc) from None
        if job.first_image_param() is not None:
            self._check_images(job, obj)
        return self._prepare(job, obj, now=now, interactive=interactive, new_id=new_id)

    def _check_images(self, job: ChatJob, obj: dict[str, Any]) -> None:
        """What the worker would refuse is refused now, naming the image (the contract already ran
        the worker's parser): more images or inline image bytes than a job may carry (a worker
        holds a job's images in memory), http:// when the setting forbids it, a metadata address."""
        limit = self.settings.max_images_per_job
        inline = 0
        for n, (param, url) in enumerate(image_urls(obj), start=1):
            if n > limit:
                raise InvalidRequest(f"a job carries at most {limit} images", param=param)
            if url.startswith("data:"):
                inline += (len(url) - url.index(",") - 1) * 3 // 4
                if inline > self.settings.max_image_bytes_per_job:
                    raise PayloadTooLarge(
                        f"the job's images hold over {self.settings.max_image_bytes_per_job} bytes",
                        param=param,
                    )
        for param, url in image_urls(obj):
            parsed = parse_url(url)
            if parsed.scheme == "http" and not self.settings.image_urls_allow_http:
                raise InvalidRequest("http:// image URLs are not accepted here; use https://", param=param)
            try:
                self.image_guard.check_url(parsed)
            except UnsafeURL as exc:
                raise InvalidRequest(f"Invalid value for '{param}': {exc}", param=param) from None

    def _prepare(
        self, job: AnyJob, obj: dict[str, Any], *, now: float, interactive: bool, new_id: str | None
    ) -> NewJob:
        # one canonical encoding (sorted keys) is both hashed for idempotency and stored
        try:
            # the model is strict, so the validated input is already well-typed: store it as sent
            # (less job_id and top-level nulls) rather than paying for a pydantic dump per job
            body = obj
            if "job_id" in obj or None in obj.values():
                body = {k: v for k, v in obj.items() if v is not None and k != "job_id"}
            request = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError as exc:  # integers past 64 bits in free-form fields, say
            raise InvalidRequest(f"the job cannot be encoded as JSON: {exc}") from None
        if len(request) > self.settings.max_body_bytes:  # images from files grow the body
            raise PayloadTooLarge(
                f"job body is {len(request)} bytes; the limit is {self.settings.max_body_bytes} bytes"
            )
        image_param = job.first_image_param()
        images, image_chars = image_parts(obj) if image_param else (0, 0)
        prompt = prompt_tokens(request, images, image_chars)
        max_out = job.max_completion_tokens or job.max_tokens
        job_id = job.job_id or new_id or uuid.uuid4().hex

        routed_by = None
        route_spec = None
        model_id = self.catalog.resolve(job.model)
        if model_id is None:
            route_spec = self.catalog.routes.get(job.model)
            if route_spec is None:
                raise ModelNotFound(f"Model '{job.model}' is not available", param="model")
            need = Need(prompt, max_out, images > 0, bool(job.tools or job.functions), bool(job.stream))
            try:
                choice = choose(job.model, route_spec, need, job_id, self._can_serve, self._typical_cost)
            except NoCapableModel as exc:
                raise UnsupportedCapability(str(exc), param="model") from None
            model_id = self.catalog.resolve(choice.model) or choice.model
            routed_by = choice.rule
        fallbacks = job.fallbacks
        if fallbacks is None and route_spec is not None:
            fallbacks = route_spec.fallbacks
        if job.stream_options is not None and not job.stream:
            raise InvalidRequest("stream_options is only allowed with stream: true", param="stream_options")
        # jobs alike in what they ask of models share their route: bulk files repeat a few shapes
        shape = (
            model_id,
            tuple(fallbacks) if fallbacks is not None else None,
            images > 0,
            bool(job.tools or job.functions),
            bool(job.stream),
            job.max_completion_tokens,
            job.max_tokens,
        )
        known = self._routes.get(shape)
        if known is None:
            if len(self._routes) >= 4096:  # a long-lived producer sees endless max_tokens values
                self._routes.clear()
            known = self._routes[shape] = self._route_for(job, model_id, fallbacks)
        route, route_key, route_json = known

        digest = body_digest(request)
        default_deadline = (
            self.settings.interactive_deadline_s if interactive else self.settings.default_deadline_s
        )
        ignored = job.ignored_fields()
        hedge_ms = self._hedge(job, route_spec, interactive)
        lane = self._lane(job, interactive)
        cache = job.cache if job.cache is not None else (route_spec.cache if route_spec else None)
        cached_as, cache_ttl = None, 0
        if cache == "force" or (cache is True and job.temperature == 0):
            cached_as = cache_key(model_id, obj)
            ttl = job.cache_ttl_s or (route_spec.cache_ttl_s if route_spec else None)
            cache_ttl = ttl or self.settings.cache_default_ttl_s
        return NewJob(
            job_id=job_id,
            digest=digest,
            request=request,
            route=route,
            route_json=route_json,
            model_requested=job.model,
            tenant=job.tenant or DEFAULT_TENANT,
            tenant_given=job.tenant is not None,
            created_at=now,
            deadline_at=now + (job.deadline_s or default_deadline),
            metadata=job.metadata,
            reserve_nanos=self.costs.worst_case(
                route_key,
                demand_of(
                    obj,
                    prompt,
                    interactive=interactive,
                    continuations=self.settings.max_continuations,
                    hedged=hedge_ms is not None,
                    images=images,
                ),
            ),
            prompt_tokens=prompt,
            est_tokens=prompt + (max_out or 0),
            routed_by=routed_by,
            cache_key=cached_as,
            cache_ttl=cache_ttl,
            ignored=",".join(ignored) if ignored else None,
            priority=job.priority or "normal",
            webhook=webhook_spec.of_job(job.webhook, self.webhook_guard) if job.webhook is not None else None,
            hedge=hedge_ms,
            lane=lane,
        )

    @staticmethod
    def _lane(job: AnyJob, interactive: bool) -> str | None:
        """The lane the job asks for; ``None`` when it names none (its tenant's default applies to
        submitted jobs, ``now`` to interactive ones). ``service_tier: "flex"`` is the flex lane."""
        lane = job.lane
        if job.service_tier == "flex":
            if lane not in (None, "flex"):
                raise InvalidRequest(
                    f"service_tier 'flex' asks for the flex lane; the job names lane '{lane}'", param="lane"
                )
            lane = "flex"
        if lane == "batch" and job.stream:
            raise InvalidRequest("a streamed job runs now or flex, never in a provider batch", param="lane")
        if lane == "batch" and interactive:
            raise InvalidRequest(
                "lane batch applies to submitted jobs, not the chat calls or HTTP chat endpoints",
                param="lane",
            )
        if lane is None and interactive:
            return "now"
        return lane

    @staticmethod
    def _hedge(job: AnyJob, route_spec: RouteSpec | None, interactive: bool) -> int | None:
        """The job's hedge as its record keeps it: ``None`` none, 0 after the deployment's learned
        percentile, N after N ms. Interactive jobs only: a bulk job has nobody waiting on its latency."""
        hedge = job.hedge
        if hedge not in (None, False) and not interactive:
            raise InvalidRequest(
                "hedge applies to interactive jobs (the HTTP chat endpoints, chat calls), not bulk ones",
                param="hedge",
            )
        if hedge is None and route_spec is not None and interactive:
            hedge = route_spec.hedge
        if hedge is None or hedge is False:
            return None
        return 0 if hedge is True else hedge.after_ms

    def _route_for(
        self, job: AnyJob, model_id: str, fallbacks: list[str] | None
    ) -> tuple[list[str], tuple[str, ...], bytes]:
        """The job's model then its fallbacks, checked against what the job needs of each."""
        route = [model_id]
        for i, name in enumerate(fallbacks or ()):
            fb = self.catalog.resolve(name)
            if fb is None:
                raise ModelNotFound(f"Model '{name}' is not available", param=f"fallbacks[{i}]")
            if fb not in route:
                route.append(fb)
        if job.stream and not self.catalog.models[model_id].capabilities.streaming:
            raise UnsupportedCapability(f"'{model_id}' does not stream", param="stream")
        self._check_capabilities(job, route)
        if fallbacks is None:
            # the catalog's fallbacks apply when the job names none ([] turns them off); those that
            # cannot serve this job (no vision, no tools) are skipped rather than refusing the job
            for fb in self.catalog.models[model_id].fallbacks:
                if fb not in route and self._capable(job, fb):
                    route.append(fb)
        return route, tuple(route), orjson.dumps(route)

    def _can_serve(self, model_id: str, need: Need) -> bool:
        """Whether a model (of an auto route) can serve a request: capabilities, window, deployments."""
        resolved = self.catalog.resolve(model_id)
        if resolved is None or not self.catalog.deployments(resolved):
            return False
        caps = self.catalog.models[resolved].capabilities
        return (
            (caps.vision or not need.vision)
            and (caps.tools or not need.tools)
            and (caps.streaming or not need.stream)
            and (need.max_output or 0) <= caps.max_output
            and need.prompt_tokens + (need.max_output or 0) <= caps.context_window
        )

    def _typical_cost(self, model_id: str, need: Need) -> int:
        resolved = self.catalog.resolve(model_id) or model_id
        return self.costs.typical(resolved, need.prompt_tokens, min(need.max_output or 500, 500))

    def _capable(self, job: AnyJob, model_id: str) -> bool:
        caps = self.catalog.models[model_id].capabilities
        max_out = job.max_completion_tokens or job.max_tokens or 0
        return (
            (caps.vision or job.first_image_param() is None)
            and (caps.tools or not (job.tools or job.functions))
            and max_out <= caps.max_output
        )

    def _check_capabilities(self, job: AnyJob, route: list[str]) -> None:
        image_param = job.first_image_param()
        max_out = job.max_completion_tokens or job.max_tokens
        for i, model_id in enumerate(route):
            caps = self.catalog.models[model_id].capabilities
            where = "model" if i == 0 else f"fallbacks[{i - 1}]"
            if image_param and not caps.vision:
                raise UnsupportedCapability(
                    f"'{model_id}' does not accept images ({where})", param=image_param if i == 0 else where
                )
            if (job.tools or job.functions) and not caps.tools:
                name = "tools" if job.tools else "functions"
                raise UnsupportedCapability(
                    f"'{model_id}' does not support {name} ({where})", param=name if i == 0 else where
                )
            if max_out is not None and max_out > caps.max_output:
                name = "max_completion_tokens" if job.max_completion_tokens else "max_tokens"
                raise InvalidRequest(
                    f"{name} is {max_out}; '{model_id}' returns at most {caps.max_output} tokens",
                    param=name if i == 0 else where,
                )


# reserved keys and fields that do not change what a model answers: two requests that differ only
# in these share a cache entry
_NOT_IN_CACHE_KEY = frozenset(
    {
        "model",
        "stream",
        "stream_options",
        "user",
        "store",
        "service_tier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "prompt_cache_options",
        "safety_identifier",
    }
) | {
    "job_id",
    "fallbacks",
    "deadline_s",
    "tenant",
    "metadata",
    "cache",
    "cache_ttl_s",
    "answer_format",
    "webhook",
}


def cache_key(model_id: str, obj: dict[str, Any]) -> str:
    """The response cache's key: the resolved model and everything of the request that changes its
    answer (messages, sampling, tools, format), canonically encoded and hashed."""
    body = {k: v for k, v in obj.items() if v is not None and k not in _NOT_IN_CACHE_KEY}
    body["model"] = model_id
    return hashlib.blake2b(orjson.dumps(body, option=orjson.OPT_SORT_KEYS), digest_size=20).hexdigest()


def refusal(line: int, error: RouterError) -> dict[str, Any]:
    """The ``--out`` line for an input line refused at validation."""
    return {"line": line, "error": error.to_dict()}
