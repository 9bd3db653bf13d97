"""
The daemon's parts wired together: database, metrics, HTTP root, features.

L{build_root} is what both the daemon and the tests serve, so a test through
``StubTreq`` exercises the same routing, body caps and features as
production.  L{Daemon} is the service that brings the database up (migrations
under an advisory lock, retried while the server is unreachable) and then
starts the features that need it.
"""

from __future__ import annotations

from typing import Callable

from attrs import define, field
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from smartyd.config import Config
from smartyd.db import Database, DatabaseUnavailable
from smartyd.db.migrate import migrate
from smartyd.metrics import Metrics
from smartyd.web import Health, Root, make_site

log = Logger()


@define
class Parts:
    """Everything a feature may depend on; built once by the composition root."""

    cfg: Config
    reactor: object
    db: Database
    metrics: Metrics
    started: float
    services: list = field(factory=list)
    mounts: list = field(factory=list)
    health_extra: list = field(factory=list)
    # async hook(tx, payment) run inside every accepted payment's transaction
    # (pass this list itself as ``hooks=`` to smartyd.payments.accept).
    payment_hooks: list = field(factory=list)
    # False while the daemon is starting (migrations, caches): /health says 503.
    ready: bool = True


def build_parts(cfg: Config, reactor, db: Database, metrics: Metrics | None = None) -> Parts:
    """Build every enabled feature; return the parts with their mounts and services."""
    metrics = metrics or Metrics()
    metrics.watch_db(db)
    parts = Parts(cfg=cfg, reactor=reactor, db=db, metrics=metrics, started=reactor.seconds())
    from smartyd import features

    features.install(parts)
    return parts


def build_root(parts: Parts) -> Root:
    health = Health(
        parts.db,
        parts.metrics,
        parts.reactor,
        parts.started,
        ready=lambda: parts.ready,
        extra=lambda: {k: v for fn in parts.health_extra for k, v in fn().items()},
    )
    root = Root([("/health", health.resource()), ("/metrics", health.resource())])
    for prefix, resource in parts.mounts:
        root.mount(prefix, resource)
    return root


class Daemon(MultiService):
    """Database start-up, then the features' services."""

    def __init__(self, cfg: Config, reactor, dsn: str, on_fatal: Callable[[str], None]):
        super().__init__()
        self.cfg = cfg
        self.reactor = reactor
        self.on_fatal = on_fatal
        self.db = Database(
            dsn, reactor, size=cfg.database.pool_size, timeout=cfg.database.timeout
        )
        self.parts = build_parts(cfg, reactor, self.db)
        self.parts.ready = False
        self.root = build_root(self.parts)
        self.site = make_site(self.root, cfg.http.max_body, reactor=reactor)
        self.ready: Deferred = Deferred()
        self._stopping = False
        self._retry = None

    def startService(self):
        # The feature services start once the schema is in place.
        self.running = 1
        log.info("smartyd starting (config {source})", source=self.cfg.source)
        Deferred.fromCoroutine(self._start()).addErrback(
            lambda f: self.on_fatal(f.getErrorMessage())
        )

    async def _start(self, delay: float = 0.5):
        from twisted.internet.task import deferLater

        while not self._stopping:
            try:
                applied = await migrate(self.db)
                break
            except DatabaseUnavailable as e:
                log.warn("database unavailable at start-up ({error}); retrying", error=str(e))
                self._retry = deferLater(self.reactor, delay, lambda: None)
                try:
                    await self._retry
                except Exception:
                    return
                delay = min(delay * 2, 10)
        else:
            return
        log.info("schema up to date ({count} migrations applied)", count=len(applied))
        for svc in self.parts.services:
            svc.setServiceParent(self)
        self.parts.ready = True
        self.ready.callback(None)
        log.info("smartyd ready")

    def stopService(self):
        self._stopping = True
        if self._retry is not None and not self._retry.called:
            self._retry.cancel()
        d = super().stopService()

        def close(result):
            self.db.close()
            return result

        return d.addBoth(close)
