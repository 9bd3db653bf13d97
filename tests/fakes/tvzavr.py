"""
A fake tvzavr (Klein, in-process) speaking the wire format smartyd/vod/tvzavr.py
documents (ours: tvzavr publishes none), checking ``plf`` and the HMAC ``sign``.
"""

from __future__ import annotations

import json

from klein import Klein

from smartyd.vod.tvzavr import sign


class FakeTvzavr:
    app = Klein()

    def __init__(self, plf: str, secret: str):
        self.plf, self.secret = plf, secret
        self.subs: dict[str, set[int]] = {}
        self.calls: list[tuple] = []
        self.feed = b"<catalog/>"
        self.odd_subscriptions: list[dict] = []  # added to every list answer (null/odd tariffs)

    def resource(self):
        return self.app.resource()

    def _signed(self, request) -> dict | None:
        args = {k.decode(): v[0].decode() for k, v in request.args.items()}
        expected = sign(self.secret, self.plf, args.get("user", ""), args.get("tariff", ""),
                        int(args.get("ts", "0") or 0))
        if args.get("plf") != self.plf or args.get("sign") != expected:
            return None
        return args

    def _json(self, request, payload) -> bytes:
        data = json.dumps(payload).encode()
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"content-length", str(len(data)).encode())
        return data

    @app.route("/catalog")
    def catalog(self, request):
        if self._signed(request) is None:
            request.setResponseCode(403)
            return b""
        request.setHeader(b"content-length", str(len(self.feed)).encode())
        return self.feed

    @app.route("/subscription/<action>", methods=["GET", "POST"])
    def subscription(self, request, action):
        args = self._signed(request)
        if args is None:
            return self._json(request, {"status": "error", "message": "bad sign"})
        user = args.get("user", "")
        if action == "list":
            return self._json(request, {"status": "ok", "subscriptions": [
                *self.odd_subscriptions,
                *({"tariff": t, "expires": 0} for t in sorted(self.subs.get(user, ())))]})
        tariff = int(args.get("tariff", "0"))
        self.calls.append((action, user, tariff))
        if action == "subscribe" or action == "renew":
            self.subs.setdefault(user, set()).add(tariff)
        elif action == "unsubscribe":
            self.subs.get(user, set()).discard(tariff)
        else:
            return self._json(request, {"status": "error", "message": "no such action"})
        return self._json(request, {"status": "ok"})
