"""
Records of L{smartyd.transfer.layouts} into the database, a batch at a time,
and the rows ``export`` writes.

Each batch of one kind is a handful of statements whatever its size: one
look-up of what exists (by external id, login, uid), then one multi-row
``INSERT ... SELECT FROM unnest(...)`` for the new and one ``UPDATE ... FROM
unnest(...)`` for the changed.  A record equal to what is stored changes
nothing, so importing a file twice changes nothing the second time.

What a record may not do is reported as a bad line, never forced: move an
account to another customer, a device to another account, give an external
id to a customer that has another, post a second opening balance with
another amount.  Money enters only through the ledger (L{ledger.post_many},
kind ``opening``, one idempotency key per customer); the import settles
the customers it credits that the billing suspended for debt, as a payment
settles its payer (L{in_debt}).  Entitlement changes
(accounts, subscriptions) are announced by the same triggers as every other
write (``NOTIFY smartyd_entitlements``, delivered at commit).

Subscriptions are assigned as L{catalog.assign_tariff} assigns them: the
first period is due at ``paid_until`` (now when not given), charged by the
billing's charging job; an existing subscription is left as it is (the
billing owns its periods).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, AsyncIterator, Iterable

from attrs import define, field

from smartyd import ledger
from smartyd.db import Tx
from smartyd.transfer.layouts import NULLABLE

OPENING = "opening"

_CUSTOMER_FIELDS = ("ext_id", "name", "firstname", "middlename", "lastname", "phone", "email",
                    "contract_number", "comment")


@define
class Tally:
    created: dict = field(factory=dict)
    updated: dict = field(factory=dict)
    unchanged: dict = field(factory=dict)
    # Customers given an opening balance and not settled yet (L{take_credited}).
    credited: set = field(factory=set)

    def add(self, what: str, kind: str, n: int = 1) -> None:
        if n == 0:
            return
        counts = getattr(self, what)
        counts[kind] = counts.get(kind, 0) + n

    def to_json(self) -> dict:
        return {"created": self.created, "updated": self.updated, "unchanged": self.unchanged}

    def take_credited(self) -> list[int]:
        """The customers credited since the last call (see L{in_debt})."""
        out, self.credited = sorted(self.credited), set()
        return out


Items = list[tuple[int, dict]]  # (line, record)
Bad = list[tuple[int, str]]     # (line, reason)


def _note_change(changes: list, tally: Tally, kind: str, key, change: dict) -> None:
    """An existing row's changed fields: queued for update, else counted unchanged."""
    if change:
        changes.append((key, change))
        tally.add("updated", kind)
    else:
        tally.add("unchanged", kind)


def _element(value) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, int):
        return str(value)
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def array(values: Iterable) -> str:
    """
    A PostgreSQL array literal (``{1,NULL,"a \\"b\\""}``), sent as one string
    parameter and cast (``%s::text[]``): the server reads it with array_in,
    far cheaper than the ``ARRAY[...]`` expression psycopg2 makes of a list
    (thousands of parsed constants per batch).
    """
    return "{" + ",".join(_element(v) for v in values) + "}"


def _unnest(columns: list[tuple[str, str]], rows: Iterable[tuple]) -> tuple[str, list]:
    """``unnest(%s::t1[], ...) AS v(c1, ...)`` and its parameters (one array per column)."""
    arrays: list[list] = [[] for _ in columns]
    for row in rows:
        for values, value in zip(arrays, row):
            values.append(value)
    sql = ("unnest(" + ", ".join(f"%s::{t}[]" for _, t in columns) + ") AS v("
           + ", ".join(c for c, _ in columns) + ")")
    return sql, [array(a) for a in arrays]


async def _update(tx: Tx, table: str, key: tuple[str, str], columns: list[tuple[str, str]],
                  changes: list[tuple[Any, dict]], touch: bool = True) -> None:
    """Set, per key, only the columns in its change dict (one statement)."""
    if not changes:
        return
    spec = [key]
    for c, t in columns:
        spec += [(c, t), (f"set_{c}", "boolean")]
    rows = []
    for k, change in changes:
        row: list = [k]
        for c, _ in columns:
            row += [change.get(c), c in change]
        rows.append(tuple(row))
    source, params = _unnest(spec, rows)
    sets = ", ".join(f"{c} = CASE WHEN v.set_{c} THEN v.{c} ELSE t.{c} END" for c, _ in columns)
    await tx.execute(
        f"UPDATE {table} t SET {sets}{', updated = now()' if touch else ''}"
        f" FROM {source} WHERE t.{key[0]} = v.{key[0]}", params)


