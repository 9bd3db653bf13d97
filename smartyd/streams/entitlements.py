"""
Who may watch what: an in-memory snapshot of account status and channels.

Token checks answer from a L{Snapshot} without touching the database.  The
L{Entitlements} service loads it when its notification connection comes up and
reloads it whenever PostgreSQL announces a change on ``smartyd_entitlements``
(statement triggers on accounts, channels, tariff_channels and subscriptions;
see migration 0001).  A reconnect reloads too, since notifications sent while
the connection was down are lost.

Reloads are coalesced: at most one runs, and any number of notifications
arriving meanwhile queue exactly one more, which starts when the running one
ends (it may have read the database before the change committed).  A snapshot
is built in one REPEATABLE READ transaction, fetched in batches through a
cursor so that a large operator's million accounts never stall the reactor for
long, and replaces the previous one in a single assignment: a check sees the
old snapshot or the new one, never half of each.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from attrs import define, field, frozen
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from smartyd.db import Database, DatabaseUnavailable, Tx
from smartyd.db.listen import Listener
from smartyd.util.backoff import Backoff
from smartyd.util.singleflight import SingleFlight
from smartyd.util.text import one_line

log = Logger()

CHANNEL = "smartyd_entitlements"

_ACCOUNTS_SQL = """
DECLARE smartyd_entitlements NO SCROLL CURSOR FOR
SELECT a.id,
       a.active,
       coalesce(array_agg(DISTINCT tc.channel_id ORDER BY tc.channel_id)
                FILTER (WHERE tc.channel_id IS NOT NULL), '{}')
  FROM accounts a
  LEFT JOIN subscriptions s
    ON s.customer_id = a.customer_id AND (s.account_id IS NULL OR s.account_id = a.id)
   AND s.state = 'active'
  LEFT JOIN tariff_channels tc ON tc.tariff_id = s.tariff_id
 GROUP BY a.id
"""

# A subscription entitles its channels while it is ``active``: paid (the
# charging job suspends it when a charge is refused for debt), or simply
# assigned in the full/reduced billing modes, where nothing is charged and
# nothing suspends it.  Customer-level subscriptions cover all the
# customer's accounts.


# Concurrent-session limits (migration 0007): the account's own, else the
# largest of its entitled tariffs' (active subscriptions of the account or of
# its customer, as above) -- unless one of them has none (then unlimited).
# Only limited accounts are listed.
_LIMITS_SQL = """
DECLARE smartyd_session_limits NO SCROLL CURSOR FOR
SELECT id, lim FROM (
    SELECT a.id,
           coalesce(a.max_sessions,
                    CASE WHEN bool_or(t.id IS NOT NULL AND t.sessions_count IS NULL) THEN NULL
                         ELSE max(t.sessions_count) END) AS lim
      FROM accounts a
      LEFT JOIN subscriptions s
        ON s.customer_id = a.customer_id AND (s.account_id IS NULL OR s.account_id = a.id)
       AND s.state = 'active'
      LEFT JOIN tariffs t ON t.id = s.tariff_id
     GROUP BY a.id
) limits
 WHERE lim IS NOT NULL
