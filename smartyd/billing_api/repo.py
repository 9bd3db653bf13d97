"""
The Billing API's SQL (a repository module): customers and accounts as the
API's clients see them (scoped by client), devices, messages, tariffs and
the transactions table.  Money moves only through L{smartyd.ledger}.

Every function takes a L{Tx}: the service composes them into one
transaction per call.
"""

from __future__ import annotations

import json
from decimal import Decimal

from attrs import frozen

from smartyd import ledger
from smartyd.db import Tx


@frozen
class Scope:
    """Whose customers a client sees: its own, or (``shared``) every customer."""

    client_id: str
    shared: bool = False

    def where(self, alias: str = "c") -> tuple[str, tuple]:
        if self.shared:
            return f"{alias}.deleted_at IS NULL", ()
        return f"{alias}.deleted_at IS NULL AND {alias}.client_id = %s", (self.client_id,)


# -- customers ----------------------------------------------------------------------------
_CUSTOMER = ("c.id, c.firstname, c.middlename, c.lastname, c.comment, c.phone, c.email,"
             " c.ext_id, c.contract_number, c.meta, c.balance, c.api_fields, c.client_id,"
             " c.autopay")


async def find_customer(tx: Tx, scope: Scope, customer_id: int | None = None,
                        ext_id: str | None = None, lock: bool = False) -> dict | None:
    """The customer by its id (preferred) or its ext_id, if the client may see it."""
    where, args = scope.where()
    if customer_id is not None:
        where, args = f"{where} AND c.id = %s", (*args, customer_id)
    elif ext_id is not None:
        where, args = f"{where} AND c.ext_id = %s", (*args, ext_id)
    else:
        return None
    return await tx.fetchdict(f"SELECT {_CUSTOMER} FROM customers c WHERE {where}"
                              + (" FOR UPDATE OF c" if lock else ""), args)


async def ext_id_taken(tx: Tx, client_id: str | None, ext_id: str,
                       but: int | None = None) -> bool:
    return bool(await tx.fetchval(
        "SELECT 1 FROM customers WHERE client_id IS NOT DISTINCT FROM %s AND ext_id = %s"
        " AND id IS DISTINCT FROM %s", (client_id, ext_id, but)))


async def create_customer(tx: Tx, client_id: str, columns: dict, api_fields: dict) -> int:
    cols = {**columns, "client_id": client_id, "api_fields": json.dumps(api_fields)}
    if "meta" in cols:
        cols["meta"] = json.dumps(cols["meta"])
    names = ", ".join(cols)
    marks = ", ".join(["%s"] * len(cols))
    return await tx.fetchval(f"INSERT INTO customers ({names}) VALUES ({marks}) RETURNING id",
                             tuple(cols.values()))


async def update_customer(tx: Tx, customer_id: int, columns: dict, api_fields: dict) -> None:
    cols = dict(columns)
    if "meta" in cols:
        cols["meta"] = json.dumps(cols["meta"])
    sets = [f"{k} = %s" for k in cols] + ["api_fields = api_fields || %s::jsonb",
                                           "updated = now()"]
    await tx.execute(f"UPDATE customers SET {', '.join(sets)} WHERE id = %s",
                     (*cols.values(), json.dumps(api_fields), customer_id))


async def delete_customer(tx: Tx, customer_id: int) -> list[int]:
    """
    Delete a customer and its accounts (the rows stay for the ledger: see
    L{delete_account}); its ext_id is freed.  Returns the deleted account ids.
    """
    ids = [r[0] for r in await tx.fetchall(
        "SELECT id FROM accounts WHERE customer_id = %s AND deleted_at IS NULL ORDER BY id",
        (customer_id,))]
    for account_id in ids:
        await delete_account(tx, account_id)
    await tx.execute("DELETE FROM subscriptions WHERE customer_id = %s", (customer_id,))
    await tx.execute(
        "UPDATE customers SET deleted_at = now(), ext_id = NULL, updated = now(),"
        " api_fields = api_fields || jsonb_build_object('deleted_ext_id', ext_id)"
        " WHERE id = %s", (customer_id,))
    return ids


async def customer_accounts(tx: Tx, customer_id: int) -> list[dict]:
    return await tx.fetchdicts(
        "SELECT id, login, active, status_reason FROM accounts"
        " WHERE customer_id = %s AND deleted_at IS NULL ORDER BY id", (customer_id,))


