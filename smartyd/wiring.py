"""
The composition root: the whole daemon, assembled in one place, top to bottom.

    config ─▶ database ─▶ metrics ─▶ one HTTP client pool ─▶ Payments (its hooks)
           ─▶ each enabled feature, built by a plain factory that *returns*
              its HTTP mounts and its services (L{Feature})
           ─▶ the root resource ─▶ the service tree (L{Daemon})

L{build_app} is what the daemon serves and what the tests drive (with a
``task.Clock`` as the reactor and a ``StubTreq`` client as the partners' HTTP
client), so a test exercises the same routing, body caps and features as
production.  ``smartyd-admin`` builds the same app (its services never
started) and runs each command on its handles, so a command moves money as
the daemon does; the fast token worker processes build what they need from
the same factories, with their reactor passed in.

L{Daemon} brings the database up (migrations under an advisory lock,
retried while the server is unreachable), then starts the features'
services and flips the one L{Readiness} that ``/health`` and OSMP read.
"""

from __future__ import annotations

from typing import Any, Callable

from attrs import define, field
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from smartyd.billing import make_billing, payment_hooks as billing_hooks
from smartyd.billing_api import make_billing_api
from smartyd.config import Config
from smartyd.console import make_console
from smartyd.db import Database, DatabaseUnavailable
from smartyd.db.migrate import migrate
from smartyd.feature import Feature, Readiness
from smartyd.fiscal import make_dreamkas, payment_hooks as fiscal_hooks
from smartyd.gateways import make_assist, make_payture
from smartyd.http.health import Health
from smartyd.http.root import Root, make_site
from smartyd.metrics import Metrics
from smartyd.osmp import make_osmp
from smartyd.partners import HTTPClientService
from smartyd.payments import Payments
from smartyd.streams import make_streams
from smartyd.tvmw import make_tvmw
from smartyd.util.backoff import Backoff
from smartyd.vod import enabled as vod_enabled, make_vod
from smartyd.widgets import make_epg, make_widgets

log = Logger()


@define
class App:
    """
    The assembled daemon: its root resource, the features' services and the
    billing core (its charging job in ``billing.services``).
    """

    root: Root
    services: list
    readiness: Readiness
    payments: Payments
    features: dict[str, Feature] = field(factory=dict)
    billing: Feature | None = None


def needs_http_client(cfg: Config) -> bool:
    """True when an enabled feature talks to a partner over HTTP."""
    return (cfg.assist.enabled or cfg.payture.enabled or cfg.dreamkas.enabled
            or vod_enabled(cfg) or bool(cfg.epg.xmltv_url))


