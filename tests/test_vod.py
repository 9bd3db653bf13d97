"""
Online cinemas and the Irdeto CAS (issue 15): the catalog sync, SVOD through
the durable partner outbox (assign / remove / debt / payment, partner outage,
a crash between write and send), the SSO token, the config sections.  Real
PostgreSQL; partners are the in-process fakes in tests/fakes/; time is a
``task.Clock``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import attrs
import pytest
import pytest_twisted
from lxml import etree
from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH
from twisted.internet.task import Clock

from conftest import make_config
from testapp import build as build_app
from fakes import in_memory_client
from fakes.irdeto import FakeIrdeto
from fakes.megogo import FakeMegogo
from fakes.tvzavr import FakeTvzavr
from smartyd import catalog, ledger, payments
from smartyd.admin import vod as vod_admin
from smartyd.billing import engine, payment_hooks
from smartyd.config import ConfigError
from smartyd.metrics import Metrics
from smartyd.partners import PartnerHTTP, PartnerProtocolError
from smartyd.vod import (CheckAccounts, Reconcile, catalog_sync, feeds, make_vod, megogo, outbox,
                         tvod)

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)

MEGOGO = {"enabled": True, "xml_url": "http://megogo.test/all_mgg.xml", "partner_id": 7,
          "salt": "pepper-salt", "svod_service_id": 555, "tariff_id": 0,
          "catalog_tariff_id": 0, "billing_url": "http://megogo.test", "user_prefix": "isp-"}


def feed(*objects: str) -> bytes:
    return ("<?xml version='1.0' encoding='utf-8'?>\n<objects>\n" + "\n".join(objects)
            + "\n</objects>").encode("utf-8")


def obj(i: int, title: str, genres: str = "drama", story: str = "A story.", pad: str = "") -> str:
    return (f'<object id="{i}" title="{title}" title_en="T{i}" categories="films"'
            f' genres="{genres}" vod="svod">{pad}<info year="2014" country="US"/>{pad}'
            f'<poster url="https://img.test/{i}.jpg"/>{pad}<duration_sec>7200</duration_sec>'
            f"<story>{story}</story><directors><person name='D {i}'/></directors></object>")


class World:
    """Billing + MEGOGO/tvzavr/Irdeto fakes + the vod feature built by make_vod."""

    def __init__(self, db, tariffs: dict, **sections):
        self.db = db
        self.clock = Clock()
        self.clock.advance(T0.timestamp())
        self.metrics = Metrics()
        self.megogo = FakeMegogo(partner_id=7)
        self.tvzavr = FakeTvzavr("plf1", "tv-secret-123456")
        self.irdeto = FakeIrdeto()
        self.tariffs = tariffs
        cfg = make_config(**sections)
        self.cfg = cfg
        router = _Hosts({b"megogo.test": self.megogo.resource(),
                         b"tvzavr.test": self.tvzavr.resource(),
                         b"irdeto.test": self.irdeto.resource()})
        self.client = in_memory_client(router)
        feature = make_vod(cfg, db=db, client=self.client, clock=self.clock,
                           metrics=self.metrics)
        self.vod = feature.handle
        self.services = feature.services

    async def calls(self, state=None):
        return await self.db.run(outbox.list_calls, state)

    def app(self):
        """The daemon's whole assembly on this world (what smartyd-admin commands run on)."""
        return build_app(self.cfg, self.clock, self.db, self.metrics,
                         http_client=self.client).app


class _Hosts:
    """Route a request by its Host header to one fake (one StubTreq for all partners)."""

    isLeaf = True

    def __init__(self, by_host):
        self.by_host = by_host

    def render(self, request):
        host = request.getHeader(b"host") or b""
        if isinstance(host, str):
            host = host.encode()
        return self.by_host[host.split(b":")[0]].render(request)

    def getChildWithDefault(self, name, request):
        return self


async def tariff(db, name, price="0.00") -> int:
    t = await db.run(catalog.create_tariff, name, price)
    return t["id"]


async def customer_with_account(db, login: str, money: str = "0") -> tuple[int, int]:
    account = await db.run(ledger.create_account, login)
    if money != "0":
        await db.run(ledger.credit, account.customer_id, money, "payment", "seed",
                     f"seed:{login}")
    return account.customer_id, account.id


