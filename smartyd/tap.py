"""
The composition root: ``twistd smartyd`` builds its service tree here.

``makeService`` validates the configuration, takes the state-dir lock and
starts the embedded PostgreSQL when no DSN is configured.  These run before
the reactor does, so each failure is one line on stderr and a non-zero exit.
The service tree then starts the database pool, applies migrations, loads
caches and serves HTTP.
"""

from __future__ import annotations

import os
import signal
import sys

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import ILogObserver, Logger
from twisted.python import usage

from smartyd import config as configmod
from smartyd.app import Daemon
from smartyd.db import embedded
from smartyd.db.supervisor import ClusterSupervisor
from smartyd.logs import JSONLineObserver, level_filtered

log = Logger()


class Options(usage.Options):
    synopsis = "[--config PATH]"
    optParameters = [
        ["config", "c", None, "Path to the TOML configuration (default: built-in defaults)."],
    ]


def fail(message: str) -> SystemExit:
    """
    Report a start-up failure as one line on the real stderr (twistd has
    redirected sys.stderr into the log by the time services start) and
    return the SystemExit to raise.
    """
    try:
        sys.__stderr__.write(f"smartyd: {message}\n")
        sys.__stderr__.flush()
    except (AttributeError, OSError):
        pass
    log.critical("start-up failed: {message}", message=message)
    return SystemExit(1)


def preflight_dsn(cfg: configmod.Config) -> tuple[str, embedded.EmbeddedCluster | None, int]:
    """
    Blocking start-up checks, run before the reactor starts: the state dir
    lock, the embedded cluster, and that the database answers at all.
    """
    try:
        lock_fd = embedded.lock_state_dir(cfg.state.dir)
    except (embedded.EmbeddedError, OSError) as e:
        raise fail(f"state dir {cfg.state.dir}: {e}")
    cluster = None
    if cfg.database.dsn:
        dsn = cfg.database.dsn
    else:
        cluster = embedded.EmbeddedCluster.in_state_dir(cfg.state.dir)
        try:
            dsn = cluster.ensure_running()
        except (embedded.EmbeddedError, OSError) as e:
            raise fail(f"embedded PostgreSQL under {cluster.pgdata}: {e}")
    import psycopg2

    try:
        psycopg2.connect(dsn, connect_timeout=5).close()
    except psycopg2.Error as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise fail(f"[database] dsn: cannot connect: {detail}")
    return dsn, cluster, lock_fd


class SmartyService(MultiService):
    """The root service: owns the log observer, the embedded cluster and the daemon."""

    def __init__(self, cfg, reactor, dsn, cluster=None, lock_fd=None):
        super().__init__()
        self.cfg = cfg
        self.reactor = reactor
        self.cluster = cluster
        self.lock_fd = lock_fd
        self.observer = JSONLineObserver(cfg.log.file)
        self.filtered = level_filtered(self.observer, cfg.log.level)
        self.daemon = Daemon(cfg, reactor, dsn, on_fatal=self.fatal)
        self.daemon.setServiceParent(self)
        self.http = StreamServerEndpointService(
            serverFromString(reactor, cfg.http.listen), self.daemon.site
        )
        self.http._raiseSynchronously = True
        self.http.setServiceParent(self)
        # [h-db] Restart the embedded cluster when its postmaster dies; exit
        # non-zero (self.fatal) when it stays down.  Added last, so it stops
        # first: no restarts while the tree shuts down and _stop stops the
        # cluster.  The pool pokes it whenever a connection breaks.
        self.supervisor = None
        if cluster is not None:
            self.supervisor = ClusterSupervisor(
                cluster, reactor, self.fatal,
                restart_timeout=cfg.database.embedded_restart_timeout,
            )
            self.supervisor.setServiceParent(self)
            self.daemon.db.on_unavailable = self.supervisor.poke

    def setServiceParent(self, parent):
        # twistd makes the Application after makeService; registering our
        # observer on it makes twistd log through it (JSON lines, level-filtered).
        if hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, self.filtered)
        return super().setServiceParent(parent)

    def privilegedStartService(self):
        try:
            super().privilegedStartService()
        except Exception as e:
            raise fail(f"[http] listen {self.cfg.http.listen}: {_one_line(e)}")

    def startService(self):
        signal.signal(signal.SIGUSR1, lambda *_: self.reactor.callFromThread(self.reopen_log))
        super().startService()

    def reopen_log(self) -> None:
        self.observer.reopen()
        log.info("log file reopened")

    def fatal(self, message: str) -> None:
        """An unrecoverable start-up failure after the reactor started: exit non-zero."""
        fail(message)
        self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        if self.reactor.running:
            self.reactor.stop()

    def stopService(self):
        d = Deferred.fromCoroutine(self._stop())
        return d

    async def _stop(self):
        await super().stopService()
        if self.cluster is not None:
            from twisted.internet.threads import deferToThread

            try:
                await deferToThread(self.cluster.stop)
                log.info("embedded PostgreSQL stopped")
            except Exception as e:
                log.error("stopping embedded PostgreSQL failed: {error}", error=_one_line(e))
        self.observer.close()


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def makeService(options, reactor=None):
    if reactor is None:
        from twisted.internet import reactor
    try:
        cfg = configmod.load(options["config"])
    except configmod.ConfigError as e:
        raise fail(f"config: {e}")
    dsn, cluster, lock_fd = preflight_dsn(cfg)
    return SmartyService(cfg, reactor, dsn, cluster, lock_fd)
