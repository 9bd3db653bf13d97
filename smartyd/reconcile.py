"""
Registry reconciliation: a provider's daily registry against our payments of
that provider and day (the bookkeeper's "does yesterday's QIWI registry match
what we credited?").

The registry is a CSV file of one row per transaction: transaction id, date,
account, amount, in any order of columns, which the operator names once per
provider (the I{layout}, remembered in ``registry_layouts``):

  - encoding: UTF-8 (a BOM is dropped), else cp1251 (a file that is not
    valid UTF-8 is read as cp1251, which decodes any byte);
  - delimiter: ``;`` when the first non-empty line has one, else ``,``;
    fields may be quoted (``"10,45"``);
  - a header row is optional: the first row is a header when neither its
    transaction id nor its amount cell holds a digit;
  - amounts as the registry writes them, ``10.45`` or ``10,45`` (digits, one
    decimal mark, at most two decimals; no sign, no thousands separators),
    read as the ledger's money (``Decimal``, two places);
  - dates ``YYYY-MM-DD``, ``DD.MM.YYYY`` or ``YYYYMMDD``, each optionally
    followed by a time (``YYYYMMDDHHMMSS`` as OSMP writes ``txn_date``): the
    day is the one written, in the provider's own zone (Moscow for QIWI, as
    L{smartyd.journals} counts our days);
  - transaction ids of digits compare without leading zeros (OSMP:
    ``0012`` is transaction ``12``).

Nothing is guessed: a row that does not fit the layout (a missing field, an
unreadable amount or date, an empty id, an id seen on an earlier line) makes
the whole registry refused with L{RegistryError}, which lists the bad lines
by number; nothing is compared or remembered then.

The comparison pairs registry rows and our payments of the day
(L{smartyd.journals.day_payments}) by transaction id:

  - ``matched``: the same id and amount;
  - ``amount_mismatch``: the same id, another amount;
  - ``only_registry``: rows whose id we have not on that day (``our_day``
    names the day we have it on, when we have it on another);
  - ``only_ours``: our payments the registry does not list;
  - ``account_mismatch``: pairs whose accounts differ (both known; ours is
    what the payer gave, L{smartyd.journals.day_payments} ``account``) --
    listed besides their matched or amount_mismatch entry;
  - ``other_days``: registry rows dated another day, not compared.
"""

from __future__ import annotations

import csv
import io
import re
from datetime import date, timezone
from decimal import Decimal

from attrs import frozen
from twisted.internet import threads

from smartyd import journals, operators
from smartyd.db import Database, Tx
from smartyd.journals import MOSCOW
from smartyd.util.text import spreadsheet_text

__all__ = [
    "MAX_BYTES", "ROLES", "Registry", "RegistryError", "RegistryRow", "compare", "get_layout",
    "parse_layout", "parse_registry", "reconcile", "reconcile_registry", "set_layout", "to_csv",
]

ROLES = ("txn_id", "date", "account", "amount")
REQUIRED = ("txn_id", "amount")
SKIP = "-"
MAX_BYTES = 32 * 1024 * 1024
MAX_LISTED = 20  # bad lines named in a RegistryError's message
_AMOUNT = re.compile(r"[0-9]{1,12}(?:[.,][0-9]{1,2})?")
_DATE = re.compile(
    r"(?:(?P<y1>[0-9]{4})-(?P<m1>[0-9]{2})-(?P<d1>[0-9]{2})(?:[ T].*)?"
    r"|(?P<d2>[0-9]{2})\.(?P<m2>[0-9]{2})\.(?P<y2>[0-9]{4})(?: .*)?"
    r"|(?P<y3>[0-9]{4})(?P<m3>[0-9]{2})(?P<d3>[0-9]{2})(?:[0-9]{6})?)"
)