"""


# What L{Snapshot.entitlement} answers.
OK = "ok"
UNKNOWN_ACCOUNT = "unknown_account"
BLOCKED = "blocked"
NOT_ENTITLED = "not_entitled"


@frozen
class Snapshot:
    """
    The entitlements at one moment.

    The layout is chosen for a million accounts: C{accounts} maps an account id
    to a small int -- the index of its channel set in C{channel_sets}, inverted
    (C{~index}, negative) when the account is blocked.  Accounts on the same
    tariffs share one set, and a dict of ints holds no object the cyclic
    garbage collector has to walk (a dict of tuples would cost a full
    collection tens of milliseconds, a latency spike on every check it
    interrupts).

    @ivar accounts: account id -> channel set index (C{~index} when blocked).
    @ivar channel_sets: the distinct channel-id sets.
    @ivar channels: channel name -> channel id.
    @ivar loaded_at: clock time the load started.
    @ivar limits: account id -> concurrent sessions allowed (limited accounts only).
    @ivar streamer_ids: a streamer's own channel id (Astra's X-Channel-ID) -> channel id.
    @ivar logins: account id -> login (Astra's X-Session-Name); strings only,
        so the dict is not tracked by the cyclic collector either.
    """

    accounts: Mapping[int, int]
    channel_sets: tuple[frozenset, ...]
    channels: Mapping[str, int]
    loaded_at: float
    limits: Mapping[int, int] = field(factory=dict)
    streamer_ids: Mapping[str, int] = field(factory=dict)
    logins: Mapping[int, str] = field(factory=dict)

    def entitlement(self, account: int, channel: int) -> str:
        """C{ok}, C{unknown_account}, C{blocked} or C{not_entitled}."""
        code = self.accounts.get(account)
        if code is None:
            return UNKNOWN_ACCOUNT
        if code < 0:
            return BLOCKED
        return OK if channel in self.channel_sets[code] else NOT_ENTITLED

    def channels_of(self, account: int) -> frozenset | None:
        """The account's channel ids (also when blocked), None for an unknown account."""
        code = self.accounts.get(account)
        if code is None:
            return None
        return self.channel_sets[code if code >= 0 else ~code]

    def watchable(self, account: int) -> frozenset:
        """The channels the account may watch now: none while it is inactive (blocked, DEBT)."""
        code = self.accounts.get(account)
        return self.channel_sets[code] if code is not None and code >= 0 else frozenset()


class SnapshotBuilder:
    """Collects accounts one by one into a L{Snapshot}."""

    def __init__(self) -> None:
        self.accounts: dict[int, int] = {}
        self._index: dict[tuple, int] = {}
        self._sets: list[frozenset] = []

    def add(self, account: int, active: bool, channel_ids: Iterable[int]) -> None:
        """Add one account (pass channel ids sorted: equal sets are then shared)."""
        key = tuple(channel_ids)
        index = self._index.get(key)
        if index is None:
            index = self._index[key] = len(self._sets)
            self._sets.append(frozenset(key))
        self.accounts[account] = index if active else ~index

    def build(self, channels: Mapping[str, int], loaded_at: float,
              limits: Mapping[int, int] | None = None,
              streamer_ids: Mapping[str, int] | None = None,
              logins: Mapping[int, str] | None = None) -> Snapshot:
        return Snapshot(self.accounts, tuple(self._sets), dict(channels), loaded_at,
                        dict(limits or {}), dict(streamer_ids or {}), dict(logins or {}))


async def load_snapshot(tx: Tx, now: float, batch: int = 10_000) -> Snapshot:
    """Read the whole snapshot in one consistent transaction, in batches of C{batch}."""
    await tx.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    channels = {name: cid for cid, name in await tx.fetchall("SELECT id, name FROM channels")}
    await tx.execute(_ACCOUNTS_SQL)
    builder = SnapshotBuilder()
    fetch = f"FETCH FORWARD {int(batch)} FROM smartyd_entitlements"
    while True:
        rows = await tx.fetchall(fetch)
        for account, active, channel_ids in rows:
            builder.add(account, active, channel_ids)
        if len(rows) < batch:
            break
    await tx.execute("CLOSE smartyd_entitlements")
    limits, streamer_ids, logins = await load_streamer_parts(tx, batch)
    return builder.build(channels, now, limits, streamer_ids, logins)


async def load_streamer_parts(tx: Tx, batch: int = 10_000) -> tuple[dict, dict, dict]:
    """
    Session limits, streamers' channel ids and logins (migration 0007), read
    in the snapshot's transaction.
    """
    streamer_ids = {
        sid: cid for cid, sid in await tx.fetchall(
            "SELECT id, streamer_id FROM channels WHERE streamer_id IS NOT NULL")
    }
    limits: dict[int, int] = {}
    logins: dict[int, str] = {}
    for sql, name, into in (
        (_LIMITS_SQL, "smartyd_session_limits", limits),
        ("DECLARE smartyd_logins NO SCROLL CURSOR FOR SELECT id, login FROM accounts",
         "smartyd_logins", logins),
    ):
        await tx.execute(sql)
        fetch = f"FETCH FORWARD {int(batch)} FROM {name}"
        while True:
            rows = await tx.fetchall(fetch)
            into.update(rows)
            if len(rows) < batch:
                break
        await tx.execute(f"CLOSE {name}")
    return limits, streamer_ids, logins


@define(eq=False)
class Entitlements(MultiService):
    """
    Keeps L{snapshot} current: its child L{Listener} LISTENs on
    C{smartyd_entitlements} and calls L{reload} after every (re)connect.

    Snapshots are read on a connection of their own (a one-connection pool on
    the same DSN), so that a reload neither waits for nor holds up request
    work.  A load that fails because its connection died (the server
    restarted) is retried once at once, on a new connection.

    @ivar snapshot: the current L{Snapshot}, None until the first load.
    @ivar reloads: completed reloads.
    """

    db: Database
    metrics: Any = None
    clock: Any = None  # "now" and retry timers; the database's reactor by default
    heartbeat: float = 5.0
    batch: int = 10_000
    max_backoff: float = 10.0
    load_timeout: float = 60.0
    snapshot: Snapshot | None = field(default=None, init=False)
    reloads: int = field(default=0, init=False)
    listener: Listener = field(init=False)
    loader: Database | None = field(default=None, init=False)
    _flight: SingleFlight = field(init=False)
    _loaded: list = field(factory=list, init=False)
    _retry: Any = field(default=None, init=False)
    _backoff: Backoff = field(init=False)
    _stopping: bool = field(default=True, init=False)  # until started

    def __attrs_post_init__(self) -> None:
        MultiService.__init__(self)
        if self.clock is None:
            self.clock = self.db.reactor
        self._flight = SingleFlight(self._load_and_install)
        self._backoff = Backoff(initial=0.5, maximum=self.max_backoff)
        self.listener = Listener(
            self.db, (CHANNEL,), self._notified, on_connect=self.reload,
            heartbeat=self.heartbeat,
        )
        self.listener.setServiceParent(self)

    # -- waiting -----------------------------------------------------------------------
    def when_loaded(self) -> "Deferred[Snapshot]":
        """Fires with the snapshot once one has been loaded (at once if it has)."""
        if self.snapshot is not None:
            return succeed(self.snapshot)
        d: Deferred = Deferred()
        self._loaded.append(d)
        return d

    # -- reloading ---------------------------------------------------------------------
    def reload(self) -> "Deferred[Snapshot]":
        """
        Reload now, or right after the reload in flight (never two at once);
        fires with the new snapshot or fails with the reason it could not be
        read.  A reload asked for while stopping never fires.
        """
        if self._stopping:
            return Deferred()
        return self._flight.run()

    def next_reload(self) -> "Deferred[Snapshot]":
        """
        Fires with the snapshot of the next reload to start from now on --
        e.g. the one a NOTIFY is about to trigger -- or fails with its error.
        """
        return self._flight.next_run()

    def _notified(self, channel: str, payload: str) -> None:
        self.reload().addErrback(self._failed)

    async def _load_and_install(self) -> Snapshot:
        return self._installed(await self._load())

    async def _load(self) -> Snapshot:
        try:
            return await self.loader.run(load_snapshot, self.clock.seconds(), self.batch)
        except DatabaseUnavailable as e:
            log.debug("entitlement load failed ({error}); retrying once", error=one_line(e))
            return await self.loader.run(load_snapshot, self.clock.seconds(), self.batch)

    def _installed(self, snapshot: Snapshot) -> None:
        first = self.snapshot is None
        self.snapshot = snapshot
        self.reloads += 1
        self._backoff.reset()
        if self.metrics is not None:
            self.metrics.entitlement_reloads.inc()
        log.debug(
            "entitlements reloaded: {accounts} accounts, {channels} channels",
            accounts=len(snapshot.accounts),
            channels=len(snapshot.channels),
        )
        if first:
            log.info(
                "entitlements loaded: {accounts} accounts, {channels} channels",
                accounts=len(snapshot.accounts),
                channels=len(snapshot.channels),
            )
            loaded, self._loaded = self._loaded, []
            for d in loaded:
                d.callback(snapshot)
        return snapshot

    def _failed(self, failure: Failure) -> None:
        """A notification's reload failed: try again with backoff (the snapshot may be stale)."""
        if self._stopping:
            return
        delay = self._backoff.next()
        log.warn(
            "entitlement reload failed ({error}); retrying in {delay}s",
            error=one_line(failure.value),
            delay=delay,
        )
        if self._retry is None or not self._retry.active():
            self._retry = self.clock.callLater(delay, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        self.reload().addErrback(self._failed)

    # -- service -----------------------------------------------------------------------
    def startService(self) -> None:
        self._stopping = False
        self.loader = Database(self.db.dsn, self.db.reactor, size=1, timeout=self.load_timeout)
        super().startService()

    def stopService(self) -> Deferred:
        self._stopping = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        d = Deferred.fromCoroutine(self._stop())
        return d

    async def _stop(self) -> None:
        await super().stopService()
        # The load in flight ends by itself (the pool's time-out bounds it).
        await self._flight.when_idle()
        if self.loader is not None:
            self.loader.close()

