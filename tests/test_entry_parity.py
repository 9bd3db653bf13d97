"""
The same change has the same side effects whatever entry point makes it.

smartyd has six entry points that move money or entitlements: the CLI
(``smartyd-admin``, a process of its own), the Billing API, the widgets, the
TV Middleware API, the operator console, and the payment paths.  Each test
here drives one change through every entry point that offers it, against one
real database and one assembled daemon (billing ``builtin``, MEGOGO and
Irdeto enabled on their fakes, receipts on), and asserts the same effects:

  change               CLI  Billing API  widgets  device API  console  payment
  tariff assign         x        x          x         x          x
  tariff remove         x        x          x         x          x
  own tariff, unpaid                        x         x
  own tariff, full mode                     x         x
  account block         x        x                               x
  account unblock       x        x                               x
  password change                x          x         x          x
  account deleted                x
  device unbind         x        x                               x
  promise               x                                        x
  film bought (TVOD)    x                             x
  account of a debtor   x        x          x
  money in                       x                               x        x

The effects: the engine's charge (ledger rows by kind, balance), the
subscription row, the entitlement NOTIFY (a running snapshot's answer), the
partner outbox (what the MEGOGO and Irdeto fakes hold after a send), TV
sessions and the cabinet's sessions (ended by a new password or a deletion,
not by a block), the fiscal receipt (a payment only), idempotency, and the
audit row (the console and the CLI only: issue 22 audits "every change made
in the console (and by smartyd-admin)"; the others are the subscriber's or
the external billing's own actions).

The console is driven through L{smartyd.console.actions}, the functions its
pages call (its HTTP, sessions and CSRF are tests/test_console.py's).
"""

from __future__ import annotations

import json
import os
import re
import sys
from datetime import datetime, timezone
from decimal import Decimal

import pytest_twisted
from twisted.internet import reactor, utils
from twisted.internet.defer import Deferred

from conftest import make_config
from fakes import in_memory_client
from fakes.irdeto import FakeIrdeto
from fakes.megogo import FakeMegogo
from smartyd import catalog, ledger, operators
from smartyd.billing import engine
from smartyd.console import actions
from smartyd.http.auth import password_login
from smartyd.db.listen import Listener
from smartyd.streams.entitlements import BLOCKED, CHANNEL, NOT_ENTITLED, OK, Entitlements
from smartyd.vod.megogo import user_id
from smartyd.widgets import repo as widgets_repo
from streams_world import within
from test_billing_api import KEY1, Billing
from test_osmp import PASSWORD as OSMP_PASSWORD, USER as OSMP_USER, Terminal
from test_tvmw import KEY as TVMW_KEY, Device
from test_vod import MEGOGO, _Hosts, feed, tvod_obj
from testapp import build

PASSWORD = "pw-parity-1"
SVOD, CAS, BASE = 1, 2, 3  # the tariffs' ids in a clean database (created in this order)
PRODUCT = 101
ENTRY = ("cli", "billing_api", "widgets", "tvmw", "console")
SECTIONS = dict(
    billing={"mode": "builtin"},
    billing_api={"enabled": True, "clients": [{"client_id": "1", "api_key": KEY1,
                                                    "shared": True}]},
    widgets={"enabled": True, "allowed_origins": ["https://isp.example"], "language": "en",
             "captcha": False},
    tvmw={"enabled": True, "clients": [{"client_id": "1", "api_key": TVMW_KEY,
                                        "shared": True}]},
    tokens={"secret": "s3cret-long-enough-for-config"},
    osmp={"username": OSMP_USER, "password": OSMP_PASSWORD, "account": "login"},
    dreamkas={"enabled": True, "token": "t"},
    megogo={**MEGOGO, "tariff_id": SVOD, "catalog_tariff_id": BASE},
    irdeto={"enabled": True, "host": "http://irdeto.test",
            "products": [{"tariff_id": CAS, "product_ids": [PRODUCT]}]},
)
# What the CLI process reads: the same billing and partners (it plans nothing: the marker
# its transaction leaves is the daemon's outbox's intake).
CLI_CONFIG = ('[billing]\nmode = "builtin"\n'
              '[megogo]\nenabled = true\nxml_url = "http://megogo.test/all_mgg.xml"\n'
              f'partner_id = "7"\nsalt = "pepper-salt"\nsvod_service_id = 555\n'
              f'tariff_id = {SVOD}\ncatalog_tariff_id = {BASE}\n'
              'billing_url = "http://megogo.test"\nuser_prefix = "isp-"\n'
              '[irdeto]\nenabled = true\nhost = "http://irdeto.test"\n'
              f'products = [{{tariff_id = {CAS}, product_ids = [{PRODUCT}]}}]\n')


