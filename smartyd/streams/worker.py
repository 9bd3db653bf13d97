"""
A fast-listener worker process: ``python -m smartyd.streams.worker --fd 3 [--config PATH]``.

Spawned by L{smartyd.streams.pool.WorkerPool}, never by hand.  It reads the
daemon's configuration, connects to the same database, loads and keeps its own
entitlement snapshot (LISTEN/NOTIFY on its own connection), then adopts the
listening socket it inherited as C{--fd} and serves checks on it.  See
L{smartyd.streams.pool} for the pipes it shares with the daemon.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol, IReadDescriptor
from twisted.internet.protocol import Protocol
from twisted.internet.stdio import StandardIO
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, globalLogBeginner
from zope.interface import implementer

from smartyd import config as configmod
from smartyd.db import Database
from smartyd.db.embedded import EmbeddedCluster
from smartyd.logs import event_to_dict, level_filtered
from smartyd.streams import make_codec, make_fast_checker, make_sessions
from smartyd.metrics import Durations
from smartyd.streams.check import Tallies
from smartyd.streams.entitlements import Entitlements
from smartyd.streams.fast import FastCheckFactory
from smartyd.util.twisted_internals import accept_one_per_read

log = Logger()

REPORT_INTERVAL = 1.0


@implementer(IHalfCloseableProtocol)
class ParentPipe(Protocol):
    """
    stdin/stdout to the daemon: JSON lines out; end-of-file in means the
    daemon is gone (stdout stays open for what is left to say).
    """

    def __init__(self, on_lost):
        self.on_lost = on_lost
        self.open = False
        self._closed: Deferred = Deferred()

    def connectionMade(self) -> None:
        self.open = True

    def send(self, message: dict) -> None:
        if self.open:
            self.transport.write(json.dumps(message, default=str).encode() + b"\n")

    def close(self, reactor: Any, timeout: float = 2.0) -> Deferred:
        """Flush what was sent and close; fires when done (or after C{timeout})."""
        if self.open:
            self.transport.loseConnection()
        d: Deferred = Deferred()
        self._closed.addBoth(lambda _: d.callback(None) if not d.called else None)
        d.addTimeout(timeout, reactor).addErrback(lambda _: None)
        return d

    def readConnectionLost(self) -> None:
        self.on_lost()

    def writeConnectionLost(self) -> None:
        self.open = False

    def connectionLost(self, reason=None) -> None:
        self.open = False
        if not self._closed.called:
            self._closed.callback(None)


@implementer(IReadDescriptor)
class TakeTurns:
    """
    Accepts on a listening port shared with other processes, taking turns.

    Twisted's port accepts up to a hundred connections per readiness event
    (more under load), so the process that wakes first takes a whole burst:
    the fifty keep-alive connections a streamer opens at once all land in one
    process while the others idle.  This reads the adopted port on its
    behalf: one connection per event, then a pause that grows with the
    connections this process already holds (C{per_connection} each, at most
    C{max_pause}), during which the other processes, woken by the same event,
    accept.  Clients that open a connection per request hold few at a time,
    so for them the pause stays near zero.

    @param load: returns how many connections this process holds.
    """

    def __init__(
        self,
        reactor: Any,
        port: Any,
        load: Callable[[], int],
        per_connection: float = 50e-6,
        max_pause: float = 0.001,
    ):
        self.reactor = reactor
        self.port = port
        self.load = load
        self.per_connection = per_connection
        self.max_pause = max_pause
        self._resume: Any = None
        self._reading = False

    def start(self) -> None:
        self.port.stopReading()
        self._read()

    def stop(self) -> None:
        if self._resume is not None and self._resume.active():
            self._resume.cancel()
        self._resume = None
        if self._reading:
            self.reactor.removeReader(self)
            self._reading = False

    def _read(self) -> None:
        self._resume = None
        self.reactor.addReader(self)
        self._reading = True

    # IReadDescriptor
    def fileno(self) -> int:
        return self.port.fileno()

    def logPrefix(self) -> str:
        return "fast-accept"

    def doRead(self) -> None:
        accept_one_per_read(self.port)
        self.port.doRead()
        pause = min(self.max_pause, self.load() * self.per_connection)
        if pause > 0:
            self.reactor.removeReader(self)
            self._reading = False
            self._resume = self.reactor.callLater(pause, self._read)

    def connectionLost(self, reason: Any) -> None:
        self._reading = False
        self.stop()


def database_dsn(cfg: configmod.Config) -> str:
    """The configured DSN, or the embedded cluster's (which the daemon runs) under the state dir."""
    return cfg.database.dsn or EmbeddedCluster.in_state_dir(cfg.state.dir).dsn()


