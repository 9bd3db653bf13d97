"""
Concurrent viewing sessions per account, held across both listeners, worker
processes and instances without a database round trip per check.

A session is what a streamer calls one viewer's playback: Flussonic's
C{session_id}, Astra's C{X-Session-ID}, else the token itself (nginx
C{auth_request}, plain checks).  An account with a limit (L{Snapshot.limits})
may hold that many sessions at once.  Each allowed check of a session holds a
lease of C{[tokens] session_lease} seconds, renewed by the next check; a
session that stops being checked frees its slot when its lease runs out.

How the processes agree (the design in one paragraph): every process keeps
the leases it granted in memory and decides from memory; once a second
(L{SYNC_INTERVAL}) it L{exchanges <SessionLeases.exchange>} them through
PostgreSQL in one short transaction -- its new and renewed leases written in
one batch (C{session_leases}, migration 0007), the whole table's live leases
read back.  Between exchanges a process counts what it last read plus what it
granted itself since.  The table ranks each account's sessions by when they
were first seen; a session ranked at or past the account's limit is the
excess and is refused at its next check, by whichever process sees it.

The bound: a burst of new sessions for one account that arrives at P
processes (listeners, workers or instances) within one exchange interval can
be admitted up to the limit in each, so at most P x limit sessions at once;
the excess is refused at its first check after the next exchange -- within
about C{SYNC_INTERVAL} plus the streamer's re-check interval (the allowed
X-AuthDuration, at most C{session_lease / 2} for a limited account).  In one
process the count is exact.  If the database is unreachable, every process
keeps deciding from what it last read plus its own leases.
"""

from __future__ import annotations

import hashlib
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from smartyd.db import Tx
from smartyd.util.text import one_line

log = Logger()

#: Seconds between exchanges through PostgreSQL.
SYNC_INTERVAL = 1.0
#: Longer session keys are hashed (a streamer's id or a token is short; this bounds memory).
MAX_KEY = 96


def session_key(params: Any, headers: Any, token: str) -> str:
    """
    The session a check belongs to: Flussonic's C{session_id}, Astra's
    C{X-Session-ID}, else the token (prefixed, so the kinds never collide).
    """
    sid = params.get("session_id")
    if sid:
        key = "f:" + sid
    else:
        sid = headers.get("x-session-id")
        key = "a:" + sid if sid else "t:" + token
    if len(key) > MAX_KEY:
        key = "h:" + hashlib.blake2b(key.encode("utf-8", "replace"), digest_size=20).hexdigest()
    return key


# -- database ------------------------------------------------------------------------------
async def exchange_leases(
    tx: Tx, held: dict, released: set, now: float
) -> list[tuple[int, str]]:
    """
    Write C{held} (C{(account, session) -> (since, expires)}), delete
    C{released} sessions and every expired lease, and return all live leases
    as C{(account, session)} in rank order (per account: first seen first).
    Rows are written in key order, so two processes never lock them in
    opposite orders.
    """
    if held:
        items = sorted(held.items())
        await tx.execute(
            "INSERT INTO session_leases (account_id, session, since, expires)"
            " SELECT * FROM unnest(%s::bigint[], %s::text[], %s::float8[], %s::float8[])"
            " ON CONFLICT (account_id, session) DO UPDATE"
            " SET since = least(session_leases.since, excluded.since),"
            "     expires = greatest(session_leases.expires, excluded.expires)",
            (
                [k[0] for k, _ in items],
                [k[1] for k, _ in items],
                [v[0] for _, v in items],
                [v[1] for _, v in items],
            ),
        )
    if released:
        gone = sorted(released)
        await tx.execute(
            "DELETE FROM session_leases WHERE (account_id, session) IN"
            " (SELECT * FROM unnest(%s::bigint[], %s::text[]))",
            ([a for a, _ in gone], [s for _, s in gone]),
        )
    await tx.execute("DELETE FROM session_leases WHERE expires <= %s", (now,))
    return await tx.fetchall(
        "SELECT account_id, session FROM session_leases WHERE expires > %s"
        " ORDER BY account_id, since, session",
        (now,),
    )