# -- catalog sync ---------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_sync_adds_changes_hides_and_identical_feed_writes_nothing(db):
    cat = await tariff(db, "megogo-catalog")
    w = World(db, {}, megogo={**MEGOGO, "catalog_tariff_id": cat, "tariff_id": cat})
    sync = w.vod.syncs["megogo"]
    w.megogo.feed = feed(obj(1, "One"), obj(2, "Two", "comedy, drama"), obj(3, "Three"))
    r = await sync.run()
    assert r.to_json() | {"seconds": 0} == {"titles": 3, "added": 3, "updated": 0, "hidden": 0,
                                             "seconds": 0}
    one = await db.run(catalog_sync.get_title, "megogo", "1")
    assert one["name"] == "One" and one["hidden"] is False and one["tariff_id"] == cat
    assert one["poster_url"] == "https://img.test/1.jpg" and one["year"] == 2014

    # Same content, other whitespace/chunking: a parsed-content digest sees no change,
    # and nothing is written (no row's xmin moves).
    before = await db.run(lambda tx: tx.fetchall(
        "SELECT external_id, xmin::text FROM vod_titles ORDER BY 1"))
    w.megogo.feed = feed(obj(1, "One", pad="\n   "), obj(2, "Two", "comedy, drama", pad="\t"),
                         obj(3, "Three"))
    r = await sync.run()
    assert (r.titles, r.added, r.updated, r.hidden) == (3, 0, 0, 0)
    after = await db.run(lambda tx: tx.fetchall(
        "SELECT external_id, xmin::text FROM vod_titles ORDER BY 1"))
    assert after == before

    # Title 2 changes, title 3 vanishes (hidden, not deleted), title 4 arrives.
    w.megogo.feed = feed(obj(1, "One"), obj(2, "Two", "comedy, drama", story="New story."),
                         obj(4, "Four"))
    r = await sync.run()
    assert (r.titles, r.added, r.updated, r.hidden) == (3, 1, 1, 1)
    three = await db.run(catalog_sync.get_title, "megogo", "3")
    assert three is not None and three["hidden"] is True
    # Back in the feed: visible again.
    w.megogo.feed = feed(obj(1, "One"), obj(2, "Two", "comedy, drama", story="New story."),
                         obj(3, "Three"), obj(4, "Four"))
    r = await sync.run()
    assert (r.added, r.updated, r.hidden) == (0, 1, 0)
    assert (await db.run(catalog_sync.get_title, "megogo", "3"))["hidden"] is False
    assert w.metrics.vod_sync_titles.labels("megogo", "titles")._value.get() == 4


def test_element_digest_is_of_parsed_content_not_of_bytes():
    def digest(xml: str) -> str:
        return feeds.element_digest(etree.fromstring(xml))

    base = digest('<object id="1" title="A"><info year="2014"/><story>S t</story></object>')
    # Indentation, attribute order and quoting, empty-element form: the same element.
    assert digest("<object title='A' id='1'>\n  <info year='2014'></info>\n\t"
                  "<story>S t</story>\n</object>") == base
    # Content differs: the digest does.
    assert digest('<object id="1" title="A"><info year="2015"/><story>S t</story></object>') \
        != base
    assert digest('<object id="1" title="A "><info year="2014"/><story>S t</story></object>') \
        != base
    assert digest('<object id="1" title="A"><info year="2014"/><story>S  t</story></object>') \
        != base


@pytest_twisted.ensureDeferred
async def test_unchanged_titles_are_not_converted_and_old_rows_get_their_element_digest(db):
    cat = await tariff(db, "megogo-catalog")
    w = World(db, {}, megogo={**MEGOGO, "catalog_tariff_id": cat, "tariff_id": cat})
    sync = w.vod.syncs["megogo"]
    skipped = w.metrics.vod_sync_titles.labels("megogo", "unchanged")
    w.megogo.feed = feed(obj(1, "One"), obj(2, "Two"), obj(3, "Three"))
    await sync.run()
    assert skipped._value.get() == 0
    # Unchanged elements (whitespace between elements aside) are skipped unconverted.
    w.megogo.feed = feed(obj(1, "One", pad="\n  "), obj(2, "Two"), obj(3, "Three"))
    r = await sync.run()
    assert (r.titles, r.added, r.updated, r.hidden, skipped._value.get()) == (3, 0, 0, 0, 3)
    # One title changes: it alone is converted and written.
    w.megogo.feed = feed(obj(1, "One"), obj(2, "Two", story="Other."), obj(3, "Three"))
    r = await sync.run()
    assert (r.titles, r.updated, skipped._value.get()) == (3, 1, 2)

    # Rows from before migration 0014 have no element digest: converted once,
    # compared by the parsed title's digest (not counted as updated, content
    # untouched), their element digest stored; the next sync skips them.
    await db.run(lambda tx: tx.execute("UPDATE vod_titles SET element_digest = NULL"))
    before = await db.run(lambda tx: tx.fetchall(
        "SELECT external_id, digest, updated FROM vod_titles ORDER BY 1"))
    r = await sync.run()
    assert (r.titles, r.added, r.updated, skipped._value.get()) == (3, 0, 0, 0)
    assert await db.run(lambda tx: tx.fetchall(
        "SELECT external_id, digest, updated FROM vod_titles ORDER BY 1")) == before
    assert await db.run(lambda tx: tx.fetchval(
        "SELECT count(*) FROM vod_titles WHERE element_digest IS NULL")) == 0
    r = await sync.run()
    assert (r.updated, skipped._value.get()) == (0, 3)

    # Another catalog tariff: no title is unchanged any more, every one is relinked.
    other = await tariff(db, "megogo-catalog-2")
    r = await attrs.evolve(sync, catalog_tariff_id=other).run()
    assert (r.updated, skipped._value.get()) == (3, 0)
    assert (await db.run(catalog_sync.get_title, "megogo", "2"))["tariff_id"] == other


