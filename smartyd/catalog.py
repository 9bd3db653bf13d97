"""
Channels, tariffs and subscriptions (what an account may watch).

Changes here fire ``NOTIFY smartyd_entitlements`` through triggers, so every
instance's token checker reloads its snapshot.
"""

from __future__ import annotations

import re

from smartyd.db import Tx
from smartyd.ledger import AccountNotFound, LedgerError, money

NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


class CatalogError(LedgerError):
    pass


async def create_channel(tx: Tx, name: str, url_mask: str,
                         streamer_id: str | None = None) -> dict:
    if not NAME_RE.match(name or ""):
        raise CatalogError("channel name must be 1-64 characters of A-Z a-z 0-9 _ . : -")
    if not url_mask.startswith(("http://", "https://", "udp://", "rtmp://", "rtsp://", "srt://")):
        raise CatalogError("url mask must be a stream URL (http://, https://, udp://, ...)")
    if await tx.fetchval("SELECT 1 FROM channels WHERE name = %s", (name,)):
        raise CatalogError(f"channel {name!r} exists already")
    channel = await tx.fetchdict(
        "INSERT INTO channels (name, url_mask) VALUES (%s, %s) RETURNING id, name, url_mask",
        (name, url_mask),
    )
    if streamer_id is not None:
        await set_streamer_id(tx, channel["id"], streamer_id)
        channel["streamer_id"] = streamer_id
    return channel


async def set_streamer_id(tx: Tx, channel_id: int, streamer_id: str) -> None:
    """The streamer's own id of the channel (Cesbo Astra's X-Channel-ID), unique."""
    if not NAME_RE.match(streamer_id or ""):
        raise CatalogError("streamer id must be 1-64 characters of A-Z a-z 0-9 _ . : -")
    if await tx.fetchval(
        "SELECT 1 FROM channels WHERE streamer_id = %s AND id <> %s", (streamer_id, channel_id)
    ):
        raise CatalogError(f"streamer id {streamer_id!r} is another channel's")
    await tx.execute("UPDATE channels SET streamer_id = %s WHERE id = %s",
                     (streamer_id, channel_id))


async def get_channel(tx: Tx, ref: str | int) -> dict | None:
    """A channel by id (digits) or by name."""
    ref = str(ref)
    if ref.isdigit():
        return await tx.fetchdict(
            "SELECT id, name, url_mask FROM channels WHERE id = %s", (int(ref),)
        )
    return await tx.fetchdict("SELECT id, name, url_mask FROM channels WHERE name = %s", (ref,))


_TARIFF_COLUMNS = (
    "id, name, price, kind, period_days, period_months, activation_price, additional, hidden"
)


def _tariff_json(t: dict) -> dict:
    for k in ("price", "activation_price"):
        t[k] = str(t[k])
    return t


async def create_tariff(
    tx: Tx, name: str, price: object, channel_ids: list[int] = (), kind: str = "tv",
    period_days: int = 30, hidden: bool = False, *, period_months: int | None = None,
    activation_price: object = "0", additional: bool = False, sessions: int | None = None,
    devices: int | None = None,
) -> dict:
    """
    A tariff charged ``price`` per period: ``period_days`` days, or
    ``period_months`` calendar months when given.
    """
    if not name or len(name) > 128:
        raise CatalogError("tariff name must be 1-128 characters")
    price = money(price)
    activation_price = money(activation_price)
    if price < 0 or activation_price < 0:
        raise CatalogError("tariff price must not be negative")
    if period_days is None or not 0 < period_days <= 3660:
        raise CatalogError("period days must be 1-3660")
    if period_months is not None and not 0 < period_months <= 120:
        raise CatalogError("period months must be 1-120")
    if await tx.fetchval("SELECT 1 FROM tariffs WHERE name = %s", (name,)):
        raise CatalogError(f"tariff {name!r} exists already")
    tariff = await tx.fetchdict(
        "INSERT INTO tariffs (name, price, kind, period_days, hidden, period_months,"
        " activation_price, additional) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
        f" RETURNING {_TARIFF_COLUMNS}",
        (name, price, kind, period_days, hidden, period_months, activation_price, additional),
    )
    for cid in channel_ids:
        if not await tx.fetchval("SELECT 1 FROM channels WHERE id = %s", (cid,)):
            raise CatalogError(f"no channel {cid}")
        await tx.execute(
            "INSERT INTO tariff_channels (tariff_id, channel_id) VALUES (%s, %s)"
            " ON CONFLICT DO NOTHING",
            (tariff["id"], cid),
        )
    if sessions is not None:
        if sessions < 1:
            raise CatalogError("sessions must be at least 1 (leave it out for no limit)")
        await tx.execute("UPDATE tariffs SET sessions_count = %s WHERE id = %s",
                         (sessions, tariff["id"]))
        tariff["sessions"] = sessions
    if devices is not None:
        if devices < 1:
            raise CatalogError("devices must be at least 1 (leave it out for no limit)")
        await tx.execute("UPDATE tariffs SET devices_count = %s WHERE id = %s",
                         (devices, tariff["id"]))
        tariff["devices"] = devices
    tariff["channels"] = list(channel_ids)
    return _tariff_json(tariff)