class RegistryError(ValueError):
    """
    The registry (or its layout) cannot be read; ``lines`` holds
    ``(line number, reason)`` of every bad row (empty for a bad layout or file).
    """

    def __init__(self, message: str, lines: list[tuple[int, str]] | None = None):
        self.lines = lines or []
        if self.lines:
            shown = "; ".join(f"line {n}: {why}" for n, why in self.lines[:MAX_LISTED])
            more = len(self.lines) - MAX_LISTED
            message = f"{message}: {shown}" + (f"; and {more} more" if more > 0 else "")
        super().__init__(message)


@frozen
class RegistryRow:
    line: int
    txn_id: str
    day: date | None
    account: str | None
    amount: Decimal

    def to_json(self) -> dict:
        return {"line": self.line, "txn_id": self.txn_id,
                "date": self.day.isoformat() if self.day else None,
                "account": self.account, "amount": str(self.amount)}


@frozen
class Registry:
    rows: tuple[RegistryRow, ...]
    encoding: str
    delimiter: str
    header: bool


# -- the layout ----------------------------------------------------------------------------------
def parse_layout(text: str | list[str]) -> tuple[str, ...]:
    """
    ``"txn_id,date,account,amount"`` (or a list of roles) as a layout: one
    role of L{ROLES} or ``-`` (ignored) per column, each role at most once,
    ``txn_id`` and ``amount`` present.  L{RegistryError} otherwise.
    """
    parts = text.split(",") if isinstance(text, str) else list(text)
    layout = tuple(p.strip().lower() for p in parts)
    for role in layout:
        if role != SKIP and role not in ROLES:
            raise RegistryError(f"unknown column {role!r} (columns are {', '.join(ROLES)} or -)")
    named = [r for r in layout if r != SKIP]
    if len(named) != len(set(named)):
        raise RegistryError("a column is named twice in the layout")
    missing = [r for r in REQUIRED if r not in named]
    if missing:
        raise RegistryError(f"the layout lacks {', '.join(missing)}")
    return layout


async def get_layout(tx: Tx, provider: str) -> tuple[str, ...] | None:
    """The layout remembered for ``provider``, or None."""
    columns = await tx.fetchval(
        "SELECT columns FROM registry_layouts WHERE provider = %s", (provider,))
    return None if columns is None else tuple(columns)


async def set_layout(tx: Tx, provider: str, layout: tuple[str, ...]) -> None:
    """Remember ``layout`` (from L{parse_layout}) for ``provider``."""
    await tx.execute(
        "INSERT INTO registry_layouts (provider, columns) VALUES (%s, %s)"
        " ON CONFLICT (provider) DO UPDATE SET columns = EXCLUDED.columns, updated = now()",
        (provider, list(layout)))


# -- reading -------------------------------------------------------------------------------------
def _decode(data: bytes) -> tuple[str, str]:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return data.decode("cp1251", errors="replace"), "cp1251"


def _txn_key(txn_id: str) -> str:
    """Digits compare without leading zeros (OSMP's txn_id ``0012`` is ``12``)."""
    return (txn_id.lstrip("0") or "0") if txn_id.isdigit() else txn_id


def parse_amount(text: str) -> Decimal | None:
    """``10.45`` / ``10,45`` / ``10`` as money; None when it is not one."""
    text = text.strip()
    if not _AMOUNT.fullmatch(text):
        return None
    return Decimal(text.replace(",", ".")).quantize(Decimal("0.01"))


def parse_date(text: str) -> date | None:
    m = _DATE.fullmatch(text.strip())
    if m is None:
        return None
    g = m.groupdict()
    for n in "123":
        if g[f"y{n}"]:
            try:
                return date(int(g[f"y{n}"]), int(g[f"m{n}"]), int(g[f"d{n}"]))
            except ValueError:
                return None
    return None


