"""Webhook delivery: the process holding the ``webhooks`` role sends what is due (``deliverer``), one
endpoint at a time as that endpoint allows (``endpoints``), each attempt a bounded, SSRF-guarded
signed POST (``sender``). What is due, and what happened, lives in Redis (``llm_router.webhooks``)."""
