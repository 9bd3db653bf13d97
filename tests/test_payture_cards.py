"""
Payture cards (issue 17): card binding in each remember-card mode, the page
template, removal, and autopayment in the charging job -- success, decline,
Payture down, a crash between the charge and its confirmation, and exactly
one credit per confirmed charge (also with two charging runs at once).
Real PostgreSQL, task.Clock, the in-process fake Payture (InPay + eWallet).
"""

from __future__ import annotations

import argparse
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from urllib.parse import parse_qs, urlparse

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import Clock

from conftest import make_config
from fakes.assist import in_memory_client
from fakes.payture import FakePayture
from smartyd import catalog, ledger, operators
from smartyd.admin.billing import cmd_customer
from smartyd.billing import engine
from smartyd.config import ConfigError
from smartyd.gateways import cards
from smartyd.gateways.autopay import RESEND_AFTER, autopay_amount
from smartyd.gateways.ewallet import mask, parse_cards
from smartyd.gateways.payture import CardsUnavailable, binds_card
from smartyd.gateways.wallet import CardNotFound
from smartyd.partners import PartnerError
from smartyd.wiring import build_app

HOST = "https://sandbox3.payture.com"
SETTINGS = {"enabled": True, "host": HOST, "merchant_pay_key": "MerchantPay",
            "merchant_add_key": "MerchantAdd", "password": "payture-pass"}
NOTIFY = "/payments/payture/notify"


# -- pure parts ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode, requested, binds", [
    ("not_checked", None, False), ("not_checked", True, True), ("not_checked", False, False),
    ("checked", None, True), ("checked", False, False), ("checked", True, True),
    ("disable", None, True), ("disable", False, True),
])
def test_binds_card(mode, requested, binds):
    assert binds_card(mode, requested) is binds


