"""
The one-statement accept (migration 0011, issue 13): C{payment_accept} and
C{payee_lookup} called once, on the real test database.

The OSMP tests (tests/test_osmp.py, tests/test_osmp_service.py) drive the
same function through the service; these pin what the service cannot show:
a pay and a check are one round trip each, the hooks' SQL forms (the billing's
settlement, the receipt job) do exactly what their Python forms do, and the
SHA-1/uuid5 the receipt job's externalId needs is Python's.
"""

from __future__ import annotations

import hashlib
import random
from datetime import timedelta
from decimal import Decimal

import pytest_twisted
from twisted.internet import task

from conftest import make_config
from smartyd import catalog, fiscal, ledger, payments, ppc
from smartyd.billing import engine
from smartyd.config import Billing
from smartyd.fiscal import jobs
from smartyd.metrics import Metrics
from smartyd.osmp.protocol import format_txn_date, parse_request
from smartyd.osmp.service import OSMPService

BUILTIN = Billing()
# The daemon's hooks in builtin mode with [dreamkas] always_fiscalize.
DAEMON_HOOKS = (engine.payment_hook(BUILTIN), fiscal.enqueue_receipt)


def service(db, hooks=DAEMON_HOOKS) -> OSMPService:
    clock = task.Clock()
    clock.advance(1_772_366_400)
    return OSMPService(make_config().osmp, db, clock, Metrics(), hooks=hooks)


def request(s: OSMPService, command: str, account: str, txn_id: str, sum: str = "10.00"):
    params = {b"command": [command.encode()], b"txn_id": [txn_id.encode()],
              b"account": [account.encode()], b"sum": [sum.encode()]}
    if command == "pay":
        params[b"txn_date"] = [format_txn_date(s.clock.seconds()).encode()]
    return parse_request(params, s.cfg.account)


async def counts(db) -> tuple[int, int, int]:
    return tuple((await db.fetchall(
        "SELECT (SELECT count(*) FROM payments), (SELECT count(*) FROM ledger),"
        " (SELECT count(*) FROM receipt_jobs)"))[0])


@pytest_twisted.ensureDeferred
async def test_sha1_and_the_receipt_uuid5_are_pythons(db):
    rng = random.Random(13)
    for n in list(range(0, 130)) + [1000]:
        data = bytes(rng.randrange(256) for _ in range(n))
        got = await db.fetchval("SELECT smartyd_sha1(%s)", (data,))
        assert bytes(got) == hashlib.sha1(data).digest(), n
    for payment_id, provider, external_id in [
            (1, "osmp", "1"), (987654321012, "payture", "order-" + "x" * 80),
            (42, "assist", "счёт №5"), (7, "osmp", "")]:
        assert await db.fetchval("SELECT receipt_external_id(%s, %s, %s)",
                                 (payment_id, provider, external_id)) \
            == jobs.external_id_for(payment_id, provider, external_id)


@pytest_twisted.ensureDeferred
async def test_a_pay_and_a_check_are_one_round_trip_each_with_the_daemons_hooks(db):
    a = await db.run(ledger.create_account, "alice", account_id=42)
    s = service(db)
    code = ppc.encode(a.customer_id)

    before = db.round_trips
    first = await s.pay(request(s, "pay", code, "1001", "10.45"))
    assert first.result == 0
    assert db.round_trips - before == 1

    payment = await db.run(payments.get, "osmp", "1001")
    assert (first.prv_txn, payment.customer_id, payment.account_id, payment.amount) \
        == (payment.id, a.customer_id, a.id, Decimal("10.45"))
    entry = await db.run(ledger.get_entry, "payment:osmp:1001")
    assert (payment.ledger_id, entry.customer_id, entry.account_id, entry.cause,
            entry.balance_after) == (entry.id, a.customer_id, a.id, "osmp:1001",
                                     Decimal("10.45"))
    assert payment.details == {"account": code, "txn_date": format_txn_date(s.clock.seconds())}
    job = await db.run(jobs.get_by_payment, payment.id)
    assert (job.state, job.external_id) \
        == ("queued", jobs.external_id_for(payment.id, "osmp", "1001"))
    assert await counts(db) == (1, 1, 1)

    before = db.round_trips
    assert await s.pay(request(s, "pay", code, "1001", "10.45")) == first
    conflict = await s.pay(request(s, "pay", code, "1001", "10.46"))
    assert conflict.result == 300
    assert db.round_trips - before == 2
    assert await counts(db) == (1, 1, 1)

    before = db.round_trips
    check = await s.check(request(s, "check", code, "1002"))
    assert (check.result, check.fields) == (0, (("balance", "10.45"),))
    assert db.round_trips - before == 1
    assert await db.run(ledger.balance_mismatches) == []