@pytest_twisted.ensureDeferred
async def test_genre_map_is_applied_to_titles(db):
    cat = await tariff(db, "cat")
    w = World(db, {}, megogo={**MEGOGO, "tariff_id": cat, "catalog_tariff_id": cat})
    w.megogo.feed = feed(obj(1, "One", "drama,thriller"), obj(2, "Two", "комедия"))
    await w.vod.syncs["megogo"].sync_bytes(w.megogo.feed)
    genres = await db.run(catalog_sync.genres, "megogo")
    assert genres == [{"partner_genre": "drama", "genre": None},
                      {"partner_genre": "thriller", "genre": None},
                      {"partner_genre": "комедия", "genre": None}]
    await db.run(catalog_sync.map_genre, "megogo", "drama", "Drama")
    await db.run(catalog_sync.map_genre, "megogo", "thriller", "Drama")
    await db.run(catalog_sync.map_genre, "megogo", "комедия", "Comedy")
    assert (await db.run(catalog_sync.get_title, "megogo", "1"))["genres"] == ["Drama"]
    assert (await db.run(catalog_sync.get_title, "megogo", "2"))["genres"] == ["Comedy"]


@pytest_twisted.ensureDeferred
async def test_empty_feed_hides_nothing(db):
    cat = await tariff(db, "cat")
    w = World(db, {}, megogo={**MEGOGO, "tariff_id": cat, "catalog_tariff_id": cat})
    await w.vod.syncs["megogo"].sync_bytes(feed(obj(1, "One")))
    with pytest.raises(catalog_sync.VodError):
        await w.vod.syncs["megogo"].sync_bytes(feed())
    assert (await db.run(catalog_sync.get_title, "megogo", "1"))["hidden"] is False


@pytest_twisted.ensureDeferred
async def test_tvzavr_sync_same_code_path_signed_fetch(db):
    cat = await tariff(db, "cat")
    w = World(db, {}, tvzavr={"enabled": True, "api_url": "http://tvzavr.test", "plf": "plf1",
                              "secret": "tv-secret-123456", "tvzavr_tariff_id": 3,
                              "subscription_tariff_id": cat, "catalog_tariff_id": cat})
    w.tvzavr.feed = (b"<catalog><clip id='77' title='Clip' genres='drama;comedy' svod='1'"
                     b" duration='5400'><description>D</description></clip></catalog>")
    r = await w.vod.syncs["tvzavr"].run()
    assert (r.titles, r.added) == (1, 1)
    t = await db.run(catalog_sync.get_title, "tvzavr", "77")
    assert t["duration_sec"] == 5400 and t["svod"] is True


@pytest_twisted.ensureDeferred
async def test_sync_parses_the_body_as_it_arrives_and_writes_before_its_end(db):
    cat = await tariff(db, "cat")
    w = World(db, {}, megogo={**MEGOGO, "tariff_id": cat, "catalog_tariff_id": cat})
    pieces = [b"<?xml version='1.0' encoding='utf-8'?>\n<objects>"]
    pieces += [obj(i, f"T{i}").encode() for i in range(1, 2501)] + [b"</objects>"]
    written_midway = []

    async def fetch(on_chunk):
        for n, piece in enumerate(pieces):
            pending = on_chunk(piece)
            if pending is not None:
                await pending
            if n == 2000:  # 500 titles not even sent yet
                written_midway.append(await db.run(lambda tx: tx.fetchval(
                    "SELECT count(*) FROM vod_titles")))

    r = await attrs.evolve(w.vod.syncs["megogo"], fetch=fetch).run()
    assert (r.titles, r.added) == (2500, 2500)
    assert written_midway[0] >= 1000


@pytest_twisted.ensureDeferred
async def test_malformed_feed_is_refused_and_hides_nothing(db):
    cat = await tariff(db, "cat")
    w = World(db, {}, megogo={**MEGOGO, "tariff_id": cat, "catalog_tariff_id": cat})
    await w.vod.syncs["megogo"].sync_bytes(feed(obj(1, "One")))
    with pytest.raises(catalog_sync.VodError, match="not well-formed"):
        await w.vod.syncs["megogo"].sync_bytes(b"<objects><object id='2' title='x'></objects>")
    assert (await db.run(catalog_sync.get_title, "megogo", "1"))["hidden"] is False


class _Transport:
    def __init__(self):
        self.events = []

    def pauseProducing(self):
        self.events.append("pause")

    def resumeProducing(self):
        self.events.append("resume")

    def stopProducing(self):
        self.events.append("stop")


class _Response:
    code = 200
    length = UNKNOWN_LENGTH
    headers = Headers()

    def __init__(self):
        self.transport = _Transport()
        self.protocol = None

    def deliverBody(self, protocol):
        self.protocol = protocol
        protocol.makeConnection(self.transport)


class _Client:
    def __init__(self, response):
        self.response = response

    def request(self, method, url, **kw):
        return defer.succeed(self.response)


@pytest_twisted.ensureDeferred
async def test_partner_stream_pauses_the_body_while_the_consumer_works():
    response = _Response()
    http = PartnerHTTP("feed", _Client(response), Clock(), max_body=100)
    got, gate = [], defer.Deferred()

    def on_chunk(data):
        got.append(data)
        return gate if data == b"one" else None

    done = defer.Deferred.fromCoroutine(http.stream("GET", "http://x/feed", on_chunk))
    response.protocol.dataReceived(b"one")
    response.protocol.dataReceived(b"two")  # already read: queued, not handed over
    assert got == [b"one"] and response.transport.events == ["pause"]
    response.protocol.connectionLost(Failure(ResponseDone()))
    assert not done.called  # the consumer is still busy with "one"
    gate.callback(None)
    assert got == [b"one", b"two"]
    await done

    # A consumer's error ends the exchange; so does a body over max_body.
    for chunk, error in ((b"bad", ValueError), (b"x" * 101, PartnerProtocolError)):
        response = _Response()
        http = PartnerHTTP("feed", _Client(response), Clock(), max_body=100)

        def on_chunk(data):
            if data == b"bad":
                raise ValueError("consumer broke")

        done = defer.Deferred.fromCoroutine(http.stream("GET", "http://x/feed", on_chunk))
        response.protocol.dataReceived(chunk)
        assert response.transport.events == ["stop"]
        with pytest.raises(error):
            await done