def parse_registry(data: bytes, layout: tuple[str, ...]) -> Registry:
    """
    Read a registry (pure; for a big file, run it in a thread as
    L{reconcile_registry} does).  Raises L{RegistryError} listing every bad line.
    """
    if len(data) > MAX_BYTES:
        raise RegistryError(f"the registry is larger than {MAX_BYTES} bytes")
    text, encoding = _decode(data)
    first = next((line for line in text.splitlines() if line.strip()), "")
    delimiter = ";" if ";" in first else ","
    index = {role: i for i, role in enumerate(layout) if role != SKIP}
    rows: list[RegistryRow] = []
    bad: list[tuple[int, str]] = []
    seen: dict[str, int] = {}
    header = False
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    first_row = True
    for fields in reader:
        line = reader.line_num
        if not any(f.strip() for f in fields):
            continue
        while len(fields) > len(layout) and not fields[-1].strip():
            fields = fields[:-1]  # a trailing delimiter
        if first_row:
            first_row = False
            cells = [fields[index[r]] if index[r] < len(fields) else "" for r in REQUIRED]
            if not any(c.isdigit() for cell in cells for c in cell):
                header = True
                continue
        if len(fields) != len(layout):
            bad.append((line, f"{len(fields)} fields, the layout has {len(layout)}"))
            continue
        cell = {role: fields[i].strip() for role, i in index.items()}
        txn_id = cell["txn_id"]
        if not txn_id:
            bad.append((line, "no transaction id"))
            continue
        amount = parse_amount(cell["amount"])
        if amount is None or amount <= 0:
            bad.append((line, f"amount {cell['amount']!r} is not a positive amount"))
            continue
        day = None
        if "date" in cell:
            day = parse_date(cell["date"])
            if day is None:
                bad.append((line, f"date {cell['date']!r} is not a date"))
                continue
        key = _txn_key(txn_id)
        if key in seen:
            bad.append((line, f"transaction {txn_id} repeats line {seen[key]}"))
            continue
        seen[key] = line
        rows.append(RegistryRow(line, txn_id, day, cell.get("account") or None, amount))
    if bad:
        raise RegistryError("the registry has bad rows", bad)
    return Registry(tuple(rows), encoding, delimiter, header)


# -- comparing -----------------------------------------------------------------------------------
def _total(amounts) -> str:
    return str(sum(amounts, Decimal("0")).quantize(Decimal("0.01")))


def compare(registry: Registry, ours: list[dict], day: date) -> dict:
    """
    Pair the registry's rows of ``day`` with ``ours`` (the ``payments`` of
    L{journals.day_payments}); pure.  The return shape is L{reconcile}'s
    without ``provider``, ``day``, ``layout`` and ``others``.
    """
    by_key = {_txn_key(p["external_id"]): p for p in ours}
    paired: set[str] = set()
    matched, amount_mismatch, account_mismatch, only_registry, other_days = [], [], [], [], []
    for row in registry.rows:
        if row.day is not None and row.day != day:
            other_days.append(row.to_json())
            continue
        key = _txn_key(row.txn_id)
        ours_p = by_key.get(key)
        if ours_p is None:
            only_registry.append(row.to_json())
            continue
        paired.add(key)
        pair = {"line": row.line, "txn_id": row.txn_id, "payment_id": ours_p["id"],
                "customer_id": ours_p["customer_id"], "time": ours_p["time"],
                "registry_date": row.day.isoformat() if row.day else None,
                "registry_account": row.account, "our_account": ours_p["account"],
                "registry_amount": str(row.amount), "our_amount": ours_p["amount"]}
        if Decimal(ours_p["amount"]) == row.amount:
            matched.append(pair)
        else:
            amount_mismatch.append(
                {**pair, "difference": str(row.amount - Decimal(ours_p["amount"]))})
        if row.account is not None and ours_p["account"] is not None \
                and row.account != ours_p["account"]:
            account_mismatch.append(pair)
    only_ours = [p for p in ours if _txn_key(p["external_id"]) not in paired]
    compared = [r for r in registry.rows if r.day is None or r.day == day]
    registry_total = sum((r.amount for r in compared), Decimal("0"))
    ours_total = sum((Decimal(p["amount"]) for p in ours), Decimal("0"))
    return {
        "matched": matched,
        "amount_mismatch": amount_mismatch,
        "only_registry": only_registry,
        "only_ours": only_ours,
        "account_mismatch": account_mismatch,
        "other_days": other_days,
        "totals": {
            "registry": {"count": len(compared), "total": _total([registry_total])},
            "ours": {"count": len(ours), "total": _total([ours_total])},
            "matched": {"count": len(matched),
                        "total": _total(Decimal(m["our_amount"]) for m in matched)},
            "amount_mismatch": {
                "count": len(amount_mismatch),
                "registry_total": _total(Decimal(m["registry_amount"]) for m in amount_mismatch),
                "our_total": _total(Decimal(m["our_amount"]) for m in amount_mismatch)},
            "only_registry": {"count": len(only_registry),
                              "total": _total(Decimal(r["amount"]) for r in only_registry)},
            "only_ours": {"count": len(only_ours),
                          "total": _total(Decimal(p["amount"]) for p in only_ours)},
            "account_mismatch": {"count": len(account_mismatch)},
            "other_days": {"count": len(other_days),
                           "total": _total(Decimal(r["amount"]) for r in other_days)},
            "difference": _total([registry_total - ours_total]),  # registry - ours
        },
    }


