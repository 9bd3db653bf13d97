"""
Streamers as they are deployed (issue 14): the exact requests Flussonic's
``auth_backend``, Cesbo Astra's HTTP auth backend and nginx ``auth_request``
send (the README's "Streamers" snippets), on BOTH listeners -- the Klein app
(StubTreq) and the fast listener (a loopback port) -- on Smarty's path and
ours; concurrent sessions per account (limit reached, renewed, expired,
revoked) with "now" a task.Clock; the limit across two instances (two
checker sets on one database, exchanging leases); ``when_unavailable``.
"""

import json
import subprocess
import sys
from urllib.parse import quote, urlencode

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock

from smartyd import catalog
from smartyd.streams.check import Checker, Tallies, prometheus_counters
from smartyd.streams.fast import FastCheckFactory
from smartyd.streams.sessions import LeaseExchange, SessionLeases
from smartyd.streams.tokens import TokenCodec
from smartyd.streams.web import StreamsApp
from fakes import in_memory_client as stub_treq
from streams_world import connect, within

NOW = 1_700_000_000
IP = "203.0.113.9"
SMARTY = "/tvmiddleware/api/streamservice/token/check/"
LISTENERS = ("http", "fast")
HEADERS = ("X-UserId", "X-AuthDuration", "X-Max-Sessions", "X-Session-Name")


class Daemon:
    """
    One smartyd process's checkers: both listeners on one snapshot and one
    L{SessionLeases}, "now" a task.Clock.
    """

    def __init__(self, db, holder, metrics, clock=None, when_unavailable="deny", lease=30):
        self.db = db
        self.clock = clock or Clock()
        if clock is None:
            self.clock.advance(NOW)
        self.codec = TokenCodec(["s3cret"], bind_ip=True)
        self.sessions = SessionLeases(lease=lease)
        self.tallies = Tallies()
        http = Checker(self.codec, holder, self.clock, prometheus_counters(metrics, "http"),
                       sessions=self.sessions, when_unavailable=when_unavailable)
        self.http = stub_treq(StreamsApp(db, self.codec, http, self.clock, metrics,
                                         ttl=3600).resource())
        fast = Checker(self.codec, holder, self.clock, self.tallies, listener="fast",
                       sessions=self.sessions, when_unavailable=when_unavailable)
        self.factory = FastCheckFactory(fast, self.clock)
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")

    def token(self, account, channel, ip=IP):
        return self.codec.mint(account, channel, NOW + 3600, ip=ip)

    async def send(self, listener, target, headers=()):
        """
        GET C{target} (path and query, as the streamer writes it) with
        C{headers}; returns C{(status, {header: value})} for the headers that matter.
        """
        if listener == "http":
            r = await self.http.get("http://smartyd" + target,
                                    headers={k: [v] for k, v in headers})
            await r.content()
            got = {h: r.headers.getRawHeaders(h, [None])[0] for h in HEADERS}
            return r.code, {h: v for h, v in got.items() if v is not None}
        client = await connect(self.port.getHost().port)
        lines = [f"GET {target} HTTP/1.1", "Host: 127.0.0.1:8081",
                 *(f"{k}: {v}" for k, v in headers)]
        client.send(("\r\n".join(lines) + "\r\n\r\n").encode())
        [answer] = await client.wait(1)
        await client.close()
        return answer["status"], {h: answer["headers"][h] for h in HEADERS
                                  if h in answer["headers"]}

    async def exchange(self):
        await self.sessions.exchange(self.db, self.clock.seconds())

    async def stop(self):
        await self.port.stopListening()
        await self.factory.close_all()


@pytest_twisted.async_yield_fixture
async def daemon(db, world, entitlements, metrics):
    d = Daemon(db, entitlements, metrics)
    yield d
    await d.stop()


async def set_limit(db, entitlements, account, sessions):
    reloaded = entitlements.next_reload()
    await db.run(catalog.set_account_sessions, account, sessions)
    await within(reloaded, 5)


# -- the request shapes ---------------------------------------------------------------------
def flussonic(token, session, request_type="new_session", number=0, name="ch1", path=SMARTY):
    """What Flussonic's auth_backend sends (README: Streamers / Flussonic)."""
    query = urlencode({
        "name": name, "proto": "hls", "ip": IP, "token": token, "session_id": session,
        "request_type": request_type, "request_number": number, "stream_clients": 1,
        "total_clients": 4, "qs": f"token={token}", "user_agent": "VLC/3.0.20 LibVLC/3.0.20",
        "referer": "", "host": "tv.example.com",
    })
    return f"{path}?{query}", ()


