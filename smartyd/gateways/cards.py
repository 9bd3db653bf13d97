"""
Payture cards and autopayment attempts: the SQL (a repository module, called
with a L{Tx} inside L{smartyd.db.Database.run}).

Tables (migration 0010): ``payture_users`` (each customer's eWallet user),
``payture_cards`` (what GetList said: card id, masked number, expiry -- never
a number), ``payture_bindings`` (orders paid on an eWallet page, whose card
gets bound), ``payture_autopay`` (one durable row per autopayment attempt,
unique on (customer, period, attempt)) and ``customers.autopay``.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import datetime
from decimal import Decimal

from attrs import frozen

from smartyd import ledger
from smartyd.db import Tx
from smartyd.gateways.ewallet import Card

LOGIN_PREFIX = "smartyd-"


@frozen
class WalletUser:
    customer_id: int
    login: str
    password: str
    registered: bool


async def wallet_user(tx: Tx, customer_id: int) -> WalletUser:
    """The customer's eWallet user, made up on first use (a random password)."""
    await tx.execute(
        "INSERT INTO payture_users (customer_id, login, password) VALUES (%s, %s, %s)"
        " ON CONFLICT (customer_id) DO NOTHING",
        (customer_id, f"{LOGIN_PREFIX}{customer_id}", secrets.token_hex(16)))
    row = await tx.fetchone(
        "SELECT customer_id, login, password, registered FROM payture_users"
        " WHERE customer_id = %s", (customer_id,))
    return WalletUser(*row)


async def mark_registered(tx: Tx, customer_id: int) -> None:
    await tx.execute("UPDATE payture_users SET registered = true WHERE customer_id = %s",
                     (customer_id,))


async def customer_exists(tx: Tx, customer_id: int) -> bool:
    return await ledger.get_customer(tx, customer_id) is not None


async def customer_of_account(tx: Tx, account_id: int) -> int:
    account = await ledger.get_account(tx, account_id)
    if account is None:
        raise ledger.AccountNotFound(f"no account {account_id}")
    return account.customer_id


async def record_binding(tx: Tx, order_number: str, customer_id: int, template: str) -> None:
    await tx.execute(
        "INSERT INTO payture_bindings (order_number, customer_id, template) VALUES (%s, %s, %s)",
        (order_number, customer_id, template))


async def binding_customer(tx: Tx, order_number: str) -> int | None:
    return await tx.fetchval(
        "SELECT customer_id FROM payture_bindings WHERE order_number = %s", (order_number,))


# -- cards ---------------------------------------------------------------------------------------
_CARD_COLUMNS = "card_id, masked, expiry, holder, status, no_cvv, expired, bound_at"


def _card_json(row) -> dict:
    card_id, masked, expiry, holder, status, no_cvv, expired, bound_at = row
    return {"card_id": card_id, "masked": masked, "expiry": expiry, "holder": holder,
            "status": status, "expired": expired, "bound_at": bound_at.isoformat()}


async def sync_cards(tx: Tx, customer_id: int, cards: list[Card]) -> list[dict]:
    """Make our copy what Payture's GetList says (removed and expired cards go)."""
    ids = [c.card_id for c in cards]
    await tx.execute(
        "DELETE FROM payture_cards WHERE customer_id = %s AND NOT (card_id = ANY(%s))",
        (customer_id, ids))
    for c in cards:
        await tx.execute(
            "INSERT INTO payture_cards (customer_id, card_id, masked, expiry, holder, status,"
            " no_cvv, expired) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (customer_id, card_id) DO UPDATE SET masked = EXCLUDED.masked,"
            " expiry = coalesce(EXCLUDED.expiry, payture_cards.expiry),"
            " holder = EXCLUDED.holder, status = EXCLUDED.status, no_cvv = EXCLUDED.no_cvv,"
            " expired = EXCLUDED.expired",
            (customer_id, c.card_id, c.masked, c.expiry, c.holder, c.status, c.no_cvv,
             c.expired))
    return await list_cards(tx, customer_id)


async def list_cards(tx: Tx, customer_id: int) -> list[dict]:
    rows = await tx.fetchall(
        f"SELECT {_CARD_COLUMNS} FROM payture_cards WHERE customer_id = %s"
        " ORDER BY bound_at DESC, card_id", (customer_id,))
    return [_card_json(r) for r in rows]


async def has_card(tx: Tx, customer_id: int, card_id: str) -> bool:
    return bool(await tx.fetchval(
        "SELECT 1 FROM payture_cards WHERE customer_id = %s AND card_id = %s",
        (customer_id, card_id)))


async def delete_card(tx: Tx, customer_id: int, card_id: str) -> bool:
    return bool(await tx.fetchval(
        "DELETE FROM payture_cards WHERE customer_id = %s AND card_id = %s RETURNING 1",
        (customer_id, card_id)))


# -- autopayment --------------------------------------------------------------------------------
async def set_autopay(tx: Tx, customer_id: int, on: bool) -> dict:
    row = await tx.fetchone(
        "UPDATE customers SET autopay = %s, updated = now() WHERE id = %s RETURNING id, autopay",
        (on, customer_id))
    if row is None:
        raise ledger.CustomerNotFound(f"no customer {customer_id}")
    return {"customer_id": row[0], "autopay": row[1]}


