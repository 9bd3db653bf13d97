"""
The widgets' SQL (migration 0012): widgets, one-use captchas, sign-ups per
address, the channel lists they show and the TV guide.
"""

from __future__ import annotations

from datetime import datetime

from attrs import frozen

from smartyd.catalog import CatalogError
from smartyd.db import Tx

KINDS = ("channels", "signup", "cabinet", "epg", "payment")


class WidgetError(CatalogError):
    pass


@frozen
class Widget:
    id: int
    kind: str
    title: str
    tariff_ids: tuple[int, ...]

    def to_json(self) -> dict:
        return {"id": self.id, "type": self.kind, "title": self.title,
                "tariffs": list(self.tariff_ids)}


async def create_widget(tx: Tx, kind: str, title: str = "", tariff_ids=()) -> Widget:
    if kind not in KINDS:
        raise WidgetError(f"widget type must be one of {', '.join(KINDS)}")
    if len(title) > 200:
        raise WidgetError("title: at most 200 characters")
    for tid in tariff_ids:
        if not await tx.fetchval("SELECT 1 FROM tariffs WHERE id = %s", (tid,)):
            raise WidgetError(f"no tariff {tid}")
    row = await tx.fetchone(
        "INSERT INTO widgets (kind, title, tariff_ids) VALUES (%s, %s, %s)"
        " RETURNING id, kind, title, tariff_ids", (kind, title, list(tariff_ids)))
    return _widget(row)


def _widget(row) -> Widget | None:
    return None if row is None else Widget(row[0], row[1], row[2], tuple(row[3] or ()))


async def get_widget(tx: Tx, widget_id: int) -> Widget | None:
    return _widget(await tx.fetchone(
        "SELECT id, kind, title, tariff_ids FROM widgets WHERE id = %s", (widget_id,)))


# -- captchas -------------------------------------------------------------------------
async def new_captcha(tx: Tx, captcha_id: str, answer: int, expires: datetime) -> None:
    await tx.execute("DELETE FROM widget_captchas WHERE expires < now()")
    await tx.execute("INSERT INTO widget_captchas (id, answer, expires) VALUES (%s, %s, %s)",
                     (captcha_id, answer, expires))


async def take_captcha(tx: Tx, captcha_id: str, now: datetime) -> int | None:
    """The captcha's answer, once: the row goes whatever the guess (None: unknown or expired)."""
    return await tx.fetchval(
        "DELETE FROM widget_captchas WHERE id = %s AND expires > %s RETURNING answer",
        (captcha_id, now))


# -- sign-ups -------------------------------------------------------------------------
async def lock_signups(tx: Tx, ip: str, since: datetime) -> int:
    """
    The sign-ups from ``ip`` since ``since``, with the address's lock held
    to the end of the transaction (two racing sign-ups cannot both pass).
    """
    await tx.execute("SELECT pg_advisory_xact_lock(hashtext('widget-signup:' || %s))", (ip,))
    return await tx.fetchval(
        "SELECT count(*) FROM widget_signups WHERE ip = %s AND at > %s", (ip, since))


async def record_signup(tx: Tx, ip: str, customer_id: int, at: datetime) -> None:
    await tx.execute("INSERT INTO widget_signups (ip, customer_id, at) VALUES (%s, %s, %s)",
                     (ip, customer_id, at))


# -- tariffs and channels ---------------------------------------------------------------
async def tariffs_with_channels(tx: Tx, tariff_ids: tuple[int, ...]) -> list[dict]:
    """The named tariffs (all visible ones when none is named), each with its channels."""
    if tariff_ids:
        rows = await tx.fetchall(
            "SELECT id, name, price, period_days FROM tariffs WHERE id = ANY(%s) ORDER BY id",
            (list(tariff_ids),))
    else:
        rows = await tx.fetchall(
            "SELECT id, name, price, period_days FROM tariffs WHERE NOT hidden ORDER BY id")
    out = []
    for tid, name, price, days in rows:
        channels = await tx.fetchall(
            "SELECT c.id, c.name FROM tariff_channels tc JOIN channels c ON c.id = tc.channel_id"
            " WHERE tc.tariff_id = %s ORDER BY c.name", (tid,))
        out.append({"id": tid, "name": name, "price": price, "period_days": days,
                    "channels": [{"id": c[0], "name": c[1]} for c in channels]})
    return out


