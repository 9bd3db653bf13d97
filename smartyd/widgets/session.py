"""
Widget sessions in a signed cookie -- or, where the browser does not send
the cookie back, in the page itself -- and CSRF tokens bound to them.

The cookie is ``<payload>.<mac>``: payload = base64url JSON ``{"sid", "acc",
"exp", "creds"}``, mac = HMAC-SHA256 under a key derived from the stream token
key (no second secret to configure), compared in constant time.  ``sid`` is
random per browser and rotated at login (no fixation); ``acc`` is the
cabinet's account once logged in, ``creds`` a MAC of its login and password
hash then (L{Sessions.credentials}): a new password or the account's deletion,
by whatever path, ends the session.  A block does not: a blocked or DEBT
account still sees its cabinet, where it learns why and pays.

A form's CSRF token is L{smartyd.http.csrf}'s (HMAC(key, "csrf:" + sid), as
the console's): a page from us carries it, another site cannot compute it,
and without the session no token verifies.  The cookie's flags are
L{smartyd.http.pages.set_cookie}'s.
As an iframe on another site needs it, the cookie is ``SameSite=None;
Secure; Partitioned`` when the request came over HTTPS (directly or through
a trusted proxy's ``X-Forwarded-Proto``): partitioned by the top-level site
(CHIPS), it is kept where third-party cookies are blocked.  Over plain HTTP
(a development set-up on one host) it is ``SameSite=Lax``.

The page session.  Safari, and Chrome in incognito or by a setting, send a
framed widget on another site no cookie at all (over plain HTTP Chromium
never does).  So a page rendered for a request that brought no valid cookie
carries the session in each of its forms, beside the CSRF token: the hidden
field ``session`` = ``<payload>.<mac>``, payload = base64url JSON ``{"sid",
"acc", "exp", "wid", "creds"}``, mac = HMAC(key, "page:" + payload).  It is the
cookie's session and no more:

  - signed under another label than the cookie (neither passes for the
    other) and expiring with the session;
  - bound to one widget (``wid``): refused on every other widget's forms;
  - read only from a POST body (never a query string, so never in a URL,
    a Referer or a log line), and only when no valid cookie came: a cookie
    always wins;
  - the CSRF token must still match its ``sid``;
  - refused when the browser says the form was posted from another site
    (``Sec-Fetch-Site``, else ``Origin``): another site cannot log a
    browser in to its own account by posting its own page session.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from typing import Any
from urllib.parse import parse_qs, urlsplit

from attrs import frozen

from smartyd.http import csrf, pages
from smartyd.http.addresses import secure

COOKIE = b"smartyd_widget"
PAGE_FIELD = "session"
LIFETIME = 12 * 3600


@frozen
class Session:
    sid: str
    account_id: int | None = None
    expires: float = 0.0
    # The widget whose pages carry this session (the cookie did not come back); None: the cookie.
    in_page: int | None = None
    # The logged-in account's credentials when it logged in (L{Sessions.credentials}).
    creds: str = ""


def derive_key(token_key: str) -> bytes:
    """The sessions' key, of its own purpose, from the stream token key (L{csrf.derive_key})."""
    return csrf.derive_key(token_key, b"smartyd widget sessions")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _same_origin_post(request) -> bool:
    """False when the browser says the request came from another site's page."""
    fetch_site = request.getHeader(b"sec-fetch-site")
    if fetch_site is not None:
        return fetch_site.lower() == b"same-origin"
    origin = request.getHeader(b"origin")
    if origin is None:
        return True  # not a browser that names origins: nothing to go by
    try:
        origin_host = urlsplit(origin.decode("ascii")).hostname
        host = urlsplit("//" + (request.getHeader(b"host") or b"").decode("ascii")).hostname
    except (UnicodeDecodeError, ValueError):
        return False
    # Hosts compared, not ports: a proxy's ``Host: $host`` drops the port that Origin keeps.
    return origin_host is not None and origin_host == host


