"""
``smartyd-admin`` runs on the daemon's own assembly (issue 24): each command
that moves money or entitlements, run as operators run it -- a separate
process on the same database, partners on a loopback port -- has the side
effects the daemon's own paths have: autopayment before the charging run
suspends anyone, payment settlement and the fiscal receipt for what a gateway
command credits, and the entitlement NOTIFY a running snapshot acts on.
"""

from __future__ import annotations

import json
import os
import sys
from decimal import Decimal

import pytest
import pytest_twisted
from twisted.internet import reactor, utils
from twisted.internet.task import Clock
from twisted.web.server import Site

from fakes.assist import FakeAssist
from fakes.payture import FakePayture
from smartyd import catalog, ledger
from smartyd.billing import engine
from smartyd.config import Billing
from smartyd.fiscal import jobs
from smartyd.streams.entitlements import BLOCKED, NOT_ENTITLED, OK
from streams_world import within
from test_payture_cards import LATER, NOW, Env as PaytureEnv, debtor, state_of

PAYTURE = ('[payture]\nenabled = true\nhost = "{url}"\nmerchant_pay_key = "MerchantPay"\n'
           'merchant_add_key = "MerchantAdd"\npassword = "payture-pass"\n')
ASSIST = ('[assist]\nenabled = true\ngeneration = "legacy"\nshop_id = "111111"\n'
          'login = "shoplogin"\npassword = "shoppass1"\nserver = "{url}"\n')
DREAMKAS = '[dreamkas]\nenabled = true\ntoken = "t"\n'


@pytest_twisted.async_yield_fixture
async def serve():
    """Serve a fake partner on a loopback port (the admin is another process): its base URL."""
    ports = []

    def listen(resource) -> str:
        port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
        ports.append(port)
        return f"http://127.0.0.1:{port.getHost().port}"

    yield listen
    for port in ports:
        await port.stopListening()


@pytest.fixture
def cli(tmp_path, pg_dsn):
    """``smartyd-admin`` as a process, the reactor running meanwhile (fakes, NOTIFY)."""

    async def run(*args, config: str = "") -> dict:
        path = tmp_path / "smartyd.toml"
        path.write_text(f'[database]\ndsn = "{pg_dsn}"\n'
                        f'[log]\nfile = "{tmp_path}/smartyd.jsonl"\n{config}')
        out, err, code = await utils.getProcessOutputAndValue(
            sys.executable, ["-m", "smartyd.admin", "--config", str(path), *args],
            env=dict(os.environ))
        assert code == 0, err.decode()
        return json.loads(out)

    return run


async def receipt_of(db, customer_id: int):
    """The receipt job of the customer's (one) payment, None when none was queued."""
    payment_id = await db.fetchval("SELECT id FROM payments WHERE customer_id = %s",
                                   (customer_id,))
    assert payment_id is not None
    return await db.run(jobs.get_by_payment, payment_id)


async def in_debt(db, login: str, price: str = "300.00"):
    """An account whose customer cannot pay its tariff: suspended, the account in DEBT."""
    account = await db.run(ledger.create_account, login, "")
    tariff = await db.run(catalog.create_tariff, f"t-{login}", price)
    await db.run(engine.assign, Billing(), account.id, tariff["id"], at=NOW)
    assert (await db.run(ledger.get_account, account.id)).status_reason == ledger.DEBT
    return account


# -- money -------------------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_billing_run_charges_the_bound_card_before_it_suspends(db, metrics, serve, cli):
    fake = FakePayture()
    url = serve(fake.app.resource())
    env = PaytureEnv(db, metrics, fake, Clock())  # binds the card (in-process, the same fake)
    account = await debtor(env, balance="250.00")
    cid = account.customer_id
    out = await cli("billing", "run", "--at", LATER.isoformat(),
                    config=PAYTURE.format(url=url) + DREAMKAS)
    # 50.00 missing: the card is charged (autopay_min 100.00) and the period is paid.
    assert out == {"charged": 1, "amount": "300.00", "suspended": 0, "reactivated": 0}
    assert [c["amount"] for c in fake.charges] == [10000]
    balance, states, payments = await state_of(db, cid)
    assert (balance, states) == (Decimal("50.00"), ["active"])
    assert payments == [(fake.charges[0]["order"], Decimal("100.00"))]
    shown = await db.run(ledger.get_account, account.id)
    assert (shown.active, shown.status_reason) == (True, ledger.ACTIVE)
    assert (await receipt_of(db, cid)).state == "queued"  # the daemon's payment hooks


