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
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from conftest import make_config
from fakes import in_memory_client
from smartyd import catalog, ledger
from smartyd.gateways.untrusted_xml import parse_untrusted_xml
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
    assert root.findtext("has_new_messages") == "1"
    # Shown once to this session.
    root = parse_untrusted_xml(await (await box.raw("account/status")).content())
    assert root.findtext("has_new_messages") == "0" and root.find("message/text") is None
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


# -- login errors, limits, devices ---------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_login_errors_as_the_spec_numbers_them(instance, world, db):
    device = Device(instance.http, uid="box-9")
    assert (await device("login", abonement="alice", password=PASSWORD,
                         api_key="wrong"))["error"] == 4
    assert (await device("login", abonement="alice", password=PASSWORD, api_key=KEY,
                         client_id="3"))["error"] == 4
    assert (await device.login(password="wrong"))["error"] == 1
    assert (await device.login(abonement="nobody"))["error"] == 1
    assert (await device.login(password=None))["error"] == 1
    carol = await device.login(abonement="carol")
    assert carol["error"] == 2 and carol["status_reason"] == "BLOCK"
    assert (await device.login(abonement="bob"))["error"] == 8
    # Client 2 is not shared: it finds only the accounts of its own customers.
    assert (await device("login", abonement="alice", password=PASSWORD, api_key="other-operator-key",
                         client_id="2"))["error"] == 1
    # Nothing was written by any of them.
    assert await db.fetchval("SELECT count(*) FROM tvmw_sessions") == 0
    assert await db.fetchval("SELECT count(*) FROM devices WHERE uid = 'box-9'") == 0


@pytest_twisted.ensureDeferred
async def test_a_device_bound_to_another_account_is_refused_with_6(instance, world, db):
    async def other(tx):
        account = await ledger.create_account(tx, "dave", ledger.hash_password("pw-of-dave"))
        await catalog.assign_tariff(tx, account.id, world.basic)
    await db.run(other)
    assert (await Device(instance.http, uid="box-1").login())["error"] == 0
    dave = await Device(instance.http, uid="box-1").login(abonement="dave", password="pw-of-dave")
    assert dave["error"] == 6
    # The seeded UID is alice's too.
    assert (await Device(instance.http, uid=UID).login(
        abonement="dave", password="pw-of-dave"))["error"] == 6
    assert (await Device(instance.http, uid="box-2").login(
        abonement="dave", password="pw-of-dave"))["error"] == 0


@pytest_twisted.ensureDeferred
async def test_the_account_device_limit_gives_5(instance, world, db):
    await db.execute("UPDATE tariffs SET devices_count = 2 WHERE id = %s", (world.basic,))
    first, second = Device(instance.http, uid="box-1"), Device(instance.http, uid="box-2")
    assert (await first.login())["error"] == 0
    assert (await second.login())["error"] == 0
    third = Device(instance.http, uid="box-3")
    assert (await third.login())["error"] == 5
    # The same device logging in again replaces its own session.
    old = first.authkey
    assert (await first.login())["error"] == 0
    assert (await Device(instance.http).raw("channel/list")).code == 200
    assert await db.fetchval("SELECT count(*) FROM tvmw_sessions") == 2
    # The account's own limit wins over its tariffs'.
    await db.execute("UPDATE accounts SET max_devices = 3 WHERE id = %s", (world.alice,))
    assert (await third.login())["error"] == 0
    # After a logout a slot is free again.
    await db.execute("UPDATE accounts SET max_devices = 1 WHERE id = %s", (world.alice,))
    assert (await Device(instance.http, uid="box-4").login())["error"] == 5
    assert old != first.authkey


@pytest_twisted.ensureDeferred
async def test_login_by_device_uid_alone_when_enabled(db, world):
    for enabled, expected in ((False, 1), (True, 0)):
        running = Running(db, config(login_by_device=enabled))
        await running.start()
        try:
            answer = await Device(running.http, uid=UID)("login", api_key=KEY)
            assert answer["error"] == expected, answer
            if enabled:
                assert answer["account_id"] == world.alice and answer["device_uid"] == UID
        finally:
            await running.stop()


