"""
L{PartnerHTTP}: how a partner exchange ends, and how it is counted.

The partner is an in-process resource behind a StubTreq (a real HTTP/1.1
client protocol over an in-memory transport, pumped by hand with ``flush``);
time is a ``task.Clock``.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from smartyd.metrics import Metrics
from smartyd.partners import (
    PartnerHTTP,
    PartnerProtocolError,
    PartnerTimeout,
    PartnerUnavailable,
)

URL = "http://partner.test/api/thing?secret=q"
OUTCOMES = ("ok", "timeout", "unreachable", "server_error", "refused", "too_large")


class Partner(Resource):
    """
    Answers per ``mode``: "silent" (never), "stall" (headers, then no body),
    "chunked" (a body without Content-Length, in pieces), "moved" (301 elsewhere), or "ok".
    """

    isLeaf = True

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode
        self.requests = []
        self.gone = []

    def render(self, request):
        self.requests.append(request)
        request.notifyFinish().addErrback(self.gone.append)
        if self.mode == "ok":
            return b"fine"
        if self.mode == "moved":  # the partner moved: every request is redirected
            request.setResponseCode(301)
            request.setHeader(b"location", b"https://new.partner.test/api/thing?token=q")
            return b""
        if self.mode == "chunked":  # no Content-Length: the body comes chunked, then ends
            for piece in (b"fi", b"n", b"e"):
                request.write(piece)
            request.finish()
        if self.mode == "stall":
            request.setHeader(b"content-length", b"100")
            request.write(b"only part of it")
        return NOT_DONE_YET


def counted(metrics, partner="p") -> dict:
    values = {o: metrics.partner_requests.labels(partner, o)._value.get() for o in OUTCOMES}
    return {o: v for o, v in values.items() if v}


def partner_http(mode: str, clock: Clock, metrics: Metrics, **kw):
    partner = Partner(mode)
    partner.stub = StubTreq(partner)
    return partner, PartnerHTTP("p", partner.stub, clock, metrics=metrics, timeout=5, **kw)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("mode", ["silent", "stall"])
async def test_a_partner_that_never_answers_is_a_timeout(mode):
    clock, metrics = Clock(), Metrics()
    partner, http = partner_http(mode, clock, metrics)
    d = defer.ensureDeferred(http.request("GET", URL))
    assert len(partner.requests) == 1 and not d.called
    clock.advance(4.9)
    assert not d.called
    clock.advance(0.1)  # our time-out fires
    partner.stub.flush()
    with pytest.raises(PartnerTimeout) as e:
        await d
    assert isinstance(e.value, PartnerUnavailable)  # callers retrying "unavailable" still do
    assert e.value.partner == "p" and "timed out after 5" in e.value.message
    assert "secret" not in e.value.message
    assert counted(metrics) == {"timeout": 1}
    assert len(partner.gone) == 1  # the connection was given up, not left to run
    assert clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_an_answer_in_time_leaves_no_timer_and_counts_ok():
    clock, metrics = Clock(), Metrics()
    _, http = partner_http("ok", clock, metrics)
    response = await http.request("GET", URL)
    assert (response.code, response.body) == (200, b"fine")
    assert counted(metrics) == {"ok": 1}
    assert clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_a_cancelled_request_is_not_a_timeout():
    """Only our own timer makes a timeout: a caller's cancel is passed on as such."""
    clock, metrics = Clock(), Metrics()
    partner, http = partner_http("silent", clock, metrics)
    d = defer.ensureDeferred(http.request("GET", URL))
    d.cancel()
    partner.stub.flush()
    with pytest.raises((defer.CancelledError, PartnerUnavailable)) as e:
        await d
    assert not isinstance(e.value, PartnerTimeout)
    assert "timeout" not in counted(metrics)
    assert clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_a_body_over_the_cap_is_a_protocol_error():
    clock, metrics = Clock(), Metrics()
    _, http = partner_http("ok", clock, metrics, max_body=3)
    with pytest.raises(PartnerProtocolError):
        await http.request("GET", URL)
    assert counted(metrics) == {"too_large": 1}
    assert clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_an_answer_without_content_length_is_read_whole_and_capped():
    """Chunked answers (no length known in advance) are read to their end, within the cap."""
    clock, metrics = Clock(), Metrics()
    _, http = partner_http("chunked", clock, metrics)
    response = await http.request("GET", URL)
    assert (response.code, response.body) == (200, b"fine")
    _, capped = partner_http("chunked", clock, metrics, max_body=3)
    with pytest.raises(PartnerProtocolError):
        await capped.request("GET", URL)
    assert counted(metrics) == {"ok": 1, "too_large": 1}
    assert clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_a_post_redirected_elsewhere_says_so():
    """
    A partner that moved (http -> https, a new host) answers 301: treq follows it
    for GET only, so a POST fails -- with a message naming the redirect and its
    target (no query string), not a bare ResponseFailed.
    """
    clock, metrics = Clock(), Metrics()
    _, http = partner_http("moved", clock, metrics)
    with pytest.raises(PartnerUnavailable) as e:
        await http.request("POST", URL, data={"a": "1"})
    assert "answered HTTP 301, a redirect to https://new.partner.test/api/thing" in e.value.message
    assert "token" not in e.value.message and "secret" not in e.value.message
    assert counted(metrics) == {"unreachable": 1}
    assert clock.getDelayedCalls() == []
