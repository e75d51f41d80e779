"""``GET /v1/jobs/{id}/webhooks`` and ``GET /v1/batches/{id}/webhooks``: what became of the webhook of
a job or batch of the caller's tenant: its URL, ``webhook-id``, state (``none``, ``waiting`` for
the end, ``pending``, ``delivered``, ``failed``, ``disabled``), next attempt, and every attempt
(time, status, latency, error, outcome). Another tenant's id answers 404, like an unknown one.
"""

from __future__ import annotations

from aiohttp import web

from llm_router.contract import JOB_ID_RE
from llm_router.errors import ResourceNotFound
from llm_router.keys import scoped_id
from llm_router.webhooks.outbox import BATCH, JOB, Outbox
from producer.http.batches import RUNNER
from producer.http.errors import json_response

OUTBOX = web.AppKey("llm_router.webhook_outbox", Outbox)


async def job_webhooks(request: web.Request) -> web.Response:
    job_id = request.match_info["id"]
    found = None
    if JOB_ID_RE.fullmatch(job_id):
        found = await request.app[OUTBOX].log(JOB, scoped_id(request["tenant"], job_id))
    if found is None:
        raise ResourceNotFound(f"no job '{job_id}'", param="id")
    return json_response({"job_id": job_id, **found.as_dict()})


async def batch_webhooks(request: web.Request) -> web.Response:
    batch_id = request.match_info["batch_id"]
    await request.app[RUNNER].owned(request["tenant"], batch_id)  # 404 for another tenant's batch
    found = await request.app[OUTBOX].log(BATCH, batch_id)
    if found is None:
        raise ResourceNotFound(f"No batch found with id '{batch_id}'", param="batch_id")
    return json_response({"batch_id": batch_id, **found.as_dict()})


def setup(app: web.Application) -> None:
    """Add the delivery log routes (after ``batches.setup``, whose runner they use)."""
    app[OUTBOX] = Outbox(app["redis"])
    app.router.add_get("/v1/jobs/{id}/webhooks", job_webhooks)
    app.router.add_get("/v1/batches/{batch_id}/webhooks", batch_webhooks)
