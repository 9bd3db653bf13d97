"""
The billing core: customers, accounts and the append-only ledger.

Every function takes a L{Tx} so that callers compose them into one
transaction (a payment row and its ledger entry commit together).  Money is
L{Decimal} with two places, never float.

The balance invariant: ``customers.balance`` (the customer's virtual account)
equals the sum of the customer's ledger rows.  L{post} keeps it by locking the
customer row, then inserting the ledger row and moving the balance in the same
transaction.  Accounts (abonements) belong to customers and carry no money.  An idempotency key
that exists already returns the original entry and changes nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
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


# -- customers ----------------------------------------------------------------------
_CUSTOMER_COLUMNS = (
    "id, name, firstname, middlename, lastname, comment, phone, email, ext_id,"
    " contract_number, meta, balance, created"
)


@frozen
class Customer:
    """The money holder: its balance is the sum of its ledger rows."""

    id: int
    name: str
    firstname: str
    middlename: str
    lastname: str
    comment: str
    phone: str | None
    email: str | None
    ext_id: str | None
    contract_number: str | None
    meta: dict
    balance: Decimal
    created: object

    @property
    def ppc(self) -> str:
        return ppc.encode(self.id)

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "ppc": self.ppc,
            "name": self.name,
            "firstname": self.firstname,
            "middlename": self.middlename,
            "lastname": self.lastname,
            "comment": self.comment,
            "phone": self.phone,
            "email": self.email,
            "ext_id": self.ext_id,
            "contract_number": self.contract_number,
            "meta": self.meta,
            "balance": str(self.balance),
            "created": self.created.isoformat() if self.created else None,
        }


class CustomerNotFound(LedgerError):
    pass


async def create_customer(tx: Tx, name: str = "", phone: str | None = None,
                          email: str | None = None, *, ext_id: str | None = None,
                          firstname: str = "", middlename: str = "", lastname: str = "",
                          comment: str = "", contract_number: str | None = None,
                          meta: dict | None = None) -> int:
    """A new customer's id (ids come from the sequence accounts share)."""
    if ext_id is not None and not 1 <= len(ext_id) <= 64:
        raise LedgerError("ext_id must be 1-64 characters")
    if ext_id is not None and await tx.fetchval(
            "SELECT 1 FROM customers WHERE ext_id = %s", (ext_id,)):
        raise LedgerError(f"a customer with ext_id {ext_id!r} exists already")
    return await tx.fetchval(
        "INSERT INTO customers (name, phone, email, ext_id, firstname, middlename, lastname,"
        " comment, contract_number, meta) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " RETURNING id",
        (name or "", phone, email, ext_id, firstname, middlename, lastname, comment,
         contract_number, json.dumps(meta or {})),
    )


_CUSTOMER_FIELDS = ("name", "firstname", "middlename", "lastname", "comment", "phone", "email",
                    "ext_id", "contract_number")


async def update_customer(tx: Tx, customer_id: int, **fields) -> None:
    """Set the given fields (those passed as None are left as they are)."""
    changes = {k: v for k, v in fields.items() if v is not None}
    unknown = set(changes) - set(_CUSTOMER_FIELDS) - {"meta"}
    if unknown:
        raise LedgerError(f"unknown customer fields {sorted(unknown)}")
    if "meta" in changes:
        changes["meta"] = json.dumps(changes["meta"])
    if not changes:
        return
    sets = ", ".join(f"{k} = %s" for k in changes)
    done = await tx.fetchval(
        f"UPDATE customers SET {sets}, updated = now() WHERE id = %s RETURNING id",
        (*changes.values(), customer_id),
    )
    if done is None:
        raise CustomerNotFound(f"no customer {customer_id}")


async def get_customer(tx: Tx, customer_id: int, lock: bool = False) -> Customer | None:
    row = await tx.fetchone(
        f"SELECT {_CUSTOMER_COLUMNS} FROM customers WHERE id = %s"
        + (" FOR UPDATE" if lock else ""),
        (customer_id,),
    )
    return None if row is None else Customer(*row)


async def customer_account_ids(tx: Tx, customer_id: int) -> list[int]:
    rows = await tx.fetchall(
        "SELECT id FROM accounts WHERE customer_id = %s ORDER BY id", (customer_id,))
    return [r[0] for r in rows]


