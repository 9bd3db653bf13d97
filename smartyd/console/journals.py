"""
The console's journals (read only, plain SQL): payments per day and
provider, the reconciliation of a provider's daily registry against our
payments, the receipt queue and the pollers' health.

A registry is a CSV file of one provider's day: a transaction id, a date,
an account and an amount per line, in columns the operator names on upload
(L{Layout}, remembered per provider).  L{reconcile} compares it with our
payments of that provider whose time (the provider's own ``external_date``,
else when we accepted it) falls on that day in UTC, by transaction id.
"""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal, InvalidOperation

from attrs import asdict, frozen

from smartyd.db import Tx

PROVIDER_RE = re.compile(r"^[a-z0-9_-]{1,32}$")
MAX_ROWS = 100_000
DELIMITERS = {";": ";", ",": ",", "tab": "\t"}


class RegistryError(ValueError):
    """The registry or its layout cannot be read; the message says where."""


def day_range(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time(0), timezone.utc)
    return start, start + timedelta(days=1)


async def payments_per_day(tx: Tx, since: date, until: date) -> list[dict]:
    """Count and sum per UTC day (of acceptance) and provider, ``since`` to ``until`` inclusive."""
    return await tx.fetchdicts(
        "SELECT (created AT TIME ZONE 'UTC')::date AS day, provider, count(*) AS count,"
        " sum(amount) AS total FROM payments WHERE created >= %s AND created < %s"
        " GROUP BY 1, 2 ORDER BY 1 DESC, 2",
        (day_range(since)[0], day_range(until)[1]))


async def providers(tx: Tx) -> list[str]:
    rows = await tx.fetchall("SELECT DISTINCT provider FROM payments ORDER BY 1")
    return [r[0] for r in rows]


# -- registry reconciliation ---------------------------------------------------------------------
@frozen
class Layout:
    """Which 1-based column holds what (``date`` and ``account`` 0: not in the file)."""

    delimiter: str = ";"
    header: bool = True
    txn: int = 1
    date: int = 2
    account: int = 3
    amount: int = 4

    def check(self) -> None:
        if self.delimiter not in DELIMITERS:
            raise RegistryError("the delimiter is one of ; , tab")
        for name in ("txn", "amount", "date", "account"):
            value = getattr(self, name)
            if not (1 if name in ("txn", "amount") else 0) <= value <= 50:
                raise RegistryError(f"the {name} column is a number 1-50")
        used = [v for v in (self.txn, self.date, self.account, self.amount) if v]
        if len(set(used)) != len(used):
            raise RegistryError("two fields name the same column")


async def get_layout(tx: Tx, provider: str) -> Layout:
    raw = await tx.fetchval("SELECT layout FROM registry_layouts WHERE provider = %s",
                            (provider,))
    try:
        return Layout(**raw) if raw else Layout()
    except TypeError:
        return Layout()


async def save_layout(tx: Tx, provider: str, layout: Layout, at: datetime) -> None:
    await tx.execute(
        "INSERT INTO registry_layouts (provider, layout, updated) VALUES (%s, %s, %s)"
        " ON CONFLICT (provider) DO UPDATE SET layout = excluded.layout,"
        " updated = excluded.updated", (provider, json.dumps(asdict(layout)), at))


@frozen
class RegistryRow:
    line: int
    txn: str
    date: str
    account: str
    amount: Decimal


