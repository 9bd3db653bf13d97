"""
The partner-client pattern: how smartyd talks to external APIs.

Every partner client (ASSIST, Payture, Dreamkas, MEGOGO, tvzavr, Irdeto)
receives a L{PartnerHTTP}: a treq ``HTTPClient`` plus a clock, with a time-out
on every request, a cap on every response body, typed errors and metrics.
Secrets travel in requests only: nothing here logs a body, a query string or a
header value.

Time-outs: our own timer on the reactor clock cancels the exchange.  What
the cancelled request then fails with depends on where it was (treq's
HTTP/1.1 client reports ``ResponseNeverReceived``, a cancelled body read a
``CancelledError``), so the exchange is classified by whether OUR timer
fired, never by the exception type: a timer that fired is a time-out
(``outcome="timeout"``, L{PartnerTimeout}), whatever the failure looks like.

Errors:
  - L{PartnerUnavailable}: network failure, time-out, 5xx -- retry later;
    L{PartnerTimeout} (a L{PartnerUnavailable}) when it was our time-out.
  - L{PartnerProtocolError}: an answer we cannot understand (garbage, HTML
    instead of XML, an oversized body) -- retry later, and alert.
  - L{PartnerRefused}: the partner understood and said no -- do not retry blindly.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

from treq.client import HTTPClient
from attrs import define, field, frozen
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.error import ConnectError, ConnectionLost, DNSLookupError
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    PotentialDataLoss,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.error import PageRedirect
from twisted.web.http_headers import Headers

log = Logger()


class PartnerError(Exception):
    def __init__(self, partner: str, message: str):
        super().__init__(f"{partner}: {message}")
        self.partner = partner
        self.message = message


class PartnerUnavailable(PartnerError):
    """Could not get an answer: network, time-out or a 5xx. Retry later."""


class PartnerTimeout(PartnerUnavailable):
    """Our time-out fired before the partner's answer was complete. Retry later."""


class PartnerProtocolError(PartnerError):
    """The answer was not what the protocol says (garbage, wrong type, too big)."""


class PartnerRefused(PartnerError):
    """The partner understood the request and refused it."""

    def __init__(self, partner: str, message: str, code: str | None = None):
        super().__init__(partner, message)
        self.code = code


class _TooLarge(Exception):
    pass


@frozen
class PartnerResponse:
    code: int
    headers: Headers
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    @property
    def content_type(self) -> str:
        return (self.header("content-type") or "").split(";")[0].strip().lower()


