"""Every Redis key, key prefix and pub/sub channel of llm-router, and the Lua that names them.

Python builds keys with the functions below; every Lua script starts with ``LUA_KEYS``, which
defines the same names as Lua locals from these constants, so a key is spelled in one place. arq's
own keys (its job, in-progress and retry keys, its abort set) keep arq's names (``arq.constants``).

All amounts are integer nano-USD. What lives where:

* ``job:<tenant>/<id>`` hash: a job's record (``llm_router.store``); ``req:<tenant>/<id>``: its
  request (canonical JSON) until it ends, apart so that the queued record stays a compact listpack;
  ``stream:<tenant>/<id>``: its token stream. Jobs live inside their tenant (``scoped_id``): the same
  id under two tenants is two jobs, and queues, arq's keys and workers all use the scoped id; users
  see the job id alone.
* ``<queue>:workers`` sorted set: live workers of a queue by last heartbeat; ``worker:<id>``: one
  worker's info, expiring with its heartbeat.
* ``credits:<tenant>`` hash (``balance``, ``reserved``, ``spent``, ``added``); ``active:<tenant>``:
  the tenant's queued and running jobs; ``usage:<day>`` hash of per-tenant, per-model counters.
* ``cache:<digest>``: a cached answer.
* ``routing:<digest>`` hash: a catalog's routing table; ``sick`` hash: deployments not closed;
  ``breaker:<dep>`` hash: a breaker's window; ``probes:<dep>``: half-open probe leases;
  ``rpm:<dep>``/``tpm:<dep>``: rate limits (GCRA); ``conc:<dep>`` hash: its adaptive concurrency
  limit and learned latency, ``slots:<dep>`` sorted set: the jobs calling it now, by lease end
  (``llm_router.concurrency``).
* ``apikeys`` and ``apikeys:meta`` hashes: the HTTP API's keys (sha-256 → tenant, metadata);
  ``apikeys:admin`` set: the hashes of admin keys (the dashboard).
* ``metered`` set: tenants that have a credit hash (what the credits-reserved gauge sums over);
  ``recent`` list: the latest ended jobs' summaries, newest first (the dashboard), capped.
* ``file:<id>`` (and ``:content``, its bytes when files live in Redis), ``files:<tenant>``,
  ``batch:<id>`` (and ``:work``), ``batches:active:<queue>``, ``batches:tenant:<tenant>``: the Batch
  API's files and batches.
* ``tenant:<tenant>`` hash: the tenant's policy (``llm_router.tenants``).
* ``lanes:pending:<dep>``, ``lanes:batch:<id>``, ``lanes:members:<id>``, ``lanes:gone:<id>``,
  ``lanes:open``, ``lanes:due``, ``lanes:turnaround``, ``lanes:stats``: the lanes' provider batches
  (``worker.batcher``).
* ``role:<name>``: the lease of a role exactly one process holds (``llm_router.roles``).
* ``<queue>:ready:<band>:<tenant>``, ``<queue>:tenants:<band>``, ``<queue>:vclock:<band>``,
  ``<queue>:delayed``, ``<queue>:leases``, ``<queue>:wake``: a queue (``worker.claims``);
  ``<queue>:idle`` sorted set and ``<queue>:idler:<worker>`` hash: workers waiting for work, which a
  submit to an empty queue hands its job to, started, on ``<queue>:hand:<worker>``;
  ``<queue>:handed:<worker>`` sorted set: those jobs until the worker's claims acknowledge them;
  ``<queue>:unannounced``: a batch's earlier calls made jobs due, for its last call to announce.
* ``ENDED_CHANNEL:<tenant>``: every job publishes its scoped id here when it ends.
* ``notify:<server>``: a server's own channel; a job it waits for (its record's ``notify`` field)
  sends its whole ended record there (``llm_router.ledger_lua``), so the server answers without a read.
* ``webhooks:due`` sorted set: webhook deliveries by when they are due (``llm_router.webhooks``):
  ``j|<tenant>/<job id>`` or ``b|<batch id>``, a replay with ``|r<n>`` after it; ``webhooks:retry``
  hash: a delivery's attempts so far and since when; ``webhooks:disabled`` hash: endpoints that
  answered 410 (``<tenant> <url>``). A delivery's attempts are fields ``webhook:…`` of its job's
  record (or its batch's hash).
"""

