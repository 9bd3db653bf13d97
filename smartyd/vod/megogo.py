"""
MEGOGO's partner billing: users, SVOD subscriptions, the SSO link.

Wire format (the public clients of ``billing.megogo.net/partners``; where they
say nothing, our reading, kept honest by tests/fakes/megogo.py):

    GET {billing_url}/{partner_id}/user/create?userId=U
    GET {billing_url}/{partner_id}/subscription/subscribe?userId=U&serviceId=S
    GET {billing_url}/{partner_id}/subscription/unsubscribe?userId=U&serviceId=S
    GET {billing_url}/{partner_id}/user/subscriptions?userId=U
        -> JSON {"successful": true|false, "message": "...",
                 "subscriptions": [{"serviceId": S, ...}]}   (the last call only)

TVOD (a title bought by one of the customer's accounts): the public record
shows no partner-billing method for it, so this is OUR assumed shape, behind
the L{smartyd.vod.tvod.TvodPartner} interface and the fake::

    GET {billing_url}/{partner_id}/tvod/grant?userId=U&objectId=X&purchaseId=Z
    GET {billing_url}/{partner_id}/tvod/list?userId=U
        -> JSON {"successful": true, "objects": [{"objectId": X, "purchaseId": Z}]}

``partner_id`` is the string MEGOGO issues (not promised to be a number): in
the path it is one segment, percent-escaped (``quote(partner_id, safe="")``);
in the SSO link and token it is used as it is.

``successful: false`` is a refusal.  One MEGOGO user per customer:
``userId = user_prefix + customer id``.  The SSO link for MEGOGO's own apps
carries ``isdn`` (the userId), ``partner_key`` (partner_id) and
``token = md5(userId + partnerId + salt)``.
"""

from __future__ import annotations

import hashlib
from urllib.parse import quote, urlencode

from attrs import define

from smartyd.config import Megogo as MegogoConfig
from smartyd.partners import PartnerHTTP, PartnerProtocolError, PartnerRefused
from smartyd.util.json_guard import parse_json

PROVIDER = "megogo"
SSO_URL = "https://megogo.net/auth/by_partners/dialog"


def as_id(value: object) -> int | None:
    """
    A partner's numeric id as it may come in JSON: ``555``, ``"555"``,
    ``555.0``; None for anything else (null, ``"premium"``, true).  Our
    service and tariff ids are integers, so an entry without one is not ours
    -- and must not stop the outbox (an ``int()`` that raised did).
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def user_id(cfg: MegogoConfig, customer_id: int) -> str:
    return f"{cfg.user_prefix}{customer_id}"


def sso_token(cfg: MegogoConfig, customer_id: int) -> str:
    """md5(userId + partnerId + salt), hex."""
    raw = f"{user_id(cfg, customer_id)}{cfg.partner_id}{cfg.salt}"
    return hashlib.md5(raw.encode("utf-8")).hexdigest()


# The TV Middleware API's ``device`` (Smarty's device type names, e.g.
# ``android_stb``, ``ios``) -> MEGOGO's device class, whose key pair the app
# gets (L{device_class}).  Checked in this order, on the lower-cased name:
#   stb       "stb" anywhere, or starting with mag, dune, eltex, tvip, amino,
#             kodi, infomir, aura (set-top boxes and media-centre boxes)
#   smart_tv  "tv" anywhere (smarttv, smart_tv, android_tv, apple_tv, appletv,
#             tvos), or starting with samsung, tizen, lg, webos, netcast,
#             philips, sony, hisense, vidaa, panasonic
#   mobile    starting with android, ios, iphone, ipad, mobile, phone, tablet,
#             windows_phone (phones and tablets; plain "android" is a phone,
#             as Smarty names it)
# Anything else (browser, web, web_app, pc): no class, no key.
_STB = ("mag", "dune", "eltex", "tvip", "amino", "kodi", "infomir", "aura")
_SMART_TV = ("samsung", "tizen", "lg", "webos", "netcast", "philips", "sony", "hisense",
             "vidaa", "panasonic")
_MOBILE = ("android", "ios", "iphone", "ipad", "mobile", "phone", "tablet", "windows_phone")
STREAM_URL = "https://api.megogo.net/v1/stream"


def device_class(device: str) -> str | None:
    """``mobile``, ``smart_tv``, ``stb``, or None for a device type of no class (see above)."""
    d = (device or "").strip().lower()
    if not d:
        return None
    if "stb" in d or d.startswith(_STB):
        return "stb"
    if "tv" in d or d.startswith(_SMART_TV):
        return "smart_tv"
    if d.startswith(_MOBILE):
        return "mobile"
    return None


def sign(params: dict[str, str], private_key: str, public_key: str) -> str:
    """
    MEGOGO's request signature as its apps compute it (the public record):
    md5 of the ``name=value`` pairs sorted by name and concatenated, then the
    private key; hex, followed by the public key.
    """
    raw = "".join(f"{k}={params[k]}" for k in sorted(params)) + private_key
    return hashlib.md5(raw.encode("utf-8")).hexdigest() + public_key


def stream_request(external_id: str, keys: tuple[str, str]) -> str:
    """The title's stream request at MEGOGO, signed with a device class's key pair."""
    params = {"video_id": external_id}
    return f"{STREAM_URL}?{urlencode({**params, 'sign': sign(params, *keys)})}"


def sso_link(cfg: MegogoConfig, customer_id: int) -> dict:
    uid = user_id(cfg, customer_id)
    params = {"isdn": uid, "partner_key": cfg.partner_id,
              "token": sso_token(cfg, customer_id)}
    return {**params, "url": f"{SSO_URL}?{urlencode(params)}"}


@define
class MegogoClient:
    cfg: MegogoConfig
    http: PartnerHTTP

    def _url(self, path: str) -> str:
        return f"{self.cfg.billing_url}/{quote(self.cfg.partner_id, safe='')}/{path}"

    async def _get(self, path: str, params: dict) -> dict:
        response = await self.http.request("GET", self._url(path), params=params)
        try:
            body = parse_json(response.body)
        except ValueError:
            body = None
        if not isinstance(body, dict) or "successful" not in body:
            raise PartnerProtocolError(PROVIDER, f"{path}: not a MEGOGO answer")
        if body.get("successful") is not True:
            raise PartnerRefused(PROVIDER, f"{path}: {str(body.get('message', 'refused'))[:200]}")
        return body

    async def create_user(self, uid: str) -> None:
        await self._get("user/create", {"userId": uid})

    async def subscribe(self, uid: str, service_id: int) -> None:
        await self._get("subscription/subscribe", {"userId": uid, "serviceId": str(service_id)})

    async def unsubscribe(self, uid: str, service_id: int) -> None:
        await self._get("subscription/unsubscribe",
                        {"userId": uid, "serviceId": str(service_id)})

    async def grant_title(self, uid: str, object_id: str, purchase_id: str) -> None:
        await self._get("tvod/grant", {"userId": uid, "objectId": object_id,
                                       "purchaseId": purchase_id})

    async def titles(self, uid: str) -> set[tuple[str, str]] | None:
        """(objectId, purchaseId) granted to the user; None when MEGOGO knows no such user."""
        try:
            body = await self._get("tvod/list", {"userId": uid})
        except PartnerRefused:
            return None
        objects = body.get("objects") or []
        if not isinstance(objects, list):
            raise PartnerProtocolError(PROVIDER, "tvod/list: objects not a list")
        return {(str(o.get("objectId")), str(o.get("purchaseId"))) for o in objects
                if isinstance(o, dict)}

    async def subscriptions(self, uid: str) -> set[int] | None:
        """The user's service ids at MEGOGO; None when MEGOGO knows no such user."""
        try:
            body = await self._get("user/subscriptions", {"userId": uid})
        except PartnerRefused:
            return None
        subs = body.get("subscriptions") or []
        if not isinstance(subs, list):
            raise PartnerProtocolError(PROVIDER, "user/subscriptions: subscriptions not a list")
        return {n for n in (as_id(s.get("serviceId")) for s in subs if isinstance(s, dict))
                if n is not None}


