"""
Cluster-wide "once": run a periodic job on one instance at a time, and no
more often than its interval across all instances.

L{cluster_once} takes the job's session advisory lock on a dedicated
connection (another instance holding it means "skip"), then claims the job's
turn in ``job_runs`` (a run started less than ``interval`` ago on any instance
means "skip"), lets the caller run, records the outcome and closes the
connection, which releases the lock.  The SQL lives here so that the poller
knows nothing about PostgreSQL.
"""

from __future__ import annotations

import zlib
from contextlib import asynccontextmanager
from typing import AsyncIterator

from attrs import define
from twisted.logger import Logger

from smartyd.db import Database, Dedicated
from smartyd.util.text import one_line

log = Logger()

# Leaves a little slack so that a run scheduled exactly ``interval`` after
# the last one is not refused for a few milliseconds of clock skew.
PACING_SLACK = 0.98


def job_lock_key(job: str) -> int:
    """A stable advisory-lock key for ``job`` (namespace 0x5D in the high bits)."""
    return (0x5D << 32) | zlib.crc32(job.encode("utf-8"))


@define
class Turn:
    """This instance's turn at a job; the body marks it failed if it fails."""

    ok: bool = True
    error: str | None = None

    def failed(self, error: str) -> None:
        self.ok, self.error = False, error


@asynccontextmanager
async def cluster_once(db: Database, job: str, interval: float) -> AsyncIterator[Turn | None]:
    """
    ``async with cluster_once(db, job, interval) as turn:`` -- ``turn`` is
    C{None} when another instance runs the job now or ran it less than
    ``interval`` seconds ago; else a L{Turn} whose outcome is recorded in
    ``job_runs`` on exit (an exception escaping the body counts as failed).

    Fails with L{smartyd.db.DatabaseUnavailable} when the lock cannot be
    taken (no connection, or the queries fail).
    """
    async with db.dedicated_connection() as conn:
        if not await _claim(conn, job, interval):
            yield None
            return
        turn = Turn()
        try:
            yield turn
        except BaseException as e:
            if turn.ok:
                turn.failed(f"{type(e).__name__}: {one_line(e)}")
            raise
        finally:
            await _record(conn, job, turn)


async def _claim(conn: Dedicated, job: str, interval: float) -> bool:
    if not await conn.fetchval("SELECT pg_try_advisory_lock(%s)", (job_lock_key(job),)):
        log.debug("{job}: another instance is running it", job=job)
        return False
    rows = await conn.fetchall(
        "INSERT INTO job_runs AS j (job, last_started, runs) VALUES (%s, now(), 1)"
        " ON CONFLICT (job) DO UPDATE SET last_started = now(), runs = j.runs + 1"
        " WHERE j.last_started IS NULL"
        "    OR j.last_started <= now() - make_interval(secs => %s)"
        " RETURNING 1",
        (job, interval * PACING_SLACK),
    )
    if not rows:
        log.debug("{job}: ran less than {interval}s ago on some instance",
                  job=job, interval=interval)
        return False
    return True


async def _record(conn: Dedicated, job: str, turn: Turn) -> None:
    try:
        await conn.execute(
            "UPDATE job_runs SET last_finished = now(), last_ok = %s, last_error = %s,"
            " failures = failures + %s WHERE job = %s",
            (turn.ok, turn.error, 0 if turn.ok else 1, job),
        )
    except Exception as e:
        log.warn("{job}: could not record the run: {error}", job=job, error=one_line(e))
