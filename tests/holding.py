"""
Locks held from a second connection, and PostgreSQL asked who waits for them:
races made deterministic (no sleeps).  A test holds a transaction open with
L{hold}, starts the work that must queue behind it, sees it queue with
L{waiting_for} (pg_stat_activity / pg_blocking_pids), then releases it.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from attrs import frozen
from twisted.internet import defer, reactor, task


async def until(check: Callable[[], Awaitable], what: str, timeout: float = 30.0):
    """
    Wait for a condition in the database: ``check()`` is asked again on each
    turn of the reactor until it is true (then returned); fails after
    ``timeout`` seconds.  Only a test that never comes true ever waits that long.
    """
    deadline = reactor.seconds() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert reactor.seconds() < deadline, f"timed out waiting for {what}"
        await task.deferLater(reactor, 0.01, lambda: None)


@frozen
class Held:
    """A transaction kept open on a connection of its own."""

    pid: int                       # its backend
    release: defer.Deferred        # fire it: the transaction commits
    done: defer.Deferred           # fires once it has committed


async def hold(make_db, work: Callable[..., Awaitable]) -> Held:
    """
    Run ``await work(tx)`` in a transaction on a new connection and keep the
    transaction open (its locks held) until the returned L{Held} is released.
    """
    db = await make_db(size=1, timeout=60)
    holding, release = defer.Deferred(), defer.Deferred()

    async def body(tx):
        await work(tx)
        holding.callback(await tx.fetchval("SELECT pg_backend_pid()"))
        await release

    done = db.run(body)

    def failed(failure):
        if not holding.called:
            holding.errback(failure)
        return failure

    done.addErrback(failed)
    return Held(await holding, release, done)


async def waiting_for(db, pid: int, count: int = 1, what: str = "") -> list[int]:
    """
    The backends waiting on a lock that ``pid`` holds (directly or queued
    behind another waiter), once there are ``count`` of them.
    """

    async def waiters():
        pids = [r[0] for r in await db.fetchall(
            "WITH RECURSIVE w(pid) AS ("
            " SELECT pid FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))"
            " UNION SELECT a.pid FROM pg_stat_activity a JOIN w ON w.pid = ANY("
            "  pg_blocking_pids(a.pid)))"
            " SELECT w.pid FROM w JOIN pg_stat_activity a USING (pid)"
            " WHERE a.wait_event_type = 'Lock' ORDER BY 1", (pid,))]
        return pids if len(pids) >= count else None

    return await until(waiters, what or f"{count} backend(s) to wait for backend {pid}")