def astra(token, session, channel_id="a001", real_path="/play/a001", path=SMARTY):
    """What Astra's HTTP auth backend sends: the viewer's query and its X- headers."""
    return f"{path}?token={quote(token)}", (
        ("X-Session-ID", session), ("X-Channel-ID", channel_id), ("X-Real-IP", IP),
        ("X-Real-Path", real_path), ("X-Real-UA", "Kodi/20.2"),
        ("X-Real-Host", "tv.example.com:8000"),
    )


def nginx(token, uri_path="/hls/ch1/index.m3u8"):
    """What the README's nginx auth_request location sends (to /streams/check)."""
    return "/streams/check?name=ch1", (
        ("X-Original-URI", f"{uri_path}?token={token}"), ("X-Real-IP", IP))


# -- Smarty's path ----------------------------------------------------------------------------
@pytest.mark.parametrize("listener", LISTENERS)
@pytest_twisted.ensureDeferred
async def test_smartys_path_answers_as_streams_check(daemon, world, listener):
    good = daemon.token(world.alice, world.ch1)
    bob = daemon.token(world.bob, world.ch1)
    for path in (SMARTY, SMARTY.rstrip("/"), "/streams/check"):
        status, headers = await daemon.send(listener, f"{path}?token={good}&ip={IP}&name=ch1")
        assert (status, headers) == (200, {"X-UserId": str(world.alice), "X-AuthDuration": "60"})
        status, headers = await daemon.send(listener, f"{path}?token={bob}&ip={IP}")
        assert (status, headers) == (403, {"X-UserId": str(world.bob), "X-AuthDuration": "10"})
    assert (await daemon.send(listener, SMARTY + "more"))[0] == 404


# -- Flussonic --------------------------------------------------------------------------------
@pytest.mark.parametrize("listener", LISTENERS)
@pytest_twisted.ensureDeferred
async def test_flussonic_allowed_denied_and_x_max_sessions(daemon, db, world, entitlements,
                                                            listener):
    token = daemon.token(world.alice, world.ch1)
    status, headers = await daemon.send(listener, *flussonic(token, "f-1"))
    # No limit: no X-Max-Sessions, the usual cache duration.
    assert (status, headers) == (200, {"X-UserId": str(world.alice), "X-AuthDuration": "60"})

    await set_limit(db, entitlements, world.alice, 2)
    status, headers = await daemon.send(listener, *flussonic(token, "f-1", "update_session", 1))
    # Limited: Flussonic enforces it too, and re-checks within half a lease.
    assert (status, headers) == (200, {"X-UserId": str(world.alice), "X-AuthDuration": "15",
                                       "X-Max-Sessions": "2"})
    # Denied: not entitled (ch2), a channel other than the token's, a forged token.
    ch2 = daemon.token(world.alice, world.ch2)
    assert (await daemon.send(listener, *flussonic(ch2, "f-2", name="ch2")))[0] == 403
    assert (await daemon.send(listener, *flussonic(token, "f-3", name="ch2")))[0] == 403
    status, headers = await daemon.send(listener, *flussonic("A" * 74, "f-4"))
    assert (status, headers) == (403, {"X-AuthDuration": "10"})


@pytest.mark.parametrize("listener", LISTENERS)
@pytest_twisted.ensureDeferred
async def test_flussonic_limit_reached_renewed_and_expired(daemon, db, world, entitlements,
                                                           metrics, listener):
    await set_limit(db, entitlements, world.alice, 2)
    token = daemon.token(world.alice, world.ch1)

    async def status(session, kind="new_session"):
        return (await daemon.send(listener, *flussonic(token, session, kind)))[0]

    assert await status("s1") == 200
    assert await status("s2") == 200
    assert await status("s3") == 403  # the limit reached: a new session is refused
    assert await status("s1", "update_session") == 200  # ... the old ones keep working
    daemon.clock.advance(20)
    assert await status("s2", "update_session") == 200  # renewed: s2 holds until +50
    assert await status("s3") == 403
    daemon.clock.advance(11)  # s1 last renewed 31 s ago: its lease ran out
    assert await status("s3") == 200
    assert await status("s1", "update_session") == 403  # s1 is a new session now: s2, s3 hold
    if listener == "http":
        assert metrics.registry.get_sample_value(
            "smartyd_token_checks_total",
            {"listener": "http", "outcome": "denied", "reason": "too_many_sessions"}) == 3
    else:
        assert {r: n for _, r, n in daemon.tallies.take()}["too_many_sessions"] == 3


