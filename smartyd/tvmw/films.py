"""
The spec's film methods over the synced MEGOGO/tvzavr catalogs
(L{smartyd.vod}): VideoList, VideoDetail, GenreList, VideoUrl, VideoAction.

What an account sees (L{smartyd.tvmw.content_repo}): titles not hidden, of an
enabled cinema, linked to one of the account's active tariffs (the cinema's
``catalog_tariff_id``) or bought by the account.  A title not seen is "no
such video" for every method.  Ids are ours (``vod_titles.id``); genres are
ours (``vod_genres``, the operator's map of the partners' genres applied).

Choices where the spec is silent (kept; the tests hold them):

- Providers: ``provider`` is the cinema's name (``megogo``, ``tvzavr``),
  ``provider_id`` / ``video_provider_id`` its number here (L{PROVIDERS});
  an unknown one is the spec's 1 ("provider not found").  Every title is of
  an external provider (``video_source`` 2); none is a package, a season or
  an announcement, none has an age rating, views, favourites or customers'
  ratings: those fields are 0 and the filters that ask for them match
  nothing (``package``/``season``/``announcement``/``premiere``/
  ``viewed_only``/``favorited_only``/``is_viewing`` = 1, ``aid``, ``cgid``,
  ``source_internal``/``source_epg`` = 1 without ``source_external`` = 1,
  ``source_external`` = 0).  GenreList has no genre-categories
  (``categories`` = 1, ``category_id``: none).
- VideoList: ``limit`` 0-100 (default 20), ``page`` from 1; ``gid`` and
  ``genre`` (several, comma-separated: any of them); ``search`` a substring
  of the name or the original name (case-insensitive); ``year`` and
  ``country`` several, comma-separated; ``tariff``; ``get_purchased`` = 1
  only the account's purchases; ``new`` = 1 titles added in the last
  L{NEW_DAYS} days.  ``order``: ``created_at``, ``updated_at``, ``year``,
  ``name``, ``kinopoisk_rating``, ``imdb_rating``, ``-`` for descending
  (default ``-created_at``); the others need data not kept here and are
  refused.  A bad parameter is 1 with ``error_messages``.
- ``files``: a title is one asset here, its ``id`` the title's.
- ``has_subscription``: an SVOD title and one of the cinema's SVOD tariffs
  active for the account (MEGOGO ``tariff_id``/``additional_tariffs_ids``,
  tvzavr ``subscription_tariff_id``); ``is_purchased``: bought by this
  account; ``price_category_type`` 0 (subscription) for an SVOD title, 1
  (purchase) for a title sold only individually.
- VideoDetail ``actions``: ``get_video_url`` when the account may watch
  (subscription or purchase), ``buy`` (TVOD, ``price`` the title's) when it
  is sold individually and not bought.  VideoAction takes ``buy`` only
  (``get_video_url`` is VideoUrl's).
- VideoAction ``buy``: L{smartyd.vod.tvod} (customer row locked, the price
  debited through the ledger, the grant through the partner outbox, all in
  one transaction) with the purchase id ``tvmw``: one purchase per account
  and title however often, or concurrently, it is asked (3 after the first);
  too little money is 2, nothing written; a title not sold individually or
  a cinema not enabled is 1.  ``external_api_goods_id``, when given, must be
  the title's ``ext_id`` (1 otherwise).
- VideoUrl: 1 for no such title or asset (``vfid`` other than the title's
  id), 3 when the account may not watch it (neither subscription nor
  purchase, or the account is in DEBT: a debtor keeps its session, L{auth},
  and watches nothing, bought titles included, until it pays).  A MEGOGO
  title answers what a MEGOGO-enabled app needs to play it through MEGOGO:
  ``ext_id`` (the title's MEGOGO id), ``ext_partner_id``
  (``[megogo] partner_id``), ``ext_auth_token`` (the SSO token,
  L{smartyd.vod.megogo.sso_token}) and, for the device class of the call's
  ``device`` (L{smartyd.vod.megogo.device_class}; the session's device type
  when the call names none) whose key pair ``[megogo]`` has, ``ext_apikey``
  = its public key and ``uri`` = MEGOGO's stream request for the title signed
  with the pair (L{smartyd.vod.megogo.stream_request}); without a pair
  ``uri`` is empty and there is no ``ext_apikey``.  ``redirect`` defaults to
  1 (the spec): the web layer then answers a redirect to ``uri``, so an app
  that reads the ``ext_*`` fields asks ``redirect=0``.  tvzavr gives devices no
  stream address through us: 2.  ``stream_service_id`` is 0 (no streamer of
  ours serves films).
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

from twisted.logger import Logger

from smartyd.tvmw import content_repo as repo
from smartyd.tvmw.call import Call
from smartyd.tvmw.errors import TvmwError
from smartyd.tvmw import params as P
from smartyd.vod import megogo
from smartyd.vod.catalog_sync import VodError
from smartyd.vod.tvod import InsufficientFunds

log = Logger()

PROVIDERS = {1: "megogo", 2: "tvzavr"}
PROVIDER_IDS = {v: k for k, v in PROVIDERS.items()}
NEW_DAYS = 30
PURCHASE_ID = "tvmw"
MAX_SEARCH = 128


def _session(call: Call):
    if call.session is None:  # the web layer answers sessionless calls before this
        raise TvmwError(-1, "authorization required")
    return call.session


def _enabled(call: Call) -> list[str]:
    return [p for p in ("megogo", "tvzavr") if getattr(call.cfg, p).enabled]


def _svod_tariffs(call: Call, provider: str) -> set[int]:
    if provider == "megogo":
        return set(call.cfg.megogo.svod_tariffs)
    t = call.cfg.tvzavr.subscription_tariff_id
    return {t} if t else set()


def _providers(call: Call, code: int) -> list[str]:
    """The enabled cinemas that ``provider``, ``provider_id``, ``video_provider_id`` keep."""
    enabled = _enabled(call)
    wanted = None
    name = P.text(call.params, "provider", max_len=64, code=code)
    if name:
        if name.lower() not in PROVIDER_IDS:
            raise TvmwError(code, f"no provider {name!r}")
        wanted = {name.lower()}
    for key in ("provider_id", "video_provider_id"):
        pid = P.integer(call.params, key, code=code)
        if pid is not None:
            if pid not in PROVIDERS:
                raise TvmwError(code, f"no provider {pid}")
            wanted = {PROVIDERS[pid]} if wanted is None else wanted & {PROVIDERS[pid]}
    return [p for p in enabled if wanted is None or p in wanted]


async def _base_filter(call: Call, code: int) -> dict:
    s = _session(call)
    providers = _providers(call, code)
    tariffs = await call.db.run(repo.active_tariff_ids, s.customer_id, s.account_id)
    return {"account": s.account_id, "providers": providers, "tariffs": sorted(tariffs)}


def _nothing_matches(call: Call, code: int) -> bool:
    """True when a filter asks for something no title here has (see the module docstring)."""
    p = call.params
    for name in ("package", "season", "announcement", "premiere", "viewed_only",
                 "favorited_only", "is_viewing"):
        if P.flag(p, name, code=code):
            return True
    if P.integer(p, "aid", code=code) is not None or P.integer(p, "cgid", code=code) is not None:
        return True
    external = P.flag(p, "source_external", default=-1, code=code)
    if external == 0:
        return True
    internal = P.flag(p, "source_internal", code=code) or P.flag(p, "source_epg", code=code)
    return bool(internal) and external != 1


def _rating(info: dict, key: str) -> float:
    v = (info.get("ratings") or {}).get(key)
    try:
        return float(Decimal(str(v))) if v not in (None, "") else 0.0
    except ArithmeticError:
        return 0.0


def _watchable(call: Call, t: dict, active: set[int]) -> tuple[bool, bool]:
    """``(has_subscription, may_watch)`` of a title for the account."""
    subscribed = bool(t["svod"]) and bool(_svod_tariffs(call, t["provider"]) & active)
    free = not t["svod"] and not t["tvod"]
    return subscribed, subscribed or t["purchased"] or free


def _video(call: Call, t: dict, active: set[int]) -> dict:
    info = t["info"] or {}
    gallery = info.get("gallery") or []
    subscribed, _ = _watchable(call, t, active)
    poster = t["poster_url"] or ""
    minutes = (t["duration_sec"] or 0) // 60
    return {
        "id": t["id"],
        "name": t["name"],
        "name_orig": t["name_en"] or "",
        "thumbnail_small": poster,
        "thumbnail_big": poster,
        "screenshot_big": gallery[0] if gallery else "",
        "screenshot_b_big": "",
        "ad_banner": "",
        "description": t["story"] or "",
        "year": t["year"] or 0,
        "video_provider_id": PROVIDER_IDS[t["provider"]],
        "actors": ", ".join(info.get("actors") or []),
        "director": ", ".join(info.get("directors") or []),
        "genres": ", ".join(t["genres"] or []),
        "countries": t["country"] or "",
        "genres_kinopoisk": "",
        "is_favorited": 0,
        "is_viewed": 0,
        "is_parent_control": 0,
        "is_package": 0,
        "is_season": 0,
        "is_announcement": 0,
        "has_subscription": 1 if subscribed else 0,
        "rating": 0,
        "kinopoisk_rating": _rating(info, "kinopoisk"),
        "imdb_rating": _rating(info, "imdb"),
        "average_customers_rating": 0,
        "duration": minutes,
        "files": [{"id": t["id"], "promo_image": poster, "name": t["name"],
                   "duration": t["duration_sec"] or 0, "ext_id": t["external_id"],
                   "quality": 0}],
        "provider": t["provider"],
        "language": "",
        "is_purchased": 1 if t["purchased"] else 0,
        "video_source": 2,
        "price_category_type": 0 if t["svod"] else (1 if t["tvod"] else 2),
    }


# -- VideoList, VideoDetail, GenreList --------------------------------------------------------
def _order(call: Call) -> tuple[str, bool]:
    v = P.text(call.params, "order", max_len=64)
    if not v:
        return "created_at", True
    descending = v.startswith("-")
    name = v[1:] if descending else v
    if name not in repo.ORDERS:
        raise P.bad("order", f"must be one of {', '.join(sorted(repo.ORDERS))}"
                             " (- before it for descending)")
    return name, descending


def _list(call: Call, name: str, max_len: int = 64) -> tuple[str, ...]:
    v = P.text(call.params, name, max_len=1024)
    parts = tuple(dict.fromkeys(p.strip() for p in v.split(",") if p.strip()))
    if len(parts) > 100 or any(len(p) > max_len for p in parts):
        raise P.bad(name, f"must be up to 100 values of at most {max_len} characters")
    return parts


async def video_list(call: Call) -> dict:
    limit, offset = P.paging(call.params)
    order, descending = _order(call)
    f = await _base_filter(call, 1)
    gid = P.integer(call.params, "gid")
    f.update(
        genres=P.integer_list(call.params, "genre") + ((gid,) if gid is not None else ()),
        search=P.text(call.params, "search", max_len=MAX_SEARCH),
        years=P.integer_list(call.params, "year"),
        countries=_list(call, "country"), tariff=P.integer(call.params, "tariff"),
        purchased=bool(P.flag(call.params, "get_purchased")),
        since=call.now - timedelta(days=NEW_DAYS) if P.flag(call.params, "new") else None,
    )
    if _nothing_matches(call, 1) or not f["providers"]:
        return {"videos": [], "count": 0}
    count, rows = await call.db.run(repo.titles, f, order, descending, limit, offset)
    active = set(f["tariffs"])
    return {"videos": [_video(call, t, active) for t in rows], "count": count}


async def _title(call: Call, code: int) -> tuple[dict, dict]:
    """``(title, filter)`` of the call's ``vid``, seen by the account; ``code`` when not."""
    vid = P.required_integer(call.params, "vid", code=code)
    f = await _base_filter(call, code)
    t = await call.db.run(repo.title, f, vid) if f["providers"] else None
    if t is None:
        raise TvmwError(code, f"no video {vid}")
    return t, f