async def autopay_enabled(tx: Tx, customer_id: int) -> bool:
    return bool(await tx.fetchval("SELECT autopay FROM customers WHERE id = %s",
                                  (customer_id,)))


async def autopay_cards(tx: Tx, customer_ids: list[int]) -> dict[int, str]:
    """Among ``customer_ids``, those with autopay on and a usable card: the newest card."""
    rows = await tx.fetchall(
        "SELECT DISTINCT ON (c.id) c.id, p.card_id FROM customers c"
        " JOIN payture_cards p ON p.customer_id = c.id AND NOT p.expired"
        " JOIN payture_users u ON u.customer_id = c.id"
        " WHERE c.id = ANY(%s) AND c.autopay ORDER BY c.id, p.bound_at DESC, p.card_id",
        (customer_ids,))
    return dict(rows)


@frozen
class Attempt:
    id: int
    customer_id: int
    period: datetime
    attempt: int
    order_number: str
    card_id: str
    amount: Decimal
    subscription_id: int | None
    state: str
    err_code: str | None
    gateway_state: str | None
    payment_id: int | None
    created_at: datetime

    def to_json(self) -> dict:
        return {"id": self.id, "customer_id": self.customer_id,
                "period": self.period.isoformat(), "attempt": self.attempt,
                "order": self.order_number, "card_id": self.card_id,
                "amount": str(self.amount), "state": self.state, "err_code": self.err_code,
                "payment_id": self.payment_id}


_ATTEMPT_COLUMNS = ("id, customer_id, period, attempt, order_number, card_id, amount,"
                    " subscription_id, state, err_code, gateway_state, payment_id, created_at")


async def pending_attempts(tx: Tx, customer_ids: list[int]) -> list[Attempt]:
    rows = await tx.fetchall(
        f"SELECT {_ATTEMPT_COLUMNS} FROM payture_autopay WHERE state = 'pending'"
        " AND customer_id = ANY(%s) ORDER BY id", (customer_ids,))
    return [Attempt(*r) for r in rows]


async def attempts(tx: Tx, customer_id: int) -> list[Attempt]:
    rows = await tx.fetchall(
        f"SELECT {_ATTEMPT_COLUMNS} FROM payture_autopay WHERE customer_id = %s ORDER BY id",
        (customer_id,))
    return [Attempt(*r) for r in rows]


async def get_attempt(tx: Tx, attempt_id: int, lock: bool = False) -> Attempt | None:
    row = await tx.fetchone(
        f"SELECT {_ATTEMPT_COLUMNS} FROM payture_autopay WHERE id = %s"
        + (" FOR UPDATE" if lock else ""), (attempt_id,))
    return None if row is None else Attempt(*row)


async def new_attempt(tx: Tx, customer_id: int, period: datetime, subscription_id: int | None,
                      card_id: str, amount: Decimal, limit: int, at: datetime
                      ) -> tuple[Attempt | None, str]:
    """
    Claim the next attempt of (customer, period), or say why not: ``pending``
    (one is still open -- another run's, or a crashed one: it is resolved, not
    repeated) or ``exhausted`` (``limit`` declined attempts this period).  The
    customer row lock (every writer of its money takes it first) serialises
    concurrent runs; the unique (customer, period, attempt) would stop a
    second claim anyway.
    """
    if await tx.fetchval("SELECT 1 FROM customers WHERE id = %s FOR UPDATE",
                         (customer_id,)) is None:
        raise ledger.CustomerNotFound(f"no customer {customer_id}")
    if await tx.fetchval("SELECT 1 FROM payture_autopay WHERE customer_id = %s"
                         " AND state = 'pending'", (customer_id,)):
        return None, "pending"
    declined, last = await tx.fetchone(
        "SELECT count(*) FILTER (WHERE state = 'declined'), coalesce(max(attempt), 0)"
        " FROM payture_autopay WHERE customer_id = %s AND period = %s",
        (customer_id, period))
    if declined >= limit:
        return None, "exhausted"
    row = await tx.fetchone(
        "INSERT INTO payture_autopay (customer_id, period, attempt, order_number, card_id,"
        " amount, subscription_id, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
        f" RETURNING {_ATTEMPT_COLUMNS}",
        (customer_id, period, last + 1, uuid.uuid4().hex, card_id, amount, subscription_id,
         at))
    return Attempt(*row), "claimed"


async def finish_attempt(tx: Tx, attempt_id: int, state: str, *, err_code: str | None = None,
                         gateway_state: str | None = None, payment_id: int | None = None
                         ) -> None:
    await tx.execute(
        "UPDATE payture_autopay SET state = %s, err_code = coalesce(%s, err_code),"
        " gateway_state = coalesce(%s, gateway_state), payment_id = coalesce(%s, payment_id),"
        " updated = now() WHERE id = %s",
        (state, err_code, gateway_state, payment_id, attempt_id))
