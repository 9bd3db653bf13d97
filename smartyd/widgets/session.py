"""
Widget sessions in a signed cookie, and CSRF tokens bound to them.

The cookie is ``<payload>.<mac>``: payload = base64url JSON ``{"sid", "acc",
"exp"}``, mac = HMAC-SHA256 under a key derived from the stream token key
(no second secret to configure), compared in constant time.  ``sid`` is
random per browser and rotated at login (no fixation); ``acc`` is the
cabinet's account once logged in.

A form's CSRF token is HMAC(key, "csrf:" + sid): a page from us carries it,
another site cannot compute it, and without the session cookie no token
verifies.  As an iframe on another site needs it, the cookie is
``SameSite=None; Secure`` when the request came over HTTPS (directly or
through a trusted proxy's ``X-Forwarded-Proto``); over plain HTTP (a
development set-up on one host) it is ``SameSite=Lax``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from typing import Any

from attrs import frozen

from smartyd.http.addresses import in_networks, peer_ip

COOKIE = b"smartyd_widget"
LIFETIME = 12 * 3600


@frozen
class Session:
    sid: str
    account_id: int | None = None
    expires: float = 0.0


def derive_key(token_key: str) -> bytes:
    return hmac.new(token_key.encode("utf-8"), b"smartyd widget sessions", hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@frozen
class Sessions:
    key: bytes
    clock: Any
    trusted_proxies: tuple = ()

    def new(self, account_id: int | None = None) -> Session:
        return Session(secrets.token_urlsafe(16), account_id, self.clock.seconds() + LIFETIME)

    def encode(self, s: Session) -> str:
        payload = _b64(json.dumps({"sid": s.sid, "acc": s.account_id, "exp": int(s.expires)},
                                  separators=(",", ":")).encode())
        return payload + "." + _b64(hmac.new(self.key, payload.encode(), hashlib.sha256).digest())

    def decode(self, value: str | None) -> Session | None:
        if not value or value.count(".") != 1:
            return None
        payload, mac = value.split(".")
        want = _b64(hmac.new(self.key, payload.encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(mac.encode(), want.encode()):
            return None
        try:
            data = json.loads(_unb64(payload))
            s = Session(str(data["sid"]), data["acc"], float(data["exp"]))
        except (ValueError, KeyError, TypeError):
            return None
        if s.account_id is not None and not isinstance(s.account_id, int):
            return None
        return s if s.expires > self.clock.seconds() else None

    def read(self, request) -> Session | None:
        raw = request.getCookie(COOKIE)
        try:
            return self.decode(raw.decode("ascii") if raw else None)
        except UnicodeDecodeError:
            return None

    def secure(self, request) -> bool:
        if request.isSecure():
            return True
        if self.trusted_proxies and in_networks(peer_ip(request), self.trusted_proxies):
            return (request.getHeader(b"x-forwarded-proto") or b"").lower() == b"https"
        return False

    def write(self, request, s: Session) -> None:
        flags = ["Path=/", "HttpOnly", f"Max-Age={LIFETIME}"]
        flags += ["SameSite=None", "Secure"] if self.secure(request) else ["SameSite=Lax"]
        # Request.addCookie cannot say SameSite: the Set-Cookie value is queued as is.
        request.cookies.append(COOKIE + b"=" + self.encode(s).encode("ascii") + b"; "
                               + "; ".join(flags).encode("ascii"))

    def csrf_token(self, s: Session) -> str:
        return _b64(hmac.new(self.key, b"csrf:" + s.sid.encode(), hashlib.sha256).digest())

    def csrf_ok(self, s: Session | None, token: str | None) -> bool:
        if s is None or not token:
            return False
        return hmac.compare_digest(token.encode("utf-8", "replace"),
                                   self.csrf_token(s).encode("ascii"))
