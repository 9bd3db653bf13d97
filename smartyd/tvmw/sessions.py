"""
Device sessions: the ``authkey`` a device gets from ``Login`` and sends with
every call.

An authkey is 128 random bits written as 32 lowercase hex digits.  Only its
sha256 is stored (``tvmw_sessions``, migration 0015), with the account, the
device's uid and type, the address it logged in from, and when it was
created and last seen.  So a session works on every instance and survives a
restart, and a copy of the database holds no usable key.  Keys are looked up
by that hash (in memory and in the table), never compared as text, so the
time a lookup takes says nothing about the key.

Validating a key is memory: L{SessionStore} keeps every live session of the
database in a dict by key hash, loaded when its notification connection comes
up and kept current by ``NOTIFY smartyd_tvmw`` (payload: the ended key's hash),
which the table's delete trigger sends.  Sessions end in the database only --
``Logout``, the idle sweep, and the trigger on ``accounts`` that deletes an
account's sessions when its password changes, when it is deactivated
(blocked, deleted; not for DEBT, migration 0022: a debtor stays logged in
and watches nothing until it pays) or moves to another customer -- so every path that
changes an account (CLI, widgets, Billing API, console, charging) ends them
on every instance.  A key this instance has not seen (logged in on another
instance a moment ago) or whose last use it saw longer than ``ttl`` ago is
looked up once in the database (one primary-key read) and kept.

A zap costs no password hash and no database write: ``last_seen`` (and what
``AccountStatus`` compares against: the channel-list digest and the last
message shown) is written every L{FLUSH_INTERVAL}
seconds for all sessions used since, in one statement; the same tick ends the
sessions idle for longer than ``ttl`` (a DELETE, announced like any other end;
it waits two flush intervals more, so that a use on another instance just
before the ttl has been written first -- validation itself holds to ``ttl``).

The same notification connection carries ``smartyd_entitlements``, on which
the channel catalog (L{ChannelCache}) reloads when channels or their
categories change.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime, timezone
from typing import Any, Callable

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from smartyd.db import Database, Tx
from smartyd.db.listen import Listener
from smartyd.streams.entitlements import CHANNEL as ENTITLEMENTS_CHANNEL
from smartyd.streams.sessions import RetryingLoop
from smartyd.util.text import one_line

log = Logger()

CHANNEL = "smartyd_tvmw"
#: Seconds between the batched writes of last_seen (and the idle sweep).
FLUSH_INTERVAL = 5.0
#: Seconds a key ended by a notification is kept from being re-read from the
#: database (a lookup in flight may have read it before the delete committed).
ENDED_MEMORY = 120.0
_KEY_RE = re.compile(r"^[0-9a-f]{32}$")


def new_authkey() -> str:
    """A fresh authkey: 128 random bits, 32 hex digits."""
    return secrets.token_hex(16)


def key_hash(authkey: str) -> bytes:
    return hashlib.sha256(authkey.encode("ascii")).digest()


def well_formed(authkey: str | None) -> bool:
    return bool(authkey) and _KEY_RE.match(authkey) is not None


def ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


class Live:
    """One live session as this instance knows it."""

    __slots__ = ("account_id", "customer_id", "abonement", "client_id", "device_uid",
                 "device", "ip", "last_seen", "digest", "message_seen")

    def __init__(self, account_id: int, customer_id: int, abonement: str, client_id: str,
                 device_uid: str, device: str, ip: str, last_seen: float, digest: str,
                 message_seen: int = 0):
        self.account_id = account_id
        self.customer_id = customer_id
        self.abonement = abonement
        self.client_id = client_id
        self.device_uid = device_uid
        self.device = device
        self.ip = ip
        self.last_seen = last_seen
        self.digest = digest
        self.message_seen = message_seen


# -- database ------------------------------------------------------------------------------
_SELECT = (
    "SELECT s.key_hash, s.account_id, a.customer_id, a.login, s.client_id, s.device_uid,"
    " s.device, s.ip, extract(epoch FROM s.last_seen)::float8, s.channels_digest,"
    " s.message_seen"
    " FROM tvmw_sessions s JOIN accounts a ON a.id = s.account_id"
)


def _live(row: tuple) -> tuple[bytes, Live]:
    return bytes(row[0]), Live(*row[1:])


async def load_sessions(tx: Tx, since: float) -> list[tuple]:
    return await tx.fetchall(_SELECT + " WHERE s.last_seen > %s", (ts(since),))


async def fetch_session(tx: Tx, h: bytes, since: float) -> tuple | None:
    return await tx.fetchone(_SELECT + " WHERE s.key_hash = %s AND s.last_seen > %s",
                             (h, ts(since)))


async def insert_session(tx: Tx, h: bytes, account_id: int, client_id: str, device_uid: str,
                         device: str, ip: str, now: float) -> None:
    """A new session; the device's earlier sessions on this account end."""
    await tx.execute("DELETE FROM tvmw_sessions WHERE account_id = %s AND device_uid = %s",
                     (account_id, device_uid))
    await tx.execute(
        "INSERT INTO tvmw_sessions (key_hash, account_id, client_id, device_uid, device, ip,"
        " created, last_seen) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (h, account_id, client_id, device_uid, device, ip, ts(now), ts(now)))


async def devices_in_session(tx: Tx, account_id: int, since: float, other_than: str) -> int:
    return await tx.fetchval(
        "SELECT count(DISTINCT device_uid) FROM tvmw_sessions"
        " WHERE account_id = %s AND last_seen > %s AND device_uid <> %s",
        (account_id, ts(since), other_than))


async def end_session(tx: Tx, h: bytes) -> bool:
    await tx.execute("DELETE FROM tvmw_sessions WHERE key_hash = %s", (h,))
    return tx.rowcount > 0


async def flush(tx: Tx, seen: dict[bytes, Live], zapped: dict[int, float],
                idle_before: float) -> None:
    """
    The batched writes: last_seen (digest, message shown) of the sessions used since
    the last flush, ``accounts.last_active`` of the accounts that got a stream
    URL (at most once an hour, as ``/streams/url`` writes it), and the end of
    the sessions idle since before ``idle_before``.  Rows in key order.
    """
    from smartyd.streams.web import LAST_ACTIVE_EVERY

    if seen:
        items = sorted(seen.items())
        await tx.execute(
            "UPDATE tvmw_sessions s SET last_seen = greatest(s.last_seen, to_timestamp(v.t)),"
            " channels_digest = v.d, message_seen = greatest(s.message_seen, v.m)"
            " FROM unnest(%s::bytea[], %s::float8[], %s::text[], %s::bigint[]) AS v(h, t, d, m)"
            " WHERE s.key_hash = v.h",
            ([h for h, _ in items], [v.last_seen for _, v in items],
             [v.digest for _, v in items], [v.message_seen for _, v in items]))
    if zapped:
        ids = sorted(zapped)
        await tx.execute(
            "UPDATE accounts a SET last_active = to_timestamp(v.t)"
            " FROM unnest(%s::bigint[], %s::float8[]) AS v(id, t)"
            " WHERE a.id = v.id AND (a.last_active IS NULL"
            "  OR a.last_active <= to_timestamp(v.t) - %s::interval)",
            (ids, [zapped[i] for i in ids], LAST_ACTIVE_EVERY))
    await tx.execute("DELETE FROM tvmw_sessions WHERE last_seen <= %s", (ts(idle_before),))


# -- the store -----------------------------------------------------------------------------
class SessionStore(MultiService):
    """
    The live sessions in memory (see the module's docstring).

    @ivar sessions: key hash -> L{Live}.
    @ivar on_catalog: called on ``smartyd_entitlements`` notifications about
        channels and after every (re)connect (the L{ChannelCache} reload).
    """

    def __init__(self, db: Database, clock: Any, ttl: float, metrics: Any = None,
                 on_catalog: Callable[[], Deferred | None] | None = None,
                 flush_interval: float = FLUSH_INTERVAL):
        super().__init__()
        self.db = db
        self.clock = clock
        self.ttl = ttl
        self.metrics = metrics
        self.on_catalog = on_catalog
        self.sessions: dict[bytes, Live] = {}
        self._seen: dict[bytes, Live] = {}  # used since the last flush
        self._zapped: dict[int, float] = {}
        self._ended: dict[bytes, float] = {}
        self._end_watchers: list[Deferred] = []
        self.listener = Listener(db, (CHANNEL, ENTITLEMENTS_CHANNEL), self._notified,
                                 on_connect=self.reload)
        self.listener.setServiceParent(self)
        self.flusher = _Flusher(self, flush_interval)
        self.flusher.setServiceParent(self)

    # -- validating ------------------------------------------------------------------------
    async def validate(self, authkey: str | None) -> Live | None:
        """The live session of ``authkey`` (its use noted), or None."""
        if not well_formed(authkey):
            return None
        h = key_hash(authkey)
        now = self.clock.seconds()
        live = self.sessions.get(h)
        if live is None or now - live.last_seen > self.ttl:
            row = await self.db.run_statement(fetch_session, h, now - self.ttl)
            if row is None or h in self._ended:
                self.sessions.pop(h, None)
                return None
            _, fresh = _live(row)
            if live is not None and h in self._seen:  # not yet written: ours is newer
                fresh.digest = live.digest
                fresh.message_seen = max(fresh.message_seen, live.message_seen)
            live = self.sessions[h] = fresh
        live.last_seen = now
        self._seen[h] = live
        return live

    def note_digest(self, authkey: str, live: Live, digest: str) -> None:
        """The channel list this session was given (written with the next flush)."""
        live.digest = digest
        self._seen[key_hash(authkey)] = live

    def note_message(self, authkey: str, live: Live, message_id: int) -> None:
        """The message shown to this session (not shown again; written with the next flush)."""
        live.message_seen = max(live.message_seen, message_id)
        self._seen[key_hash(authkey)] = live

    def note_zap(self, account_id: int) -> None:
        """A stream URL was minted: the account's last_active moves (in the next flush)."""
        self._zapped[account_id] = self.clock.seconds()

    def install(self, authkey: str, live: Live) -> None:
        """A session this instance just created."""
        self.sessions[key_hash(authkey)] = live

    async def end(self, authkey: str) -> bool:
        """Logout: the session ends in the database (and so on every instance)."""
        h = key_hash(authkey)
        self.sessions.pop(h, None)
        self._seen.pop(h, None)
        return await self.db.run(end_session, h)

    # -- keeping current ---------------------------------------------------------------------
    async def reload(self) -> None:
        """Every live session of the database (after each (re)connect)."""
        now = self.clock.seconds()
        rows = await self.db.run(load_sessions, now - self.ttl)
        fresh = {}
        for row in rows:
            h, live = _live(row)
            mine = self.sessions.get(h)
            if mine is not None and mine.last_seen > live.last_seen:
                live.last_seen, live.digest = mine.last_seen, mine.digest
                live.message_seen = max(live.message_seen, mine.message_seen)
            fresh[h] = live
        self.sessions = fresh
        log.info("device sessions loaded: {count}", count=len(fresh))
        if self.on_catalog is not None:
            await self.on_catalog()

    def _notified(self, channel: str, payload: str) -> None:
        if channel == CHANNEL:
            try:
                h = bytes.fromhex(payload)
            except ValueError:
                return
            self.sessions.pop(h, None)
            self._seen.pop(h, None)
            self._ended[h] = self.clock.seconds()
            watchers, self._end_watchers = self._end_watchers, []
            for d in watchers:
                d.callback(h)
        elif payload in ("channels", "channel_categories") and self.on_catalog is not None:
            d = self.on_catalog()
            if d is not None:
                Deferred.fromCoroutine(_quiet(d))

    def next_end(self) -> Deferred:
        """Fires with the key hash of the next session end announced to this instance."""
        d: Deferred = Deferred()
        self._end_watchers.append(d)
        return d

    async def flush(self) -> None:
        """Write what was used since the last flush; end idle sessions (here too)."""
        now = self.clock.seconds()
        seen, self._seen = self._seen, {}
        zapped, self._zapped = self._zapped, {}
        try:
            # The sweep waits two flushes past the ttl: a session revived on
            # another instance just before its ttl has its last_seen written by then.
            await self.db.run(flush, seen, zapped, now - self.ttl - 2 * self.flusher.interval)
        except BaseException:
            for h, v in seen.items():
                self._seen.setdefault(h, v)
            for a, t in zapped.items():
                self._zapped.setdefault(a, t)
            raise
        for h in [h for h, live in self.sessions.items() if now - live.last_seen > self.ttl]:
            del self.sessions[h]
        for h in [h for h, t in self._ended.items() if now - t > ENDED_MEMORY]:
            del self._ended[h]


async def _quiet(d) -> None:
    try:
        await d
    except Exception as e:
        log.warn("channel catalog reload failed ({error})", error=one_line(e))


class _Flusher(RetryingLoop):
    """Runs L{SessionStore.flush} every ``interval`` seconds; never raises; flushes on stop."""

    name = "tvmw-session-flush"
    recovered = "device sessions written again"
    failed = "device session write failed ({error}); kept for the next one"

    def __init__(self, store: SessionStore, interval: float):
        super().__init__(store.clock, interval, log)
        self.store = store

    def once(self) -> Any:
        return self.store.flush()

    def stopService(self) -> Deferred | None:
        super().stopService()
        return self.run()