@define
class MegogoPartner:
    """The outbox's view of MEGOGO: what a customer should have, sending, checking."""

    cfg: MegogoConfig
    client: MegogoClient
    provider: str = PROVIDER

    def desired(self, customer_id: int, tariffs: list, devices: list) -> dict:
        item = f"service:{self.cfg.svod_service_id}"
        on = any(t in self.cfg.svod_tariffs for _a, t in tariffs)
        return {(user_id(self.cfg, customer_id), item): on}

    def calls(self, user_key: str, item: str, wanted: bool, known: dict) -> list[tuple]:
        """The calls that bring the partner to ``wanted`` (user/create before a first subscribe)."""
        service = int(item.split(":", 1)[1])
        out = []
        if wanted and not known.get("user"):
            out.append(("create", {}, "user"))
        out.append(("subscribe" if wanted else "unsubscribe", {"service_id": service}, None))
        return out

    def tvod_user(self, customer_id: int) -> str:
        return user_id(self.cfg, customer_id)

    def tvod_calls(self, customer_id: int, external_id: str, purchase_id: str,
                   known: dict) -> list[tuple]:
        """The grant of a bought title (``user/create`` first when the user is new)."""
        uid = user_id(self.cfg, customer_id)
        out = []
        if not known.get("user"):
            out.append((uid, "create", {}, "user"))
        out.append((uid, "tvod", {"object_id": external_id, "purchase_id": purchase_id}, None))
        return out

    async def send(self, call) -> None:
        if call.op == "create":
            await self.client.create_user(call.user_key)
        elif call.op == "subscribe":
            await self.client.subscribe(call.user_key, call.args["service_id"])
        elif call.op == "unsubscribe":
            await self.client.unsubscribe(call.user_key, call.args["service_id"])
        elif call.op == "tvod":
            await self.client.grant_title(call.user_key, call.args["object_id"],
                                          call.args["purchase_id"])
        else:
            raise PartnerRefused(PROVIDER, f"unknown op {call.op}")

    async def in_effect(self, call) -> bool:
        if call.op == "tvod":
            granted = await self.client.titles(call.user_key)
            return granted is not None and (
                (call.args["object_id"], call.args["purchase_id"]) in granted)
        subs = await self.client.subscriptions(call.user_key)
        if call.op == "create":
            return subs is not None
        if subs is None:
            return call.op == "unsubscribe"
        return (call.args["service_id"] in subs) == (call.op == "subscribe")
