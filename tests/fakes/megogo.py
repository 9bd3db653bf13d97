"""
A fake MEGOGO partner billing (Klein, in-process), the wire format of
smartyd/vod/megogo.py: GET /<partner_id>/user/create|user/subscriptions and
/<partner_id>/subscription/subscribe|unsubscribe, /<partner_id>/tvod/grant|list
(TVOD, our assumed shape), answering JSON ``{"successful": ...}``; and the ``all_mgg.xml`` feed at /all_mgg.xml.

The partner id is the first path segment as sent, percent-escaped: the fake
reads the raw request path (``paths`` lists every one) and knows its partner
only by the escaped segment (``quote(partner_id, safe="")``).

Knobs: ``down`` (every call answers 503), ``apply_then_fail`` (the next
subscribe/unsubscribe takes effect, then the answer is a 502: the caller
cannot tell it from a call that never happened);
``odd_subscriptions`` (entries added to every user/subscriptions answer: a null, a
non-numeric or a missing serviceId, as JSON from a partner may carry);
``calls`` lists (path, userId, serviceId or objectId) of every state-changing
call applied; ``titles`` maps a user to the (objectId, purchaseId) granted.
"""

from __future__ import annotations

import json
from urllib.parse import quote

from klein import Klein


def _json(request, payload) -> bytes:
    data = json.dumps(payload).encode()
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"content-length", str(len(data)).encode())
    return data


class FakeMegogo:
    app = Klein()

    def __init__(self, partner_id: str | int = "7"):
        self.partner_id = str(partner_id)
        self.paths: list[str] = []
        self.users: dict[str, set[int]] = {}
        self.titles: dict[str, set[tuple[str, str]]] = {}
        self.calls: list[tuple] = []
        self.down = False
        self.apply_then_fail = 0
        self.odd_subscriptions: list[dict] = []
        self.feed = b"<objects/>"

    def resource(self):
        return self.app.resource()

    @app.route("/all_mgg.xml")
    def all_mgg(self, request):
        request.setHeader(b"content-length", str(len(self.feed)).encode())
        return self.feed

    @app.route("/<path:_rest>")
    def api(self, request, _rest):
        # request.path is the path as sent (Klein's arguments come unescaped).
        raw = request.path.decode("ascii")
        self.paths.append(raw)
        segments = raw.split("/")
        if len(segments) != 4:
            request.setResponseCode(404)
            return _json(request, {"successful": False, "message": "no such method"})
        _, pid, group, action = segments
        if self.down:
            request.setResponseCode(503)
            return _json(request, {"successful": False, "message": "maintenance"})
        if pid != quote(self.partner_id, safe=""):
            return _json(request, {"successful": False, "message": "unknown partner"})
        arg = lambda k: (request.args.get(k.encode()) or [b""])[0].decode()  # noqa: E731
        uid = arg("userId")
        if not uid:
            return _json(request, {"successful": False, "message": "userId required"})
        path = f"{group}/{action}"
        if path == "user/create":
            self.users.setdefault(uid, set())
            self.calls.append((path, uid, None))
            return _json(request, {"successful": True})
        if path == "user/subscriptions":
            if uid not in self.users:
                return _json(request, {"successful": False, "message": "user not found"})
            return _json(request, {"successful": True, "subscriptions": [
                *self.odd_subscriptions, *({"serviceId": s} for s in sorted(self.users[uid]))]})
        if path in ("subscription/subscribe", "subscription/unsubscribe"):
            if uid not in self.users:
                return _json(request, {"successful": False, "message": "user not found"})
            service = int(arg("serviceId") or 0)
            if action == "subscribe":
                self.users[uid].add(service)
            else:
                self.users[uid].discard(service)
            self.calls.append((path, uid, service))
            if self.apply_then_fail:
                self.apply_then_fail -= 1
                request.setResponseCode(502)
                return _json(request, {"successful": False, "message": "bad gateway"})
            return _json(request, {"successful": True})
        if path == "tvod/list":
            if uid not in self.users:
                return _json(request, {"successful": False, "message": "user not found"})
            return _json(request, {"successful": True, "objects": [
                {"objectId": o, "purchaseId": p} for o, p in sorted(self.titles.get(uid, ()))]})
        if path == "tvod/grant":
            object_id, purchase_id = arg("objectId"), arg("purchaseId")
            if uid not in self.users or not object_id or not purchase_id:
                return _json(request, {"successful": False, "message": "bad grant"})
            self.titles.setdefault(uid, set()).add((object_id, purchase_id))
            self.calls.append((path, uid, object_id))
            return _json(request, {"successful": True})
        request.setResponseCode(404)
        return _json(request, {"successful": False, "message": "no such method"})
