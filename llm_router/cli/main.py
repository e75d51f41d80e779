"""The ``llm-router`` command line.

Exit codes: 0 success, 1 a job failed or was refused (or Redis did not answer within
``LLM_ROUTER_REDIS_TIMEOUT_S``: ``redis_unavailable``), 2 bad usage or input file, 3 timed out
waiting. Errors are one line on stderr: ``error: CODE: message``.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from redis.exceptions import RedisError

from config.settings import Settings
from llm_router.contract import JOB_ID_RE
from llm_router.errors import RouterError, WaitTimeout
from llm_router.gc_tuning import tune_gc
from llm_router.keys import DEFAULT_TENANT

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT = 0, 1, 2, 3


class UsageError(Exception):
    """Bad arguments or an unreadable input file: exit 2."""


USAGE_CODE = "invalid_usage"  # a UsageError's code on its ``error: CODE: message`` line


def _print_json(obj: Any) -> None:
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode() + "\n")


def _err(text: str) -> None:
    print(text, file=sys.stderr)


def _record_json(record: Any) -> dict[str, Any]:
    return record.model_dump(mode="json")


# -- producer commands --------------------------------------------------------------------------


async def _submit(args: argparse.Namespace, settings: Settings) -> int:
    """Submit a JSONL file. The submit has an id; a line without its own ``job_id`` gets
    ``<submit id>-<line>``, so ``--resume SUBMIT_ID`` re-sends the file and only lines not yet accepted
    become jobs (the others are found, never run or charged twice). Ids are printed, and written to
    ``--out``, chunk by chunk as Redis accepts them: a submit cut off half way still hands out the
    ids of what it queued."""
    from producer.producer import Producer, Submitted

    try:
        lines = (
            Path(args.file).read_bytes().splitlines()
            if args.file != "-"
            else sys.stdin.buffer.read().splitlines()
        )
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror}") from None
    numbered: list[tuple[int, Any]] = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
    if args.lane or args.deadline:  # lanes: the file's jobs that name none get these
        from llm_router.cli.lanes import parse_duration, with_defaults

        try:
            deadline_s = parse_duration(args.deadline) if args.deadline else None
        except ValueError as exc:
            raise UsageError(f"--deadline: {exc}") from None
        numbered = [(n, with_defaults(line, args.lane, deadline_s)) for n, line in numbered]
    if args.estimate:
        from llm_router.cli.money import print_estimate

        return print_estimate(numbered, settings, args.json)
    submit_id = args.resume or secrets.token_hex(8)
    if not JOB_ID_RE.fullmatch(f"{submit_id}-1"):
        raise UsageError(f"--resume {submit_id!r} is not a submit id")
    _err(f"submit {submit_id} (if it is cut off: llm-router submit {args.file} --resume {submit_id})")
    out = open(args.out, "wb") if args.out else None  # noqa: SIM115 - closed below, rewritten at the end
    printed = 0
    code = EXIT_OK

    def settled(results: list[Any], upto: int) -> None:
        nonlocal printed, code
        for (n, _), res in zip(numbered[printed:upto], results[printed:upto], strict=True):
            if isinstance(res, Submitted):
                print(res.job_id)
                if out is not None:
                    out.write(orjson.dumps({"line": n, "job_id": res.job_id, "tenant": res.tenant}) + b"\n")
            else:
                _err(f"line {n}: {res.code}: {res.message}")
                code = EXIT_FAILED
                if out is not None:
                    out.write(orjson.dumps({"line": n, "error": res.to_dict()}) + b"\n")
        printed = max(printed, upto)
        sys.stdout.flush()
        if out is not None:
            out.flush()

    try:
        async with await Producer.connect(settings) as producer:
            # a submit is a process of ours, as a worker is: its start-up and the file's lines out of
            # every collection, and collections rare (each cost the submit ~3 µs a job: bench/README.md)
            tune_gc()
            results = await producer.submit_many(
                [line for _, line in numbered],
                allow_files=True,
                tenant=args.tenant,
                ids=(f"{submit_id}-{n}" for n, _ in numbered),
                on_settled=settled,
            )
            if out is not None:
                out.close()
                out = None
            if not (args.wait or args.out):
                return code
            accepted = [r for r in results if isinstance(r, Submitted)]
            records = await _wait_with_progress(producer, accepted, args.timeout)
    finally:
        if out is not None:
            out.close()
    by_job = {(s.tenant, s.job_id): r for s, r in zip(accepted, records, strict=True)}
    if any(r.status != "succeeded" for r in records):
        code = EXIT_FAILED
    if args.out:
        # the handles file becomes the results file, in one rename: never half one, half the other
        tmp = Path(f"{args.out}.partial")
        with open(tmp, "wb") as fh:
            for (n, _), res in zip(numbered, results, strict=True):
                if isinstance(res, Submitted):
                    fh.write(orjson.dumps(_record_json(by_job[(res.tenant, res.job_id)])) + b"\n")
                else:
                    fh.write(orjson.dumps({"line": n, "error": res.to_dict()}) + b"\n")
        tmp.replace(args.out)
    return code


async def _lanes(args: argparse.Namespace, settings: Settings) -> int:
    from llm_router.cli.lanes import lanes_command

    return await lanes_command(args, settings)


async def _wait_with_progress(producer: Any, ids: list[Any], timeout: float | None) -> list[Any]:
    if not ids:
        return []
    if not sys.stderr.isatty():
        return await producer.wait_many(ids, timeout=timeout)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("waiting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
    ) as progress:
        task = progress.add_task("jobs", total=len(ids))
        return await producer.wait_many(
            ids, timeout=timeout, on_progress=lambda done, _total: progress.update(task, completed=done)
        )


async def _status(args: argparse.Namespace, settings: Settings) -> int:
    from producer.producer import Producer

    async with await Producer.connect(settings, tenant=args.tenant) as producer:
        r = await producer.get(args.id)
        cost = f"{r.usage.cost:.9f}" if r.usage else "-"
        print(f"{r.id} {r.status.value} {r.model or r.route[0]} {r.provider or '-'} {cost}")
        return EXIT_FAILED if r.status in ("failed", "cancelled") else EXIT_OK


async def _result(args: argparse.Namespace, settings: Settings) -> int:
    from producer.producer import Producer

    async with await Producer.connect(settings, tenant=args.tenant) as producer:
        r = (
            await producer.wait(args.id, timeout=args.wait)
            if args.wait is not None
            else await producer.get(args.id)
        )
        _print_json(_record_json(r))
        return EXIT_FAILED if r.status in ("failed", "cancelled") else EXIT_OK


async def _cancel(args: argparse.Namespace, settings: Settings) -> int:
    from producer.producer import Producer

    async with await Producer.connect(settings, tenant=args.tenant) as producer:
        r = await producer.cancel(args.id)
        print(f"{r.id} {r.status.value}")
        return EXIT_OK


async def _chat(args: argparse.Namespace, settings: Settings) -> int:
    from producer.producer import Producer

    if args.messages:
        try:
            messages = orjson.loads(args.messages)
        except orjson.JSONDecodeError as exc:
            raise UsageError(f"--messages is not JSON: {exc}") from None
        if not isinstance(messages, list):
            raise UsageError("--messages must be a JSON list of messages")
    else:
        messages = []
    if args.system:
        messages.insert(0, {"role": "system", "content": args.system})
    if args.message:
        messages.append({"role": "user", "content": args.message})
    if not messages:
        raise UsageError("give --message TEXT or --messages JSON")
    job: dict[str, Any] = {"model": args.model, "messages": messages}
    if args.fallbacks:
        job["fallbacks"] = [m.strip() for m in args.fallbacks.split(",") if m.strip()]
    if args.max_tokens:
        job["max_tokens"] = args.max_tokens
    if args.temperature is not None:
        job["temperature"] = args.temperature
    async with await Producer.connect(settings) as producer:
        if args.stream and not args.json:
            params = {k: v for k, v in job.items() if k not in ("model", "messages")}
            async for text in producer.chat_stream(job["model"], job["messages"], **params):
                sys.stdout.write(text)
                sys.stdout.flush()
            sys.stdout.write("\n")
            return EXIT_OK
        return _print_answer(await producer.run_interactive(job, timeout=args.timeout), args.json)


async def _vision(args: argparse.Namespace, settings: Settings) -> int:
    from producer.producer import Producer
    from producer.vision import vision_to_chat

    try:
        job = vision_to_chat(
            {"model": args.model, "image": args.image, "prompt": args.prompt},
            allow_files=True,
            max_bytes=settings.max_body_bytes,
        )
    except RouterError as exc:  # an image file that cannot be read, or is not an image: bad input
        raise UsageError(f"--image: {exc.message}") from None
    async with await Producer.connect(settings) as producer:
        return _print_answer(await producer.run_interactive(job, timeout=args.timeout), args.json)


def _print_answer(record: Any, as_json: bool) -> int:
    if as_json:
        _print_json(_record_json(record))
    else:
        print(record.text() or "")
    return EXIT_OK


async def _breakers(args: argparse.Namespace, settings: Settings) -> int:
    from llm_router.circuit_breaker import BreakerBoard
    from llm_router.redis_client import redis_client

    redis = redis_client(settings)
    try:
        board = BreakerBoard(redis)
        if args.action == "reset":
            if not args.name:
                raise UsageError("breakers reset needs a deployment name (see `llm-router breakers`)")
            found = await board.reset(args.name)
            print(f"{args.name} {'closed' if found else 'had no breaker state'}")
            return EXIT_OK
        rows = await board.list(window_s=settings.breaker_window_s, bucket_s=settings.breaker_bucket_s)
    finally:
        await redis.aclose()
    if args.json:
        _print_json(rows)
        return EXIT_OK
    from rich.console import Console
    from rich.table import Table

    table = Table(title="llm-router breakers")
    columns = ("deployment", "state", "calls", "failures", "consecutive", "trips", "retry in s")
    # the adaptive concurrency limit (llm_router.concurrency): "-" for a deployment without one
    columns += ("limit", "in flight", "latency ms")
    for col in columns:
        table.add_column(col, justify="left" if col in ("deployment", "state") else "right")
    for r in rows:
        limit, latency = r["concurrency_limit"], r["latency_ms"]
        table.add_row(
            r["deployment"],
            r["state"],
            str(r["calls_in_window"]),
            str(r["failures_in_window"]),
            str(r["consecutive_failures"]),
            str(r["trips"]),
            f"{r['seconds_to_retry']:.1f}",
            "-" if limit is None else f"{limit:g}" + (" (slow start)" if r["slow_start"] else ""),
            str(r["in_flight"]),
            "-" if latency is None else f"{latency:.0f}",
        )
    Console(width=None if sys.stdout.isatty() else 140).print(table)
    return EXIT_OK


# -- catalog, worker, simulator, demo -----------------------------------------------------------


def _models(args: argparse.Namespace, settings: Settings) -> int:
    from config.catalog import Catalog
    from llm_router.cli.models import models_json, print_models_table

    catalog = Catalog.load(settings)
    if args.json:
        _print_json(models_json(catalog))
    else:
        print_models_table(catalog)
    return EXIT_OK


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from worker.app import run_worker

    if args.max_jobs:
        settings = settings.model_copy(update={"max_jobs": args.max_jobs})
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    for q in queues:
        settings.queue_for(q)  # an unknown queue name fails here, before anything starts
    run_worker(settings, queues=queues)
    return EXIT_OK


def _simulate(args: argparse.Namespace, settings: Settings) -> int:
    from pydantic import ValidationError

    from llm_router.simulator import FaultRule, SimConfig, serve_forever

    config = SimConfig.from_yaml(args.profile) if args.profile else SimConfig()
    if args.latency_ms:
        lo, _, hi = args.latency_ms.partition(",")
        config = config.model_copy(update={"latency_ms": (float(lo), float(hi or lo))})
    rules = list(config.rules)
    for text in args.fault or ():
        fields = dict(part.split("=", 1) for part in text.split(",") if "=" in part)
        try:
            rules.append(FaultRule.model_validate(fields))
        except ValidationError as exc:
            raise UsageError(f"--fault {text!r}: {exc.errors()[0]['msg']}") from None
    config = config.model_copy(update={"rules": rules})
    # a stand-in upstream that stops 100 ms for a full collection is no provider's: our collector
    # settings, as the server and the worker have them
    tune_gc()
    serve_forever(config, args.host, args.port)
    return EXIT_OK


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from llm_router.cli.demo import run_demo

    return run_demo(live=args.live, jobs=args.jobs, workers=args.workers)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llm-router", description="LLM work as durable jobs.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("submit", help="enqueue one job per JSONL line; print job ids in input order")
    s.add_argument("file", help="JSONL file, or - for stdin")
    s.add_argument("--wait", action="store_true", help="wait for every job to end")
    s.add_argument("--out", help="write one JSON line per input line: the record or the refusal")
    s.add_argument("--timeout", type=float, default=None, help="seconds to wait at most")
    s.add_argument("--tenant", help="the tenant every job belongs to (replaces the lines' own)")
    s.add_argument(
        "--resume",
        metavar="SUBMIT_ID",
        help="re-send a submit that was cut off: only lines not yet accepted become jobs",
    )
    s.add_argument(
        "--estimate", action="store_true", help="print what the file would cost, per model; enqueue nothing"
    )
    s.add_argument("--json", action="store_true", help="with --estimate: JSON instead of a table")
    s.add_argument(
        "--lane",
        choices=("now", "flex", "batch", "auto"),
        help="the lane of the jobs that name none (README Lanes); unset, the tenant's default",
    )
    s.add_argument("--deadline", help="the deadline of the jobs that name none: 90s, 30m, 6h, 2d")
    s.set_defaults(handler=_submit)

    s = sub.add_parser("lanes", help="open provider batches (age, size, expected completion), re-dispatches")
    s.add_argument("--json", action="store_true", help="JSON instead of a table")
    s.set_defaults(handler=_lanes)

    s = sub.add_parser("status", help="one line: id, status, model, provider, cost")
    s.add_argument("id")
    s.add_argument("--tenant", default=DEFAULT_TENANT, help="the job's tenant (a job id names a job in it)")
    s.set_defaults(handler=_status)

    s = sub.add_parser("result", help="the job's record as JSON")
    s.add_argument("id")
    s.add_argument("--tenant", default=DEFAULT_TENANT, help="the job's tenant")
    s.add_argument("--wait", type=float, default=None, metavar="SECONDS")
    s.set_defaults(handler=_result)

    s = sub.add_parser("cancel", help="cancel a queued job")
    s.add_argument("id")
    s.add_argument("--tenant", default=DEFAULT_TENANT, help="the job's tenant")
    s.set_defaults(handler=_cancel)

    s = sub.add_parser("chat", help="one chat completion through the queue")
    s.add_argument("--model", required=True)
    s.add_argument("--message")
    s.add_argument("--system")
    s.add_argument("--messages", help="a JSON list of messages")
    s.add_argument("--fallbacks", help="comma-separated models to try next")
    s.add_argument("--max-tokens", type=int)
    s.add_argument("--temperature", type=float)
    s.add_argument("--stream", action="store_true")
    s.add_argument("--timeout", type=float)
    s.add_argument("--json", action="store_true", help="print the record instead of the text")
    s.set_defaults(handler=_chat)

    s = sub.add_parser("vision", help="ask about an image (URL, path or base64)")
    s.add_argument("--model", required=True)
    s.add_argument("--image", required=True)
    s.add_argument("--prompt", required=True)
    s.add_argument("--timeout", type=float)
    s.add_argument("--json", action="store_true")
    s.set_defaults(handler=_vision)

    s = sub.add_parser("models", help="the catalog: models, prices, capabilities, deployments")
    s.add_argument("--json", action="store_true")
    s.set_defaults(handler=_models)

    s = sub.add_parser(
        "breakers", help="every deployment's breaker (state, failures, time to retry) and concurrency limit"
    )
    s.add_argument("action", nargs="?", choices=["list", "reset"], default="list")
    s.add_argument("name", nargs="?", help="the deployment to reset, e.g. openai/gpt-4o")
    s.add_argument("--json", action="store_true")
    s.set_defaults(handler=_breakers)

    s = sub.add_parser("worker", help="run a worker until SIGTERM")
    s.add_argument("--max-jobs", type=int)
    s.add_argument(
        "--queues",
        default="interactive,bulk",
        help="queues to serve, one arq worker each in this process (interactive is polled every few ms)",
    )
    s.set_defaults(handler=_worker)

    s = sub.add_parser("simulate", help="run the provider simulator")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8090)
    s.add_argument("--profile", help="YAML profile: latency, fault rules, models")
    s.add_argument("--latency-ms", help="MIN[,MAX] milliseconds")
    s.add_argument(
        "--fault",
        action="append",
        metavar="K=V,...",
        help="a fault rule, e.g. model=gpt-4o,kind=status,status=429,retry_after=5 (repeatable)",
    )
    s.set_defaults(handler=_simulate)

    s = sub.add_parser("demo", help="run the whole system on this machine with the simulator")
    s.add_argument("--live", action="store_true", help="use real providers and keys (spends money)")
    s.add_argument("--jobs", type=int, default=60)
    s.add_argument("--workers", type=int, default=2)
    s.set_defaults(handler=_demo)

    from llm_router.cli.health import add_commands as add_health_commands  # health
    from llm_router.cli.money import add_commands as add_money_commands  # credits, usage, compare
    from llm_router.cli.serve import add_commands as add_server_commands  # serve, keys
    from llm_router.cli.tenants import add_commands as add_tenant_commands  # tenants set|show
    from llm_router.cli.webhooks import add_commands as add_webhook_commands  # webhooks …

    add_money_commands(sub)

    add_server_commands(sub)
    add_tenant_commands(sub)
    add_health_commands(sub)
    add_webhook_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from llm_router.log_setup import configure_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging()
    try:
        settings = Settings()
        result = args.handler(args, settings)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        return int(result)
    except UsageError as exc:
        _err(f"error: {USAGE_CODE}: {exc}")
        return EXIT_USAGE
    except WaitTimeout as exc:
        _err(f"error: {exc.code}: {exc.message}")
        return EXIT_TIMEOUT
    except RouterError as exc:
        _err(f"error: {exc.code}: {exc.message}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except RedisError as exc:  # unreachable, or silent past LLM_ROUTER_REDIS_TIMEOUT_S
        _err(f"error: redis_unavailable: {exc}")
        return EXIT_FAILED
    except OSError as exc:
        _err(f"error: connection_error: {exc}")
        return EXIT_FAILED
