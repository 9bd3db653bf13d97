import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import Clock

from smartyd.metrics import Metrics
from smartyd.partners import PartnerUnavailable
from smartyd.poller import Poller


class Work:
    """A job whose runs the test finishes by hand."""

    def __init__(self):
        self.calls = 0
        self.pending: list[defer.Deferred] = []
        self.fail_with = None
        self.started = defer.Deferred()

    async def __call__(self):
        self.calls += 1
        if self.fail_with is not None:
            raise self.fail_with
        d = defer.Deferred()
        self.pending.append(d)
        started, self.started = self.started, defer.Deferred()
        started.callback(self.calls)
        await d

    def finish(self):
        self.pending.pop(0).callback(None)


def test_runs_at_start_then_every_interval():
    clock, work, metrics = Clock(), Work(), Metrics()
    p = Poller("job", 60, work, clock, metrics=metrics)
    p.startService()
    clock.advance(0)
    assert work.calls == 1
    work.finish()
    clock.advance(59)
    assert work.calls == 1
    clock.advance(1)
    assert work.calls == 2
    work.finish()
    p.stopService()
    assert metrics.poller_runs.labels("job", "ok")._value.get() == 2


def test_no_overlapping_runs_and_force_folds_into_one_more():
    clock, work = Clock(), Work()
    p = Poller("job", 10, work, clock)
    p.startService()
    clock.advance(0)
    assert work.calls == 1
    forced = [p.force(), p.force()]
    clock.advance(100)  # the timer must not start a second run either
    assert work.calls == 1
    work.finish()
    assert work.calls == 2  # exactly one more run, right after
    assert not any(d.called for d in forced)
    work.finish()
    assert all(d.called for d in forced)
    p.stopService()


def test_failures_back_off_and_recover():
    clock, work, metrics = Clock(), Work(), Metrics()
    work.fail_with = PartnerUnavailable("assist", "timed out")
    p = Poller("job", 10, work, clock, metrics=metrics, max_backoff=60)
    p.startService()
    clock.advance(0)
    assert (work.calls, p.failures) == (1, 1)
    clock.advance(19)
    assert work.calls == 1  # backed off to 20 s
    clock.advance(1)
    assert (work.calls, p.failures) == (2, 2)
    clock.advance(40)
    assert work.calls == 3
    clock.advance(60)  # capped at max_backoff
    assert work.calls == 4
    work.fail_with = None
    clock.advance(60)
    assert work.calls == 5
    work.finish()
    assert p.failures == 0 and p.next_delay() == 10
    assert metrics.poller_runs.labels("job", "error")._value.get() == 4
    p.stopService()


def test_unexpected_exception_never_kills_the_loop():
    clock, work = Clock(), Work()
    work.fail_with = ZeroDivisionError("bug")
    p = Poller("job", 5, work, clock, max_backoff=5)
    p.startService()
    clock.advance(0)
    clock.advance(5)
    clock.advance(5)
    assert work.calls == 3 and p.last_outcome == "error"
    p.stopService()
    assert clock.getDelayedCalls() == []


def test_stop_waits_for_the_run_in_flight():
    clock, work = Clock(), Work()
    p = Poller("job", 5, work, clock)
    p.startService()
    clock.advance(0)
    stopped = p.stopService()
    assert not stopped.called
    work.finish()
    assert stopped.called
    assert clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_cluster_wide_once_with_advisory_lock_and_pacing(db):
    work_a, work_b = Work(), Work()
    clock = Clock()
    a = Poller("assist-results", 600, work_a, clock, db=db)
    b = Poller("assist-results", 600, work_b, clock, db=db)
    started_a = work_a.started
    run_a = a.force()
    await started_a  # a holds the lock and runs
    outcome_b = await b.force()
    assert outcome_b == "skipped" and work_b.calls == 0  # a holds the lock
    work_a.finish()
    assert await run_a == "ok"
    outcome_b = await b.force()
    assert outcome_b == "skipped" and work_b.calls == 0  # ran < 600 s ago
    await db.execute("UPDATE job_runs SET last_started = now() - interval '601 seconds'")
    started_b = work_b.started
    run_b = b.force()
    await started_b
    work_b.finish()
    assert await run_b == "ok"
    row = await db.fetchall("SELECT runs, failures, last_ok FROM job_runs")
    assert row == [(2, 0, True)]
    for p in (a, b):
        if p.running:
            p.stopService()
    for call in clock.getDelayedCalls():
        call.cancel()


@pytest_twisted.ensureDeferred
async def test_refused_forced_runs_never_move_the_schedule(db):
    """Pushes at t=300 and t=550 are paced out: the next real poll stays at t=600."""
    clock, work = Clock(), Work()
    p = Poller("assist-results", 600, work, clock, db=db, initial_delay=600)
    p.startService()
    started = work.started
    run = p.force()  # a real poll at t=0
    await started
    work.finish()
    assert await run == "ok"
    assert [c.getTime() for c in clock.getDelayedCalls()] == [600]
    for now in (300, 550):
        clock.advance(now - clock.seconds())
        assert await p.force() == "skipped"  # ran < 600 s ago: refused
        assert [c.getTime() for c in clock.getDelayedCalls()] == [600], now
    assert work.calls == 1
    await db.execute("UPDATE job_runs SET last_started = now() - interval '601 seconds'")
    started = work.started
    clock.advance(49)
    assert work.calls == 1
    clock.advance(1)  # t=600: the real poll
    assert await started == 2
    work.finish()
    await p.stopService()


def test_a_forced_run_that_ran_restarts_the_interval():
    clock, work = Clock(), Work()
    p = Poller("job", 60, work, clock, initial_delay=60)
    p.startService()
    clock.advance(30)
    forced = p.force()
    assert work.calls == 1
    work.finish()
    assert forced.called
    assert [c.getTime() for c in clock.getDelayedCalls()] == [90]
    p.stopService()
    assert clock.getDelayedCalls() == []


def _poller_events(events):
    return [(e["log_level"].name, e.get("error")) for e in events
            if e.get("log_namespace") == "smartyd.poller"]




def test_classification_is_injectable(log_events):
    clock, work = Clock(), Work()
    work.fail_with = KeyError("quota")
    p = Poller("job", 5, work, clock, classify=lambda e: isinstance(e, KeyError))
    p.startService()
    clock.advance(0)
    assert p.last_outcome == "error"
    assert _poller_events(log_events) == [("warn", "'quota'")]  # expected: one line
    p.stopService()


def test_default_classification_keeps_partner_and_db_errors_expected(log_events):
    from smartyd.db import DatabaseUnavailable

    clock, work = Clock(), Work()
    p = Poller("job", 5, work, clock, max_backoff=5)
    p.startService()
    for error in (PartnerUnavailable("assist", "timed out"), DatabaseUnavailable("down"),
                  ZeroDivisionError("bug")):
        work.fail_with = error
        clock.advance(5)
    assert [level for level, _ in _poller_events(log_events)] == ["warn", "warn", "critical"]
    log_events.clear()
    p.stopService()


def test_the_poller_knows_no_sql_partners_or_db_internals():
    import ast
    import inspect

    from smartyd import poller
    from smartyd.db import listen

    for module in (poller, listen):
        tree = ast.parse(inspect.getsource(module))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module.startswith("smartyd"):
                assert node.module != "smartyd.partners", module.__name__
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, (module.__name__, private)
    assert "SELECT" not in inspect.getsource(poller)