async def subscriptions(tx: Tx, customer_id: int, account_id: int | None) -> list[dict]:
    """The customer's own (``account_id`` None) or one account's subscriptions."""
    return await tx.fetchdicts(
        "SELECT s.tariff_id, t.ext_id AS tariff_ext_id, t.price, s.anchor, s.paid_until,"
        " s.state FROM subscriptions s JOIN tariffs t ON t.id = s.tariff_id"
        " WHERE s.customer_id = %s AND s.account_id IS NOT DISTINCT FROM %s ORDER BY s.id",
        (customer_id, account_id))


async def payments_count(tx: Tx, customer_id: int) -> int:
    """Confirmed money in: processed API transactions and payments from every other source."""
    return await tx.fetchval(
        "SELECT (SELECT count(*) FROM billing_api_transactions WHERE customer_id = %s"
        "  AND processed AND deleted_at IS NULL)"
        " + (SELECT count(*) FROM payments WHERE customer_id = %s)", (customer_id, customer_id))


async def list_customers(tx: Tx, scope: Scope, tariff_ids: list[int], abonement_regexp: str | None,
                         phone: str | None, limit: int, offset: int) -> list[dict]:
    where, args = scope.where()
    for tid in tariff_ids:
        where += (" AND EXISTS (SELECT 1 FROM subscriptions s WHERE s.customer_id = c.id"
                  " AND s.account_id IS NULL AND s.tariff_id = %s)")
        args += (tid,)
    if abonement_regexp:
        where += (" AND EXISTS (SELECT 1 FROM accounts a WHERE a.customer_id = c.id"
                  " AND a.deleted_at IS NULL AND a.login ~ %s)")
        args += (abonement_regexp,)
    if phone:
        where += " AND c.phone = %s"
        args += (phone,)
    return await tx.fetchdicts(
        f"SELECT {_CUSTOMER} FROM customers c WHERE {where} ORDER BY c.id LIMIT %s OFFSET %s",
        (*args, limit, offset))


# -- accounts -----------------------------------------------------------------------------
_ACCOUNT = ("a.id, a.customer_id, a.login, a.active, a.status_reason, a.created, a.ext_id,"
            " a.api_fields, a.last_active")


async def find_account(tx: Tx, scope: Scope, account_id: int | None = None,
                       abonement: str | None = None, lock: bool = False) -> dict | None:
    """The account by id (preferred) or abonement, if its customer is the client's."""
    where, args = scope.where()
    if account_id is not None:
        where, args = f"{where} AND a.id = %s", (*args, account_id)
    elif abonement is not None:
        where, args = f"{where} AND a.login = %s", (*args, abonement)
    else:
        return None
    return await tx.fetchdict(
        f"SELECT {_ACCOUNT} FROM accounts a JOIN customers c ON c.id = a.customer_id"
        f" WHERE a.deleted_at IS NULL AND {where}" + (" FOR UPDATE OF a" if lock else ""), args)


async def login_taken(tx: Tx, login: str) -> bool:
    return bool(await tx.fetchval("SELECT 1 FROM accounts WHERE login = %s", (login,)))


async def next_id(tx: Tx) -> int:
    """A fresh id from the sequence customers and accounts share (a generated abonement)."""
    return await tx.fetchval("SELECT nextval('accounts_id_seq')")


async def set_account_fields(tx: Tx, account_id: int, *, ext_id: str | None = None,
                             api_fields: dict | None = None, login: str | None = None,
                             password_hash: str | None = None) -> None:
    sets, args = ["updated = now()"], []
    if ext_id is not None:
        sets.append("ext_id = %s")
        args.append(ext_id)
    if api_fields:
        sets.append("api_fields = api_fields || %s::jsonb")
        args.append(json.dumps(api_fields))
    if login is not None:
        sets.append("login = %s")
        args.append(login)
    if password_hash is not None:
        sets.append("password_hash = %s")
        args.append(password_hash)
    await tx.execute(f"UPDATE accounts SET {', '.join(sets)} WHERE id = %s", (*args, account_id))


async def delete_account(tx: Tx, account_id: int) -> None:
    """
    Delete an account: its tariffs, devices and messages go; the row stays
    (the ledger and payments may name it), inactive, its login freed.
    """
    await tx.execute("DELETE FROM subscriptions WHERE account_id = %s", (account_id,))
    await tx.execute("DELETE FROM devices WHERE account_id = %s", (account_id,))
    await tx.execute("DELETE FROM account_messages WHERE account_id = %s", (account_id,))
    await tx.execute(
        "UPDATE accounts SET deleted_at = now(), deleted_login = login, login = 'deleted:' || id,"
        " active = false, status_reason = 'DELETED', updated = now() WHERE id = %s",
        (account_id,))


