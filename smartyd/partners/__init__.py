"""
The partner-client pattern: how smartyd talks to external APIs.

Every partner client (ASSIST, Payture, Dreamkas, MEGOGO, tvzavr, Irdeto)
receives a L{PartnerHTTP}: a treq ``HTTPClient`` plus a clock, with a time-out
on every request, a cap on every response body, typed errors and metrics.
Secrets travel in requests only: nothing here logs a body, a query string or a
header value.

Errors:
  - L{PartnerUnavailable}: network failure, time-out, 5xx -- retry later.
  - L{PartnerProtocolError}: an answer we cannot understand (garbage, HTML
    instead of XML, an oversized body) -- retry later, and alert.
  - L{PartnerRefused}: the partner understood and said no -- do not retry blindly.
"""

from __future__ import annotations

from typing import Any

import treq
from treq.client import HTTPClient
from attrs import define, field, frozen
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.error import ConnectError, ConnectionLost, DNSLookupError
from twisted.logger import Logger
from twisted.web.client import HTTPConnectionPool, ResponseFailed
from twisted.web.http_headers import Headers

log = Logger()


class PartnerError(Exception):
    def __init__(self, partner: str, message: str):
        super().__init__(f"{partner}: {message}")
        self.partner = partner
        self.message = message


class PartnerUnavailable(PartnerError):
    """Could not get an answer: network, time-out or a 5xx. Retry later."""


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
        d = _with_timeout(self._exchange(method, url, kwargs), limit, self.clock)
        try:
            response = await d
        except defer.TimeoutError:
            self._count("timeout")
            raise PartnerUnavailable(self.partner, f"{method} {_path(url)} timed out after {limit}s")
        except _TooLarge:
            self._count("too_large")
            raise PartnerProtocolError(
                self.partner, f"{method} {_path(url)}: answer larger than {self.max_body} bytes"
            )
        except (ConnectError, DNSLookupError, ConnectionLost, ResponseFailed, OSError) as e:
            self._count("unreachable")
            raise PartnerUnavailable(
                self.partner, f"{method} {_path(url)}: {type(e).__name__}"
            )
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

        await treq.collect(response, collector)
        return PartnerResponse(response.code, response.headers, b"".join(chunks))

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.partner_requests.labels(self.partner, outcome).inc()


def _with_timeout(coro, seconds: float, clock) -> defer.Deferred:
    d = defer.Deferred.fromCoroutine(coro)
    d.addTimeout(seconds, clock)
    return d


class _Discard:
    def makeConnection(self, transport):
        transport.stopProducing()

    def dataReceived(self, data):
        pass

    def connectionLost(self, reason):
        pass


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
        from twisted.web.client import Agent

        self.pool = HTTPConnectionPool(self.reactor, persistent=True)
        self.pool.maxPersistentPerHost = self.max_per_host
        self.pool.retryAutomatically = False  # never resend a payment call silently
        self.client = HTTPClient(Agent(self.reactor, pool=self.pool))

    def stopService(self):
        Service.stopService(self)
        return self.pool.closeCachedConnections()
