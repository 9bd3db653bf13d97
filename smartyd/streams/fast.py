"""
The fast listener: a lean HTTP/1.1 server for the token check only:
``GET /streams/check`` and Smarty's ``/tvmiddleware/api/streamservice/token/check/``
(with or without the trailing slash), so that streamers configured for Smarty
work by changing the host name.

Streamers re-check every running session, so this path is all about requests
per second.  twisted.web's full stack costs far more per request than the
check itself; here a Twisted L{Protocol} feeds bytes to C{httptools} (llhttp,
the C parser of Node.js) and answers from precomputed pieces, with the same
L{Checker} the Klein route uses.

It is still a correct HTTP/1.1 server for what it serves:

- keep-alive (HTTP/1.1 by default, HTTP/1.0 with C{Connection: keep-alive}),
  C{Connection: close}, pipelining: requests are answered in order, and all
  answers to one read go out in one write;
- C{GET} and C{HEAD} of those paths; 404 for other paths, 405 for other
  methods; a request body, if any, is read and ignored;
- garbage, an over-long URL or over-large headers: 400 and close; a request
  that stays incomplete for C{request_timeout}: 408 and close; an idle
  keep-alive connection is closed after C{idle_timeout};
- bounded buffers: unparsed input is bounded by the header limits plus one
  read, and output by pausing reads while the client does not read its
  answers (the connection's transport calls L{pauseProducing});
- closing: answer, shut down the sending side, and keep draining what the
  client still sends for a short while (as nginx's C{lingering_close}), so
  that unread input does not turn the close into a reset that destroys the
  answer before the client reads it.

The factory keeps one coarse clock tick per second: it refreshes the C{Date}
header and sweeps connections for time-outs, so the per-request path calls no
timer at all.
"""

from __future__ import annotations

import socket
from email.utils import formatdate
from typing import Any

import httptools
from attrs import define, field
from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from smartyd.streams.check import Checker, Tallies, add_counts, parse_query
from smartyd.util.text import one_line

log = Logger()

PATH = b"/streams/check"
SMARTY_PATH = b"/tvmiddleware/api/streamservice/token/check"
PATHS = frozenset({PATH, SMARTY_PATH, SMARTY_PATH + b"/"})
MAX_URL = 8 * 1024
MAX_HEADERS = 64
MAX_HEAD = 16 * 1024  # request line + headers
READ_SIZE = 64 * 1024  # the most one read delivers (twisted.internet.tcp)
LINGER = 2.0  # seconds to drain input after answering and closing
LINGER_BYTES = 256 * 1024

_STATUS = {
    200: b"200 OK",
    400: b"400 Bad Request",
    403: b"403 Forbidden",
    404: b"404 Not Found",
    405: b"405 Method Not Allowed",
    408: b"408 Request Timeout",
    503: b"503 Service Unavailable",
}
_KEEP_ALIVE = b"Connection: keep-alive\r\n"
_CLOSE = b"Connection: close\r\n"
# The headers the checker reads (nginx auth_request and Cesbo Astra).
_INTERESTING = {
    name: name.decode()
    for name in (b"x-original-uri", b"x-real-ip", b"x-session-id", b"x-channel-id",
                 b"x-real-path")
}
_INTERESTING_LENGTHS = frozenset(len(name) for name in _INTERESTING)


class _Refuse(Exception):
    """Raised from a parser callback to stop parsing a request we will not serve."""


