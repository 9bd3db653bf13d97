"""
What the stream-token tests share: a small catalog in the database (the
``world`` fixture in conftest.py seeds it), the entitlement service on it
(the ``entitlements`` fixture), and a raw HTTP client for the fast listener.

    alice  active, tariff "basic" (ch1), device UID, password PASSWORD
    bob    active, no tariff
    carol  blocked, tariff "basic"
    ch1    in "basic";  ch2  in no tariff
"""

from __future__ import annotations

import httptools
from attrs import define, field
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.threads import deferToThread

from smartyd import catalog, ledger

PASSWORD = "correct horse"
UID = "00:1a:2b:3c:4d:5e"
MASK = ("http://streamer.example.com:8080/$channel/index.m3u8"
        "?token=$token&u=$account&ip=$ip&e=$expires&keep=$unknown")

_hash: list[str] = []


@define
class World:
    alice: int
    bob: int
    carol: int
    ch1: int
    ch2: int
    basic: int


async def seed(db) -> World:
    if not _hash:  # scrypt: once per session, off the reactor thread
        _hash.append(await deferToThread(ledger.hash_password, PASSWORD))
    hashed = _hash[0]

    async def build(tx):
        alice = await ledger.create_account(tx, "alice", hashed)
        bob = await ledger.create_account(tx, "bob", hashed)
        carol = await ledger.create_account(tx, "carol", hashed)
        await ledger.set_status(tx, carol.id, "blocked")
        ch1 = await catalog.create_channel(tx, "ch1", MASK)
        ch2 = await catalog.create_channel(tx, "ch2", "http://streamer.example.com/ch2?t=$token")
        basic = await catalog.create_tariff(tx, "basic", "100.00", [ch1["id"]])
        await catalog.assign_tariff(tx, alice.id, basic["id"])
        await catalog.assign_tariff(tx, carol.id, basic["id"])
        await tx.execute(
            "INSERT INTO devices (uid, account_id) VALUES (%s, %s)", (UID, alice.id)
        )
        return World(alice.id, bob.id, carol.id, ch1["id"], ch2["id"], basic["id"])

    return await db.run(build)


def within(d: Deferred, seconds: float) -> Deferred:
    """Fail C{d} with TimeoutError unless it fires within C{seconds}."""
    return d.addTimeout(seconds, reactor)


@define(eq=False)
class RawClient(Protocol):
    """
    A byte-level HTTP client: writes whatever it is told, parses what comes
    back with httptools, and lets the test wait for N responses or the close.
    """

    responses: list = field(factory=list)
    closed: Deferred = field(factory=Deferred)
    data: bytes = b""
    _waiters: list = field(factory=list)
    _parser: object = None
    _current: dict = field(factory=dict)

    def connectionMade(self):
        self._parser = httptools.HttpResponseParser(self)
        self.transport.setTcpNoDelay(True)

    def dataReceived(self, data):
        self.data += data
        self._parser.feed_data(data)

    def on_message_begin(self):
        self._current = {"headers": {}}

    def on_header(self, name, value):
        self._current["headers"][name.decode()] = value.decode()

    def on_message_complete(self):
        self._current["status"] = self._parser.get_status_code()
        self.responses.append(self._current)
        for count, d in list(self._waiters):
            if len(self.responses) >= count:
                self._waiters.remove((count, d))
                d.callback(self.responses[:count])

    def connectionLost(self, reason=None):
        if not self.closed.called:
            self.closed.callback(None)

    def send(self, data: bytes) -> None:
        self.transport.write(data)

    def wait(self, count: int, seconds: float = 5) -> Deferred:
        """Fires with the first C{count} responses."""
        if len(self.responses) >= count:
            d = Deferred()
            d.callback(self.responses[:count])
            return d
        d = Deferred()
        self._waiters.append((count, d))
        return within(d, seconds)

    def close(self) -> Deferred:
        if not self.closed.called:
            self.transport.loseConnection()
        return within(self.closed, 5)


async def connect(port: int) -> RawClient:
    return await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), RawClient())


def get(path: str, *headers: str, version: str = "1.1") -> bytes:
    lines = [f"GET {path} HTTP/{version}", "Host: 127.0.0.1", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()
