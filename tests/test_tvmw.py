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
    return make_config(tvmw=section, tokens={"secret": "s3cret-long-enough-for-config",
                                             "fast_listen": "tcp:0:interface=127.0.0.1"})


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


def fast_port(instance) -> int:
    from smartyd.streams.fast import FastListener

    [fast] = [s for s in instance.app.services if isinstance(s, FastListener)]
    return fast.port.getHost().port


async def token_check(instance, uri: str) -> int:
    """What the streamer's check of the URL's token answers on the fast listener."""
    query = parse_qs(urlsplit(uri).query)
    client = await connect(fast_port(instance))
    client.send(get(f"/streams/check?token={query['token'][0]}&ip={query['ip'][0]}&name=ch1"))
    [answer] = await client.wait(1)
    await client.close()
    return answer["status"]


@pytest.fixture
def fast(instance):
    return instance


@pytest_twisted.ensureDeferred
async def test_a_device_zaps_is_blocked_and_comes_back(fast, world, db, pg_dsn):
    device = Device(fast.http, uid="box-1")
    assert (await device.login())["error"] == 0
    channels = (await device.ok("channel/list"))["channels"]
    by_id = {c["id"]: c for c in channels}
    assert by_id[world.ch1]["has_subscription"] == 1 and by_id[world.ch2]["has_subscription"] == 0
    assert by_id[world.ch1]["name"] == "ch1"

    uri = (await device.ok("channel/url", cid=world.ch1, redirect=0))["uri"]
    assert uri.startswith("http://streamer.example.com:8080/ch1/index.m3u8?token=")
    assert await token_check(fast, uri) == 200
    # A channel no tariff of the account carries: refused, nothing minted.
    assert (await device("channel/url", cid=world.ch2, redirect=0))["error"] == 2

    # Blocked (by any path: here plain SQL): the session ends at once, the token is refused.
    reloaded = fast.entitlements.next_reload()
    await deferToThread(admin_sql, pg_dsn, "UPDATE accounts SET active = false,"
                        " status_reason = 'BLOCK' WHERE id = %s", (world.alice,))
    await within(reloaded, 5)
    refused = await device("channel/url", cid=world.ch1, redirect=0)
    assert refused["error"] == -1 and refused["status"] == 1
    assert await token_check(fast, uri) == 403
    assert await db.fetchval("SELECT count(*) FROM tvmw_sessions") == 0
    blocked = await device.login()
    assert blocked["error"] == 2 and blocked["status_reason"] == "BLOCK"

    # Unblocked: the device logs in again and zaps.
    reloaded = fast.entitlements.next_reload()
    await deferToThread(admin_sql, pg_dsn, "UPDATE accounts SET active = true,"
                        " status_reason = 'ACTIVE' WHERE id = %s", (world.alice,))
    await within(reloaded, 5)
    assert (await device.login())["error"] == 0
    again = (await device.ok("channel/url", cid=world.ch1, redirect=0))["uri"]
    assert await token_check(fast, again) == 200
    assert await token_check(fast, uri) == 200


@pytest_twisted.ensureDeferred
async def test_a_zap_reads_and_writes_nothing_and_last_seen_is_written_in_batches(
        instance, world, db):
    device = Device(instance.http, uid="box-1")
    await device.login()
    await device.ok("channel/url", cid=world.ch1, redirect=0)  # the catalog is loaded
    before = db.round_trips
    for _ in range(20):
        await device.ok("channel/url", cid=world.ch1, redirect=0)
    assert db.round_trips == before
    seen = await db.fetchval("SELECT last_seen FROM tvmw_sessions")
    await instance.store.flush()
    assert await db.fetchval("SELECT last_seen FROM tvmw_sessions") > seen
    assert await db.fetchval("SELECT last_active FROM accounts WHERE id = %s",
                             (world.alice,)) is not None


