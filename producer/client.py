"""The sync client: the producer's calls for code that has no event loop of its own."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from config.catalog import Catalog
from config.settings import Settings
from llm_router.contract import JobRecord
from llm_router.errors import RouterError
from llm_router.keys import DEFAULT_TENANT
from producer.producer import Producer, Submitted


class Client:
    """Blocking wrapper around ``Producer``; not for use inside a running event loop. ``tenant`` is
    the tenant of its jobs and reads (``default`` unless given), as for ``Producer.connect``."""

    def __init__(
        self,
        settings: Settings | None = None,
        catalog: Catalog | None = None,
        *,
        tenant: str = DEFAULT_TENANT,
    ) -> None:
        self._runner = asyncio.Runner()
        self._producer: Producer = self._runner.run(Producer.connect(settings, catalog, tenant=tenant))

    def close(self) -> None:
        self._runner.run(self._producer.close())
        self._runner.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def producer(self) -> Producer:
        return self._producer

    def submit(self, job: dict[str, Any] | bytes | str) -> Submitted:
        return self._runner.run(self._producer.submit(job))

    def submit_many(self, jobs: Iterable[dict[str, Any] | bytes | str]) -> list[Submitted | RouterError]:
        return self._runner.run(self._producer.submit_many(jobs))

    def get(self, job_id: str, *, tenant: str | None = None) -> JobRecord:
        return self._runner.run(self._producer.get(job_id, tenant=tenant))

    def wait(self, job_id: str, timeout: float | None = None, *, tenant: str | None = None) -> JobRecord:
        return self._runner.run(self._producer.wait(job_id, timeout, tenant=tenant))

    def wait_many(
        self, job_ids: Sequence[str | Submitted], timeout: float | None = None, *, tenant: str | None = None
    ) -> list[JobRecord]:
        return self._runner.run(self._producer.wait_many(job_ids, timeout, tenant=tenant))

    def cancel(self, job_id: str, *, tenant: str | None = None) -> JobRecord:
        return self._runner.run(self._producer.cancel(job_id, tenant=tenant))

    def chat(self, model: str, messages: list[dict[str, Any]], **params: Any) -> dict[str, Any]:
        """The OpenAI ``chat.completion`` for one chat; raises ``JobFailed`` when the job fails."""
        return self._runner.run(self._producer.chat(model, messages, **params))

    def chat_stream(self, model: str, messages: list[dict[str, Any]], **params: Any) -> Iterator[str]:
        """The answer's text piece by piece, as the worker streams it."""
        pieces = self._producer.chat_stream(model, messages, **params)
        while True:
            try:
                yield self._runner.run(anext(pieces))
            except StopAsyncIteration:
                return

    def vision(self, model: str, image: str, prompt: str, **params: Any) -> dict[str, Any]:
        return self._runner.run(self._producer.vision(model, image, prompt, **params))

    def compare_models(self, models: Sequence[str], message: str, **params: Any) -> dict[str, dict[str, Any]]:
        """Per model: ``response`` (text), ``latency`` (s), ``cost`` (USD), ``error`` (or ``None``)."""
        return self._runner.run(self._producer.compare_models(models, message, **params))