def _stored(column: str, value):
    """A record's value as the column stores it (an empty nullable cell is NULL)."""
    return None if column in NULLABLE and value == "" else value


async def _bump_ids(tx: Tx) -> None:
    # Customers and accounts share accounts_id_seq (migration 0006): after
    # rows with ids of their own, the sequence goes past all of them.
    await tx.execute(
        "SELECT setval('accounts_id_seq', greatest((SELECT max(id) FROM accounts),"
        " (SELECT max(id) FROM customers), (SELECT last_value FROM accounts_id_seq), 1))")


# -- customers ---------------------------------------------------------------------------------
async def customers(tx: Tx, items: Items, tally: Tally) -> Bad:
    ext_ids = [r["ext_id"] for _, r in items if r.get("ext_id")]
    ids = [r["id"] for _, r in items if r.get("id")]
    columns = f"id, client_id, {', '.join(_CUSTOMER_FIELDS)}"
    rows = await tx.fetchdicts(
        f"SELECT {columns} FROM customers WHERE client_id IS NULL AND ext_id = ANY(%s::text[])"
        f" UNION SELECT {columns} FROM customers WHERE id = ANY(%s::bigint[])",
        (array(ext_ids), array(ids)))
    by_ext = {r["ext_id"]: r for r in rows if r["ext_id"] and r["client_id"] is None}
    by_id = {r["id"]: r for r in rows}
    bad: Bad = []
    new: list[tuple[int, dict]] = []
    changes: list[tuple[int, dict]] = []
    taken = set()
    for line, rec in items:
        ext, cid = rec.get("ext_id"), rec.get("id")
        match = by_ext.get(ext) if ext else None
        if match is not None and cid is not None and match["id"] != cid:
            bad.append((line, f"ext_id {ext} is customer {match['id']}, not {cid}"))
            continue
        if match is None and cid is not None:
            match = by_id.get(cid)
            if match is not None and ext and match["ext_id"] not in (None, ext):
                bad.append((line, f"customer {cid} has ext_id {match['ext_id']}, not {ext}"))
                continue
        fields = {k: _stored(k, rec[k]) for k in _CUSTOMER_FIELDS if k in rec}
        if fields.get("ext_id") is None:
            fields.pop("ext_id", None)
        if match is None:
            if cid is not None and cid in taken:
                bad.append((line, f"customer id {cid} twice in the file"))
                continue
            taken.add(cid)
            new.append((cid, fields))
            continue
        _note_change(changes, tally, "customers", match["id"],
                     {k: v for k, v in fields.items() if match[k] != v})
    columns = [("id", "bigint")] + [(c, "text") for c in _CUSTOMER_FIELDS]
    for explicit in (True, False):
        batch = [(cid, *(f.get(c) for c in _CUSTOMER_FIELDS)) for cid, f in new
                 if (cid is not None) == explicit]
        if not batch:
            continue
        source, params = _unnest(columns, batch)
        await tx.execute(
            "INSERT INTO customers (id, ext_id, name, firstname, middlename, lastname, phone,"
            " email, contract_number, comment)"
            " SELECT coalesce(v.id, nextval('accounts_id_seq')), v.ext_id, coalesce(v.name, ''),"
            " coalesce(v.firstname, ''), coalesce(v.middlename, ''), coalesce(v.lastname, ''),"
            " v.phone, v.email, v.contract_number, coalesce(v.comment, '')"
            f" FROM {source}", params)
        tally.add("created", "customers", len(batch))
        if explicit:
            await _bump_ids(tx)
    await _update(tx, "customers", ("id", "bigint"),
                  [(c, "text") for c in _CUSTOMER_FIELDS], changes)
    return bad


async def _customer_refs(tx: Tx, items: Items) -> tuple[dict, set]:
    """Customers the records name: ``({ext_id: id}, {ids that exist})``."""
    ext_ids = [r["customer_ext_id"] for _, r in items if r.get("customer_ext_id")]
    ids = [r["customer_id"] for _, r in items if r.get("customer_id")]
    rows = await tx.fetchall(
        "SELECT id, ext_id, true FROM customers"
        " WHERE client_id IS NULL AND ext_id = ANY(%s::text[])"
        " UNION ALL SELECT id, ext_id, false FROM customers WHERE id = ANY(%s::bigint[])",
        (array(ext_ids), array(ids)))
    return {ext: cid for cid, ext, by_ext in rows if by_ext}, {cid for cid, _, _ in rows}


