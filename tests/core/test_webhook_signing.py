"""Signatures the ``standardwebhooks`` package verifies, secrets derived (never stored) and rotated,
bodies and their ``webhook-id``, and the ``webhook`` key checked at submit."""

from __future__ import annotations

import base64
import time

import orjson
import pytest
from redis.asyncio import Redis
from standardwebhooks import Webhook, WebhookVerificationError

from config.settings import Settings
from llm_router.contract import ChatJob, invalid_from_validation
from llm_router.errors import InvalidRequest
from llm_router.keys import tenant_policy_key
from llm_router.webhooks import spec
from llm_router.webhooks.events import JOB_FIELDS, batch_body, job_body, webhook_id
from llm_router.webhooks.signing import Secrets, SecretState, derive_key, secret_text, sign

MASTER = b"a master key only tests know"
BODY = b'{"type":"job.succeeded","data":{"id":"j1"}}'


def headers(keys: list[bytes], msg_id: str = "msg_1", ts: int | None = None) -> dict[str, str]:
    ts = int(time.time()) if ts is None else ts
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(keys, msg_id, ts, BODY),
    }


def test_a_signature_verifies_with_the_standardwebhooks_package() -> None:
    key = derive_key(MASTER, "acme", 1)
    secret = secret_text(key)
    assert secret.startswith("whsec_") and base64.b64decode(secret[6:]) == key and len(key) == 32
    assert Webhook(secret).verify(BODY, headers([key])) == orjson.loads(BODY)
    with pytest.raises(WebhookVerificationError):  # another tenant's secret
        Webhook(secret_text(derive_key(MASTER, "other", 1))).verify(BODY, headers([key]))
    with pytest.raises(WebhookVerificationError):  # a body changed on the way
        Webhook(secret).verify(BODY + b" ", headers([key]))
    with pytest.raises(WebhookVerificationError):  # a replay of an old message
        Webhook(secret).verify(BODY, headers([key], ts=int(time.time()) - 3600))


def test_secrets_derive_from_master_tenant_and_version_alone() -> None:
    assert derive_key(MASTER, "acme", 1) == derive_key(MASTER, "acme", 1)
    distinct = {
        derive_key(MASTER, "acme", 1),
        derive_key(MASTER, "acme", 2),
        derive_key(MASTER, "acme2", 1),
        derive_key(b"another master", "acme", 1),
        derive_key(MASTER, "acme\x001", 1),
    }
    assert len(distinct) == 5


def test_during_a_rotation_both_secrets_sign_and_either_verifies() -> None:
    old, new = derive_key(MASTER, "acme", 1), derive_key(MASTER, "acme", 2)
    state = SecretState(version=2, previous_until=time.time() + 60)
    assert state.versions(time.time()) == (2, 1)
    assert state.versions(time.time() + 120) == (2,)
    both = headers([new, old])
    assert both["webhook-signature"].count("v1,") == 2 and " " in both["webhook-signature"]
    for key in (old, new):
        Webhook(secret_text(key)).verify(BODY, both)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret_text(old)).verify(BODY, headers([new]))


async def test_rotate_bumps_the_version_and_stores_no_secret(bare_redis: Redis) -> None:
    secrets = Secrets(bare_redis, MASTER)
    assert await secrets.state("acme") == SecretState(1, 0.0)
    state = await secrets.rotate("acme", 3600)
    assert state.version == 2 and state.previous_until == pytest.approx(time.time() + 3600, abs=5)
    assert (await secrets.rotate("acme", 0)).version == 3
    assert await secrets.state("acme") == SecretState(3, 0.0)
    stored = await bare_redis.hgetall(tenant_policy_key("acme"))
    assert set(stored) == {b"webhook_secret_version", b"webhook_previous_until"}
    for version in (1, 2, 3):
        secret = secrets.secret("acme", version)
        assert not any(secret.encode() in v or secret[6:].encode() in v for v in stored.values())