# -- the leases ---------------------------------------------------------------------------
class SessionLeases:
    """
    One process's view of the session leases (shared by the listeners of
    that process).  L{admit} is pure memory; L{exchange} talks to PostgreSQL.

    @ivar lease: seconds a check holds its session.
    @ivar exchanges: completed exchanges.
    """

    def __init__(self, lease: float = 30.0):
        self.lease = lease
        self.exchanges = 0
        # account -> session -> [since, expires]: leases granted here.
        self._local: dict[int, dict[str, list]] = {}
        # account -> session -> rank, as of the last exchange.
        self._ranks: dict[int, dict[str, int]] = {}
        # Granted or renewed since the last exchange; released (refused as excess).
        self._held: dict[tuple[int, str], tuple[float, float]] = {}
        self._released: set[tuple[int, str]] = set()

    def admit(self, account: int, limit: int, key: str, now: float) -> bool:
        """Allow the session C{key} of C{account} (and hold or renew its lease), or refuse it."""
        local = self._local.get(account)
        ranks = self._ranks.get(account)
        if ranks is not None:
            rank = ranks.get(key)
            if rank is not None:
                if rank >= limit:
                    self._release(account, key)
                    return False
                self._hold(account, key, now, local)
                return True
        if local is not None:
            held = local.get(key)
            if held is not None and held[1] > now:
                self._hold(account, key, now, local)
                return True
        count = len(ranks) if ranks else 0
        if local:
            for k, (_, expires) in local.items():
                if expires > now and (ranks is None or k not in ranks):
                    count += 1
        if count >= limit:
            return False
        self._hold(account, key, now, local)
        return True

    def _hold(self, account: int, key: str, now: float, local: dict | None) -> None:
        if local is None:
            local = self._local[account] = {}
        held = local.get(key)
        expires = now + self.lease
        if held is None or held[1] <= now:
            held = local[key] = [now, expires]
        else:
            held[1] = expires
        self._held[(account, key)] = (held[0], expires)

    def _release(self, account: int, key: str) -> None:
        local = self._local.get(account)
        if local is not None:
            local.pop(key, None)
        self._held.pop((account, key), None)
        self._released.add((account, key))

    def held(self, account: int, now: float) -> int:
        """How many sessions of C{account} this process counts as live (for tests and logs)."""
        ranks = self._ranks.get(account) or {}
        local = self._local.get(account) or {}
        return len(ranks) + sum(1 for k, v in local.items() if v[1] > now and k not in ranks)

    def live(self) -> int:
        """Live leases of every process, as of the last exchange (C{smartyd_stream_sessions})."""
        return sum(len(per) for per in self._ranks.values())

    async def exchange(self, db: Any, now: float) -> None:
        """
        Write what was granted since the last exchange, read everyone's
        live leases.  On failure, what was to be written is kept for the next one.
        """
        held, self._held = self._held, {}
        released, self._released = self._released, set()
        try:
            rows = await db.run(exchange_leases, held, released, now)
        except BaseException:
            for k, v in held.items():
                self._held.setdefault(k, v)  # a renewal made meanwhile is newer
            self._released |= released
            raise
        ranks: dict[int, dict[str, int]] = {}
        for account, session in rows:
            per = ranks.get(account)
            if per is None:
                per = ranks[account] = {}
            per[session] = len(per)
        self._ranks = ranks
        for account in list(self._local):
            live = {k: v for k, v in self._local[account].items() if v[1] > now}
            if live:
                self._local[account] = live
            else:
                del self._local[account]
        self.exchanges += 1


class RetryingLoop(Service):
    """
    Runs C{self.once()} every C{interval} seconds on C{clock}.  Runs never
    overlap and never fail: a failure is logged once (C{failed}, given
    C{error}), so is the recovery (C{recovered}), and the next tick retries.
    Subclasses set C{name}, C{recovered}, C{failed} and C{once}; C{log} is
    the subclass module's logger (its namespace is kept).
    """

    recovered: str
    failed: str

    def __init__(self, clock: Any, interval: float, log: Logger):
        self.clock = clock
        self.interval = interval
        self.log = log
        self.failing = False
        self.last: Deferred | None = None  # the latest run
        self._loop = LoopingCall(self.run)
        self._loop.clock = clock
        self._done: Deferred | None = None

    def once(self) -> Any:
        raise NotImplementedError

    def run(self) -> Deferred:
        """One run; never fails (a failure is logged)."""
        d = Deferred.fromCoroutine(self.once())
        d.addCallbacks(self._ok, self._failed)
        self.last = d
        return d

    def _ok(self, _) -> None:
        if self.failing:
            self.failing = False
            self.log.info(self.recovered)

    def _failed(self, failure) -> None:
        if not self.failing:
            self.failing = True
            self.log.warn(self.failed, error=one_line(failure.value))

    def startService(self) -> None:
        super().startService()
        self._done = self._loop.start(self.interval, now=False)

    def stopService(self) -> Deferred | None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        return self._done


class LeaseExchange(RetryingLoop):
    """
    Runs L{SessionLeases.exchange} every C{interval} seconds in this process
    (no cluster-wide lock: every process must exchange).  Runs never overlap;
    a failed one is logged once (and the recovery), and the next tick retries.
    """

    name = "session-leases"
    recovered = "session leases exchanged again"
    failed = ("session lease exchange failed ({error}); deciding from what was last"
              " read until it works again")

    def __init__(self, sessions: SessionLeases, db: Any, clock: Any,
                 interval: float = SYNC_INTERVAL):
        super().__init__(clock, interval, log)
        self.sessions = sessions
        self.db = db

    def once(self) -> Any:
        return self.sessions.exchange(self.db, self.clock.seconds())