async def set_account_sessions(tx: Tx, account_id: int, sessions: int) -> dict:
    """
    The account's own concurrent-session limit; 0 clears it (the limit is then
    the largest of its tariffs', none if one of them has none).  Returns the
    limit, the one it replaces (``previous``) and the account's customer.
    """
    if sessions < 0:
        raise CatalogError("sessions must be 0 (clear) or more")
    row = await tx.fetchone(
        "UPDATE accounts a SET max_sessions = %s"
        " FROM (SELECT id, max_sessions FROM accounts WHERE id = %s FOR UPDATE) old"
        " WHERE a.id = old.id RETURNING a.customer_id, old.max_sessions",
        (sessions or None, account_id),
    )
    if row is None:
        raise AccountNotFound(f"no account {account_id}")
    return {"account": account_id, "max_sessions": sessions or None, "customer_id": row[0],
            "previous": row[1]}


async def get_tariff(tx: Tx, tariff_id: int) -> dict | None:
    t = await tx.fetchdict(f"SELECT {_TARIFF_COLUMNS} FROM tariffs WHERE id = %s", (tariff_id,))
    if t is None:
        return None
    t["price"], t["activation_price"] = money(t["price"]), money(t["activation_price"])
    return t


async def assign_tariff(tx: Tx, account_id: int | None, tariff_id: int, *,
                        customer_id: int | None = None, at=None) -> int | None:
    """
    Assign the tariff to an account (or, with ``account_id`` None, to the
    customer: all its accounts).  Returns the new subscription's id, None when
    it was assigned already.  Its first period is due at ``at`` (now when
    None); charging it is the billing's business (L{smartyd.billing}).
    """
    if account_id is not None:
        customer_id = await tx.fetchval(
            "SELECT customer_id FROM accounts WHERE id = %s", (account_id,))
        if customer_id is None:
            raise AccountNotFound(f"no account {account_id}")
    elif customer_id is None or not await tx.fetchval(
            "SELECT 1 FROM customers WHERE id = %s", (customer_id,)):
        raise CatalogError(f"no customer {customer_id}")
    if not await tx.fetchval("SELECT 1 FROM tariffs WHERE id = %s", (tariff_id,)):
        raise CatalogError(f"no tariff {tariff_id}")
    return await tx.fetchval(
        "INSERT INTO subscriptions (customer_id, account_id, tariff_id, anchor, paid_until)"
        " VALUES (%s, %s, %s, coalesce(%s, now()), coalesce(%s, now()))"
        " ON CONFLICT DO NOTHING RETURNING id",
        (customer_id, account_id, tariff_id, at, at),
    )


async def get_assignment(tx: Tx, account_id: int | None, tariff_id: int, *,
                         customer_id: int | None = None, lock: bool = False) -> dict | None:
    """The subscription of the tariff on the account (or on the customer itself)."""
    if account_id is not None:
        where, args = "account_id = %s", (account_id, tariff_id)
    else:
        where, args = "account_id IS NULL AND customer_id = %s", (customer_id, tariff_id)
    return await tx.fetchdict(
        "SELECT id, customer_id, account_id, tariff_id, anchor, periods, days, paid_until, state"
        f" FROM subscriptions WHERE {where} AND tariff_id = %s" + (" FOR UPDATE" if lock else ""),
        args,
    )


async def remove_tariff(tx: Tx, account_id: int | None, tariff_id: int, *,
                        customer_id: int | None = None) -> bool:
    """Unassign the tariff; False when it was not assigned."""
    if account_id is not None:
        row = await tx.fetchone(
            "DELETE FROM subscriptions WHERE account_id = %s AND tariff_id = %s RETURNING 1",
            (account_id, tariff_id),
        )
    else:
        row = await tx.fetchone(
            "DELETE FROM subscriptions WHERE account_id IS NULL AND customer_id = %s"
            " AND tariff_id = %s RETURNING 1",
            (customer_id, tariff_id),
        )
    return row is not None


async def account_channels(tx: Tx, account_id: int) -> list[int]:
    """The channels the account is entitled to now (its own and its customer's tariffs)."""
    rows = await tx.fetchall(
        "SELECT DISTINCT tc.channel_id FROM accounts a"
        " JOIN subscriptions s ON s.customer_id = a.customer_id"
        "  AND (s.account_id IS NULL OR s.account_id = a.id) AND s.state = 'active'"
        " JOIN tariff_channels tc ON tc.tariff_id = s.tariff_id"
        " WHERE a.id = %s ORDER BY 1",
        (account_id,),
    )
    return [r[0] for r in rows]


