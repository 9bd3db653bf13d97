"""
The TV Middleware API's customer and film methods (issue 23), called directly
with a L{Call} on the real database: tariffs through the built-in billing
(charged, refused without money, already subscribed, basic tariffs), the
ledger as PaymentList and CustomerInfo's period, the password change, the
synced MEGOGO catalog as the account's tariffs show it, VideoUrl's MEGOGO
fields per device class, the once-only TVOD purchase, and bad parameters
answered with the spec's codes and nothing written.  Time is a
``task.Clock``; MEGOGO is the in-process fake.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import Clock

from conftest import make_config
from fakes import in_memory_client
from fakes.megogo import FakeMegogo
from smartyd import catalog, ledger
from smartyd.billing.engine import utc
from smartyd.metrics import Metrics
from smartyd.tvmw import customer, films
from smartyd.tvmw.call import Call, Session
from smartyd.tvmw.errors import TvmwError
from smartyd.tvmw.ratelimit import LoginLimiter
from smartyd.poller import Poller
from smartyd.vod import catalog_sync, make_vod, megogo
from streams_world import MASK, PASSWORD, connect, get, within
from test_tvmw import KEY, Device as HttpDevice, Running, fast_port

T0 = datetime(2025, 3, 10, 12, 0, tzinfo=timezone.utc)
MEGOGO = {"enabled": True, "xml_url": "http://megogo.test/all_mgg.xml", "partner_id": 7,
          "salt": "pepper-salt", "svod_service_id": 555, "billing_url": "http://megogo.test",
          "user_prefix": "isp-"}
KEYS = {"mobile_private_key": "m-priv", "mobile_public_key": "m-pub",
        "smart_tv_private_key": "tv-priv", "smart_tv_public_key": "tv-pub",
        "stb_private_key": "stb-priv", "stb_public_key": "stb-pub"}


class Device:
    """One logged-in device of one account: builds the L{Call}s its methods get."""

    def __init__(self, db, cfg, account, clock, deps=None, device="android_stb"):
        self.db, self.cfg, self.clock, self.deps = db, cfg, clock, deps or {}
        self.account = account
        self.session = Session(account.id, account.customer_id, account.login, "uid-1", device,
                               "10.0.0.1")

    def call(self, **params) -> Call:
        return Call(params={k: str(v) for k, v in params.items()}, session=self.session,
                    ip="10.0.0.1", now=utc(self.clock.seconds()), reactor=self.clock,
                    db=self.db, cfg=self.cfg, metrics=Metrics(), deps=self.deps)

    async def ok(self, method, **params) -> dict:
        return await method(self.call(**params))

    async def error(self, method, **params) -> TvmwError:
        with pytest.raises(TvmwError) as e:
            await method(self.call(**params))
        return e.value


def clock_at(moment: datetime) -> Clock:
    clock = Clock()
    clock.advance(moment.timestamp())
    return clock


async def account_with(db, login="alice", money="0"):
    account = await db.run(ledger.create_account, login, ledger.hash_password("secret-1"))
    if Decimal(money):
        await db.run(ledger.credit, account.customer_id, money, "payment", "seed",
                     f"seed:{login}", at=T0 - timedelta(days=1))
    return account


async def tv_tariff(db, name, price="300.00", **kw) -> int:
    ch = await db.run(catalog.create_channel, f"ch-{name}", "http://s.example/$token")
    return (await db.run(catalog.create_tariff, name, price, [ch["id"]], **kw))["id"]


async def state(db) -> tuple:
    """Everything a refused call must leave as it was."""
    return await db.run(lambda tx: tx.fetchone(
        "SELECT (SELECT count(*) FROM ledger), (SELECT coalesce(sum(balance), 0) FROM customers),"
        " (SELECT count(*) FROM subscriptions),"
        " (SELECT string_agg(id || ':' || state || ':' || paid_until, ',' ORDER BY id)"
        "  FROM subscriptions), (SELECT count(*) FROM vod_purchases),"
        " (SELECT count(*) FROM partner_calls),"
        " (SELECT string_agg(password_hash, ',' ORDER BY id) FROM accounts)"))


# -- subscribing through the billing ----------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_subscribe_with_money_charges_once_through_the_ledger(db):
    account = await account_with(db, money="500.00")
    basic = await tv_tariff(db, "basic", "300.00", activation_price="50.00")
    dev = Device(db, make_config(), account, clock_at(T0))
    listed = {t["id"]: t for t in (await dev.ok(customer.tariff_list))["tariffs"]}
    assert listed[basic]["is_assigned"] is False and listed[basic]["price"] == 300.0

    assert await dev.ok(customer.subscribe, tariff_id=basic) == {}
    rows = (await db.run(ledger.statement, account.customer_id)).rows
    assert [(r.kind, r.amount, r.tariff_id) for r in rows[1:]] == [
        ("activation", Decimal("-50.00"), basic), ("charge", Decimal("-300.00"), basic)]
    assert (await db.run(ledger.get_customer, account.customer_id)).balance == Decimal("150.00")
    assert await db.run(catalog.account_channels, account.id)  # the channel is watchable now
    assert await db.run(ledger.balance_mismatches) == []

    listed = {t["id"]: t for t in (await dev.ok(customer.tariff_list))["tariffs"]}
    assert listed[basic]["is_assigned"] is True
    assert listed[basic]["subscription_end_date"] == "2025-04-09 12:00:00"
    assert listed[basic]["available_to_unsubscribe"] == 0  # basic
    [sub] = (await dev.ok(customer.subscription_list))["subscriptions"]
    assert (sub["tariff_id"], sub["tariff_name"], sub["price"], sub["end_date"]) == (
        basic, "basic", "300.00", "2025-04-09 12:00:00")

    # Again: already subscribed (3), nothing more charged.
    before = await state(db)
    assert (await dev.error(customer.subscribe, tariff_id=basic)).code == 3
    assert await state(db) == before


@pytest_twisted.ensureDeferred
async def test_subscribe_without_money_is_refused_and_writes_nothing(db):
    account = await account_with(db, money="100.00")
    basic = await tv_tariff(db, "basic", "300.00")
    extra = await tv_tariff(db, "extra", "50.00", additional=True)
    dev = Device(db, make_config(), account, clock_at(T0))
    before = await state(db)
    e = await dev.error(customer.subscribe, tariff_id=basic)
    assert e.code == 2
    # All or nothing: one affordable and one not, comma-separated, is refused whole.
    assert (await dev.error(customer.subscribe, tariff_id=f"{extra},{basic}")).code == 2
    assert await state(db) == before
    assert not await db.run(catalog.account_channels, account.id)
    # A credit limit (the billing's floor) is honoured as by the charging job.
    loose = Device(db, make_config(billing={"credit_limit": "250.00"}), account, clock_at(T0))
    await loose.ok(customer.subscribe, tariff_id=basic)
    assert (await db.run(ledger.get_customer, account.customer_id)).balance == Decimal("-200.00")


@pytest_twisted.ensureDeferred
async def test_subscribe_refusals_use_the_spec_codes_and_write_nothing(db):
    account = await account_with(db, money="1000.00")
    basic = await tv_tariff(db, "basic", "100.00")
    other_basic = await tv_tariff(db, "other-basic", "100.00")
    hidden = await tv_tariff(db, "hidden", "1.00", hidden=True)
    dev = Device(db, make_config(), account, clock_at(T0))
    await dev.ok(customer.subscribe, tariff_id=basic)
    before = await state(db)
    cases = [({}, 120), ({"tariff_id": ""}, 120), ({"tariff_id": "abc"}, 1),
             ({"tariff_id": "-1"}, 1), ({"tariff_id": "999"}, 1), ({"tariff_id": hidden}, 1),
             ({"virtual_tariff_id": "3"}, 1), ({"tariff_id": "1," * 200 + "1"}, 1),
             ({"tariff_id": other_basic}, 5), ({"tariff_id": basic}, 3)]
    for params, code in cases:
        assert (await dev.error(customer.subscribe, **params)).code == code, params
    e = await dev.error(customer.subscribe, tariff_id="abc")
    assert e.extra["error_messages"] == {"tariff_id": (
        "must be up to 100 integers separated by commas")}
    # An external billing owns tariffs in the full/reduced modes: 4, nothing assigned.
    ext = Device(db, make_config(billing={"mode": "full"}), account, clock_at(T0))
    extra = await tv_tariff(db, "extra", "1.00", additional=True)
    before = await state(db)
    assert (await ext.error(customer.subscribe, tariff_id=extra)).code == 4
    assert (await ext.error(customer.unsubscribe, tariff_id=basic)).code == 4
    assert await state(db) == before


@pytest_twisted.ensureDeferred
async def test_unsubscribe_additional_only_the_accounts_own(db):
    account = await account_with(db, money="1000.00")
    basic = await tv_tariff(db, "basic", "100.00")
    extra = await tv_tariff(db, "extra", "30.00", additional=True)
    operators = await tv_tariff(db, "operators", "10.00", additional=True)
    cfg = make_config(billing={"refund_unused": True})
    dev = Device(db, cfg, account, clock_at(T0))
    await dev.ok(customer.subscribe, tariff_id=f"{basic},{extra}")
    # The operator assigns one to the customer (all its accounts): not the device's to drop.
    from smartyd.billing import engine
    await db.run(engine.assign, cfg.billing, None, operators, customer_id=account.customer_id,
                 at=T0)
    listed = {t["id"]: t for t in (await dev.ok(customer.tariff_list))["tariffs"]}
    assert [listed[t]["available_to_unsubscribe"] for t in (basic, extra, operators)] == [0, 1, 0]
    assert [listed[t]["is_assigned"] for t in (basic, extra, operators)] == [True] * 3

    before = await state(db)
    for params, code in [({}, 120), ({"tariff_id": "x"}, 1), ({"tariff_id": 999}, 1),
                         ({"tariff_id": basic}, 2), ({"tariff_id": operators}, 5),
                         ({"tariff_id": f"{extra},{basic}"}, 2)]:
        assert (await dev.error(customer.unsubscribe, **params)).code == code, params
    assert await state(db) == before

    dev.clock.advance(15 * 86400)  # half the period: half of 30.00 comes back
    assert await dev.ok(customer.unsubscribe, tariff_id=extra) == {}
    assert extra not in {s["tariff_id"] for s in
                         (await dev.ok(customer.subscription_list))["subscriptions"]}
    [refund] = [r for r in (await db.run(ledger.statement, account.customer_id)).rows
                if r.kind == "refund"]
    assert refund.amount == Decimal("15.00")
    assert (await dev.error(customer.unsubscribe, tariff_id=extra)).code == 1
    assert await db.run(ledger.balance_mismatches) == []


# -- the ledger ---------------------------------------------------------------------------------
async def seed_ledger(db, account, n: int) -> None:
    for i in range(n):
        await db.run(ledger.credit, account.customer_id, f"{i + 1}.00", "payment",
                     f"osmp:{i}", f"p:{i}", at=T0 - timedelta(days=n - i))


@pytest_twisted.ensureDeferred
async def test_payment_list_pages_the_ledger_newest_first(db):
    account = await account_with(db)
    await seed_ledger(db, account, 25)
    dev = Device(db, make_config(), account, clock_at(T0))
    first = (await dev.ok(customer.payment_list, limit=20))["payments"]
    assert len(first) == 20 and first[0]["amount"] == "25.00"
    assert first[0] == {"comment": "payment: osmp:24", "datetime": "2025-03-09 12:00:00",
                        "amount": "25.00"}
    second = (await dev.ok(customer.payment_list, limit=20, page=2))["payments"]
    assert [p["amount"] for p in second] == [f"{i}.00" for i in range(5, 0, -1)]
    assert [p["amount"] for p in (await dev.ok(customer.payment_list, limit=3, page=3))[
        "payments"]] == ["19.00", "18.00", "17.00"]
    assert len((await dev.ok(customer.payment_list, limit=500))["payments"]) == 25  # cut to 100
    assert (await dev.ok(customer.payment_list, page=9))["payments"] == []
    for params in ({"page": "0"}, {"page": "x"}, {"limit": "-1"}, {"limit": "1.5"}):
        e = await dev.error(customer.payment_list, **params)
        assert e.code == 1 and set(e.extra["error_messages"]) <= {"page", "limit"}, params


@pytest_twisted.ensureDeferred
async def test_customer_info_period_and_payments_by_service(db):
    account = await account_with(db, money="1000.00")
    await db.run(ledger.update_customer, account.customer_id, firstname="Ann", lastname="Lee",
                 phone="+7999", email="ann@example.com")
    basic = await tv_tariff(db, "basic", "300.00")
    dev = Device(db, make_config(), account, clock_at(T0))
    await dev.ok(customer.subscribe, tariff_id=basic)
    await db.run(ledger.credit, account.customer_id, "5.00", "payment", "old", "old:1",
                 at=T0 - timedelta(days=90))

    got = await dev.ok(customer.info)
    assert (got["firstname"], got["lastname"], got["email"], got["mobile_phone_number"],
            got["abonement"], got["balance"]) == ("Ann", "Lee", "ann@example.com", "+7999",
                                                   "alice", "705.00")
    # Default period: the last 30 days up to today; the 90-day-old payment is outside.
    assert got["payments"]["btv"] == [{"comment": "charge: basic",
                                       "datetime": "2025-03-10 12:00:00", "amount": "-300.00"}]
    assert [p["amount"] for p in got["payments"]["other"]] == ["1000.00"]
    assert got["payments"]["vod"] == []
    assert got["subscriptions"] == [{"tariff_id": basic, "start_date": "2025-03-10 12:00:00",
                                     "end_date": "2025-04-09 12:00:00", "is_periodical": 1,
                                     "price": 300.0}]
    [t] = [t for t in got["tariffs"] if t["id"] == basic]
    assert (t["price"], t["is_assigned"], t["period"]) == ("300.00", 1, 30)
    assert (got["payment_sum"], got["current_debt_amount"], got["activation_days_left"]) == (
        "300.00", "0.00", 30)

    old = await dev.ok(customer.info, date_from="2024-12-01", date_to="2024-12-31")
    assert [p["amount"] for p in old["payments"]["other"]] == ["5.00"]
    assert old["payments"]["btv"] == []
    day = await dev.ok(customer.info, date_from="2025-03-10", date_to="2025-03-10")
    assert [p["amount"] for p in day["payments"]["btv"]] == ["-300.00"]
    for params in ({"date_from": "10.03.2025"}, {"date_to": "2025-02-30"},
                   {"date_from": "2025-03-11", "date_to": "2025-03-10"}):
        assert (await dev.error(customer.info, **params)).code == 1, params


# -- the password -------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_password_change_checks_the_old_one_and_writes_only_when_right(db):
    account = await account_with(db)
    dev = Device(db, make_config(), account, clock_at(T0))
    before = await state(db)
    assert (await dev.error(customer.password_change, old_password="wrong",
                            new_password="new-secret")).code == 2
    for params in ({"new_password": "new-secret"}, {"old_password": "secret-1"},
                   {"old_password": "secret-1", "new_password": "short"},
                   {"old_password": "secret-1", "new_password": "x" * 129},
                   {"old_password": "secret-1", "new_password": "tab\there1"}):
        assert (await dev.error(customer.password_change, **params)).code == 1, params
    assert await state(db) == before
    assert await dev.ok(customer.password_change, old_password="secret-1",
                        new_password="new-secret") == {}
    stored = (await db.run(ledger.get_account, account.id)).password_hash
    assert ledger.verify_password("new-secret", stored)
    assert not ledger.verify_password("secret-1", stored)


@pytest_twisted.ensureDeferred
async def test_password_guesses_count_with_login_failures(db):
    account = await account_with(db)
    clock = clock_at(T0)
    limiter = LoginLimiter(abonement_free=2)
    dev = Device(db, make_config(), account, clock, {"limiter": limiter})
    before = await state(db)
    for _ in range(2):
        assert (await dev.error(customer.password_change, old_password="guess",
                                new_password="new-secret")).code == 2
    assert limiter.delay(limiter.keys("10.0.0.1", "alice"), clock.seconds()) == 1
    # The next one waits the delay before its password is checked: nothing written meanwhile.
    d = defer.ensureDeferred(dev.ok(customer.password_change, old_password="secret-1",
                                    new_password="new-secret"))
    clock.advance(0.99)
    assert not d.called
    assert await state(db) == before
    clock.advance(0.01)
    assert await within(d, 10) == {}
    assert limiter.delay(limiter.keys("10.0.0.1", "alice"), clock.seconds()) == 0


# -- films --------------------------------------------------------------------------------------
def feed(*objects: str) -> bytes:
    return ("<?xml version='1.0' encoding='utf-8'?>\n<objects>\n" + "\n".join(objects)
            + "\n</objects>").encode("utf-8")


def obj(i: int, title: str, genres: str = "drama", vod: str = "svod", price: str = "") -> str:
    return (f'<object id="{i}" title="{title}" title_en="Orig {i}" genres="{genres}"'
            f' vod="{vod}" price="{price}"><info year="{2000 + i}" country="US"/>'
            f'<ratings imdb="7.{i}" kinopoisk="n/a"/><poster url="https://img.test/{i}.jpg"/>'
            f"<duration_sec>{600 * i}</duration_sec><story>Story {i}.</story>"
            f"<actors><person name='Actor {i}'/></actors></object>")


class Cinema:
    """The MEGOGO fake, the vod feature, a synced catalog and its tariffs."""

    def __init__(self, db, clock, **megogo_extra):
        self.db, self.clock = db, clock
        self.megogo = FakeMegogo(partner_id=7)
        self.megogo_extra = megogo_extra

    async def setup(self, *objects: str):
        self.catalog = await tv_tariff(self.db, "megogo-catalog", "0.00", hidden=True)
        self.svod = await tv_tariff(self.db, "megogo-svod", "99.00", additional=True)
        self.cfg = make_config(megogo={**MEGOGO, "catalog_tariff_id": self.catalog,
                                       "tariff_id": self.svod, **self.megogo_extra})
        feature = make_vod(self.cfg, db=self.db, client=in_memory_client(self.megogo.resource()),
                           clock=self.clock, metrics=Metrics())
        self.vod = feature.handle
        await self.vod.syncs["megogo"].sync_bytes(feed(*objects))
        return self

    async def device(self, account, device="android_stb", tariffs=()) -> Device:
        from smartyd.billing import engine
        for t in tariffs:
            await self.db.run(engine.assign, self.cfg.billing, account.id, t, at=T0)
        return Device(self.db, self.cfg, account, self.clock, {"vod": self.vod}, device)

    async def title_id(self, external_id: str) -> int:
        return (await self.db.run(catalog_sync.get_title, "megogo", external_id))["id"]


CATALOG = [obj(1, "Alpha", "drama"), obj(2, "Beta", "comedy, drama"), obj(3, "Gamma", "horror"),
           obj(4, "Delta_1", "comedy"), obj(5, "Epsilon", "drama", vod="tvod", price="40.00")]


@pytest_twisted.ensureDeferred
async def test_video_list_shows_what_the_tariffs_make_visible_paged_by_genre_and_search(db):
    clock = clock_at(T0)
    cinema = await Cinema(db, clock).setup(*CATALOG)
    await db.run(catalog_sync.map_genre, "megogo", "drama", "Drama")
    await db.run(catalog_sync.map_genre, "megogo", "comedy", "Comedy")
    without = await cinema.device(await account_with(db, "bob"))
    assert await without.ok(films.video_list) == {"videos": [], "count": 0}
    assert await without.ok(films.genre_list) == {"genres": []}
    assert (await without.error(films.video_detail, vid=await cinema.title_id("1"))).code == 1

    dev = await cinema.device(await account_with(db, "ann", "100.00"), tariffs=[cinema.catalog])
    got = await dev.ok(films.video_list)
    assert got["count"] == 5 and len(got["videos"]) == 5
    by_name = {v["name"]: v for v in got["videos"]}
    a = by_name["Alpha"]
    assert (a["name_orig"], a["year"], a["countries"], a["genres"], a["duration"],
            a["thumbnail_big"], a["actors"], a["imdb_rating"], a["kinopoisk_rating"],
            a["provider"], a["video_provider_id"], a["has_subscription"],
            a["price_category_type"], a["is_purchased"]) == (
        "Orig 1", 2001, "US", "Drama", 10, "https://img.test/1.jpg", "Actor 1", 7.1, 0.0,
        "megogo", 1, 0, 0, 0)
    assert by_name["Beta"]["genres"] == "Comedy, Drama"
    assert by_name["Epsilon"]["price_category_type"] == 1

    page = await dev.ok(films.video_list, limit=2, page=2, order="name")
    assert page["count"] == 5 and [v["name"] for v in page["videos"]] == ["Delta_1", "Epsilon"]
    assert [v["name"] for v in (await dev.ok(films.video_list, order="-year", limit=2))[
        "videos"]] == ["Epsilon", "Delta_1"]
    drama = (await db.run(lambda tx: tx.fetchval("SELECT id FROM vod_genres WHERE name = 'Drama'")))
    comedy = (await db.run(lambda tx: tx.fetchval(
        "SELECT id FROM vod_genres WHERE name = 'Comedy'")))
    names = lambda r: sorted(v["name"] for v in r["videos"])  # noqa: E731
    assert names(await dev.ok(films.video_list, gid=drama)) == ["Alpha", "Beta", "Epsilon"]
    assert names(await dev.ok(films.video_list, genre=f"{comedy}")) == ["Beta", "Delta_1"]
    assert names(await dev.ok(films.video_list, search="ALP")) == ["Alpha"]
    assert names(await dev.ok(films.video_list, search="orig 3")) == ["Gamma"]
    assert names(await dev.ok(films.video_list, search="a_1")) == ["Delta_1"]  # _ is literal
    assert names(await dev.ok(films.video_list, search="%")) == []
    assert names(await dev.ok(films.video_list, year="2002,2003")) == ["Beta", "Gamma"]
    assert names(await dev.ok(films.video_list, provider="tvzavr")) == []  # not enabled
    assert (await dev.ok(films.video_list, package=1))["count"] == 0
    assert (await dev.error(films.video_list, provider_id=9)).code == 1

    genres = {g["name"]: g for g in (await dev.ok(films.genre_list))["genres"]}
    assert {n: (g["count"], g["subgenres_count"]) for n, g in genres.items()} == {
        "Comedy": (2, 1), "Drama": (3, 1)}

    # A hidden title (gone from the feed) is seen by nobody.
    await cinema.vod.syncs["megogo"].sync_bytes(feed(*CATALOG[1:]))
    assert "Alpha" not in names(await dev.ok(films.video_list))

    before = await state(db)
    for params in ({"limit": "x"}, {"page": "0"}, {"order": "premiere_date"}, {"gid": "a"},
                   {"year": "20x1"}, {"search": "s" * 200}, {"new": "2"}):
        assert (await dev.error(films.video_list, **params)).code == 1, params
    assert await state(db) == before


@pytest_twisted.ensureDeferred
async def test_video_url_gives_the_megogo_fields_per_device_class(db):
    clock = clock_at(T0)
    cinema = await Cinema(db, clock, **KEYS).setup(*CATALOG)
    account = await account_with(db, "ann", "99.00")
    dev = await cinema.device(account, tariffs=[cinema.catalog])
    vid = await cinema.title_id("2")
    # Seen, but no SVOD tariff: no access (3).
    assert (await dev.error(films.video_url, vid=vid)).code == 3
    detail = await dev.ok(films.video_detail, vid=vid)
    assert detail["actions"] == [] and detail["ext_id"] == "2"

    svod = await cinema.device(account, tariffs=[cinema.svod])
    assert (await svod.ok(films.video_detail, vid=vid))["actions"][0]["action"] == "get_video_url"
    token = hashlib.md5(f"isp-{account.customer_id}7pepper-salt".encode()).hexdigest()
    for device, public, private in [("android_stb", "stb-pub", "stb-priv"),
                                    ("mag250", "stb-pub", "stb-priv"),
                                    ("samsung_tizen", "tv-pub", "tv-priv"),
                                    ("android_tv", "tv-pub", "tv-priv"),
                                    ("ios", "m-pub", "m-priv"), ("android", "m-pub", "m-priv")]:
        got = await svod.ok(films.video_url, vid=vid, device=device)
        assert (got["ext_id"], got["ext_partner_id"], got["ext_auth_token"],
                got["ext_apikey"]) == ("2", "7", token, public), device
        q = parse_qs(urlsplit(got["uri"]).query)
        assert got["uri"].startswith("https://api.megogo.net/v1/stream?")
        assert q["video_id"] == ["2"]
        assert q["sign"] == [hashlib.md5(f"video_id=2{private}".encode()).hexdigest() + public]
    # No device named: the session's type (android_stb at login).
    assert (await svod.ok(films.video_url, vid=vid))["ext_apikey"] == "stb-pub"
    # A type of no class: the SSO fields, no key, no uri.
    web = await svod.ok(films.video_url, vid=vid, device="browser")
    assert "ext_apikey" not in web and web["uri"] == "" and web["ext_auth_token"] == token
    for params, code in [({}, 1), ({"vid": "x"}, 1), ({"vid": 99999}, 1),
                         ({"vid": vid, "vfid": vid + 1}, 1)]:
        assert (await svod.error(films.video_url, **params)).code == code, params


@pytest_twisted.ensureDeferred
async def test_video_url_without_a_key_pair_answers_no_key(db):
    cinema = await Cinema(db, clock_at(T0)).setup(*CATALOG)
    account = await account_with(db, "ann", "99.00")
    dev = await cinema.device(account, device="ios", tariffs=[cinema.catalog, cinema.svod])
    got = await dev.ok(films.video_url, vid=await cinema.title_id("1"))
    assert "ext_apikey" not in got and got["uri"] == "" and got["ext_partner_id"] == "7"


@pytest_twisted.ensureDeferred
async def test_video_action_buys_once_through_the_ledger(db):
    clock = clock_at(T0)
    cinema = await Cinema(db, clock).setup(*CATALOG)
    account = await account_with(db, "ann", "100.00")
    dev = await cinema.device(account, tariffs=[cinema.catalog])
    vid = await cinema.title_id("5")
    detail = await dev.ok(films.video_detail, vid=vid)
    assert detail["actions"] == [{"action": "buy", "caption": "Epsilon", "price": 40.0,
                                  "video_id": str(vid), "ext_id": "5"}]
    assert (await dev.error(films.video_url, vid=vid)).code == 3
    before = await state(db)
    for params, code in [({"vid": vid}, 1), ({"vid": vid, "action": "rent"}, 1),
                         ({"action": "buy"}, 1), ({"vid": "v", "action": "buy"}, 1),
                         ({"vid": vid, "action": "buy", "external_api_goods_id": "6"}, 1),
                         ({"vid": await cinema.title_id("1"), "action": "buy"}, 1)]:
        assert (await dev.error(films.video_action, **params)).code == code, params
    assert await state(db) == before

    # Two at once and one after: one purchase, charged once.
    outcomes = await defer.DeferredList([
        defer.Deferred.fromCoroutine(films.video_action(dev.call(vid=vid, action="buy")))
        for _ in range(2)], consumeErrors=True)
    ok = [r for good, r in outcomes if good]
    refused = [r.value for good, r in outcomes if not good]
    assert ok == [{"result": "ok"}] and [e.code for e in refused] == [3]
    assert (await dev.error(films.video_action, vid=vid, action="buy")).code == 3
    rows = [r for r in (await db.run(ledger.statement, account.customer_id)).rows if r.kind == "tvod"]
    assert [r.amount for r in rows] == [Decimal("-40.00")]
    assert (await db.run(ledger.get_customer, account.customer_id)).balance == Decimal("60.00")
    assert await db.run(ledger.balance_mismatches) == []
    # Bought: watchable, listed as purchased, no buy action any more.
    assert (await dev.ok(films.video_url, vid=vid))["ext_id"] == "5"
    assert [v["name"] for v in (await dev.ok(films.video_list, get_purchased=1))["videos"]] == [
        "Epsilon"]
    assert [a["action"] for a in (await dev.ok(films.video_detail, vid=vid))["actions"]] == [
        "get_video_url"]
    # CustomerInfo files it under vod (the purchase row is dated by the database's clock).
    info = await dev.ok(customer.info, date_from="2000-01-01", date_to="2999-12-31")
    assert [p["amount"] for p in info["payments"]["vod"]] == ["-40.00"]


@pytest_twisted.ensureDeferred
async def test_video_action_without_money_is_2_and_writes_nothing(db):
    cinema = await Cinema(db, clock_at(T0)).setup(*CATALOG)
    account = await account_with(db, "ann", "39.99")
    dev = await cinema.device(account, tariffs=[cinema.catalog])
    before = await state(db)
    assert (await dev.error(films.video_action, vid=await cinema.title_id("5"),
                            action="buy")).code == 2
    assert await state(db) == before


# -- the MEGOGO device classes ------------------------------------------------------------------
@pytest.mark.parametrize("device, kind", [
    ("android_stb", "stb"), ("mag250", "stb"), ("MAG254", "stb"), ("dune_hd", "stb"),
    ("tvip_s410", "stb"), ("kodi", "stb"), ("smarttv", "smart_tv"), ("android_tv", "smart_tv"),
    ("samsung", "smart_tv"), ("lg_webos", "smart_tv"), ("appleTV", "smart_tv"),
    ("android", "mobile"), ("ios", "mobile"), ("ipad", "mobile"), ("browser", None),
    ("web_app", None), ("", None)])
def test_device_class_mapping(device, kind):
    assert megogo.device_class(device) == kind


# -- end to end, through HTTP as a device ------------------------------------------------------
def tvmw_config(**sections):
    return make_config(tvmw={"enabled": True, "clients": [
        {"client_id": "1", "api_key": KEY, "shared": True}]},
        tokens={"secret": "s3cret-long-enough-for-config",
                "fast_listen": "tcp:0:interface=127.0.0.1"}, **sections)


class Daemon(Running):
    """One instance with its services running, except the pollers (nothing runs on its own)."""

    def __init__(self, db, cfg, http_client=None):
        from testapp import build
        from twisted.internet import reactor
        self.app = build(cfg, reactor, db, http_client=http_client)
        self.http = in_memory_client(self.app.root)
        self.tvmw = self.app.app.features["tvmw"].handle
        self.store = self.tvmw.store
        self.entitlements = self.app.app.features["streams"].handle
        self.started = [s for s in self.app.services if not isinstance(s, Poller)]

    async def start(self):
        for svc in self.started:
            svc.startService()
        await within(self.entitlements.when_loaded(), 10)
        await within(self.store.listener.ready, 10)

    async def stop(self):
        for svc in reversed(self.started):
            await svc.stopService()


async def check_token(daemon, uri: str, channel: str) -> int:
    """What the streamer's check of the URL's token answers on the fast listener."""
    query = parse_qs(urlsplit(uri).query)
    client = await connect(fast_port(daemon))
    client.send(get(f"/streams/check?token={query['token'][0]}&ip={query['ip'][0]}"
                    f"&name={channel}"))
    [answer] = await client.wait(1)
    await client.close()
    return answer["status"]


@pytest_twisted.ensureDeferred
async def test_a_device_subscribes_with_money_and_zaps_the_new_channel(db, world):
    ch3 = (await db.run(catalog.create_channel, "ch3", MASK))["id"]
    extra = (await db.run(catalog.create_tariff, "extra", "50.00", [ch3],
                          additional=True))["id"]
    daemon = Daemon(db, tvmw_config())
    await daemon.start()
    try:
        device = HttpDevice(daemon.http, uid="box-1")
        assert (await device.login())["error"] == 0
        assert (await device("channel/url", cid=ch3, redirect=0))["error"] == 2
        offered = {t["id"]: t for t in (await device.ok("customer/tariff/list"))["tariffs"]}
        assert offered[extra]["is_assigned"] is False and offered[extra]["price"] == 50.0

        # No money: refused (2), nothing assigned, the channel stays closed.
        answer = await device("customer/tariff/subscribe", tariff_id=extra)
        assert answer["error"] == 2 and answer["error_message"]
        assert (await device("channel/url", cid=ch3, redirect=0))["error"] == 2

        # alice's basic tariff (100.00) is due too: the subscription settles it first, so
        # 120.00 is not enough for both, 150.00 is.
        alice = await db.run(ledger.get_account, world.alice)
        await db.run(ledger.credit, alice.customer_id, "120.00", "payment", "osmp:1", "pay:1")
        assert (await device("customer/tariff/subscribe", tariff_id=extra))["error"] == 2
        await db.run(ledger.credit, alice.customer_id, "30.00", "payment", "osmp:2", "pay:2")
        reloaded = daemon.entitlements.next_reload()
        assert await device.ok("customer/tariff/subscribe", tariff_id=extra) == {"error": 0}
        await within(reloaded, 5)
        uri = (await device.ok("channel/url", cid=ch3, redirect=0))["uri"]
        assert await check_token(daemon, uri, "ch3") == 200
        info = await device.ok("customer/info")
        assert info["balance"] == "0.00"
        assert sorted(p["amount"] for p in info["payments"]["btv"]) == ["-100.00", "-50.00"]
        assert [p["amount"] for p in (await device.ok("payment/list", limit=2))["payments"]] == [
            "-50.00", "-100.00"]
        again = await device("customer/tariff/subscribe", tariff_id=extra)
        assert again["error"] == 3
        # A set-top box gets the same answer in XML.
        xml = await device.raw("customer/tariff/subscription/list", device="android_stb")
        body = await xml.content()
        assert b"<subscriptions><item><tariff_id>" in body and b"<error>0</error>" in body

        # A wrong old password changes nothing; the right one ends the session at once.
        wrong = await device("account/password/change", old_password="nope",
                             new_password="brand-new-1")
        assert wrong["error"] == 2 and (await device.ok("customer/info"))["balance"] == "0.00"
        ended = daemon.store.next_end()
        assert await device.ok("account/password/change", old_password=PASSWORD,
                               new_password="brand-new-1") == {"error": 0}
        await within(ended, 5)
        assert (await device("customer/info"))["error"] == -1
        assert (await device.login(password="brand-new-1"))["error"] == 0
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_a_device_lists_films_and_gets_a_megogo_url(db, world):
    fake = FakeMegogo(partner_id=7)
    cat = await tv_tariff(db, "megogo-catalog", "0.00", hidden=True)
    svod = await tv_tariff(db, "megogo-svod", "0.00", additional=True)
    cfg = tvmw_config(megogo={**MEGOGO, "catalog_tariff_id": cat, "tariff_id": svod, **KEYS})
    daemon = Daemon(db, cfg, http_client=in_memory_client(fake.resource()))
    await daemon.app.app.features["vod"].handle.syncs["megogo"].sync_bytes(feed(*CATALOG))
    await daemon.start()
    try:
        device = HttpDevice(daemon.http, device="samsung_tizen", uid="tv-1")
        assert (await device.login())["error"] == 0
        assert (await device.ok("video/list"))["count"] == 0  # no catalog tariff yet
        alice = await db.run(ledger.get_account, world.alice)
        from smartyd.billing import engine
        for t in (cat, svod):
            await db.run(engine.assign, cfg.billing, alice.id, t, at=T0)
        films_ = (await device.ok("video/list", search="alpha"))["videos"]
        assert [f["name"] for f in films_] == ["Alpha"]
        vid = films_[0]["id"]
        got = await device.ok("video/url", vid=vid, redirect=0)
        token = hashlib.md5(f"isp-{alice.customer_id}7pepper-salt".encode()).hexdigest()
        assert (got["ext_id"], got["ext_partner_id"], got["ext_auth_token"],
                got["ext_apikey"]) == ("1", "7", token, "tv-pub")
        # The spec's default redirect: to the signed MEGOGO request.
        resp = await device.raw("video/url", vid=vid)
        assert resp.code == 302
        assert resp.headers.getRawHeaders(b"location") == [got["uri"].encode()]
        # A title the account does not see is "no such video" through HTTP too.
        assert (await device("video/url", vid=999999, redirect=0))["error"] == 1
    finally:
        await daemon.stop()
