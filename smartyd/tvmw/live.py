"""
Live TV: ``ChannelList``, ``CategoryList``, ``ChannelDetail``, ``ChannelUrl``,
``ChannelPrograms``, ``ProgramList``.

What an account may watch comes from the stream-token checker's own
entitlement snapshot (L{smartyd.streams.entitlements}): ChannelUrl grants
exactly what the token check will allow, and a zap reads no row -- the
session, the snapshot and the channel catalog are memory, the token is
minted by L{smartyd.streams.web.mint_stream}, the one minting path of
``POST /streams/url``, for the caller's address.  Until the snapshot has
loaded, the grant is read from the database as ``/streams/url`` does.

The guide is the XMLTV import (``epg_programmes``, L{smartyd.widgets.epg}).
A programme has no id of its own there (its key is channel + start): its
``id`` here is its start as a Unix time, unique within its channel, which is
what ``pid_from`` takes back.

ChannelList lists every channel of the catalog, ``has_subscription`` 1 for
those the account's active tariffs carry while the account is active (a
device shows the others locked, with ChannelDetail's ``subscribe`` actions;
an account in DEBT, still logged in, sees every channel locked, and
ChannelDetail's ``get_channel_url`` nowhere).  A watchable channel's ``url`` is
this API's own ChannelUrl entry (``<origin>/tvmiddleware/api/channel/url/?cid=
N&authkey=...``, the origin as the device addressed us): apps that play
``url`` (and playlist generators that copy it into an M3U) get a fresh token
at every play, which a URL with a token minted at listing time could not
give; a locked channel's ``url`` is empty.  ChannelListSearch is the same
list, the spec's ``limit``/``page`` applied when ``limit`` is sent.  Fields
smartyd has no data for (icons, previews, archive, parental control,
timeshift) answer empty / 0.

Error codes where the spec names none for the case: an unknown ``cid``
answers 1 with ``error_messages``; a channel the account may not watch now
(no active tariff carries it, the account is in DEBT, or it was blocked a
moment ago) answers error 2, the one refusal for every such case (the
spec lists no error for ChannelUrl), and mints nothing.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, time, timedelta, timezone
from urllib.parse import quote

from smartyd import catalog as core_catalog
from smartyd.streams.entitlements import OK as ENTITLED
from smartyd.streams.web import grant, mint_stream
from smartyd.tvmw import content_repo
from smartyd.tvmw import params as P
from smartyd.tvmw.call import Call
from smartyd.tvmw.customer import number
from smartyd.tvmw.errors import TvmwError
from smartyd.tvmw.web import PREFIX

NOT_WATCHABLE = 2
MAX_PROGRAMS = 500


async def _watchable(tx, account_id: int) -> list[int]:
    if not await content_repo.account_active(tx, account_id):
        return []
    return await core_catalog.account_channels(tx, account_id)


async def account_channel_ids(call: Call) -> frozenset:
    """
    The channels the account may watch now: its active tariffs' while the
    account is active, none while it is not (a debtor's session lives on:
    its list shows every channel locked until a payment lifts the DEBT).
    """
    snapshot = call.deps["entitlements"].snapshot
    if snapshot is not None:
        return snapshot.watchable(call.session.account_id)
    return frozenset(await call.db.run(_watchable, call.session.account_id))


async def channels_digest(call: Call) -> str:
    ids = await account_channel_ids(call)
    return hashlib.blake2b(",".join(map(str, sorted(ids))).encode(),
                           digest_size=8).hexdigest()


def _epoch(value: datetime) -> int:
    return int(value.timestamp())


async def _guide(tx, channel_ids: list[int], now: datetime, per_channel: int) -> dict:
    """
    The next ``per_channel`` programmes (the one on air first) of each channel:
    per channel a short walk of the (channel_id, start) key from two days back
    (the import prunes what ended before).
    """
    rows = await tx.fetchall(
        "SELECT c.id, p.start, p.stop, p.title, p.description"
        " FROM unnest(%s::bigint[]) AS c(id) CROSS JOIN LATERAL ("
        "  SELECT start, stop, title, description FROM epg_programmes"
        "   WHERE channel_id = c.id AND start > %s AND stop > %s"
        "   ORDER BY start LIMIT %s) p ORDER BY c.id, p.start",
        (channel_ids, now - timedelta(days=2), now, per_channel))
    out: dict[int, list] = {}
    for cid, start, stop, title, desc in rows:
        out.setdefault(cid, []).append((start, stop, title, desc))
    return out


def _programme_fields(prefix: str, p: tuple | None, compact: bool) -> dict:
    if p is None:
        out = {f"{prefix}id": 0, f"{prefix}name": "", f"{prefix}begin_time": 0,
               f"{prefix}end_time": 0, f"{prefix}preview_url": ""}
        if not compact:
            out[f"{prefix}description"] = ""
        return out
    start, stop, title, desc = p
    out = {f"{prefix}id": _epoch(start), f"{prefix}name": title,
           f"{prefix}begin_time": _epoch(start), f"{prefix}end_time": _epoch(stop),
           f"{prefix}preview_url": ""}
    if not compact:
        out[f"{prefix}description"] = desc
    return out


async def channel_list(call: Call) -> dict:
    p = call.params
    compact = bool(P.flag(p, "compact"))
    search = P.text(p, "search", max_len=64).casefold()
    if P.integer(p, "channel_sort_id") is not None:
        raise TvmwError(1, "no such channel sort")
    catalog = await call.deps["channels"].current()
    watchable = await account_channel_ids(call)
    guide = await call.db.run_statement(_guide, list(catalog.order), call.now, 2)
    origin = call.deps.get("origin")
    entry = (f"{origin}{PREFIX}/channel/url/?authkey={quote(call.deps['authkey'], safe='')}&cid="
             if origin else None)
    channels = []
    for position, cid in enumerate(catalog.order, start=1):
        ch = catalog.channels[cid]
        if search and search not in ch["name"].casefold():
            continue
        programmes = guide.get(cid, [])
        on_air = programmes[0] if programmes and programmes[0][0] <= call.now else None
        following = programmes[1] if on_air is not None and len(programmes) > 1 else (
            programmes[0] if programmes and on_air is None else None)
        item = {
            "id": cid, "name": ch["name"], "icon": "", "category_id": ch["category_id"] or 0,
            "url": entry + str(cid) if entry and cid in watchable else "",
            "has_record": 0, "max_archive_duration": 0, "is_hidden": 0,
            "is_favorited": 0, "has_subscription": 1 if cid in watchable else 0,
            "is_parent_control": 0, "timeshift_offset": 0, "channel_sort": position,
        }
        item.update(_programme_fields("program_", on_air, compact))
        if not compact:
            item.update(_programme_fields("next_program_", following, False))
        channels.append(item)
    digest = hashlib.blake2b(",".join(map(str, sorted(watchable))).encode(),
                             digest_size=8).hexdigest()
    call.deps["sessions"].note_digest(call.deps["authkey"], call.deps["live"], digest)
    return {"channels": channels}


async def channel_list_search(call: Call) -> dict:
    answer = await channel_list(call)
    if call.params.get("limit"):
        limit, offset = P.paging(call.params)
        answer["channels"] = answer["channels"][offset:offset + limit]
    return answer


async def category_list(call: Call) -> dict:
    catalog = await call.deps["channels"].current()
    counts: dict[int, int] = {}
    for ch in catalog.channels.values():
        if ch["category_id"] is not None:
            counts[ch["category_id"]] = counts.get(ch["category_id"], 0) + 1
    return {"categories": [
        {"id": c["id"], "name": c["name"], "color": c["color"], "channels_count": counts.get(
            c["id"], 0)} for c in catalog.categories]}


async def _channel(call: Call) -> dict:
    cid = P.required_integer(call.params, "cid", lo=1)
    catalog = await call.deps["channels"].current()
    ch = catalog.channels.get(cid)
    if ch is None:
        raise TvmwError(1, "no such channel", error_messages={"cid": "no such channel"})
    return ch


async def _actions(tx, account_id: int, channel_id: int) -> list[tuple]:
    return await tx.fetchall(
        "SELECT t.id, t.name, t.price, t.activation_price, EXISTS ("
        "  SELECT 1 FROM accounts a JOIN subscriptions s ON s.customer_id = a.customer_id"
        "   AND (s.account_id IS NULL OR s.account_id = a.id) AND s.state = 'active'"
        "  WHERE a.id = %s AND a.active AND s.tariff_id = t.id)"
        " FROM tariffs t JOIN tariff_channels tc ON tc.tariff_id = t.id"
        " WHERE tc.channel_id = %s AND NOT t.hidden ORDER BY t.price, t.id",
        (account_id, channel_id))


async def channel_detail(call: Call) -> dict:
    ch = await _channel(call)
    P.flag(call.params, "show_virtual_tariffs")
    rows = await call.db.run_statement(_actions, call.session.account_id, ch["id"])
    actions = [{
        "action": "get_channel_url" if has else "subscribe",
        "tariff_id": tid, "is_virtual": 0, "caption": name, "price": number(price),
        "periodical": True, "activation_price": number(activation),
    } for tid, name, price, activation, has in rows]
    return {"id": ch["id"], "name": ch["name"], "actions": actions}


async def channel_url(call: Call) -> dict:
    ch = await _channel(call)
    P.flag(call.params, "redirect", default=1)
    account_id = call.session.account_id
    snapshot = call.deps["entitlements"].snapshot
    if snapshot is not None:
        ok = snapshot.entitlement(account_id, ch["id"]) == ENTITLED
    else:
        reason, _ = await call.db.run(grant, account_id, str(ch["id"]))
        ok = reason == "ok"
    if not ok:
        raise TvmwError(NOT_WATCHABLE, "the channel is not available to the account")
    try:
        minted = mint_stream(call.deps["codec"], ch, account_id, call.ip,
                             call.reactor.seconds(), call.cfg.tokens.ttl, call.metrics)
    except ValueError:
        raise TvmwError(1, "the caller has no IP address")
    call.deps["sessions"].note_zap(account_id)
    return {"uri": minted.url}


async def channel_programs(call: Call) -> dict:
    ch = await _channel(call)
    limit = P.integer(call.params, "limit", default=6, lo=1, hi=100)
    compact = bool(P.flag(call.params, "compact"))
    guide = await call.db.run_statement(_guide, [ch["id"]], call.now, limit)
    programs = []
    for start, stop, title, desc in guide.get(ch["id"], []):
        item = {"id": _epoch(start), "program_name": title, "program_begin_time": _epoch(start),
                "program_end_time": _epoch(stop), "program_preview_url": "",
                "program_rating": 0}
        if not compact:
            item.update(program_category="", program_description=desc,
                        datetime_begin=_epoch(start), datetime_end=_epoch(stop))
        programs.append(item)
    return {"programs": programs}


def _day(raw: str) -> datetime:
    for fmt in ("%Y-%m-%d", "%d.%m.%Y", "%d-%m-%Y"):
        try:
            day = datetime.strptime(raw, fmt).date()
        except ValueError:
            continue
        return datetime.combine(P.in_calendar(day, "date"), time(0), timezone.utc)
    raise P.bad("date", "must be a day like 2026-01-31")


async def _programmes(tx, channel_id: int, since: datetime, until: datetime) -> list[tuple]:
    return await tx.fetchall(
        "SELECT start, stop, title, description FROM epg_programmes"
        " WHERE channel_id = %s AND stop > %s AND start < %s ORDER BY start LIMIT %s",
        (channel_id, since, until, MAX_PROGRAMS))


async def program_list(call: Call) -> dict:
    ch = await _channel(call)
    p = call.params
    if P.flag(p, "is_camera"):
        raise P.bad("is_camera", "cameras are not served")
    lo, hi = 0, P.MAX_EPOCH
    time_from = P.integer(p, "time_from", lo=lo, hi=hi)
    time_to = P.integer(p, "time_to", lo=lo, hi=hi)
    pid_from = P.integer(p, "pid_from", lo=lo, hi=hi)
    date = P.text(p, "date", max_len=10)
    if date:
        since = _day(date)
        until = since + timedelta(days=1)
    else:
        day_start = call.now.replace(hour=0, minute=0, second=0, microsecond=0)
        since = datetime.fromtimestamp(time_from, timezone.utc) if time_from is not None \
            else day_start
        until = datetime.fromtimestamp(time_to, timezone.utc) if time_to is not None \
            else since + timedelta(days=1)
    if pid_from is not None:
        start = datetime.fromtimestamp(pid_from, timezone.utc)
        found = await call.db.run_statement(_programmes, ch["id"], start, start + timedelta(
            seconds=1))
        if not found or found[0][0] != start:
            raise TvmwError(1, "no programme with that pid_from")
        since = start
        until = max(until, start + timedelta(days=1))
    if until <= since:
        raise P.bad("time_to", "must be after time_from")
    watchable = ch["id"] in await account_channel_ids(call)
    rows = await call.db.run_statement(_programmes, ch["id"], since, until)
    return {"programs": [{
        "id": _epoch(start), "begin_time": _epoch(start), "end_time": _epoch(stop),
        "name": title, "short_name": title, "description": desc, "category": "",
        "preview": "", "rating": 0, "url": "", "has_record": 0,
        "has_subscription": 1 if watchable else 0, "position": 0, "blocked": 0,
    } for start, stop, title, desc in rows]}


METHODS = {
    "channel/list": channel_list,
    "channel/list/search": channel_list_search,
    "category/list": category_list,
    "channel/detail": channel_detail,
    "channel/url": channel_url,
    "channel/programs": channel_programs,
    "program/list": program_list,
}
REDIRECTS = {"channel/url": "uri"}