async def reconcile(tx: Tx, provider: str, day: date, registry: Registry,
                    layout: tuple[str, ...], remember: bool = False,
                    tz: timezone = MOSCOW, actor: operators.Actor | None = None) -> dict:
    """
    Compare a parsed ``registry`` with our payments of ``provider`` on ``day``
    (in one transaction: with ``remember``, the layout is saved in it and,
    when it differs from the one remembered, ``actor``'s audit row
    ``registry.layout`` written).

    Returns::

        {"provider": "osmp", "day": "2026-03-01", "timezone": "UTC+03:00",
         "layout": ["txn_id", "date", "account", "amount"],
         "encoding": "utf-8" | "cp1251", "delimiter": ";" | ",", "header": bool,
         "matched": [pair, ...], "amount_mismatch": [pair + {"difference": "0.50"}, ...],
         "account_mismatch": [pair, ...],
             # pair: {"line", "txn_id", "payment_id", "customer_id", "time",
             #        "registry_date", "registry_account", "our_account",
             #        "registry_amount", "our_amount"}
         "only_registry": [{"line", "txn_id", "date", "account", "amount",
                            "our_day": "2026-02-28" | None}, ...],
         "only_ours": [<a payment of journals.day_payments>, ...],
         "other_days": [{"line", "txn_id", "date", "account", "amount"}, ...],
         "totals": {"registry": {"count", "total"}, "ours": {"count", "total"},
                    "matched": {"count", "total"}, "only_registry": {"count", "total"},
                    "only_ours": {"count", "total"}, "other_days": {"count", "total"},
                    "amount_mismatch": {"count", "registry_total", "our_total"},
                    "account_mismatch": {"count"}, "difference": "registry - ours"}}
    """
    if remember:
        before = await get_layout(tx, provider)
        await set_layout(tx, provider, layout)
        if actor is not None and before != layout:
            await operators.audit(
                tx, actor.name, "registry.layout", at=actor.at, operator_id=actor.operator_id,
                before=None if before is None else {"provider": provider,
                                                    "columns": list(before)},
                after={"provider": provider, "columns": list(layout)})
    ours = (await journals.day_payments(tx, day, provider, tz))["payments"]
    out = compare(registry, ours, day)
    elsewhere = {}
    if out["only_registry"]:
        keys = {_txn_key(r["txn_id"]) for r in out["only_registry"]}
        for external_id, moment in await tx.fetchall(
                f"SELECT p.external_id, {journals.MOMENT} FROM payments p"
                f" WHERE p.provider = %s AND p.external_id = ANY(%s)",
                (provider, sorted(keys | {r["txn_id"] for r in out["only_registry"]}))):
            elsewhere[_txn_key(external_id)] = moment.astimezone(tz).date().isoformat()
    for r in out["only_registry"]:
        r["our_day"] = elsewhere.get(_txn_key(r["txn_id"]))
    return {"provider": provider, "day": day.isoformat(), "timezone": journals.zone_name(tz),
            "layout": list(layout), "encoding": registry.encoding,
            "delimiter": registry.delimiter, "header": registry.header, **out}