def parse_registry(data: bytes, layout: Layout) -> list[RegistryRow]:
    """The registry's rows; L{RegistryError} naming the first line that cannot be read."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("cp1251")  # Russian providers' registries often are
    rows = []
    reader = csv.reader(io.StringIO(text), delimiter=DELIMITERS[layout.delimiter])
    seen: set[str] = set()
    for number, cells in enumerate(reader, start=1):
        if number == 1 and layout.header:
            continue
        if not any(c.strip() for c in cells):
            continue
        if len(rows) >= MAX_ROWS:
            raise RegistryError(f"more than {MAX_ROWS} lines")

        def cell(column: int) -> str:
            if column == 0:
                return ""
            if column > len(cells):
                raise RegistryError(f"line {number}: no column {column}")
            return cells[column - 1].strip()

        txn = cell(layout.txn)
        if not txn or len(txn) > 100:
            raise RegistryError(f"line {number}: no transaction id")
        if txn in seen:
            raise RegistryError(f"line {number}: transaction {txn} is listed twice")
        seen.add(txn)
        text_amount = cell(layout.amount).replace(" ", "").replace(",", ".")
        try:
            amount = Decimal(text_amount)
        except InvalidOperation:
            raise RegistryError(f"line {number}: not an amount: {text_amount[:20]!r}")
        if not amount.is_finite() or amount.as_tuple().exponent < -2 or amount <= 0:
            raise RegistryError(f"line {number}: not an amount: {text_amount[:20]!r}")
        rows.append(RegistryRow(number, txn, cell(layout.date)[:40], cell(layout.account)[:64],
                                amount))
    return rows


@frozen
class Reconciliation:
    matched: list       # (registry row, our payment)
    only_registry: list  # registry rows we have no payment for
    only_ours: list      # our payments the registry does not list
    mismatched: list     # (registry row, our payment) with different amounts


async def reconcile(tx: Tx, provider: str, day: date, rows: list[RegistryRow]
                    ) -> Reconciliation:
    start, end = day_range(day)
    ours = await tx.fetchdicts(
        "SELECT external_id, amount, customer_id, account_id, created, external_date"
        " FROM payments WHERE provider = %s"
        " AND coalesce(external_date, created) >= %s AND coalesce(external_date, created) < %s"
        " ORDER BY id", (provider, start, end))
    # A registry line may name a payment of ours dated on another day (late, early).
    listed = [r.txn for r in rows]
    others = {p["external_id"]: p for p in await tx.fetchdicts(
        "SELECT external_id, amount, customer_id, account_id, created, external_date"
        " FROM payments WHERE provider = %s AND external_id = ANY(%s)", (provider, listed))}
    by_id = {p["external_id"]: p for p in ours}
    by_id.update(others)
    matched, only_registry, mismatched = [], [], []
    for row in rows:
        payment = by_id.get(row.txn)
        if payment is None:
            only_registry.append(row)
        elif payment["amount"] == row.amount:
            matched.append((row, payment))
        else:
            mismatched.append((row, payment))
    listed_set = set(listed)
    only_ours = [p for p in ours if p["external_id"] not in listed_set]
    return Reconciliation(matched, only_registry, only_ours, mismatched)


def csv_text(value: str) -> str:
    """
    A text cell safe to open in a spreadsheet: one starting with = + - @ (a
    formula there) gets a leading apostrophe.  Amounts are written as numbers.
    """
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def reconciliation_csv(result: Reconciliation) -> bytes:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["outcome", "txn_id", "registry_amount", "our_amount", "customer_id",
                "registry_date", "registry_account"])
    t = csv_text
    for row, p in result.mismatched:
        w.writerow(["amount_mismatch", t(row.txn), row.amount, p["amount"], p["customer_id"],
                    t(row.date), t(row.account)])
    for row in result.only_registry:
        w.writerow(["only_registry", t(row.txn), row.amount, "", "", t(row.date),
                    t(row.account)])
    for p in result.only_ours:
        w.writerow(["only_ours", t(p["external_id"]), "", p["amount"], p["customer_id"], "",
                    ""])
    for row, p in result.matched:
        w.writerow(["match", t(row.txn), row.amount, p["amount"], p["customer_id"],
                    t(row.date), t(row.account)])
    return out.getvalue().encode("utf-8")


# -- health ----------------------------------------------------------------------------------------
async def job_runs(tx: Tx) -> list[dict]:
    return await tx.fetchdicts(
        "SELECT job, last_started, last_finished, last_ok, last_error, runs, failures"
        " FROM job_runs ORDER BY job")