# -- SVOD through the outbox ------------------------------------------------------------------
async def megogo_world(db, **extra):
    svod = await tariff(db, "megogo-svod", "100.00")
    mixed = await tariff(db, "tv+megogo", "0.00")
    w = World(db, {}, megogo={**MEGOGO, "tariff_id": svod, "additional_tariffs_ids": [mixed],
                              "catalog_tariff_id": svod, **extra})
    return w, svod, mixed


@pytest_twisted.ensureDeferred
async def test_assign_subscribes_remove_last_unsubscribes(db):
    w, svod, mixed = await megogo_world(db)
    cid, aid = await customer_with_account(db, "alice", "100.00")
    billing = make_config().billing
    await db.run(engine.assign, billing, aid, svod, at=T0)
    await w.vod.outbox.run()
    uid = f"isp-{cid}"
    assert w.megogo.calls == [("user/create", uid, None),
                              ("subscription/subscribe", uid, 555)]
    # A second SVOD-carrying tariff changes nothing at MEGOGO.
    await db.run(engine.assign, billing, None, mixed, customer_id=cid, at=T0)
    await w.vod.outbox.run()
    assert len(w.megogo.calls) == 2
    await db.run(engine.remove, billing, aid, svod, at=T0)
    await w.vod.outbox.run()
    assert len(w.megogo.calls) == 2  # the mixed tariff still carries it
    await db.run(engine.remove, billing, None, mixed, customer_id=cid, at=T0)
    await w.vod.outbox.run()
    assert w.megogo.calls[-1] == ("subscription/unsubscribe", uid, 555)
    assert w.megogo.users[uid] == set()
    assert await w.calls() == []  # nothing open


@pytest_twisted.ensureDeferred
async def test_debt_suspends_and_payment_resumes_at_megogo(db):
    w, svod, _ = await megogo_world(db)
    cid, aid = await customer_with_account(db, "bob", "100.00")
    billing = make_config().billing
    await db.run(engine.assign, billing, aid, svod, at=T0)
    await w.vod.outbox.run()
    uid = f"isp-{cid}"
    assert w.megogo.users[uid] == {555}
    # The next period finds no money: suspended for debt, unsubscribed there.
    await engine.run(db, billing, T0 + timedelta(days=31))
    await w.vod.outbox.run()
    assert w.megogo.users[uid] == set()
    # A payment resumes the subscription in its own transaction: subscribed again.
    await db.run(payments.accept, "osmp", "pay-1", aid, "100.00",
                 hooks=payment_hooks(billing))
    await w.vod.outbox.run()
    assert w.megogo.users[uid] == {555}
    assert [c[0] for c in w.megogo.calls] == [
        "user/create", "subscription/subscribe", "subscription/unsubscribe",
        "subscription/subscribe"]


@pytest_twisted.ensureDeferred
async def test_outage_loses_nothing_and_keeps_order(db):
    w, svod, _ = await megogo_world(db)
    cid, aid = await customer_with_account(db, "carol", "0")
    billing = make_config(billing={"mode": "full"}).billing  # no charging: plain assign/remove
    w.megogo.down = True
    await db.run(engine.assign, billing, aid, svod, at=T0)
    await w.vod.outbox.run()
    await db.run(engine.remove, billing, aid, svod, at=T0)
    await w.vod.outbox.run()
    open_calls = await w.calls()
    assert [c.op for c in open_calls] == ["create", "subscribe", "unsubscribe"]
    assert open_calls[0].state == "unknown" and open_calls[1].state == "queued"
    assert w.metrics.partner_outbox.labels("megogo", "unknown")._value.get() == 1
    w.megogo.down = False
    w.clock.advance(3600)
    await w.vod.outbox.run()
    uid = f"isp-{cid}"
    assert [c[0] for c in w.megogo.calls] == ["user/create", "subscription/subscribe",
                                              "subscription/unsubscribe"]
    assert w.megogo.users[uid] == set()
    assert await w.calls() == []


@pytest_twisted.ensureDeferred
async def test_crash_after_claim_resends_only_when_not_in_effect(db):
    w, svod, _ = await megogo_world(db)
    cid, aid = await customer_with_account(db, "dave", "0")
    billing = make_config(billing={"mode": "full"}).billing
    await db.run(engine.assign, billing, aid, svod, at=T0)
    await w.vod.outbox.plan_all()
    # The worker claims the calls and dies before any request leaves.
    now = w.clock.seconds()
    claimed = await db.run(outbox.claim, now, now + 120, 10)
    assert [c.op for c in claimed] == ["create"]
    await w.vod.outbox.send_due()
    assert w.megogo.calls == []  # under lease: nobody else sends it
    w.clock.advance(121)
    await w.vod.outbox.run()
    uid = f"isp-{cid}"
    # Looked up first (user unknown => not in effect), then sent once.
    assert w.megogo.calls == [("user/create", uid, None), ("subscription/subscribe", uid, 555)]