@pytest_twisted.ensureDeferred
async def test_login_failures_are_counted_per_address_and_abonement(instance, world):
    # The delays themselves, on a task.Clock: tests/test_tvmw_ratelimit.py.
    device = Device(instance.http, uid="box-1")
    for _ in range(3):
        assert (await device.login(password="wrong"))["error"] == 1
    assert (await device("login", abonement="alice", password=PASSWORD,
                         api_key="wrong"))["error"] == 4
    value = instance.app.metrics.registry.get_sample_value
    assert value("smartyd_tvmw_login_failures_total", {"reason": "bad_credentials"}) == 3
    assert value("smartyd_tvmw_login_failures_total", {"reason": "bad_client"}) == 1
    limiter = instance.tvmw.deps["limiter"]
    now = reactor.seconds()
    assert limiter.delay(limiter.keys("127.0.0.1", "alice"), now) == 1  # the next one waits
    assert limiter.delay(limiter.keys("127.0.0.1", "bob"), now) == 0  # NAT: the address may


# -- bad input ---------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_bad_parameters_unknown_methods_and_huge_values(instance, world, db):
    device = Device(instance.http)
    await device.login()
    for params in ({}, {"cid": "x"}, {"cid": "-1"}, {"cid": "9" * 30}, {"cid": "999"}):
        answer = await device("channel/url", redirect=0, **params)
        assert answer["error"] == 1 and "cid" in answer["error_messages"], (params, answer)
    answer = await device("channel/programs", cid=world.ch1, limit="1000")
    assert answer["error"] == 1 and answer["error_messages"] == {"limit": "must be between 1 and 100"}
    answer = await device("program/list", cid=world.ch1, date="yesterday")
    assert answer["error"] == 1 and "date" in answer["error_messages"]
    answer = await device("channel/list", search="x" * 2000)
    assert answer["error"] == 1 and "search" in answer["error_messages"]
    resp = await instance.http.get(BASE + "channel/list/?authkey=" + device.authkey + "&"
                                   + "&".join(f"p{i}=1" for i in range(100)))
    assert json.loads(await resp.content())["error"] == 1
    resp = await instance.http.get(BASE + "channel/list/?authkey=%ff%fe")
    assert json.loads(await resp.content())["error"] == 1
    resp = await instance.http.post(BASE + "login/", data=b'{"abonement": {"a": [1]}}',
                                    headers={b"content-type": [b"application/json"]})
    answer = json.loads(await resp.content())
    assert resp.code == 200 and answer["error"] == 1 and "body" in answer["error_messages"]
    # Methods of the spec not served, and paths that are no method: a JSON 404, never a 500.
    resp = await device.raw("camera/list")
    assert resp.code == 404
    assert json.loads(await resp.content()) == {
        "error": -2, "error_message": "method camera/list is not served by this server"}
    for path in ("no/such/thing/", "", "../../etc/passwd"):
        resp = await instance.http.get(BASE + path)
        assert resp.code == 404 and json.loads(await resp.content())["error"] == -2
    # The token check under the same prefix is still the streams feature's.
    resp = await instance.http.get(BASE + "streamservice/token/check/?token=x&name=ch1")
    assert resp.code == 403
    # Unknown, malformed or missing authkeys: -1 on every session method.
    for key in ("", "f" * 32, "not-a-key", "F" * 32):
        for method in ("channel/list", "account/status", "logout", "program/list"):
            fresh = Device(in_memory_client(instance.app.root))  # no cookie jar of alice
            answer = await fresh(method, authkey=key or None, cid=world.ch1)
            assert answer["error"] == -1 and answer["status"] == 1, (method, key)
    assert await db.fetchval("SELECT count(*) FROM tvmw_sessions") == 1


