"""
One run at a time of an async job, with callers folded together.

A call while a run is in flight does not start a second, overlapping run: it
is folded into *one* more run right after the current one (however many
callers arrived meanwhile).  Every caller's Deferred fires with the outcome of
a run that started after the call -- so "reload now" never returns data read
before it was asked for -- or fails with that run's error.

Used by the entitlement snapshot (reload on NOTIFY) and the poller (forced and
timed runs).
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()


class SingleFlight:
    def __init__(self, work: Callable[[], Awaitable[Any]]):
        self._work = work
        self._running = False
        self._next: list[Deferred] = []
        self._watchers: list[Deferred] = []
        self._idle: list[Deferred] = []

    @property
    def running(self) -> bool:
        return self._running

    def run(self) -> Deferred:
        """Run now, or right after the run in flight; fires with that run's result."""
        d: Deferred = Deferred()
        self._next.append(d)
        if not self._running:
            self._running = True
            Deferred.fromCoroutine(self._loop()).addErrback(
                lambda f: log.failure("single-flight loop crashed", f))
        return d

    def next_run(self) -> Deferred:
        """Fires with the result of the next run to start from now on, without starting one."""
        d: Deferred = Deferred()
        self._watchers.append(d)
        return d

    def when_idle(self) -> Deferred:
        """Fires once no run is in flight (at once when idle)."""
        if not self._running:
            return succeed(None)
        d: Deferred = Deferred()
        self._idle.append(d)
        return d

    async def _loop(self) -> None:
        try:
            while self._next:
                waiters = self._next + self._watchers
                self._next, self._watchers = [], []
                try:
                    result = await self._work()
                except Exception:
                    failure = Failure()
                    for d in waiters:
                        d.errback(failure)
                else:
                    for d in waiters:
                        d.callback(result)
        finally:
            self._running = False
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)
