"""
The built-in billing's rules, on the real database with explicit moments
(no sleeps, no wall clock): period and daily charging, calendar months,
debt and reactivation by a payment, concurrent runs, promises, refunds,
the modes that never charge, and balance == ledger sum throughout.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from urllib.parse import urlencode

import pytest
import pytest_twisted
from twisted.internet import defer, task

from conftest import make_config
from fakes import in_memory_client
from smartyd import catalog, ledger, osmp, payments, ppc
from smartyd.billing import engine
from smartyd.billing.periods import Period, add_months, daily_amount
from smartyd.config import Billing
from smartyd.streams.entitlements import load_snapshot
from testapp import build

UTC = timezone.utc
T0 = datetime(2024, 1, 31, 12, 0, tzinfo=UTC)
BUILTIN = Billing()
DAILY = Billing(charge="daily")


def D(s) -> Decimal:
    return Decimal(s)


async def customer_with(db, login="alice", money="0"):
    account = await db.run(ledger.create_account, login)
    if Decimal(money):
        await db.run(ledger.credit, account.customer_id, money, "payment", "seed",
                     f"seed:{login}")
    return account


async def tariff(db, name="basic", price="300.00", **kw):
    ch = await db.run(catalog.create_channel, f"ch-{name}", "http://s.example/$token")
    return (await db.run(catalog.create_tariff, name, price, [ch["id"]], **kw))["id"], ch["id"]


async def balance(db, customer_id) -> Decimal:
    return (await db.run(ledger.get_customer, customer_id)).balance


async def sub_of(db, account_id, tariff_id):
    return await db.run(catalog.get_assignment, account_id, tariff_id)


async def consistent(db):
    assert await db.run(ledger.balance_mismatches) == []


async def charges(db, customer_id):
    rows = (await db.run(ledger.statement, customer_id)).rows
    return [(r.kind, r.amount) for r in rows if r.kind in ("charge", "activation")]


# -- pure arithmetic --------------------------------------------------------------------------
def test_calendar_months_are_anchored_and_clamped():
    p = Period(30, months=1)
    assert [p.start(T0, k).date().isoformat() for k in range(5)] == [
        "2024-01-31", "2024-02-29", "2024-03-31", "2024-04-30", "2024-05-31"]
    assert add_months(datetime(2023, 1, 31, tzinfo=UTC), 1).day == 28
    assert p.length_days(T0, 1) == 31  # 29 Feb -> 31 Mar


def test_daily_amounts_sum_to_the_price():
    for price, days in [(D("300.00"), 31), (D("0.15"), 30), (D("100.00"), 3), (D("1.00"), 29)]:
        amounts = [daily_amount(price, days, d) for d in range(days)]
        assert sum(amounts) == price and min(amounts) >= 0


# -- period charging --------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_assign_charges_activation_and_first_period_then_each_month(db):
    a = await customer_with(db, money="1000.00")
    t, _ = await tariff(db, period_months=1, activation_price="50.00")
    out = await db.run(engine.assign, BUILTIN, a.id, t, at=T0)
    assert out["changed"] and out["subscription"]["state"] == "active"
    assert await charges(db, a.customer_id) == [("activation", D("-50.00")), ("charge", D("-300.00"))]
    sub = await sub_of(db, a.id, t)
    assert sub["paid_until"] == datetime(2024, 2, 29, 12, tzinfo=UTC)

    # 31 Jan -> 29 Feb -> 31 Mar: a run on 31 Mar catches up both, in order.
    res = await engine.run(db, BUILTIN, datetime(2024, 3, 31, 12, tzinfo=UTC))
    assert (res.charged, res.amount) == (2, D("600.00"))
    sub = await sub_of(db, a.id, t)
    assert sub["paid_until"] == datetime(2024, 4, 30, 12, tzinfo=UTC)
    assert await balance(db, a.customer_id) == D("50.00")
    # The same moment again charges nothing.
    again = await engine.run(db, BUILTIN, datetime(2024, 3, 31, 12, tzinfo=UTC))
    assert again.charged == 0 and await balance(db, a.customer_id) == D("50.00")
    await consistent(db)


@pytest_twisted.ensureDeferred
async def test_day_periods_are_fixed(db):
    a = await customer_with(db, money="100.00")
    t, _ = await tariff(db, price="10.00", period_days=7)
    await db.run(engine.assign, BUILTIN, a.id, t, at=T0)
    await engine.run(db, BUILTIN, T0 + timedelta(days=21))
    sub = await sub_of(db, a.id, t)
    assert sub["paid_until"] == T0 + timedelta(days=28)
    assert await balance(db, a.customer_id) == D("60.00")


# -- daily charging ---------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_daily_charging_sums_to_the_price_over_a_calendar_month(db):
    a = await customer_with(db, money="1000.00")
    t, _ = await tariff(db, price="300.00", period_months=1)
    start = datetime(2024, 2, 1, tzinfo=UTC)  # February 2024: 29 days
    await db.run(engine.assign, DAILY, a.id, t, at=start)
    assert await charges(db, a.customer_id) == [("charge", D("-10.34"))]
    assert (await sub_of(db, a.id, t))["paid_until"] == start + timedelta(days=1)
    # The last moment of the month: every day of February charged, summing to the price.
    await engine.run(db, DAILY, datetime(2024, 2, 29, 23, 59, tzinfo=UTC))
    rows = await charges(db, a.customer_id)
    assert len(rows) == 29 and -sum(amount for _, amount in rows) == D("300.00")
    assert (await sub_of(db, a.id, t))["paid_until"] == datetime(2024, 3, 1, tzinfo=UTC)
    await consistent(db)


# -- debt, suspension, reactivation -------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_debt_suspends_and_deactivates_only_active_accounts(db):
    a = await customer_with(db, money="300.00")
    blocked = await db.run(ledger.create_account, "alice-tv2", customer_id=a.customer_id)
    await db.run(ledger.set_status, blocked.id, "blocked")
    t, ch = await tariff(db)
    await db.run(engine.assign, BUILTIN, None, t, customer_id=a.customer_id, at=T0)
    snap = await db.run(load_snapshot, 0)
    assert snap.entitlement(a.id, ch) == "ok"

    res = await engine.run(db, BUILTIN, T0 + timedelta(days=30))
    assert (res.charged, res.suspended) == (0, 1)
    assert await balance(db, a.customer_id) == D("0.00")  # nothing charged
    acc = await db.run(ledger.get_account, a.id)
    assert (acc.active, acc.status_reason) == (False, "DEBT")
    other = await db.run(ledger.get_account, blocked.id)
    assert other.status_reason == "BLOCK"  # deactivated for another reason: as it was
    snap = await db.run(load_snapshot, 0)
    assert snap.entitlement(a.id, ch) == "blocked"


@pytest_twisted.ensureDeferred
async def test_credit_limit_allows_exactly_the_limit(db):
    cfg = Billing(credit_limit=D("100.00"))
    a = await customer_with(db, money="200.00")
    t, _ = await tariff(db)
    out = await db.run(engine.assign, cfg, a.id, t, at=T0)
    assert out["subscription"]["state"] == "active"
    assert await balance(db, a.customer_id) == D("-100.00")
    b = await customer_with(db, "bob", money="199.99")
    out = await db.run(engine.assign, cfg, b.id, t, at=T0)
    assert out["subscription"]["state"] == "suspended"
    assert await balance(db, b.customer_id) == D("199.99")


@pytest_twisted.ensureDeferred
async def test_a_payment_resumes_at_once_with_a_new_period(db):
    a = await customer_with(db)
    t, ch = await tariff(db)
    out = await db.run(engine.assign, BUILTIN, a.id, t, at=T0)
    assert out["subscription"]["state"] == "suspended"
    assert not (await db.run(ledger.get_account, a.id)).active
    hook = engine.payment_hook(BUILTIN)
    payment, _ = await db.run(payments.accept, "osmp", "77", None, "500.00", hooks=(hook,),
                              customer_id=a.customer_id)
    sub = await sub_of(db, a.id, t)
    assert sub["state"] == "active"
    assert sub["anchor"] == payment.created  # a new period from the payment's moment
    acc = await db.run(ledger.get_account, a.id)
    assert (acc.active, acc.status_reason, acc.balance) == (True, "ACTIVE", D("200.00"))
    assert (await db.run(load_snapshot, 0)).entitlement(a.id, ch) == "ok"
    await consistent(db)


@pytest_twisted.ensureDeferred
async def test_a_block_is_never_lifted_by_a_payment(db):
    a = await customer_with(db)
    t, _ = await tariff(db)
    await db.run(engine.assign, BUILTIN, a.id, t, at=T0)
    await db.run(ledger.set_status, a.id, "blocked")
    await db.run(payments.accept, "osmp", "78", a.id, "500.00",
                 hooks=(engine.payment_hook(BUILTIN),))
    acc = await db.run(ledger.get_account, a.id)
    assert (acc.active, acc.status_reason) == (False, "BLOCK")
    assert (await sub_of(db, a.id, t))["state"] == "active"


@pytest_twisted.ensureDeferred
async def test_an_osmp_pay_through_the_daemon_reactivates_a_debtor(db, metrics):
    clock = task.Clock()
    clock.advance(time.time())
    cfg = make_config(osmp={"username": "", "allow": ["127.0.0.0/8"]})
    app = build(cfg, clock, db, metrics)
    a = await customer_with(db)
    t, ch = await tariff(db)
    await db.run(engine.assign, BUILTIN, a.id, t, at=engine.utc(clock.seconds()))
    assert not (await db.run(ledger.get_account, a.id)).active
    assert (await db.run(load_snapshot, 0)).entitlement(a.id, ch) == "blocked"

    query = urlencode({"command": "pay", "txn_id": "555", "account": ppc.encode(a.customer_id),
                       "sum": "300.00", "txn_date": osmp.format_txn_date(clock.seconds())})
    response = await in_memory_client(app.root).get(f"http://127.0.0.1/payments/osmp?{query}")
    body = await response.content()
    assert b"<result>0</result>" in body, body
    acc = await db.run(ledger.get_account, a.id)
    assert (acc.active, acc.status_reason, acc.balance) == (True, "ACTIVE", D("0.00"))
    assert (await db.run(load_snapshot, 0)).entitlement(a.id, ch) == "ok"
    await consistent(db)


# -- concurrency -------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_two_runs_at_once_charge_each_period_once(make_db, db):
    t, _ = await tariff(db, price="10.00", period_days=1)
    accounts = []
    for i in range(30):
        a = await customer_with(db, f"u{i}", money="100.00")
        await db.run(engine.assign, BUILTIN, a.id, t, at=T0)
        accounts.append(a)
    other = await make_db(size=4)
    at = T0 + timedelta(days=5)
    results = await defer.gatherResults([
        defer.Deferred.fromCoroutine(engine.run(db, BUILTIN, at, batch=7)),
        defer.Deferred.fromCoroutine(engine.run(other, BUILTIN, at, batch=11)),
    ])
    assert sum(r.charged for r in results) == 30 * 5
    for a in accounts:
        assert await balance(db, a.customer_id) == D("40.00")
    await consistent(db)


@pytest_twisted.ensureDeferred
async def test_balance_equals_ledger_after_concurrent_pays_and_charges(make_db, db):
    t, _ = await tariff(db, price="7.00", period_days=1)
    accounts = []
    for i in range(10):
        a = await customer_with(db, f"p{i}", money="10.00")
        await db.run(engine.assign, BUILTIN, a.id, t, at=T0)
        accounts.append(a)
    pool = await make_db(size=10)
    hook = engine.payment_hook(BUILTIN)
    work = [defer.Deferred.fromCoroutine(engine.run(pool, BUILTIN, T0 + timedelta(days=3)))]
    for i, a in enumerate(accounts):
        for j in range(3):
            work.append(pool.run(payments.accept, "osmp", f"{i}-{j}", a.id, "5.00",
                                 hooks=(hook,)))
    await defer.gatherResults(work)
    await consistent(db)
    assert await db.fetchval("SELECT count(*) FROM payments") == 30


# -- promises -----------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_a_promise_ends_a_debt_and_its_return_can_start_one(db):
    a = await customer_with(db)
    t, _ = await tariff(db, price="100.00", period_days=30)
    await db.run(engine.assign, BUILTIN, a.id, t, at=T0)
    assert (await sub_of(db, a.id, t))["state"] == "suspended"
    out = await db.run(engine.promise, BUILTIN, a.customer_id, "150.00", 5, T0)
    assert out["due"] == (T0 + timedelta(days=5)).isoformat()
    assert (await sub_of(db, a.id, t))["state"] == "active"
    assert await balance(db, a.customer_id) == D("50.00")
    with pytest.raises(engine.BillingError, match="open promise"):
        await db.run(engine.promise, BUILTIN, a.customer_id, "10.00", 5, T0)
    with pytest.raises(engine.BillingError, match="at most"):
        await db.run(engine.promise, BUILTIN, (await customer_with(db, "bob")).customer_id,
                     "1000.01", 5, T0)
    # Before it is due nothing happens; at due it is taken back.
    await engine.run(db, BUILTIN, T0 + timedelta(days=4))
    assert await balance(db, a.customer_id) == D("50.00")
    await engine.run(db, BUILTIN, T0 + timedelta(days=5))
    assert await balance(db, a.customer_id) == D("-100.00")
    kinds = [r.kind for r in (await db.run(ledger.statement, a.customer_id)).rows]
    assert kinds == ["promise", "charge", "promise_return"]
    # The next period finds the debt.
    await engine.run(db, BUILTIN, T0 + timedelta(days=31))
    assert (await sub_of(db, a.id, t))["state"] == "suspended"
    assert (await db.run(ledger.get_account, a.id)).status_reason == "DEBT"
    await consistent(db)


# -- removal, refunds, modes -----------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_remove_stops_charges_and_refunds_the_unused_part(db):
    a = await customer_with(db, money="300.00")
    t, _ = await tariff(db, price="300.00", period_days=30)
    await db.run(engine.assign, BUILTIN, a.id, t, at=T0)
    cfg = Billing(refund_unused=True)
    out = await db.run(engine.remove, cfg, a.id, t, at=T0 + timedelta(days=10))
    assert out == {"changed": True, "refund": "200.00"}
    assert await balance(db, a.customer_id) == D("200.00")
    res = await engine.run(db, BUILTIN, T0 + timedelta(days=90))
    assert res.charged == 0 and await balance(db, a.customer_id) == D("200.00")
    b = await customer_with(db, "bob", money="300.00")
    await db.run(engine.assign, BUILTIN, b.id, t, at=T0)
    out = await db.run(engine.remove, BUILTIN, b.id, t, at=T0 + timedelta(days=10))
    assert out == {"changed": True, "refund": "0.00"}
    await consistent(db)


@pytest.mark.parametrize("mode", ["full", "reduced"])
@pytest_twisted.ensureDeferred
async def test_full_and_reduced_never_charge_and_entitle_while_assigned(db, mode):
    cfg = Billing(mode=mode)
    a = await customer_with(db)
    t, ch = await tariff(db)
    out = await db.run(engine.assign, cfg, a.id, t, at=T0)
    assert out["subscription"]["state"] == "active"
    res = await engine.run(db, cfg, T0 + timedelta(days=365))
    assert res.to_json() == {"charged": 0, "amount": "0.00", "suspended": 0, "reactivated": 0}
    assert await balance(db, a.customer_id) == D("0.00")
    assert (await db.run(load_snapshot, 0)).entitlement(a.id, ch) == "ok"