# -- accounts -------------------------------------------------------------------------
_ACCOUNT_COLUMNS = (
    "a.id, a.customer_id, a.login, a.active, a.status_reason, a.payments_allowed, c.balance,"
    " a.created, a.password_hash"
)
_ACCOUNT_FROM = "accounts a JOIN customers c ON c.id = a.customer_id"
# Free text, as external billings send it (Smarty: ACTIVE, DEBT, BLOCK, ...).
STATUS_REASON_RE = re.compile(r"^[A-Za-z0-9_ .-]{1,20}$")
ACTIVE, DEBT, BLOCK = "ACTIVE", "DEBT", "BLOCK"


@frozen
class Account:
    """
    An abonement (a login on devices) of a customer; ``balance`` is the
    customer's (the money is the customer's virtual account).
    """

    id: int
    customer_id: int
    login: str
    active: bool
    status_reason: str
    payments_allowed: bool
    balance: Decimal
    created: object
    password_hash: str

    @property
    def ppc(self) -> str:
        """The payment code terminals take: the customer's."""
        return ppc.encode(self.customer_id)

    @property
    def status(self) -> str:
        """``active`` or ``blocked`` (the admin's word before status_reason)."""
        return "active" if self.active else "blocked"

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "ppc": self.ppc,
            "login": self.login,
            "status": self.status,
            "active": self.active,
            "status_reason": self.status_reason,
            "balance": str(self.balance),
            "payments_allowed": self.payments_allowed,
            "customer_id": self.customer_id,
            "created": self.created.isoformat() if self.created else None,
        }


def _account(row: tuple | None) -> Account | None:
    return None if row is None else Account(*row)


async def create_account(
    tx: Tx,
    login: str,
    password_hash: str = "",
    account_id: int | None = None,
    customer_id: int | None = None,
) -> Account:
    """
    A new account.  Without ``customer_id`` a customer is created for it,
    with the account's own id when free (the trigger of migration 0006).
    """
    if not LOGIN_RE.match(login or ""):
        raise LedgerError("login must be 1-64 characters of A-Z a-z 0-9 _ . @ + -")
    if account_id is not None and account_id <= 0:
        raise LedgerError("account id must be positive")
    if await tx.fetchval("SELECT 1 FROM accounts WHERE login = %s", (login,)):
        raise LedgerError(f"login {login!r} exists already")
    if customer_id is not None and not await tx.fetchval(
            "SELECT 1 FROM customers WHERE id = %s", (customer_id,)):
        raise CustomerNotFound(f"no customer {customer_id}")
    if account_id is not None:
        if await tx.fetchval("SELECT 1 FROM accounts WHERE id = %s", (account_id,)):
            raise LedgerError(f"account id {account_id} exists already")
        new_id = await tx.fetchval(
            "INSERT INTO accounts (id, login, password_hash, customer_id)"
            " VALUES (%s, %s, %s, %s) RETURNING id",
            (account_id, login, password_hash, customer_id),
        )
        await tx.execute(
            "SELECT setval('accounts_id_seq', greatest((SELECT max(id) FROM accounts),"
            " (SELECT max(id) FROM customers), 1))"
        )
    else:
        new_id = await tx.fetchval(
            "INSERT INTO accounts (login, password_hash, customer_id)"
            " VALUES (%s, %s, %s) RETURNING id",
            (login, password_hash, customer_id),
        )
    return await get_account(tx, new_id)


async def get_account(tx: Tx, account_id: int, lock: bool = False) -> Account | None:
    return _account(
        await tx.fetchone(
            f"SELECT {_ACCOUNT_COLUMNS} FROM {_ACCOUNT_FROM} WHERE a.id = %s"
            + (" FOR UPDATE OF a" if lock else ""),
            (account_id,),
        )
    )


async def find_account_by_login(tx: Tx, login: str) -> Account | None:
    return _account(
        await tx.fetchone(
            f"SELECT {_ACCOUNT_COLUMNS} FROM {_ACCOUNT_FROM} WHERE a.login = %s", (login,))
    )


async def customer_accounts(tx: Tx, customer_id: int) -> list[Account]:
    rows = await tx.fetchall(
        f"SELECT {_ACCOUNT_COLUMNS} FROM {_ACCOUNT_FROM} WHERE a.customer_id = %s ORDER BY a.id",
        (customer_id,),
    )
    return [Account(*r) for r in rows]