@define
class PartnerHTTP:
    """
    HTTP to one partner: every request has ``timeout`` seconds (connect,
    headers and body together) and a body cap of ``max_body`` bytes.
    """

    partner: str
    client: HTTPClient
    clock: Any
    metrics: Any = None
    timeout: float = 30.0
    max_body: int = 8 * 1024 * 1024

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: Any = None,
        data: Any = None,
        json: Any = None,
        headers: dict | None = None,
        timeout: float | None = None,
        ok_codes: tuple[int, ...] = (200,),
    ) -> PartnerResponse:
        """
        Send a request; return the response when its code is in ``ok_codes``.

        A 5xx or any transport failure raises L{PartnerUnavailable}; another
        code outside ``ok_codes`` raises L{PartnerRefused} with the code.
        """
        limit = self.timeout if timeout is None else timeout
        kwargs: dict[str, Any] = {"headers": headers or {}}
        if params is not None:
            kwargs["params"] = params
        if data is not None:
            kwargs["data"] = data
        if json is not None:
            kwargs["json"] = json
        exchange = _Deadline(self._exchange(method, url, kwargs), limit, self.clock)
        try:
            response = await exchange.result
        except Exception as e:
            failure = self._failed(method, url, e, limit if exchange.expired else None)
            if failure is e:
                raise
            raise failure from e
        if response.code >= 500:
            self._count("server_error")
            raise PartnerUnavailable(
                self.partner, f"{method} {_path(url)} answered HTTP {response.code}"
            )
        if response.code not in ok_codes:
            self._count("refused")
            raise PartnerRefused(
                self.partner, f"{method} {_path(url)} answered HTTP {response.code}",
                code=str(response.code),
            )
        self._count("ok")
        return response

    async def stream(
        self,
        method: str,
        url: str,
        on_chunk: Callable[[bytes], Any],
        *,
        params: Any = None,
        headers: dict | None = None,
        timeout: float | None = None,
    ) -> None:
        """
        Like L{request} for a 200 answer, but the body is not collected: each
        chunk goes to ``on_chunk`` as it arrives (a big feed is never held
        whole).  When ``on_chunk`` returns an awaitable the body is paused
        (back-pressure) and the next chunk waits until it completes; its error
        ends the exchange with that error.  ``timeout`` covers the whole
        exchange, consumer included; ``max_body`` caps the bytes streamed.
        """
        limit = self.timeout if timeout is None else timeout
        kwargs: dict[str, Any] = {"headers": headers or {}}
        if params is not None:
            kwargs["params"] = params
        exchange = _Deadline(self._stream(method, url, kwargs, on_chunk), limit, self.clock)
        try:
            code = await exchange.result
        except Exception as e:
            failure = self._failed(method, url, e, limit if exchange.expired else None)
            if failure is e:
                raise
            raise failure from e
        if code >= 500:
            self._count("server_error")
            raise PartnerUnavailable(self.partner, f"{method} {_path(url)} answered HTTP {code}")
        if code != 200:
            self._count("refused")
            raise PartnerRefused(self.partner, f"{method} {_path(url)} answered HTTP {code}",
                                 code=str(code))
        self._count("ok")

    async def _stream(self, method: str, url: str, kwargs: dict, on_chunk) -> int:
        response = await self.client.request(method, url, **kwargs)
        if response.code != 200:
            response.deliverBody(_Discard())
            return response.code
        if isinstance(response.length, int) and response.length > self.max_body:
            response.deliverBody(_Discard())
            raise _TooLarge()
        if response.length == 0:
            return response.code
        reader = _StreamReader(on_chunk, self.max_body)
        response.deliverBody(reader)
        await reader.done
        return response.code

    def _failed(self, method: str, url: str, error: Exception,
                expired_after: float | None) -> Exception:
        """Count a failed exchange; the typed error to raise (or ``error`` itself)."""
        where = f"{method} {_path(url)}"
        if expired_after is not None:
            # Our timer fired: whatever the cancellation turned into, a time-out.
            self._count("timeout")
            return PartnerTimeout(self.partner, f"{where} timed out after {expired_after}s")
        if isinstance(error, _TooLarge):
            self._count("too_large")
            return PartnerProtocolError(
                self.partner, f"{where}: answer larger than {self.max_body} bytes"
            )
        redirect = _redirect(error)
        if redirect is not None:
            # treq follows a redirect for GET/HEAD only; a POST answered 301/302/307/308
            # fails inside the agent as a bare ResponseFailed: say what happened.
            self._count("unreachable")
            code, location = redirect
            return PartnerUnavailable(
                self.partner, f"{where} answered HTTP {code}, a redirect to {_path(location)}"
                f" that is not followed for {method}: the partner's URL has moved")
        if isinstance(error, (ConnectError, DNSLookupError, ConnectionLost, ResponseFailed,
                              ResponseNeverReceived, OSError)):
            self._count("unreachable")
            return PartnerUnavailable(self.partner, f"{where}: {type(error).__name__}")
        return error  # a caller's cancellation, or a bug: not ours to classify

    async def _exchange(self, method: str, url: str, kwargs: dict) -> PartnerResponse:
        response = await self.client.request(method, url, **kwargs)
        if isinstance(response.length, int) and response.length > self.max_body:
            response.deliverBody(_Discard())
            raise _TooLarge()
        chunks: list[bytes] = []
        seen = [0]

        def collector(data: bytes) -> None:
            seen[0] += len(data)
            if seen[0] > self.max_body:
                raise _TooLarge()
            chunks.append(data)

        await _collect(response, collector)
        return PartnerResponse(response.code, response.headers, b"".join(chunks))

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.partner_requests.labels(self.partner, outcome).inc()


class _Deadline:
    """
    ``coro`` run as a Deferred (``result``) that our timer cancels after
    ``seconds`` on ``clock``; ``expired`` tells, afterwards, whether it did.
    """

    def __init__(self, coro, seconds: float, clock):
        self.expired = False
        self.result = defer.Deferred.fromCoroutine(coro)
        self._timer = clock.callLater(seconds, self._expire)
        self.result.addBoth(self._settled)

    def _expire(self) -> None:
        self.expired = True
        self.result.cancel()

    def _settled(self, outcome):
        if self._timer.active():
            self._timer.cancel()
        return outcome