def _customer_of(rec: dict, by_ext: dict, ids: set) -> tuple[int | None, str | None]:
    """The customer a record names (None: it names none), or the reason it is bad."""
    if rec.get("customer_ext_id"):
        cid = by_ext.get(rec["customer_ext_id"])
        return cid, (None if cid else f"no customer with ext_id {rec['customer_ext_id']}")
    if rec.get("customer_id"):
        cid = rec["customer_id"]
        return cid, (None if cid in ids else f"no customer {cid}")
    return None, None


# -- accounts ----------------------------------------------------------------------------------
_ACCOUNT_FIELDS = (("active", "boolean"), ("status_reason", "text"), ("password_hash", "text"))


async def accounts(tx: Tx, items: Items, tally: Tally) -> Bad:
    by_ext, customer_ids = await _customer_refs(tx, items)
    existing = {r["login"]: r for r in await tx.fetchdicts(
        "SELECT id, login, customer_id, active, status_reason, password_hash FROM accounts"
        " WHERE login = ANY(%s::text[])", (array(r["login"] for _, r in items),))}
    wanted_ids = [r["id"] for _, r in items if r.get("id")]
    taken = {r[0] for r in await tx.fetchall(
        "SELECT id FROM accounts WHERE id = ANY(%s::bigint[])", (array(wanted_ids),))}
    bad: Bad = []
    new: list[tuple] = []
    changes: list[tuple[int, dict]] = []
    for line, rec in items:
        login = rec["login"]
        cid, problem = _customer_of(rec, by_ext, customer_ids)
        if problem:
            bad.append((line, problem))
            continue
        ex = existing.get(login)
        if ex is not None:
            if cid is not None and ex["customer_id"] != cid:
                bad.append((line, f"login {login} is an account of customer {ex['customer_id']}"))
                continue
            if rec.get("id") and rec["id"] != ex["id"]:
                bad.append((line, f"login {login} is account {ex['id']}, not {rec['id']}"))
                continue
            change = {}
            if rec.get("active") is not None and rec["active"] != ex["active"]:
                change["active"] = rec["active"]
                if rec.get("status_reason") is None:
                    change["status_reason"] = ledger.ACTIVE if rec["active"] else ledger.BLOCK
            if rec.get("status_reason") and rec["status_reason"] != ex["status_reason"]:
                change["status_reason"] = rec["status_reason"]
            if rec.get("password_hash") and rec["password_hash"] != ex["password_hash"]:
                change["password_hash"] = rec["password_hash"]
            _note_change(changes, tally, "accounts", ex["id"], change)
            continue
        if rec.get("id") is not None and rec["id"] in taken:
            bad.append((line, f"account id {rec['id']} exists (another login)"))
            continue
        taken.add(rec.get("id"))
        new.append((rec.get("id"), login, cid, rec.get("active"), rec.get("status_reason"),
                    rec.get("password_hash") or ""))
    columns = [("id", "bigint"), ("login", "text"), ("customer_id", "bigint"),
               ("active", "boolean"), ("status_reason", "text"), ("password_hash", "text")]
    for explicit in (True, False):
        batch = [r for r in new if (r[0] is not None) == explicit]
        if not batch:
            continue
        source, params = _unnest(columns, batch)
        # A NULL customer_id: the insert trigger gives the account a customer
        # of its own, with the account's id (migration 0006).
        await tx.execute(
            "INSERT INTO accounts (id, login, customer_id, active, status_reason, password_hash)"
            " SELECT coalesce(v.id, nextval('accounts_id_seq')), v.login, v.customer_id,"
            " coalesce(v.active, true), coalesce(v.status_reason, CASE WHEN"
            " coalesce(v.active, true) THEN 'ACTIVE' ELSE 'BLOCK' END), v.password_hash"
            f" FROM {source}", params)
        tally.add("created", "accounts", len(batch))
        if explicit:
            await _bump_ids(tx)
    await _update(tx, "accounts", ("id", "bigint"), list(_ACCOUNT_FIELDS), changes)
    return bad


async def _logins(tx: Tx, logins: list[str]) -> dict:
    return {r[0]: (r[1], r[2]) for r in await tx.fetchall(
        "SELECT login, id, customer_id FROM accounts WHERE login = ANY(%s::text[])",
        (array(logins),))}