class World:
    """One daemon assembly on the test database, the partners' fakes, a running snapshot."""

    def __init__(self, db, pg_dsn, tmp_path):
        self.db, self.pg_dsn, self.tmp_path = db, pg_dsn, tmp_path
        self.megogo, self.irdeto = FakeMegogo(partner_id=7), FakeIrdeto()
        partners = in_memory_client(_Hosts({b"megogo.test": self.megogo.resource(),
                                            b"irdeto.test": self.irdeto.resource()}))
        self.cfg = make_config(**SECTIONS)
        self.app = build(self.cfg, reactor, db, http_client=partners)
        self.http = in_memory_client(self.app.root)
        self.billing = Billing(self.http)
        self.vod = self.app.app.features["vod"].handle
        self.sessions = self.app.app.features["tvmw"].handle.store
        self.entitlements = Entitlements(db, metrics=self.app.metrics, clock=reactor)
        self._notify_waiters: list = []
        self.notes = Listener(db, (CHANNEL,), self._notified)
        self.pw_hash = ledger.hash_password(PASSWORD)

    async def start(self):
        self.svod = (await self.db.run(catalog.create_tariff, "cinema", "30.00", [self.channel],
                                       additional=True, activation_price="5.00"))["id"]
        self.cas = (await self.db.run(catalog.create_tariff, "cas", "10.00", [],
                                      additional=True))["id"]
        assert (self.svod, self.cas) == (SVOD, CAS)
        # Free, no channel: every account has a tariff (the device API logs in no account
        # without one).
        self.base = (await self.db.run(catalog.create_tariff, "base", "0.00"))["id"]
        assert self.base == BASE  # MEGOGO's catalog: every account sees its titles
        self.operator = await self.db.run(operators.create, "support-1", "support", "")
        self.entitlements.startService()
        await within(self.entitlements.when_loaded(), 10)
        self.sessions.startService()  # the device API's sessions, ended by NOTIFY
        await within(self.sessions.listener.ready, 10)
        self.notes.startService()
        await within(self.notes.ready, 10)

    async def stop(self):
        self.notes.stopService()
        await self.sessions.stopService()
        await self.entitlements.stopService()

    async def customer(self, login: str, money: str = "0") -> tuple[int, int]:
        """A customer with one account (password PASSWORD, device ``box-<login>``) and money."""
        async def make(tx):
            account = await ledger.create_account(tx, login, self.pw_hash)
            await tx.execute("INSERT INTO devices (uid, account_id) VALUES (%s, %s)",
                             (f"box-{login}", account.id))
            await engine.assign(tx, self.cfg.billing, account.id, self.base,
                                at=datetime.now(timezone.utc))
            if money != "0":
                await ledger.credit(tx, account.customer_id, money, "payment", "seed",
                                    f"seed:{login}")
            return account.customer_id, account.id

        return await self.db.run(make)

    # -- effects ---------------------------------------------------------------------------------
    async def kinds(self, cid: int) -> list[tuple[str, Decimal]]:
        return [(e.kind, e.amount) for e in (await self.db.run(ledger.statement, cid)).rows
                if e.cause != "seed"]

    async def subs(self, cid: int) -> list[tuple[int, str]]:
        return [(s["tariff_id"], s["state"])
                for s in await self.db.run(catalog.customer_subscriptions, cid)
                if s["tariff_id"] != self.base]

    async def account(self, aid: int) -> tuple[bool, str]:
        a = await self.db.run(ledger.get_account, aid)
        return a.active, a.status_reason

    async def audits(self, cid: int) -> list[tuple[str, str]]:
        return [tuple(r) for r in await self.db.fetchall(
            "SELECT actor, action FROM audit_log WHERE customer_id = %s ORDER BY id", (cid,))]

    async def tv_sessions(self, aid: int) -> int:
        return await self.db.fetchval(
            "SELECT count(*) FROM tvmw_sessions WHERE account_id = %s", (aid,))

    async def marked(self, cid: int) -> bool:
        return bool(await self.db.fetchval("SELECT 1 FROM vod_dirty WHERE customer_id = %s",
                                           (cid,)))

    async def sent(self) -> None:
        """The daemon's outbox: marked customers planned, their calls sent to the fakes."""
        await self.vod.outbox.run()
        assert await self.db.fetchval(
            "SELECT count(*) FROM partner_calls WHERE state <> 'done'") == 0

    def megogo_services(self, cid: int) -> set:
        return self.megogo.users.get(user_id(self.cfg.megogo, cid), set())

    def expect_notify(self) -> Deferred:
        """Fires on the next entitlement NOTIFY (arm it before the change)."""
        d: Deferred = Deferred()
        self._notify_waiters.append(d)
        return d

    def _notified(self, channel: str, payload: str) -> None:
        waiters, self._notify_waiters = self._notify_waiters, []
        for d in waiters:
            d.callback(payload)

    async def snapshot(self, aid: int, want: str, notified: Deferred) -> None:
        """
        The change announced itself (the NOTIFY a running snapshot reloads on),
        and the snapshot reloaded after it answers ``want``.
        """
        await within(notified, 10)
        await within(self.entitlements.reload(), 10)
        assert self.entitlements.snapshot.entitlement(aid, self.channel) == want

    # -- entry points ----------------------------------------------------------------------------
    async def cli(self, *args) -> dict:
        path = self.tmp_path / "smartyd.toml"
        path.write_text(f'[database]\ndsn = "{self.pg_dsn}"\n'
                        f'[log]\nfile = "{self.tmp_path}/smartyd.jsonl"\n{CLI_CONFIG}')
        out, err, code = await utils.getProcessOutputAndValue(
            sys.executable, ["-m", "smartyd.admin", "--config", str(path), *map(str, args)],
            env=dict(os.environ))
        assert code == 0, err.decode()
        return json.loads(out)

    async def device(self, login: str) -> Device:
        device = Device(self.http, uid=f"box-{login}")
        answer = await device.login(abonement=login, password=PASSWORD)
        assert answer["error"] == 0, answer
        return device

    async def cabinet(self, login: str, tariffs=()) -> "Cabinet":
        wid = (await self.db.run(widgets_repo.create_widget, "cabinet", "", list(tariffs))).id
        browser = Cabinet(in_memory_client(self.app.root), wid)
        _, hidden = await browser.page()
        r, _ = await browser.post("", {**hidden, "login": login, "password": PASSWORD})
        assert r.code == 303
        return browser

    async def console(self, action, *args):
        now = datetime.now(timezone.utc)
        return await self.db.run(action, *args, at=now)


