"""
CSRF tokens bound to a session: HMAC-SHA256(key, "csrf:" + session id),
base64url.  A page from us carries the token; another site cannot compute it
without the key, and without the session (its cookie) no token verifies.
Compared in constant time.  The one CSRF token of every surface: the
console's (bound to its server-side session) and the widgets'
(L{smartyd.widgets.session.Sessions}, bound to the signed session's id).
"""

from __future__ import annotations

import base64
import hashlib
import hmac


def derive_key(secret: str, purpose: bytes) -> bytes:
    """A key of its own for ``purpose`` from a configured secret (no second one to set)."""
    return hmac.new(secret.encode("utf-8"), purpose, hashlib.sha256).digest()


def token(key: bytes, session_id: str) -> str:
    mac = hmac.new(key, b"csrf:" + session_id.encode("utf-8"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def valid(key: bytes, session_id: str | None, given: str | None) -> bool:
    if not session_id or not given:
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"),
                               token(key, session_id).encode("ascii"))
