"""
``workers = N > 1``: N processes share the fast listener's socket.

The daemon (the parent) listens on ``[tokens] fast_listen`` but never accepts
on it; it spawns N children (``python -m smartyd.streams.worker``) with the
listening socket as their file descriptor 3, and each child adopts it
(C{IReactorSocket.adoptStreamPort}) once its own entitlement snapshot has
loaded -- every child LISTENs for changes on its own connection.  The kernel
hands each new connection to one of the children accepting on the socket;
the children take turns (L{smartyd.streams.worker.TakeTurns}) so that a burst
of connections is spread over all of them.  While a child restarts, the
others accept its share.

The parent talks to each child over pipes:

- the child's stdin: the child exits when it reads end-of-file, so children do
  not outlive a daemon that was killed;
- the child's stdout: JSON lines -- C{{"ready": pid}}, C{{"log": record}} (its
  log events, re-emitted into the daemon's log, which the daemon rotates),
  C{{"checks": [[outcome, reason, n], ...], "reloads": n}} (counts since the
  last report, added to the daemon's metrics once a second);
- the child's stderr: anything else (a crash before logging started), logged.

The child reads the same configuration file as the daemon (C{--config}), so no
secret is on a command line; with the embedded database it derives the socket
DSN from the state directory.  A child that exits while the pool runs is
restarted with backoff; stopping the pool sends SIGTERM, then SIGKILL after
C{stop_timeout}.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from attrs import define, field
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from smartyd.streams.check import add_counts
from smartyd.streams.fast import FastListenError, listen_now
from smartyd.util.backoff import Backoff
from smartyd.util.text import one_line

log = Logger()

MAX_LINE = 1024 * 1024
# Keys of a relayed log record that are not its fields.
_NOT_FIELDS = frozenset({"time", "level", "ns", "event", "format", "message", "isError", "worker",
                         "system", "failure"})


class _HeldOnly(Factory):
    """The parent's factory on the shared port; the parent never accepts."""

    protocol = Protocol
    noisy = False

    def logPrefix(self) -> str:
        return "fast listener (worker processes accept)"


@define(eq=False)
class WorkerPool(Service):
    """
    Runs C{workers} child processes serving the fast listener.

    @ivar ready: fires once every child has reported ready (its snapshot is
        loaded and it accepts on the socket) at least once.
    @ivar port: the listening port the children share.
    @ivar children: worker index -> L{WorkerProcess}, for the running children.
    @ivar spawned: how many children were started in all (restarts included).
    """

    name = "fast-workers"

    reactor: Any
    description: str
    workers: int
    config_path: str | None  # the daemon's configuration file; None: built-in defaults
    metrics: Any = None
    python: str = sys.executable
    env: dict | None = None  # the children's environment; None: the daemon's
    min_restart: float = 0.5
    max_restart: float = 10.0
    stop_timeout: float = 10.0
    port: Any = field(default=None, init=False)
    ready: Deferred = field(factory=Deferred, init=False)
    children: dict = field(factory=dict, init=False)
    spawned: int = field(default=0, init=False)
    _restarts: dict = field(factory=dict, init=False)
    _backoffs: dict = field(factory=dict, init=False)
    _ready_once: set = field(factory=set, init=False)
    _ready_waiters: list = field(factory=list, init=False)

    # -- service ------------------------------------------------------------------------
    def startService(self) -> None:
        if self.config_path is not None and not os.path.isfile(self.config_path):
            raise FastListenError(
                f"[tokens] workers: the worker processes read the daemon's configuration"
                f" file, and {self.config_path!r} is not one"
            )
        self.port = listen_now(self.reactor, self.description, _HeldOnly())
        self.port.stopReading()  # the children accept; the parent holds the socket
        super().startService()
        log.info(
            "fast token listener on {address} with {workers} worker processes",
            address=str(self.port.getHost()),
            workers=self.workers,
            console=True,
        )
        for index in range(self.workers):
            self._spawn(index)

    def stopService(self) -> Deferred:
        super().stopService()
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        ended = []
        for child in list(self.children.values()):
            ended.append(child.ended)
            child.signal("TERM")
        kill = self.reactor.callLater(self.stop_timeout, self._kill_all)

        def stopped(_):
            if kill.active():
                kill.cancel()
            port, self.port = self.port, None
            return port.stopListening() if port is not None else None

        return DeferredList(ended).addCallback(stopped)

    def _kill_all(self) -> None:
        for child in list(self.children.values()):
            log.warn("fast worker {index} did not stop in time; killing it", index=child.index)
            child.signal("KILL")

    # -- children -------------------------------------------------------------------------
    def _args(self) -> list[str]:
        args = [self.python, "-m", "smartyd.streams.worker", "--fd", "3"]
        if self.config_path is not None:
            args += ["--config", self.config_path]
        return args

    def _spawn(self, index: int) -> None:
        self._restarts.pop(index, None)
        child = WorkerProcess(self, index, self.reactor.seconds())
        self.children[index] = child
        self.spawned += 1
        self.reactor.spawnProcess(
            child,
            self.python,
            self._args(),
            env=os.environ.copy() if self.env is None else self.env,
            childFDs={0: "w", 1: "r", 2: "r", 3: self.port.fileno()},
        )

    def next_ready(self) -> Deferred:
        """Fires when a child next reports ready (e.g. one restarted after a crash)."""
        d: Deferred = Deferred()
        self._ready_waiters.append(d)
        return d

    def child_ready(self, child: "WorkerProcess", pid: Any) -> None:
        log.info("fast worker {index} ready (pid {pid})", index=child.index, pid=pid)
        self._ready_once.add(child.index)
        if len(self._ready_once) == self.workers and not self.ready.called:
            self.ready.callback(self)
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            if not d.called:
                d.callback(child.index)

    def child_ended(self, child: "WorkerProcess", reason: Failure) -> None:
        if self.children.get(child.index) is child:
            del self.children[child.index]
        if not self.running:
            return
        backoff = self._backoffs.setdefault(
            child.index, Backoff(initial=self.min_restart, maximum=self.max_restart))
        if self.reactor.seconds() - child.started >= 30:
            backoff.reset()  # it ran a good while: a fresh failure, not a crash loop
        delay = backoff.next()
        log.warn(
            "fast worker {index} exited ({status}); restarting in {delay}s",
            index=child.index,
            status=one_line(reason.value),
            delay=delay,
        )
        self._restarts[child.index] = self.reactor.callLater(delay, self._spawn, child.index)

    def add_counts(self, checks: Any, reloads: Any, durations: Any = None) -> None:
        """Add a child's report to the daemon's metrics (ignoring anything malformed)."""
        if self.metrics is None:
            return
        add_counts(self.metrics, "fast", checks)
        if durations is not None:
            self.metrics.token_check_seconds.labels("fast").merge(durations)
        if isinstance(reloads, int) and reloads > 0:
            self.metrics.entitlement_reloads.inc(reloads)