class Cabinet:
    """A browser on a cabinet widget (its own cookie jar)."""

    def __init__(self, web, wid: int):
        self.web, self.wid = web, wid

    async def page(self) -> tuple[str, dict]:
        r = await self.web.get(f"http://smartyd/widgets/page/{self.wid}")
        html = (await r.content()).decode()
        return html, dict(re.findall(r'<input type="hidden" name="([a-z_]+)" value="([^"]*)"',
                                     html))

    async def post(self, action: str, data: dict):
        r = await self.web.post(f"http://smartyd/widgets/page/{self.wid}{action}", data=data,
                                allow_redirects=False)
        return r, (await r.content()).decode()

    async def submit(self, path: str, **fields) -> str:
        _, hidden = await self.page()
        r, page = await self.post(path, {**hidden, **fields})
        assert r.code in (200, 303), page
        return page


@pytest_twisted.async_yield_fixture
async def world(db, pg_dsn, tmp_path):
    w = World(db, pg_dsn, tmp_path)
    w.channel = (await db.run(catalog.create_channel, "one", "http://s.example/one.m3u8"))["id"]
    await w.start()
    try:
        yield w
    finally:
        await w.stop()


# -- tariffs -------------------------------------------------------------------------------------
async def assign_via(w: World, how: str, cid: int, aid: int, login: str, tariff: int,
                     on: bool) -> None:
    if how == "cli":
        await w.cli("tariff", "assign" if on else "remove", aid, tariff)
    elif how == "billing_api":
        await w.billing.ok(f"account/tariff/{'assign' if on else 'remove'}",
                           {"abonement": login, "tariff_id": tariff})
    elif how == "widgets":
        browser = await w.cabinet(login, [tariff])
        await browser.submit("/tariff", tariff_id=str(tariff),
                             action="connect" if on else "disconnect")
    elif how == "tvmw":
        device = await w.device(login)
        await device.ok(f"customer/tariff/{'subscribe' if on else 'unsubscribe'}",
                        tariff_id=tariff)
    else:
        await w.console(actions.tariff, w.cfg.billing, w.operator, cid, aid, tariff, on,
                        "asked by phone")


