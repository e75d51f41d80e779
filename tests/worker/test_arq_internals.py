"""The parts of arq's insides that ``worker.arq_worker.LeasedWorker`` relies on, named one by one.

The worker overrides arq methods and reads arq's private state (see its module docstring), so an arq
release that renames or reshapes one of them must fail here, in CI, not silently in production.
``pyproject.toml`` pins arq's minor version for the same reason; moving the pin means reading this
list against the new release.
"""

from __future__ import annotations

import inspect
from importlib.metadata import version

import pytest
from arq import Retry, constants
from arq.worker import Worker

from config.settings import Settings
from worker.app import build_worker

# method → the parameters our override and our callers pass (arq calls these with these names)
OVERRIDDEN = {
    "main": ["self"],
    "run_job": ["self", "job_id", "score"],
    "heart_beat": ["self"],
    "_poll_iteration": ["self"],
    "_cancel_aborted_jobs": ["self"],
    "handle_sig_wait_for_completion": ["self", "signum"],
    "_release_sem_dec_counter_on_complete": ["self"],
    "async_run": ["self"],
    "close": ["self"],
}
# state the worker reads or writes, as arq keeps it
ATTRIBUTES = [
    "tasks",
    "job_tasks",
    "aborting_tasks",
    "sem",
    "job_counter",
    "max_jobs",
    "poll_delay_s",
    "job_timeout_s",
    "queue_name",
    "queue_read_limit",
    "jobs_complete",
    "jobs_retried",
    "jobs_failed",
    "allow_abort_jobs",
    "allow_pick_jobs",
    "burst",
    "_pool",
    "redis_settings",
    "expires_extra_ms",
]


def test_arq_is_the_pinned_minor_version() -> None:
    major, minor, *_ = version("arq").split(".")
    assert (int(major), int(minor)) == (0, 28), "read this file against the new arq before moving the pin"


@pytest.mark.parametrize(("name", "params"), sorted(OVERRIDDEN.items()))
def test_each_overridden_method_keeps_its_signature(name: str, params: list[str]) -> None:
    assert list(inspect.signature(getattr(Worker, name)).parameters) == params


def test_arqs_run_loop_still_calls_our_poll_iteration() -> None:
    # LeasedWorker claims, sleeps until woken and checks aborts in _poll_iteration; arq's main loop
    # (which it keeps outside burst mode) must call it through arq.utils.poll, and SIGTERM must still
    # stop it taking jobs through allow_pick_jobs
    source = inspect.getsource(Worker.main)
    assert "async for _ in poll(self.poll_delay_s):" in source
    assert "await self._poll_iteration()" in source
    assert "await self.on_startup(self.ctx)" in source and "self.ctx['redis'] = self.pool" in source
    assert "self.allow_pick_jobs = False" in inspect.getsource(Worker.handle_sig_wait_for_completion)


def test_abort_marks_jobs_in_aborting_tasks_and_cancels_their_task() -> None:
    source = inspect.getsource(Worker._cancel_aborted_jobs)
    assert "self.job_tasks[job_id]" in source and "self.aborting_tasks.update(aborted)" in source
    assert "abort_jobs_ss" in source


def test_the_state_we_read_exists_on_a_built_worker() -> None:
    worker = build_worker(Settings(_env_file=None, redis_url="redis://127.0.0.1:9/0"), burst=True)
    missing = [name for name in ATTRIBUTES if not hasattr(worker, name)]
    assert not missing
    assert isinstance(worker.tasks, dict) and isinstance(worker.job_tasks, dict)
    assert isinstance(worker.aborting_tasks, set)


def test_arqs_abort_set_is_where_our_cancel_script_writes() -> None:
    assert constants.abort_jobs_ss == "arq:abort"


def test_retry_still_carries_a_defer_score() -> None:
    assert Retry(defer=1.5).defer_score == 1500