@pytest.mark.parametrize("listener", LISTENERS)
@pytest_twisted.ensureDeferred
async def test_a_revoked_account_is_refused_on_its_running_session(daemon, db, world,
                                                                  entitlements, listener):
    await set_limit(db, entitlements, world.alice, 1)
    token = daemon.token(world.alice, world.ch1)
    assert (await daemon.send(listener, *flussonic(token, "s1")))[0] == 200
    reloaded = entitlements.next_reload()
    await db.run(catalog.remove_tariff, world.alice, world.basic)
    await within(reloaded, 5)
    status, headers = await daemon.send(listener, *flussonic(token, "s1", "update_session", 1))
    assert (status, headers) == (403, {"X-UserId": str(world.alice), "X-AuthDuration": "10"})
    # A blocked account (carol) is refused outright, on every streamer's shape.
    carol = daemon.token(world.carol, world.ch1)
    assert (await daemon.send(listener, *flussonic(carol, "c1")))[0] == 403
    assert (await daemon.send(listener, *astra(carol, "77", channel_id="ch1")))[0] == 403
    assert (await daemon.send(listener, *nginx(carol)))[0] == 403


# -- Cesbo Astra ------------------------------------------------------------------------------
@pytest.mark.parametrize("listener", LISTENERS)
@pytest_twisted.ensureDeferred
async def test_astra_channel_by_streamer_id_name_or_path_and_session_name(
        daemon, db, world, entitlements, listener):
    async def ids(tx):
        await catalog.set_streamer_id(tx, world.ch1, "a001")
        await catalog.set_streamer_id(tx, world.ch2, "a002")

    reloaded = entitlements.next_reload()
    await db.run(ids)
    await within(reloaded, 5)
    token = daemon.token(world.alice, world.ch1)
    allowed = (200, {"X-UserId": str(world.alice), "X-AuthDuration": "60",
                     "X-Session-Name": "alice"})
    assert await daemon.send(listener, *astra(token, "1", channel_id="a001")) == allowed
    assert await daemon.send(listener, *astra(token, "2", channel_id="ch1")) == allowed
    # Astra's id unknown here: the viewer's path decides.
    assert await daemon.send(listener, *astra(token, "3", channel_id="x9",
                                              real_path="/ch1/index.m3u8")) == allowed
    # The token is ch1's; Astra asks for ch2 (by its streamer id, or its path).
    status, headers = await daemon.send(listener, *astra(token, "4", channel_id="a002"))
    assert status == 403 and "X-Session-Name" not in headers
    assert (await daemon.send(listener, *astra(token, "5", channel_id="x9",
                                               real_path="/play/a002")))[0] == 403
    # The viewer's address is X-Real-IP: a token bound to another address is refused.
    other = daemon.token(world.alice, world.ch1, ip="198.51.100.7")
    assert (await daemon.send(listener, *astra(other, "6")))[0] == 403
    # Smarty's path or ours alike.
    assert await daemon.send(listener, *astra(token, "7", path="/streams/check")) == allowed


@pytest.mark.parametrize("listener", LISTENERS)
@pytest_twisted.ensureDeferred
async def test_astra_sessions_are_keyed_by_x_session_id(daemon, db, world, entitlements,
                                                        listener):
    await set_limit(db, entitlements, world.alice, 1)
    token = daemon.token(world.alice, world.ch1)
    status, headers = await daemon.send(listener, *astra(token, "100", channel_id="ch1"))
    assert status == 200 and headers["X-Max-Sessions"] == "1"
    assert (await daemon.send(listener, *astra(token, "100", channel_id="ch1")))[0] == 200
    assert (await daemon.send(listener, *astra(token, "101", channel_id="ch1")))[0] == 403
    daemon.clock.advance(31)  # 100 stopped asking: its slot is free
    assert (await daemon.send(listener, *astra(token, "101", channel_id="ch1")))[0] == 200


# -- nginx auth_request -----------------------------------------------------------------------
@pytest.mark.parametrize("listener", LISTENERS)
@pytest_twisted.ensureDeferred
async def test_nginx_auth_request_sessions_are_keyed_by_the_token(daemon, db, world,
                                                                  entitlements, listener):
    await set_limit(db, entitlements, world.alice, 1)
    first = daemon.token(world.alice, world.ch1)
    second = daemon.codec.mint(world.alice, world.ch1, NOW + 3000, ip=IP)
    assert (await daemon.send(listener, *nginx(first)))[0] == 200
    # Every playlist and segment request of the same viewer: the same session.
    assert (await daemon.send(listener, *nginx(first, "/hls/ch1/seg-1.ts")))[0] == 200
    assert (await daemon.send(listener, *nginx(second)))[0] == 403
    daemon.clock.advance(31)
    assert (await daemon.send(listener, *nginx(second)))[0] == 200
    assert (await daemon.send(listener, *nginx(first)))[0] == 403