async def list_accounts(tx: Tx, scope: Scope, active: bool | None, status_reason: str | None,
                        device: str | None, abonement_regexp: str | None, limit: int,
                        offset: int) -> list[dict]:
    where, args = scope.where()
    if active is not None:
        where, args = f"{where} AND a.active = %s", (*args, active)
    if status_reason:
        where, args = f"{where} AND a.status_reason = %s", (*args, status_reason)
    if device:
        where += " AND EXISTS (SELECT 1 FROM devices d WHERE d.account_id = a.id AND d.uid = %s)"
        args += (device,)
    if abonement_regexp:
        where, args = f"{where} AND a.login ~ %s", (*args, abonement_regexp)
    return await tx.fetchdicts(
        f"SELECT {_ACCOUNT} FROM accounts a JOIN customers c ON c.id = a.customer_id"
        f" WHERE a.deleted_at IS NULL AND {where} ORDER BY a.id LIMIT %s OFFSET %s",
        (*args, limit, offset))


# -- devices ----------------------------------------------------------------------------------
_DEVICE = "id, uid, system_name, serial, created, is_basic"


async def account_devices(tx: Tx, account_id: int) -> list[dict]:
    return await tx.fetchdicts(
        f"SELECT {_DEVICE} FROM devices WHERE account_id = %s ORDER BY id", (account_id,))


async def device_uid_taken(tx: Tx, uid: str, but: int | None = None) -> bool:
    return bool(await tx.fetchval(
        "SELECT 1 FROM devices WHERE uid = %s AND id IS DISTINCT FROM %s", (uid, but)))


async def create_device(tx: Tx, account_id: int, uid: str, system_name: str,
                        serial: str | None, is_basic: bool) -> int | None:
    """The new device's id; None when the uid is taken (also by a racing insert)."""
    return await tx.fetchval(
        "INSERT INTO devices (uid, account_id, system_name, serial, is_basic)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (uid) DO NOTHING RETURNING id",
        (uid, account_id, system_name, serial, is_basic))


async def get_device(tx: Tx, account_id: int, device_id: int) -> dict | None:
    return await tx.fetchdict(
        f"SELECT {_DEVICE} FROM devices WHERE account_id = %s AND id = %s",
        (account_id, device_id))


async def update_device(tx: Tx, device_id: int, changes: dict) -> None:
    if changes:
        sets = ", ".join(f"{k} = %s" for k in changes)
        await tx.execute(f"UPDATE devices SET {sets} WHERE id = %s",
                         (*changes.values(), device_id))


async def delete_device(tx: Tx, device_id: int) -> None:
    await tx.execute("DELETE FROM devices WHERE id = %s", (device_id,))


# -- messages ---------------------------------------------------------------------------------
_MESSAGE_FLAGS = ("urgent", "delete_after_reading", "send_message_to_tv_screen",
                  "send_message_by_sms", "send_message_by_email", "send_message_by_cas")


async def create_message(tx: Tx, account_id: int, client_id: str | None, subject: str,
                         text: str, flags: dict[str, bool]) -> int:
    cols = [f for f in _MESSAGE_FLAGS if f in flags]
    return await tx.fetchval(
        f"INSERT INTO account_messages (account_id, client_id, subject, text"
        f"{''.join(', ' + c for c in cols)}) VALUES (%s, %s, %s, %s{', %s' * len(cols)})"
        " RETURNING id",
        (account_id, client_id, subject, text, *(flags[c] for c in cols)))


async def account_messages(tx: Tx, account_id: int, limit: int = 50) -> list[dict]:
    """The account's last messages, newest first (``smartyd-admin account show``)."""
    rows = await tx.fetchdicts(
        f"SELECT id, subject, text, {', '.join(_MESSAGE_FLAGS)}, client_id, created"
        " FROM account_messages WHERE account_id = %s ORDER BY id DESC LIMIT %s",
        (account_id, limit))
    for r in rows:
        r["created"] = r["created"].isoformat()
    return rows


# -- tariffs ---------------------------------------------------------------------------------
async def find_tariff(tx: Tx, tariff_id: int | None = None,
                      ext_id: str | None = None) -> int | None:
    if tariff_id is not None:
        return await tx.fetchval("SELECT id FROM tariffs WHERE id = %s", (tariff_id,))
    if ext_id is not None:
        return await tx.fetchval("SELECT id FROM tariffs WHERE ext_id = %s", (ext_id,))
    return None