async def set_xmltv_id(tx: Tx, channel_id: int, xmltv_id: str) -> None:
    if not 1 <= len(xmltv_id) <= 128 or not xmltv_id.isprintable():
        raise CatalogError("xmltv id must be 1-128 printable characters")
    if await tx.fetchval("SELECT 1 FROM channels WHERE xmltv_id = %s AND id <> %s",
                         (xmltv_id, channel_id)):
        raise CatalogError(f"xmltv id {xmltv_id!r} is another channel's")
    await tx.execute("UPDATE channels SET xmltv_id = %s WHERE id = %s", (xmltv_id, channel_id))


# -- the TV guide -------------------------------------------------------------------------
async def xmltv_channels(tx: Tx) -> dict[str, int]:
    rows = await tx.fetchall("SELECT xmltv_id, id FROM channels WHERE xmltv_id IS NOT NULL")
    return {r[0]: r[1] for r in rows}


async def store_programmes(tx: Tx, rows: list[tuple]) -> int:
    """Upsert ``(channel_id, start, stop, title, description)`` rows; the count written."""
    for row in rows:
        await tx.execute(
            "INSERT INTO epg_programmes (channel_id, start, stop, title, description)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (channel_id, start) DO UPDATE"
            " SET stop = excluded.stop, title = excluded.title,"
            " description = excluded.description", row)
    return len(rows)


async def prune_programmes(tx: Tx, before: datetime) -> int:
    rows = await tx.fetchall("DELETE FROM epg_programmes WHERE stop < %s RETURNING 1", (before,))
    return len(rows)


async def guide(tx: Tx, channel_ids: list[int] | None, now: datetime, upto: datetime
                ) -> list[dict]:
    """Per channel (all with a guide when None), the programmes on air from ``now`` to ``upto``."""
    where = "" if channel_ids is None else " AND c.id = ANY(%s)"
    args: tuple = (now, upto) + (() if channel_ids is None else (list(channel_ids),))
    rows = await tx.fetchall(
        "SELECT c.id, c.name, p.start, p.stop, p.title, p.description FROM epg_programmes p"
        " JOIN channels c ON c.id = p.channel_id WHERE p.stop > %s AND p.start < %s" + where
        + " ORDER BY c.name, p.start", args)
    out: dict[int, dict] = {}
    for cid, name, start, stop, title, desc in rows:
        entry = out.setdefault(cid, {"id": cid, "name": name, "programmes": []})
        entry["programmes"].append({"start": start, "stop": stop, "title": title,
                                    "description": desc, "on_air": start <= now < stop})
    return list(out.values())


async def tariff_channel_ids(tx: Tx, tariff_ids: tuple[int, ...]) -> list[int]:
    rows = await tx.fetchall(
        "SELECT DISTINCT channel_id FROM tariff_channels WHERE tariff_id = ANY(%s)",
        (list(tariff_ids),))
    return [r[0] for r in rows]


# -- the cabinet's changes -----------------------------------------------------------------
MAX_ACCOUNTS = 10  # a customer adds at most this many accounts from the cabinet


async def lock_customer_accounts(tx: Tx, customer_id: int) -> int:
    """The customer's account count, its row locked (two racing adds cannot both pass)."""
    await tx.execute("SELECT 1 FROM customers WHERE id = %s FOR UPDATE", (customer_id,))
    return await tx.fetchval("SELECT count(*) FROM accounts WHERE customer_id = %s",
                             (customer_id,))


async def set_account_password(tx: Tx, customer_id: int, account_id: int,
                               password_hash: str) -> str | None:
    """
    Set the password of ``account_id`` if it is one of the customer's: its
    login (None: it is not).
    """
    return await tx.fetchval(
        "UPDATE accounts SET password_hash = %s WHERE id = %s AND customer_id = %s"
        " RETURNING login", (password_hash, account_id, customer_id))


async def set_contacts(tx: Tx, customer_id: int, phone: str | None, email: str | None) -> None:
    """The customer's phone and e-mail as given (None clears one)."""
    await tx.execute("UPDATE customers SET phone = %s, email = %s, updated = now()"
                     " WHERE id = %s", (phone, email, customer_id))