async def video_detail(call: Call) -> dict:
    t, f = await _title(call, 1)
    active = set(f["tariffs"])
    out = _video(call, t, active)
    _, may_watch = _watchable(call, t, active)
    actions = []
    if may_watch:
        actions.append({"action": "get_video_url", "caption": t["name"], "price": 0.0,
                        "video_id": str(t["id"]), "file_id": str(t["id"]),
                        "ext_id": t["external_id"]})
    if t["tvod"] and t["price"] is not None and not t["purchased"]:
        actions.append({"action": "buy", "caption": t["name"], "price": float(t["price"]),
                        "video_id": str(t["id"]), "ext_id": t["external_id"]})
    for name in ("files", "is_purchased", "price_category_type", "has_subscription",
                 "is_viewed"):
        out.pop(name)
    out.update(actions=actions, package_videos=[], actors_info=[], reviews=[], seasons=[],
               ext_id=t["external_id"], position=0, ads_available=0,
               position_asset_id=0, position_season_id=0, customer_rating=0)
    return out


async def genre_list(call: Call) -> dict:
    f = await _base_filter(call, 1)
    categories = P.flag(call.params, "categories")
    category = P.integer(call.params, "category_id")
    if categories or category is not None or not f["providers"]:
        return {"genres": []}
    rows = await call.db.run(repo.genre_counts, f)
    return {"genres": [{"id": g["id"], "name": g["name"], "is_category": 0,
                        "count": g["count"], "subgenres_count": g["subgenres_count"]}
                       for g in rows]}