@pytest_twisted.ensureDeferred
async def test_no_authkey_or_password_reaches_a_log_line(db, world, log_events):
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    from smartyd.http.root import make_site

    running = Running(db, config())
    await running.start()
    port = reactor.listenTCP(0, make_site(running.app.root, 1 << 20, reactor=reactor),
                             interface="127.0.0.1")
    global BASE
    saved, BASE = BASE, f"http://127.0.0.1:{port.getHost().port}/tvmiddleware/api/"
    pool = HTTPConnectionPool(reactor, persistent=False)
    try:
        device = Device(HTTPClient(Agent(reactor, pool=pool)), uid="box-1")
        await device.login()
        await device.ok("channel/list")
        await device.ok("channel/url", cid=world.ch1, redirect=0)
        await device.login(password="wrong-secret-guess")
        await device("channel/url", cid="bad", redirect=0)
        await running.store.flush()
        await device.ok("logout")
    finally:
        BASE = saved
        await port.stopListening()
        await pool.closeCachedConnections()
        await running.stop()
    text = repr(log_events)
    assert any(e.get("log_namespace") == "smartyd.access" for e in log_events)
    assert device.authkey and device.authkey not in text
    assert PASSWORD not in text and "wrong-secret-guess" not in text
    assert key_hash(device.authkey).hex() not in text


# -- sessions end on every path that changes the account ----------------------------------------
@pytest_twisted.ensureDeferred
async def test_password_change_and_deletion_end_sessions_at_once(instance, world, db):
    from smartyd.billing_api import repo as billing_api_repo

    device = Device(instance.http, uid="box-1")
    await device.login()
    ended = instance.store.next_end()
    await db.execute("UPDATE accounts SET password_hash = 'x' WHERE id = %s", (world.alice,))
    assert await within(ended, 5) == key_hash(device.authkey)
    assert (await device("channel/list"))["error"] == -1

    await db.execute("UPDATE accounts SET password_hash = (SELECT password_hash FROM accounts"
                     " WHERE id = %s) WHERE id = %s", (world.bob, world.alice))
    await device.login()
    # Other updates (a note, last_active) end nothing.
    await db.execute("UPDATE accounts SET last_active = now(), updated = now() WHERE id = %s",
                     (world.alice,))
    assert (await device("channel/list"))["error"] == 0
    ended = instance.store.next_end()
    await db.run(billing_api_repo.delete_account, world.alice)
    await within(ended, 5)
    assert (await device("channel/list"))["error"] == -1
    assert await db.fetchval("SELECT count(*) FROM tvmw_sessions") == 0


@pytest_twisted.ensureDeferred
async def test_channel_list_changed_after_a_tariff_change(instance, world, db):
    device = Device(instance.http, uid="box-1")
    await device.login()
    assert (await device.ok("account/status"))["channel_list_changed"] == 1  # never listed
    await device.ok("channel/list")
    assert (await device.ok("account/status"))["channel_list_changed"] == 0

    async def more(tx):
        t = await catalog.create_tariff(tx, "more", "10.00", [world.ch2])
        await catalog.assign_tariff(tx, world.alice, t["id"])
    reloaded = instance.entitlements.next_reload()
    await db.run(more)
    await within(reloaded, 5)
    assert (await device.ok("account/status"))["channel_list_changed"] == 1
    channels = (await device.ok("channel/list"))["channels"]
    assert all(c["has_subscription"] == 1 for c in channels)
    assert (await device.ok("account/status"))["channel_list_changed"] == 0


@pytest_twisted.ensureDeferred
async def test_idle_sessions_end_after_the_ttl(db, world):
    from twisted.internet.task import Clock

    from smartyd.tvmw.sessions import SessionStore, insert_session, new_authkey

    clock = Clock()
    clock.advance(1_800_000_000)
    store = SessionStore(db, clock, ttl=600)
    authkey, other = new_authkey(), new_authkey()
    for key, uid in ((authkey, "box-1"), (other, "box-2")):
        await db.run(insert_session, key_hash(key), world.alice, "1", uid, "", "10.0.0.1",
                     clock.seconds())
    assert (await store.validate(authkey)).account_id == world.alice  # read once, then memory
    before = db.round_trips
    clock.advance(500)
    assert await store.validate(authkey) is not None
    assert db.round_trips == before
    clock.advance(500)  # other idle for 1000 s, authkey for 500 s
    await store.flush()
    assert await store.validate(other) is None
    assert await store.validate(authkey) is not None
    assert [bytes(h) for h, in await db.fetchall("SELECT key_hash FROM tvmw_sessions")] == [
        key_hash(authkey)]
    clock.advance(601)
    assert await store.validate(authkey) is None
    assert await store.validate("nonsense") is None


