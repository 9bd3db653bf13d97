"""
The database layer: a small, non-blocking PostgreSQL pool on txpostgres.

Everything that talks to PostgreSQL goes through L{Database}: transactions
are ``async def`` functions that receive a L{Tx}; the pool hands out one
connection per transaction, reconnects dead connections lazily and turns every
connection-level failure into L{DatabaseUnavailable} so callers can answer
"retry later" (OSMP result 1, HTTP 503) instead of crashing.

Not every failure is an outage.  A transaction that loses a race (deadlock,
serialization failure), waits too long for a lock or runs past its statement
time-out was rolled back by the server on a perfectly healthy connection:
that connection goes back to the pool and the caller gets a L{RetryableError}
(a L{DatabaseUnavailable} whose ``__cause__`` is the driver's exception, so
callers that only know "retry later" keep working).  Only connection-level
failures close the connection; the next transaction reconnects.

Work that needs session state of its own -- LISTEN, session advisory locks --
takes a L{Dedicated} connection outside the pool with
L{Database.dedicated_connection} (or L{Database.open_dedicated}).
"""

from __future__ import annotations

from collections import deque
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

import psycopg2
from attrs import define, field
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.logger import Logger
from txpostgres import txpostgres

from smartyd.util.text import one_line

log = Logger()
T = TypeVar("T")

# Connection-level failures: the server went away, the socket broke, the
# server is shutting down, or we gave up waiting.  Anything else (a constraint
# violation, a syntax error) is a bug or a business outcome, not an outage.
_CONNECTION_ERRORS = (
    psycopg2.OperationalError,
    psycopg2.InterfaceError,
    txpostgres.RollbackFailed,
    defer.CancelledError,
    defer.TimeoutError,
)


# SQLSTATEs after which the server has rolled the transaction back and the
# connection is still good: retrying the transaction may well succeed.
RETRYABLE_SQLSTATES = {
    "40001": "serialization failure",
    "40P01": "deadlock detected",
    "55P03": "lock not available",
    "57014": "statement cancelled",
}


class DatabaseUnavailable(Exception):
    """The database cannot be reached right now; the operation may be retried."""


class RetryableError(DatabaseUnavailable):
    """
    The transaction was rolled back for a concurrency or time reason (see
    L{RETRYABLE_SQLSTATES}) on a healthy connection; retrying may succeed.

    ``__cause__`` is the driver's exception (a C{TransactionRollbackError},
    C{LockNotAvailable}, or the C{CancelledError} txpostgres turns a
    server-side C{QueryCanceled} into).

    @ivar sqlstate: the SQLSTATE, one of L{RETRYABLE_SQLSTATES}.
    """

    def __init__(self, message: str, sqlstate: str):
        super().__init__(message)
        self.sqlstate = sqlstate


class Tx:
    """One transaction's cursor, with small typed helpers."""

    def __init__(self, cursor: txpostgres.Cursor, on_statement: Callable[[], None] | None = None):
        self._cursor = cursor
        self._on_statement = on_statement

    async def execute(self, sql: str, params: Any = None) -> None:
        if self._on_statement is not None:
            self._on_statement()
        await self._cursor.execute(sql, params)

    async def fetchall(self, sql: str, params: Any = None) -> list[tuple]:
        await self.execute(sql, params)
        return self._cursor.fetchall()

    async def fetchone(self, sql: str, params: Any = None) -> tuple | None:
        await self.execute(sql, params)
        return self._cursor.fetchone()

    async def fetchval(self, sql: str, params: Any = None) -> Any:
        row = await self.fetchone(sql, params)
        return None if row is None else row[0]

    async def fetchdicts(self, sql: str, params: Any = None) -> list[dict]:
        await self.execute(sql, params)
        names = [c.name for c in self._cursor.description]
        return [dict(zip(names, row)) for row in self._cursor.fetchall()]

    async def fetchdict(self, sql: str, params: Any = None) -> dict | None:
        rows = await self.fetchdicts(sql, params)
        return rows[0] if rows else None

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount


class _Conn(txpostgres.Connection):
    """A txpostgres connection that tells its owner when the socket is lost."""

    on_lost: Callable[[], None] | None = None

    def doRead(self):
        # An idle connection whose server went away raises from poll() here;
        # returning the reason makes the reactor drop it (connectionLost)
        # without an "Unhandled Error" traceback in the log.
        try:
            return super().doRead()
        except psycopg2.OperationalError as e:
            return ConnectionLost(one_line(e))

    def connectionLost(self, reason):
        super().connectionLost(reason)
        if self.on_lost is not None:
            self.on_lost()


def _dead(conn: _Conn | None) -> bool:
    return conn is None or conn._connection is None or bool(conn._connection.closed)