def build_app(
    cfg: Config,
    *,
    reactor: Any,
    db: Database,
    metrics: Metrics,
    http_client: Any = None,
    extra_hooks: tuple = (),
    ready: bool = False,
) -> App:
    """
    Assemble every enabled feature on ``db`` and ``reactor``.

    @param http_client: the treq client partner clients share; None builds
        one HTTP connection pool (a service of the app) when a feature needs it.
    @param extra_hooks: payment hooks run after the configured ones, inside
        each accepting transaction (tests use them to park or break a pay).
    @param ready: the initial readiness (tests that migrate the database
        themselves start ready).
    """
    metrics.watch_db(db)
    readiness = Readiness(ready)
    services: list = []
    if http_client is None and needs_http_client(cfg):
        pool = HTTPClientService(reactor)
        services.append(pool)
        http_client = pool.client
    # A payment settles its customer (suspended charges taken, DEBT accounts
    # reactivated) in the payment's transaction, before the configured hooks.
    payments = Payments(hooks=fiscal_hooks(cfg.dreamkas) + tuple(extra_hooks),
                        settle=billing_hooks(cfg.billing))

    features: dict[str, Feature] = {}
    if cfg.osmp.enabled:
        features["osmp"] = make_osmp(cfg.osmp, db=db, clock=reactor, payments=payments,
                                     metrics=metrics, readiness=readiness,
                                     trusted_proxies=cfg.http.trusted_proxies)
    features["streams"] = make_streams(cfg, db=db, reactor=reactor, metrics=metrics)
    if cfg.assist.enabled:
        features["assist"] = make_assist(cfg.assist, db=db, client=http_client, clock=reactor,
                                         payments=payments, metrics=metrics)
    if cfg.payture.enabled:
        features["payture"] = make_payture(cfg.payture, db=db, client=http_client, clock=reactor,
                                           payments=payments, metrics=metrics,
                                           trusted_proxies=cfg.http.trusted_proxies,
                                           billing=cfg.billing)
    if cfg.billing_api.enabled:
        features["billing_api"] = make_billing_api(cfg.billing_api, cfg.billing, db=db,
                                                   clock=reactor, metrics=metrics,
                                                   readiness=readiness,
                                                   trusted_proxies=cfg.http.trusted_proxies)
    if cfg.dreamkas.enabled:
        features["dreamkas"] = make_dreamkas(cfg.dreamkas, db=db, client=http_client,
                                             clock=reactor, metrics=metrics)
    if vod_enabled(cfg):
        features["vod"] = make_vod(cfg, db=db, client=http_client, clock=reactor,
                                   metrics=metrics)
    if cfg.widgets.enabled:
        features["widgets"] = make_widgets(
            cfg, db=db, clock=reactor, metrics=metrics,
            assist=features["assist"].handle if "assist" in features else None,
            payture=features["payture"].handle if "payture" in features else None)
    if cfg.epg.xmltv_url:
        features["epg"] = make_epg(cfg, db=db, client=http_client, clock=reactor,
                                   metrics=metrics)
    if cfg.console.enabled:
        # Its own listener (a service of the feature), no mount on the HTTP root.
        features["console"] = make_console(
            cfg, db=db, reactor=reactor, metrics=metrics,
            health_sources=tuple(f.health for f in features.values() if f.health))

    if cfg.tvmw.enabled:
        features["tvmw"] = make_tvmw(
            cfg, db=db, reactor=reactor, metrics=metrics,
            entitlements=features["streams"].handle,
            features={name: f.handle for name, f in features.items() if f.handle is not None})

    # The billing is the core, not an optional feature: always built (its
    # charging job only in the charging modes), kept out of ``features`` and
    # ``services`` (the Daemon starts its services after the features').
    # Payture's autopayment runs inside the charging job, before a batch settles.
    autopay = features["payture"].handle.autopay if "payture" in features else None
    billing = make_billing(cfg.billing, db=db, clock=reactor, metrics=metrics,
                           before_settle=autopay.before_settle if autopay else None)
    health = Health(db, metrics, reactor, started=reactor.seconds(), ready=readiness,
                    sources=[f.health for f in features.values() if f.health]).resource()
    root = Root([("/health", health), ("/metrics", health)])
    for feature in features.values():
        for prefix, resource in feature.mounts:
            root.mount(prefix, resource)
        services.extend(feature.services)
    return App(root=root, services=services, readiness=readiness, payments=payments,
               features=features, billing=billing)


class Daemon(MultiService):
    """
    The database first (migrations, retried with backoff while the server is
    unreachable), then the app's services; then the app is ready.
    """

    def __init__(self, cfg: Config, reactor: Any, db: Database, app: App,
                 on_fatal: Callable[[str], None]):
        super().__init__()
        self.cfg = cfg
        self.reactor = reactor
        self.db = db
        self.app = app
        self.site = make_site(app.root, cfg.http.max_body, reactor=reactor)
        self.on_fatal = on_fatal
        self.ready: Deferred = Deferred()
        self._stopping = False
        self._retry: Deferred | None = None

    def startService(self):
        # The app's services start once the schema is in place.
        self.running = 1
        log.info("smartyd starting (config {source})", source=self.cfg.source, console=True)
        Deferred.fromCoroutine(self._start()).addErrback(
            lambda f: self.on_fatal(f.getErrorMessage())
        )

    async def _start(self) -> None:
        backoff = Backoff(initial=0.5, maximum=10.0)
        while True:
            try:
                applied = await migrate(self.db)
                break
            except DatabaseUnavailable as e:
                delay = backoff.next()
                log.warn("database unavailable at start-up ({error}); retrying in {delay}s",
                         error=str(e), delay=delay)
                self._retry = deferLater(self.reactor, delay, lambda: None)
                try:
                    await self._retry
                except Exception:
                    return
                if self._stopping:
                    return
        log.info("schema up to date ({count} migrations applied)", count=len(applied),
                 console=True)
        for svc in (*self.app.services, *self.app.billing.services):
            svc.setServiceParent(self)
        self.app.readiness.ready = True
        self.ready.callback(None)
        log.info("features enabled: {features}", features=", ".join(self.app.features),
                 console=True)
        log.info("smartyd ready", console=True)

    def stopService(self):
        self._stopping = True
        if self._retry is not None and not self._retry.called:
            self._retry.cancel()
        d = super().stopService()

        def close(result):
            self.db.close()
            return result

        return d.addBoth(close)
