"""The embedded-cluster supervisor, driven by task.Clock with a fake cluster."""

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread

from smartyd.db.embedded import EmbeddedError, _blocking_run, guard_reactor_thread
from smartyd.db.supervisor import ClusterSupervisor


class FakeCluster:
    """The two EmbeddedCluster methods the supervisor uses; a postmaster that can die."""

    def __init__(self):
        self.alive = True
        self.start_failures = 0  # how many ensure_running calls fail before one works
        self.starts = 0

    def running(self):
        return "postmaster" if self.alive else None

    def ensure_running(self):
        self.starts += 1
        if self.start_failures:
            self.start_failures -= 1
            raise EmbeddedError("pg_ctl failed: shared memory block is still in use")
        self.alive = True
        return "dsn"


class Threads:
    """in_thread for the tests: run at once, or hold calls until released."""

    def __init__(self):
        self.hold = False
        self.held = []

    def __call__(self, fn):
        if not self.hold:
            return defer.maybeDeferred(fn)
        d = defer.Deferred()
        self.held.append((fn, d))
        return d

    def release(self):
        fn, d = self.held.pop(0)
        defer.maybeDeferred(fn).chainDeferred(d)




def make(**kw):
    clock, cluster, threads, fatal = Clock(), FakeCluster(), Threads(), []
    sup = ClusterSupervisor(cluster, clock, fatal.append, in_thread=threads,
                            restart_timeout=10, check_interval=1, **kw)
    return sup, clock, cluster, threads, fatal


def test_a_running_cluster_is_left_alone():
    sup, clock, cluster, _, fatal = make()
    sup.startService()
    clock.pump([1] * 30)
    assert cluster.starts == 0 and not sup.down and fatal == []
    sup.stopService()
    assert clock.getDelayedCalls() == []


def test_a_dead_postmaster_is_restarted_with_backoff_and_each_attempt_logged(log_events):
    sup, clock, cluster, _, fatal = make()
    sup.startService()
    clock.advance(1)
    cluster.alive = False
    cluster.start_failures = 2
    clock.advance(1)  # the check notices, the first attempt fails at once
    assert sup.down and cluster.starts == 1
    clock.advance(0.4)
    assert cluster.starts == 1
    clock.advance(0.1)  # backoff 0.5 s
    assert cluster.starts == 2
    clock.advance(0.9)
    assert cluster.starts == 2
    clock.advance(0.1)  # then 1 s
    assert cluster.starts == 3 and cluster.alive and not sup.down
    assert (sup.restarts, fatal) == (1, [])
    ours = [e for e in log_events if e.get("log_namespace") == "smartyd.db.supervisor"]
    assert [e.get("attempt") for e in ours if "restarting embedded" in e["log_format"]
            and e["log_level"].name == "info"] == [1, 2, 3]
    assert sum(1 for e in ours if e["log_level"].name == "warn") == 2
    clock.advance(1)
    assert cluster.starts == 3  # checking again, nothing to do
    sup.stopService()
    assert clock.getDelayedCalls() == []


def test_it_gives_up_after_the_restart_timeout():
    sup, clock, cluster, _, fatal = make(max_backoff=2)
    sup.startService()
    cluster.alive = False
    cluster.start_failures = 10**6
    clock.advance(1)
    clock.pump([0.5] * 19)  # 9.5 s down
    assert fatal == []
    clock.advance(0.5)
    assert len(fatal) == 1 and "could not be restarted within 10s" in fatal[0]
    starts = cluster.starts
    clock.pump([1] * 20)
    assert cluster.starts == starts and len(fatal) == 1  # no attempts after giving up
    sup.stopService()
    assert clock.getDelayedCalls() == []


def test_a_slow_attempt_still_gives_up_on_time():
    sup, clock, cluster, threads, fatal = make()
    sup.startService()
    cluster.alive = False
    threads.hold = True
    clock.advance(1)
    threads.release()  # the check: down
    assert len(threads.held) == 1  # ensure_running in flight (pg_ctl waiting)
    clock.advance(10)
    assert len(fatal) == 1
    stopped = sup.stopService()
    assert not stopped.called  # waits for pg_ctl before the daemon stops the cluster
    threads.release()
    assert stopped.called and len(fatal) == 1 and sup.restarts == 0


def test_poke_checks_at_once():
    sup, clock, cluster, _, fatal = make()
    sup.startService()
    cluster.alive = False
    sup.poke()
    assert cluster.starts == 1 and cluster.alive and sup.restarts == 1
    sup.stopService()
    assert clock.getDelayedCalls() == []


def test_embedded_restart_timeout_is_configurable_and_validated():
    from smartyd.config import ConfigError, from_dict

    assert from_dict({}).database.embedded_restart_timeout == 60.0
    assert from_dict({"database": {"embedded_restart_timeout": 5}}) \
        .database.embedded_restart_timeout == 5.0
    for bad, message in [(0, "must be at least 1.0"), ("soon", "expected a number")]:
        with pytest.raises(ConfigError) as caught:
            from_dict({"database": {"embedded_restart_timeout": bad}})
        assert "[database] embedded_restart_timeout" in str(caught.value)
        assert message in str(caught.value)


@pytest_twisted.ensureDeferred
async def test_pg_ctl_is_refused_on_the_running_reactors_thread():
    """initdb/pg_ctl block: from the reactor's thread they are refused, from a thread they run."""
    assert _blocking_run(["true"]).returncode == 0  # unguarded: the test suite's own use
    guard_reactor_thread()  # what the daemon does as it starts
    try:
        with pytest.raises(EmbeddedError, match="would block the running reactor"):
            _blocking_run(["true"])
        done = await deferToThread(_blocking_run, ["true"])
        assert done.returncode == 0
    finally:
        guard_reactor_thread(False)
