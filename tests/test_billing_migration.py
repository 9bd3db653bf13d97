"""
Migration 0006 (the built-in billing) on data of the old shape: every account
gets a customer with its id, balances move to the customers through ledger
rows (sums unchanged, the account-level history kept), payment codes keep
naming the same money holder.
"""

from __future__ import annotations

from decimal import Decimal

import psycopg2
import pytest

from smartyd import ppc
from smartyd.db.migrate import available


@pytest.fixture
def fresh_dsn(pg_dsn):
    """An empty database of its own in the test cluster, dropped afterwards."""
    name = "smartyd_migration_test"
    admin = psycopg2.connect(pg_dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name}")
        cur.execute(f"CREATE DATABASE {name}")
    dsn = pg_dsn.replace("dbname=smartyd", f"dbname={name}")
    assert dsn != pg_dsn
    yield dsn
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.close()


def apply(cur, versions):
    for m in available():
        if m.version in versions:
            cur.execute(m.sql)


def test_existing_accounts_become_customers_with_their_money(fresh_dsn):
    with psycopg2.connect(fresh_dsn) as conn, conn.cursor() as cur:
        apply(cur, range(1, 6))
        # The old shape: an account with a customer (name, phone), accounts
        # without, an explicit high id, a customer with no account, a
        # blocked account; money booked on accounts.
        cur.execute("INSERT INTO customers (name, phone) VALUES ('Иван', '+7900') RETURNING id")
        ivan = cur.fetchone()[0]
        cur.execute("INSERT INTO customers (name) VALUES ('nobody') RETURNING id")
        cur.execute("INSERT INTO accounts (id, login, customer_id) VALUES (2, 'a2', %s)", (ivan,))
        cur.execute("INSERT INTO accounts (id, login) VALUES (3, 'a3'), (5907, 'a5907')")
        cur.execute("INSERT INTO accounts (id, login, status) VALUES (4, 'a4', 'blocked')")
        cur.execute("SELECT setval('accounts_id_seq', 5907)")
        for key, (account, amount) in enumerate([(2, "100.00"), (2, "-30.50"), (3, "7.00"),
                                                 (5907, "12.34"), (5907, "0.66")]):
            cur.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s"
                        " RETURNING balance", (amount, account))
            after = cur.fetchone()[0]
            cur.execute("INSERT INTO ledger (account_id, amount, kind, idem_key, balance_after)"
                        " VALUES (%s, %s, 'payment', %s, %s)", (account, amount, f"k{key}", after))
        cur.execute("INSERT INTO payments (provider, external_id, account_id, amount)"
                    " VALUES ('osmp', '1', 2, 100)")
        cur.execute("INSERT INTO tariffs (name, price) VALUES ('basic', 100) RETURNING id")
        tariff = cur.fetchone()[0]
        cur.execute("INSERT INTO subscriptions (account_id, tariff_id) VALUES (3, %s)", (tariff,))
        cur.execute("SELECT sum(amount) FROM ledger")
        total_before = cur.fetchone()[0]

        apply(cur, {6})

        # One customer per account, with the account's id and its old money.
        cur.execute("SELECT a.id, a.customer_id, c.balance, c.name, c.phone, a.active,"
                    " a.status_reason FROM accounts a JOIN customers c ON c.id = a.customer_id"
                    " ORDER BY a.id")
        assert cur.fetchall() == [
            (2, 2, Decimal("69.50"), "Иван", "+7900", True, "ACTIVE"),
            (3, 3, Decimal("7.00"), "", None, True, "ACTIVE"),
            (4, 4, Decimal("0.00"), "", None, False, "BLOCK"),
            (5907, 5907, Decimal("13.00"), "", None, True, "ACTIVE"),
        ]
        # The customer that had no account keeps its data under a new id.
        cur.execute("SELECT id FROM customers WHERE name = 'nobody'")
        [(nobody,)] = cur.fetchall()
        assert nobody > 5907
        # The whole ledger sums as before; each customer's rows sum to its
        # balance; each account's old history is closed by a migration row.
        cur.execute("SELECT sum(amount) FROM ledger")
        assert cur.fetchone()[0] == total_before
        cur.execute("SELECT c.id FROM customers c LEFT JOIN ledger l ON l.customer_id = c.id"
                    " GROUP BY c.id, c.balance HAVING c.balance <> coalesce(sum(l.amount), 0)")
        assert cur.fetchall() == []
        cur.execute("SELECT account_id, sum(amount) FROM ledger WHERE customer_id IS NULL"
                    " GROUP BY account_id ORDER BY 1")
        assert cur.fetchall() == [(2, Decimal("0.00")), (3, Decimal("0.00")),
                                  (5907, Decimal("0.00"))]
        cur.execute("SELECT kind, amount FROM ledger WHERE customer_id = 5907")
        assert cur.fetchall() == [("migration", Decimal("13.00"))]
        cur.execute("SELECT count(*) FROM ledger WHERE account_id = 2 AND kind = 'payment'")
        assert cur.fetchone()[0] == 2  # the account-level history is still there
        # Payments and subscriptions name the customers.
        cur.execute("SELECT customer_id FROM payments")
        assert cur.fetchall() == [(2,)]
        cur.execute("SELECT customer_id, account_id, state FROM subscriptions")
        assert cur.fetchall() == [(3, 3, "active")]
        # The sequence moved past every id: a new account gets a customer of
        # its own id; a printed payment code names the same money holder.
        cur.execute("INSERT INTO accounts (login) VALUES ('new') RETURNING id, customer_id")
        new_id, new_customer = cur.fetchone()
        assert new_id == new_customer and new_id > nobody
        assert ppc.decode(ppc.encode(5907)) == 5907


def test_debt_of_today_stays_the_billings_after_0013(fresh_dsn):
    # Until 0013 only the charging job lifted DEBT: today's DEBT accounts keep
    # being lifted by it; other states are nobody's debt.
    with psycopg2.connect(fresh_dsn) as conn, conn.cursor() as cur:
        apply(cur, range(1, 13))
        for login, active, reason in [("debt", False, "DEBT"), ("block", False, "BLOCK"),
                                      ("ok", True, "ACTIVE")]:
            cur.execute("INSERT INTO accounts (login, active, status_reason) VALUES (%s, %s, %s)",
                        (login, active, reason))
        apply(cur, [13])
        cur.execute("SELECT login, debt_by_billing FROM accounts ORDER BY id")
        assert cur.fetchall() == [("debt", True), ("block", False), ("ok", False)]
