"""
LISTEN/NOTIFY with reconnection.

A L{Listener} keeps one dedicated connection LISTENing on some channels.  After
every (re)connect it calls ``on_connect`` first -- the owner reloads whatever
it caches, since notifications sent while we were away are lost -- and then
delivers each notification to ``on_notify(channel, payload)``.  A heartbeat
query finds connections that died silently.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from attrs import Factory, define, field
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from smartyd.db import Database, Dedicated
from smartyd.util.backoff import Backoff
from smartyd.util.text import one_line

log = Logger()


@define(eq=False)
class Listener(Service):
    db: Database
    channels: tuple[str, ...]
    on_notify: Callable[[str, str], Any]
    on_connect: Callable[[], Awaitable[Any]] | None = None
    heartbeat: float = 5.0
    max_backoff: float = 10.0
    _conn: Dedicated | None = None
    _backoff: Backoff = field(
        init=False, default=Factory(lambda self: Backoff(0.2, self.max_backoff), takes_self=True))
    _pending: Any = None
    _ticker: Any = None
    _stopped: bool = True
    ready: Deferred = field(factory=Deferred)
    connects: int = 0

    @property
    def clock(self):
        return self.db.reactor

    def startService(self):
        Service.startService(self)
        self._stopped = False
        self._schedule(0)

    def stopService(self):
        self._stopped = True
        for call in (self._pending, self._ticker):
            if call is not None and call.active():
                call.cancel()
        self._pending = self._ticker = None
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        return Service.stopService(self)

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def _schedule(self, delay: float) -> None:
        if self._stopped:
            return
        if self._pending is not None and self._pending.active():
            return
        self._pending = self.clock.callLater(delay, self._attempt)

    def _attempt(self) -> None:
        self._pending = None
        Deferred.fromCoroutine(self._connect()).addErrback(
            lambda f: log.failure("listener connect crashed", f)
        )

    async def _connect(self) -> None:
        conn = None
        try:
            conn = await self.db.open_dedicated()
            for ch in self.channels:
                await conn.execute(f'LISTEN "{ch}"')
        except Exception as e:
            if conn is not None:
                conn.close()
            delay = self._backoff.next()
            log.warn(
                "notification connection failed ({error}), retrying in {delay}s",
                error=one_line(e),
                delay=round(delay, 2),
            )
            self._schedule(delay)
            return
        if self._stopped:
            conn.close()
            return
        conn.on_lost(lambda: self._lost(conn))
        conn.on_notify(self.on_notify)
        self._conn = conn
        self._backoff.reset()
        self.connects += 1
        self._tick()
        try:
            if self.on_connect is not None:
                await self.on_connect()
        except Exception:
            log.failure("reload after (re)connect failed")
            self._lost(conn)
            return
        if not self.ready.called:
            self.ready.callback(None)

    def _tick(self) -> None:
        if self._stopped or self._conn is None:
            return
        conn = self._conn
        self._ticker = self.clock.callLater(self.heartbeat, self._beat, conn)

    def _beat(self, conn: Dedicated) -> None:
        self._ticker = None
        d = Deferred.fromCoroutine(conn.ping(self.heartbeat))
        d.addCallbacks(lambda _: self._tick(), lambda _: self._lost(conn))

    def _lost(self, conn: Dedicated) -> None:
        if conn is not self._conn:
            return
        log.warn("notification connection lost, reconnecting")
        if self._ticker is not None and self._ticker.active():
            self._ticker.cancel()
        self._ticker = None
        self._conn = None
        conn.close()
        self._schedule(self._backoff.peek())