class Worker:
    """One worker process's parts: database, snapshot, checker, the adopted port."""

    def __init__(self, reactor: Any, cfg: configmod.Config, fd: int, pipe: ParentPipe):
        self.reactor = reactor
        self.cfg = cfg
        self.fd = fd
        self.pipe = pipe
        self.db = Database(database_dsn(cfg), reactor, size=2, timeout=cfg.database.timeout)
        self.entitlements = Entitlements(self.db, clock=reactor)
        self.tallies = Tallies()
        self.durations = Durations()
        self.sessions, self.exchange = make_sessions(cfg, self.db, reactor)
        checker = make_fast_checker(cfg, make_codec(cfg), self.entitlements, reactor,
                                    self.tallies, self.sessions, self.durations)
        self.factory = FastCheckFactory(checker, reactor)
        self.port: Any = None
        self.turns: TakeTurns | None = None
        self._reported_reloads = 0
        self._report = LoopingCall(self.report)
        self._report.clock = reactor
        self._stopping = False

    def start(self) -> None:
        self.entitlements.startService()
        self.exchange.startService()
        self.entitlements.when_loaded().addCallback(self._adopt).addErrback(self._fatal)
        self._report.start(REPORT_INTERVAL, now=False).addErrback(self._fatal)

    def _adopt(self, _) -> None:
        if self._stopping:
            return
        probe = socket.socket(fileno=self.fd)
        try:
            family = probe.family
            # The reactor adopts a duplicate of the descriptor.
            self.port = self.reactor.adoptStreamPort(self.fd, family, self.factory)
        finally:
            probe.close()
        self.turns = TakeTurns(self.reactor, self.port, lambda: len(self.factory.connections))
        self.turns.start()
        self.pipe.send({"ready": os.getpid()})

    def report(self) -> None:
        """Send the counts since the last report to the daemon."""
        checks = self.tallies.take()
        durations = self.durations.take()
        reloads = self.entitlements.reloads - self._reported_reloads
        self._reported_reloads = self.entitlements.reloads
        if checks or reloads or durations:
            self.pipe.send({"checks": checks, "reloads": reloads, "durations": durations})

    def _fatal(self, failure) -> None:
        log.failure("fast worker failed", failure)
        if self.reactor.running:
            self.reactor.stop()

    async def stop(self) -> None:
        self._stopping = True
        if self._report.running:
            self._report.stop()
        if self.turns is not None:
            self.turns.stop()
        if self.port is not None:
            await self.port.stopListening()
            await self.factory.close_all()
        await self.exchange.stopService()
        await self.entitlements.stopService()
        self.db.close()
        self.report()
        await self.pipe.close(self.reactor)

    def parent_gone(self) -> None:
        """The daemon closed our stdin: it is gone; stop."""
        if not self._stopping:
            log.info("the daemon is gone; stopping")
            self._stopping = True
            self.reactor.stop()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m smartyd.streams.worker")
    p.add_argument("--config", help="the daemon's TOML configuration (default: built-in)")
    p.add_argument("--fd", type=int, required=True, help="the inherited listening socket")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = configmod.load(args.config)
    except configmod.ConfigError as e:
        sys.stderr.write(f"smartyd worker: config: {e}\n")
        return 2
    # The worker runs the default reactor; importing it at module level would
    # install it when the daemon merely imports this module.
    from twisted.internet import reactor

    worker: Worker | None = None
    pipe = ParentPipe(lambda: worker.parent_gone() if worker is not None else reactor.stop())
    StandardIO(pipe, reactor=reactor)
    observer = level_filtered(lambda event: pipe.send({"log": event_to_dict(event)}),
                              cfg.log.level)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    worker = Worker(reactor, cfg, args.fd, pipe)
    reactor.addSystemEventTrigger(
        "before", "shutdown", lambda: Deferred.fromCoroutine(worker.stop())
    )
    reactor.callWhenRunning(worker.start)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
