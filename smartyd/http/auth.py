"""
Authentication shared by endpoints: HTTP Basic for terminals, and an
abonement's login + password for the portal and set-top boxes.

Both take the same time whatever the answer: Basic credentials are compared
as digests with ``hmac.compare_digest`` (so neither length nor content leaks),
and a login that does not exist (or has no password) is verified against a
dummy scrypt hash, so "no such login" costs what "wrong password" does.
scrypt runs in a thread, never on the reactor.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Callable

from twisted.internet.threads import deferToThread
from twisted.web.server import Request

from smartyd import ledger

# A valid scrypt hash of a random password nobody knows.
DUMMY_HASH = (
    "scrypt$16384$8$1$VzwVKsqlrv69tCflfAw9NQ==$QCT2B1uyw2/3m/dNF6wPsHpifRsWCiZbaBZnSbXLOZk="
)


def _digest(value: bytes | None) -> bytes:
    return hashlib.sha256(value or b"").digest()


class BasicAuth:
    """HTTP Basic credentials to check requests against; empty username = no auth."""

    def __init__(self, username: str, password: str):
        self._expected = (
            (_digest(username.encode("utf-8")), _digest(password.encode("utf-8")))
            if username else None
        )

    @property
    def required(self) -> bool:
        return self._expected is not None

    def authorized(self, request: Request) -> bool:
        if self._expected is None:
            return True
        user_ok = hmac.compare_digest(_digest(request.getUser()), self._expected[0])
        password_ok = hmac.compare_digest(_digest(request.getPassword()), self._expected[1])
        return user_ok & password_ok


async def password_login(db: Any, login: str, password: str,
                         verify: Callable[[str, str], bool] = ledger.verify_password
                         ) -> ledger.Account | None:
    """The account whose login and password these are, or None (in constant time)."""
    account = await db.run(ledger.find_account_by_login, login)
    stored = account.password_hash if account is not None else ""
    ok = await deferToThread(verify, password, stored or DUMMY_HASH)
    return account if ok and stored else None
