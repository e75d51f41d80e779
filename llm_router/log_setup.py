"""structlog configuration for the CLI's processes, and the job context every log line of a job carries.

``LLM_ROUTER_LOG_FORMAT=json|console`` picks the lines' form: JSON objects (production: one per
line, for a log shipper) or readable ``key=value`` lines (development). Unset, a terminal gets
console lines and anything else (a container, a file, a pipe) JSON. The standard library's loggers
(arq, aiohttp, asyncio) go through the same renderer, so a JSON deployment writes JSON only.

Every line logged while a job runs carries its ``job_id``, ``tenant``, ``model``, ``provider`` and
``attempt`` (and ``trace_id`` when it is traced): the worker puts the job's context in place with
``bind_job`` and ``add_job_context`` reads it only when a line is actually written, so jobs that
log nothing (most) pay nothing per attempt.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, MutableMapping
from contextvars import ContextVar, Token
from typing import Any, Protocol

import orjson
import structlog

FORMATS = ("json", "console")


class JobContext(Protocol):
    """What a running job tells its log lines (``worker.observe.JobObs`` is one)."""

    def log_fields(self) -> Mapping[str, Any]: ...


_job: ContextVar[JobContext | None] = ContextVar("llm_router_job", default=None)


def bind_job(context: JobContext | None) -> Token[JobContext | None]:
    """Make ``context`` the job of every line logged in this task from now on (``None``: no job)."""
    return _job.set(context)


def current_job() -> JobContext | None:
    """The job this task is running, if any."""
    return _job.get()


def add_job_context(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor: the running job's fields, without overriding what the line says."""
    context = _job.get()
    if context is not None:
        for key, value in context.log_fields().items():
            if value is not None:
                event.setdefault(key, value)
    return event


def log_format(env: Mapping[str, str] = os.environ, *, tty: bool | None = None) -> str:
    """``json`` or ``console``: the setting, else console on a terminal and JSON elsewhere."""
    chosen = (env.get("LLM_ROUTER_LOG_FORMAT") or "").strip().lower()
    if chosen in FORMATS:
        return chosen
    if tty is None:
        tty = sys.stderr.isatty()
    return "console" if tty else "json"


def _dumps(obj: Any, **_kw: Any) -> str:
    return orjson.dumps(obj, default=repr).decode()


def configure_logging(level: str | None = None, fmt: str | None = None) -> None:
    name = (level or os.environ.get("LLM_ROUTER_LOG_LEVEL") or "INFO").upper()
    numeric = getattr(logging, name, logging.INFO)
    chosen = fmt if fmt in FORMATS else log_format()
    bad = (os.environ.get("LLM_ROUTER_LOG_FORMAT") or "").strip().lower()
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if chosen == "console"
        else structlog.processors.JSONRenderer(serializer=_dumps)
    )
    # a JSON line carries the traceback as text under "exception" (the console renderer prints
    # exc_info itself): without this, `log.exception` wrote `"exc_info": true` and nothing else
    tracebacks: list[Any] = [] if chosen == "console" else [structlog.processors.format_exc_info]
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            add_job_context,
            structlog.processors.add_log_level,
            timestamper,
            *tracebacks,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tracebacks, renderer],
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                add_job_context,
                structlog.stdlib.add_log_level,
                timestamper,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(max(numeric, logging.WARNING))
    if bad and bad not in FORMATS:
        structlog.get_logger("llm_router").warning(
            "unknown LLM_ROUTER_LOG_FORMAT; expected json or console", value=bad, using=chosen
        )