class WorkerProcess(ProcessProtocol):
    """The parent's end of one child's pipes."""

    def __init__(self, pool: WorkerPool, index: int, started: float):
        self.pool = pool
        self.index = index
        self.started = started
        self.ended: Deferred = Deferred()
        self._buffers = {1: b"", 2: b""}
        self._log = {}

    def signal(self, name: str) -> None:
        try:
            self.transport.signalProcess(name)
        except ProcessExitedAlready:
            pass

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd not in self._buffers:
            return
        *lines, rest = (self._buffers[fd] + data).split(b"\n")
        if len(rest) > MAX_LINE:
            log.warn("fast worker {index} wrote an over-long line; dropped", index=self.index)
            rest = b""
        self._buffers[fd] = rest
        for line in lines:
            if fd == 1:
                self._message(line)
            elif line.strip():
                log.warn(
                    "fast worker {index}: {line}",
                    index=self.index,
                    line=line.decode("utf-8", "replace"),
                )

    def _message(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            log.warn("fast worker {index} sent an unreadable message", index=self.index)
            return
        if "ready" in message:
            self.pool.child_ready(self, message["ready"])
        if "checks" in message or "reloads" in message:
            self.pool.add_counts(message.get("checks"), message.get("reloads"),
                                 message.get("durations"))
        record = message.get("log")
        if isinstance(record, dict):
            self._relay(record)

    def _relay(self, record: dict) -> None:
        """Re-emit a child's log event, with its level, namespace and fields."""
        try:
            level = LogLevel.levelWithName(str(record.get("level")))
        except Exception:
            level = LogLevel.info
        namespace = str(record.get("ns") or "smartyd.streams.worker")
        logger = self._log.get(namespace)
        if logger is None:
            logger = self._log[namespace] = Logger(namespace=namespace)
        fields = {
            k: v for k, v in record.items()
            if isinstance(k, str) and k not in _NOT_FIELDS and not k.startswith("log_")
        }
        if "failure" in record:
            fields["traceback"] = record["failure"]
        logger.emit(level, "{event}", event=str(record.get("event", "")), worker=self.index,
                    **fields)

    def processEnded(self, reason: Failure) -> None:
        self.pool.child_ended(self, reason)
        self.ended.callback(None)
