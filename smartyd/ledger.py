"""
The billing core: customers, accounts and the append-only ledger.

Every function takes a L{Tx} so that callers compose them into one
transaction (a payment row and its ledger entry commit together).  Money is
L{Decimal} with two places, never float.

The balance invariant: ``accounts.balance`` equals the sum of the account's
ledger rows.  L{post} keeps it by locking the account row, then inserting the
ledger row and moving the balance in the same transaction.  An idempotency key
that exists already returns the original entry and changes nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from attrs import frozen

from smartyd import ppc
from smartyd.db import Tx

CENT = Decimal("0.01")
MAX_AMOUNT = Decimal("999999999999.99")
LOGIN_RE = re.compile(r"^[A-Za-z0-9_.@+-]{1,64}$")


class LedgerError(Exception):
    """A ledger operation was refused; the message says why."""


class AccountNotFound(LedgerError):
    pass


class IdempotencyConflict(LedgerError):
    """The idempotency key exists with a different account or amount."""


def money(value: object) -> Decimal:
    """A money amount from a string/int/Decimal, rounded to cents; never from float."""
    if isinstance(value, float):
        raise TypeError("money is never a float")
    try:
        amount = Decimal(str(value)).quantize(CENT, rounding=ROUND_HALF_UP)
    except (InvalidOperation, ValueError):
        raise LedgerError(f"not an amount: {value!r}")
    if not amount.is_finite() or abs(amount) > MAX_AMOUNT:
        raise LedgerError(f"amount out of range: {value!r}")
    return amount


def kopecks(amount: Decimal) -> int:
    """
    A money amount as integer kopecks, as partners take it (Payture, Dreamkas).
    Money carries at most two places: anything finer is a bug, not a rounding.
    """
    if not isinstance(amount, Decimal):
        raise TypeError("money is a Decimal")
    cents = amount * 100
    if cents != cents.to_integral_value():
        raise ValueError(f"{amount} has more than two decimal places")
    return int(cents)


# -- passwords ----------------------------------------------------------------
_SCRYPT = dict(n=2**14, r=8, p=1)


def hash_password(password: str) -> str:
    """A salted scrypt hash (CPU-heavy: call it off the reactor thread)."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, dklen=32, **_SCRYPT)
    return "scrypt${n}${r}${p}${salt}${digest}".format(
        salt=base64.b64encode(salt).decode(),
        digest=base64.b64encode(digest).decode(),
        **_SCRYPT,
    )


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of ``password`` against a L{hash_password} value."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        want = base64.b64decode(digest)
        got = hashlib.scrypt(
            password.encode("utf-8"),
            salt=base64.b64decode(salt),
            dklen=len(want),
            n=int(n),
            r=int(r),
            p=int(p),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


# -- accounts -------------------------------------------------------------------
_ACCOUNT_COLUMNS = (
    "id, customer_id, login, status, payments_allowed, balance, created, password_hash"
)


@frozen
class Account:
    id: int
    customer_id: int | None
    login: str
    status: str
    payments_allowed: bool
    balance: Decimal
    created: object
    password_hash: str

    @property
    def ppc(self) -> str:
        return ppc.encode(self.id)

    @property
    def active(self) -> bool:
        return self.status == "active"

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "ppc": self.ppc,
            "login": self.login,
            "status": self.status,
            "balance": str(self.balance),
            "payments_allowed": self.payments_allowed,
            "customer_id": self.customer_id,
            "created": self.created.isoformat() if self.created else None,
        }


def _account(row: tuple | None) -> Account | None:
    return None if row is None else Account(*row)


async def create_customer(tx: Tx, name: str = "", phone: str | None = None,
                          email: str | None = None) -> int:
    return await tx.fetchval(
        "INSERT INTO customers (name, phone, email) VALUES (%s, %s, %s) RETURNING id",
        (name, phone, email),
    )


async def create_account(
    tx: Tx,
    login: str,
    password_hash: str = "",
    account_id: int | None = None,
    customer_id: int | None = None,
) -> Account:
    if not LOGIN_RE.match(login or ""):
        raise LedgerError("login must be 1-64 characters of A-Z a-z 0-9 _ . @ + -")
    if account_id is not None and account_id <= 0:
        raise LedgerError("account id must be positive")
    if await tx.fetchval("SELECT 1 FROM accounts WHERE login = %s", (login,)):
        raise LedgerError(f"login {login!r} exists already")
    if account_id is not None:
        if await tx.fetchval("SELECT 1 FROM accounts WHERE id = %s", (account_id,)):
            raise LedgerError(f"account id {account_id} exists already")
        row = await tx.fetchone(
            f"INSERT INTO accounts (id, login, password_hash, customer_id)"
            f" VALUES (%s, %s, %s, %s) RETURNING {_ACCOUNT_COLUMNS}",
            (account_id, login, password_hash, customer_id),
        )
        await tx.execute(
            "SELECT setval(pg_get_serial_sequence('accounts', 'id'),"
            " greatest((SELECT max(id) FROM accounts), 1))"
        )
    else:
        row = await tx.fetchone(
            f"INSERT INTO accounts (login, password_hash, customer_id)"
            f" VALUES (%s, %s, %s) RETURNING {_ACCOUNT_COLUMNS}",
            (login, password_hash, customer_id),
        )
    return _account(row)