async def list_tariffs(tx: Tx, additional: bool | None) -> list[dict]:
    """The operator's visible tariffs (every client sees them), with their channels."""
    tariffs = await tx.fetchdicts(
        "SELECT id, name, price, activation_price, period_days, period_months, ext_id"
        " FROM tariffs WHERE NOT hidden AND (%s::boolean IS NULL OR additional = %s)"
        " ORDER BY id", (additional, additional))
    channels = await tx.fetchall(
        "SELECT tc.tariff_id, c.id, c.name FROM tariff_channels tc"
        " JOIN channels c ON c.id = tc.channel_id ORDER BY tc.tariff_id, c.id")
    by_tariff: dict[int, list] = {}
    for tid, cid, name in channels:
        by_tariff.setdefault(tid, []).append({"id": cid, "name": name, "icon": ""})
    for t in tariffs:
        t["channels"] = by_tariff.get(t["id"], [])
    return tariffs


# -- transactions -----------------------------------------------------------------------------
_TXN = ("id, client_id, ext_id, customer_id, amount, processed, comment, ledger_id,"
        " reversal_id, deleted_at")


async def get_transaction(tx: Tx, client_id: str, ext_id: str, lock: bool = False) -> dict | None:
    return await tx.fetchdict(
        f"SELECT {_TXN} FROM billing_api_transactions WHERE client_id = %s AND ext_id = %s"
        + (" FOR UPDATE" if lock else ""), (client_id, ext_id))


async def create_transaction(tx: Tx, client_id: str, ext_id: str, customer_id: int,
                             amount: Decimal, processed: bool, comment: str,
                             transaction_type: int | None, video_ext_id: str | None
                             ) -> tuple[dict, bool]:
    """
    Record the transaction and move its amount through the ledger, once per
    ``(client_id, ext_id)``.  Returns ``(transaction, created)``; a repeat
    (also a racing copy: the unique key makes it wait for the first, then
    find its row) changes nothing, whatever its customer or amount.

    The customer row is locked first, before the insert's foreign key takes
    its share lock (the lock order of every writer of a customer's money,
    see L{smartyd.payments.accept}).
    """
    if not await tx.fetchval("SELECT 1 FROM customers WHERE id = %s FOR UPDATE", (customer_id,)):
        raise ledger.CustomerNotFound(f"no customer {customer_id}")
    row = await tx.fetchdict(
        "INSERT INTO billing_api_transactions (client_id, ext_id, customer_id, amount, processed,"
        " comment, transaction_type, video_ext_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
        f" ON CONFLICT (client_id, ext_id) DO NOTHING RETURNING {_TXN}",
        (client_id, ext_id, customer_id, amount, processed, comment, transaction_type,
         video_ext_id))
    if row is None:
        return await get_transaction(tx, client_id, ext_id), False
    if amount != 0:
        # Keyed by the row's own id: no two (client, ext_id) can share a key.
        entry, _ = await ledger.post(tx, customer_id, amount, "transaction",
                                     f"billing api {client_id}: {ext_id}",
                                     f"billing-api:transaction:{row['id']}")
        await tx.execute("UPDATE billing_api_transactions SET ledger_id = %s WHERE id = %s",
                         (entry.id, row["id"]))
        row["ledger_id"] = entry.id
    return row, True


async def delete_transaction(tx: Tx, client_id: str, ext_id: str) -> dict | None:
    """
    Reverse a transaction with a ledger row of the opposite amount and mark
    it deleted.  None when there is no such transaction or it was deleted.
    """
    found = await get_transaction(tx, client_id, ext_id)
    if found is None or found["deleted_at"] is not None:
        return None
    await tx.fetchval("SELECT 1 FROM customers WHERE id = %s FOR UPDATE", (found["customer_id"],))
    row = await get_transaction(tx, client_id, ext_id, lock=True)
    if row["deleted_at"] is not None:
        return None
    reversal = None
    if row["ledger_id"] is not None:
        entry, _ = await ledger.post(tx, row["customer_id"], -row["amount"],
                                     "transaction-reversal",
                                     f"billing api {client_id}: {ext_id} deleted",
                                     f"billing-api:transaction:{row['id']}:reversal")
        reversal = entry.id
    await tx.execute(
        "UPDATE billing_api_transactions SET deleted_at = now(), reversal_id = %s WHERE id = %s",
        (reversal, row["id"]))
    return row