@pytest_twisted.ensureDeferred
async def test_payture_check_settles_the_customer_and_queues_the_receipt(db, metrics, serve,
                                                                         cli):
    fake = FakePayture()
    url = serve(fake.app.resource())
    env = PaytureEnv(db, metrics, fake, Clock())
    account = await in_debt(db, "payer")
    order, page = await env.service.create_order(account.id, "300.00", "10.0.0.1")
    fake.pay_on_page(page.split("SessionId=")[1])
    out = await cli("payture", "check", order.order_number,
                    config=PAYTURE.format(url=url) + DREAMKAS)
    assert out["outcome"] == "credited"
    shown = await db.run(ledger.get_account, account.id)
    assert (shown.active, shown.status_reason, shown.balance) == (True, ledger.ACTIVE, 0)
    assert [s["state"] for s in await db.run(catalog.customer_subscriptions,
                                             account.customer_id)] == ["active"]
    assert (await receipt_of(db, account.customer_id)).state == "queued"


@pytest_twisted.ensureDeferred
async def test_assist_poll_settles_the_customer_and_queues_the_receipt(db, serve, cli):
    fake = FakeAssist()
    config = ASSIST.format(url=serve(fake.app.resource())) + DREAMKAS
    account = await in_debt(db, "assisted")
    out = await cli("assist", "order", "--account", str(account.id), "--amount", "300",
                    config=config)
    number = out["order"]["order_number"]
    fake.pay(number, "300.00", "Authorized")
    out = await cli("assist", "poll", config=config)
    assert out["outcome"] == "ok" and out["credited"] == [number]
    shown = await db.run(ledger.get_account, account.id)
    assert (shown.active, shown.status_reason, shown.balance) == (True, ledger.ACTIVE, 0)
    assert (await receipt_of(db, account.customer_id)).state == "queued"


# -- entitlements: what a running snapshot sees ------------------------------------------------------
async def until(entitlements, account: int, channel: int, want: str) -> None:
    """Wait (reload by reload, 10 s at most each) for the snapshot to answer ``want``."""
    while entitlements.snapshot.entitlement(account, channel) != want:
        await within(entitlements.next_reload(), 10)


@pytest_twisted.ensureDeferred
async def test_block_and_unblock_reach_a_running_snapshot(db, world, entitlements, cli):
    await until(entitlements, world.alice, world.ch1, OK)
    out = await cli("account", "block", str(world.alice))
    assert out["status"] == "blocked"
    await until(entitlements, world.alice, world.ch1, BLOCKED)
    await cli("account", "unblock", str(world.alice))
    await until(entitlements, world.alice, world.ch1, OK)


@pytest_twisted.ensureDeferred
async def test_tariff_promise_and_removal_reach_a_running_snapshot(db, world, entitlements,
                                                                  cli):
    bob = world.bob
    cid = (await db.run(ledger.get_account, bob)).customer_id
    await until(entitlements, bob, world.ch1, NOT_ENTITLED)
    # Assigned with no money: suspended at once, the account in DEBT, the stream refused.
    out = await cli("tariff", "assign", str(bob), str(world.basic))
    assert out["subscription"]["state"] == "suspended"
    await until(entitlements, bob, world.ch1, BLOCKED)
    # A new account of a customer in debt starts in DEBT (the customer is settled).
    second = await cli("account", "create", "--login", "bob-tv2", "--customer", str(cid))
    assert second["status_reason"] == ledger.DEBT
    await until(entitlements, second["id"], world.ch1, BLOCKED)
    # A promised payment pays the period: the account is back and entitled.
    await cli("customer", "promise", str(cid), "--amount", "100", "--days", "3")
    await until(entitlements, bob, world.ch1, OK)
    await until(entitlements, second["id"], world.ch1, NOT_ENTITLED)  # active, bob's tariff
    assert (await db.run(ledger.get_customer, cid)).balance == 0
    await cli("tariff", "remove", str(bob), str(world.basic))
    await until(entitlements, bob, world.ch1, NOT_ENTITLED)
