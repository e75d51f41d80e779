"""The README's compatibility matrix is the one this run produced (this file runs last in the suite).

A stale README (a case added, renamed, or no longer passing) fails here; ``make compat-matrix`` writes
the section from a run instead (``LLM_ROUTER_COMPAT_WRITE_README=1``). A run of part of the suite
(``-k``, one file) cannot tell, and skips.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llm_router.testing import compat_matrix

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_matrix_is_this_runs(compat_run: tuple[list[compat_matrix.Case], int, int]) -> None:
    cases, declared, deselected = compat_run
    if deselected or len(cases) != declared or not declared:
        pytest.skip(
            f"only {len(cases)} of {declared + deselected} compat cases ran: the matrix needs them all"
        )
    if os.environ.get(compat_matrix.WRITE_ENV):
        compat_matrix.write(README, cases)
    current = compat_matrix.section(README.read_text(encoding="utf-8"))
    assert current == compat_matrix.render(cases), (
        "README.md's compatibility matrix is not what this run produced: run `make compat-matrix`"
    )
    assert all(case.passed for case in cases)