@pytest_twisted.ensureDeferred
async def test_a_tariff_assigned_and_removed_by_every_entry_point(world):
    w = world
    people = {how: await w.customer(f"tv-{how}", "100.00") for how in ENTRY}
    for how, (cid, aid) in people.items():
        notified = w.expect_notify()
        for tariff in (w.svod, w.cas):
            await assign_via(w, how, cid, aid, f"tv-{how}", tariff, True)
        # Charged by the engine: activation then the first period, at once.
        assert await w.kinds(cid) == [("activation", Decimal("-5.00")),
                                      ("charge", Decimal("-30.00")),
                                      ("charge", Decimal("-10.00"))], how
        assert (await w.db.run(ledger.get_customer, cid)).balance == Decimal("55.00")
        assert await w.subs(cid) == [(w.svod, "active"), (w.cas, "active")], how
        assert await w.marked(cid), how  # the outbox's intake, in the change's transaction
        audited = [("cli", "tariff.assign")] * 2 if how == "cli" else \
            [("support-1", "tariff.assign")] * 2 if how == "console" else []
        assert await w.audits(cid) == audited, how
        await w.snapshot(aid, OK, notified)
    await w.sent()
    for how, (cid, aid) in people.items():
        assert w.megogo_services(cid) == {555}, how
        assert w.irdeto.entitlements[f"box-tv-{how}"] == {PRODUCT}, how

    for how, (cid, aid) in people.items():
        notified = w.expect_notify()
        for tariff in (w.svod, w.cas):
            await assign_via(w, how, cid, aid, f"tv-{how}", tariff, False)
        assert await w.subs(cid) == [], how
        assert await w.marked(cid), how
        assert len(await w.audits(cid)) == (4 if how in ("cli", "console") else 0), how
        await w.snapshot(aid, NOT_ENTITLED, notified)
    refunds = {how: await w.kinds(cid) for how, (cid, _) in people.items()}
    assert len({tuple(k) for k in refunds.values()}) == 1, refunds  # the same for every path
    await w.sent()
    for how, (cid, aid) in people.items():
        assert w.megogo_services(cid) == set(), how
        assert w.irdeto.entitlements[f"box-tv-{how}"] == set(), how


@pytest_twisted.ensureDeferred
async def test_a_subscriber_connects_only_what_the_money_covers_and_only_where_we_charge(world):
    # The subscriber's own entry points (the cabinet, the device API) refuse a tariff the
    # balance does not cover, changing nothing -- not the operator's debt of an assignment
    # (the account blocked for its owner's click) -- and refuse every change in the modes
    # where tariffs are the external billing's (a tariff taken there would be free).
    w = world
    full = build(make_config(**{**SECTIONS, "billing": {"mode": "full"}}), reactor, w.db)
    for how in ("widgets", "tvmw"):
        login = f"poor-{how}"
        cid, aid = await w.customer(login, "20.00")
        await w.db.execute("DELETE FROM vod_dirty")
        if how == "widgets":
            browser = await w.cabinet(login, [w.svod])
            _, hidden = await browser.page()
            r, page = await browser.post("/tariff", {**hidden, "tariff_id": str(w.svod),
                                                     "action": "connect"})
            assert r.code == 400 and "does not cover" in page
        else:
            device = await w.device(login)
            answer = await device("customer/tariff/subscribe", tariff_id=w.svod)
            assert answer["error"] == 2, answer
        assert await w.subs(cid) == [] and await w.kinds(cid) == [], how
        assert await w.account(aid) == (True, ledger.ACTIVE), how
        assert not await w.marked(cid), how

        # [billing] mode = "full": neither connects nor disconnects anything.
        w.app, saved = full, w.app
        w.http = in_memory_client(full.root)
        await w.db.run(engine.assign, w.cfg.billing, aid, w.cas, at=datetime.now(timezone.utc))
        for on in (True, False):
            tariff = w.svod if on else w.cas
            if how == "widgets":
                browser = await w.cabinet(login, [tariff])
                _, hidden = await browser.page()
                r, page = await browser.post("/tariff", {
                    **hidden, "tariff_id": str(tariff),
                    "action": "connect" if on else "disconnect"})
                assert r.code == 400 and "cannot be changed" in page
            else:
                device = await w.device(login)
                answer = await device(f"customer/tariff/{'subscribe' if on else 'unsubscribe'}",
                                      tariff_id=tariff)
                assert answer["error"] == 4, answer
        assert await w.subs(cid) == [(w.cas, "active")], how
        w.app, w.http = saved, in_memory_client(saved.root)