@frozen
class Sessions:
    key: bytes
    clock: Any
    trusted_proxies: tuple = ()

    def new(self, account_id: int | None = None, creds: str = "") -> Session:
        return Session(secrets.token_urlsafe(16), account_id, self.clock.seconds() + LIFETIME,
                       creds=creds)

    def login(self, account: Any) -> Session:
        """A new session (a new sid: no fixation) logged in to ``account`` (L{ledger.Account})."""
        return self.new(account.id, self.credentials(account))

    def credentials(self, account: Any) -> str:
        """
        What a logged-in session holds of its account's login and password
        hash: a MAC of them (neither is in the cookie).  The session ends when
        either changes, by any path -- a new password (the cabinet, the
        device API, the console, the Billing API) or the account's deletion
        (its login freed) -- as the account's TV sessions do (migration 0015).
        """
        text = f"{account.login}\0{account.password_hash}".encode()
        return _b64(hmac.new(self.key, b"account:" + text, hashlib.sha256).digest()[:16])

    def current(self, s: Session | None, account: Any) -> bool:
        """True when ``s`` was logged in to ``account`` with its present credentials."""
        return (s is not None and account is not None and s.account_id == account.id
                and hmac.compare_digest(s.creds.encode(), self.credentials(account).encode()))

    def _sign(self, label: bytes, fields: dict) -> str:
        payload = _b64(json.dumps(fields, separators=(",", ":")).encode())
        return payload + "." + _b64(hmac.new(self.key, label + payload.encode(),
                                             hashlib.sha256).digest())

    def _verify(self, label: bytes, value: str | None) -> dict | None:
        if not value or value.count(".") != 1:
            return None
        payload, mac = value.split(".")
        want = _b64(hmac.new(self.key, label + payload.encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(mac.encode("utf-8", "replace"), want.encode()):
            return None
        try:
            data = json.loads(_unb64(payload))
            if not isinstance(data, dict) or float(data["exp"]) <= self.clock.seconds():
                return None
            acc = data["acc"]
            if acc is not None and (not isinstance(acc, int) or isinstance(acc, bool)):
                return None
            data["sid"] = str(data["sid"])
            data["creds"] = str(data.get("creds", ""))
        except (ValueError, KeyError, TypeError):
            return None
        return data

    def encode(self, s: Session) -> str:
        return self._sign(b"", {"sid": s.sid, "acc": s.account_id, "exp": int(s.expires),
                                "creds": s.creds})

    def decode(self, value: str | None) -> Session | None:
        data = self._verify(b"", value)
        return None if data is None else Session(data["sid"], data["acc"], float(data["exp"]),
                                                 creds=data["creds"])

    def page_token(self, s: Session, widget_id: int) -> str:
        """The session as the pages of widget ``widget_id`` carry it (see the module's doc)."""
        return self._sign(b"page:", {"sid": s.sid, "acc": s.account_id, "exp": int(s.expires),
                                     "wid": widget_id, "creds": s.creds})

    def from_page(self, value: str | None, widget_id: int) -> Session | None:
        data = self._verify(b"page:", value)
        if data is None or data.get("wid") != widget_id or isinstance(data.get("wid"), bool):
            return None
        return Session(data["sid"], data["acc"], float(data["exp"]), in_page=widget_id,
                       creds=data["creds"])

    def read(self, request) -> Session | None:
        return self.decode(pages.cookie(request, COOKIE))

    def read_page(self, request, widget_id: int) -> Session | None:
        """
        The page session a form posted (a POST body's ``session`` field, not
        a query string's), when the browser does not say another site posted it.
        """
        if request.method != b"POST" or not _same_origin_post(request):
            return None
        query = urlsplit(request.uri).query
        if PAGE_FIELD.encode() in parse_qs(query, keep_blank_values=True):
            return None
        raw = (request.args.get(PAGE_FIELD.encode()) or [b""])[0]
        try:
            return self.from_page(raw.decode("ascii"), widget_id)
        except UnicodeDecodeError:
            return None

    def secure(self, request) -> bool:
        return secure(request, self.trusted_proxies)

    def write(self, request, s: Session) -> None:
        secure = self.secure(request)
        pages.set_cookie(request, COOKIE, self.encode(s), same_site="None" if secure else "Lax",
                         secure=secure, partitioned=True, max_age=LIFETIME)

    def csrf_token(self, s: Session) -> str:
        return csrf.token(self.key, s.sid)

    def csrf_ok(self, s: Session | None, token: str | None) -> bool:
        return csrf.valid(self.key, s.sid if s is not None else None, token)