@pytest_twisted.ensureDeferred
async def test_call_of_unknown_outcome_that_took_effect_is_not_resent(db):
    w, svod, _ = await megogo_world(db)
    cid, aid = await customer_with_account(db, "erin", "0")
    billing = make_config(billing={"mode": "full"}).billing
    w.megogo.apply_then_fail = 1  # the subscribe takes effect, the answer is a 502
    await db.run(engine.assign, billing, aid, svod, at=T0)
    await w.vod.outbox.run()
    [call] = await w.calls()
    assert (call.op, call.state) == ("subscribe", "unknown")
    w.clock.advance(3600)
    await w.vod.outbox.run()
    uid = f"isp-{cid}"
    assert w.megogo.calls.count(("subscription/subscribe", uid, 555)) == 1
    assert w.megogo.users[uid] == {555}
    assert await w.calls() == []


@pytest_twisted.ensureDeferred
async def test_odd_subscription_entries_never_stop_the_outbox(db):
    """
    user/subscriptions with entries of a null, a non-numeric or no serviceId
    (and ours as a string): the check still finds ours in effect, nothing is
    resent, and the outbox goes on (an int() there used to raise out of it).
    """
    w, svod, _ = await megogo_world(db)
    cid, aid = await customer_with_account(db, "gina", "0")
    billing = make_config(billing={"mode": "full"}).billing
    w.megogo.apply_then_fail = 1
    await db.run(engine.assign, billing, aid, svod, at=T0)
    await w.vod.outbox.run()
    [call] = await w.calls()
    assert (call.op, call.state) == ("subscribe", "unknown")
    w.megogo.odd_subscriptions = [{"serviceId": None}, {"serviceId": "premium"},
                                  {"serviceId": True}, {"name": "no id"}, {"serviceId": "777"}]
    w.clock.advance(3600)
    await w.vod.outbox.run()
    uid = f"isp-{cid}"
    assert w.megogo.calls.count(("subscription/subscribe", uid, 555)) == 1
    assert await w.calls() == []
    assert await w.vod.partners["megogo"].client.subscriptions(uid) == {555, 777}


@pytest_twisted.ensureDeferred
async def test_refused_call_fails_holds_later_calls_and_retry_requeues(db):
    w, svod, _ = await megogo_world(db, partner_id=8)  # the fake knows partner 7 only
    cid, aid = await customer_with_account(db, "fred", "0")
    billing = make_config(billing={"mode": "full"}).billing
    await db.run(engine.assign, billing, aid, svod, at=T0)
    await w.vod.outbox.run()
    calls = await w.calls()
    assert [(c.op, c.state) for c in calls] == [("create", "failed"), ("subscribe", "queued")]
    w.megogo.partner_id = "8"
    assert (await db.run(outbox.retry, calls[0].id)).state == "queued"
    await w.vod.outbox.run()
    assert await w.calls() == []
    assert w.megogo.users[f"isp-{cid}"] == {555}


@pytest_twisted.ensureDeferred
async def test_reconcile_logs_or_fixes(db):
    w, svod, _ = await megogo_world(db, reconcile="fix")
    cid, aid = await customer_with_account(db, "gina", "0")
    billing = make_config(billing={"mode": "full"}).billing
    await db.run(engine.assign, billing, aid, svod, at=T0)
    await w.vod.outbox.run()
    uid = f"isp-{cid}"
    w.megogo.users[uid].clear()  # someone unsubscribed at MEGOGO behind our back
    assert await Reconcile(db, w.vod.partners["megogo"], fix=True).run() == 1
    await w.vod.outbox.run()
    assert w.megogo.users[uid] == {555}


# -- tvzavr, Irdeto ---------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_tvzavr_and_irdeto_follow_tariffs(db):
    sub = await tariff(db, "tvzavr-sub")
    cas = await tariff(db, "cas-pack")
    w = World(db, {}, tvzavr={"enabled": True, "api_url": "http://tvzavr.test", "plf": "plf1",
                              "secret": "tv-secret-123456", "tvzavr_tariff_id": 3,
                              "subscription_tariff_id": sub, "catalog_tariff_id": sub},
              irdeto={"enabled": True, "host": "http://irdeto.test",
                      "products": [{"tariff_id": cas, "product_ids": [101, 102]}]})
    cid, aid = await customer_with_account(db, "hank", "0")
    await db.run(lambda tx: tx.execute(
        "INSERT INTO devices (uid, account_id) VALUES ('card-1', %s)", (aid,)))
    billing = make_config(billing={"mode": "full"}).billing
    await db.run(engine.assign, billing, aid, sub, at=T0)
    await db.run(engine.assign, billing, None, cas, customer_id=cid, at=T0)
    await w.vod.outbox.run()
    assert w.tvzavr.subs[str(cid)] == {3}
    assert w.irdeto.entitlements["card-1"] == {101, 102}
    # check_accounts: a renewal for the running subscription.
    assert await CheckAccounts(db).run() == 1
    await w.vod.outbox.run()
    assert ("renew", str(cid), 3) in w.tvzavr.calls
    await db.run(engine.remove, billing, None, cas, customer_id=cid, at=T0)
    await db.run(engine.remove, billing, aid, sub, at=T0)
    await w.vod.outbox.run()
    assert w.irdeto.entitlements["card-1"] == set()
    assert w.tvzavr.subs[str(cid)] == set()
    # A list with odd entries (null, non-numeric, missing tariff) reads what it can.
    w.tvzavr.subs[str(cid)] = {3}
    w.tvzavr.odd_subscriptions = [{"tariff": None}, {"tariff": "gold"}, {"expires": 0}]
    assert await w.vod.partners["tvzavr"].client.subscriptions(str(cid)) == {3}


