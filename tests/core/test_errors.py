"""The error tree and its table: one class per code, every row used, records rebuilt to the same class,
and the README's error table in step with ``ERROR_TABLE``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llm_router import errors
from llm_router.errors import _BY_CODE, ERROR_TABLE, RouterError, _index

README = Path(__file__).resolve().parents[2] / "README.md"

# rows no exception class carries, each with the one place that uses its code
CODES_WITHOUT_A_CLASS = {
    "internal_error": "RouterError's own code: a bug, or a misconfiguration",
    "method_not_allowed": "producer/http/app.py answers a 405 with it",
    "breaker_open": "worker/route_walk.py: an attempt skipped without a call",
    "rate_limit_reached": "worker/route_walk.py: an attempt skipped without a call",
}


def _leaves() -> list[type[RouterError]]:
    return [
        k
        for k in vars(errors).values()
        if isinstance(k, type) and issubclass(k, RouterError) and not k.__subclasses__()
    ]


@pytest.mark.parametrize("klass", _leaves(), ids=lambda k: k.__name__)
def test_each_class_has_a_row_and_a_record_rebuilds_it(klass: type[RouterError]) -> None:
    assert klass.code in ERROR_TABLE
    exc = klass("boom", param="p")
    again = RouterError.from_dict(exc.to_dict())
    assert type(again) is klass
    assert again.to_dict() == exc.to_dict()


def test_every_row_is_raised_by_one_class_or_named_here() -> None:
    by_class = {k.code for k in _leaves()}
    assert len(by_class) == len(_leaves())  # no two classes share a code
    assert set(ERROR_TABLE) - by_class == set(CODES_WITHOUT_A_CLASS)
    assert set(_BY_CODE) == by_class


def test_two_classes_with_one_code_are_refused_at_import() -> None:
    class Root(RouterError):
        pass

    class One(Root):
        code = "same"

    class Two(Root):
        code = "same"

    with pytest.raises(TypeError, match="share the code 'same'"):
        _index(Root)


def test_the_callers_and_the_providers_refusals_differ_in_code_only() -> None:
    ours = errors.InvalidRequest("bad temperature", param="temperature")
    theirs = errors.UpstreamInvalidRequest("bad temperature", http_status=400)
    assert (ours.status, ours.type) == (theirs.status, theirs.type) == (400, "invalid_request_error")
    assert (ours.code, theirs.code) == ("invalid_request", "upstream_invalid_request")
    assert not theirs.spec.fallback and not theirs.spec.breaker and not theirs.retryable
    # an id the caller cannot see is a 404; a model gone at a provider is the provider's fault
    assert errors.ResourceNotFound("no job 'x'").status == 404
    assert errors.UpstreamNotFound("model: x").status == 502


def test_the_readme_documents_every_code_with_its_status_and_type() -> None:
    documented: dict[str, tuple[int, str]] = {}
    for line in README.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[1].isdigit() and cells[0].startswith("`"):
            for code in re.findall(r"`([a-z_]+)`", cells[0]):
                documented[code] = (int(cells[1]), cells[2])
    assert documented == {code: (spec.status, spec.type) for code, spec in ERROR_TABLE.items()}