# -- block, unblock ------------------------------------------------------------------------------
async def block_via(w: World, how: str, cid: int, aid: int, login: str, on: bool) -> None:
    if how == "cli":
        await w.cli("account", "unblock" if on else "block", aid)
    elif how == "billing_api":
        await w.billing.ok(f"account/{'activate' if on else 'deactivate'}", {"abonement": login})
    else:
        await w.console(actions.set_account_state, w.operator, cid, aid, on, "fraud check")


@pytest_twisted.ensureDeferred
async def test_a_block_and_unblock_by_every_entry_point(world):
    w = world
    people = {}
    for how in ("cli", "billing_api", "console"):
        cid, aid = people[how] = await w.customer(f"bl-{how}", "100.00")
        for tariff in (w.svod, w.cas):
            await w.db.run(engine.assign, w.cfg.billing, aid, tariff,
                           at=datetime.now(timezone.utc))
    await w.sent()
    devices = {how: await w.device(f"bl-{how}") for how in people}
    cabinets = {how: await w.cabinet(f"bl-{how}") for how in people}
    for how, (cid, aid) in people.items():
        assert w.irdeto.entitlements[f"box-bl-{how}"] == {PRODUCT}
        await w.db.execute("DELETE FROM vod_dirty")
        notified = w.expect_notify()
        await block_via(w, how, cid, aid, f"bl-{how}", False)
        assert await w.account(aid) == (False, ledger.BLOCK if how != "billing_api"
                                        else "INACTIVE"), how
        await w.snapshot(aid, BLOCKED, notified)
        # The device's TV session ended (migration 0015's trigger), whoever blocked.
        assert await w.tv_sessions(aid) == 0, how
        assert (await devices[how]("channel/list"))["error"] == -1, how
        # The cabinet stays open: a blocked account sees there why, and pays.
        html, _ = await cabinets[how].page()
        assert 'id="login"' not in html and 'id="balance"' in html, how
        # Irdeto entitles the devices of active accounts: the block reaches it too.
        assert await w.marked(cid), how
        await w.sent()
        assert w.irdeto.entitlements[f"box-bl-{how}"] == set(), how
        # MEGOGO is the customer's (its tariff is not the account's state): unchanged.
        assert w.megogo_services(cid) == {555}, how
        notified = w.expect_notify()
        await block_via(w, how, cid, aid, f"bl-{how}", True)
        assert await w.account(aid) == (True, ledger.ACTIVE), how
        await w.snapshot(aid, OK, notified)
        await w.sent()
        assert w.irdeto.entitlements[f"box-bl-{how}"] == {PRODUCT}, how
        assert [a for _, a in await w.audits(cid)] == (
            [] if how == "billing_api" else ["account.block", "account.unblock"]), how


# -- device unbind ------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_a_device_unbound_by_every_entry_point(world):
    w = world
    for how in ("cli", "billing_api", "console"):
        login = f"unbind-{how}"
        cid, aid = await w.customer(login, "100.00")
        await w.db.run(engine.assign, w.cfg.billing, aid, w.cas, at=datetime.now(timezone.utc))
        await w.sent()
        assert w.irdeto.entitlements[f"box-{login}"] == {PRODUCT}
        device = await w.device(login)
        device_id = await w.db.fetchval("SELECT id FROM devices WHERE uid = %s", (f"box-{login}",))
        if how == "cli":
            await w.cli("device", "unbind", f"box-{login}")
        elif how == "billing_api":
            await w.billing.ok("account/device/delete", {"abonement": login,
                                                          "device_id": device_id})
        else:
            await w.console(actions.unbind_device, w.operator, cid, device_id, "box returned")
        assert await w.db.fetchval("SELECT count(*) FROM devices WHERE account_id = %s",
                                   (aid,)) == 0, how
        # Its TV session ended (migration 0023), its CAS entitlement withdrawn.
        assert await w.tv_sessions(aid) == 0, how
        assert (await device("channel/list"))["error"] == -1, how
        await w.sent()
        assert w.irdeto.entitlements[f"box-{login}"] == set(), how
        # On the customer's card in the audit journal, whoever unbound it.
        assert [a for _, a in await w.audits(cid)] == (
            [] if how == "billing_api" else ["device.unbind"]), how


