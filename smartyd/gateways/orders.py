"""
Gateway orders: what we sent a payer to pay, and what became of it.

An order is created before the payer sees the gateway's page (ASSIST form,
Payture session) and names the account and amount; the gateway's answer is
trusted only for whether and how much was paid.  Crediting goes through
L{smartyd.payments.accept} with ``external_id`` = the order number, in the
same transaction that marks the order paid, so an order credits its account
at most once however often the gateway repeats itself.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

from attrs import frozen

from smartyd import ledger, payments
from smartyd.db import Tx

STATUSES = ("new", "blocked", "paid", "declined", "reversed", "mismatch", "unknown")
# Statuses after which the gateway is no longer asked about the order.  A
# declined order is not final: the payer may try again on the same order.
FINAL = ("paid", "reversed", "mismatch")


class OrderError(ledger.LedgerError):
    """An order operation was refused; the message says why."""


@frozen
class Order:
    id: int
    provider: str
    order_number: str
    account_id: int
    amount: Decimal
    two_stage: bool
    status: str
    gateway_status: str | None
    bill_number: str | None
    payment_id: int | None
    created: object
    updated: object
    currency: str = "RUB"  # ISO 4217 letters: a bill in another currency never credits it

    @property
    def credited(self) -> bool:
        return self.payment_id is not None

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "provider": self.provider,
            "order_number": self.order_number,
            "account_id": self.account_id,
            "amount": str(self.amount),
            "two_stage": self.two_stage,
            "status": self.status,
            "gateway_status": self.gateway_status,
            "bill_number": self.bill_number,
            "payment_id": self.payment_id,
            "currency": self.currency,
            "created": self.created.isoformat() if self.created else None,
        }


_COLUMNS = (
    "id, provider, order_number, account_id, amount, two_stage, status, gateway_status,"
    " bill_number, payment_id, created, updated, currency"
)


def _order(row) -> Order | None:
    return None if row is None else Order(*row)


async def create(tx: Tx, provider: str, account_id: int, amount: object,
                 two_stage: bool = False) -> Order:
    """A new order for ``account_id``; its number is ours and unique per provider."""
    amount = ledger.money(amount)
    if amount <= 0:
        raise OrderError("an order amount is positive")
    account = await ledger.get_account(tx, account_id)
    if account is None:
        raise ledger.AccountNotFound(f"no account {account_id}")
    if not account.payments_allowed:
        raise OrderError(f"payments to account {account_id} are not allowed")
    if provider == "payture":
        number = uuid.uuid4().hex  # Payture asks for a GUID-like OrderId, 1..50 chars
        row = await tx.fetchone(
            f"INSERT INTO gateway_orders (provider, order_number, account_id, amount, two_stage)"
            f" VALUES (%s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
            (provider, number, account_id, amount, two_stage),
        )
    else:
        row = await tx.fetchone(
            f"INSERT INTO gateway_orders (provider, order_number, account_id, amount, two_stage)"
            f" VALUES (%s, nextval('gateway_order_numbers')::text, %s, %s, %s)"
            f" RETURNING {_COLUMNS}",
            (provider, account_id, amount, two_stage),
        )
    return _order(row)


async def get(tx: Tx, provider: str, order_number: str, lock: bool = False) -> Order | None:
    return _order(await tx.fetchone(
        f"SELECT {_COLUMNS} FROM gateway_orders WHERE provider = %s AND order_number = %s"
        + (" FOR UPDATE" if lock else ""),
        (provider, order_number),
    ))


async def open_orders(tx: Tx, provider: str, new_days: int, blocked_days: int) -> list[Order]:
    """Orders still waiting for the gateway: new ones for ``new_days``, blocked ones longer."""
    rows = await tx.fetchall(
        f"SELECT {_COLUMNS} FROM gateway_orders WHERE provider = %s AND ("
        f"   (status IN ('new', 'unknown', 'declined') AND created > now() - make_interval(days => %s))"
        f"   OR (status = 'blocked' AND created > now() - make_interval(days => %s)))"
        f" ORDER BY id",
        (provider, new_days, blocked_days),
    )
    return [Order(*r) for r in rows]


async def set_state(tx: Tx, order: Order, status: str, gateway_status: str | None,
                    bill_number: str | None = None) -> Order:
    if status not in STATUSES:
        raise ValueError(f"unknown order status {status!r}")
    return _order(await tx.fetchone(
        f"UPDATE gateway_orders SET status = %s, gateway_status = %s,"
        f" bill_number = coalesce(%s, bill_number), updated = now()"
        f" WHERE id = %s RETURNING {_COLUMNS}",
        (status, gateway_status, bill_number, order.id),
    ))


async def credit(tx: Tx, order: Order, hooks, details: dict,
                 gateway_status: str | None, bill_number: str | None = None
                 ) -> tuple[Order, payments.Payment, bool]:
    """
    Credit ``order`` once: the payment, its ledger entry and the order's new
    state commit together (in the caller's transaction, which holds the
    order's row lock).  Returns ``(order, payment, created)``.
    """
    payment, created = await payments.accept(
        tx, order.provider, order.order_number, order.account_id, order.amount,
        details=details, hooks=hooks,
    )
    row = await tx.fetchone(
        f"UPDATE gateway_orders SET status = 'paid', gateway_status = %s,"
        f" bill_number = coalesce(%s, bill_number), payment_id = %s, updated = now()"
        f" WHERE id = %s RETURNING {_COLUMNS}",
        (gateway_status, bill_number, payment.id, order.id),
    )
    return _order(row), payment, created