# -- live TV ------------------------------------------------------------------------------------
async def _guide(db, world, now: int):
    from datetime import datetime, timezone

    def at(t):
        return datetime.fromtimestamp(t, timezone.utc)
    rows = [(world.ch1, now - 600, now + 600, "News <live>", "d1"),
            (world.ch1, now + 600, now + 1800, "Film", "d2"),
            (world.ch1, now + 1800, now + 3600, "Late", "d3"),
            (world.ch2, now + 60, now + 120, "Soon", "")]
    for cid, start, stop, title, desc in rows:
        await db.execute("INSERT INTO epg_programmes (channel_id, start, stop, title, description)"
                         " VALUES (%s, %s, %s, %s, %s)", (cid, at(start), at(stop), title, desc))


@pytest_twisted.ensureDeferred
async def test_guide_categories_and_channel_detail(instance, world, db):
    now = int(reactor.seconds())
    await _guide(db, world, now)
    reloaded = instance.entitlements.next_reload()
    await db.execute("INSERT INTO channel_categories (id, name, color) VALUES (7, 'News', '#ff0000')")
    await db.execute("UPDATE channels SET category_id = 7 WHERE id = %s", (world.ch1,))
    await within(reloaded, 5)
    await instance.tvmw.deps["channels"].reload()
    device = Device(instance.http)
    await device.login()
    channels = {c["id"]: c for c in (await device.ok("channel/list"))["channels"]}
    ch1, ch2 = channels[world.ch1], channels[world.ch2]
    assert ch1["category_id"] == 7 and ch2["category_id"] == 0
    assert ch1["program_name"] == "News <live>" and ch1["program_begin_time"] == now - 600
    assert ch1["next_program_name"] == "Film"
    assert ch2["program_name"] == "" and ch2["next_program_name"] == "Soon"
    compact = (await device.ok("channel/list", compact=1, search="CH2"))["channels"]
    assert [c["id"] for c in compact] == [world.ch2] and "next_program_name" not in compact[0]

    assert (await device.ok("category/list"))["categories"] == [
        {"id": 7, "name": "News", "color": "#ff0000", "channels_count": 1}]

    programs = (await device.ok("channel/programs", cid=world.ch1, limit=2))["programs"]
    assert [p["program_name"] for p in programs] == ["News <live>", "Film"]
    assert programs[0]["id"] == now - 600

    listed = (await device.ok("program/list", cid=world.ch1, time_from=now,
                              time_to=now + 7200))["programs"]
    assert [p["name"] for p in listed] == ["News <live>", "Film", "Late"]
    assert all(p["has_subscription"] == 1 for p in listed)
    listed = (await device.ok("program/list", cid=world.ch1, pid_from=now + 600))["programs"]
    assert [p["name"] for p in listed] == ["Film", "Late"]
    assert (await device("program/list", cid=world.ch1, pid_from=now + 1))["error"] == 1

    async def premium(tx):
        t = await catalog.create_tariff(tx, "premium", "300.00", [world.ch1, world.ch2])
        await catalog.create_tariff(tx, "secret", "1.00", [world.ch1], hidden=True)
        return t["id"]
    premium_id = await db.run(premium)
    detail = await device.ok("channel/detail", cid=world.ch1)
    assert detail["id"] == world.ch1 and detail["name"] == "ch1"
    assert [(a["tariff_id"], a["action"], a["price"]) for a in detail["actions"]] == [
        (world.basic, "get_channel_url", 100.0), (premium_id, "subscribe", 300.0)]


@pytest_twisted.ensureDeferred
async def test_health_check_needs_no_session(instance):
    answer = await Device(instance.http)("health/check", check_db_conn=1)
    assert answer["error"] == 0 and answer["connection_errors"] == []
    assert answer["alive"] == 1 and 0 <= answer["usage"] <= 1


