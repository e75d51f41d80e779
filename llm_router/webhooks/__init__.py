"""Signed webhooks: a job or a batch tells its caller that it ended, at least once, verifiably from us.

The parts, each a module of its own:

* ``spec``: what a job or batch carries (``{"url", "include"}``), checked at submit by the core's URL
  parser and SSRF guard with the webhook allowlist (``LLM_ROUTER_WEBHOOK_ALLOW``).
* ``signing``: Standard Webhooks signatures (``webhook-id``, ``webhook-timestamp``,
  ``webhook-signature: v1,<base64 HMAC-SHA256 of id.timestamp.body>``) with ``whsec_`` secrets
  derived from the master key, the tenant and a version: never stored; two sign during a rotation.
* ``events``: the bodies (``job.succeeded`` … ``batch.cancelled``) and their stable ``webhook-id``.
* ``outbox``: the deliveries in Redis. A job's end makes its delivery due in the same Lua step
  (``job_ended`` in ``llm_router.ledger_lua``; a batch's in ``producer.http.batch_runner``), so no
  crash falls between the two. A deliverer takes due deliveries with a lease (a dead one's come due
  again), and writes each attempt into the job's record (``webhook:…`` fields), readable by
  ``GET /v1/jobs/{id}/webhooks`` and ``llm-router webhooks log``.

The deliverer itself (HTTP, per-endpoint breakers and concurrency) is ``worker.webhooks``.
"""