async def set_active(tx: Tx, account_id: int, active: bool, reason: str) -> Account:
    """
    Activate or deactivate an account, saying why (``status_reason``).  The
    decision is the caller's from now on: the built-in billing no longer
    lifts a DEBT it had declared (``debt_by_billing``).
    """
    if not STATUS_REASON_RE.match(reason or ""):
        raise LedgerError("status_reason must be 1-20 characters of A-Z a-z 0-9 _ . - and space")
    updated = await tx.fetchval(
        "UPDATE accounts SET active = %s, status_reason = %s, debt_by_billing = false,"
        " updated = now() WHERE id = %s"
        " RETURNING id",
        (active, reason, account_id),
    )
    if updated is None:
        raise AccountNotFound(f"no account {account_id}")
    return await get_account(tx, account_id)


async def set_status(tx: Tx, account_id: int, status: str) -> Account:
    """``blocked`` (inactive, BLOCK) or ``active`` (ACTIVE): the operator's block."""
    if status not in ("active", "blocked"):
        raise LedgerError(f"unknown status {status!r}")
    return await set_active(tx, account_id, status == "active",
                            ACTIVE if status == "active" else BLOCK)


# -- the ledger -------------------------------------------------------------------
@frozen
class Entry:
    id: int
    customer_id: int | None
    account_id: int | None
    amount: Decimal
    kind: str
    cause: str
    idem_key: str
    balance_after: Decimal
    created: object
    tariff_id: int | None = None
    at: object = None

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "customer_id": self.customer_id,
            "account_id": self.account_id,
            "amount": str(self.amount),
            "kind": self.kind,
            "cause": self.cause,
            "idem_key": self.idem_key,
            "balance_after": str(self.balance_after),
            "tariff_id": self.tariff_id,
            "at": (self.at or self.created).isoformat(),
            "created": self.created.isoformat(),
        }


_ENTRY_COLUMNS = (
    "id, customer_id, account_id, amount, kind, cause, idem_key, balance_after, created,"
    " tariff_id, at"
)


async def get_entry(tx: Tx, idem_key: str) -> Entry | None:
    row = await tx.fetchone(f"SELECT {_ENTRY_COLUMNS} FROM ledger WHERE idem_key = %s", (idem_key,))
    return None if row is None else Entry(*row)


async def get_entry_by_id(tx: Tx, entry_id: int) -> Entry | None:
    row = await tx.fetchone(f"SELECT {_ENTRY_COLUMNS} FROM ledger WHERE id = %s", (entry_id,))
    return None if row is None else Entry(*row)


async def post(
    tx: Tx, customer_id: int, amount: object, kind: str, cause: str, idem_key: str, *,
    account_id: int | None = None, tariff_id: int | None = None,
    subscription_id: int | None = None, at=None,
) -> tuple[Entry, bool]:
    """
    Add ``amount`` (signed) to the customer's virtual account, once per ``idem_key``.

    Returns ``(entry, created)``: ``created`` is False when the key existed,
    and then nothing changed.  A key that exists for another customer or amount
    raises L{IdempotencyConflict}.  ``account_id`` names the account the
    money came through, when there is one.
    """
    amount = money(amount)
    if amount == 0:
        raise LedgerError("a ledger entry moves a non-zero amount")
    if not idem_key:
        raise LedgerError("a ledger entry needs an idempotency key")
    # The row lock serialises every ledger write of this customer; after it,
    # a concurrent transaction with the same key has committed or rolled back.
    balance = await tx.fetchval(
        "SELECT balance FROM customers WHERE id = %s FOR UPDATE", (customer_id,)
    )
    if balance is None:
        raise CustomerNotFound(f"no customer {customer_id}")
    row = await tx.fetchone(
        f"INSERT INTO ledger (customer_id, account_id, amount, kind, cause, idem_key,"
        f" balance_after, tariff_id, subscription_id, at)"
        f" VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        f" ON CONFLICT (idem_key) DO NOTHING RETURNING {_ENTRY_COLUMNS}",
        (customer_id, account_id, amount, kind, cause, idem_key, balance + amount, tariff_id,
         subscription_id, at),
    )
    if row is None:
        existing = await get_entry(tx, idem_key)
        if existing.customer_id != customer_id or existing.amount != amount:
            raise IdempotencyConflict(
                f"key {idem_key!r} was used for customer {existing.customer_id}"
                f" amount {existing.amount}"
            )
        return existing, False
    await tx.execute(
        "UPDATE customers SET balance = balance + %s, updated = now() WHERE id = %s",
        (amount, customer_id),
    )
    return Entry(*row), True