def test_config_keys():
    cfg = make_config(payture={**SETTINGS, "template": "", "remember_card": "disable",
                               "autopay_min": "50.00", "autopay_attempts": 2}).payture
    assert (cfg.template, cfg.remember_card, cfg.autopay_min, cfg.autopay_attempts) == (
        "", "disable", Decimal("50.00"), 2)
    assert make_config().payture.template == "Payture"
    for bad, message in [
        ({"template": "Tv"}, "[payture] template"),
        ({"remember_card": "always"}, "[payture] remember_card"),
        ({"autopay_attempts": 0}, "[payture] autopay_attempts"),
        ({"autopay_min": "-1"}, "[payture] autopay_min"),
        ({"merchant_add_key": "", "remember_card": "checked"}, "[payture] merchant_add_key"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            make_config(payture={**SETTINGS, **bad})


def test_get_list_keeps_no_card_number():
    answer, got = parse_cards(
        b'<GetList Success="True" VWUserLgn="u"><Item CardName="411111xxxxxx1112"'
        b' CardId="e5dfa016-27ef-4f8a-9d8d-2d2a4e1f1b11" CardHolder="IVAN" Status="IsActive"'
        b' NoCVV="false" Expired="false"/><Item CardName="5555555555554444" CardId="c2"'
        b' Expired="true"/><Item CardName="x" CardId="bad id"/></GetList>')
    assert answer.success
    assert [c.masked for c in got] == ["411111xxxxxx1112", "555555xxxxxx4444"]
    assert got[1].expired and not got[0].expired
    assert mask("4111111111111111111") == "411111xxxxxxxxx1111"


def test_autopay_amount():
    assert autopay_amount(Decimal("50.00"), Decimal("100.00")) == Decimal("100.00")
    assert autopay_amount(Decimal("300.004"), Decimal("100.00")) == Decimal("300.01")


# -- against the fake Payture ------------------------------------------------------------------------------
class Env:
    def __init__(self, db, metrics, fake, clock, billing=None, **over):
        self.cfg = make_config(payture={**SETTINGS, **over}, billing=billing or {})
        self.db, self.metrics, self.fake, self.clock = db, metrics, fake, clock
        self.app = build_app(self.cfg, reactor=clock, db=db, metrics=metrics,
                             http_client=fake.client(), ready=True)
        self.service = self.app.features["payture"].handle
        self.wallet = self.service.wallet
        self.autopay = self.service.autopay
        self.web = in_memory_client(self.app.root)

    async def account(self, login="alice"):
        return await self.db.run(ledger.create_account, login, ledger.hash_password("pw"))

    async def notify(self, order_id):
        return await self.web.post("http://localhost" + NOTIFY,
                                   data=self.fake.notification(order_id))

    def metric(self, outcome):
        return self.metrics.payture_autopay.labels(outcome)._value.get()


def _session(url: str) -> str:
    return parse_qs(urlparse(url).query)["SessionId"][0]


@pytest.fixture
def fake():
    return FakePayture()


@pytest.mark.parametrize("mode, requested, binds", [
    ("not_checked", None, False), ("not_checked", True, True),
    ("checked", None, True), ("checked", False, False),
    ("disable", False, True), ("disable", None, True),
])
@pytest_twisted.ensureDeferred
async def test_binding_in_each_remember_card_mode(db, metrics, fake, mode, requested, binds):
    env = Env(db, metrics, fake, Clock(), remember_card=mode)
    account = await env.account()
    order, url = await env.service.create_order(account.id, "150.00", "10.0.0.1",
                                                remember=requested)
    init = fake.inits[-1]
    assert init["path"] == ("/vwapi/Init" if binds else "/apim/Init")
    assert init["TemplateTag"] == "Payture"
    assert url.startswith(HOST + ("/vwapi/Pay?" if binds else "/apim/Pay?"))
    fake.pay_on_page(_session(url))
    response = await env.notify(order.order_number)
    assert response.code == 200
    customer = await db.run(ledger.get_customer, account.customer_id)
    assert customer.balance == Decimal("150.00")
    stored = await db.run(cards.list_cards, account.customer_id)
    if binds:
        assert [c["masked"] for c in stored] == ["411111xxxxxx1112"]
        assert init["VWUserLgn"] == f"smartyd-{account.customer_id}"
        assert list(fake.users) == [init["VWUserLgn"]]
        assert stored[0]["card_id"] in fake.users[init["VWUserLgn"]]["cards"]
    else:
        assert stored == [] and fake.users == {}
    dump = await db.run(lambda tx: tx.fetchval(
        "SELECT string_agg(t::text, ' ') FROM payture_cards t"))
    assert "4111111111111112" not in (dump or "")


@pytest_twisted.ensureDeferred
async def test_template_override_and_binding_over_http(db, metrics, fake):
    env = Env(db, metrics, fake, Clock(), template="Orsay")
    await env.account()
    base = "http://localhost/payments/payture/order"
    r = await env.web.post(base, data={"login": "alice", "password": "pw", "amount": "10.00",
                                       "template_of_payment_page": "", "remember_card": "1"})
    assert r.code == 200
    assert fake.inits[-1]["path"] == "/vwapi/Init" and "TemplateTag" not in fake.inits[-1]
    r = await env.web.post(base, data={"login": "alice", "password": "pw", "amount": "10.00"})
    assert r.code == 200 and fake.inits[-1]["TemplateTag"] == "Orsay"
    assert fake.inits[-1]["path"] == "/apim/Init"
    count = len(fake.inits)
    for bad in ({"template": "Tizen"}, {"remember_card": "maybe"}):
        r = await env.web.post(base, data={"login": "alice", "password": "pw",
                                           "amount": "10.00", **bad})
        assert r.code == 400
    assert len(fake.inits) == count


@pytest_twisted.ensureDeferred
async def test_binding_refused_without_add_merchant(db, metrics, fake):
    env = Env(db, metrics, fake, Clock(), merchant_add_key="")
    account = await env.account()
    assert env.wallet is None and env.autopay is None
    with pytest.raises(CardsUnavailable):
        await env.service.create_order(account.id, "10.00", "10.0.0.1", remember=True)
    assert fake.inits == []


async def bind(env, customer_id, **kw) -> str:
    user = await env.wallet.user(customer_id)
    card = env.fake.add_card(user.login, **kw)
    await env.wallet.sync(customer_id)
    return card


@pytest_twisted.ensureDeferred
async def test_cards_and_removal(db, metrics, fake):
    env = Env(db, metrics, fake, Clock())
    account = await env.account()
    cid = account.customer_id
    first = await bind(env, cid)
    second = await bind(env, cid, number="5555555555554444")
    listed = await env.wallet.cards(cid)
    assert listed["source"] == "payture" and {c["card_id"] for c in listed["cards"]} == {
        first, second}
    out = await env.wallet.remove(cid, first)
    assert [c["card_id"] for c in out["cards"]] == [second]
    login = f"smartyd-{cid}"
    assert list(fake.users[login]["cards"]) == [second]
    with pytest.raises(CardNotFound):
        await env.wallet.remove(cid, first)
    # Payture down: nothing forgotten, and the stored list is still shown.
    fake.modes = ["500"]
    with pytest.raises(PartnerError):
        await env.wallet.remove(cid, second)
    assert [c["card_id"] for c in await db.run(cards.list_cards, cid)] == [second]
    fake.modes = ["500"]
    shown = await env.wallet.cards(cid)
    assert shown["source"] == "stored" and [c["card_id"] for c in shown["cards"]] == [second]
    # A card removed at Payture's side goes from ours on the next GetList.
    del fake.users[login]["cards"][second]
    assert (await env.wallet.cards(cid))["cards"] == []


@pytest_twisted.ensureDeferred
async def test_customer_autopay_command(db, metrics, fake):
    env = Env(db, metrics, fake, Clock())
    account = await env.account()
    args = argparse.Namespace(action="autopay", id=account.customer_id, state="on")
    out = await cmd_customer(db, args, env.cfg, env.clock, env.app)
    assert out["autopay"] is True and out["cards"] == 0 and "note" in out
    [row] = await db.run(operators.audit_rows, customer_id=account.customer_id)
    assert (row["actor"], row["action"], row["before"], row["after"]) == (
        "cli", "customer.autopay", {"autopay": False}, {"autopay": True})
    assert await db.run(cards.autopay_enabled, account.customer_id)
    out = await cmd_customer(db, argparse.Namespace(action="autopay", id=account.customer_id, state="off"),
                             env.cfg, env.clock, env.app)
    assert out["autopay"] is False
    with pytest.raises(ledger.CustomerNotFound):
        await cmd_customer(db, argparse.Namespace(action="autopay", id=999999, state="on"), env.cfg, env.clock, env.app)


# -- autopayment -----------------------------------------------------------------------------------------
NOW = datetime.now(timezone.utc).replace(microsecond=0)
LATER = NOW + timedelta(days=31)  # the second period is due


async def debtor(env, balance="250.00", price="300.00", autopay=True, card=True,
                 login="alice"):
    """A customer whose first period was paid and who has ``balance`` for the second."""
    account = await env.account(login)
    cid = account.customer_id
    tariff = await env.db.run(catalog.create_tariff, f"basic-{login}", price)
    await env.db.run(ledger.credit, cid, price, "payment", "seed", f"seed:{cid}")
    await env.db.run(engine.assign, env.cfg.billing, account.id, tariff["id"], at=NOW)
    if Decimal(balance):
        await env.db.run(ledger.credit, cid, balance, "payment", "seed", f"seed2:{cid}")
    if card:
        await bind(env, cid)
    if autopay:
        await env.db.run(cards.set_autopay, cid, True)
    return account


async def state_of(db, cid):
    subs = await db.run(catalog.customer_subscriptions, cid)
    customer = await db.run(ledger.get_customer, cid)
    payments = await db.run(lambda tx: tx.fetchall(
        "SELECT external_id, amount FROM payments WHERE customer_id = %s ORDER BY id", (cid,)))
    return customer.balance, [s["state"] for s in subs], payments


@pytest_twisted.ensureDeferred
async def test_autopay_success(db, metrics, fake):
    env = Env(db, metrics, fake, Clock())
    account = await debtor(env, balance="250.00")
    cid = account.customer_id
    result = await env.app.billing.handle.run(at=LATER)
    assert result.charged == 1 and result.suspended == 0
    # 50.00 missing, raised to autopay_min (100.00); charged once and credited once.
    assert [c["amount"] for c in fake.charges] == [10000]
    balance, states, payments = await state_of(db, cid)
    assert states == ["active"] and balance == Decimal("50.00")
    assert payments == [(fake.charges[0]["order"], Decimal("100.00"))]
    (attempt,) = await db.run(cards.attempts, cid)
    assert (attempt.state, attempt.attempt, attempt.period) == ("credited", 1, NOW + timedelta(
        days=30))
    assert env.metric("credited") == 1
    assert fake.gets[fake.charges[0]["order"]] >= 1  # GetState confirmed it
    # Nothing is due any more: a second run charges nothing more.
    await env.app.billing.handle.run(at=LATER)
    assert len(fake.charges) == 1


@pytest_twisted.ensureDeferred
async def test_autopay_not_wanted_or_not_needed(db, metrics, fake):
    env = Env(db, metrics, fake, Clock())
    off = await debtor(env, autopay=False, login="off")
    rich = await debtor(env, balance="1000.00", login="rich")
    await env.app.billing.handle.run(at=LATER)
    assert fake.charges == []
    assert (await state_of(db, off.customer_id))[1] == ["suspended"]
    assert (await state_of(db, rich.customer_id))[1] == ["active"]


@pytest_twisted.ensureDeferred
async def test_autopay_declined_falls_to_debt_and_stops_after_the_limit(db, metrics, fake):
    env = Env(db, metrics, fake, Clock(), autopay_attempts=2)
    account = await debtor(env, balance="0.00")
    cid = account.customer_id
    fake.declines = ["AMOUNT_EXCEED", "ISSUER_FAIL", "AMOUNT_EXCEED"]
    for hours in (0, 1, 2, 3):
        await env.app.billing.handle.run(at=LATER + timedelta(hours=hours))
    balance, states, payments = await state_of(db, cid)
    assert states == ["suspended"] and payments == [] and balance == Decimal("0.00")
    acc = await db.run(ledger.get_account, account.id)
    assert (acc.active, acc.status_reason) == (False, ledger.DEBT)
    attempts = await db.run(cards.attempts, cid)
    assert [(a.attempt, a.state, a.err_code) for a in attempts] == [
        (1, "declined", "AMOUNT_EXCEED"), (2, "declined", "ISSUER_FAIL")]
    assert fake.charges == [] and fake.declines == ["AMOUNT_EXCEED"]  # no third try
    assert env.metric("declined") == 2 and env.metric("exhausted") == 2


@pytest_twisted.ensureDeferred
async def test_autopay_payture_down(db, metrics, fake):
    env = Env(db, metrics, fake, Clock())
    account = await debtor(env, balance="0.00")
    cid = account.customer_id
    fake.modes = ["500", "500"]  # Pay, then GetState on the next run
    await env.app.billing.handle.run(at=LATER)
    balance, states, payments = await state_of(db, cid)
    assert states == ["suspended"] and payments == []  # the normal debt rule
    (attempt,) = await db.run(cards.attempts, cid)
    assert attempt.state == "pending" and env.metric("pending") == 1
    await env.app.billing.handle.run(at=LATER + timedelta(minutes=1))
    assert fake.charges == [] and (await db.run(cards.attempts, cid))[0].state == "pending"
    # Back, and the order was never seen: sent again under the same OrderId.
    await env.app.billing.handle.run(at=LATER + RESEND_AFTER)
    assert [c["order"] for c in fake.charges] == [attempt.order_number]
    balance, states, payments = await state_of(db, cid)
    assert states == ["active"] and payments == [(attempt.order_number, Decimal("300.00"))]
    assert [a.state for a in await db.run(cards.attempts, cid)] == ["credited"]


@pytest_twisted.ensureDeferred
async def test_autopay_crash_between_charge_and_confirmation(db, metrics, fake):
    first = Env(db, metrics, fake, Clock())
    account = await debtor(first, balance="0.00")
    cid = account.customer_id
    card = (await db.run(cards.autopay_cards, [cid]))[cid]
    # The first instance claims the attempt and Payture charges the card ...
    attempt, why = await db.run(first.autopay._claim, cid, card, LATER)
    user = await db.run(cards.wallet_user, cid)
    paid = await first.wallet.client.pay(user.login, user.password, card,
                                         attempt.order_number, 30000)
    assert why == "claimed" and paid.success and len(fake.charges) == 1
    # ... and it dies before GetState.  A restarted instance's run finds the
    # pending attempt, confirms it and credits it: no second charge.
    second = Env(db, metrics, fake, Clock())
    await second.app.billing.handle.run(at=LATER)
    balance, states, payments = await state_of(db, cid)
    assert len(fake.charges) == 1
    assert payments == [(attempt.order_number, Decimal("300.00"))]
    assert states == ["active"] and balance == Decimal("0.00")
    assert [a.state for a in await db.run(cards.attempts, cid)] == ["credited"]


@pytest_twisted.ensureDeferred
async def test_exactly_one_credit_per_confirmed_charge(db, metrics, fake):
    env = Env(db, metrics, fake, Clock())
    account = await debtor(env, balance="0.00")
    cid = account.customer_id
    card = (await db.run(cards.autopay_cards, [cid]))[cid]
    attempt, _ = await db.run(env.autopay._claim, cid, card, LATER)
    user = await db.run(cards.wallet_user, cid)
    await env.wallet.client.pay(user.login, user.password, card, attempt.order_number, 30000)
    outcomes = await defer.gatherResults([
        defer.ensureDeferred(env.autopay.resolve(attempt, LATER)) for _ in range(4)])
    assert sorted(outcomes).count("credited") == 1
    assert set(outcomes) <= {"credited", "duplicate"}
    _, _, payments = await state_of(db, cid)
    assert payments == [(attempt.order_number, Decimal("300.00"))]
    assert await db.run(ledger.ledger_sum, cid) == (await db.run(ledger.get_customer, cid)).balance


@pytest_twisted.ensureDeferred
async def test_autopay_get_state_answered_for_another_order_credits_nothing(db, metrics, fake):
    env = Env(db, metrics, fake, Clock())
    account = await debtor(env, balance="0.00")
    cid = account.customer_id
    card = (await db.run(cards.autopay_cards, [cid]))[cid]
    attempt, _ = await db.run(env.autopay._claim, cid, card, LATER)
    fake.register("a1b2c3d4", 30000, "Charged")  # another order, charged for our amount
    fake.answers_for[attempt.order_number] = "a1b2c3d4"
    assert await env.autopay.resolve(attempt, LATER) == "pending"
    assert fake.gets[attempt.order_number] == 1
    balance, _, payments = await state_of(db, cid)
    assert (balance, payments) == (Decimal("0.00"), [])
    assert [a.state for a in await db.run(cards.attempts, cid)] == ["pending"]
    assert metrics.gateway_events.labels("payture", "forged")._value.get() == 1


@pytest_twisted.ensureDeferred
async def test_two_charging_runs_at_once(db, make_db, metrics, fake):
    one = Env(db, metrics, fake, Clock())
    other_db = await make_db()
    other = Env(other_db, metrics, fake, Clock())
    accounts = [await debtor(one, balance="0.00", login=f"c{i}") for i in range(3)]
    results = await defer.gatherResults([
        defer.ensureDeferred(one.app.billing.handle.run(at=LATER)),
        defer.ensureDeferred(other.app.billing.handle.run(at=LATER))])
    # A run that finds the other's charge in flight settles without it (the
    # debt rule; a suspension is possible) -- the other's credit resumes it.
    assert sum(r.charged for r in results) == 3
    assert sorted(c["login"] for c in fake.charges) == sorted(
        f"smartyd-{a.customer_id}" for a in accounts)
    for a in accounts:
        balance, states, payments = await state_of(db, a.customer_id)
        assert states == ["active"] and len(payments) == 1 and balance == Decimal("0.00")
        assert [x.state for x in await db.run(cards.attempts, a.customer_id)] == ["credited"]
