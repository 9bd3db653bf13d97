"""
The SQL of the device API's customer and film methods (a repository module,
like L{smartyd.ledger}): what one account sees of tariffs, subscriptions, the
ledger and the VOD catalog.  Writes go through the billing
(L{smartyd.billing.engine}), the ledger and L{smartyd.vod.tvod}, never here.

"The account's tariffs": its own subscriptions and its customer's (account
id NULL: every account of the customer), as L{smartyd.catalog.account_channels}
counts them; only ``active`` ones give access (a suspended one is still
assigned).
"""

from __future__ import annotations

from datetime import datetime

from smartyd.db import Tx

# -- tariffs and subscriptions --------------------------------------------------------------
_MINE = ("s.customer_id = %(customer)s AND (s.account_id IS NULL OR s.account_id = %(account)s)")


async def offered_tariffs(tx: Tx, customer_id: int, account_id: int) -> list[dict]:
    """
    The tariffs a device is shown: every tariff that is not hidden, each with
    the account's subscription to it (``sub_*`` NULL when none), by id.
    """
    return await tx.fetchdicts(
        "SELECT t.id, t.name, t.price, t.kind, t.period_days, t.period_months,"
        " t.activation_price, t.additional,"
        " (SELECT count(*) FROM tariff_channels tc WHERE tc.tariff_id = t.id) AS channels_count,"
        " s.id AS sub_id, s.account_id AS sub_account_id, s.anchor AS sub_anchor,"
        " s.paid_until AS sub_paid_until, s.state AS sub_state"
        " FROM tariffs t LEFT JOIN LATERAL (SELECT * FROM subscriptions s"
        f"  WHERE {_MINE} AND s.tariff_id = t.id ORDER BY s.account_id NULLS LAST LIMIT 1) s"
        " ON true WHERE NOT t.hidden ORDER BY t.id",
        {"customer": customer_id, "account": account_id})


async def subscriptions(tx: Tx, customer_id: int, account_id: int) -> list[dict]:
    """The account's subscriptions (its own and its customer's), with their tariffs, by id."""
    return await tx.fetchdicts(
        "SELECT s.id, s.tariff_id, t.name AS tariff_name, t.price, s.account_id, s.anchor,"
        " s.paid_until, s.state FROM subscriptions s JOIN tariffs t ON t.id = s.tariff_id"
        f" WHERE {_MINE} ORDER BY s.id",
        {"customer": customer_id, "account": account_id})


async def tariffs_by_id(tx: Tx, ids: list[int]) -> dict[int, dict]:
    rows = await tx.fetchdicts(
        "SELECT id, name, price, hidden, additional FROM tariffs WHERE id = ANY(%s)", (ids,))
    return {r["id"]: r for r in rows}


async def account_active(tx: Tx, account_id: int) -> bool:
    """False while the account is inactive: blocked, or in DEBT (a debtor keeps its session)."""
    return bool(await tx.fetchval("SELECT active FROM accounts WHERE id = %s", (account_id,)))


async def active_tariff_ids(tx: Tx, customer_id: int, account_id: int) -> set[int]:
    rows = await tx.fetchall(
        f"SELECT DISTINCT s.tariff_id FROM subscriptions s WHERE {_MINE} AND s.state = 'active'",
        {"customer": customer_id, "account": account_id})
    return {r[0] for r in rows}


# -- the ledger --------------------------------------------------------------------------------
_ROWS = (
    "SELECT l.id, l.amount, l.kind, l.cause, coalesce(l.at, l.created) AS moment,"
    " l.tariff_id, t.name AS tariff_name, t.kind AS tariff_kind"
    " FROM ledger l LEFT JOIN tariffs t ON t.id = l.tariff_id WHERE l.customer_id = %(customer)s"
)


async def ledger_page(tx: Tx, customer_id: int, limit: int, offset: int) -> list[dict]:
    """The customer's ledger rows, newest first."""
    return await tx.fetchdicts(
        f"{_ROWS} ORDER BY l.id DESC LIMIT %(limit)s OFFSET %(offset)s",
        {"customer": customer_id, "limit": limit, "offset": offset})


async def ledger_between(tx: Tx, customer_id: int, start: datetime, end: datetime,
                         limit: int = 1000) -> list[dict]:
    """The customer's ledger rows dated in [start, end), oldest first (``limit`` newest)."""
    return await tx.fetchdicts(
        f"SELECT * FROM ({_ROWS} AND coalesce(l.at, l.created) >= %(start)s"
        " AND coalesce(l.at, l.created) < %(end)s ORDER BY l.id DESC LIMIT %(limit)s) r"
        " ORDER BY id",
        {"customer": customer_id, "start": start, "end": end, "limit": limit})