from __future__ import annotations

from arq.constants import abort_jobs_ss

PREFIX = "llm-router:"

RECORD_PREFIX = PREFIX + "job:"
REQUEST_PREFIX = PREFIX + "req:"
STREAM_PREFIX = PREFIX + "stream:"
WORKER_INFO_PREFIX = PREFIX + "worker:"
CREDITS_PREFIX = PREFIX + "credits:"
ACTIVE_PREFIX = PREFIX + "active:"
USAGE_PREFIX = PREFIX + "usage:"
CACHE_PREFIX = PREFIX + "cache:"
ROUTING_PREFIX = PREFIX + "routing:"
SICK_KEY = PREFIX + "sick"
BREAKER_PREFIX = PREFIX + "breaker:"
PROBES_PREFIX = PREFIX + "probes:"
RPM_PREFIX = PREFIX + "rpm:"
TPM_PREFIX = PREFIX + "tpm:"
CONC_PREFIX = PREFIX + "conc:"
SLOTS_PREFIX = PREFIX + "slots:"
APIKEYS_KEY = PREFIX + "apikeys"
APIKEY_META_KEY = PREFIX + "apikeys:meta"
APIKEY_ADMINS_KEY = PREFIX + "apikeys:admin"
METERED_KEY = PREFIX + "metered"
RECENT_KEY = PREFIX + "recent"
FILE_PREFIX = PREFIX + "file:"
TENANT_FILES_PREFIX = PREFIX + "files:"
BATCH_PREFIX = PREFIX + "batch:"
ACTIVE_BATCHES_PREFIX = PREFIX + "batches:active:"
TENANT_BATCHES_PREFIX = PREFIX + "batches:tenant:"
ROLE_PREFIX = PREFIX + "role:"
TENANT_POLICY_PREFIX = PREFIX + "tenant:"
WEBHOOKS_DUE_KEY = PREFIX + "webhooks:due"
WEBHOOKS_RETRY_KEY = PREFIX + "webhooks:retry"
WEBHOOKS_DISABLED_KEY = PREFIX + "webhooks:disabled"
WEBHOOKS_ROLE = "webhooks"  # the role (``role_key``) of the one process that delivers webhooks

# lanes (``llm_router.lanes_lua``, the batcher of ``worker.batcher``)
LANES_PREFIX = PREFIX + "lanes:"
LANES_OPEN_KEY = LANES_PREFIX + "open"  # set: our batch ids not yet done
LANES_TURNAROUND_KEY = LANES_PREFIX + "turnaround"  # hash: deployment → learned batch turnaround (s)
LANES_DUE_KEY = LANES_PREFIX + "due"  # sorted set: batch-lane jobs by when they go back to `now` (ms)
LANES_PENDING_PREFIX = LANES_PREFIX + "pending:"
LANES_MEMBERS_PREFIX = LANES_PREFIX + "members:"
LANES_GONE_PREFIX = LANES_PREFIX + "gone:"
LANES_STATS_KEY = LANES_PREFIX + "stats"  # hash: counters (wasted results and nanos, re-dispatches)
LANES_ROLE = "lanes-batcher"  # the role (``role_key``) of the one process that runs provider batches

ENDED_CHANNEL = PREFIX + "ended"
RUN_JOB = "run_llm_job"  # the one arq function; its only argument is the job id


DEFAULT_TENANT = "default"


def ended_channel(tenant: str) -> str:
    """Where a tenant's jobs announce their end (their scoped ids)."""
    return f"{ENDED_CHANNEL}:{tenant}"


ENDED_PATTERN = ENDED_CHANNEL + ":*"  # every tenant's ends (the HTTP API's one subscription)
# not under ENDED_CHANNEL: the pattern's subscribers must not get a record meant for one server
NOTIFY_PREFIX = PREFIX + "notify:"