async def get_account(tx: Tx, account_id: int, lock: bool = False) -> Account | None:
    return _account(
        await tx.fetchone(
            f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE id = %s"
            + (" FOR UPDATE" if lock else ""),
            (account_id,),
        )
    )


async def find_account_by_login(tx: Tx, login: str) -> Account | None:
    return _account(
        await tx.fetchone(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE login = %s", (login,))
    )


async def set_status(tx: Tx, account_id: int, status: str) -> Account:
    if status not in ("active", "blocked"):
        raise LedgerError(f"unknown status {status!r}")
    row = await tx.fetchone(
        f"UPDATE accounts SET status = %s, updated = now() WHERE id = %s"
        f" RETURNING {_ACCOUNT_COLUMNS}",
        (status, account_id),
    )
    if row is None:
        raise AccountNotFound(f"no account {account_id}")
    return _account(row)


# -- the ledger -------------------------------------------------------------------
@frozen
class Entry:
    id: int
    account_id: int
    amount: Decimal
    kind: str
    cause: str
    idem_key: str
    balance_after: Decimal
    created: object

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "account_id": self.account_id,
            "amount": str(self.amount),
            "kind": self.kind,
            "cause": self.cause,
            "idem_key": self.idem_key,
            "balance_after": str(self.balance_after),
            "created": self.created.isoformat(),
        }


_ENTRY_COLUMNS = "id, account_id, amount, kind, cause, idem_key, balance_after, created"


async def get_entry(tx: Tx, idem_key: str) -> Entry | None:
    row = await tx.fetchone(f"SELECT {_ENTRY_COLUMNS} FROM ledger WHERE idem_key = %s", (idem_key,))
    return None if row is None else Entry(*row)


async def get_entry_by_id(tx: Tx, entry_id: int) -> Entry | None:
    row = await tx.fetchone(f"SELECT {_ENTRY_COLUMNS} FROM ledger WHERE id = %s", (entry_id,))
    return None if row is None else Entry(*row)


async def post(
    tx: Tx, account_id: int, amount: object, kind: str, cause: str, idem_key: str
) -> tuple[Entry, bool]:
    """
    Add ``amount`` (signed) to the account, once per ``idem_key``.

    Returns ``(entry, created)``: ``created`` is False when the key existed,
    and then nothing changed.  A key that exists for another account or amount
    raises L{IdempotencyConflict}.
    """
    amount = money(amount)
    if amount == 0:
        raise LedgerError("a ledger entry moves a non-zero amount")
    if not idem_key:
        raise LedgerError("a ledger entry needs an idempotency key")
    # The row lock serialises every ledger write of this account; after it,
    # a concurrent transaction with the same key has committed or rolled back.
    balance = await tx.fetchval(
        "SELECT balance FROM accounts WHERE id = %s FOR UPDATE", (account_id,)
    )
    if balance is None:
        raise AccountNotFound(f"no account {account_id}")
    row = await tx.fetchone(
        f"INSERT INTO ledger (account_id, amount, kind, cause, idem_key, balance_after)"
        f" VALUES (%s, %s, %s, %s, %s, %s)"
        f" ON CONFLICT (idem_key) DO NOTHING RETURNING {_ENTRY_COLUMNS}",
        (account_id, amount, kind, cause, idem_key, balance + amount),
    )
    if row is None:
        existing = await get_entry(tx, idem_key)
        if existing.account_id != account_id or existing.amount != amount:
            raise IdempotencyConflict(
                f"key {idem_key!r} was used for account {existing.account_id}"
                f" amount {existing.amount}"
            )
        return existing, False
    await tx.execute(
        "UPDATE accounts SET balance = balance + %s, updated = now() WHERE id = %s",
        (amount, account_id),
    )
    return Entry(*row), True


async def credit(tx: Tx, account_id: int, amount: object, kind: str, cause: str,
                 idem_key: str) -> tuple[Entry, bool]:
    if money(amount) <= 0:
        raise LedgerError("a credit is positive")
    return await post(tx, account_id, amount, kind, cause, idem_key)


async def ledger_sum(tx: Tx, account_id: int) -> Decimal:
    return await tx.fetchval(
        "SELECT coalesce(sum(amount), 0)::numeric(14,2) FROM ledger WHERE account_id = %s",
        (account_id,),
    )


async def balance_mismatches(tx: Tx) -> list[tuple[int, Decimal, Decimal]]:
    """Accounts whose balance differs from their ledger sum (must always be empty)."""
    return await tx.fetchall(
        "SELECT a.id, a.balance, coalesce(sum(l.amount), 0) FROM accounts a"
        " LEFT JOIN ledger l ON l.account_id = a.id GROUP BY a.id, a.balance"
        " HAVING a.balance <> coalesce(sum(l.amount), 0)"
    )