def _collect(response, collector) -> defer.Deferred:
    """
    L{treq.collect}, but cancellable: cancelling the read (our time-out during
    a slow body) drops the connection instead of leaving it open.
    """
    if response.length == 0:
        return defer.succeed(None)
    reader = _BodyReader(collector)
    reader.done = defer.Deferred(reader.abort)
    response.deliverBody(reader)
    return reader.done


class _BodyReader(Protocol):
    def __init__(self, collector):
        self.collector = collector
        self.done: defer.Deferred | None = None

    def dataReceived(self, data: bytes) -> None:
        if self.done is None or self.done.called:
            return
        try:
            self.collector(data)
        except BaseException:
            self.transport.stopProducing()
            self.done.errback()

    def connectionLost(self, reason=connectionDone) -> None:
        if self.done is None or self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(None)
        else:
            self.done.errback(reason)

    def abort(self, _d) -> None:
        if self.transport is not None:
            self.transport.stopProducing()


class _StreamReader(Protocol):
    """
    Hands body chunks to ``on_chunk`` one at a time, in order; while an
    awaitable it returned runs, the transport is paused and chunks already
    read wait in a queue.  ``done`` fires once the body is over and every
    chunk consumed; cancelling it (our time-out) drops the connection.
    """

    def __init__(self, on_chunk, max_body: int):
        self.on_chunk = on_chunk
        self.max_body = max_body
        self.seen = 0
        self.queue: deque[bytes] = deque()
        self.busy = False
        self.lost = None
        self.done: defer.Deferred = defer.Deferred(self.abort)

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self.seen += len(data)
        if self.seen > self.max_body:
            self._fail(_TooLarge())
            return
        self.queue.append(data)
        self._pump()

    def _pump(self) -> None:
        while self.queue and not self.busy and not self.done.called:
            try:
                pending = self.on_chunk(self.queue.popleft())
            except BaseException as e:
                self._fail(e)
                return
            if pending is not None:
                self.busy = True
                if self.lost is None:
                    self.transport.pauseProducing()
                defer.ensureDeferred(pending).addCallbacks(self._consumed, self._fail)
                return
        if not self.queue and not self.busy and self.lost is not None and not self.done.called:
            if self.lost.check(ResponseDone, PotentialDataLoss):
                self.done.callback(None)
            else:
                self.done.errback(self.lost)

    def _consumed(self, _result) -> None:
        self.busy = False
        if self.done.called:
            return
        if self.lost is None:
            self.transport.resumeProducing()
        self._pump()

    def _fail(self, error) -> None:
        self.busy = False
        if self.done.called:
            return
        if self.lost is None:
            self.transport.stopProducing()
        self.done.errback(error)

    def connectionLost(self, reason=connectionDone) -> None:
        self.lost = reason
        self._pump()

    def abort(self, _d) -> None:
        if self.lost is None and self.transport is not None:
            self.transport.stopProducing()


class _Discard:
    def makeConnection(self, transport):
        transport.stopProducing()

    def dataReceived(self, data):
        pass

    def connectionLost(self, reason):
        pass


def _redirect(error: Exception) -> tuple[int, str] | None:
    """``(code, Location)`` when ``error`` is the agent refusing to follow a redirect."""
    if not isinstance(error, ResponseFailed) or not error.reasons:
        return None
    if not error.reasons[0].check(PageRedirect):
        return None
    response = getattr(error, "response", None)
    code = getattr(response, "code", None) or int(error.reasons[0].value.status or 0)
    values = response.headers.getRawHeaders(b"location") if response is not None else None
    location = values[0].decode("latin-1") if values else "?"
    return code, location


def _path(url: str) -> str:
    """The URL without its query string (which may carry secrets)."""
    return url.split("?", 1)[0]


@define(eq=False)
class HTTPClientService(Service):
    """
    A persistent HTTP connection pool as a service: partner clients share its
    ``client``; ``stopService`` closes the cached connections.
    """

    reactor: Any
    max_per_host: int = 8
    pool: HTTPConnectionPool = field(init=False)
    client: HTTPClient = field(init=False)

    def __attrs_post_init__(self):
        self.pool = HTTPConnectionPool(self.reactor, persistent=True)
        self.pool.maxPersistentPerHost = self.max_per_host
        self.pool.retryAutomatically = False  # never resend a payment call silently
        self.client = HTTPClient(Agent(self.reactor, pool=self.pool))

    def stopService(self):
        Service.stopService(self)
        return self.pool.closeCachedConnections()
