"""Run-time settings, read from the environment once and passed down as one object."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_CATALOG = Path(__file__).with_name("catalog.yaml")


class Settings(BaseSettings):
    """Everything tunable about producers and workers; env vars are ``LLM_ROUTER_<NAME>``."""

    model_config = SettingsConfigDict(
        env_prefix="LLM_ROUTER_", extra="ignore", frozen=True, populate_by_name=True
    )

    # a secret: the URL may carry Redis' password, which must not show in a repr
    redis_url: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("REDIS_URL", "LLM_ROUTER_REDIS_URL")
    )
    # Redis through Sentinel instead of one URL: "host:port,host:port" and the name the sentinels know
    # the primary by (a `redis+sentinel://host:port,host:port/name/db` REDIS_URL says the same)
    redis_sentinels: str | None = None
    redis_sentinel_master: str = "mymaster"
    # passwords kept out of the URL (and out of a ConfigMap): the data nodes', and the sentinels' own
    # when they require one (Sentinel's requirepass is separate from the data nodes')
    redis_password: SecretStr | None = None
    redis_sentinel_password: SecretStr | None = None
    # how often each process asks the sentinels which node is the primary: the longest it keeps
    # writing to a live primary the sentinels have replaced (writes there are lost in its resync)
    redis_sentinel_check_s: float = Field(default=1.0, gt=0)
    # every client's connect and reply timeout: a Redis that stops answering (stopped, partitioned,
    # a blocked primary) fails a call within this rather than hanging it; the HTTP API then answers
    # 503 redis_unavailable with Retry-After, the CLI exits 1 saying so
    redis_timeout_s: float = Field(default=5.0, gt=0)
    # an evicting Redis (maxmemory-policy other than noeviction) silently drops queued jobs, answers
    # and credit records: processes refuse to start on one unless this is set
    accept_eviction: bool = False
    config: Path = Field(default=DEFAULT_CATALOG, description="catalog YAML (LLM_ROUTER_CONFIG)")
    upstream: str | None = Field(
        default=None, description="replaces the origin of every provider URL (LLM_ROUTER_UPSTREAM)"
    )
    queue_name: str = "llm-router:queue"
    # interactive jobs (chat calls, the HTTP chat endpoint) have their own queue, polled every few
    # ms; unset, it is the bulk queue's name + ":interactive"
    interactive_queue_name: str = ""
    interactive_poll_delay_s: float = 0.005

    # job contract
    record_ttl_s: int = 7 * 24 * 3600
    default_deadline_s: float = 24 * 3600
    interactive_deadline_s: float = 600
    max_body_bytes: int = 20 * 1024 * 1024
    enqueue_chunk: int = 1000

    # worker
    max_jobs: int = 200
    poll_delay_s: float = 0.05
    # workers claim when woken (a submit publishes), when slots free behind a full claim, when a
    # deferred job comes due, and, for what a lost wake-up missed, every this many seconds
    claim_safety_poll_s: float = 1.0
    # a producer waiting for jobs hears their ends; it re-reads what it still waits for this often
    wait_safety_poll_s: float = 5.0
    queue_read_limit: int | None = None
    job_timeout_s: float = 1800
    # the global defaults of the catalog's `timeouts:` block (connect_s, headers_s, total_s;
    # first_token_s and idle_s are the stream settings below); see worker.http.Timeouts
    call_timeout_s: float = 120  # total_s: an unstreamed call, from connect to its whole answer
    connect_timeout_s: float = 10  # connect_s
    # headers_s: how long any call (streamed or not) waits for its response headers; unset, a
    # streamed call waits stream_ttft_s for them and an unstreamed one (whose headers come with its
    # whole answer) call_timeout_s
    headers_timeout_s: float | None = None
    # passes over the route after transient failures; the deadline bounds them in any case
    retry_passes: int = 1000
    retry_backoff_s: float = 1.0
    retry_backoff_max_s: float = 60.0
    # retries of the same deployment within a run (full jitter, Retry-After honoured), only while
    # the wait is short and retries stay under a share of this worker's calls; the longest wait a
    # job sits out in its worker slot, a 429's Retry-After included (the catalog's retry_after.max_s
    # per model or deployment overrides it for 429s)
    same_deployment_retries: int = 1
    max_inline_wait_s: float = 2.0
    retry_budget_ratio: float = 0.2
    retry_after_cap_s: float = 300.0  # a provider's Retry-After is honoured up to this
    heartbeat_interval_s: float = 2.0
    heartbeat_ttl_s: float = 10.0
    # a job's claim expires this long after its worker stops refreshing it (SIGKILL, OOM, a lost host)
    lease_s: float = 10.0
    lease_refresh_s: float | None = None
    # on SIGTERM: stop taking jobs, let running ones finish this long, then put the rest back
    shutdown_grace_s: float = 25.0
    # how long a finished job's record write keeps retrying while Redis is away, how long a worker
    # waits for Redis at start, and how long it rides out a Redis that refuses writes (a read-only
    # replica, out of memory) before it exits with the reason
    redis_retry_s: float = 60.0

    # streaming: a stream must start within this, then never go quiet longer than this (the
    # catalog's timeouts.first_token_s and timeouts.idle_s override them per provider/deployment)
    stream_ttft_s: float = 30.0
    stream_idle_s: float = 30.0
    stream_maxlen: int = 20_000  # entries kept per job stream (a whole answer, chunk by chunk)
    # a job's token stream is kept this long after its last chunk (and after the job ends): the
    # record holds the whole answer, the stream only serves followers
    stream_ttl_s: int = 3600
    # a stream a client follows that breaks after tokens went out is continued on a fallback this
    # many times at most (each continuation is a call the job's reservation covers)
    max_continuations: int = 1

    # circuit breakers (per deployment, fleet-wide; the catalog may override per provider/deployment)
    breaker_window_s: float = 60.0
    breaker_bucket_s: float = 10.0
    breaker_failure_rate: float = 0.5
    breaker_min_calls: int = 10
    breaker_consecutive: int = 5
    # open for cooldown_s, doubled per trip up to max_cooldown_s (jitter only shortens it): a
    # recovered deployment is probed, and carries traffic again, within max_cooldown_s of recovering
    breaker_cooldown_s: float = 5.0
    breaker_max_cooldown_s: float = 20.0
    breaker_probes: int = 1
    # a 429 without Retry-After marks the deployment unavailable this long (auth_failed and
    # upstream_not_found longer), unless it has an adaptive concurrency limit: then the 429 reads as
    # "too many at once" and cuts the limit instead
    rate_limited_default_s: float = 1.0

    # adaptive concurrency per deployment, fleet-wide (llm_router.concurrency; the catalog's
    # `concurrency: {initial, max}` overrides the first two per provider or deployment): the in-flight
    # limit starts at `initial` and grows x 1.5 per round of calls (slow start), then grows by one per
    # round; a 429, a 5xx, a timeout or latency above `latency_tolerance` x the learned baseline cuts
    # it to `backoff` x the calls then in flight (at most x itself), once per round. max 0: no limit
    concurrency_initial: int = Field(default=10, ge=1)
    concurrency_max: int = Field(default=1000, ge=0)
    concurrency_backoff: float = Field(default=0.9, gt=0, lt=1)
    concurrency_latency_tolerance: float = Field(default=2.0, gt=1)
    # a job whose model's deployments are all at their limit waits this long on its worker (woken as
    # the worker's calls give slots back, worker.room) before it is deferred off its slot
    concurrency_wait_s: float = Field(default=2.0, ge=0)
    # hedged requests (interactive jobs that ask, `hedge: true`): a second attempt starts on the next
    # deployment when no first token came by this percentile of the deployment's learned time to
    # first token, once it has this many samples (before that, only `hedge: {after_ms}` hedges)
    hedge_percentile: float = Field(default=0.9, gt=0, lt=1)
    hedge_min_samples: int = Field(default=20, ge=1)
    # a provider's content filter ends the job unless this lets another model try
    fallback_on_content_filter: bool = False
    disable_cooldown_s: float = 300.0

    # HTTP API (`llm-router serve`)
    server_max_body_bytes: int = 25 * 1024 * 1024  # larger bodies answer 413 unread
    server_max_jobs_per_request: int = 10_000  # `{"jobs": [...]}` in one POST /v1/jobs
    tenant_max_queued: int = 100_000  # a tenant's queued + running jobs; past it, 429 too_many_queued
    auth_disabled: bool = False  # no API keys: every caller is tenant "default" (local use only)
    api_keys_file: Path | None = None  # YAML {key: tenant} read at start, besides keys in Redis
    files_max_bytes: int = 100 * 1024 * 1024  # one uploaded batch file
    files_dir: Path | None = None  # keep uploaded files here instead of in Redis
    # slow and heavy clients: a JSON body must arrive whole within server_body_timeout_s, an upload
    # may go quiet that long and must end within files_upload_timeout_s (408 request_timeout);
    # a body over server_large_body_bytes is parsed and validated on one of server_parse_threads
    # threads, off the event loop, a tenant's such bodies one at a time (its max_large_requests)
    server_body_timeout_s: float = Field(default=30.0, gt=0)
    files_upload_timeout_s: float = Field(default=600.0, gt=0)
    server_large_body_bytes: int = 1024 * 1024
    server_parse_threads: int = Field(default=2, ge=1)
    # per-tenant defaults (llm-router tenants set TENANT max_http_requests=… overrides them): HTTP
    # requests in progress at once on one server process (429 too_many_requests past it), large
    # bodies in parsing at once, and a tenant's files (count and bytes: 403 quota_exceeded past it)
    tenant_max_http_requests: int = 256
    tenant_max_large_requests: int = 1
    tenant_max_files: int = 1000
    tenant_max_file_bytes: int = 1024 * 1024 * 1024

    # money: credits are reserved at submit, settled at finish (tenants without credits are not metered)
    usage_ttl_days: int = 400
    cache_default_ttl_s: int = 3600

    # images per job, and their bytes (inline data and fetched URLs): Anthropic's own request limits
    # (100 images, 32 MB), the strictest of the large providers; a tenant's policy may change them
    max_images_per_job: int = 100
    max_image_bytes_per_job: int = 32 * 1024 * 1024
    # jobs of one worker process holding fetched images at once: with the per-job cap, what bounds
    # a worker's image memory
    image_inline_jobs: int = 8
    # a job whose runs end by worker death more than this many times fails (worker_lost)
    max_lost_runs: int = 3
    # observability: metrics (`/metrics` on the server; on a worker when metrics_port is set, 0 picking
    # a free port), traces (OpenTelemetry, the `[otel]` extra: on with `otel` or the standard
    # OTEL_EXPORTER_OTLP_ENDPOINT), health and the dashboard
    metrics_port: int | None = None
    metrics_host: str = "0.0.0.0"
    metrics_tenant_label: bool = False  # `tenant` on tokens and cost: one series per tenant and model
    metrics_scan_limit: int = 1000  # queue entries a scrape looks at to find the oldest waiting job
    metrics_read_timeout_s: float = 2.0  # a scrape's Redis reads; past it the fleet gauges are left out
    otel: bool = False
    otel_sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    ready_timeout_s: float = 1.0  # /readyz: Redis must answer a PING within this
    health_timeout_s: float = 2.0  # `llm-router health`: Redis must answer within this
    health_max_age_s: float = 300.0  # `llm-router health`: an older waiting job means degraded
    admin_tenants: str = ""  # comma-separated tenants every key of which is an admin key (the dashboard)
    dashboard_refresh_s: float = 2.0  # how often the dashboard's live view is sampled and pushed

    # images: the worker fetches an image URL only for a provider that needs the bytes (SSRF-guarded)
    image_fetch_max_bytes: int = 20 * 1024 * 1024
    image_fetch_timeout_s: float = 10.0
    image_fetch_allow_private: bool = False  # loopback, private, link-local and metadata addresses
    # networks (comma-separated CIDRs) image fetches may reach even when private ones are refused
    image_fetch_allowlist: str = ""
    # http:// image URLs (fetched by the worker through the guard, or by the provider): off refuses them
    image_urls_allow_http: bool = True

    # webhooks (Standard Webhooks): signing secrets derive from this key, the tenant and a version
    # (never stored); without it no process delivers, and deliveries wait in Redis
    webhook_master_key: SecretStr | None = None
    # networks (comma-separated CIDRs) webhook receivers may be on although private (an internal
    # receiver; 127.0.0.1/32 in tests): every other private or internal address is refused
    webhook_allow: str = ""
    webhook_default_url: str = ""  # the endpoint of tenants that set none (`webhooks set` sets one)
    webhooks_in_worker: bool = True  # `llm-router worker` also runs the delivery role
    webhook_timeout_s: float = 10.0  # one attempt, connection included
    webhook_connect_timeout_s: float = 5.0
    webhook_max_response_bytes: int = 4096  # of a receiver's answer, read at most (kept: 200 chars)
    # retries: exponential backoff with jitter from backoff_s to backoff_max_s (Retry-After honoured
    # up to backoff_max_s) for at most max_age_s after the job ended
    webhook_backoff_s: float = 5.0
    webhook_backoff_max_s: float = 3600.0
    webhook_max_age_s: float = 24 * 3600.0
    webhook_poll_s: float = 0.05  # how often the deliverer looks for due deliveries
    webhook_claim_batch: int = 200  # deliveries taken per look
    # a taken delivery is due again this long after, should its deliverer die with it
    webhook_lease_s: float = 60.0
    webhook_role_ttl_s: float = 10.0  # another process takes over deliveries this long after a death
    # how soon the deliverer sees what `llm-router webhooks` changed (a rotation, an enabled endpoint)
    webhook_refresh_s: float = 2.0
    # per endpoint (URL): attempts in flight, and deliveries waiting in the deliverer's memory
    webhook_endpoint_concurrency: int = 16
    webhook_endpoint_queue: int = 256
    webhook_max_in_flight: int = 2048  # deliveries a deliverer holds, all endpoints
    # an endpoint's breaker: open after this many failures in a row (timeouts, refused connections,
    # 429 and 5xx), for a cooldown doubling after each failed probe
    webhook_breaker_failures: int = 5
    webhook_breaker_cooldown_s: float = 30.0
    webhook_breaker_max_cooldown_s: float = 600.0

    # lanes (README "Lanes"): the lane of submitted jobs that name none (a tenant's `default_lane`
    # overrides it; chat calls and the HTTP chat endpoints always run `now`)
    default_lane: Literal["now", "flex", "batch", "auto"] = "now"
    lanes_in_worker: bool = True  # `llm-router worker` also runs the batcher role
    lanes_role_ttl_s: float = 10.0  # another process takes the batcher over this long after a death
    lanes_poll_s: float = 5.0  # how often the batcher forms, polls and watches batches
    lanes_batch_size: int = Field(default=1000, ge=1)  # a batch is formed at this many jobs...
    lanes_batch_age_s: float = 60.0  # ...or when its oldest job waited this long
    # the expected time of a lane, before the fleet has learned it (batch turnaround is learned from
    # the batches that completed); a batch-lane job goes back to `now` when its deadline minus the
    # `now` lane's expected time minus the margin has come and its batch is unfinished
    lanes_now_expected_s: float = 30.0
    lanes_flex_expected_s: float = 120.0
    lanes_batch_expected_s: float = 6 * 3600.0
    lanes_margin_s: float = 60.0
    lanes_completion_window: str = "24h"  # of the provider batches created

    @model_validator(mode="after")
    def _derived_names(self) -> Settings:
        if not self.interactive_queue_name:
            object.__setattr__(self, "interactive_queue_name", f"{self.queue_name}:interactive")
        return self

    def queue_for(self, kind: str) -> str:
        """The arq queue of ``interactive`` or ``bulk`` jobs."""
        if kind == "interactive":
            return self.interactive_queue_name
        if kind == "bulk":
            return self.queue_name
        raise ValueError(f"unknown queue {kind!r} (interactive or bulk)")

    @property
    def image_fetch_networks(self) -> tuple[str, ...]:
        """``image_fetch_allowlist`` as CIDR strings."""
        return tuple(n.strip() for n in self.image_fetch_allowlist.split(",") if n.strip())

    @property
    def admin_tenant_set(self) -> frozenset[str]:
        return frozenset(t.strip() for t in self.admin_tenants.split(",") if t.strip())

    @property
    def webhook_networks(self) -> tuple[str, ...]:
        """``webhook_allow`` as CIDR strings."""
        return tuple(n.strip() for n in self.webhook_allow.split(",") if n.strip())

    @property
    def effective_lease_refresh_s(self) -> float:
        return self.lease_refresh_s or self.lease_s / 3

    @property
    def effective_queue_read_limit(self) -> int:
        # every worker reads the same front of the queue and the claim walks past jobs other workers
        # hold, so a read must reach beyond what the fleet is running; arq's default (max_jobs)
        # would leave a second worker idle behind the first one's jobs
        return self.queue_read_limit or max(self.max_jobs * 4, 500)