def notify_channel(server_id: str) -> str:
    """One server process's channel: the ended records of the jobs it waits for
    (``NewJob.notify``)."""
    return NOTIFY_PREFIX + server_id


def scoped_id(tenant: str, job_id: str) -> str:
    """A job's id inside its tenant, which storage, queues and workers use. Neither a tenant nor a
    job id may contain ``/`` (``contract``), so the pair reads back unambiguously."""
    return f"{tenant}/{job_id}"


def split_scoped(scoped: str) -> tuple[str, str]:
    """(tenant, job id) of a scoped id."""
    tenant, _, job_id = scoped.partition("/")
    return tenant, job_id


def record_key(scoped: str) -> str:
    return RECORD_PREFIX + scoped


def request_key(scoped: str) -> str:
    """A queued or running job's request, a string of its own: in the record it would be the one
    field over Redis' ``hash-max-listpack-value`` (64 B) that turns every queued record into a
    hashtable, ~450 B a job more (``bench/redis_sizing.py``). It expires with the record; the finish
    script moves it into the ended record (a hashtable by then, where a field costs less)."""
    return REQUEST_PREFIX + scoped


def stream_key(scoped: str) -> str:
    """The job's token stream: OpenAI ``chat.completion.chunk`` entries, then an end or error entry."""
    return STREAM_PREFIX + scoped


def workers_key(queue_name: str) -> str:
    """Live workers of a queue (a sorted set scored by last heartbeat): a worker on another queue
    cannot answer this one's jobs."""
    return f"{queue_name}:workers"


def worker_info_key(worker_id: str) -> str:
    return WORKER_INFO_PREFIX + worker_id


def credits_key(tenant: str) -> str:
    return CREDITS_PREFIX + tenant


def active_key(tenant: str) -> str:
    return ACTIVE_PREFIX + tenant


def usage_key(day: int) -> str:
    """Usage counters of one UTC day (days since 1970-01-01)."""
    return f"{USAGE_PREFIX}{day}"


def routing_key(digest: str) -> str:
    return ROUTING_PREFIX + digest


def breaker_key(deployment: str) -> str:
    return BREAKER_PREFIX + deployment


def probes_key(deployment: str) -> str:
    return PROBES_PREFIX + deployment


def conc_key(deployment: str) -> str:
    return CONC_PREFIX + deployment


def slots_key(deployment: str) -> str:
    return SLOTS_PREFIX + deployment


def file_key(file_id: str) -> str:
    return FILE_PREFIX + file_id


def file_content_key(file_id: str) -> str:
    """A file's bytes (a string, read by ranges) when files live in Redis."""
    return FILE_PREFIX + file_id + ":content"


def tenant_files_key(tenant: str) -> str:
    return TENANT_FILES_PREFIX + tenant


def batch_key(batch_id: str) -> str:
    return BATCH_PREFIX + batch_id


def batch_work_key(batch_id: str) -> str:
    return BATCH_PREFIX + batch_id + ":work"


def active_batches_key(queue_name: str) -> str:
    return ACTIVE_BATCHES_PREFIX + queue_name


def tenant_batches_key(tenant: str) -> str:
    return TENANT_BATCHES_PREFIX + tenant


# A queue (``<queue>`` is its name, e.g. ``llm-router:queue``) is several keys, so that a claim
# costs the same however many jobs are held, and tenants share it fairly (see ``worker.claims``):
PRIORITIES = ("high", "normal", "low")  # bands, served in this order


def ready_key(queue: str, band: str, tenant: str) -> str:
    """A tenant's due jobs of one priority band, oldest first (scored by enqueue time)."""
    return f"{queue}:ready:{band}:{tenant}"


def active_tenants_key(queue: str, band: str) -> str:
    """Tenants with due jobs in a band, scored by their virtual time (weighted fair share)."""
    return f"{queue}:tenants:{band}"


def vclock_key(queue: str, band: str) -> str:
    """The band's virtual clock: where a tenant that becomes active starts."""
    return f"{queue}:vclock:{band}"