@pytest_twisted.ensureDeferred
async def test_health_check_is_dead_only_without_the_database(own_cluster, make_db):
    """Load is information (``usage``); ``alive`` 0 means the database does not answer."""
    from datetime import datetime, timezone

    from smartyd.tvmw.call import Call
    from smartyd.tvmw.health import health_check

    db = await make_db(size=1, dsn=own_cluster.dsn())

    def call(**params):
        return Call(params=params, session=None, ip="127.0.0.1",
                    now=datetime.now(timezone.utc), reactor=None, db=db, cfg=None,
                    metrics=None, deps={})

    assert (await health_check(call(check_db_conn="1")))["alive"] == 1
    own_cluster.stop(mode="fast")
    down = await health_check(call(check_db_conn="1"))
    assert down["alive"] == 0 and down["connection_errors"] == ["database: not answering"]
    assert (await health_check(call()))["alive"] == 1  # not asked to check the database
    own_cluster.start()


# -- smartyd-admin ------------------------------------------------------------------------------
def smartyd_admin(pg_dsn, tmp_path, *args):
    import subprocess
    import sys

    cfg = tmp_path / "smartyd.toml"
    cfg.write_text(f'[database]\ndsn = "{pg_dsn}"\n')
    proc = subprocess.run([sys.executable, "-m", "smartyd.admin", "--config", str(cfg), *args],
                          capture_output=True, text=True, timeout=60)
    return proc.returncode, (json.loads(proc.stdout) if proc.returncode == 0 else proc.stderr)


@pytest_twisted.ensureDeferred
async def test_admin_lists_and_unbinds_devices_and_sets_device_limits(instance, world, db,
                                                                       pg_dsn, tmp_path):
    def admin(*args):
        return deferToThread(smartyd_admin, pg_dsn, tmp_path, *args)

    device = Device(instance.http, uid="box-1", device="lg_webos")
    answer = await device("login", abonement="alice", password=PASSWORD, api_key=KEY,
                          device_model="X1", device_serial="SN1")
    assert answer["error"] == 0
    code, out = await admin("account", "devices", str(world.alice))
    assert code == 0
    assert [(d["uid"], d["device"], d["model"], d["serial"], d["sessions"])
            for d in out["devices"]] == [
        (UID, "", None, None, 0), ("box-1", "lg_webos", "X1", "SN1", 1)]
    ended = instance.store.next_end()
    code, out = await admin("device", "unbind", "box-1")
    alice_customer = (await db.run(ledger.get_account, world.alice)).customer_id
    assert code == 0 and out == {"uid": "box-1", "account": world.alice,
                                 "customer_id": alice_customer, "sessions_ended": 1}
    await within(ended, 5)
    assert (await device("channel/list"))["error"] == -1
    assert await db.fetchval(
        "SELECT count(*) FROM audit_log WHERE actor = 'cli' AND action = 'device.unbind'") == 1
    code, err = await admin("device", "unbind", "box-1")
    assert code != 0 and "no device 'box-1'" in err

    code, out = await admin("tariff", "create", "--name", "duo", "--price", "0", "--devices", "2")
    assert code == 0 and out["devices"] == 2
    assert await db.fetchval("SELECT devices_count FROM tariffs WHERE id = %s", (out["id"],)) == 2
    code, out = await admin("account", "limit", str(world.alice), "--devices", "1")
    assert code == 0 and out == {"account": world.alice, "max_devices": 1}
    assert (await Device(instance.http, uid="box-1").login())["error"] == 0
    assert (await Device(instance.http, uid="box-2").login())["error"] == 5
    code, err = await admin("account", "limit", str(world.alice))
    assert code != 0
    code, out = await admin("channel", "create", "--name", "ch9", "--url-mask",
                            "http://s/ch9?t=$token", "--category", "Sport")
    assert code == 0
    assert await db.fetchval("SELECT c.name FROM channels ch JOIN channel_categories c"
                             " ON c.id = ch.category_id WHERE ch.id = %s", (out["id"],)) == "Sport"


@pytest_twisted.ensureDeferred
async def test_a_posted_form_logs_in_and_other_http_methods_are_refused(instance, world):
    resp = await instance.http.post(
        BASE + "login", data=urlencode({"abonement": "alice", "password": PASSWORD,
                                        "client_id": "1", "api_key": KEY}).encode(),
        headers={b"content-type": [b"application/x-www-form-urlencoded"]})
    assert json.loads(await resp.content())["error"] == 0
    resp = await instance.http.delete(BASE + "logout/")
    assert resp.code == 405 and json.loads(await resp.content())["error"] == -2


