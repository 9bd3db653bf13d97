"""
The fast listener's HTTP handling: over a real loopback port with raw
clients (the socket is what is under test), and deterministically over a
StringTransport with a task.Clock for byte-by-byte parsing, time-outs,
lingering close and back-pressure.
"""

import socket
import time

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport

from smartyd.streams import fast
from smartyd.streams.check import Checker, Tallies
from smartyd.streams.entitlements import SnapshotBuilder
from smartyd.streams.fast import FastCheckFactory, FastListenError, FastListener, listen_now
from smartyd.streams.tokens import TokenCodec
from smartyd.streams.worker import TakeTurns
from streams_world import connect, get

IP = "127.0.0.1"


class Holder:
    def __init__(self, snapshot):
        self.snapshot = snapshot


def snapshot():
    b = SnapshotBuilder()
    b.add(7, True, [3])
    b.add(8, False, [3])
    return b.build({"ch3": 3}, 0.0)


class Server:
    """A fast listener on a loopback port, answering from a fixed snapshot."""

    def __init__(self, clock=reactor):
        self.codec = TokenCodec(["s3cret"], bind_ip=True)
        self.holder = Holder(snapshot())
        self.tallies = Tallies()
        self.checker = Checker(self.codec, self.holder, clock, self.tallies, listener="fast")
        self.factory = FastCheckFactory(self.checker, clock)
        self.port = None

    def listen(self):
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        return self.port.getHost().port

    def token(self, account=7, channel=3, ip=IP, ttl=3600):
        return self.codec.mint(account, channel, int(time.time()) + ttl, ip=ip)

    def check_path(self, **extra):
        query = "&".join(f"{k}={v}" for k, v in {"token": self.token(), "name": "ch3",
                                                  **extra}.items())
        return f"/streams/check?{query}"

    async def stop(self):
        await self.port.stopListening()
        await self.factory.close_all()


@pytest_twisted.async_yield_fixture
async def server():
    s = Server()
    s.listen()
    yield s
    await s.stop()


async def client_of(server):
    return await connect(server.port.getHost().port)


# -- over a real socket ------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_pipelined_requests_in_one_packet_are_answered_in_order(server):
    c = await client_of(server)
    c.send(
        get(server.check_path())
        + get("/streams/check?token=nonsense&name=ch3")
        + get("/elsewhere")
        + b"POST /streams/check HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        + get(f"/streams/check?token={server.token(account=8)}")
    )
    answers = await c.wait(5)
    assert [a["status"] for a in answers] == [200, 403, 404, 405, 403]
    assert answers[0]["headers"]["X-UserId"] == "7"
    assert answers[0]["headers"]["X-AuthDuration"] == "60"
    assert answers[0]["headers"]["Content-Length"] == "0" and "Date" in answers[0]["headers"]
    assert "X-UserId" not in answers[1]["headers"]
    assert answers[3]["headers"]["Allow"] == "GET, HEAD"
    assert answers[4]["headers"]["X-UserId"] == "8"  # blocked, signature was valid
    assert not c.closed.called
    await c.close()
    assert {r: n for _, r, n in server.tallies.take()} == {
        "ok": 1, "malformed": 1, "blocked": 1}


@pytest_twisted.ensureDeferred
async def test_a_request_split_byte_by_byte(server):
    c = await client_of(server)
    request = get(server.check_path(), "X-Extra: 1")
    for i in range(len(request)):
        c.send(request[i:i + 1])
        await deferLater(reactor, 0, lambda: None)  # one reactor turn: its own segment
    [answer] = await c.wait(1)
    assert answer["status"] == 200
    await c.close()


@pytest_twisted.ensureDeferred
async def test_keep_alive_reuses_one_connection(server):
    c = await client_of(server)
    for n in range(1, 4):
        c.send(get(server.check_path()))
        answers = await c.wait(n)
        assert answers[-1]["status"] == 200 and "Connection" not in answers[-1]["headers"]
    assert len(server.factory.connections) == 1
    await c.close()


@pytest_twisted.ensureDeferred
async def test_connection_close_is_honoured_and_later_requests_ignored(server):
    c = await client_of(server)
    c.send(get(server.check_path(), "Connection: close") + get(server.check_path()))
    await c.closed
    assert [a["status"] for a in c.responses] == [200]
    assert c.responses[0]["headers"]["Connection"] == "close"