# -- promised payments ---------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_a_promise_by_every_entry_point_settles_the_debt(world):
    w = world
    for how in ("cli", "console"):
        login = f"promise-{how}"
        cid, aid = await w.customer(login)
        await w.db.run(engine.assign, w.cfg.billing, aid, w.svod, at=datetime.now(timezone.utc))
        assert await w.account(aid) == (False, ledger.DEBT)
        notified = w.expect_notify()
        if how == "cli":
            await w.cli("customer", "promise", cid, "--amount", "35", "--days", "3")
        else:
            await w.console(actions.promise, w.cfg.billing, w.operator, cid, Decimal("35"), 3,
                            "pays on Monday")
        assert await w.kinds(cid) == [("promise", Decimal("35.00")),
                                      ("activation", Decimal("-5.00")),
                                      ("charge", Decimal("-30.00"))], how
        assert await w.account(aid) == (True, ledger.ACTIVE), how
        await w.snapshot(aid, OK, notified)
        assert [a for _, a in await w.audits(cid)] == ["promise.grant"], how


# -- a film bought -------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_a_film_bought_by_every_entry_point(world):
    w = world
    await w.vod.syncs["megogo"].sync_bytes(feed(tvod_obj(9, "Nine")))
    vid = await w.db.fetchval("SELECT id FROM vod_titles WHERE external_id = '9'")
    for how in ("cli", "tvmw"):
        login = f"film-{how}"
        cid, aid = await w.customer(login, "100.00")
        if how == "cli":
            await w.cli("vod", "buy", "--account", aid, "--provider", "megogo", "--id", "9",
                        "--purchase-id", "P-1")
        else:
            device = await w.device(login)
            await device.ok("video/action", vid=vid, action="buy")
        # Debited through the ledger, the grant queued in the same transaction.
        assert await w.kinds(cid) == [("tvod", Decimal("-30.00"))], how
        await w.sent()
        assert [t for t, _ in w.megogo.titles[user_id(w.cfg.megogo, cid)]] == ["9"], how
        assert [a for _, a in await w.audits(cid)] == (["vod.buy"] if how == "cli" else []), how


# -- passwords -----------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_a_password_changed_by_every_entry_point_ends_tv_and_cabinet_sessions(world):
    w = world
    new = "new-pass-2"
    for how in ("billing_api", "widgets", "tvmw", "console"):
        login = f"pw-{how}"
        cid, aid = await w.customer(login)
        device = await w.device(login)
        watcher = await w.cabinet(login)  # a cabinet left open in another browser
        if how == "billing_api":
            await w.billing.ok("account/modify", {"abonement": login, "password": new})
        elif how == "widgets":
            browser = await w.cabinet(login)
            page = await browser.submit("/password", password=PASSWORD, new_password=new,
                                        new_password2=new, account_id=str(aid))
            assert 'role="status"' in page and 'id="login"' not in page
            # The browser that changed it (giving the current password) stays logged in.
            assert 'id="login"' not in (await browser.page())[0]
        elif how == "tvmw":
            await device.ok("account/password/change", old_password=PASSWORD,
                            new_password=new)
        else:
            await w.console(actions.account_password, w.operator, cid, aid,
                            ledger.hash_password(new), "forgot it")
        assert (await password_login(w.db, login, new)).id == aid, how
        assert await w.tv_sessions(aid) == 0, how
        assert (await device("channel/list"))["error"] == -1, how
        # And the cabinet's sessions end too: the old password opens nothing any more.
        assert 'id="login"' in (await watcher.page())[0], how
        assert [a for _, a in await w.audits(cid)] == (
            ["account.password"] if how == "console" else []), how