async def post_many(tx: Tx, entries: list[tuple[int, object, str]], kind: str,
                    cause: str) -> int:
    """
    L{post} for many customers in one statement: ``entries`` are
    ``(customer_id, amount, idem_key)``, each customer at most once.  The
    same rules: the customer rows are locked first (in id order, so two such
    statements cannot deadlock, and after the lock a racing post of the same
    key has committed or rolled back), each row's ``balance_after`` follows
    the locked balance, a key that exists already changes nothing, and the
    balances move in the same statement.  Returns the number of rows posted.

    The caller checks keys that exist with another customer or amount
    (L{IdempotencyConflict} in L{post}): here they are only not posted.
    """
    if not entries:
        return 0
    ids, amounts, keys = [], [], []
    for customer_id, amount, idem_key in entries:
        amount = money(amount)
        if amount == 0 or not idem_key:
            raise LedgerError("a ledger entry moves a non-zero amount and has a key")
        ids.append(customer_id)
        amounts.append(amount)
        keys.append(idem_key)
    if len(set(ids)) != len(ids):
        raise LedgerError("post_many posts once per customer")
    rows = await tx.fetchall(
        "WITH v AS (SELECT * FROM unnest(%s::bigint[], %s::numeric[], %s::text[])"
        "           AS v(customer_id, amount, idem_key)),"
        " locked AS (SELECT c.id, c.balance FROM customers c"
        "            WHERE c.id IN (SELECT customer_id FROM v) ORDER BY c.id FOR UPDATE),"
        " posted AS (INSERT INTO ledger (customer_id, amount, kind, cause, idem_key,"
        "                                balance_after)"
        "            SELECT v.customer_id, v.amount, %s, %s, v.idem_key, l.balance + v.amount"
        "              FROM v JOIN locked l ON l.id = v.customer_id"
        "            ON CONFLICT (idem_key) DO NOTHING RETURNING customer_id, amount)"
        " UPDATE customers c SET balance = c.balance + p.amount, updated = now()"
        "   FROM posted p WHERE c.id = p.customer_id RETURNING c.id",
        (ids, amounts, keys, kind, cause),
    )
    return len(rows)


async def credit(tx: Tx, customer_id: int, amount: object, kind: str, cause: str,
                 idem_key: str, **kw) -> tuple[Entry, bool]:
    if money(amount) <= 0:
        raise LedgerError("a credit is positive")
    return await post(tx, customer_id, amount, kind, cause, idem_key, **kw)


async def ledger_sum(tx: Tx, customer_id: int) -> Decimal:
    """The sum of the customer's ledger rows (its balance must equal it)."""
    return await tx.fetchval(
        "SELECT coalesce(sum(amount), 0)::numeric(14,2) FROM ledger WHERE customer_id = %s",
        (customer_id,),
    )


STATEMENT_MAX_ROWS = 10000
_PAGE_COLUMNS = ", ".join("p." + c.strip() for c in _ENTRY_COLUMNS.split(","))


@frozen
class Statement:
    """
    A customer's ledger over a period: ``opening_balance`` + the sum of
    ``rows`` (oldest first) == ``closing_balance``, always.  ``more``: rows of
    the period before the first one shown were left out (a limit cut it).
    """

    opening_balance: Decimal
    rows: list
    closing_balance: Decimal
    more: bool

    def to_json(self) -> dict:
        return {"opening_balance": str(self.opening_balance),
                "rows": [r.to_json() for r in self.rows],
                "closing_balance": str(self.closing_balance), "more": self.more}