# -- VideoUrl, VideoAction ---------------------------------------------------------------------
async def video_url(call: Call) -> dict:
    t, f = await _title(call, 1)
    vfid = P.integer(call.params, "vfid")
    if vfid is not None and vfid != t["id"]:
        raise TvmwError(1, f"no asset {vfid} of video {t['id']}")
    _, may_watch = _watchable(call, t, set(f["tariffs"]))
    if not may_watch:
        raise TvmwError(3, "neither a subscription nor a purchase gives access to this video")
    if not await call.db.run_statement(repo.account_active, call.session.account_id):
        raise TvmwError(3, "the account is inactive (in DEBT): it watches nothing until it pays")
    if t["provider"] != "megogo":
        raise TvmwError(2, f"{t['provider']} gives no stream address to devices")
    cfg = call.cfg.megogo
    s = _session(call)
    out: dict[str, Any] = {
        "uri": "", "stream_service_id": 0,
        "ext_id": t["external_id"], "ext_partner_id": str(cfg.partner_id),
        "ext_auth_token": megogo.sso_token(cfg, s.customer_id),
    }
    device = P.text(call.params, "device", max_len=64) or s.device
    kind = megogo.device_class(device)
    keys = cfg.device_keys(kind) if kind else None
    if keys is not None:
        out["ext_apikey"] = keys[1]
        out["uri"] = megogo.stream_request(t["external_id"], keys)
    return out