# -- one process: both listeners share the leases ---------------------------------------------
@pytest_twisted.ensureDeferred
async def test_both_listeners_of_one_process_share_the_count(daemon, db, world, entitlements):
    await set_limit(db, entitlements, world.alice, 1)
    token = daemon.token(world.alice, world.ch1)
    assert (await daemon.send("fast", *flussonic(token, "s1")))[0] == 200
    assert (await daemon.send("http", *flussonic(token, "s2")))[0] == 403
    assert (await daemon.send("http", *flussonic(token, "s1", "update_session")))[0] == 200


# -- across instances ---------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_the_limit_holds_across_two_instances(db, world, entitlements, metrics):
    await set_limit(db, entitlements, world.alice, 1)
    clock = Clock()
    clock.advance(NOW)
    one = Daemon(db, entitlements, metrics, clock=clock)
    two = Daemon(db, entitlements, metrics, clock=clock)
    try:
        token = one.token(world.alice, world.ch1)
        assert (await one.send("fast", *flussonic(token, "s1")))[0] == 200
        await one.exchange()
        await two.exchange()
        # The other instance knows s1 holds the one slot; it renews s1, refuses s2.
        assert (await two.send("fast", *flussonic(token, "s2")))[0] == 403
        assert (await two.send("http", *flussonic(token, "s1", "update_session")))[0] == 200

        # s1 stops; after its lease, the slot is free everywhere.
        clock.advance(31)
        await one.exchange()
        await two.exchange()
        assert one.sessions.held(world.alice, clock.seconds()) == 0
        assert (await two.send("fast", *flussonic(token, "s2")))[0] == 200
        await two.exchange()
        await one.exchange()
        assert (await one.send("fast", *flussonic(token, "s3")))[0] == 403
    finally:
        await one.stop()
        await two.stop()


@pytest_twisted.ensureDeferred
async def test_a_burst_between_exchanges_is_cut_back_to_the_limit(db, world, entitlements,
                                                                  metrics):
    """The README's bound: each instance admits up to the limit; the next exchange ranks."""
    await set_limit(db, entitlements, world.alice, 1)
    clock = Clock()
    clock.advance(NOW)
    one = Daemon(db, entitlements, metrics, clock=clock)
    two = Daemon(db, entitlements, metrics, clock=clock)
    try:
        token = one.token(world.alice, world.ch1)
        assert (await one.send("fast", *flussonic(token, "early")))[0] == 200
        clock.advance(0.5)
        # Same exchange interval, another instance: it does not know yet.
        assert (await two.send("fast", *flussonic(token, "late")))[0] == 200
        for d in (one, two, one):
            await d.exchange()
        # Both agree "early" (first seen) holds the slot; "late" is refused at its
        # next check, wherever it arrives, and its lease is released.
        assert (await two.send("http", *flussonic(token, "late", "update_session")))[0] == 403
        assert (await one.send("fast", *flussonic(token, "late", "update_session")))[0] == 403
        assert (await one.send("http", *flussonic(token, "early", "update_session")))[0] == 200
        await two.exchange()
        rows = await db.fetchall("SELECT session FROM session_leases WHERE account_id = %s",
                                 (world.alice,))
        assert [r[0] for r in rows] == ["f:early"]
    finally:
        await one.stop()
        await two.stop()


@pytest_twisted.ensureDeferred
async def test_the_exchange_service_runs_every_second_and_survives_a_failure(
        db, make_db, world, pg_dsn):
    clock = Clock()
    clock.advance(NOW)
    sessions = SessionLeases(lease=30)
    broken = await make_db(size=1)
    service = LeaseExchange(sessions, broken, clock)
    service.startService()
    try:
        assert sessions.admit(world.alice, 1, "t:x", clock.seconds())
        clock.advance(0.9)
        assert service.last is None  # not before its interval
        broken.close()  # the database is unreachable: the run fails, is logged, retried
        clock.advance(0.1)
        await within(service.last, 5)
        assert service.failing and sessions.exchanges == 0
        service.db = db
        clock.advance(1)
        await within(service.last, 5)
        assert not service.failing and sessions.exchanges == 1
        rows = await db.fetchall("SELECT account_id, session FROM session_leases")
        assert rows == [(world.alice, "t:x")]  # kept across the failed run, then written
    finally:
        await service.stopService()


