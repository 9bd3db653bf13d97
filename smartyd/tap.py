"""
``twistd smartyd``: L{makeService} builds the daemon's service tree.

It reads top to bottom, as the daemon starts:

  1. the configuration (validated once, immutable);
  2. the state-dir lock, the embedded PostgreSQL (when no DSN is set) and a
     first connection -- blocking checks, run before the reactor does, so
     each failure is one line on stderr and a non-zero exit;
  3. the database pool, the metrics and the app (every enabled feature,
     L{smartyd.wiring.build_app});
  4. the service tree: L{SmartyService} (log observer, signals, the embedded
     cluster) over L{smartyd.wiring.Daemon} (migrations, then the features'
     services), the HTTP listener and, for the embedded cluster, its
     L{ClusterSupervisor}.
"""

from __future__ import annotations

import gc
import os
import signal
import sys

import psycopg2
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.threads import deferToThread
from twisted.logger import ILogObserver, Logger
from twisted.python import usage

from smartyd import config as configmod
from smartyd.db import Database
from smartyd.db import embedded
from smartyd.db.supervisor import ClusterSupervisor
from smartyd.logs import ConsoleObserver, JSONLineObserver, fan_out, level_filtered
from smartyd.metrics import Metrics
from smartyd.util.text import one_line
from smartyd.util.twisted_internals import raise_listen_errors
from smartyd.wiring import Daemon, build_app

log = Logger()


class Options(usage.Options):
    synopsis = "[--config PATH]"
    optParameters = [
        ["config", "c", None, "Path to the TOML configuration (default: built-in defaults)."],
    ]


def makeService(options, reactor=None):
    if reactor is None:
        # twistd has installed the reactor it was asked for by now; importing
        # it at module level would install the default one at plugin scan time.
        from twisted.internet import reactor
    try:
        cfg = configmod.load(options["config"])
    except configmod.ConfigError as e:
        raise fail(f"config: {e}")
    lock_fd, cluster, dsn = preflight(cfg)

    db = Database(dsn, reactor, size=cfg.database.pool_size, timeout=cfg.database.timeout)
    app = build_app(cfg, reactor=reactor, db=db, metrics=Metrics())

    root = SmartyService(cfg, reactor, cluster=cluster, lock_fd=lock_fd)
    daemon = Daemon(cfg, reactor, db, app, on_fatal=root.fatal)
    daemon.setServiceParent(root)
    http = StreamServerEndpointService(serverFromString(reactor, cfg.http.listen), daemon.site)
    raise_listen_errors(http)
    http.setServiceParent(root)
    if cluster is not None:
        # Restarts the embedded cluster when its postmaster dies, and exits
        # non-zero when it stays down.  Added last, so it stops first: no
        # restarts while the tree shuts down.  The pool pokes it whenever a
        # connection breaks.
        supervisor = ClusterSupervisor(cluster, reactor, root.fatal,
                                       restart_timeout=cfg.database.embedded_restart_timeout)
        supervisor.setServiceParent(root)
        db.on_unavailable = supervisor.poke
    return root


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
    log.critical("start-up failed: {message}", message=message, console=False)
    return SystemExit(1)


def preflight(cfg: configmod.Config) -> tuple[int, embedded.EmbeddedCluster | None, str]:
    """
    Blocking start-up checks, run before the reactor starts: the state dir
    lock, the embedded cluster, and that the database answers at all.
    Returns the lock's descriptor, the embedded cluster (None with a DSN) and
    the DSN to use.
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
    try:
        psycopg2.connect(dsn, connect_timeout=5).close()
    except psycopg2.Error as e:
        raise fail(f"[database] dsn: cannot connect: {one_line(e)}")
    return lock_fd, cluster, dsn


class SmartyService(MultiService):
    """
    The root service: the log (JSON lines in ``[log] file``, and short human
    lines on the terminal), SIGUSR1, the embedded cluster and the state-dir lock.
    """

    def __init__(self, cfg: configmod.Config, reactor, cluster=None, lock_fd=None):
        super().__init__()
        self.cfg = cfg
        self.reactor = reactor
        self.cluster = cluster
        self.lock_fd = lock_fd  # held for the process's lifetime
        self.observer = JSONLineObserver(cfg.log.file)
        self.log_observer = fan_out(
            level_filtered(self.observer, cfg.log.level),
            # With ``twistd -n`` the terminal (or the journal) sees the start-up
            # steps and warnings; daemonized, stderr is /dev/null.
            ConsoleObserver(sys.__stderr__),
        )

    def setServiceParent(self, parent):
        # twistd makes the Application after makeService; registering our
        # observer on it makes twistd log through it.
        if hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, self.log_observer)
        return super().setServiceParent(parent)

    def privilegedStartService(self):
        try:
            super().privilegedStartService()
        except Exception as e:
            raise fail(f"[http] listen {self.cfg.http.listen}: {one_line(e)}")
        log.info("listening on {listen} (HTTP)", listen=self.cfg.http.listen, console=True)

    def startService(self):
        # From here on initdb/pg_ctl run only in threads (supervisor, stop).
        embedded.guard_reactor_thread()
        signal.signal(signal.SIGUSR1, lambda *_: self.reactor.callFromThread(self.reopen_log))
        super().startService()
        # Everything built so far lives as long as the daemon: out of the
        # collector's reach, a full collection walks only what came later
        # instead of stopping every thread (the reactor's too) for tens of ms
        # (bench/vod_sync.py: full_gc_max_ms).
        gc.collect()
        gc.freeze()

    def reopen_log(self) -> None:
        self.observer.reopen()
        log.info("log file reopened")

    def fatal(self, message: str) -> None:
        """An unrecoverable failure after the reactor started: exit non-zero."""
        fail(message)
        self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        if self.reactor.running:
            self.reactor.stop()

    def stopService(self):
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self):
        await super().stopService()
        if self.cluster is not None:
            try:
                await deferToThread(self.cluster.stop)
                log.info("embedded PostgreSQL stopped")
            except Exception as e:
                log.error("stopping embedded PostgreSQL failed: {error}", error=one_line(e))
        embedded.guard_reactor_thread(False)
        self.observer.close()