async def video_action(call: Call) -> dict:
    s = _session(call)
    action = P.text(call.params, "action", max_len=64)
    if not action:
        raise P.bad("action", "is required")
    t, _f = await _title(call, 1)
    goods = P.text(call.params, "external_api_goods_id", max_len=64)
    if goods and goods != t["external_id"]:
        raise P.bad("external_api_goods_id", "must be this video's ext_id")
    if action != "buy":
        raise P.bad("action", "must be buy, the one action here (VideoUrl gives the stream)")
    vod = call.deps.get("vod")
    if vod is None or vod.tvod is None:
        raise TvmwError(1, "no online cinema is enabled")
    if t["purchased"]:
        raise TvmwError(3, "bought already")
    try:
        purchase, created = await vod.tvod.buy(t["provider"], s.account_id, t["external_id"],
                                               PURCHASE_ID)
    except InsufficientFunds:
        raise TvmwError(2, "the balance does not cover the price")
    except VodError as e:
        raise TvmwError(1, str(e))
    if not created:
        raise TvmwError(3, "bought already")
    log.info("tvmw: account {account} bought {provider} title {title} for {amount}",
             account=s.account_id, provider=t["provider"], title=t["external_id"],
             amount=purchase.amount)
    return {"result": "ok"}


#: VideoUrl's ``redirect`` (the spec's default 1) answers a redirect to ``uri``.
REDIRECTS = {"video/url": "uri"}

METHODS = {
    "video/list": video_list,
    "video/detail": video_detail,
    "genre/list": genre_list,
    "video/url": video_url,
    "video/action": video_action,
}