async def reconcile_registry(db: Database, provider: str, day: date, data: bytes,
                             columns: str | list[str] | None = None,
                             tz: timezone = MOSCOW,
                             actor: operators.Actor | None = None,
                             remember: bool = True) -> dict:
    """
    The whole upload: the layout from ``columns`` (then remembered for
    ``provider``, a change audited as ``actor``'s, unless ``remember`` is
    false: the columns serve this run only) or the one remembered, the
    registry ``data`` read in a thread, the comparison (L{reconcile}'s
    return).  Raises L{RegistryError} for no layout, a bad layout or bad
    rows; then nothing is remembered.
    """
    if columns is not None:
        layout = parse_layout(columns)
    else:
        layout = await db.run(get_layout, provider)
        if layout is None:
            raise RegistryError(f"no column layout remembered for {provider}: give the columns")
    registry = await threads.deferToThread(parse_registry, data, layout)
    return await db.run(reconcile, provider, day, registry, layout,
                        remember=remember and columns is not None, tz=tz, actor=actor)


# -- export --------------------------------------------------------------------------------------
CSV_HEADER = ("status", "txn_id", "line", "registry_date", "registry_account", "registry_amount",
              "payment_id", "our_time", "our_account", "our_amount", "difference")


def to_csv(result: dict) -> bytes:
    """
    L{reconcile}'s result as CSV for a spreadsheet: UTF-8 with a BOM, ``;``,
    the header L{CSV_HEADER}; one row per registry row and unpaired payment,
    ``status`` one of matched, amount_mismatch, account_mismatch (a matched
    pair whose accounts differ), only_registry, only_ours, other_day.  Text
    cells (ids, accounts) that a spreadsheet would read as a formula get a
    leading apostrophe (L{spreadsheet_text}).
    """
    out = io.StringIO(newline="")
    w = csv.writer(out, delimiter=";", lineterminator="\r\n")
    w.writerow(CSV_HEADER)
    t = spreadsheet_text  # the text cells: never a formula in a spreadsheet
    accounts = {m["txn_id"] for m in result["account_mismatch"]}
    rows = []
    for status in ("matched", "amount_mismatch"):
        for m in result[status]:
            label = "account_mismatch" if status == "matched" and m["txn_id"] in accounts \
                else status
            rows.append((m["line"], (label, t(m["txn_id"]), m["line"], m["registry_date"],
                                     t(m["registry_account"]),
                                     m["registry_amount"], m["payment_id"], m["time"],
                                     t(m["our_account"]), m["our_amount"],
                                     m.get("difference", "0.00"))))
    for status, key in (("only_registry", "only_registry"), ("other_day", "other_days")):
        for r in result[key]:
            rows.append((r["line"], (status, t(r["txn_id"]), r["line"], r["date"],
                                     t(r["account"]),
                                     r["amount"], "", "", "", "",
                                     r["amount"] if status == "only_registry" else "")))
    rows.sort(key=lambda r: r[0])
    for _, row in rows:
        w.writerow(["" if v is None else v for v in row])
    for p in result["only_ours"]:
        w.writerow(["only_ours", t(p["external_id"]), "", "", "", "", p["id"], p["time"],
                    t(p["account"]), p["amount"], "-" + p["amount"]])
    return out.getvalue().encode("utf-8-sig")