def test_a_job_body_is_its_summary_and_its_response_only_when_asked() -> None:
    fields = dict.fromkeys(JOB_FIELDS)
    fields.update(
        status=b"succeeded",
        created_at=b"1700000000.5",
        finished_at=b"1700000001.25",
        model_requested=b"fast",
        model=b"gpt-4o-mini",
        provider=b"openai",
        usage=b'{"prompt_tokens":3,"completion_tokens":2,"cost":1.5e-06,"cost_nanos":1500}',
        metadata=b'{"row":7}',
        response=b'{"choices":[{"message":{"content":"hello"}}]}',
    )
    event, body = job_body("j1", list(fields.values()), [])
    doc = orjson.loads(body)
    assert event == doc["type"] == "job.succeeded"
    assert doc["timestamp"] == "2023-11-14T22:13:21.250Z"
    data = doc["data"]
    assert data["id"] == "j1" and data["status"] == "succeeded" and data["cost"] == 1.5e-06
    assert data["usage"]["cost_nanos"] == 1500 and data["metadata"] == {"row": 7}
    assert (data["model"], data["provider"], data["model_requested"]) == ("gpt-4o-mini", "openai", "fast")
    assert "response" not in data and data["error"] is None
    _, with_response = job_body("j1", list(fields.values()), ["response"])
    assert orjson.loads(with_response)["data"]["response"]["choices"][0]["message"]["content"] == "hello"

    failed = {**fields, "status": b"failed", "error": b'{"code":"timeout"}', "usage": None}
    event, body = job_body("j1", list(failed.values()), [])
    assert event == "job.failed" and orjson.loads(body)["data"]["error"] == {"code": "timeout"}


def test_a_batch_body_is_the_batch_object() -> None:
    doc = orjson.loads(batch_body({"id": "batch_1", "object": "batch", "status": "expired"}, 1700000000))
    assert doc["type"] == "batch.expired" and doc["data"]["id"] == "batch_1"


def test_the_webhook_id_is_stable_per_job_end() -> None:
    first = webhook_id("j", "acme/j1", b"1700000000.5")
    assert first == webhook_id("j", "acme/j1", "1700000000.5") and first.startswith("msg_")
    assert first != webhook_id("j", "acme/j1", b"1700000999.0")  # the id reused by a later job
    assert first != webhook_id("j", "other/j1", b"1700000000.5")


GUARD = spec.webhook_guard(Settings(_env_file=None, webhook_allow="127.0.0.1/32"))
JOB = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("webhook", "param"),
    [
        ({"url": "ftp://example.com/x"}, "webhook.url"),
        ({"url": "https://user:pw@example.com/x"}, "webhook.url"),
        ({"url": "https://example.com", "include": ["request"]}, "webhook.include[0]"),
        ({"url": "https://example.com", "secret": "x"}, "webhook.secret"),
        ({}, "webhook.url"),
        ("https://example.com", "webhook"),
        (True, "webhook"),
    ],
)
def test_a_malformed_webhook_is_refused_naming_its_field(webhook: object, param: str) -> None:
    with pytest.raises(Exception) as caught:
        ChatJob.model_validate({**JOB, "webhook": webhook})
    assert invalid_from_validation(caught.value).param == param  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://hooks.example.com/x", True),
        ("http://127.0.0.1:9/x", True),  # in the webhook allowlist
        ("http://127.0.0.2:9/x", False),
        ("http://10.1.2.3/x", False),
        ("http://[::1]/x", False),
        ("http://169.254.169.254/latest", False),  # metadata: never
        ("http://[::ffff:10.0.0.1]/x", False),
    ],
)
def test_the_guard_checks_a_webhook_at_submit(url: str, allowed: bool) -> None:
    job = ChatJob.model_validate({**JOB, "webhook": {"url": url}})
    if allowed:
        assert orjson.loads(spec.of_job(job.webhook, GUARD) or b"{}")["url"] == url
    else:
        with pytest.raises(InvalidRequest, match="not allowed") as caught:
            spec.of_job(job.webhook, GUARD)
        assert caught.value.param == "webhook.url"


def test_webhook_false_turns_even_the_default_off() -> None:
    assert spec.of_job(ChatJob.model_validate({**JOB, "webhook": False}).webhook, GUARD) == b""
    assert spec.of_job(ChatJob.model_validate(JOB).webhook, GUARD) is None


def test_a_batch_webhook_takes_a_url_and_nothing_to_include() -> None:
    assert orjson.loads(spec.of_batch({"url": "https://h.example.com/b"}, GUARD) or b"") == {
        "url": "https://h.example.com/b",
        "include": [],
    }
    assert spec.of_batch(False, GUARD) == b"" and spec.of_batch(None, GUARD) is None
    for bad, param in (
        ({"url": "https://h.example.com", "include": ["response"]}, "webhook.include"),
        ({"url": "nope"}, "webhook.url"),
        ({"url": "http://10.0.0.1/"}, "webhook.url"),
        ("https://h.example.com", "webhook"),
    ):
        with pytest.raises(InvalidRequest) as caught:
            spec.of_batch(bad, GUARD)
        assert caught.value.param == param, bad
