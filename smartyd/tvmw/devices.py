"""
Devices bound to accounts (``devices``): a device_uid that logs in through
the TV Middleware API is bound to that account; ``smartyd-admin account
devices ID`` lists them, ``smartyd-admin device unbind UID`` frees one (its
sessions end with it).
"""

from __future__ import annotations

from smartyd.db import Tx
from smartyd.ledger import AccountNotFound, LedgerError


async def account_devices(tx: Tx, account_id: int) -> dict:
    if not await tx.fetchval("SELECT 1 FROM accounts WHERE id = %s", (account_id,)):
        raise AccountNotFound(f"no account {account_id}")
    rows = await tx.fetchdicts(
        "SELECT d.uid, d.system_name AS device, d.model, d.serial, d.created,"
        " (SELECT count(*) FROM tvmw_sessions s WHERE s.account_id = d.account_id"
        "   AND s.device_uid = d.uid) AS sessions"
        " FROM devices d WHERE d.account_id = %s ORDER BY d.created, d.uid", (account_id,))
    for row in rows:
        row["created"] = row["created"].isoformat()
    limit = await tx.fetchval("SELECT max_devices FROM accounts WHERE id = %s", (account_id,))
    return {"account": account_id, "max_devices": limit, "devices": rows}


async def unbind(tx: Tx, uid: str) -> dict:
    """
    Unbind a device; its sessions end with it (migration 0023's trigger on
    ``devices``).  The result names the account's customer: its audit row
    (L{smartyd.operators.audited}) is on the customer's card, as the console's.
    """
    sessions = await tx.fetchval(
        "SELECT count(*) FROM tvmw_sessions s JOIN devices d"
        " ON d.account_id = s.account_id AND d.uid = s.device_uid WHERE d.uid = %s", (uid,))
    row = await tx.fetchone(
        "DELETE FROM devices d USING accounts a WHERE d.uid = %s AND a.id = d.account_id"
        " RETURNING d.account_id, a.customer_id", (uid,))
    if row is None:
        raise LedgerError(f"no device {uid!r}")
    return {"uid": uid, "account": row[0], "customer_id": row[1], "sessions_ended": sessions}


async def set_account_devices(tx: Tx, account_id: int, devices: int) -> dict:
    """The account's own limit of devices in session; 0 clears it (its tariffs decide)."""
    if devices < 0:
        raise LedgerError("devices must be 0 (clear) or more")
    row = await tx.fetchone("UPDATE accounts SET max_devices = %s WHERE id = %s RETURNING id",
                            (devices or None, account_id))
    if row is None:
        raise AccountNotFound(f"no account {account_id}")
    return {"account": account_id, "max_devices": devices or None}


async def category_id(tx: Tx, name: str) -> int:
    """The channel category of that name (created when new)."""
    if not 1 <= len(name) <= 64 or not name.isprintable():
        raise LedgerError("category name must be 1-64 printable characters")
    await tx.execute("INSERT INTO channel_categories (name) VALUES (%s) ON CONFLICT (name)"
                     " DO NOTHING", (name,))
    return await tx.fetchval("SELECT id FROM channel_categories WHERE name = %s", (name,))
