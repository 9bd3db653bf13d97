"""The shared building blocks in smartyd/util: backoff, single flight, one_line, Twisted privates."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory
from twisted.web.server import Site

from smartyd.util.backoff import Backoff, exponential
from smartyd.util.singleflight import SingleFlight
from smartyd.util.text import one_line
from smartyd.util import twisted_internals


def test_exponential_doubles_and_caps():
    assert [exponential(0.5, n, 10) for n in range(7)] == [0.5, 1, 2, 4, 8, 10, 10]
    assert exponential(600, -3, 3600) == 600
    assert exponential(1, 10**9, 60) == 60  # no overflow after a very long outage


def test_backoff_sequence_and_reset():
    b = Backoff(initial=0.2, maximum=1.0)
    assert [b.next() for _ in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]
    assert b.peek() == 1.0
    b.reset()
    assert b.next() == 0.2


def test_one_line():
    assert one_line(ValueError("first\nsecond")) == "first"
    assert one_line(RuntimeError()) == "RuntimeError"
    assert one_line("  text  \nmore") == "text"


def test_single_flight_folds_callers_into_one_more_run():
    gates: list[Deferred] = []
    runs = []

    async def work():
        runs.append(len(runs) + 1)
        gate: Deferred = Deferred()
        gates.append(gate)
        await gate
        return len(runs)

    flight = SingleFlight(work)
    first = flight.run()
    watcher = flight.next_run()  # the next run to *start*: the second one
    assert flight.running and len(runs) == 1
    second, third = flight.run(), flight.run()  # arrive during run 1: folded into run 2
    assert len(runs) == 1  # no overlap
    got = []
    for d in (first, second, third, watcher):
        d.addCallback(got.append)
    idle = flight.when_idle()
    gates[0].callback(None)
    assert got == [1] and len(runs) == 2
    gates[1].callback(None)
    assert got == [1, 2, 2, 2] and not flight.running and idle.called


def test_single_flight_errors_reach_that_runs_callers_only():
    outcomes = iter([RuntimeError("boom"), "ok"])

    async def work():
        value = next(outcomes)
        if isinstance(value, Exception):
            raise value
        return value

    flight = SingleFlight(work)
    failed = []
    flight.run().addErrback(lambda f: failed.append(f.getErrorMessage()))
    assert failed == ["boom"]
    result = []
    flight.run().addCallback(result.append)
    assert result == ["ok"]


@pytest_twisted.ensureDeferred
async def test_twisted_privates_we_rely_on_still_exist():
    """Fails loudly if a Twisted upgrade renames one of the privates in util/twisted_internals."""
    service = StreamServerEndpointService(serverFromString(reactor, "tcp:0"), Site(None))
    twisted_internals.raise_listen_errors(service)
    assert service._raiseSynchronously is True
    assert twisted_internals.endpoint_port(serverFromString(reactor, "tcp:8123")) == 8123
    assert twisted_internals.endpoint_port(serverFromString(reactor, "unix:/tmp/x")) is None
    port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
    try:
        twisted_internals.accept_one_per_read(port)
        assert port.numberAccepts == 1
    finally:
        await port.stopListening()
    with pytest.raises(RuntimeError, match="numberAccepts is gone"):
        twisted_internals.accept_one_per_read(object())