# -- TVOD -----------------------------------------------------------------------------------
def tvod_obj(i: int, title: str, price: str = "30.00", vod: str = "tvod") -> str:
    return (f'<object id="{i}" title="{title}" genres="drama" vod="{vod}" price="{price}">'
            f"<story>S</story></object>")


async def tvod_world(db, money: str):
    cat = await tariff(db, "megogo-cat")
    w = World(db, {}, megogo={**MEGOGO, "tariff_id": cat, "catalog_tariff_id": cat})
    await w.vod.syncs["megogo"].sync_bytes(feed(tvod_obj(9, "Nine"),
                                                tvod_obj(8, "Eight", vod="svod")))
    cid, aid = await customer_with_account(db, "tina", money)
    return w, cid, aid


async def money_state(db, cid) -> tuple:
    """Everything a purchase may touch: balance, ledger sum and rows, purchases, outbox."""
    balance = (await db.run(ledger.get_customer, cid)).balance
    total = await db.run(ledger.ledger_sum, cid)
    rows = len((await db.run(ledger.statement, cid)).rows)
    bought = await db.run(lambda tx: tx.fetchval("SELECT count(*) FROM vod_purchases"))
    calls = await db.run(lambda tx: tx.fetchval("SELECT count(*) FROM partner_calls"))
    return balance, total, rows, bought, calls


@pytest_twisted.ensureDeferred
async def test_tvod_buy_debits_once_through_the_ledger_and_grants_at_megogo(db):
    w, cid, aid = await tvod_world(db, "100.00")
    p, created = await w.vod.tvod.buy("megogo", aid, "9", "order-1")
    assert created and p.amount == Decimal("30.00") and p.to_json()["access"] is True
    assert await db.run(tvod.has_access, aid, "megogo", "9")
    # A repeat (the same account + title + purchase id) changes nothing.
    again, created = await w.vod.tvod.buy("megogo", aid, "9", "order-1")
    assert not created and again.id == p.id
    balance, total, rows, bought, calls = await money_state(db, cid)
    assert (balance, total, rows, bought) == (Decimal("70.00"), Decimal("70.00"), 2, 1)
    [entry] = [e for e in (await db.run(ledger.statement, cid)).rows if e.kind == "tvod"]
    assert entry.amount == Decimal("-30.00") and entry.account_id == aid
    assert entry.idem_key.endswith(":order-1")
    # The grant goes out through the outbox (user/create first for a new user).
    await w.vod.outbox.run()
    uid = f"isp-{cid}"
    assert w.megogo.calls == [("user/create", uid, None), ("tvod/grant", uid, "9")]
    assert w.megogo.titles[uid] == {("9", "order-1")}
    # Another purchase id is another purchase.
    _, created = await w.vod.tvod.buy("megogo", aid, "9", "order-2")
    assert created and (await money_state(db, cid))[0] == Decimal("40.00")
    await w.vod.outbox.run()
    assert w.megogo.calls[-1] == ("tvod/grant", uid, "9")  # no second user/create
    assert await db.run(ledger.balance_mismatches) == []


@pytest_twisted.ensureDeferred
async def test_tvod_concurrent_copies_debit_once_and_money_for_one_buys_one(db):
    w, cid, aid = await tvod_world(db, "50.00")
    results = await defer.gatherResults([
        defer.Deferred.fromCoroutine(w.vod.tvod.buy("megogo", aid, "9", "same"))
        for _ in range(4)])
    assert sorted(created for _, created in results) == [False, False, False, True]
    assert len({p.id for p, _ in results}) == 1
    assert (await money_state(db, cid))[:4] == (Decimal("20.00"), Decimal("20.00"), 2, 1)
    # 20.00 left: of two concurrent 30.00 purchases neither fits; top up to 40.00, one fits.
    await db.run(ledger.credit, cid, "20.00", "payment", "top-up", "top-up:1")
    outcomes = await defer.DeferredList([
        defer.Deferred.fromCoroutine(w.vod.tvod.buy("megogo", aid, "9", f"race-{i}"))
        for i in range(2)], consumeErrors=True)
    ok = [r for good, r in outcomes if good]
    refused = [r for good, r in outcomes if not good]
    assert len(ok) == 1 and len(refused) == 1 and refused[0].check(tvod.InsufficientFunds)
    assert (await money_state(db, cid))[:4] == (Decimal("10.00"), Decimal("10.00"), 4, 2)
    assert await db.run(ledger.balance_mismatches) == []


