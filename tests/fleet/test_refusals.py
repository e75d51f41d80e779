"""Which Redis replies a worker rides out, offline: a write refusal (and the reason it logs and exits
with) is told apart from its absence and from a real error."""

from __future__ import annotations

import pytest
from redis.exceptions import (
    BusyLoadingError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
)

from llm_router.redis_checks import write_refusal
from worker.arq_worker import REDIS_DOWN


@pytest.mark.parametrize(
    ("exc", "says"),
    [
        (ReadOnlyError("You can't write against a read only replica."), "read-only replica"),
        # redis-py's pipeline error keeps the class and puts the command in front
        (
            ReadOnlyError("Command # 2 (ZREMRANGEBYSCORE arq:abort 1 inf) of pipeline caused error: ..."),
            "read-only replica",
        ),
        (OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), "out of memory"),
        (ResponseError("MISCONF Redis is configured to save RDB snapshots, but…"), "cannot persist"),
        (ResponseError("NOREPLICAS Not enough good replicas to write."), "min-replicas-to-write"),
        (
            ResponseError(
                "Command # 1 (ZADD q 1 w) of pipeline caused error: NOREPLICAS Not enough good replicas"
            ),
            "min-replicas-to-write",
        ),
        (
            ResponseError("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is 'no'"),
            "lost its primary",
        ),
    ],
)
def test_write_refusals_are_recognised_with_a_reason(exc: Exception, says: str) -> None:
    reason = write_refusal(exc)
    assert reason is not None and says in reason


@pytest.mark.parametrize(
    "exc",
    [
        ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        ResponseError("ERR Error running script (call to f_x): @user_script:3: bad argument"),
        ConnectionError("reset"),
    ],
)
def test_other_errors_are_not_refusals(exc: Exception) -> None:
    assert write_refusal(exc) is None


def test_loading_is_an_outage_the_poll_loop_rides_out() -> None:
    assert issubclass(BusyLoadingError, REDIS_DOWN)  # LOADING: Redis reading its data back in