# -- when_unavailable -------------------------------------------------------------------------
class Unloaded:
    snapshot = None


@pytest.mark.parametrize("listener", LISTENERS)
@pytest_twisted.ensureDeferred
async def test_when_unavailable_allow_lets_verified_tokens_through(db, world, metrics, listener):
    d = Daemon(db, Unloaded(), metrics, when_unavailable="allow")
    try:
        token = d.token(world.bob, world.ch2)  # entitlement unknown yet: allowed
        status, headers = await d.send(listener, *flussonic(token, "s1", name="ch2"))
        assert (status, headers) == (200, {"X-UserId": str(world.bob), "X-AuthDuration": "10"})
        # Never a bad token: forged, expired, or from another address.
        assert (await d.send(listener, *flussonic("A" * 74, "s2")))[0] == 403
        expired = d.codec.mint(world.bob, world.ch2, NOW - 1, ip=IP)
        assert (await d.send(listener, *flussonic(expired, "s3", name="ch2")))[0] == 403
        stolen = d.codec.mint(world.bob, world.ch2, NOW + 60, ip="198.51.100.7")
        assert (await d.send(listener, *astra(stolen, "9")))[0] == 403
    finally:
        await d.stop()
    if listener == "fast":
        assert {r: n for _, r, n in d.tallies.take()} == {
            "entitlement_unknown": 1, "malformed": 1, "expired": 1, "ip_mismatch": 1}


@pytest.mark.parametrize("listener", LISTENERS)
@pytest_twisted.ensureDeferred
async def test_when_unavailable_deny_refuses_every_check(db, world, metrics, listener):
    d = Daemon(db, Unloaded(), metrics, when_unavailable="deny")
    try:
        token = d.token(world.alice, world.ch1)
        for request in (flussonic(token, "s1"), astra(token, "1"), nginx(token)):
            assert await d.send(listener, *request) == (403, {"X-AuthDuration": "0"})
    finally:
        await d.stop()


# -- limits as the snapshot computes them, set with smartyd-admin --------------------------------
@pytest.fixture
def admin(tmp_path, pg_dsn):
    cfg = tmp_path / "smartyd.toml"
    cfg.write_text(f'[database]\ndsn = "{pg_dsn}"\n[log]\nfile = "{tmp_path}/smartyd.jsonl"\n')

    def run(*args):
        proc = subprocess.run(
            [sys.executable, "-m", "smartyd.admin", "--config", str(cfg), *args],
            capture_output=True, text=True, timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    return run


@pytest_twisted.ensureDeferred
async def test_the_account_limit_is_its_own_else_the_largest_tariffs(db, world, entitlements,
                                                                    admin):
    ch = admin("channel", "create", "--name", "ch3", "--url-mask", "http://s/ch3?t=$token",
               "--streamer-id", "a003")
    assert ch["streamer_id"] == "a003"
    # Free tariffs: with the built-in billing a priced tariff on an empty
    # balance starts suspended, and a suspended tariff entitles (and limits) nothing.
    two = admin("tariff", "create", "--name", "two", "--price", "0", "--channel",
                str(ch["id"]), "--sessions", "2")
    five = admin("tariff", "create", "--name", "five", "--price", "0", "--sessions", "5")
    assert (two["sessions"], five["sessions"]) == (2, 5)
    limits = lambda: entitlements.snapshot.limits  # noqa: E731

    async def reloaded(*args):
        admin(*args)
        await within(entitlements.reload(), 5)

    await reloaded("tariff", "assign", str(world.bob), str(two["id"]))
    assert limits().get(world.bob) == 2
    assert entitlements.snapshot.streamer_ids["a003"] == ch["id"]
    await reloaded("tariff", "assign", str(world.bob), str(five["id"]))
    assert limits().get(world.bob) == 5  # the largest among its tariffs
    await reloaded("account", "limit", str(world.bob), "--sessions", "1")
    assert limits().get(world.bob) == 1  # its own wins
    await reloaded("account", "limit", str(world.bob), "--sessions", "0")
    assert limits().get(world.bob) == 5  # cleared: the tariffs decide again
    # alice's "basic" tariff has no --sessions: no limit, whatever else she has.
    await reloaded("tariff", "assign", str(world.alice), str(two["id"]))
    assert world.alice not in limits()
    assert entitlements.snapshot.logins[world.alice] == "alice"