def classify_error(e: BaseException, conn: _Conn | None) -> tuple[Exception | None, bool]:
    """
    What a failure on ``conn`` means: ``(error to raise instead, connection still good)``.

    The error is C{None} for failures that are not ours to translate (a
    constraint violation, a syntax error, a bug in the transaction function):
    they propagate unchanged and the rolled-back connection stays in use.
    """
    sqlstate = getattr(e, "pgcode", None)
    if isinstance(e, psycopg2.Error) and sqlstate in RETRYABLE_SQLSTATES and not _dead(conn):
        return RetryableError(
            f"{RETRYABLE_SQLSTATES[sqlstate]}: {one_line(e)}", sqlstate
        ), True
    if isinstance(e, defer.CancelledError) and not _dead(conn):
        # txpostgres turns every QueryCanceled (57014: statement_timeout or
        # pg_cancel_backend) into a bare CancelledError once the server has
        # answered, so the protocol is in sync and the rollback went through.
        # Our own client-side time-out arrives as defer.TimeoutError instead.
        return RetryableError(
            f"{RETRYABLE_SQLSTATES['57014']}: canceling statement", "57014"
        ), True
    if isinstance(e, _CONNECTION_ERRORS):
        return DatabaseUnavailable(one_line(e)), False
    return None, not _dead(conn)


@define
class Database:
    """
    A pool of ``size`` txpostgres connections to ``dsn``.

    @ivar acquire_timeout: seconds a transaction waits for a free connection.
    @ivar timeout: seconds one transaction may take before it is cancelled.
    """

    dsn: str
    reactor: Any
    size: int = 8
    timeout: float = 15.0
    acquire_timeout: float = 10.0
    connect_timeout: int = 3
    # Called (no arguments) when a connection breaks or cannot be made: the
    # embedded cluster's supervisor checks the postmaster at once.
    on_unavailable: Callable[[], None] | None = None
    _free: deque = field(factory=deque)
    _waiters: deque = field(factory=deque)
    _all: list = field(factory=list)
    _closed: bool = False
    # Statements sent to the server by this pool's transactions (BEGIN and
    # COMMIT included): the round trips, each a poll cycle of the reactor.
    round_trips: int = field(default=0, init=False)

    def __attrs_post_init__(self):
        self._free.extend([None] * self.size)

    def _connect_kwargs(self) -> dict:
        return {
            "dsn": self.dsn,
            "connect_timeout": self.connect_timeout,
            "options": f"-c statement_timeout={int(self.timeout * 1000)} "
            f"-c lock_timeout={int(self.timeout * 1000)} "
            "-c idle_in_transaction_session_timeout=60000",
            "application_name": "smartyd",
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
        }

    async def _connect(self) -> _Conn:
        conn = _Conn(reactor=self.reactor)
        d = conn.connect(**self._connect_kwargs())
        d.addTimeout(self.connect_timeout + 2, self.reactor)
        try:
            await d
        except BaseException:
            _close_quietly(conn)
            raise
        return conn

    # -- the pool -----------------------------------------------------------
    async def _acquire(self) -> _Conn | None:
        if self._closed:
            raise DatabaseUnavailable("database pool is closed")
        if self._free:
            return self._free.popleft()
        waiter: Deferred = Deferred()
        self._waiters.append(waiter)
        waiter.addTimeout(self.acquire_timeout, self.reactor)
        try:
            return await waiter
        except defer.TimeoutError:
            raise DatabaseUnavailable("no database connection free in time")
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _release(self, conn: _Conn | None) -> None:
        if conn is not None and _dead(conn):
            _close_quietly(conn)
            conn = None
        if self._closed:
            _close_quietly(conn)
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.called:
                waiter.callback(conn)
                return
        self._free.append(conn)

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> "Deferred[T]":
        """
        Run ``await fn(tx, *args, **kwargs)`` in one transaction.

        Commits when ``fn`` returns, rolls back when it raises.  Connection
        failures and time-outs fail with L{DatabaseUnavailable}.
        """
        return Deferred.fromCoroutine(self._run(fn, args, kwargs))

    def run_statement(self, fn: Callable[..., Awaitable[T]], *args: Any,
                      **kwargs: Any) -> "Deferred[T]":
        """
        Run ``await fn(tx, *args, **kwargs)`` with no BEGIN/COMMIT around it:
        each statement ``fn`` sends is a transaction of its own (autocommit).

        For work that is one statement (a server-side function that does a
        whole transaction, a single read): one round trip instead of three,
        and on this one reactor thread each round trip is a full poll cycle.
        Failures are translated as in L{run}.
        """
        return Deferred.fromCoroutine(self._run(fn, args, kwargs, transaction=False))

    async def _run(self, fn, args, kwargs, transaction: bool = True):
        conn = await self._acquire()
        try:
            if _dead(conn):
                conn = None
                try:
                    conn = await self._connect()
                except _CONNECTION_ERRORS as e:
                    self._unavailable()
                    raise DatabaseUnavailable(f"cannot connect: {one_line(e)}") from e
            if transaction:
                self.round_trips += 2  # BEGIN, then COMMIT or ROLLBACK
                d = conn.runInteraction(
                    lambda cursor: Deferred.fromCoroutine(
                        fn(Tx(cursor, self._sent), *args, **kwargs))
                )
            else:
                d = Deferred.fromCoroutine(fn(Tx(conn.cursor(), self._sent), *args, **kwargs))
            d.addTimeout(self.timeout, self.reactor)
            try:
                return await d
            except Exception as e:
                error, healthy = classify_error(e, conn)
                if not healthy:
                    _close_quietly(conn)
                    conn = None
                    self._unavailable()
                if error is None:
                    raise
                raise error from e
        finally:
            self._release(conn)

    def _sent(self) -> None:
        self.round_trips += 1

    def _unavailable(self) -> None:
        if self.on_unavailable is not None:
            try:
                self.on_unavailable()
            except Exception:
                log.failure("on_unavailable hook failed")

    # -- connections of their own ----------------------------------------------------
    async def open_dedicated(self) -> "Dedicated":
        """
        A new connection outside the pool, for session state (LISTEN, session
        advisory locks); the caller closes it.  Fails with
        L{DatabaseUnavailable} when the server cannot be reached.
        """
        if self._closed:
            raise DatabaseUnavailable("database pool is closed")
        try:
            return Dedicated(await self._connect(), self.reactor)
        except _CONNECTION_ERRORS as e:
            raise DatabaseUnavailable(f"cannot connect: {one_line(e)}") from e

    @asynccontextmanager
    async def dedicated_connection(self) -> AsyncIterator["Dedicated"]:
        """``async with db.dedicated_connection() as conn:`` -- closed on exit."""
        conn = await self.open_dedicated()
        try:
            yield conn
        finally:
            conn.close()

    # -- conveniences ---------------------------------------------------------
    def fetchall(self, sql: str, params: Any = None) -> "Deferred[list[tuple]]":
        async def q(tx: Tx):
            return await tx.fetchall(sql, params)

        return self.run(q)

    def fetchval(self, sql: str, params: Any = None) -> "Deferred[Any]":
        async def q(tx: Tx):
            return await tx.fetchval(sql, params)

        return self.run(q)

    def execute(self, sql: str, params: Any = None) -> "Deferred[None]":
        async def q(tx: Tx):
            await tx.execute(sql, params)

        return self.run(q)

    async def ping(self) -> bool:
        try:
            return (await self.fetchval("SELECT 1")) == 1
        except DatabaseUnavailable:
            return False

    def stats(self) -> dict:
        return {
            "size": self.size,
            "idle": sum(1 for c in self._free if c is not None),
            "free": len(self._free),
            "waiting": len(self._waiters),
        }

    def close(self) -> None:
        self._closed = True
        while self._free:
            _close_quietly(self._free.popleft())
        while self._waiters:
            w = self._waiters.popleft()
            if not w.called:
                w.errback(DatabaseUnavailable("database pool is closed"))


