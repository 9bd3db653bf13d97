"""
The pool against a real PostgreSQL: lost races and time-outs are retryable
errors on a connection that stays open; broken connections are replaced.
"""

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import pytest
import pytest_twisted
from twisted.internet import defer

from smartyd.db import DatabaseUnavailable, RetryableError


async def backend_pid(db) -> int:
    return await db.fetchval("SELECT pg_backend_pid()")


@pytest_twisted.ensureDeferred
async def test_a_deadlock_is_retryable_and_keeps_both_connections(make_db):
    # Two pools of one connection each, so each side's backend is known.
    a, b = await make_db(size=1), await make_db(size=1)
    pids = {"a": await backend_pid(a), "b": await backend_pid(b)}
    a_holds, b_holds = defer.Deferred(), defer.Deferred()

    def side(name, first, second, mine, theirs):
        async def tx(t):
            await t.execute("SET LOCAL deadlock_timeout = '50ms'")
            await t.execute("SELECT pg_advisory_xact_lock(%s)", (first,))
            mine.callback(None)
            await theirs  # both hold their first lock now
            await t.execute("SELECT pg_advisory_xact_lock(%s)", (second,))
            return name

        return tx

    results = await defer.DeferredList(
        [a.run(side("a", 1, 2, a_holds, b_holds)), b.run(side("b", 2, 1, b_holds, a_holds))],
        consumeErrors=True,
    )
    failed = [r for ok, r in results if not ok]
    assert len(failed) == 1  # PostgreSQL picked one victim, the other committed
    error = failed[0].value
    assert isinstance(error, RetryableError) and isinstance(error, DatabaseUnavailable)
    assert error.sqlstate == "40P01"
    # smartyd.osmp maps this cause to result 90 ("not completed, retry").
    assert isinstance(error.__cause__, psycopg2.extensions.TransactionRollbackError)
    # Both connections were healthy and went back to their pools.
    assert {"a": await backend_pid(a), "b": await backend_pid(b)} == pids


@pytest_twisted.ensureDeferred
async def test_a_serialization_failure_is_retryable_on_the_same_connection(db, make_db):
    other = await make_db(size=1)
    await db.execute("INSERT INTO job_runs (job, runs) VALUES ('ser', 0)")
    victim = await make_db(size=1)
    pid = await backend_pid(victim)
    read = defer.Deferred()
    updated = defer.Deferred()

    async def repeatable_read(t):
        await t.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        await t.fetchval("SELECT runs FROM job_runs WHERE job = 'ser'")  # the snapshot
        read.callback(None)
        await updated
        await t.execute("UPDATE job_runs SET runs = runs + 1 WHERE job = 'ser'")

    running = victim.run(repeatable_read)
    await read
    await other.execute("UPDATE job_runs SET runs = 10 WHERE job = 'ser'")
    updated.callback(None)
    with pytest.raises(RetryableError) as caught:
        await running
    assert caught.value.sqlstate == "40001"
    assert isinstance(caught.value.__cause__, psycopg2.extensions.TransactionRollbackError)
    assert await backend_pid(victim) == pid
    assert await db.fetchval("SELECT runs FROM job_runs WHERE job = 'ser'") == 10


@pytest_twisted.ensureDeferred
async def test_a_lock_timeout_is_retryable_on_the_same_connection(make_db):
    holder, waiter = await make_db(size=1), await make_db(size=1)
    pid = await backend_pid(waiter)
    held, release = defer.Deferred(), defer.Deferred()

    async def hold(t):
        await t.execute("SELECT pg_advisory_xact_lock(77)")
        held.callback(None)
        await release

    holding = holder.run(hold)
    await held

    async def wait_for_it(t):
        await t.execute("SET LOCAL lock_timeout = '50ms'")
        await t.execute("SELECT pg_advisory_xact_lock(77)")

    try:
        with pytest.raises(RetryableError) as caught:
            await waiter.run(wait_for_it)
    finally:
        release.callback(None)
        await holding
    assert caught.value.sqlstate == "55P03"
    assert isinstance(caught.value.__cause__, psycopg2.errors.LockNotAvailable)
    assert await backend_pid(waiter) == pid


@pytest_twisted.ensureDeferred
async def test_a_statement_timeout_is_retryable_on_the_same_connection(make_db):
    db = await make_db(size=1)
    pid = await backend_pid(db)

    async def slow(t):
        await t.execute("SET LOCAL statement_timeout = '50ms'")
        await t.execute("SELECT pg_sleep(5)")

    with pytest.raises(RetryableError) as caught:
        await db.run(slow)
    assert caught.value.sqlstate == "57014"
    assert await backend_pid(db) == pid
    assert db.stats()["idle"] == 1


@pytest_twisted.ensureDeferred
async def test_business_errors_propagate_and_keep_the_connection(db, make_db):
    one = await make_db(size=1)
    pid = await backend_pid(one)
    await one.execute("INSERT INTO job_runs (job, runs) VALUES ('dup', 0)")
    with pytest.raises(psycopg2.errors.UniqueViolation):
        await one.execute("INSERT INTO job_runs (job, runs) VALUES ('dup', 0)")
    assert await backend_pid(one) == pid


@pytest_twisted.ensureDeferred
async def test_a_terminated_backend_is_unavailable_and_replaced(make_db):
    victim = await make_db(size=1)
    pid = await backend_pid(victim)
    with pytest.raises(DatabaseUnavailable) as caught:  # FATAL 57P01 mid-transaction
        await victim.fetchval("SELECT pg_terminate_backend(pg_backend_pid())")
    assert not isinstance(caught.value, RetryableError)
    assert await backend_pid(victim) != pid  # reconnected lazily


@pytest_twisted.ensureDeferred
async def test_a_dedicated_connection_is_outside_the_pool_and_holds_session_state(make_db):
    db = await make_db(size=2)
    async with db.dedicated_connection() as conn:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        assert await conn.fetchval("SELECT pg_try_advisory_lock(4242)") is True
        assert await db.fetchval("SELECT pg_try_advisory_lock(4242)") is False
        assert pid not in {await backend_pid(db) for _ in range(db.size)}
    assert conn.closed
    # closing released the session lock
    async with db.dedicated_connection() as again:
        assert await again.fetchval("SELECT pg_try_advisory_lock(4242)") is True
