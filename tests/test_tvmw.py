"""
The TV Middleware API driven as a device drives it: GET requests with query
parameters on the daemon's own root resource (``testapp.build``), real
PostgreSQL, the app's services running (entitlements, session store), and
the minted stream tokens checked on the fast listener over a real socket.

The world (tests/streams_world.py): alice (tariff "basic" with ch1, device
UID bound), bob (no tariff), carol (blocked); ch1 in "basic", ch2 in none.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import pytest_twisted
from lxml import etree
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from conftest import make_config
from fakes import in_memory_client
from smartyd import catalog, ledger
from smartyd.gateways.untrusted_xml import parse_untrusted_xml
from smartyd.streams.check import Tallies
from smartyd.streams.fast import FastCheckFactory
from smartyd.streams import make_fast_checker
from smartyd.tvmw.sessions import key_hash
from streams_world import PASSWORD, UID, connect, get, within
from testapp import build

KEY = "tvmw-operator-key"
BASE = "http://smartyd/tvmiddleware/api/"


def config(**tvmw) -> object:
    section = {"enabled": True, "clients": [
        {"client_id": "1", "api_key": KEY, "shared": True},
        {"client_id": "2", "api_key": "other-operator-key"},
    ]}
    section.update(tvmw)
    return make_config(tvmw=section, tokens={"secret": "s3cret-long-enough-for-config"})


def admin_sql(dsn: str, sql: str, params=()) -> None:
    import psycopg2

    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
    conn.close()


class Device:
    """A set-top box: keeps its authkey, sends client_id/device/device_uid on every call."""

    def __init__(self, http, device: str = "smarttv", uid: str | None = None):
        self.http = http
        self.device = device
        self.uid = uid
        self.authkey: str | None = None

    async def raw(self, method: str, slash: bool = True, redirects: bool = False, **params):
        query = {"client_id": "1", "device": self.device}
        if self.uid:
            query["device_uid"] = self.uid
        if self.authkey and method != "login":
            query["authkey"] = self.authkey
        query.update({k: v for k, v in params.items() if v is not None})
        url = BASE + method + ("/" if slash else "") + "?" + urlencode(query)
        return await self.http.get(url, allow_redirects=redirects)

    async def __call__(self, method: str, **params) -> dict:
        resp = await self.raw(method, **params)
        assert resp.code == 200, resp.code
        body = await resp.content()
        return json.loads(body)

    async def ok(self, method: str, **params) -> dict:
        answer = await self(method, **params)
        assert answer["error"] == 0, answer
        return answer

    async def login(self, abonement="alice", password=PASSWORD, **params) -> dict:
        answer = await self("login", abonement=abonement, password=password, api_key=KEY,
                            **params)
        if answer["error"] == 0:
            self.authkey = answer["authkey"]
        return answer


class Running:
    """An app with its services started (one daemon instance)."""

    def __init__(self, db, cfg):
        self.app = build(cfg, reactor, db)
        self.http = in_memory_client(self.app.root)
        self.tvmw = self.app.app.features["tvmw"].handle
        self.store = self.tvmw.store
        self.entitlements = self.app.app.features["streams"].handle

    async def start(self):
        for svc in self.app.services:
            svc.startService()
        await within(self.entitlements.when_loaded(), 10)
        await within(self.store.listener.ready, 10)

    async def stop(self):
        for svc in reversed(self.app.services):
            await svc.stopService()


@pytest_twisted.async_yield_fixture
async def instance(db, world):
    running = Running(db, config())
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


# -- login ------------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_login_answers_the_session_and_the_account(instance, world, db):
    device = Device(instance.http, uid="box-1")
    answer = await device.login()
    assert answer["error"] == 0
    assert len(answer["authkey"]) == 32 and int(answer["authkey"], 16) >= 0
    assert answer["account_id"] == world.alice and answer["abonement"] == "alice"
    assert answer["device_uid"] == "box-1" and answer["status_reason"] == "ACTIVE"
    assert answer["currency"] == "RUB" and answer["customer_id"] > 0
    rows = [(bytes(h), a, u) for h, a, u in await db.fetchall(
        "SELECT key_hash, account_id, device_uid FROM tvmw_sessions")]
    assert rows == [(key_hash(answer["authkey"]), world.alice, "box-1")]
    # The device is bound to the account.
    assert await db.fetchval("SELECT account_id FROM devices WHERE uid = 'box-1'") == world.alice
    status = await device.ok("account/status")
    assert status["status"] == 0 and status["status_reason"] == "ACTIVE"
