"""The shared HTTP layer: one error mapping, one request counter, Basic auth, password login."""

from __future__ import annotations

import json

import pytest_twisted
from klein import Klein
from twisted.internet import defer
from twisted.logger import globalLogPublisher

from fakes import in_memory_client
from smartyd import ledger
from smartyd.db import DatabaseUnavailable
from smartyd.http import auth
from smartyd.http.auth import BasicAuth, password_login
from smartyd.http.fields import BadRequest, request_fields
from smartyd.http.handlers import endpoint, json_body
from smartyd.metrics import Metrics


class App:
    app = Klein()

    def __init__(self, metrics):
        self.metrics = metrics

    @app.route("/ok")
    @endpoint("t_ok")
    def ok(self, request):
        return json_body(request, 200, {"fields": request_fields(request)})

    @app.route("/bad")
    @endpoint("t_bad")
    async def bad(self, request):
        raise BadRequest("amount must be positive")

    @app.route("/db")
    @endpoint("t_db")
    async def db(self, request):
        raise DatabaseUnavailable("connection refused")

    @app.route("/bug")
    @endpoint("t_bug")
    async def bug(self, request):
        raise ZeroDivisionError("a bug")


def count(metrics, route, code):
    return metrics.registry.get_sample_value(
        "smartyd_http_requests_total", {"route": route, "code": code}) or 0


@pytest_twisted.ensureDeferred
async def test_errors_are_mapped_once_and_every_answer_is_counted():
    failures = []

    def observe(event):
        if event.get("log_failure") is not None:
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    metrics = Metrics()
    web = in_memory_client(App(metrics).app.resource())
    r = await web.post("http://x/ok", data={"a": "1"})
    assert r.code == 200 and json.loads(await r.content()) == {"fields": {"a": "1"}}
    r = await web.post("http://x/ok", data=b"[" * 5000,
                       headers={"content-type": "application/json"})
    assert r.code == 400 and "nested" in json.loads(await r.content())["error"]
    r = await web.get("http://x/bad")
    assert (r.code, json.loads(await r.content())) == (400, {"error": "amount must be positive"})
    r = await web.get("http://x/db")
    assert r.code == 503 and json.loads(await r.content())["error"].startswith("temporarily")
    r = await web.get("http://x/bug")
    assert (r.code, json.loads(await r.content())) == (500, {"error": "internal error"})
    # the bug is logged once, with its traceback
    globalLogPublisher.removeObserver(observe)
    assert [e.get("route") for e in failures] == ["t_bug"]
    assert failures[0]["log_failure"].check(ZeroDivisionError)
    assert [count(metrics, r, c) for r, c in
            [("t_ok", "200"), ("t_ok", "400"), ("t_bad", "400"), ("t_db", "503"),
             ("t_bug", "500")]] == [1, 1, 1, 1, 1]


class _Req:
    def __init__(self, user, password):
        self._u, self._p = user, password

    def getUser(self):
        return self._u

    def getPassword(self):
        return self._p


def test_basic_auth():
    a = BasicAuth("osmp", "pässword")
    assert a.required
    assert a.authorized(_Req(b"osmp", "pässword".encode()))
    assert not a.authorized(_Req(b"osmp", b"password"))
    assert not a.authorized(_Req(b"OSMP", "pässword".encode()))
    assert not a.authorized(_Req(b"", b""))
    open_auth = BasicAuth("", "")
    assert not open_auth.required and open_auth.authorized(_Req(b"", b""))


@pytest_twisted.ensureDeferred
async def test_password_login_costs_one_verification_whatever_the_answer(db):
    hashed = await defer.maybeDeferred(ledger.hash_password, "right")
    await db.run(ledger.create_account, "alice", hashed)
    await db.run(ledger.create_account, "nopass", "")
    verified = []

    def verify(password, stored):
        verified.append(stored)
        return ledger.verify_password(password, stored)

    assert (await password_login(db, "alice", "right", verify)).login == "alice"
    assert await password_login(db, "alice", "wrong", verify) is None
    assert await password_login(db, "nobody", "right", verify) is None
    assert await password_login(db, "nopass", "", verify) is None
    # an unknown login and an account without a password verify the dummy hash
    assert verified == [hashed, hashed, auth.DUMMY_HASH, auth.DUMMY_HASH]


def test_the_access_log_event_is_in_the_smartyd_access_namespace():
    """Admins filter the access log on ``smartyd.access``; the secret path segment is masked."""
    from twisted.web.resource import Resource
    from twisted.web.test.requesthelper import DummyRequest

    from smartyd.http.root import make_site

    site = make_site(Resource(), max_body=1024)
    request = DummyRequest([b"webhooks", b"dreamkas", b"s3cret"])
    request.path = b"/webhooks/dreamkas/s3cret"
    request.code = 200
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        site.log(request)
    finally:
        globalLogPublisher.removeObserver(events.append)
    [event] = [e for e in events if e.get("log_format") == "{method} {path} {code}"]
    assert event["log_namespace"] == "smartyd.access"
    assert event["path"] == "/webhooks/dreamkas/***"
