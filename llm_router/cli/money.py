"""The CLI's money and choice commands: ``credits``, ``usage``, ``compare`` and ``submit --estimate``."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from typing import Any

import orjson

from config.settings import Settings
from llm_router.errors import RouterError

EXIT_OK, EXIT_FAILED = 0, 1


def _print_json(obj: Any) -> None:
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode() + "\n")


def _usd(value: float) -> str:
    return f"${value:,.6f}"


def print_estimate(lines: list[tuple[int, Any]], settings: Settings, as_json: bool) -> int:
    """What the lines would cost, per model, without enqueueing anything."""
    from rich.console import Console
    from rich.table import Table

    from config.catalog import Catalog
    from producer.cost_report import estimate
    from producer.validation import Validator

    report = estimate(Validator(Catalog.load(settings), settings), lines)
    rows = [m.as_dict() for m in sorted(report.models.values(), key=lambda m: -m.high_nanos)]
    if as_json:
        _print_json(
            {
                "models": rows,
                "total": report.total.as_dict(),
                "refused": [{"line": n, "error": e.to_dict()} for n, e in report.refused],
            }
        )
    else:
        table = Table(title="estimate (nothing enqueued)")
        for col in ("model", "jobs", "prompt tokens (est.)", "cost: prompt only", "cost: + max output"):
            table.add_column(col, justify="left" if col == "model" else "right")
        for r in [*rows, report.total.as_dict()]:
            table.add_row(
                r["model"],
                f"{r['jobs']:,}",
                f"{r['prompt_tokens']:,}",
                _usd(r["cost_low"]),
                _usd(r["cost_high"]),
            )
        Console().print(table)
        lanes = Table(title="cost per lane (prompt + max output at the model's first deployment)")
        for col in ("model", "now", "flex", "batch"):
            lanes.add_column(col, justify="left" if col == "model" else "right")
        for r in [*rows, report.total.as_dict()]:
            by_lane = r["cost_by_lane"]
            cells = (_usd(by_lane[k]) if k in by_lane else "-" for k in ("now", "flex", "batch"))
            lanes.add_row(r["model"], *cells)
        Console().print(lanes)
        for number, exc in report.refused:
            print(f"line {number}: {exc.code}: {exc.message}", file=sys.stderr)
    return EXIT_FAILED if report.refused else EXIT_OK


async def _credits(args: argparse.Namespace, settings: Settings) -> int:
    from llm_router.credits import Ledger
    from llm_router.redis_client import redis_client

    redis = redis_client(settings)
    try:
        ledger = Ledger(redis)
        if args.action == "add":
            balance = await ledger.add(args.tenant, args.amount)
        else:
            found = await ledger.show(args.tenant)
            if found is None:
                print(f"{args.tenant}: no credits (not metered)")
                return EXIT_OK
            balance = found
    finally:
        await redis.aclose()
    if args.json:
        _print_json(balance.as_dict())
    else:
        print(
            f"{balance.tenant}: available {_usd(balance.available)}  balance {_usd(balance.balance)}  "
            f"reserved {_usd(balance.reserved)}  spent {_usd(balance.spent)}  added {_usd(balance.added)}"
        )
    return EXIT_OK


async def _usage(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console
    from rich.table import Table

    from llm_router.cli.main import UsageError  # at call time: main imports this module
    from llm_router.credits import Ledger
    from llm_router.redis_client import redis_client

    try:
        since = dt.date.fromisoformat(args.since) if args.since else None
    except ValueError:
        raise UsageError(f"--since {args.since!r} is not a date (YYYY-MM-DD)") from None
    redis = redis_client(settings)
    try:
        rows = await Ledger(redis).usage(tenant=args.tenant, since=since)
    finally:
        await redis.aclose()
    if args.json:
        _print_json([r.as_dict() for r in rows])
        return EXIT_OK
    table = Table(title="usage")
    for col in ("day", "tenant", "model", "jobs", "failed", "prompt tokens", "completion tokens", "cost"):
        table.add_column(col, justify="left" if col in ("day", "tenant", "model") else "right")
    for r in rows:
        table.add_row(
            r.day,
            r.tenant,
            r.model,
            f"{r.jobs:,}",
            f"{r.failed:,}",
            f"{r.prompt_tokens:,}",
            f"{r.completion_tokens:,}",
            _usd(r.cost),
        )
    Console().print(table)
    return EXIT_OK


async def _compare(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console
    from rich.table import Table

    from producer.producer import Producer, comparison_by_model

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    params: dict[str, Any] = {}
    if args.max_tokens:
        params["max_tokens"] = args.max_tokens
    if args.temperature is not None:
        params["temperature"] = args.temperature
    async with await Producer.connect(settings) as producer:
        parent_id = await producer.compare(
            models, [{"role": "user", "content": args.message}], fallback=args.fallback, **params
        )
        record = await producer.wait(parent_id, timeout=args.timeout or settings.interactive_deadline_s + 5)
    if args.json:
        _print_json(record.model_dump(mode="json"))
    else:
        table = Table(title=f"compare {parent_id}")
        for col in ("model", "latency s", "tokens in/out", "cost", "answer / error"):
            table.add_column(
                col, justify="right" if col in ("latency s", "cost") else "left", overflow="fold"
            )
        for name, side in comparison_by_model(record, models).items():
            err = side["error"]
            text = f"[red]{err['code']}: {err['message']}[/red]" if err else (side["response"] or "")
            table.add_row(
                name,
                f"{side['latency']:.3f}" if side["latency"] is not None else "-",
                f"{side['prompt_tokens'] or 0}/{side['completion_tokens'] or 0}",
                _usd(side["cost"] or 0.0),
                text[:400],
            )
        Console().print(table)
    sides = record.comparison or []
    return EXIT_OK if sides and all(s.get("error") is None for s in sides) else EXIT_FAILED


def add_commands(sub: Any) -> None:
    s = sub.add_parser("credits", help="a tenant's credit: add USD, or show balance, reserved, spent")
    s.add_argument("action", choices=["add", "show"])
    s.add_argument("tenant")
    s.add_argument("amount", nargs="?", help="USD to add (add only)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(handler=_credits_checked)

    s = sub.add_parser("usage", help="jobs, tokens and cost per tenant, model and day")
    s.add_argument("--tenant")
    s.add_argument("--since", help="YYYY-MM-DD (default: 30 days ago)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(handler=_usage)

    s = sub.add_parser("compare", help="one prompt to several models, side by side")
    s.add_argument("--models", required=True, help="comma-separated")
    s.add_argument("--message", required=True)
    s.add_argument("--max-tokens", type=int)
    s.add_argument("--temperature", type=float)
    s.add_argument(
        "--fallback", action="store_true", help="let each model fall back (off: an honest comparison)"
    )
    s.add_argument("--timeout", type=float)
    s.add_argument("--json", action="store_true", help="print the compare record")
    s.set_defaults(handler=_compare)


def _credits_checked(args: argparse.Namespace, settings: Settings) -> Any:
    if args.action == "add" and args.amount is None:
        raise RouterError("credits add needs an amount in USD", code="invalid_request", param="amount")
    return _credits(args, settings)