@pytest_twisted.ensureDeferred
async def test_a_debtor_is_settled_by_the_python_path_with_the_same_outcome(db):
    a = await db.run(ledger.create_account, "alice", account_id=42)
    tariff = (await db.run(catalog.create_tariff, "basic", "300.00"))["id"]
    s = service(db)
    await db.run(engine.assign, BUILTIN, a.id, tariff, at=engine.utc(s.clock.seconds()))
    assert (await db.run(ledger.get_account, a.id)).status_reason == ledger.DEBT

    before = db.round_trips
    paid = await s.pay(request(s, "pay", ppc.encode(a.customer_id), "2001", "300.00"))
    assert paid.result == 0
    # The statement handed it over (nothing written), then the Python path.
    assert db.round_trips - before > 1
    acc = await db.run(ledger.get_account, a.id)
    assert (acc.active, acc.status_reason, acc.balance) == (True, ledger.ACTIVE, Decimal("0.00"))
    assert await counts(db) == (1, 2, 1)
    assert await db.run(ledger.balance_mismatches) == []

    # Settled and paid up: the next pay is one round trip again.
    before = db.round_trips
    assert (await s.pay(request(s, "pay", ppc.encode(a.customer_id), "2002"))).result == 0
    assert db.round_trips - before == 1


@pytest_twisted.ensureDeferred
async def test_a_due_promise_or_a_debt_account_alone_also_takes_the_python_path(db):
    a = await db.run(ledger.create_account, "alice", account_id=42)
    s = service(db)
    now = engine.utc(s.clock.seconds())
    # A DEBT account (declared by the billing, migration 0013) without a
    # suspended subscription: settle reactivates it.
    await db.run(ledger.set_active, a.id, False, ledger.DEBT)
    await db.execute("UPDATE accounts SET debt_by_billing = true WHERE id = %s", (a.id,))
    before = db.round_trips
    assert (await s.pay(request(s, "pay", ppc.encode(a.customer_id), "3001"))).result == 0
    assert db.round_trips - before > 1
    assert (await db.run(ledger.get_account, a.id)).status_reason == ledger.ACTIVE

    # A promise come due is taken back by the pay that settles it.
    await db.run(engine.promise, BUILTIN, a.customer_id, "50.00", 1, now - timedelta(days=2))
    before = db.round_trips
    assert (await s.pay(request(s, "pay", ppc.encode(a.customer_id), "3002"))).result == 0
    assert db.round_trips - before > 1
    assert await db.fetchval("SELECT returned_at IS NOT NULL FROM promises") is True
    assert (await db.run(ledger.get_customer, a.customer_id)).balance == Decimal("20.00")
    assert await db.run(ledger.balance_mismatches) == []


@pytest_twisted.ensureDeferred
async def test_a_hook_without_an_sql_form_puts_the_pay_on_the_python_path(db):
    a = await db.run(ledger.create_account, "alice", account_id=42)
    seen = []

    async def hook(tx, payment):
        seen.append(payment.id)

    assert payments.sql_plan([hook]) is None
    assert payments.sql_plan(DAEMON_HOOKS) == {"settle", "receipt"}
    s = service(db, hooks=[*DAEMON_HOOKS, hook])
    paid = await s.pay(request(s, "pay", ppc.encode(a.customer_id), "4001"))
    assert paid.result == 0 and seen == [paid.prv_txn]
    assert await counts(db) == (1, 1, 1)


@pytest_twisted.ensureDeferred
async def test_refusals_read_only_and_answer_from_an_earlier_payment(db):
    a = await db.run(ledger.create_account, "alice", account_id=42)
    s = service(db)
    code = ppc.encode(a.customer_id)
    paid = await s.pay(request(s, "pay", code, "5001"))
    await db.run(ledger.set_status, a.id, "blocked")
    before = await counts(db)
    # Blocked: new money refused; the accepted txn_id is still answered from its payment.
    assert (await s.pay(request(s, "pay", code, "5002"))).result == 79
    assert await s.pay(request(s, "pay", code, "5001")) == paid
    assert (await s.pay(request(s, "pay", ppc.encode(99), "5003"))).result == 5
    assert await counts(db) == before

    done = await db.run_statement(payments.accept_in_sql, "osmp", "5001", a.customer_id,
                                  "10.00", accept=False)
    assert (done.outcome, done.payment.id, done.payee.customer_id) \
        == ("refused", paid.prv_txn, a.customer_id)
    done = await db.run_statement(payments.accept_in_sql, "osmp", "5009", "nobody", "10.00")
    assert (done.outcome, done.payee, done.payment) == ("no_payee", None, None)