@pytest_twisted.ensureDeferred
async def test_http_1_0_closes_unless_keep_alive(server):
    c = await client_of(server)
    c.send(get(server.check_path(), version="1.0"))
    await c.closed
    assert c.responses[0]["status"] == 200
    assert c.responses[0]["headers"]["Connection"] == "close"
    c = await client_of(server)
    c.send(get(server.check_path(), "Connection: keep-alive", version="1.0"))
    [answer] = await c.wait(1)
    assert answer["headers"]["Connection"] == "keep-alive" and not c.closed.called
    await c.close()


@pytest_twisted.ensureDeferred
async def test_head_is_answered_like_get(server):
    c = await client_of(server)
    c.send(get(server.check_path()).replace(b"GET", b"HEAD", 1))
    [answer] = await c.wait(1)
    assert answer["status"] == 200
    await c.close()


@pytest_twisted.ensureDeferred
async def test_garbage_is_400_and_close(server):
    c = await client_of(server)
    c.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n")
    await c.closed
    assert [a["status"] for a in c.responses] == [400]
    assert c.responses[0]["headers"]["Connection"] == "close"


@pytest.mark.parametrize("request_bytes", [
    get("/streams/check?token=x", "X-Big: " + "a" * 20_000),
    get("/streams/check?token=x", *[f"X-H{i}: v" for i in range(100)]),
    get("/streams/check?token=" + "A" * 9000),
    b"GET /streams/check HTTP/1.1\r\nX-Endless: " + b"b" * 200_000,
], ids=["large-header", "many-headers", "long-url", "unterminated-header"])
@pytest_twisted.ensureDeferred
async def test_oversized_requests_are_400_and_close(server, request_bytes):
    c = await client_of(server)
    c.send(request_bytes)
    await c.closed
    assert [a["status"] for a in c.responses] == [400]


@pytest_twisted.ensureDeferred
async def test_a_valid_request_after_a_large_pipelined_burst(server):
    """The bound on unparsed input is per request, not per read."""
    c = await client_of(server)
    burst = get(server.check_path()) * 600  # ~100 KB in one write
    c.send(burst)
    answers = await c.wait(600, seconds=10)
    assert {a["status"] for a in answers} == {200}
    await c.close()


@pytest_twisted.ensureDeferred
async def test_403_not_to_be_cached_until_the_snapshot_is_loaded(server):
    # [tokens] when_unavailable = "deny" (the default; issue 14: was 503).
    server.holder.snapshot = None
    c = await client_of(server)
    c.send(get(server.check_path()))
    [answer] = await c.wait(1)
    assert answer["status"] == 403 and answer["headers"]["X-AuthDuration"] == "0"
    assert "Retry-After" not in answer["headers"] and "X-UserId" not in answer["headers"]
    await c.close()


@pytest_twisted.ensureDeferred
async def test_the_listener_service_counts_into_prometheus_and_stops_cleanly(metrics):
    s = Server()
    service = FastListener(reactor, "tcp:0:interface=127.0.0.1", s.factory,
                           tallies=s.tallies, metrics=metrics)
    service.startService()
    c = await connect(service.port.getHost().port)
    c.send(get(s.check_path()) + get("/streams/check?token=x"))
    await c.wait(2)
    await service.stopService()  # also closes the open connection
    await c.closed
    value = metrics.registry.get_sample_value
    assert value("smartyd_token_checks_total",
                 {"listener": "fast", "outcome": "allowed", "reason": "ok"}) == 1
    assert value("smartyd_token_checks_total",
                 {"listener": "fast", "outcome": "denied", "reason": "malformed"}) == 1


@pytest_twisted.ensureDeferred
async def test_listening_failures_are_one_line(server):
    port = server.port.getHost().port
    with pytest.raises(FastListenError) as e:
        listen_now(reactor, f"tcp:{port}:interface=127.0.0.1", server.factory)
    assert str(e.value).startswith(f"[tokens] fast_listen tcp:{port}:interface=127.0.0.1: ")
    assert "\n" not in str(e.value)
    with pytest.raises(FastListenError) as e:
        listen_now(reactor, "carrier-pigeon:1", server.factory)
    assert str(e.value).startswith("[tokens] fast_listen carrier-pigeon:1: ")


