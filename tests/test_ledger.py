from decimal import Decimal

import psycopg2
import pytest
import pytest_twisted
from twisted.internet import defer

from smartyd import ledger, payments
from smartyd.db import DatabaseUnavailable


async def new_account(db, login="alice", **kw):
    return await db.run(ledger.create_account, login, **kw)


@pytest_twisted.ensureDeferred
async def test_account_create_and_show(db):
    a = await new_account(db)
    assert a.id == 1 and a.status == "active" and a.balance == Decimal("0.00")
    assert a.ppc == "11"
    b = await new_account(db, "bob", account_id=5907)
    assert b.ppc == "59071"
    c = await new_account(db, "carol")
    assert c.id == 5908  # the sequence moved past the explicit id
    with pytest.raises(ledger.LedgerError, match="exists"):
        await new_account(db, "alice")
    with pytest.raises(ledger.LedgerError, match="login"):
        await new_account(db, "bad login!")


def test_password_hash_is_salted_and_verifies():
    h1 = ledger.hash_password("s3cret")
    h2 = ledger.hash_password("s3cret")
    assert h1 != h2 and "s3cret" not in h1
    assert ledger.verify_password("s3cret", h1)
    assert not ledger.verify_password("s3creT", h1)
    assert not ledger.verify_password("s3cret", "garbage")


@pytest_twisted.ensureDeferred
async def test_credit_is_idempotent(db):
    a = await new_account(db)
    e1, created1 = await db.run(ledger.credit, a.id, "10.50", "payment", "test", "k1")
    e2, created2 = await db.run(ledger.credit, a.id, "10.50", "payment", "test", "k1")
    assert created1 and not created2
    assert e1.id == e2.id and e1.balance_after == Decimal("10.50")
    account = await db.run(ledger.get_account, a.id)
    assert account.balance == Decimal("10.50")
    with pytest.raises(ledger.IdempotencyConflict):
        await db.run(ledger.credit, a.id, "11.00", "payment", "test", "k1")
    assert (await db.run(ledger.get_account, a.id)).balance == Decimal("10.50")


@pytest_twisted.ensureDeferred
async def test_money_is_never_float():
    with pytest.raises(TypeError):
        ledger.money(1.5)
    assert ledger.money("1.005") == Decimal("1.01")
    for bad in ("abc", "NaN", "Infinity", "1e30"):
        with pytest.raises(ledger.LedgerError):
            ledger.money(bad)


@pytest_twisted.ensureDeferred
async def test_concurrent_credits_with_one_key_make_one_row(make_db, db):
    a = await new_account(db)
    pool = await make_db(size=20)
    results = await defer.gatherResults(
        [pool.run(ledger.credit, a.id, "5.00", "payment", "race", "same-key") for _ in range(20)],
        consumeErrors=True,
    )
    assert sum(1 for _, created in results if created) == 1
    assert len({e.id for e, _ in results}) == 1
    rows = await db.fetchall("SELECT count(*) FROM ledger")
    assert rows[0][0] == 1
    assert (await db.run(ledger.get_account, a.id)).balance == Decimal("5.00")


@pytest_twisted.ensureDeferred
async def test_concurrent_distinct_credits_all_land_and_balance_equals_ledger(make_db, db):
    a = await new_account(db)
    b = await new_account(db, "bob")
    pool = await make_db(size=16)
    await defer.gatherResults(
        [pool.run(ledger.post, (a.id if i % 2 else b.id), f"{i % 7 + 1}.25", "payment", "t",
                  f"k{i}") for i in range(60)]
        + [pool.run(ledger.post, a.id, "-0.50", "charge", "t", f"c{i}") for i in range(10)],
        consumeErrors=True,
    )
    assert await db.run(ledger.balance_mismatches) == []
    for acc in (a, b):
        account = await db.run(ledger.get_account, acc.id)
        assert account.balance == await db.run(ledger.ledger_sum, acc.id)
    assert (await db.fetchval("SELECT count(*) FROM ledger")) == 70


@pytest_twisted.ensureDeferred
async def test_ledger_is_append_only(db):
    a = await new_account(db)
    await db.run(ledger.credit, a.id, "1.00", "payment", "t", "k")
    with pytest.raises(psycopg2.Error, match="append-only"):
        await db.execute("UPDATE ledger SET amount = 100")
    with pytest.raises(psycopg2.Error, match="append-only"):
        await db.execute("DELETE FROM ledger")
    assert (await db.run(ledger.get_account, a.id)).balance == Decimal("1.00")


@pytest_twisted.ensureDeferred
async def test_failed_transaction_changes_nothing(db):
    a = await new_account(db)

    async def credit_then_fail(tx):
        await ledger.credit(tx, a.id, "7.00", "payment", "t", "k-fail")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await db.run(credit_then_fail)
    assert (await db.run(ledger.get_account, a.id)).balance == Decimal("0.00")
    assert await db.run(ledger.get_entry, "k-fail") is None


@pytest_twisted.ensureDeferred
async def test_payment_accept_is_idempotent_and_conflicts_refused(make_db, db):
    a = await new_account(db)
    b = await new_account(db, "bob")
    pool = await make_db(size=20)
    results = await defer.gatherResults(
        [pool.run(payments.accept, "osmp", "777", a.id, "10.45") for _ in range(20)],
        consumeErrors=True,
    )
    assert sum(1 for _, created in results if created) == 1
    assert len({p.id for p, _ in results}) == 1
    assert (await db.run(ledger.get_account, a.id)).balance == Decimal("10.45")
    with pytest.raises(payments.PaymentConflict):
        await db.run(payments.accept, "osmp", "777", b.id, "10.45")
    with pytest.raises(payments.PaymentConflict):
        await db.run(payments.accept, "osmp", "777", a.id, "10.46")
    with pytest.raises(ledger.AccountNotFound):
        await db.run(payments.accept, "osmp", "778", 999, "1.00")
    assert (await db.run(ledger.get_account, b.id)).balance == Decimal("0.00")
    p = await db.run(payments.get, "osmp", "777")
    entry = await db.run(ledger.get_entry_by_id, p.ledger_id)
    assert entry.idem_key == "payment:osmp:777" and entry.amount == Decimal("10.45")


@pytest_twisted.ensureDeferred
async def test_outage_gives_database_unavailable_and_recovers(own_cluster, make_db):
    pool = await make_db(size=2, dsn=own_cluster.dsn())
    assert await pool.ping()
    own_cluster.stop(mode="immediate")
    with pytest.raises(DatabaseUnavailable):
        await pool.fetchval("SELECT 1")
    assert not await pool.ping()
    own_cluster.start()
    assert await pool.ping()
    assert await pool.fetchval("SELECT 41 + 1") == 42
