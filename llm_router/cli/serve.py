"""``llm-router serve`` and ``llm-router keys``: the HTTP API's commands, added to the CLI's parser."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

from config.settings import Settings


def add_commands(sub: Any) -> None:
    """Add ``serve`` and ``keys`` to the CLI's subparsers (``sub`` from ``add_subparsers``)."""
    s = sub.add_parser("serve", help="run the HTTP API (OpenAI- and Gemini-compatible, /v1/jobs)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument(
        "--no-auth",
        action="store_true",
        help="no API keys: every caller is tenant 'default' (local use only)",
    )
    s.set_defaults(handler=serve)

    s = sub.add_parser("keys", help="API keys of the HTTP API: create TENANT, list, revoke KEY|PREFIX")
    s.add_argument("action", choices=["create", "list", "revoke"])
    s.add_argument(
        "name", nargs="?", help="create: the tenant; revoke: the key itself, or its prefix from `keys list`"
    )
    s.add_argument("--json", action="store_true")
    s.add_argument("--admin", action="store_true", help="create: the key also opens the dashboard")
    s.set_defaults(handler=keys)


def serve(args: argparse.Namespace, settings: Settings) -> int:
    from producer.http.app import run_server

    if args.no_auth:
        settings = settings.model_copy(update={"auth_disabled": True})
    run_server(settings, args.host, args.port)
    return 0


async def keys(args: argparse.Namespace, settings: Settings) -> int:
    import orjson

    from llm_router.redis_client import redis_client
    from producer.http.auth import ApiKeys

    if args.action in ("create", "revoke") and not args.name:
        # exit 2 (usage) like the CLI's own UsageError, which this module does not import: under
        # `python -m llm_router.cli` that class lives in __main__, not in llm_router.cli
        what = "a tenant" if args.action == "create" else "a key or its prefix (see `llm-router keys list`)"
        print(f"error: keys {args.action} needs {what}", file=sys.stderr)
        return 2
    redis = redis_client(settings)
    try:
        store = ApiKeys(redis, keys_file=settings.api_keys_file, admin_tenants=settings.admin_tenant_set)
        if args.action == "create":
            key = await store.create(args.name, admin=args.admin)
            # the one place a key is ever shown: stdout only, never logged
            print(key)
            print(f"tenant {args.name}: keep this key now, it cannot be shown again", file=sys.stderr)
            return 0
        if args.action == "revoke":
            info = await store.revoke(args.name)
            print(f"revoked {info.prefix} (tenant {info.tenant})")
            return 0
        rows = await store.list()
    finally:
        await redis.aclose()
    if args.json:
        out: list[dict[str, Any]] = [
            {
                "prefix": r.prefix,
                "tenant": r.tenant,
                "created_at": r.created_at,
                "source": r.source,
                "admin": r.admin,
            }
            for r in rows
        ]
        sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    for r in rows:
        created = (
            datetime.fromtimestamp(r.created_at, UTC).strftime("%Y-%m-%d %H:%M") if r.created_at else "-"
        )
        print(f"{r.prefix}…  {r.tenant}  {created}  {r.source}{'  admin' if r.admin else ''}")
    return 0
