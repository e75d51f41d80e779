"""The parts of arq's insides that ``worker.arq_worker.LeasedWorker`` relies on, named one by one.

The worker overrides arq methods and reads arq's private state (see its module docstring), so an arq
release that renames or reshapes one of them must fail here, in CI, not silently in production.
``pyproject.toml`` pins arq's minor version for the same reason; moving the pin means reading this
list against the new release.
"""

from __future__ import annotations

import inspect
from importlib.metadata import version

import orjson
import pytest
from arq import Retry, constants
from arq.jobs import deserialize_job
from arq.worker import Worker

from config.settings import Settings
from llm_router.keys import RUN_JOB
from worker.app import build_worker

# method → the parameters our override and our callers pass (arq calls these with these names)
OVERRIDDEN = {
    "run_job": ["self", "job_id", "score"],
    "start_jobs": ["self", "job_ids"],
    "finish_job": [
        "self",
        "job_id",
        "finish",
        "result_data",
        "result_timeout_s",
        "keep_result_forever",
        "incr_score",
        "keep_in_progress",
    ],
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
]


def test_arq_is_the_pinned_minor_version() -> None:
    major, minor, *_ = version("arq").split(".")
    assert (int(major), int(minor)) == (0, 28), "read this file against the new arq before moving the pin"


@pytest.mark.parametrize(("name", "params"), sorted(OVERRIDDEN.items()))
def test_each_overridden_method_keeps_its_signature(name: str, params: list[str]) -> None:
    assert list(inspect.signature(getattr(Worker, name)).parameters) == params


def test_the_poll_loop_still_hands_claims_and_aborts_to_our_overrides() -> None:
    # LeasedWorker claims in start_jobs and throttles _cancel_aborted_jobs; arq's loop must call both
    source = inspect.getsource(Worker._poll_iteration)
    assert "await self.start_jobs(job_ids)" in source
    assert "await self._cancel_aborted_jobs()" in source
    assert "self.job_counter < self.max_jobs" in source
    # arq re-raises a finished task's error from its poll: LeasedWorker._reap drops them first
    assert "t.result()" in source


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


def test_arqs_key_names_are_what_our_scripts_write() -> None:
    assert constants.job_key_prefix == "arq:job:"
    assert constants.in_progress_key_prefix == "arq:in-progress:"
    assert constants.retry_key_prefix == "arq:retry:"
    assert constants.abort_jobs_ss == "arq:abort"


def test_arq_reads_the_job_format_we_write_at_submit() -> None:
    payload = orjson.dumps({"t": None, "f": RUN_JOB, "a": ["j1"], "k": {}, "et": 1})
    job = deserialize_job(payload, deserializer=orjson.loads)
    assert (job.function, list(job.args), job.kwargs, job.job_try) == (RUN_JOB, ["j1"], {}, None)


def test_retry_still_carries_a_defer_score() -> None:
    assert Retry(defer=1.5).defer_score == 1500