# -- devices -----------------------------------------------------------------------------------
async def devices(tx: Tx, items: Items, tally: Tally) -> Bad:
    logins = await _logins(tx, [r["account_login"] for _, r in items])
    existing = {r["uid"]: r for r in await tx.fetchdicts(
        "SELECT d.uid, d.account_id, a.login, d.serial, d.model FROM devices d"
        " JOIN accounts a ON a.id = d.account_id WHERE d.uid = ANY(%s::text[])",
        (array(r["uid"] for _, r in items),))}
    bad: Bad = []
    new, changes = [], []
    for line, rec in items:
        account = logins.get(rec["account_login"])
        if account is None:
            bad.append((line, f"no account with login {rec['account_login']}"))
            continue
        fields = {k: _stored(k, rec[k]) for k in ("serial", "model") if k in rec}
        ex = existing.get(rec["uid"])
        if ex is None:
            new.append((rec["uid"], account[0], fields.get("serial"), fields.get("model")))
            continue
        if ex["account_id"] != account[0]:
            bad.append((line, f"device {rec['uid']} is a device of account {ex['login']}"))
            continue
        _note_change(changes, tally, "devices", rec["uid"],
                     {k: v for k, v in fields.items() if ex[k] != v})
    if new:
        source, params = _unnest([("uid", "text"), ("account_id", "bigint"), ("serial", "text"),
                                  ("model", "text")], new)
        await tx.execute(
            "INSERT INTO devices (uid, account_id, serial, model)"
            f" SELECT v.uid, v.account_id, v.serial, v.model FROM {source}", params)
        tally.add("created", "devices", len(new))
    await _update(tx, "devices", ("uid", "text"), [("serial", "text"), ("model", "text")],
                  changes, touch=False)
    return bad


# -- subscriptions -----------------------------------------------------------------------------
async def _tariffs(tx: Tx, items: Items) -> tuple[set, dict]:
    ids = [r["tariff_id"] for _, r in items if r.get("tariff_id")]
    exts = [r.get("tariff_ext_id") or r.get("tariff_hydra") for _, r in items]
    exts = [e for e in exts if e]
    numeric = [int(e) for e in exts if e.isdigit() and len(e) < 19]
    rows = await tx.fetchall(
        "SELECT id, ext_id FROM tariffs WHERE id = ANY(%s::bigint[]) OR ext_id = ANY(%s::text[])",
        (array(ids + numeric), array(exts)))
    return {r[0] for r in rows}, {r[1]: r[0] for r in rows if r[1] is not None}


def _tariff_of(rec: dict, ids: set, by_ext: dict) -> tuple[int | None, str | None]:
    if rec.get("tariff_id"):
        t = rec["tariff_id"]
        return t, (None if t in ids else f"no tariff {t}")
    if rec.get("tariff_ext_id"):
        t = by_ext.get(rec["tariff_ext_id"])
        return t, (None if t else f"no tariff with ext_id {rec['tariff_ext_id']}")
    # Hydra's tariff ID: a tariff created with it as ext_id, else one of ours.
    value = rec["tariff_hydra"]
    t = by_ext.get(value)
    if t is None and value.isdigit() and int(value) in ids:
        t = int(value)
    return t, (None if t else f"no tariff with ext_id or id {value}")


