"""
Payments from every source, each credited exactly once.

``(provider, external_id)`` is the source's own idempotency key (OSMP
``txn_id``, an ASSIST bill number, a Payture order id).  L{accept} inserts the
payment and its ledger credit in the caller's transaction; a repeat returns
the original payment and credits nothing, also when copies race on different
connections or instances (the unique index makes the second wait for the
first, then find its row).
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Callable

from attrs import field, frozen

from smartyd import ledger
from smartyd.db import Tx


class PaymentConflict(ledger.LedgerError):
    """The external id was accepted already with another customer or amount."""

    def __init__(self, existing: "Payment"):
        super().__init__(
            f"{existing.provider} payment {existing.external_id} exists for customer"
            f" {existing.customer_id} amount {existing.amount}"
        )
        self.existing = existing


@frozen
class Payment:
    id: int
    provider: str
    external_id: str
    account_id: int
    amount: Decimal
    status: str
    ledger_id: int | None
    external_date: object
    details: dict
    created: object
    customer_id: int

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "provider": self.provider,
            "external_id": self.external_id,
            "customer_id": self.customer_id,
            "account_id": self.account_id,
            "amount": str(self.amount),
            "status": self.status,
            "ledger_id": self.ledger_id,
            "external_date": self.external_date.isoformat() if self.external_date else None,
            "details": self.details,
            "created": self.created.isoformat(),
        }


_COLUMNS = (
    "id, provider, external_id, account_id, amount, status, ledger_id, external_date,"
    " details, created, customer_id"
)

# Hooks run inside the accepting transaction for each new payment (e.g. the
# fiscal receipt queue).  Each is ``async hook(tx, payment)``.
#
# A hook that the one-statement accept (L{accept_in_sql}, migration 0011)
# does in SQL says so with an attribute ``in_sql``: the tuple of that
# function's flags that do its work (L{SQL_FLAGS}; empty: nothing to do).  A
# hook without it runs in Python, and so the payment takes the Python path.
AcceptHook = Callable[[Tx, Payment], object]

# The flags of the SQL function C{payment_accept}:
#   settle   the billing settles the payer (engine.payment_hook): the
#            function hands the payment to the Python path when the customer
#            has anything to settle, and settling nothing is nothing to do;
#   receipt  the fiscal receipt job (fiscal.enqueue_receipt) is inserted.
SQL_FLAGS = frozenset({"settle", "receipt"})


def sql_plan(hooks) -> frozenset[str] | None:
    """
    The C{payment_accept} flags that do the work of ``hooks``, or None when
    one of them must run in Python (then so must the whole accept).
    """
    flags: set[str] = set()
    for hook in hooks:
        in_sql = getattr(hook, "in_sql", None)
        if in_sql is None or not SQL_FLAGS.issuperset(in_sql):
            return None
        flags.update(in_sql)
    return frozenset(flags)


async def get(tx: Tx, provider: str, external_id: str) -> Payment | None:
    row = await tx.fetchone(
        f"SELECT {_COLUMNS} FROM payments WHERE provider = %s AND external_id = %s",
        (provider, external_id),
    )
    return None if row is None else Payment(*row)


async def accept(
    tx: Tx,
    provider: str,
    external_id: str,
    account_id: int | None,
    amount: object,
    details: dict | None = None,
    external_date=None,
    hooks: tuple[AcceptHook, ...] = (),
    customer_id: int | None = None,
) -> tuple[Payment, bool]:
    """
    Record and credit a payment once to a customer's virtual account.
    Returns ``(payment, created)``.

    The payment names an account (its customer is credited; gateways' orders
    and OSMP logins) or, with ``account_id`` None, a ``customer_id`` (a
    personal payment code).  The customer row is locked first, before the
    payment's foreign keys take their share locks: every writer of a
    customer's money (pays, the charging job) locks that row first, so they
    queue instead of deadlocking.

    Raises L{PaymentConflict} when ``external_id`` exists with another
    customer or amount, L{ledger.AccountNotFound} / L{ledger.CustomerNotFound}
    for an unknown payee.
    """
    amount = ledger.money(amount)
    if amount <= 0:
        raise ledger.LedgerError("a payment is positive")
    if account_id is not None:
        customer_id = await tx.fetchval(
            "SELECT customer_id FROM accounts WHERE id = %s", (account_id,))
        if customer_id is None:
            raise ledger.AccountNotFound(f"no account {account_id}")
    if customer_id is None or not await tx.fetchval(
            "SELECT 1 FROM customers WHERE id = %s FOR UPDATE", (customer_id,)):
        raise ledger.CustomerNotFound(f"no customer {customer_id}")
    row = await tx.fetchone(
        f"INSERT INTO payments (provider, external_id, account_id, customer_id, amount, details,"
        f" external_date) VALUES (%s, %s, %s, %s, %s, %s, %s)"
        f" ON CONFLICT (provider, external_id) DO NOTHING RETURNING {_COLUMNS}",
        (provider, external_id, account_id, customer_id, amount, json.dumps(details or {}),
         external_date),
    )
    if row is None:
        existing = await get(tx, provider, external_id)
        if existing.customer_id != customer_id or existing.amount != amount:
            raise PaymentConflict(existing)
        return existing, False
    payment = Payment(*row)
    entry, _ = await ledger.credit(
        tx,
        customer_id,
        amount,
        kind="payment",
        cause=f"{provider}:{external_id}",
        idem_key=f"payment:{provider}:{external_id}",
        account_id=account_id,
    )
    await tx.execute("UPDATE payments SET ledger_id = %s WHERE id = %s", (entry.id, payment.id))
    payment = Payment(*(await tx.fetchone(f"SELECT {_COLUMNS} FROM payments WHERE id = %s",
                                          (payment.id,))))
    for hook in hooks:
        await hook(tx, payment)
    return payment, True


@frozen
class SQLAccept:
    """
    What C{payment_accept} did (see migration 0011 for the outcomes).

    @ivar outcome: ``created``, ``exists``, ``refused``, ``no_payee`` or
        ``python`` (nothing written: run the Python path).
    @ivar payee: the payee the reference names (its row was locked), or None.
    @ivar payment: the payment created now or found under the external id.
    """

    outcome: str
    payee: ledger.Payee | None
    payment: Payment | None


async def accept_in_sql(
    tx: Tx,
    provider: str,
    external_id: str,
    ref: int | str,
    amount: object,
    *,
    details: dict | None = None,
    external_date=None,
    accept: bool = True,
    flags: frozenset[str] = frozenset(),
) -> SQLAccept:
    """
    L{ledger.find_payee} (locked) then L{accept} with the hooks ``flags``
    name, as one statement: meant for L{Database.run_statement}, where the
    statement is the whole transaction (one round trip).

    ``ref`` is a customer id or an account login.  With ``accept`` False (a
    refusal known beforehand) only the payee and the payment under the id are
    read.  A payee that may not be paid is not credited (``refused``); the
    caller decides the refusal from the payee, as on the Python path.
    """
    if accept:
        amount = ledger.money(amount)
        if amount <= 0:
            raise ledger.LedgerError("a payment is positive")
    else:
        amount = None  # only looking
    row = await tx.fetchone(
        "SELECT * FROM payment_accept(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (provider, external_id, ref if isinstance(ref, int) else None,
         ref if isinstance(ref, str) else None, amount, json.dumps(details or {}),
         external_date, accept, "settle" in flags, "receipt" in flags),
    )
    outcome, payee, payment = row[0], row[1:6], row[6:]
    return SQLAccept(outcome,
                     None if payee[0] is None else ledger.Payee(*payee),
                     None if payment[0] is None else Payment(*payment))


@frozen
class Payments:
    """
    The accept path every money source shares, with the hooks fixed at
    construction (the composition root decides them once: e.g. the fiscal
    receipt queue when ``[dreamkas] always_fiscalize``).
    """

    hooks: tuple[AcceptHook, ...] = field(default=(), converter=tuple)
    # The billing's settlement of the paid customer (smartyd.billing), run
    # first: the core's own step, not a configurable side effect.
    settle: tuple[AcceptHook, ...] = field(default=(), converter=tuple)

    @property
    def accept_hooks(self) -> tuple[AcceptHook, ...]:
        """What runs in an accepting transaction: the settlement, then the hooks."""
        return self.settle + self.hooks

    async def accept(self, tx: Tx, provider: str, external_id: str, account_id: int | None,
                     amount: object, details: dict | None = None,
                     external_date=None, customer_id: int | None = None
                     ) -> tuple[Payment, bool]:
        """L{accept} with this daemon's hooks."""
        return await accept(tx, provider, external_id, account_id, amount, details=details,
                            external_date=external_date, hooks=self.accept_hooks,
                            customer_id=customer_id)