@pytest_twisted.ensureDeferred
async def test_tvod_refusals_change_nothing(db):
    w, cid, aid = await tvod_world(db, "10.00")
    before = await money_state(db, cid)
    with pytest.raises(tvod.InsufficientFunds):
        await w.vod.tvod.buy("megogo", aid, "9", "order-1")
    with pytest.raises(catalog_sync.VodError, match="not sold individually"):
        await w.vod.tvod.buy("megogo", aid, "8", "order-1")  # SVOD only
    with pytest.raises(catalog_sync.VodError, match="no megogo title"):
        await w.vod.tvod.buy("megogo", aid, "404", "order-1")
    with pytest.raises(catalog_sync.VodError, match="purchase id"):
        await w.vod.tvod.buy("megogo", aid, "9", "")
    with pytest.raises(catalog_sync.VodError, match="no TVOD interface"):
        await tvod.Tvod(db, {"megogo": object()}).buy("megogo", aid, "9", "order-1")
    with pytest.raises(catalog_sync.VodError, match="not enabled"):
        await tvod.Tvod(db, {}).buy("megogo", aid, "9", "order-1")
    assert await money_state(db, cid) == before
    assert not await db.run(tvod.has_access, aid, "megogo", "9")
    # A credit limit (the billing's floor) lets the balance go below zero, no further.
    p, _ = await tvod.Tvod(db, w.vod.partners, Decimal("20.00")).buy("megogo", aid, "9", "o")
    assert (await money_state(db, cid))[0] == Decimal("-20.00")


# -- /health ----------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_health_shows_a_stuck_outbox_and_stays_200(db):
    cfg = make_config(megogo={**MEGOGO, "tariff_id": 1, "catalog_tariff_id": 1},
                      irdeto={"enabled": True, "host": "http://irdeto.test"})
    clock = Clock()
    clock.advance(T0.timestamp())
    app = build_app(cfg, clock, db, http_client=in_memory_client(FakeMegogo().resource()))
    http = in_memory_client(app.root)

    async def health():
        r = await http.get("http://smartyd/health")
        return r.code, json.loads(await r.content())

    code, body = await health()
    assert code == 200 and body["outbox"] == {"irdeto": "ok", "megogo": "ok"}
    # An open call younger than an hour is not stuck; older, it is.
    await db.run(lambda tx: tx.execute(
        "INSERT INTO partner_calls (provider, user_key, customer_id, op, created)"
        " VALUES ('megogo', 'isp-1', 1, 'create', %s)", (T0 - timedelta(minutes=30),)))
    assert (await health())[1]["outbox"]["megogo"] == "ok"
    clock.advance(3600)
    code, body = await health()
    assert (code, body["status"], body["outbox"]) == (
        200, "ok", {"irdeto": "ok", "megogo": "stuck"})
    # A failed call is stuck at once.
    await db.run(lambda tx: tx.execute(
        "INSERT INTO partner_calls (provider, user_key, customer_id, op, state, created)"
        " VALUES ('irdeto', 'card', 1, 'add', 'failed', %s)", (T0 + timedelta(hours=1),)))
    assert (await health())[1]["outbox"] == {"irdeto": "stuck", "megogo": "stuck"}


# -- SSO, config --------------------------------------------------------------------------------
def test_sso_token_is_md5_of_user_partner_salt():
    cfg = make_config(megogo={**MEGOGO, "tariff_id": 1, "catalog_tariff_id": 1}).megogo
    link = megogo.sso_link(cfg, 42)
    assert link["isdn"] == "isp-42" and link["partner_key"] == "7"
    assert link["token"] == hashlib.md5(b"isp-427pepper-salt").hexdigest()
    assert "token=" + link["token"] in link["url"]


def test_sso_uses_a_string_partner_id_as_it_is():
    pid = "isp/demo ü"  # MEGOGO issues the id: any string
    cfg = make_config(megogo={**MEGOGO, "partner_id": pid, "tariff_id": 1,
                              "catalog_tariff_id": 1}).megogo
    link = megogo.sso_link(cfg, 42)
    assert link["partner_key"] == pid
    assert link["token"] == hashlib.md5(f"isp-42{pid}pepper-salt".encode()).hexdigest()
    assert "partner_key=isp%2Fdemo+%C3%BC&" in link["url"]


@pytest_twisted.ensureDeferred
async def test_partner_id_is_one_escaped_path_segment(db):
    pid = "isp/demo ü"
    w, svod, _ = await megogo_world(db, partner_id=pid)
    w.megogo.partner_id = pid
    cid, aid = await customer_with_account(db, "olga", "100.00")
    await db.run(engine.assign, make_config().billing, aid, svod, at=T0)
    await w.vod.outbox.run()
    assert await w.calls() == []
    assert w.megogo.users[f"isp-{cid}"] == {555}
    assert w.megogo.paths[:2] == ["/isp%2Fdemo%20%C3%BC/user/create",
                                  "/isp%2Fdemo%20%C3%BC/subscription/subscribe"]


@pytest.mark.parametrize("section, message", [
    ({"megogo": {"enabled": True}}, "[megogo] xml_url: required when enabled = true"),
    ({"megogo": {"partner_id": -7}}, "[megogo] partner_id: expected a string"),
    ({"megogo": {"partner_id": 7.5}}, "[megogo] partner_id: expected a string"),
    ({"megogo": {"reconcile": "maybe"}}, "[megogo] reconcile: expected one of log, fix"),
    ({"megogo": {"tariff_id": 5, "additional_tariffs_ids": [5]}},
     "[megogo] additional_tariffs_ids: lists tariff_id 5"),
    ({"tvzavr": {"enabled": True, "api_url": "http://x"}},
     "[tvzavr] plf: required when enabled = true"),
    ({"irdeto": {"products": [{"tariff_id": 1}]}}, "[irdeto] products: entry 0"),
    ({"irdeto": {"host": "ftp://x"}}, "[irdeto] host: expected an http(s) URL"),
])
def test_config_sections_validate(section, message):
    with pytest.raises(ConfigError) as e:
        make_config(**section)
    assert message in str(e.value)


