"""A bounded schemathesis run over the served ``/openapi.json``: no 5xx but the documented 502/503,
and every answer's status, content type and body as the document says.

Deterministic (``derandomize``) and small, so it fits the HTTP suite's time budget; ``make chaos``-style
longer runs can raise ``LLM_ROUTER_FUZZ_HTTP_EXAMPLES``.
"""

from __future__ import annotations

import os
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import content_type_conformance, response_schema_conformance, status_code_conformance
from schemathesis.generation import GenerationMode

EXAMPLES = int(os.environ.get("LLM_ROUTER_FUZZ_HTTP_EXAMPLES", "8"))
DOCUMENTED_5XX = {502, 503}
# the Messages front answers a job's failure and missing capacity with Anthropic's 5xx (500 api_error,
# 504, 529); a crash is a 500 too there, told apart by its code, and fails here like anywhere
ANTHROPIC_5XX = {500, 504, 529}


def documented_5xx(path: str, response: requests.Response) -> bool:
    if response.status_code in DOCUMENTED_5XX:
        return True
    return (
        path == "/v1/messages"
        and response.status_code in ANTHROPIC_5XX
        and response.json()["error"].get("code") != "internal_error"
    )


def test_openapi_document_holds_under_fuzzing(api: Any) -> None:
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    headers = api.headers("fuzz")
    session = requests.Session()
    seen: dict[str, set[int]] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 19
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=EXAMPLES,
                derandomize=True,
                database=None,
                deadline=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                label = case.operation.label
                response = case.call(base_url=api.url, session=session, headers=headers, timeout=15)
                seen.setdefault(label, set()).add(response.status_code)
                assert response.status_code < 500 or documented_5xx(case.operation.path, response), (
                    label,
                    response.status_code,
                    response.text[:500],
                )
                case.validate_response(
                    response,
                    checks=[status_code_conformance, content_type_conformance, response_schema_conformance],
                    headers=headers,
                )

            try:
                run()
            except Unsatisfiable:
                # nothing to get wrong: an operation without parameters or body has no negative cases
                assert mode is GenerationMode.NEGATIVE, operation.label
    # the run reached every operation, and not only its refusals
    assert set(seen) == {op.label for op in operations}
    assert any(s < 300 for codes in seen.values() for s in codes)
