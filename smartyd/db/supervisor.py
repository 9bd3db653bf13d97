"""
Keep the embedded PostgreSQL running while the daemon lives.

Without supervision a dead postmaster (OOM killer, ``kill -9``, a crash)
leaves the daemon up but useless: /health says 503 and every payment answers
"retry later" forever, while systemd's ``Restart=always`` never triggers
because the process itself is fine.  L{ClusterSupervisor} notices (a periodic
check, and at once when the pool reports a broken connection), restarts the
cluster with backoff, and when it cannot bring it back within
``restart_timeout`` seconds gives up through ``on_fatal`` so the daemon exits
non-zero and the service manager takes over.

L{smartyd.db.embedded.EmbeddedCluster} is blocking (``pg_ctl``, file reads):
every call to it runs in a thread (``in_thread``, C{deferToThread} by
default).  The clock is injected: tests drive it with ``task.Clock``.
"""

from __future__ import annotations

from typing import Any, Callable

from attrs import Factory, define, field
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from smartyd.util.backoff import Backoff
from smartyd.util.text import one_line

log = Logger()


@define(eq=False)
class ClusterSupervisor(Service):
    """
    Restart ``cluster`` when its postmaster is gone.

    @ivar cluster: has blocking C{running()} (postmaster info or C{None}) and
        C{ensure_running()} (start it unless it runs; raise if that fails).
    @ivar on_fatal: called with a one-line reason when the cluster stayed
        down for ``restart_timeout`` seconds.
    """

    cluster: Any
    clock: Any
    on_fatal: Callable[[str], None]
    restart_timeout: float = 60.0
    check_interval: float = 1.0
    initial_backoff: float = 0.5
    max_backoff: float = 5.0
    in_thread: Callable[..., Deferred] = deferToThread
    restarts: int = 0
    attempts: int = 0
    down_since: float | None = None
    gave_up: bool = False
    _call: Any = None
    _deadline: Any = None
    _busy: Deferred | None = None
    _backoff: Backoff = field(init=False, default=Factory(
        lambda self: Backoff(self.initial_backoff, self.max_backoff), takes_self=True))
    _stopped: bool = True

    def __attrs_post_init__(self):
        self.name = "embedded-postgresql-supervisor"

    # -- lifecycle ----------------------------------------------------------------
    def startService(self):
        Service.startService(self)
        self._stopped = False
        self._later(self.check_interval, self._check)

    def stopService(self):
        Service.stopService(self)
        self._stopped = True
        for call in (self._call, self._deadline):
            if call is not None and call.active():
                call.cancel()
        self._call = self._deadline = None
        if self._busy is None:
            return succeed(None)
        # Let a pg_ctl in flight finish before the daemon stops the cluster.
        done: Deferred = Deferred()
        self._busy.addBoth(lambda _: done.callback(None))
        return done

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def poke(self) -> None:
        """Check now (the pool lost a connection): cheap, and a no-op while busy or down."""
        if self._stopped or self._busy is not None or self.down:
            return
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._check()

    # -- internals -----------------------------------------------------------------
    def _later(self, delay: float, fn: Callable[[], None]) -> None:
        if self._stopped or self.gave_up:
            return
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = self.clock.callLater(delay, fn)

    def _in_thread(self, fn: Callable[[], Any]) -> Deferred:
        d = self.in_thread(fn)
        self._busy = d

        def idle(result):
            self._busy = None
            return result

        return d.addBoth(idle)

    def _check(self) -> None:
        self._call = None
        d = self._in_thread(self.cluster.running)
        d.addCallbacks(self._checked, self._check_failed)

    def _checked(self, info) -> None:
        if self._stopped:
            return
        if info is not None:
            self._later(self.check_interval, self._check)
            return
        self.down_since = self.clock.seconds()
        self.attempts = 0
        self._backoff.reset()
        log.error("embedded PostgreSQL is not running; restarting it (giving up after"
                  " {timeout}s)", timeout=self.restart_timeout)
        self._deadline = self.clock.callLater(self.restart_timeout, self._give_up)
        self._attempt()

    def _check_failed(self, f) -> None:
        log.failure("checking the embedded PostgreSQL failed", f)
        self._later(self.check_interval, self._check)

    def _attempt(self) -> None:
        self._call = None
        if self._stopped or self.gave_up:
            return
        self.attempts += 1
        log.info("restarting embedded PostgreSQL (attempt {attempt})", attempt=self.attempts)
        d = self._in_thread(self.cluster.ensure_running)
        d.addCallbacks(self._restarted, self._attempt_failed)

    def _restarted(self, _) -> None:
        if self.gave_up:
            return
        took = self.clock.seconds() - self.down_since
        log.info("embedded PostgreSQL is running again after {attempts} attempt(s),"
                 " {seconds}s down", attempts=self.attempts, seconds=round(took, 3))
        self.restarts += 1
        self.down_since = None
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        self._later(self.check_interval, self._check)

    def _attempt_failed(self, f) -> None:
        if self.gave_up or self._stopped:
            return
        delay = self._backoff.next()
        log.warn("restarting embedded PostgreSQL failed (attempt {attempt}): {error};"
                 " next attempt in {delay}s", attempt=self.attempts,
                 error=one_line(f.value), delay=delay)
        self._later(delay, self._attempt)

    def _give_up(self) -> None:
        self._deadline = None
        if self._stopped or not self.down:
            return
        self.gave_up = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        message = (f"embedded PostgreSQL could not be restarted within {self.restart_timeout:g}s"
                   f" ({self.attempts} attempt(s)); exiting so the service manager restarts us")
        log.critical("{message}", message=message)
        self.on_fatal(message)
