"""``llm-router tenants set|show``: per-tenant policy (``llm_router.tenants``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from config.settings import Settings
from llm_router.errors import InvalidRequest


def add_commands(sub: Any) -> None:
    """Add ``tenants`` to the CLI's subparsers."""
    s = sub.add_parser("tenants", help="per-tenant policy: set TENANT key=value..., show TENANT")
    s.add_argument("action", choices=["set", "show"])
    s.add_argument("tenant")
    s.add_argument("values", nargs="*", metavar="KEY=VALUE", help="set: knobs to set (an empty value unsets)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(handler=tenants)


async def tenants(args: argparse.Namespace, settings: Settings) -> int:
    from llm_router.cli.main import UsageError
    from llm_router.redis_client import redis_client
    from llm_router.tenants import KNOBS, TenantPolicies, parse_value

    values: dict[str, str] = {}
    for item in args.values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{item!r} is not KEY=VALUE")
        values[key] = value
    if args.action == "set" and not values:
        raise UsageError("tenants set needs at least one KEY=VALUE")
    if args.action == "show" and values:
        raise UsageError("tenants show takes no KEY=VALUE")
    try:  # a bad knob or value is bad usage (exit 2), checked before Redis is asked
        for name, raw in values.items():
            if raw or name not in KNOBS:  # an empty value unsets a known knob
                parse_value(name, raw)
    except InvalidRequest as exc:
        raise UsageError(exc.message) from None
    redis = redis_client(settings)
    try:
        policies = TenantPolicies(redis, settings, cache_s=0)
        policy = await (policies.set(args.tenant, values) if values else policies.get(args.tenant))
    finally:
        await redis.aclose()
    table = policy.as_dict()
    if args.json:
        sys.stdout.write(
            orjson.dumps({"tenant": args.tenant, "policy": table}, option=orjson.OPT_INDENT_2).decode()
        )
        sys.stdout.write("\n")
        return 0
    for name, row in table.items():
        source = "set" if row["set"] else "default"
        print(f"{name:<26} {row['value']!s:<14} {source:<8} {row['help']}")
    return 0