# -- the VOD catalog ------------------------------------------------------------------------
# A title the account sees: not hidden, of an enabled cinema, and linked to
# one of the account's active tariffs (the cinema's catalog tariff) or bought
# by the account.
_VISIBLE = (
    "NOT v.hidden AND v.provider = ANY(%(providers)s) AND ("
    " v.tariff_id = ANY(%(tariffs)s)"
    " OR EXISTS (SELECT 1 FROM vod_purchases p WHERE p.account_id = %(account)s"
    "  AND p.title_id = v.id))"
)
_GENRES_OF = (
    "coalesce((SELECT array_agg(DISTINCT g.name ORDER BY g.name)"
    "  FROM vod_genre_map m JOIN vod_genres g ON g.id = m.genre_id"
    "  WHERE m.provider = v.provider AND m.partner_genre = ANY(v.partner_genres)), '{}')"
)
_HAS_GENRE = (
    "EXISTS (SELECT 1 FROM vod_genre_map m WHERE m.provider = v.provider"
    " AND m.partner_genre = ANY(v.partner_genres) AND m.genre_id = ANY(%(genres)s))"
)
_TITLE_COLUMNS = (
    "v.id, v.provider, v.external_id, v.name, v.name_en, v.year, v.country, v.story,"
    " v.duration_sec, v.poster_url, v.info, v.svod, v.tvod, v.price, v.tariff_id,"
    f" {_GENRES_OF} AS genres,"
    " EXISTS (SELECT 1 FROM vod_purchases p WHERE p.account_id = %(account)s"
    "  AND p.title_id = v.id) AS purchased"
)
# Orders: the spec's names; what is not kept here (premiere dates, customers'
# ratings, views) is not offered.  Ratings are the feed's, text: compared only
# when they are numbers.
_RATING = ("CASE WHEN v.info->'ratings'->>'{0}' ~ '^[0-9]{{1,3}}([.][0-9]{{1,3}})?$'"
           " THEN (v.info->'ratings'->>'{0}')::numeric END")
ORDERS = {
    "created_at": "v.created", "updated_at": "v.updated", "year": "v.year",
    "name": "v.name", "kinopoisk_rating": _RATING.format("kinopoisk"),
    "imdb_rating": _RATING.format("imdb"),
}


def _filters(f: dict) -> tuple[str, dict]:
    """The WHERE clause of a title query and its parameters."""
    where = [_VISIBLE]
    args = {"providers": list(f["providers"]), "tariffs": list(f["tariffs"]),
            "account": f["account"]}
    if f.get("genres"):
        where.append(_HAS_GENRE)
        args["genres"] = list(f["genres"])
    if f.get("search"):
        pattern = "%" + f["search"].replace("\\", "\\\\").replace("%", "\\%").replace(
            "_", "\\_") + "%"
        where.append("(v.name ILIKE %(search)s OR v.name_en ILIKE %(search)s)")
        args["search"] = pattern
    if f.get("years"):
        where.append("v.year = ANY(%(years)s)")
        args["years"] = list(f["years"])
    if f.get("countries"):
        where.append("lower(v.country) = ANY(%(countries)s)")
        args["countries"] = [c.lower() for c in f["countries"]]
    if f.get("tariff") is not None:
        where.append("v.tariff_id = %(tariff)s")
        args["tariff"] = f["tariff"]
    if f.get("purchased"):
        where.append("EXISTS (SELECT 1 FROM vod_purchases p WHERE p.account_id = %(account)s"
                     " AND p.title_id = v.id)")
    if f.get("since") is not None:
        where.append("v.created >= %(since)s")
        args["since"] = f["since"]
    if f.get("vid") is not None:
        where.append("v.id = %(vid)s")
        args["vid"] = f["vid"]
    return " AND ".join(where), args


async def titles(tx: Tx, f: dict, order: str, descending: bool, limit: int,
                 offset: int) -> tuple[int, list[dict]]:
    """``(count, page)`` of the titles the filters ``f`` select (see L{_filters})."""
    where, args = _filters(f)
    count = await tx.fetchval(f"SELECT count(*) FROM vod_titles v WHERE {where}", args)
    direction = "DESC" if descending else "ASC"
    rows = await tx.fetchdicts(
        f"SELECT {_TITLE_COLUMNS} FROM vod_titles v WHERE {where}"
        f" ORDER BY {ORDERS[order]} {direction} NULLS LAST, v.id {direction}"
        " LIMIT %(limit)s OFFSET %(offset)s",
        {**args, "limit": limit, "offset": offset})
    return count, rows


async def title(tx: Tx, f: dict, vid: int) -> dict | None:
    """One title the account sees, by our id."""
    where, args = _filters({**f, "vid": vid})
    return await tx.fetchdict(f"SELECT {_TITLE_COLUMNS} FROM vod_titles v WHERE {where}", args)


async def genre_counts(tx: Tx, f: dict) -> list[dict]:
    """
    Our genres with at least one title the account sees: ``count`` titles,
    ``subgenres_count`` other genres among those titles.  By name.
    """
    where, args = _filters(f)
    return await tx.fetchdicts(
        "WITH tg AS (SELECT DISTINCT v.id AS title_id, m.genre_id FROM vod_titles v"
        "  JOIN vod_genre_map m ON m.provider = v.provider"
        "   AND m.partner_genre = ANY(v.partner_genres) AND m.genre_id IS NOT NULL"
        f"  WHERE {where})"
        " SELECT g.id, g.name, count(DISTINCT tg.title_id) AS count,"
        " (SELECT count(DISTINCT o.genre_id) FROM tg o WHERE o.genre_id <> g.id"
        "   AND o.title_id IN (SELECT title_id FROM tg WHERE genre_id = g.id)) AS subgenres_count"
        " FROM vod_genres g JOIN tg ON tg.genre_id = g.id GROUP BY g.id, g.name ORDER BY g.name",
        args)