# -- a new account of a customer in debt ---------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_a_new_account_of_a_customer_in_debt_starts_in_debt_by_every_entry_point(world):
    w = world
    for how in ("cli", "billing_api", "widgets"):
        login = f"debt-{how}"
        cid, aid = await w.customer(login)
        await w.db.run(engine.assign, w.cfg.billing, aid, w.svod, at=datetime.now(timezone.utc))
        assert await w.account(aid) == (False, ledger.DEBT)
        notified = w.expect_notify()
        if how == "cli":
            new = (await w.cli("account", "create", "--login", f"{login}-2", "--customer",
                               cid))["id"]
        elif how == "billing_api":
            new = (await w.billing.ok("account/create", {"customer_id": cid,
                                                          "abonement": f"{login}-2"}))[
                "account_id"]
        else:
            browser = await w.cabinet(login)
            page = await browser.submit("/account")
            added = re.search(r'id="new-login">([^<]+)<', page).group(1)
            new = (await w.db.run(ledger.find_account_by_login, added)).id
        # The customer's tariffs cover it, and the customer cannot pay them.
        assert await w.account(new) == (False, ledger.DEBT), how
        await w.snapshot(new, BLOCKED, notified)


# -- money in ------------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_money_in_by_every_entry_point_settles_the_debt_once(world):
    w = world
    terminal = Terminal(w.http, reactor)
    for how, kind in (("payment", "payment"), ("billing_api", "transaction"),
                      ("console", actions.MANUAL)):
        login = f"money-{how}"
        cid, aid = await w.customer(login)
        notified = w.expect_notify()
        await w.db.run(engine.assign, w.cfg.billing, aid, w.svod, at=datetime.now(timezone.utc))
        assert await w.account(aid) == (False, ledger.DEBT)
        await w.snapshot(aid, BLOCKED, notified)
        notified = w.expect_notify()
        for _attempt in range(2):  # the same request twice: credited once
            if how == "payment":
                assert (await terminal.pay(login, "35.00", txn_id=f"9{aid}")).result == 0
            elif how == "billing_api":
                await w.billing("transaction/create", {"customer_id": cid, "id": f"T-{aid}",
                                                       "amount": "35.00"})
            else:
                await w.console(actions.adjust, w.cfg.billing, w.operator, cid,
                                Decimal("35.00"), "cash at the office", f"form-key-{aid:010d}")
        # Debt settled in the crediting transaction: the charge taken, the account back.
        assert await w.kinds(cid) == [(kind, Decimal("35.00")),
                                      ("activation", Decimal("-5.00")),
                                      ("charge", Decimal("-30.00"))], how
        assert await w.account(aid) == (True, ledger.ACTIVE), how
        assert await w.subs(cid) == [(w.svod, "active")], how
        await w.snapshot(aid, OK, notified)
        # A receipt for a payment only (the Billing API's money is the external billing's
        # to fiscalize; a manual credit is no sale).
        receipts = await w.db.fetchval(
            "SELECT count(*) FROM receipt_jobs j JOIN payments p ON p.id = j.payment_id"
            " WHERE p.customer_id = %s", (cid,))
        assert receipts == (1 if how == "payment" else 0), how
        assert [a for _, a in await w.audits(cid)] == (
            ["money.credit"] if how == "console" else []), how


# -- deletion (the Billing API's alone) ----------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_an_account_deleted_ends_every_session_and_every_entitlement(world):
    w = world
    cid, aid = await w.customer("gone", "100.00")
    for tariff in (w.svod, w.cas):
        await w.db.run(engine.assign, w.cfg.billing, aid, tariff, at=datetime.now(timezone.utc))
    await w.sent()
    assert w.irdeto.entitlements["box-gone"] == {PRODUCT} and w.megogo_services(cid) == {555}
    device, cabinet = await w.device("gone"), await w.cabinet("gone")
    notified = w.expect_notify()
    await w.billing.ok("account/delete", {"account_id": aid})
    await w.snapshot(aid, BLOCKED, notified)
    assert await w.tv_sessions(aid) == 0 and (await device("channel/list"))["error"] == -1
    assert 'id="login"' in (await cabinet.page())[0]
    await w.sent()
    assert w.irdeto.entitlements["box-gone"] == set() and w.megogo_services(cid) == set()