def test_the_config_section_and_its_redaction():
    cfg = make_config(tvmw={"enabled": True, "clients": [
        {"client_id": 7, "api_key": "secret-tvmw-key", "shared": True}],
        "session_ttl": 3600, "login_by_device": True, "xml_devices": ["mag"]})
    [client] = cfg.tvmw.clients
    assert (client.client_id, client.api_key, client.shared) == ("7", "secret-tvmw-key", True)
    assert cfg.tvmw.session_ttl == 3600 and cfg.tvmw.login_by_device
    assert cfg.tvmw.xml_devices == ("mag",)
    from smartyd.config import redacted
    assert "secret-tvmw-key" not in repr(redacted(cfg)) and "secret-tvmw-key" not in repr(cfg)
    assert make_config().tvmw.xml_devices[0] == "android_stb"


@pytest_twisted.ensureDeferred
async def test_a_device_deleted_by_any_path_ends_its_sessions(instance, world, db):
    """The Billing API's and the console's unbind delete the row: migration 0023 ends its sessions."""
    from smartyd.billing_api import repo as billing_api_repo

    device = Device(instance.http, uid="box-7")
    assert (await device.login())["error"] == 0
    other = Device(instance.http, uid="box-8")
    assert (await other.login())["error"] == 0
    device_id = await db.fetchval("SELECT id FROM devices WHERE uid = 'box-7'")
    ended = instance.store.next_end()
    await db.run(billing_api_repo.delete_device, device_id)
    await within(ended, 5)
    assert (await device("channel/list"))["error"] == -1
    assert (await other("channel/list"))["error"] == 0


@pytest_twisted.ensureDeferred
async def test_a_device_without_uid_keeps_the_one_made_up_for_it(instance, world, db):
    await db.execute("UPDATE accounts SET max_devices = 1 WHERE id = %s", (world.alice,))
    app = Device(instance.http)  # sends no device_uid; its HTTP client keeps cookies
    first = await app.login()
    assert first["device_uid"].startswith("gen-")
    again = await app.login()
    assert again["error"] == 0 and again["device_uid"] == first["device_uid"]
    # Not bound: a made-up uid is not a device of the account.
    assert await db.fetchval("SELECT count(*) FROM devices WHERE uid LIKE 'gen-%%'") == 0
    # Another app without the cookie is another device: past the limit.
    assert (await Device(in_memory_client(instance.app.root)).login())["error"] == 5


# -- the XML answer, property-tested -------------------------------------------------------------
from hypothesis import given, strategies as st  # noqa: E402

_TEXT = st.text(max_size=30)
_KEYS = st.one_of(st.sampled_from(["id", "name", "error", "item", "program_name"]), _TEXT)
_VALUES = st.recursive(
    st.one_of(_TEXT, st.integers(), st.booleans(), st.none()),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(_KEYS, inner, max_size=4)),
    max_leaves=20)


def _readable(text: str) -> str:
    return "".join(c for c in text if c in "\t\n\r" or (" " <= c and c not in "\ufffe\uffff"
                                                         and not "\ud800" <= c <= "\udfff"))


@given(st.dictionaries(_KEYS, _VALUES, max_size=5))
def test_any_answer_is_well_formed_xml_with_its_text_intact(answer):
    from smartyd.tvmw.web import to_xml

    root = parse_untrusted_xml(to_xml(answer))
    assert root.tag == "rss"

    def check(element, value):
        if isinstance(value, dict):
            children = list(element)
            assert len(children) == len(value)
            for child, (key, item) in zip(children, value.items()):
                assert child.tag == key or child.get("name") == _readable(key)
                check(child, item)
        elif isinstance(value, list):
            assert [c.tag for c in element] == ["item"] * len(value)
            for child, item in zip(element, value):
                check(child, item)
        else:
            expected = {True: "1", False: "0", None: ""}.get(value, value) \
                if isinstance(value, (bool, type(None))) else str(value)
            assert (element.text or "") == _readable(expected)

    check(root, answer)