async def statement(tx: Tx, customer_id: int, *, start=None, end=None, limit: int = 1000,
                    before: int | None = None) -> Statement:
    """
    The customer's statement: the one function the CLI (``customer
    statement``), the widgets' cabinet and the console call.

    A row belongs to the period when its moment (``at``, else ``created``:
    the ``at`` of L{Entry.to_json}) is in ``[start, end)`` -- either bound
    None for open.  With ``before`` (a ledger row id), only the period's rows
    older than that row count: the way to page backwards.  ``rows`` are the
    last ``limit`` of those in ledger order (``id``), oldest first; ``more``
    is True when older ones were left out -- the next page is
    ``before=rows[0].id``, whose ``closing_balance`` is this page's
    ``opening_balance``.  ``opening_balance`` is the sum of every row of the
    customer that precedes the shown rows (before ``start``, and the
    period's older rows left out); ``closing_balance`` is it plus the rows
    shown -- for the whole history (no bounds) the customer's balance.  One
    statement, one snapshot: a pay committing meanwhile is wholly in or out.

    @param start: an aware C{datetime} or None; @param end: likewise.
    @param limit: 0..L{STATEMENT_MAX_ROWS}.  @param before: a row id > 0 or None.
    @raise LedgerError: bad arguments (one line, naming the parameter).
    @raise CustomerNotFound: no such customer.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) \
            or not 0 <= limit <= STATEMENT_MAX_ROWS:
        raise LedgerError(f"limit: 0..{STATEMENT_MAX_ROWS}, not {limit}")
    if before is not None and (isinstance(before, bool) or not isinstance(before, int)
                               or not 0 < before < 2**63):
        raise LedgerError(f"before: a ledger row id (above 0), not {before}")
    for name, value in (("from", start), ("to", end)):
        if value is not None and getattr(value, "tzinfo", None) is None:
            raise LedgerError(f"{name}: give a moment with its time zone")
    if start is not None and end is not None and start >= end:
        raise LedgerError("from: must be before to")
    found = await tx.fetchall(
        "WITH period AS ("
        f" SELECT {_ENTRY_COLUMNS} FROM ledger WHERE customer_id = %(c)s"
        "  AND (%(start)s::timestamptz IS NULL OR coalesce(at, created) >= %(start)s)"
        "  AND (%(end)s::timestamptz IS NULL OR coalesce(at, created) < %(end)s)"
        "  AND (%(before)s::bigint IS NULL OR id < %(before)s)),"
        " page AS (SELECT * FROM period ORDER BY id DESC LIMIT %(limit)s + 1),"
        " totals AS (SELECT"
        "  (SELECT balance FROM customers WHERE id = %(c)s) AS balance,"
        "  (SELECT coalesce(sum(amount), 0) FROM ledger WHERE customer_id = %(c)s"
        "   AND %(start)s::timestamptz IS NOT NULL AND coalesce(at, created) < %(start)s)"
        "   AS earlier,"
        "  (SELECT coalesce(sum(amount), 0) FROM period) AS period)"
        f" SELECT t.balance, t.earlier, t.period, {_PAGE_COLUMNS}"
        " FROM totals t LEFT JOIN page p ON true ORDER BY p.id",
        {"c": customer_id, "start": start, "end": end, "before": before, "limit": limit},
    )
    balance, earlier, period = found[0][:3]
    if balance is None:
        raise CustomerNotFound(f"no customer {customer_id}")
    rows = [Entry(*r[3:]) for r in found if r[3] is not None]
    more = len(rows) > limit
    if more:
        rows = rows[1:]
    closing = earlier + period
    return Statement(closing - sum((r.amount for r in rows), Decimal("0.00")), rows, closing,
                     more)


async def balance_mismatches(tx: Tx) -> list[tuple[int, Decimal, Decimal]]:
    """Customers whose balance differs from their ledger sum (must always be empty)."""
    return await tx.fetchall(
        "SELECT c.id, c.balance, coalesce(sum(l.amount), 0) FROM customers c"
        " LEFT JOIN ledger l ON l.customer_id = c.id GROUP BY c.id, c.balance"
        " HAVING c.balance <> coalesce(sum(l.amount), 0)"
    )


# -- payees -------------------------------------------------------------------------
@frozen
class Payee:
    """
    Whom a payment credits: a customer, reached through one of its accounts
    (a login, a gateway order) or by its payment code (``account_id`` is then
    its only account, or None when it has several or none).

    ``payments_allowed`` / ``active`` are the account's, or for a customer
    all / any of its accounts' (a customer without accounts may be paid).
    An account deactivated for DEBT counts as active here: paying is how a
    debt ends.
    """

    customer_id: int
    account_id: int | None
    balance: Decimal
    payments_allowed: bool
    active: bool


async def find_payee(tx: Tx, ref: int | str, lock: bool = False) -> Payee | None:
    """
    The payee an id (a customer id) or a login (an account) names.  With
    ``lock`` the customer row is locked FOR UPDATE (see L{payments.accept}
    for the lock order).

    One statement, the server-side C{payee_lookup} (migration 0011): an OSMP
    check is this one round trip (L{Database.run_statement}).
    """
    row = await tx.fetchone(
        "SELECT customer_id, account_id, balance, payments_allowed, active"
        " FROM payee_lookup(%s, %s, %s)",
        (ref if isinstance(ref, int) else None, ref if isinstance(ref, str) else None, lock),
    )
    return None if row is None else Payee(*row)