# -- deterministic: StringTransport and a Clock ------------------------------------------------
class HalfClosingTransport(StringTransport):
    """A StringTransport that can half-close, like a TCP transport."""

    write_closed = False

    def loseWriteConnection(self):
        self.write_closed = True


def connected(server, transport=None):
    proto = server.factory.buildProtocol(None)
    transport = transport or HalfClosingTransport(peerAddress=None)
    proto.makeConnection(transport)
    return proto, transport


def statuses(data: bytes) -> list[int]:
    return [int(line.split()[1]) for line in data.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]


def test_byte_by_byte_parsing_is_exact():
    s = Server()
    proto, transport = connected(s)
    request = get(s.check_path(ip=IP)) * 2
    for i in range(len(request)):
        proto.dataReceived(request[i:i + 1])
    assert statuses(transport.value()) == [200, 200]
    assert not transport.disconnecting and not transport.write_closed


def test_idle_and_slow_requests_time_out():
    clock = Clock()
    clock.advance(time.time())
    s = Server(clock)
    s.factory.startFactory()
    idle, idle_t = connected(s)
    slow, slow_t = connected(s)
    slow.dataReceived(b"GET /streams/check?tok")
    clock.advance(16)
    assert statuses(slow_t.value()) == [408] and slow_t.write_closed
    assert not idle_t.disconnecting
    clock.advance(60)
    assert idle_t.disconnecting and idle_t.value() == b""
    clock.advance(fast.LINGER)  # the slow one's lingering close ends
    assert slow_t.disconnecting
    s.factory.stopFactory()
    assert not clock.getDelayedCalls()


def test_lingering_close_drains_then_aborts():
    clock = Clock()
    s = Server(clock)
    proto, transport = connected(s)
    proto.dataReceived(b"BREW /pot HTCPCP/1.0\r\n\r\n")
    assert statuses(transport.value()) == [400] and transport.write_closed
    assert not transport.disconnecting
    proto.dataReceived(b"x" * 1000)  # drained, not answered
    assert statuses(transport.value()) == [400]
    proto.dataReceived(b"x" * fast.LINGER_BYTES)  # too much: cut
    assert transport.disconnecting
    proto.connectionLost(None)
    assert not clock.getDelayedCalls()


def test_answers_pause_reading_when_the_client_does_not_read():
    s = Server()
    proto, transport = connected(s)
    assert transport.producer is proto and transport.streaming
    proto.pauseProducing()  # what the transport does when its buffer is full
    assert transport.producerState == "paused"
    proto.resumeProducing()
    assert transport.producerState == "producing"


def test_the_date_header_is_refreshed_by_the_tick():
    clock = Clock()
    clock.advance(1_700_000_000)
    s = Server(clock)
    proto, transport = connected(s)
    proto.dataReceived(get("/x"))
    assert b"Date: Tue, 14 Nov 2023 22:13:20 GMT\r\n" in transport.value()
    clock.advance(61)
    s.factory.tick()
    proto.dataReceived(get("/x"))
    assert b"Date: Tue, 14 Nov 2023 22:14:21 GMT\r\n" in transport.value()


@pytest_twisted.ensureDeferred
async def test_worker_processes_take_turns_accepting(server):
    """One connection per readiness event, then a pause that grows with the load."""
    clock = MemoryReactorClock()
    turns = TakeTurns(clock, server.port, lambda: len(server.factory.connections),
                      per_connection=0.001, max_pause=0.0025)
    turns.start()
    address = server.port.getHost()
    clients = [socket.create_connection((address.host, address.port)) for _ in range(4)]
    try:
        assert turns in clock.readers
        turns.doRead()
        assert len(server.factory.connections) == 1
        assert turns not in clock.readers  # pausing for 1 connection x 1 ms
        clock.advance(0.001)
        assert turns in clock.readers
        turns.doRead()
        turns_pause = clock.getDelayedCalls()[0].getTime() - clock.seconds()
        assert len(server.factory.connections) == 2 and turns_pause == pytest.approx(0.002)
        clock.advance(0.002)
        turns.doRead()
        clock.advance(0.0025)  # 3 connections x 1 ms, capped at 2.5 ms
        turns.doRead()
        assert len(server.factory.connections) == 4
        turns.stop()
        assert turns not in clock.readers and not clock.getDelayedCalls()
    finally:
        for c in clients:
            c.close()