def delayed_key(queue: str) -> str:
    """Jobs not due yet (deferred), scored by when they are."""
    return f"{queue}:delayed"


def leases_key(queue: str) -> str:
    """Jobs a worker holds, scored by when its lease ends (renewed while it runs them)."""
    return f"{queue}:leases"


def wake_channel(queue: str) -> str:
    """Published when jobs become due on ``queue``: idle workers wake instead of polling."""
    return f"{queue}:wake"


def idle_workers_key(queue: str) -> str:
    """Workers of ``queue`` waiting for work, scored by when their registration lapses (ms)."""
    return f"{queue}:idle"


def idler_key(queue: str, worker_id: str) -> str:
    """Hash: what a submit needs to start a job for a waiting worker (``worker.claims``: its free
    slots, routing key and lease lengths)."""
    return f"{queue}:idler:{worker_id}"


def hand_channel(queue: str, worker_id: str) -> str:
    """One worker's channel: the jobs a submit handed it, started (``worker.claims.Handed``)."""
    return f"{queue}:hand:{worker_id}"


def handed_key(queue: str, worker_id: str) -> str:
    """Sorted set: jobs handed to a worker, by when (ms), until its claims acknowledge them."""
    return f"{queue}:handed:{worker_id}"


def unannounced_key(queue: str) -> str:
    """Set while a batch's calls made jobs due that no wake-up announced yet (its last call does)."""
    return f"{queue}:unannounced"


def tenant_policy_key(tenant: str) -> str:
    return TENANT_POLICY_PREFIX + tenant


def role_key(name: str) -> str:
    return ROLE_PREFIX + name


def lane_pending_key(deployment: str) -> str:
    """Sorted set: batch-lane jobs waiting for a provider batch on ``deployment``, by arrival (ms)."""
    return LANES_PENDING_PREFIX + deployment


def lane_batch_key(batch_id: str) -> str:
    """Hash: one provider batch of ours (deployment, state, remote ids, times, size)."""
    return LANES_PREFIX + "batch:" + batch_id


def lane_members_key(batch_id: str) -> str:
    """Hash: the jobs of a batch not yet ingested nor sent back (scoped id → custom_id)."""
    return LANES_MEMBERS_PREFIX + batch_id


def lane_gone_key(batch_id: str) -> str:
    """Set: the jobs sent back to ``now`` out of a batch (their late results are wasted spend)."""
    return LANES_GONE_PREFIX + batch_id


def _lua_string(value: str) -> str:
    if "'" in value or "\\" in value:
        raise ValueError(f"a key prefix must not need escaping in Lua: {value!r}")
    return f"'{value}'"


# the prelude of every script: the key names above as Lua locals (string constants cost nothing to
# define, so even the bulk submit script, run once per job, carries all of them)
LUA_KEYS = "\n".join(
    f"local {name} = {_lua_string(value)}"
    for name, value in (
        ("P", PREFIX),
        ("RECORD", RECORD_PREFIX),
        ("REQUEST", REQUEST_PREFIX),
        ("CREDITS", CREDITS_PREFIX),
        ("ACTIVE", ACTIVE_PREFIX),
        ("USAGE", USAGE_PREFIX),
        ("CACHE", CACHE_PREFIX),
        ("SICK", SICK_KEY),
        ("BREAKER", BREAKER_PREFIX),
        ("PROBES", PROBES_PREFIX),
        ("RPM", RPM_PREFIX),
        ("TPM", TPM_PREFIX),
        ("CONC", CONC_PREFIX),
        ("SLOTS", SLOTS_PREFIX),
        ("ENDED", ENDED_CHANNEL),
        ("ABORT_SET", abort_jobs_ss),
        ("BATCH", BATCH_PREFIX),
        ("WEBHOOKS_DUE", WEBHOOKS_DUE_KEY),
        ("LANES_PENDING", LANES_PENDING_PREFIX),
        ("LANES_MEMBERS", LANES_MEMBERS_PREFIX),
        ("LANES_GONE", LANES_GONE_PREFIX),
        ("LANES_DUE", LANES_DUE_KEY),
    )
)
