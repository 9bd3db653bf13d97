"""smartyd.db.locks.cluster_once against a real PostgreSQL: one instance at a time, paced."""

import pytest
import pytest_twisted
from twisted.internet import defer

from smartyd.db.locks import cluster_once


@pytest_twisted.ensureDeferred
async def test_one_turn_at_a_time_then_paced_then_recorded(db):
    inside, leave = defer.Deferred(), defer.Deferred()

    async def first():
        async with cluster_once(db, "job", 600) as turn:
            assert turn is not None
            inside.callback(None)
            await leave

    running = defer.Deferred.fromCoroutine(first())
    await inside
    async with cluster_once(db, "job", 600) as turn:
        assert turn is None  # the other instance holds the lock
    leave.callback(None)
    await running
    async with cluster_once(db, "job", 600) as turn:
        assert turn is None  # ran less than 600 s ago
    assert await db.fetchall("SELECT runs, failures, last_ok, last_error FROM job_runs") == [
        (1, 0, True, None)
    ]
    await db.execute("UPDATE job_runs SET last_started = now() - interval '601 seconds'")
    async with cluster_once(db, "job", 600) as turn:
        turn.failed("partner down")
    assert await db.fetchall("SELECT runs, failures, last_ok, last_error FROM job_runs") == [
        (2, 1, False, "partner down")
    ]


@pytest_twisted.ensureDeferred
async def test_an_escaping_exception_is_recorded_and_the_lock_released(db):
    with pytest.raises(ZeroDivisionError):
        async with cluster_once(db, "boom", 0) as turn:
            assert turn is not None
            1 / 0
    assert await db.fetchall("SELECT last_ok, last_error FROM job_runs") == [
        (False, "ZeroDivisionError: division by zero")
    ]
    async with cluster_once(db, "boom", 0) as turn:
        assert turn is not None  # the session lock went with the connection
