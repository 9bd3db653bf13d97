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

import pytest
import pytest_twisted
from twisted.internet import defer, task

from conftest import make_config
from holding import hold, waiting_for
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


# -- one order per customer: the pay queues behind the customer's lock --------------------------
# (issue 24, item 7) Deterministic races: a second connection holds a lock
# (tests/holding.py), PostgreSQL says who waits for it, then it is released.

async def ledger_chain_breaks(db) -> list[tuple]:
    """Ledger rows whose balance_after is not the running sum of the customer's rows."""
    return await db.fetchall(
        "SELECT id, balance_after, run FROM (SELECT id, balance_after, sum(amount) OVER"
        " (PARTITION BY customer_id ORDER BY id) AS run FROM ledger) r"
        " WHERE balance_after <> run")


async def suspend_by_run(db, a, tariff):
    """
    The customer paid one period, up to an hour from now; the writer is the
    charging run as of that moment (its clock a little ahead of the
    database's): the period is due, the balance is 0, so it suspends the
    customer to DEBT.  A pay looking on its own sees nothing due.
    """
    now = await db.fetchval("SELECT now()")
    await db.run(ledger.credit, a.customer_id, "300.00", "payment", "seed", "seed:1")
    await db.run(engine.assign, BUILTIN, a.id, tariff, at=now - timedelta(days=30, hours=-1))
    paid_until = await db.fetchval("SELECT paid_until FROM subscriptions")
    assert paid_until > now

    async def writer(tx):
        result = await engine.settle(tx, BUILTIN, [a.customer_id], paid_until)
        assert result.suspended == 1
    return writer


async def suspend_by_assign(db, a, tariff):
    """The writer connects the tariff with no money for it: suspended, DEBT at once."""
    now = await db.fetchval("SELECT now()")

    async def writer(tx):
        out = await engine.assign(tx, BUILTIN, a.id, tariff, at=now)
        assert out["subscription"]["state"] == "suspended"
    return writer


@pytest.mark.parametrize("suspend", [suspend_by_run, suspend_by_assign])
@pytest_twisted.ensureDeferred
async def test_a_pay_waits_for_the_writer_that_holds_its_customer_then_ends_the_debt(
        db, make_db, suspend):
    # payee_lookup's FOR UPDATE (migration 0011): without it the pay decides
    # "nothing to settle" from what it sees before the writer commits, then
    # credits the money and leaves the paid customer in DEBT.
    a = await db.run(ledger.create_account, "alice", account_id=42)
    tariff = (await db.run(catalog.create_tariff, "basic", "300.00"))["id"]
    writer = await suspend(db, a, tariff)
    held = await hold(make_db, writer)
    assert (await db.run(ledger.get_account, a.id)).status_reason == ledger.ACTIVE  # not yet

    s = service(db)
    paying = defer.ensureDeferred(s.pay(request(s, "pay", ppc.encode(a.customer_id), "7001",
                                                "300.00")))
    [payer] = await waiting_for(db, held.pid, what="the pay to wait for the writer")
    assert not paying.called
    held.release.callback(None)
    await held.done

    paid = await paying
    assert paid.result == 0
    acc = await db.run(ledger.get_account, a.id)
    assert (acc.active, acc.status_reason) == (True, ledger.ACTIVE)
    assert await db.fetchval("SELECT state FROM subscriptions") == "active"
    assert (await db.run(ledger.get_customer, a.customer_id)).balance == Decimal("0.00")
    assert await db.run(ledger.balance_mismatches) == []
    assert await ledger_chain_breaks(db) == []


@pytest_twisted.ensureDeferred
async def test_two_identical_pays_queued_behind_a_held_customer_credit_once(db, make_db):
    a = await db.run(ledger.create_account, "alice", account_id=42)
    code = ppc.encode(a.customer_id)

    async def lock(tx):  # e.g. the charging run's batch
        await tx.execute("SELECT 1 FROM customers WHERE id = %s FOR UPDATE", (a.customer_id,))
    held = await hold(make_db, lock)

    s = service(db)
    pays = [defer.ensureDeferred(s.pay(request(s, "pay", code, "8001", "25.00")))
            for _ in range(2)]
    await waiting_for(db, held.pid, count=2, what="both pays to queue")
    assert not any(p.called for p in pays)
    held.release.callback(None)
    await held.done

    first, second = await defer.gatherResults(pays)
    assert (first.result, second.result) == (0, 0)
    assert first.prv_txn == second.prv_txn == (await db.run(payments.get, "osmp", "8001")).id
    assert await counts(db) == (1, 1, 1)
    assert (await db.run(ledger.get_customer, a.customer_id)).balance == Decimal("25.00")
    assert await db.run(ledger.balance_mismatches) == []


@pytest_twisted.ensureDeferred
async def test_one_txn_id_for_two_customers_racing_inside_the_statement(db, make_db):
    # Two customers' locks do not order the pays: both find no payment under
    # the txn_id and insert.  The second waits on the first's unique key;
    # ON CONFLICT DO NOTHING (payment_accept) makes it see the first's
    # payment, a conflict answered 300 -- not a unique violation answered
    # "temporary error" for the terminal to retry forever.
    alice = await db.run(ledger.create_account, "alice", account_id=42)
    bob = await db.run(ledger.create_account, "bob", account_id=43)

    async def rename(tx):  # an operator renaming alice's login, not yet committed
        await tx.execute("UPDATE accounts SET login = 'alice2' WHERE id = %s", (alice.id,))
    held = await hold(make_db, rename)

    s = service(db)
    first = defer.ensureDeferred(s.pay(request(s, "pay", ppc.encode(alice.customer_id),
                                               "9001", "25.00")))
    # Alice's pay has inserted its payment; its foreign key waits for the rename.
    [first_pid] = await waiting_for(db, held.pid, what="alice's pay to wait for the rename")
    second = defer.ensureDeferred(s.pay(request(s, "pay", ppc.encode(bob.customer_id),
                                                "9001", "25.00")))
    await waiting_for(db, first_pid, what="bob's pay to wait for alice's payment")
    held.release.callback(None)
    await held.done

    assert (await first).result == 0
    refused = await second
    assert (refused.result, refused.comment) \
        == (300, "txn_id was accepted with another account or sum")
    payment = await db.run(payments.get, "osmp", "9001")
    assert (payment.customer_id, refused.prv_txn) == (alice.customer_id, None)
    assert await counts(db) == (1, 1, 1)
    assert (await db.run(ledger.get_customer, bob.customer_id)).balance == Decimal("0.00")
    assert await db.run(ledger.balance_mismatches) == []