@implementer(IPushProducer)
class FastCheckProtocol(Protocol):
    """One client connection of the fast listener."""

    def __init__(self, factory: "FastCheckFactory"):
        self.factory = factory
        self._check = factory.checker.check
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: dict[str, str] = {}
        self._head_bytes = 0
        self._header_count = 0
        self.in_message = False
        self._partial = 0
        self._out: list[bytes] = []
        self._closing = False
        self._linger: Any = None
        self._lingered = 0
        self.seen = factory.now
        self.began = factory.now
        self.peer: str | None = None
        self._socket: socket.socket | None = None

    # -- connection ---------------------------------------------------------------------
    def connectionMade(self) -> None:
        self.peer = getattr(self.transport.getPeer(), "host", None)
        handle = getattr(self.transport, "getHandle", lambda: None)()
        if isinstance(handle, socket.socket):  # plain TCP or UNIX, not TLS
            self._socket = handle
        self.transport.registerProducer(self, True)
        try:
            self.transport.setTcpNoDelay(True)  # small answers: never wait for Nagle
        except (AttributeError, OSError):
            pass  # not TCP
        self.factory.connections.add(self)

    def connectionLost(self, reason: Failure = None) -> None:
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None
        self._parser = None
        self.factory.lost(self)

    # IPushProducer: the transport pauses us while the client does not read.
    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if not self._closing:
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        pass

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            self._drain(len(data))
            return
        self.seen = self.factory.now
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # An upgrade (or CONNECT) was answered as a plain request; we
            # speak nothing else on this connection.
            self._closing = True
        except httptools.HttpParserError:
            self._out.append(self.factory.simple(400, close=True))
            self._closing = True
        else:
            if self.in_message:
                self._partial += len(data)
                if self._partial > MAX_HEAD + READ_SIZE:
                    self._out.append(self.factory.simple(400, close=True))
                    self._closing = True
        out = self._out
        if out:
            self._send(out[0] if len(out) == 1 else b"".join(out))
            out.clear()
        if self._closing:
            self._close()

    def _send(self, data: bytes) -> None:
        """
        Write C{data}: straight to the socket while nothing is queued in the
        transport, else through it.

        Going through the transport costs, per answer, a registration for
        writability, another reactor turn and a deregistration -- about a
        quarter of this server's time under load (measured with py-spy).  The kernel's send buffer takes a
        small answer at once, so the transport is used only after a partial
        send (a client that does not read), and from then on for good, so
        that the order of bytes is kept.
        """
        sock = self._socket
        if sock is not None:
            try:
                sent = sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                sent = 0  # the transport finds the error itself and closes
            if sent == len(data):
                return
            self._socket = None
            data = data[sent:]
        self.transport.write(data)

    def _close(self) -> None:
        """Answered and done: send FIN once the answers are out, drain input a while."""
        transport = self.transport
        transport.unregisterProducer()
        lose_write = getattr(transport, "loseWriteConnection", None)
        if lose_write is None:  # a transport that cannot half-close
            transport.loseConnection()
            return
        transport.resumeProducing()  # keep reading, to drain
        lose_write()
        self._linger = self.factory.clock.callLater(LINGER, self.abort)

    def abort(self) -> None:
        self.transport.abortConnection()

    def _drain(self, size: int) -> None:
        self._lingered += size
        if self._lingered > LINGER_BYTES:
            self.abort()

    def timeout(self, request_in_progress: bool) -> None:
        """Called by the factory's sweep."""
        if self._closing:
            return
        if request_in_progress:
            self.transport.write(self.factory.simple(408, close=True))
            self._closing = True
            self._close()
        else:
            self.transport.loseConnection()
            self._closing = True

    # -- httptools callbacks --------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.in_message = True
        self._partial = 0
        self.began = self.factory.now

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_URL:
            raise _Refuse("URL too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._head_bytes += len(name) + len(value) + 4
        if self._header_count > MAX_HEADERS or self._head_bytes > MAX_HEAD:
            raise _Refuse("headers too large")
        if len(name) in _INTERESTING_LENGTHS:
            key = _INTERESTING.get(name.lower())
            if key is not None and key not in self._headers:
                self._headers[key] = value.decode("latin-1")

    def on_message_complete(self) -> None:
        self.in_message = False
        url, self._url = self._url, b""
        headers = self._headers
        if headers:
            self._headers = {}
        self._head_bytes = self._header_count = 0
        if self._closing:
            return  # pipelined after a request that closes: not answered
        parser = self._parser
        keep = parser.should_keep_alive()
        if keep and parser.get_http_version() == "1.0":
            connection = _KEEP_ALIVE
        else:
            connection = b"" if keep else _CLOSE
        path, _, query = url.partition(b"?")
        if path[:1] != b"/":
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                parsed = None
            if parsed is None or parsed.path is None:
                self._out.append(self.factory.simple(400, close=True))
                self._closing = True
                return
            path, query = parsed.path, parsed.query or b""
        if path not in PATHS:
            answer = self.factory.simple(404, connection)
        else:
            method = parser.get_method()
            if method != b"GET" and method != b"HEAD":
                answer = self.factory.simple(405, connection, b"Allow: GET, HEAD\r\n")
            else:
                query, _, _ = query.partition(b"#")
                params = parse_query(query.decode("latin-1")) if query else {}
                verdict = self._check(params, headers, self.peer)
                answer = self.factory.answer(verdict, connection)
        self._out.append(answer)
        if not keep:
            self._closing = True


class FastCheckFactory(Factory):
    """
    Builds L{FastCheckProtocol}s around one L{Checker}; owns the coarse clock.

    @ivar connections: the open connections (for the sweep and for shutdown).
    """

    protocol = FastCheckProtocol
    noisy = False

    def __init__(
        self,
        checker: Checker,
        clock: Any,
        idle_timeout: float = 75.0,
        request_timeout: float = 15.0,
    ):
        self.checker = checker
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.request_timeout = request_timeout
        self.connections: set[FastCheckProtocol] = set()
        self._idle: list[Deferred] = []
        self._tick = LoopingCall(self.tick)
        self._tick.clock = clock
        self.now = clock.seconds()
        self._date = b""
        self._second = -1
        self.tick()

    def buildProtocol(self, addr) -> FastCheckProtocol:
        return FastCheckProtocol(self)

    def startFactory(self) -> None:
        if not self._tick.running:
            self._tick.start(1.0, now=True).addErrback(
                lambda f: log.failure("fast listener tick failed", f)
            )

    def stopFactory(self) -> None:
        if self._tick.running:
            self._tick.stop()

    def tick(self) -> None:
        """Once a second: refresh the clock and the Date header, sweep time-outs."""
        now = self.now = self.clock.seconds()
        second = int(now)
        if second != self._second:
            self._second = second
            self._date = b"Date: " + formatdate(second, usegmt=True).encode() + b"\r\n"
        idle_before = now - self.idle_timeout
        request_before = now - self.request_timeout
        for proto in list(self.connections):
            if proto.in_message:
                if proto.began < request_before:
                    proto.timeout(request_in_progress=True)
            elif proto.seen < idle_before:
                proto.timeout(request_in_progress=False)

    def lost(self, proto: FastCheckProtocol) -> None:
        self.connections.discard(proto)
        if not self.connections and self._idle:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)

    def close_all(self) -> Deferred:
        """Close every connection; fires once all are closed."""
        if not self.connections:
            return succeed(None)
        d: Deferred = Deferred()
        self._idle.append(d)
        for proto in list(self.connections):
            proto.abort()
        return d

    # -- answers ------------------------------------------------------------------------
    def answer(self, verdict, connection: bytes) -> bytes:
        """
        The response to a check: 200 or 403 with the Flussonic headers
        (X-AuthDuration, X-UserId, X-Max-Sessions) and Astra's X-Session-Name.
        """
        head = b"HTTP/1.1 200 OK\r\n" if verdict.allowed else b"HTTP/1.1 403 Forbidden\r\n"
        user = b"" if verdict.account_id is None else b"X-UserId: %d\r\n" % verdict.account_id
        if verdict.max_sessions is not None:
            user += b"X-Max-Sessions: %d\r\n" % verdict.max_sessions
        if verdict.session_name is not None:
            user += b"X-Session-Name: %s\r\n" % verdict.session_name.encode("latin-1", "replace")
        return b"%s%sContent-Length: 0\r\nX-AuthDuration: %d\r\n%s%s\r\n" % (
            head, self._date, verdict.duration, user, connection
        )

    def simple(self, code: int, connection: bytes = b"", extra: bytes = b"",
               close: bool = False) -> bytes:
        """A body-less response with just a status."""
        return b"HTTP/1.1 %s\r\n%sContent-Length: 0\r\n%s%s\r\n" % (
            _STATUS[code], self._date, extra, _CLOSE if close else connection
        )