@pytest_twisted.ensureDeferred
async def test_channel_url_redirects_by_default_so_a_playlist_entry_plays(instance, world):
    device = Device(instance.http)
    await device.login()
    resp = await device.raw("channel/url", cid=world.ch1)
    assert resp.code == 302
    location = resp.headers.getRawHeaders(b"location")[0].decode()
    assert location.startswith("http://streamer.example.com:8080/ch1/index.m3u8?token=")
    # Refused in redirect mode: a 403 with the JSON error, never a redirect.
    resp = await device.raw("channel/url", cid=world.ch2)
    assert resp.code == 403 and json.loads(await resp.content())["error"] == 2
    # Without the trailing slash, and without a session.
    resp = await device.raw("channel/url", slash=False, cid=world.ch1, authkey="0" * 32)
    assert resp.code == 403 and json.loads(await resp.content())["error"] == -1


@pytest_twisted.ensureDeferred
async def test_set_top_boxes_get_xml_with_items_and_escaped_text(instance, world, db):
    await db.execute("UPDATE channels SET name = 'ch1' WHERE id = %s", (world.ch1,))
    box = Device(instance.http, device="android_stb")
    resp = await box.raw("login", abonement="alice", password=PASSWORD, api_key=KEY)
    assert resp.headers.getRawHeaders(b"content-type")[0].startswith(b"application/xml")
    root = parse_untrusted_xml(await resp.content())
    assert root.tag == "rss" and root.findtext("error") == "0"
    box.authkey = root.findtext("authkey")
    await db.execute("INSERT INTO account_messages (account_id, subject, text)"
                     " VALUES (%s, %s, %s)", (world.alice, "<b>&", "a < b & c"))
    root = parse_untrusted_xml(await (await box.raw("account/status")).content())
    assert root.findtext("message/subject") == "<b>&"
    assert root.findtext("message/text") == "a < b & c"
    root = parse_untrusted_xml(await (await box.raw("channel/list")).content())
    items = root.findall("channels/item")
    assert [i.findtext("id") for i in items] == [str(world.ch1), str(world.ch2)]
    assert items[0].findtext("has_subscription") == "1"
    assert root.findtext("error") == "0"


@pytest_twisted.ensureDeferred
async def test_the_authkey_is_taken_from_the_cookie_and_logout_clears_it(instance, world):
    device = Device(instance.http)
    resp = await device.raw("login", abonement="alice", password=PASSWORD, api_key=KEY)
    cookies = resp.cookies()
    authkey = json.loads(await resp.content())["authkey"]
    assert cookies["authkey"] == authkey
    resp = await instance.http.get(BASE + "channel/list/?client_id=1", cookies=cookies)
    assert json.loads(await resp.content())["error"] == 0
    resp = await instance.http.get(BASE + "logout/?client_id=1", cookies=cookies)
    assert json.loads(await resp.content())["error"] == 0
    resp = await instance.http.get(BASE + "channel/list/?client_id=1", cookies=cookies)
    assert json.loads(await resp.content())["error"] == -1


@pytest_twisted.ensureDeferred
async def test_logout_ends_the_session_on_every_instance(db, world):
    one, two = Running(db, config()), Running(db, config())
    await one.start()
    await two.start()
    try:
        on_one, on_two = Device(one.http), Device(two.http)
        await on_one.login()
        on_two.authkey = on_one.authkey
        # Logged in on one, used on the other (it reads the session once).
        assert (await on_two("channel/list"))["error"] == 0
        assert key_hash(on_one.authkey) in two.store.sessions
        ended = two.store.next_end()
        await on_one.ok("logout")
        assert await within(ended, 5) == key_hash(on_one.authkey)
        assert key_hash(on_one.authkey) not in two.store.sessions
        assert (await on_two("channel/list"))["error"] == -1
        assert (await on_one("channel/list"))["error"] == -1
    finally:
        await one.stop()
        await two.stop()


@pytest_twisted.ensureDeferred
async def test_sessions_survive_a_restart(db, world):
    first = Running(db, config())
    await first.start()
    device = Device(first.http, uid="box-1")
    await device.login()
    await device.ok("channel/list")
    await first.stop()
    second = Running(db, config())
    await second.start()
    try:
        assert key_hash(device.authkey) in second.store.sessions
        device.http = second.http
        assert (await device.ok("account/status"))["channel_list_changed"] == 0
    finally:
        await second.stop()