def _close_quietly(conn: _Conn | None) -> None:
    if conn is None:
        return
    conn.on_lost = None
    try:
        conn.close()
    except Exception:
        pass


class Dedicated:
    """
    One connection of its own (see L{Database.open_dedicated}).

    Failures are translated like the pool's: L{RetryableError} for a lost
    race or a time-out, L{DatabaseUnavailable} for a broken connection; a
    session that hit either of the latter is closed.
    """

    def __init__(self, conn: _Conn, clock: Any):
        self._conn = conn
        self._clock = clock
        self._on_lost: Callable[[], None] | None = None

    @property
    def closed(self) -> bool:
        return _dead(self._conn)

    async def fetchall(self, sql: str, params: Any = None) -> list[tuple]:
        try:
            return await self._conn.runQuery(sql, params)
        except Exception as e:
            self._raise_translated(e)

    async def fetchval(self, sql: str, params: Any = None) -> Any:
        rows = await self.fetchall(sql, params)
        return rows[0][0] if rows else None

    async def execute(self, sql: str, params: Any = None) -> None:
        try:
            await self._conn.runOperation(sql, params)
        except Exception as e:
            self._raise_translated(e)

    def _raise_translated(self, e: Exception):
        error, healthy = classify_error(e, self._conn)
        if not healthy:
            self.close()
        if error is None:
            raise e
        raise error from e

    async def ping(self, timeout: float) -> None:
        """``SELECT 1`` within ``timeout`` seconds, or L{DatabaseUnavailable}."""
        d = self._conn.runQuery("SELECT 1")
        d.addTimeout(timeout, self._clock)
        try:
            await d
        except Exception as e:
            self._raise_translated(e)

    def on_notify(self, callback: Callable[[str, str], Any]) -> None:
        """Deliver each NOTIFY on this session as ``callback(channel, payload)``."""
        self._conn.addNotifyObserver(lambda n: callback(n.channel, n.payload))

    def on_lost(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback()`` when the socket is lost (not after L{close})."""
        self._conn.on_lost = callback

    def close(self) -> None:
        """Close the session; this also releases its session advisory locks."""
        _close_quietly(self._conn)