class FastListenError(Exception):
    """The fast listener cannot listen; str() is one line naming the setting."""


def listen_now(reactor: Any, description: str, factory: Factory) -> IListeningPort:
    """
    Listen on the endpoint C{description} and return the port, or raise
    L{FastListenError} (TCP and UNIX endpoints listen synchronously).
    """
    try:
        endpoint = serverFromString(reactor, description)
    except Exception as e:
        raise FastListenError(f"[tokens] fast_listen {description}: {one_line(e)}")
    outcome: list = []
    endpoint.listen(factory).addBoth(outcome.append)
    if not outcome:
        raise FastListenError(f"[tokens] fast_listen {description}: not a stream socket endpoint")
    if isinstance(outcome[0], Failure):
        raise FastListenError(f"[tokens] fast_listen {description}: {one_line(outcome[0].value)}")
    return outcome[0]


@define(eq=False)
class FastListener(Service):
    """
    Serves the fast check in this process (C{workers = 1}).

    The checker counts into plain L{Tallies}; they are added to the
    Prometheus counters once a second (and at stop), which keeps the
    counter's lock off the per-request path.
    """

    name = "fast-listener"

    reactor: Any
    description: str
    factory: FastCheckFactory
    tallies: Tallies | None = None
    metrics: Any = None
    durations: Any = None  # the checker's L{smartyd.metrics.Durations}
    port: IListeningPort | None = field(default=None, init=False)
    _flusher: LoopingCall = field(init=False)

    def __attrs_post_init__(self) -> None:
        self._flusher = LoopingCall(self.flush)
        self._flusher.clock = self.reactor

    def flush(self) -> None:
        """Add what was counted since the last flush to the metrics."""
        if self.tallies is not None and self.metrics is not None:
            add_counts(self.metrics, "fast", self.tallies.take())
        if self.durations is not None and self.metrics is not None:
            taken = self.durations.take()
            if taken is not None:
                self.metrics.token_check_seconds.labels("fast").merge(taken)

    def startService(self) -> None:
        self.port = listen_now(self.reactor, self.description, self.factory)
        super().startService()
        self._flusher.start(1.0, now=False).addErrback(
            lambda f: log.failure("flushing fast listener counts failed", f)
        )
        log.info("fast token listener on {address}", address=str(self.port.getHost()),
                 console=True)

    def stopService(self) -> Deferred:
        super().stopService()
        if self._flusher.running:
            self._flusher.stop()
        self.flush()
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        d = maybeDeferred(port.stopListening)
        d.addBoth(lambda _: self.factory.close_all())
        return d
