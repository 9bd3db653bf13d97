"""
tvzavr: catalog feed and SVOD.  tvzavr publishes no partner API, so this is
OUR assumed wire format, behind L{TvzavrPartner} (the interface the outbox
uses) and kept honest by tests/fakes/tvzavr.py.  Replace the client, not the
outbox, when the real contract is known.

Every request carries ``plf`` (our platform id at tvzavr), ``ts`` (unix
seconds) and ``sign = hex(HMAC-SHA256(secret, "plf|user|tariff|ts"))``
(``user`` and ``tariff`` empty where a request has none):

    GET  {api_url}/catalog?plf&ts&sign                 -> the XML feed (L{smartyd.vod.feeds})
    POST {api_url}/subscription/subscribe   plf, user, tariff, ts, sign   (form)
    POST {api_url}/subscription/unsubscribe plf, user, tariff, ts, sign
    POST {api_url}/subscription/renew       plf, user, tariff, ts, sign   (check_accounts)
    GET  {api_url}/subscription/list?plf&user&ts&sign
        -> JSON {"status": "ok" | "error", "message": "...",
                 "subscriptions": [{"tariff": N, "expires": unix seconds}]}

``user`` is our customer id; ``tariff`` is ``[tvzavr] tvzavr_tariff_id``.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from attrs import define

from smartyd.config import Tvzavr as TvzavrConfig
from smartyd.partners import PartnerHTTP, PartnerProtocolError, PartnerRefused
from smartyd.util.json_guard import parse_json
from smartyd.vod.megogo import as_id

PROVIDER = "tvzavr"


def sign(secret: str, plf: str, user: str, tariff: str, ts: int) -> str:
    msg = f"{plf}|{user}|{tariff}|{ts}".encode("utf-8")
    return hmac.new(secret.encode("utf-8"), msg, hashlib.sha256).hexdigest()


@define
class TvzavrClient:
    cfg: TvzavrConfig
    http: PartnerHTTP
    clock: Any

    def _params(self, user: str = "", tariff: str = "") -> dict:
        ts = int(self.clock.seconds())
        params = {"plf": self.cfg.plf, "ts": str(ts),
                  "sign": sign(self.cfg.secret, self.cfg.plf, user, tariff, ts)}
        if user:
            params["user"] = user
        if tariff:
            params["tariff"] = tariff
        return params

    async def catalog(self, on_chunk) -> None:
        """The XML feed, streamed into ``on_chunk`` (L{PartnerHTTP.stream})."""
        await self.http.stream("GET", f"{self.cfg.api_url}/catalog", on_chunk,
                               params=self._params(), timeout=600)

    async def _json(self, method: str, path: str, params: dict) -> dict:
        kw = {"params": params} if method == "GET" else {"data": params}
        response = await self.http.request(method, f"{self.cfg.api_url}/{path}", **kw)
        try:
            body = parse_json(response.body)
        except ValueError:
            body = None
        if not isinstance(body, dict) or body.get("status") not in ("ok", "error"):
            raise PartnerProtocolError(PROVIDER, f"{path}: not a tvzavr answer")
        if body["status"] != "ok":
            raise PartnerRefused(PROVIDER, f"{path}: {str(body.get('message', ''))[:200]}")
        return body

    async def action(self, op: str, user: str, tariff: int) -> None:
        await self._json("POST", f"subscription/{op}", self._params(user, str(tariff)))

    async def subscriptions(self, user: str) -> set[int]:
        body = await self._json("GET", "subscription/list", self._params(user))
        subs = body.get("subscriptions") or []
        if not isinstance(subs, list):
            raise PartnerProtocolError(PROVIDER, "subscription/list: subscriptions not a list")
        return {n for n in (as_id(s.get("tariff")) for s in subs if isinstance(s, dict))
                if n is not None}


@define
class TvzavrPartner:
    cfg: TvzavrConfig
    client: TvzavrClient
    provider: str = PROVIDER

    def desired(self, customer_id: int, tariffs: list, devices: list) -> dict:
        on = any(t == self.cfg.subscription_tariff_id for _a, t in tariffs)
        return {(str(customer_id), f"tariff:{self.cfg.tvzavr_tariff_id}"): on}

    def calls(self, user_key: str, item: str, wanted: bool, known: dict) -> list[tuple]:
        tariff = int(item.split(":", 1)[1])
        return [("subscribe" if wanted else "unsubscribe", {"tariff": tariff}, None)]

    async def send(self, call) -> None:
        if call.op not in ("subscribe", "unsubscribe", "renew"):
            raise PartnerRefused(PROVIDER, f"unknown op {call.op}")
        await self.client.action(call.op, call.user_key, call.args["tariff"])

    async def in_effect(self, call) -> bool:
        if call.op == "renew":
            return False  # a renewal's effect cannot be told apart: renewing twice is harmless
        subs = await self.client.subscriptions(call.user_key)
        return (call.args["tariff"] in subs) == (call.op == "subscribe")