async def account_tariffs(tx: Tx, account_id: int) -> list[int]:
    """The ids of the tariffs assigned to an account itself, ascending."""
    rows = await tx.fetchall(
        "SELECT tariff_id FROM subscriptions WHERE account_id = %s ORDER BY 1", (account_id,))
    return [r[0] for r in rows]


async def customer_subscriptions(tx: Tx, customer_id: int) -> list[dict]:
    """Every subscription of the customer and its accounts."""
    return await tx.fetchdicts(
        "SELECT id, account_id, tariff_id, anchor, paid_until, state FROM subscriptions"
        " WHERE customer_id = %s ORDER BY id",
        (customer_id,),
    )


# -- editing (the operator console's catalog pages) -----------------------------------------------
async def list_tariffs(tx: Tx) -> list[dict]:
    """Every tariff with its session and device limits and channel ids, by name."""
    rows = await tx.fetchdicts(
        f"SELECT {_TARIFF_COLUMNS}, sessions_count AS sessions, devices_count AS devices,"
        " coalesce((SELECT array_agg(channel_id ORDER BY channel_id) FROM tariff_channels"
        "  WHERE tariff_id = tariffs.id), '{}') AS channels FROM tariffs ORDER BY name")
    return rows


async def list_channels(tx: Tx) -> list[dict]:
    return await tx.fetchdicts(
        "SELECT id, name, url_mask, streamer_id, xmltv_id FROM channels ORDER BY name")


async def update_tariff(tx: Tx, tariff_id: int, *, name: str, price: object,
                        period_days: int, period_months: int | None, activation_price: object,
                        hidden: bool, sessions: int | None, devices: int | None,
                        channel_ids: list[int]) -> dict:
    """
    Set a tariff's fields and channels (as L{create_tariff} checks them).  A
    new price applies from the next charge; the channels change at once
    (the entitlement NOTIFY).
    """
    if not name or len(name) > 128:
        raise CatalogError("tariff name must be 1-128 characters")
    price, activation_price = money(price), money(activation_price)
    if price < 0 or activation_price < 0:
        raise CatalogError("tariff price must not be negative")
    if not 0 < period_days <= 3660:
        raise CatalogError("period days must be 1-3660")
    if period_months is not None and not 0 < period_months <= 120:
        raise CatalogError("period months must be 1-120")
    if sessions is not None and sessions < 1:
        raise CatalogError("sessions must be at least 1 (leave it out for no limit)")
    if devices is not None and devices < 1:
        raise CatalogError("devices must be at least 1 (leave it out for no limit)")
    if await tx.fetchval("SELECT 1 FROM tariffs WHERE name = %s AND id <> %s",
                         (name, tariff_id)):
        raise CatalogError(f"tariff {name!r} exists already")
    done = await tx.fetchval(
        "UPDATE tariffs SET name = %s, price = %s, period_days = %s, period_months = %s,"
        " activation_price = %s, hidden = %s, sessions_count = %s, devices_count = %s"
        " WHERE id = %s RETURNING id",
        (name, price, period_days, period_months, activation_price, hidden, sessions, devices,
         tariff_id))
    if done is None:
        raise CatalogError(f"no tariff {tariff_id}")
    wanted = sorted(set(channel_ids))
    if wanted and await tx.fetchval("SELECT count(*) FROM channels WHERE id = ANY(%s)",
                                    (wanted,)) != len(wanted):
        raise CatalogError("no such channel")
    await tx.execute("DELETE FROM tariff_channels WHERE tariff_id = %s AND NOT channel_id ="
                     " ANY(%s)", (tariff_id, wanted))
    await tx.execute("INSERT INTO tariff_channels (tariff_id, channel_id) SELECT %s, unnest(%s::"
                     "bigint[]) ON CONFLICT DO NOTHING", (tariff_id, wanted))
    return next(t for t in await list_tariffs(tx) if t["id"] == tariff_id)


async def update_channel(tx: Tx, channel_id: int, *, url_mask: str,
                         streamer_id: str | None) -> dict:
    """Set a channel's URL mask and streamer id (None clears it)."""
    if not url_mask.startswith(("http://", "https://", "udp://", "rtmp://", "rtsp://", "srt://")):
        raise CatalogError("url mask must be a stream URL (http://, https://, udp://, ...)")
    done = await tx.fetchval("UPDATE channels SET url_mask = %s WHERE id = %s RETURNING id",
                             (url_mask, channel_id))
    if done is None:
        raise CatalogError(f"no channel {channel_id}")
    if streamer_id:
        await set_streamer_id(tx, channel_id, streamer_id)
    else:
        await tx.execute("UPDATE channels SET streamer_id = NULL WHERE id = %s", (channel_id,))
    return await tx.fetchdict(
        "SELECT id, name, url_mask, streamer_id, xmltv_id FROM channels WHERE id = %s",
        (channel_id,))
