"""``llm-router webhooks``: the operator's commands for signed completion webhooks.

``set TENANT URL`` (the tenant's default endpoint; prints its signing secret), ``rotate TENANT
[--grace 24h]`` (a new secret; the old one keeps signing through the grace period), ``show TENANT``,
``enable TENANT URL`` (after a 410 disabled it), ``log ID`` and ``replay ID`` (a job's, or a
batch's), and ``run`` (the delivery loop as a process of its own). Secrets go to stdout only, the
moment they are asked for: they are derived, never stored, and never logged.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from config.settings import Settings
from llm_router.errors import InvalidRequest
from llm_router.keys import DEFAULT_TENANT, scoped_id

EXIT_OK, EXIT_USAGE = 0, 2
BATCH_ID = re.compile(r"batch_[0-9a-f]{32}")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``24h``, ``30m``, ``90s``, ``2d`` or plain seconds."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise InvalidRequest(f"--grace {text!r} is not a duration (e.g. 24h, 30m, 0)", param="grace")
    return float(match[1]) * _UNITS[match[2]]


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if ts else "-"


def add_commands(sub: Any) -> None:
    """Add ``webhooks`` and its actions to the CLI's subparsers."""
    p = sub.add_parser("webhooks", help="signed completion webhooks: endpoints, secrets, delivery logs")
    actions = p.add_subparsers(dest="action", required=True)

    s = actions.add_parser("set", help="the tenant's default endpoint ('' unsets); prints its secret")
    s.add_argument("tenant")
    s.add_argument("url")
    s.set_defaults(handler=_set)

    s = actions.add_parser("rotate", help="a new signing secret; the old one signs too for --grace")
    s.add_argument("tenant")
    s.add_argument("--grace", default="24h", help="how long the old secret keeps signing (default 24h)")
    s.set_defaults(handler=_rotate)

    s = actions.add_parser("show", help="the tenant's endpoint, secret version and disabled endpoints")
    s.add_argument("tenant")
    s.add_argument("--json", action="store_true")
    s.set_defaults(handler=_show)

    s = actions.add_parser("enable", help="deliver to an endpoint again after it answered 410")
    s.add_argument("tenant")
    s.add_argument("url")
    s.set_defaults(handler=_enable)

    s = actions.add_parser("log", help="a job's (or batch's) deliveries: state and every attempt")
    s.add_argument("id", help="a job id, or a batch id (batch_…)")
    s.add_argument("--tenant", default=DEFAULT_TENANT, help="the job's tenant")
    s.add_argument("--json", action="store_true")
    s.set_defaults(handler=_log)

    s = actions.add_parser("replay", help="deliver a job's (or batch's) event again, same webhook-id")
    s.add_argument("id", help="a job id, or a batch id (batch_…)")
    s.add_argument("--tenant", default=DEFAULT_TENANT, help="the job's tenant")
    s.set_defaults(handler=_replay)

    s = actions.add_parser("run", help="deliver webhooks in this process (one process of a fleet does)")
    s.set_defaults(handler=_run)


def _target(args: argparse.Namespace) -> tuple[str, str]:
    """(kind, ref) of a job or batch id given on the command line."""
    from llm_router.contract import JOB_ID_RE
    from llm_router.webhooks.outbox import BATCH, JOB

    if BATCH_ID.fullmatch(args.id):
        return BATCH, args.id
    if not JOB_ID_RE.fullmatch(args.id):
        raise InvalidRequest(f"{args.id!r} is not a job or batch id", param="id")
    return JOB, scoped_id(args.tenant, args.id)


async def _set(args: argparse.Namespace, settings: Settings) -> int:
    from llm_router.redis_client import redis_client
    from llm_router.tenants import TenantPolicies
    from llm_router.webhooks.outbox import Outbox
    from llm_router.webhooks.signing import Secrets, master_key
    from llm_router.webhooks.spec import check_url, webhook_guard

    if args.url:
        master = master_key(settings)  # before anything is written: a secret must be printable
        check_url(args.url, webhook_guard(settings), param="url")
    redis = redis_client(settings)
    try:
        await TenantPolicies(redis, settings).set(args.tenant, {"webhook_url": args.url})
        if not args.url:
            print(f"tenant {args.tenant}: no default webhook endpoint", file=sys.stderr)
            return EXIT_OK
        await Outbox(redis).enable(args.tenant, args.url)
        secrets = Secrets(redis, master)
        state = await secrets.state(args.tenant)
        print(secrets.secret(args.tenant, state.version))
    finally:
        await redis.aclose()
    print(
        f"tenant {args.tenant}: bulk jobs and batches without a webhook of their own report to "
        f"{args.url}, signed with the secret above (version {state.version}); give it to the receiver "
        "now: it is derived, never stored",
        file=sys.stderr,
    )
    return EXIT_OK


async def _rotate(args: argparse.Namespace, settings: Settings) -> int:
    from llm_router.redis_client import redis_client
    from llm_router.webhooks.signing import Secrets, master_key

    master = master_key(settings)
    grace = parse_duration(args.grace)
    redis = redis_client(settings)
    try:
        secrets = Secrets(redis, master)
        state = await secrets.rotate(args.tenant, grace)
    finally:
        await redis.aclose()
    print(secrets.secret(args.tenant, state.version))
    until = f"until {_when(state.previous_until)}" if state.previous_until else "no longer (no grace)"
    print(
        f"tenant {args.tenant}: secret version {state.version} signs from now on; version "
        f"{state.version - 1} signs too {until}",
        file=sys.stderr,
    )
    return EXIT_OK