@pytest.mark.parametrize("device", ["mobile", "smart_tv", "stb"])
def test_megogo_device_key_pairs_are_accepted_whole_or_refused_half(device):
    # A device class's pair goes to devices through the TV Middleware API's VideoUrl
    # (smartyd.tvmw.films): the public key as ext_apikey, the private key signs the uri.
    cfg = make_config(megogo={f"{device}_private_key": "priv", f"{device}_public_key": "pub"})
    assert cfg.megogo.device_keys(device) == ("priv", "pub")
    for half, missing in (("private", "public"), ("public", "private")):
        with pytest.raises(ConfigError) as e:
            make_config(megogo={f"{device}_{half}_key": "k"})
        assert f"[megogo] {device}_{missing}_key: a key pair" in str(e.value)


def test_megogo_tvod_collection_is_refused_not_ignored():
    # A MEGOGO collection lives in MEGOGO's own content API (api.megogo.net, the apps'):
    # smartyd reads no collection; what is sold individually is each title's
    # vod="tvod" and price in all_mgg.xml, and the grant carries only the title.
    with pytest.raises(ConfigError) as e:
        make_config(megogo={"available_tvod_collection_id": 12})
    assert "[megogo] available_tvod_collection_id: not used by smartyd" in str(e.value)
    assert "vod=" in str(e.value) and "README" in str(e.value)


def test_config_defaults_and_disabled_sections_build_nothing():
    cfg = make_config()
    assert (cfg.irdeto.host, cfg.irdeto.nationality, cfg.irdeto.region_tag) == (
        "http://127.0.0.1:80", "RUS", "MO")
    assert cfg.megogo.reconcile == "log" and not cfg.megogo.enabled
    feature = make_vod(cfg, db=None, client=None, clock=Clock(), metrics=None)
    assert feature.handle.partners == {} and feature.handle.syncs == {}


# -- admin ------------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_admin_vod_and_outbox_commands(db):
    parser = argparse.ArgumentParser()
    handlers = vod_admin.register(parser.add_subparsers(dest="command"))
    cat = await tariff(db, "cat")
    w = World(db, {}, megogo={**MEGOGO, "tariff_id": cat, "catalog_tariff_id": cat,
                              "partner_id": 8})
    await w.vod.syncs["megogo"].sync_bytes(feed(obj(1, "One", "drama")))

    async def admin(*argv):
        args = parser.parse_args(argv)
        return await handlers[args.command](db, args, w.cfg, w.clock, w.app())

    out = await admin("vod", "genre-map", "--provider", "megogo", "--partner-genre", "drama",
                      "--genre", "Драма")
    assert out["genre"] == "Драма"
    shown = await admin("vod", "show", "--provider", "megogo", "--id", "1")
    assert (shown["name"], shown["hidden"], shown["genres"]) == ("One", False, ["Драма"])
    assert (await admin("vod", "genres", "--provider", "megogo"))["genres"] == [
        {"partner_genre": "drama", "genre": "Драма"}]
    cid, aid = await customer_with_account(db, "ivan", "0")
    await db.run(engine.assign, make_config(billing={"mode": "full"}).billing, aid, cat, at=T0)
    await w.vod.outbox.run()  # the fake knows partner 7: refused
    listed = (await admin("outbox"))["calls"]
    assert [(c["op"], c["state"]) for c in listed] == [("create", "failed"),
                                                       ("subscribe", "queued")]
    assert (await admin("outbox", "retry", str(listed[0]["id"])))["state"] == "queued"
    with pytest.raises(ValueError):
        await admin("outbox", "retry", str(listed[0]["id"]))


@pytest_twisted.ensureDeferred
async def test_admin_vod_buy(db):
    parser = argparse.ArgumentParser()
    handlers = vod_admin.register(parser.add_subparsers(dest="command"))
    w, cid, aid = await tvod_world(db, "100.00")

    async def admin(*argv):
        args = parser.parse_args(argv)
        return await handlers[args.command](db, args, w.cfg, w.clock, w.app())

    argv = ("vod", "buy", "--account", str(aid), "--provider", "megogo", "--id", "9",
            "--purchase-id", "z-1")
    out = await admin(*argv)
    assert (out["created"], out["amount"], out["access"], out["title"]) == (
        True, "30.00", True, "9")
    assert (await admin(*argv))["created"] is False
    assert (await money_state(db, cid))[0] == Decimal("70.00")
    # The grant bought from the command line is queued for the daemon's outbox, which sends it.
    await w.vod.outbox.run()
    assert w.megogo.titles[f"isp-{cid}"] == {("9", "z-1")}
    for z in ("z-2", "z-3"):
        await admin(*argv[:-1], z)
    with pytest.raises(tvod.InsufficientFunds):
        await admin(*argv[:-1], "z-4")
    assert (await money_state(db, cid))[:4] == (Decimal("10.00"), Decimal("10.00"), 4, 3)
