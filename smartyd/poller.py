"""
Periodic jobs: a L{Poller} runs ``work()`` every ``interval`` seconds.

Semantics (after buildbot's ``util/poll.py`` and txacme's service):
  - no overlapping runs: a run requested while one is in flight is folded
    into one more run right after it;
  - L{Poller.force} runs now (the immediate-run hook for admins and webhooks);
  - a run never raises out: failures are logged and counted, and the next run
    backs off exponentially (``interval * 2**failures``, capped);
  - cluster-wide once: with a database, a run first takes the job's
    PostgreSQL advisory lock on a connection of its own (another instance
    holding it means "skip"), then checks ``job_runs.last_started`` so that N
    instances together never run the job more often than ``interval``
    (L{smartyd.db.locks.cluster_once}: the poller itself knows no SQL);
  - ``stopService`` cancels the timer and waits for the run in flight.

The clock is injected: tests drive it with ``task.Clock``.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Awaitable, Callable

from attrs import define, field
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from smartyd.db import Database, DatabaseUnavailable
from smartyd.util.text import one_line
from smartyd.db.locks import Turn, cluster_once
from smartyd.util.backoff import exponential
from smartyd.util.singleflight import SingleFlight

log = Logger()


def expected_failure(e: BaseException) -> bool:
    """
    The default ``classify``: is ``e`` an outage to log as one warning line
    (rather than a bug to log with its traceback)?  The database being
    unavailable, and partner errors (L{smartyd.partners.PartnerError}, which
    name their partner; recognised by that attribute so that the poller need
    not import the partners' layer).
    """
    return isinstance(e, DatabaseUnavailable) or (
        isinstance(getattr(e, "partner", None), str) and isinstance(getattr(e, "message", None), str)
    )


@define(eq=False)
class Poller(Service):
    job: str
    interval: float
    work: Callable[[], Awaitable[Any]]
    clock: Any
    db: Database | None = None
    metrics: Any = None
    # classify(e) -> True: an expected failure (one warning line), False: a
    # bug (logged with its traceback).
    classify: Callable[[BaseException], bool] = expected_failure
    max_backoff: float = 3600.0
    initial_delay: float = 0.0
    failures: int = 0
    last_outcome: str | None = None
    _call: Any = None
    _flight: SingleFlight = field(init=False)
    _stopped: bool = True

    def __attrs_post_init__(self):
        self.name = f"poller:{self.job}"
        self._flight = SingleFlight(self._run_and_reschedule)

    # -- lifecycle ----------------------------------------------------------------
    def startService(self):
        Service.startService(self)
        self._stopped = False
        self._schedule(self.initial_delay)

    def stopService(self):
        Service.stopService(self)
        self._stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        return self._flight.when_idle()

    # -- scheduling ---------------------------------------------------------------------
    def next_delay(self) -> float:
        if self.failures == 0:
            return self.interval
        return exponential(self.interval, self.failures, max(self.max_backoff, self.interval))

    def _schedule(self, delay: float) -> None:
        if self._stopped:
            return
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = self.clock.callLater(delay, self._fire)

    def force(self) -> Deferred:
        """
        Run now (or right after the run in flight); fires with that run's outcome.

        The pending timer is left alone: a forced run that is refused
        (another instance holds the lock, or the job ran less than
        ``interval`` ago) must not push the next real run further away --
        otherwise webhooks arriving more often than ``interval`` would starve
        the job.  A forced run that does run restarts the interval from its end.
        """
        return self._flight.run()

    def _fire(self) -> None:
        """The timer's call: the scheduled run (folded into one more if one is in flight)."""
        self._call = None
        self._flight.run()

    async def _run_and_reschedule(self) -> str | None:
        await self._run()
        # A skipped run did no work: it keeps the schedule it found (a pending
        # timer stays where it was).  Otherwise the next run is an interval
        # (or a backoff) after this one ended.
        pending = self._call is not None and self._call.active()
        if not (self.last_outcome == "skipped" and pending):
            self._schedule(self.next_delay())
        return self.last_outcome

    # -- one run ------------------------------------------------------------------------
    async def _run(self) -> None:
        started = self.clock.seconds()
        outcome = "ok"
        error: str | None = None
        try:
            async with self._turn() as turn:
                if turn is None:
                    outcome = "skipped"
                    return
                try:
                    await self.work()
                except Exception as e:
                    outcome, error = "error", self._failed(e)
                    turn.failed(error)
        except Exception as e:  # the cluster-wide lock could not be taken
            outcome, error = "error", self._failed(e)
        finally:
            self._account(outcome, self.clock.seconds() - started)

    def _turn(self):
        """Without a database every instance runs; with one, L{cluster_once} decides."""
        if self.db is None:
            return nullcontext(Turn())
        return cluster_once(self.db, self.job, self.interval)

    def _failed(self, e: Exception) -> str:
        """Log a failed run (called in the except block); return the error to record."""
        if self.classify(e):
            error = one_line(e)
            log.warn("{job} run failed: {error}", job=self.job, error=error)
            return error
        log.failure("{job} run failed unexpectedly", job=self.job)
        return f"{type(e).__name__}: {one_line(e)}"

    def _account(self, outcome: str, duration: float) -> None:
        self.last_outcome = outcome
        if outcome == "error":
            self.failures += 1
        elif outcome == "ok":
            self.failures = 0
        if self.metrics is not None:
            self.metrics.poller_runs.labels(self.job, outcome).inc()
            if outcome != "skipped":
                self.metrics.poller_duration.labels(self.job).observe(duration)