async def _show(args: argparse.Namespace, settings: Settings) -> int:
    from llm_router.redis_client import redis_client
    from llm_router.tenants import TenantPolicies
    from llm_router.webhooks.outbox import Outbox
    from llm_router.webhooks.signing import SecretState

    redis = redis_client(settings)
    try:
        policy = await TenantPolicies(redis, settings, cache_s=0).get(args.tenant)
        disabled = await Outbox(redis).disabled()
    finally:
        await redis.aclose()
    state = SecretState.of(policy.stored)
    mine = {k.partition(" ")[2]: v for k, v in disabled.items() if k.partition(" ")[0] == args.tenant}
    out = {
        "tenant": args.tenant,
        "url": policy.get("webhook_url") or None,
        "url_set": "webhook_url" in policy.stored,
        "secret_version": state.version,
        "signing_versions": list(state.versions(time.time())),
        "previous_signs_until": state.previous_until or None,
        "disabled": mine,
    }
    if args.json:
        sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
        return EXIT_OK
    print(f"tenant {args.tenant}: default endpoint {out['url'] or '-'}")
    versions = ", ".join(str(v) for v in out["signing_versions"])
    print(f"secret version {state.version}; signing with {versions}")
    if state.previous_until > time.time():
        print(f"version {state.version - 1} signs until {_when(state.previous_until)}")
    for url, info in mine.items():
        print(f"disabled: {url} (410 at {_when(info.get('at'))}; `llm-router webhooks enable`)")
    return EXIT_OK


async def _enable(args: argparse.Namespace, settings: Settings) -> int:
    from llm_router.redis_client import redis_client
    from llm_router.webhooks.outbox import Outbox

    redis = redis_client(settings)
    try:
        was = await Outbox(redis).enable(args.tenant, args.url)
    finally:
        await redis.aclose()
    print(f"{args.url}: {'enabled' if was else 'was not disabled'} for tenant {args.tenant}")
    return EXIT_OK


async def _log(args: argparse.Namespace, settings: Settings) -> int:
    from llm_router.errors import JobNotFound
    from llm_router.redis_client import redis_client
    from llm_router.webhooks.outbox import Outbox

    kind, ref = _target(args)
    redis = redis_client(settings)
    try:
        found = await Outbox(redis).log(kind, ref)
    finally:
        await redis.aclose()
    if found is None:
        raise JobNotFound(f"no job or batch '{args.id}' (unknown or expired)", param="id")
    if args.json:
        out = {"id": args.id, **found.as_dict()}
        sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
        return EXIT_OK
    print(
        f"{args.id}: {found.state}  {found.event or '-'}  {found.url or '-'}  webhook-id {found.webhook_id}"
    )
    if found.next_attempt_at:
        print(f"next attempt at {_when(found.next_attempt_at)}")
    for a in found.attempts:
        latency = f"{a['latency_ms']:.1f} ms" if a.get("latency_ms") is not None else "-"
        delivery = f"replay {a['delivery']}" if a["delivery"] else "original"
        print(
            f"{_when(a['at'])}  {delivery} #{a['attempt']}  {a['status'] or '-'}  {latency}  "
            f"{a['outcome']}  {a.get('error') or ''}".rstrip()
        )
    return EXIT_OK


async def _replay(args: argparse.Namespace, settings: Settings) -> int:
    from llm_router.redis_client import redis_client
    from llm_router.webhooks.outbox import Outbox

    kind, ref = _target(args)
    redis = redis_client(settings)
    try:
        outbox = Outbox(redis)
        found = await outbox.log(kind, ref)
        if found is not None and found.url and await outbox.disabled_info(found.tenant, found.url):
            raise InvalidRequest(
                f"{found.url} is disabled (it answered 410): `llm-router webhooks enable {found.tenant} "
                f"{found.url}` first",
                param="id",
            )
        member = await outbox.replay(kind, ref, args.id)
    finally:
        await redis.aclose()
    webhook_id = found.webhook_id if found else "-"
    print(f"{args.id}: replay {member.rpartition('|r')[2]} due now (webhook-id {webhook_id})")
    return EXIT_OK


def _run(args: argparse.Namespace, settings: Settings) -> int:
    import uvloop

    from llm_router.webhooks.signing import master_key

    master_key(settings)  # refuse to start a deliverer that cannot sign
    uvloop.run(_deliver(settings))
    return EXIT_OK


async def _deliver(settings: Settings) -> None:
    import signal

    from llm_router.redis_client import redis_client
    from worker.webhooks.deliverer import run_deliveries

    redis = redis_client(settings)
    task = asyncio.ensure_future(run_deliveries(redis, settings))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    print("delivering webhooks (the process holding the role does; Ctrl-C stops)", file=sys.stderr)
    try:
        await task
    except asyncio.CancelledError:
        pass
    finally:
        await redis.aclose()