async def subscriptions(tx: Tx, items: Items, tally: Tally) -> Bad:
    by_ext, customer_ids = await _customer_refs(tx, items)
    logins = await _logins(tx, [r["account_login"] for _, r in items if r.get("account_login")])
    tariff_ids, tariff_exts = await _tariffs(tx, items)
    bad: Bad = []
    resolved = []
    for line, rec in items:
        cid, problem = _customer_of(rec, by_ext, customer_ids)
        account_id = None
        if problem is None and rec.get("account_login"):
            account = logins.get(rec["account_login"])
            if account is None:
                problem = f"no account with login {rec['account_login']}"
            elif cid is not None and account[1] != cid:
                problem = (f"account {rec['account_login']} is not an account of customer"
                           f" {cid}")
            else:
                account_id, cid = account
        tariff, tariff_problem = _tariff_of(rec, tariff_ids, tariff_exts)
        if problem or tariff_problem:
            bad.append((line, problem or tariff_problem))
            continue
        resolved.append((cid, account_id, tariff, rec.get("paid_until")))
    existing = {tuple(r) for r in await tx.fetchall(
        "SELECT customer_id, account_id, tariff_id FROM subscriptions"
        " WHERE customer_id = ANY(%s::bigint[])", (array({r[0] for r in resolved}),))}
    new = []
    for row in resolved:
        if row[:3] in existing:
            tally.add("unchanged", "subscriptions")
        else:
            existing.add(row[:3])
            new.append(row)
    if new:
        source, params = _unnest([("customer_id", "bigint"), ("account_id", "bigint"),
                                  ("tariff_id", "bigint"), ("paid_until", "timestamptz")], new)
        await tx.execute(
            "INSERT INTO subscriptions (customer_id, account_id, tariff_id, anchor, paid_until)"
            " SELECT v.customer_id, v.account_id, v.tariff_id, coalesce(v.paid_until, now()),"
            f" coalesce(v.paid_until, now()) FROM {source} ON CONFLICT DO NOTHING", params)
        tally.add("created", "subscriptions", len(new))
    return bad


# -- balances ----------------------------------------------------------------------------------
def opening_key(customer_id: int) -> str:
    return f"import:opening:{customer_id}"


async def balances(tx: Tx, items: Items, tally: Tally) -> Bad:
    by_ext, customer_ids = await _customer_refs(tx, items)
    bad: Bad = []
    wanted: dict[int, tuple[int, object]] = {}
    for line, rec in items:
        cid, problem = _customer_of(rec, by_ext, customer_ids)
        if problem is None and cid in wanted:
            problem = f"a second balance for customer {cid} (line {wanted[cid][0]})"
        if problem:
            bad.append((line, problem))
            continue
        wanted[cid] = (line, rec["amount"])
    posted = {r[0]: (r[1], r[2]) for r in await tx.fetchall(
        "SELECT idem_key, customer_id, amount FROM ledger WHERE idem_key = ANY(%s::text[])",
        (array(opening_key(c) for c in wanted),))}
    entries = []
    for cid, (line, amount) in wanted.items():
        done = posted.get(opening_key(cid))
        if done is not None and done != (cid, amount):
            bad.append((line, f"customer {cid} has an opening balance of {done[1]} already"))
        elif done is not None or amount == 0:
            tally.add("unchanged", "balances")
        else:
            entries.append((cid, amount, opening_key(cid)))
    n = await ledger.post_many(tx, entries, OPENING, "opening balance (import)")
    tally.add("created", "balances", n)
    tally.credited.update(cid for cid, _, _ in entries)
    return bad


async def in_debt(tx: Tx, customer_ids: list[int]) -> list[int]:
    """
    Those of the customers the billing suspended for debt (a subscription
    ``suspended``): an opening balance settles them at once, as a payment
    settles its payer.  Other due periods are left to the charging job, as
    for every imported subscription.
    """
    return [r[0] for r in await tx.fetchall(
        "SELECT DISTINCT customer_id FROM subscriptions WHERE customer_id = ANY(%s::bigint[])"
        " AND state = 'suspended' ORDER BY customer_id", (array(customer_ids),))]


async def precheck(tx: Tx, lines: list[tuple[int, list[tuple[str, dict]]]]) -> Bad:
    """
    Lines of several records (Hydra's customers file: customer, account,
    subscription): what would refuse a later record of the line -- an
    unknown tariff, a login of another customer -- found before its first
    record is written, so that with ``--skip-bad`` a refused line writes
    nothing at all.
    """
    multi = [(line, records) for line, records in lines if len(records) > 1]
    subs = [(line, r) for line, records in multi for k, r in records if k == "subscriptions"]
    accs = [(line, r) for line, records in multi for k, r in records if k == "accounts"]
    bad: Bad = []
    if subs:
        ids, exts = await _tariffs(tx, subs)
        bad += [(line, problem) for line, r in subs
                for problem in [_tariff_of(r, ids, exts)[1]] if problem]
    if accs:
        owners = {r[0]: r[1:] for r in await tx.fetchall(
            "SELECT a.login, a.customer_id, CASE WHEN c.client_id IS NULL THEN c.ext_id END"
            " FROM accounts a JOIN customers c ON c.id = a.customer_id"
            " WHERE a.login = ANY(%s::text[])", (array(r["login"] for _, r in accs),))}
        for line, r in accs:
            owner = owners.get(r["login"])
            if owner is not None and owner[1] != r.get("customer_ext_id"):
                bad.append((line, f"login {r['login']} is an account of customer {owner[0]}"))
    return bad


WRITERS = {"customers": customers, "accounts": accounts, "devices": devices,
           "subscriptions": subscriptions, "balances": balances}


# -- export ------------------------------------------------------------------------------------
PAGE = 5000

_EXPORT = {
    "customers": (
        "SELECT c.id, c.id, c.ext_id, c.name, c.firstname, c.middlename, c.lastname, c.phone,"
        " c.email, c.contract_number, c.comment FROM customers c"
        " WHERE c.deleted_at IS NULL AND c.id > %s ORDER BY c.id LIMIT %s"),
    "accounts": (
        "SELECT a.id, a.id, a.login, a.customer_id, c.ext_id, a.active, a.status_reason,"
        " a.password_hash FROM accounts a JOIN customers c ON c.id = a.customer_id"
        " WHERE a.deleted_at IS NULL AND a.id > %s ORDER BY a.id LIMIT %s"),
    "devices": (
        "SELECT d.id, d.uid, a.login, d.serial, d.model FROM devices d"
        " JOIN accounts a ON a.id = d.account_id"
        " WHERE a.deleted_at IS NULL AND d.id > %s ORDER BY d.id LIMIT %s"),
    "subscriptions": (
        "SELECT s.id, s.customer_id, c.ext_id, a.login, s.tariff_id, t.ext_id, s.paid_until"
        " FROM subscriptions s JOIN customers c ON c.id = s.customer_id"
        " JOIN tariffs t ON t.id = s.tariff_id LEFT JOIN accounts a ON a.id = s.account_id"
        " WHERE s.id > %s ORDER BY s.id LIMIT %s"),
    "balances": (
        "SELECT c.id, c.id, c.ext_id, c.balance FROM customers c"
        " WHERE c.balance <> 0 AND c.deleted_at IS NULL AND c.id > %s ORDER BY c.id LIMIT %s"),
}

_HYDRA_EXPORT = {
    # user ID;account ID;tariff ID: one line per account and tariff of its
    # customer (customers, accounts: one line per account, no tariff).
    "customers": (
        "SELECT a.id, coalesce(c.ext_id, c.id::text), a.login, NULL FROM accounts a"
        " JOIN customers c ON c.id = a.customer_id"
        " WHERE a.deleted_at IS NULL AND a.id > %s ORDER BY a.id LIMIT %s"),
    "subscriptions": (
        "SELECT s.id, coalesce(c.ext_id, c.id::text), a.login, coalesce(t.ext_id, t.id::text)"
        " FROM subscriptions s JOIN customers c ON c.id = s.customer_id"
        " JOIN tariffs t ON t.id = s.tariff_id"
        " JOIN accounts a ON a.customer_id = s.customer_id"
        "  AND (s.account_id IS NULL OR a.id = s.account_id) AND a.deleted_at IS NULL"
        " WHERE s.id > %s ORDER BY s.id, a.id LIMIT %s"),
    # --;account ID;--;MAC;device serial (the first column our device id, the third the model)
    "devices": (
        "SELECT d.id, d.id, a.login, d.model, d.uid, d.serial FROM devices d"
        " JOIN accounts a ON a.id = d.account_id"
        " WHERE a.deleted_at IS NULL AND d.id > %s ORDER BY d.id LIMIT %s"),
}
_HYDRA_EXPORT["accounts"] = _HYDRA_EXPORT["customers"]


async def export_rows(tx: Tx, fmt: str, kind: str) -> AsyncIterator[list[tuple]]:
    """Pages of rows (without their paging key) in the layout's column order."""
    sql = (_EXPORT if fmt == "smartyd" else _HYDRA_EXPORT)[kind]
    last = 0
    while True:
        rows = await tx.fetchall(sql, (last, PAGE))
        if not rows:
            return
        if fmt == "hydra" and kind == "subscriptions":
            # One subscription may be several lines (one per account): page
            # on whole subscriptions.
            if len(rows) == PAGE and rows[0][0] != rows[-1][0]:
                rows = [r for r in rows if r[0] != rows[-1][0]]
            elif len(rows) == PAGE:
                rows = await tx.fetchall(sql.replace("LIMIT %s", ""), (last,))
                rows = [r for r in rows if r[0] == rows[0][0]]
        last = rows[-1][0]
        yield [r[1:] for r in rows]
