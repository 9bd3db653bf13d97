"""
Authorization and the account's status: ``Login``, ``Logout``, ``AccountStatus``.

Login (the spec's error codes):

- ``client_id`` + ``api_key`` must name a ``[tvmw] clients`` entry (the key
  compared in constant time) -- else 4;
- ``abonement`` + ``password`` (scrypt in a thread; an unknown abonement costs
  the same as a wrong password), or, with ``[tvmw] login_by_device``, a
  ``device_uid`` alone that is bound to an account -- else 1 ("not found"),
  which a failure gets after the rate limit's growing delay (L{ratelimit}); a client
  without ``shared`` finds only the accounts of its own customers;
- the account inactive (blocked, deleted, any ``status_reason`` but DEBT) --
  2, with its ``status_reason``.  An account in DEBT (deactivated for lack of
  money) logs in (0, ``status_reason`` DEBT), as Smarty answers a debtor and
  operators' apps expect (tvcom_iOS shows its debt banner on it): its
  session shows the debt and lets it pay and subscribe, it watches nothing
  until the DEBT is lifted (the entitlement snapshot holds it inactive), and
  the billing's DEBT does not end its sessions (migration 0022);
- no tariff assigned to the account or its customer -- 8;
- the ``device_uid`` bound to another account -- 6;
- the account's devices in session at their limit (the account's
  ``max_devices``, else the largest ``devices_count`` of its tariffs, none if
  one of them has none) -- 5.  The device logging in does not count against
  itself: its earlier sessions on the account end with this login.

A device_uid that logs in is bound to the account (``devices``).  A device
that sends none gets a random one (``gen-…``, answered as ``device_uid`` and
set in the ``device_uid`` cookie, which a later Login reads when the query
has none, so an app that never sends one keeps one device slot); it is not
bound.  Checks and writes are one transaction under the
account's row lock, so two devices racing for the last slot cannot both win.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

from smartyd import ledger
from smartyd.http.auth import password_login
from smartyd.streams.web import account_by_device
from smartyd.tvmw import params as P
from smartyd.tvmw.call import Call
from smartyd.tvmw.errors import TvmwError
from smartyd.tvmw.ratelimit import held
from smartyd.tvmw.sessions import Live, insert_session, key_hash, new_authkey, devices_in_session

#: The billing's one currency (amounts everywhere are roubles).
CURRENCY = "RUB"
NOT_FOUND = 1
INACTIVE = 2
BAD_CLIENT = 4
TOO_MANY_DEVICES = 5
DEVICE_TAKEN = 6
NO_TARIFF = 8
#: The prefix of the device_uid given to a device that sends none (not bound).
GENERATED = "gen-"

_DEVICE_LIMIT_SQL = """
SELECT coalesce(a.max_devices,
                CASE WHEN bool_or(t.id IS NOT NULL AND t.devices_count IS NULL) THEN NULL
                     ELSE max(t.devices_count) END)
  FROM accounts a
  LEFT JOIN subscriptions s
    ON s.customer_id = a.customer_id AND (s.account_id IS NULL OR s.account_id = a.id)
   AND s.state = 'active'
  LEFT JOIN tariffs t ON t.id = s.tariff_id
 WHERE a.id = %s
 GROUP BY a.id
"""


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8")).digest()


def find_client(clients: tuple, client_id: str, api_key: str) -> Any:
    """The ``[tvmw] clients`` entry these credentials name, or None (constant time in the key)."""
    for client in clients:
        if client.client_id == client_id:
            if hmac.compare_digest(_digest(api_key), _digest(client.api_key)):
                return client
            return None
    hmac.compare_digest(_digest(api_key), _digest(""))
    return None


async def open_session(tx, account_id: int, client, device_uid: str, bind: bool, device: str,
                       model: str, serial: str, ip: str, authkey: str, now: float,
                       ttl: float) -> dict:
    """Every check after the credentials, and the session: one transaction."""
    row = await tx.fetchdict(
        "SELECT a.id, a.customer_id, a.login, a.active, a.status_reason, a.deleted_at,"
        " c.firstname, c.lastname, c.ext_id, c.contract_number, c.client_id"
        " FROM accounts a JOIN customers c ON c.id = a.customer_id"
        " WHERE a.id = %s FOR UPDATE OF a", (account_id,))
    if row is None or row["deleted_at"] is not None or (
            not client.shared and row["client_id"] != client.client_id):
        return {"refused": NOT_FOUND}
    if not row["active"] and row["status_reason"] != ledger.DEBT:
        return {"refused": INACTIVE, "status_reason": row["status_reason"]}
    if not await tx.fetchval(
            "SELECT 1 FROM subscriptions WHERE customer_id = %s"
            " AND (account_id IS NULL OR account_id = %s) LIMIT 1",
            (row["customer_id"], account_id)):
        return {"refused": NO_TARIFF}
    if bind:
        owner = await tx.fetchval("SELECT account_id FROM devices WHERE uid = %s", (device_uid,))
        if owner is not None and owner != account_id:
            return {"refused": DEVICE_TAKEN}
    limit = await tx.fetchval(_DEVICE_LIMIT_SQL, (account_id,))
    if limit is not None:
        if await devices_in_session(tx, account_id, now - ttl, device_uid) >= limit:
            return {"refused": TOO_MANY_DEVICES, "limit": limit}
    if bind:
        await tx.execute(
            "INSERT INTO devices (uid, account_id, model, serial, system_name)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (uid) DO NOTHING",
            (device_uid, account_id, model or None, serial or None, device))
    await insert_session(tx, key_hash(authkey), account_id, client.client_id, device_uid,
                         device, ip, now)
    return row


def _bad_credentials(limiter, keys, now: float, metrics) -> TvmwError:
    """Count a failed login (the rate limit's delay grows) and say "not found"."""
    limiter.failed(keys, now)
    metrics.tvmw_login_failures.labels("bad_credentials").inc()
    return TvmwError(NOT_FOUND, "account not found")


async def login(call: Call) -> dict:
    p = call.params
    cfg = call.cfg.tvmw
    metrics = call.metrics
    limiter = call.deps["limiter"]
    client = find_client(cfg.clients, P.text(p, "client_id", max_len=64),
                         P.text(p, "api_key", max_len=256))
    if client is None:
        # Counted against the address (api_key guessing is slowed like passwords).
        keys = limiter.keys(call.ip, None)
        if await held(call, keys):
            limiter.failed(keys, call.reactor.seconds())
            metrics.tvmw_login_failures.labels("bad_client").inc()
        raise TvmwError(BAD_CLIENT, "wrong api_key or client_id")
    abonement = P.text(p, "abonement", max_len=64)
    password = p.get("password", "")
    if len(password) > 256:
        raise P.bad("password", "too long")
    device_uid = P.text(p, "device_uid", max_len=128) or call.deps.get("cookie_device_uid", "")
    device = P.text(p, "device", max_len=32)
    model = P.text(p, "device_model", max_len=128)
    serial = P.text(p, "device_serial", max_len=128)
    by_device = bool(cfg.login_by_device and device_uid and not abonement and not password)
    if not by_device and not (abonement and password):
        raise TvmwError(NOT_FOUND, "abonement and password are required",
                        error_messages={"abonement": "abonement and password are required"})
    keys = limiter.keys(call.ip, abonement or ("uid:" + device_uid))
    if not await held(call, keys):
        raise TvmwError(NOT_FOUND, "account not found")
    now = call.reactor.seconds()
    if by_device:
        account = await call.db.run(account_by_device, device_uid)
    else:
        account = await password_login(call.db, abonement, password)
    if account is None:
        raise _bad_credentials(limiter, keys, now, metrics)
    bind = bool(device_uid) and not device_uid.startswith(GENERATED)
    cookies = {"authkey": ""}
    if not device_uid:
        device_uid = GENERATED + secrets.token_hex(8)
        cookies["device_uid"] = device_uid
    authkey = new_authkey()
    store = call.deps["sessions"]
    out = await call.db.run(open_session, account.id, client, device_uid, bind, device, model,
                            serial, call.ip, authkey, now, store.ttl)
    refused = out.get("refused")
    if refused == NOT_FOUND:
        raise _bad_credentials(limiter, keys, now, metrics)
    limiter.succeeded(keys)
    if refused == INACTIVE:
        raise TvmwError(INACTIVE, "account is inactive", status_reason=out["status_reason"])
    if refused == NO_TARIFF:
        raise TvmwError(NO_TARIFF, "no tariff is assigned to the account")
    if refused == DEVICE_TAKEN:
        raise TvmwError(DEVICE_TAKEN, "the device is bound to another account")
    if refused == TOO_MANY_DEVICES:
        raise TvmwError(TOO_MANY_DEVICES,
                        f"the account has {out['limit']} devices in session already")
    store.install(authkey, Live(account.id, out["customer_id"], out["login"], client.client_id,
                                device_uid, device, call.ip, now, ""))
    return {
        "authkey": authkey,
        "utc_time": int(now),
        "firstname": out["firstname"],
        "lastname": out["lastname"],
        "abonement": out["login"],
        "account_id": account.id,
        "customer_id": out["customer_id"],
        "customer_ext_id": out["ext_id"] or "",
        "currency": CURRENCY,
        "ip_address": call.ip,
        "status_reason": out["status_reason"],
        "contract_number": out["contract_number"] or "",
        "device_uid": device_uid,
        "_cookies": {**cookies, "authkey": authkey},
    }


async def logout(call: Call) -> dict:
    await call.deps["sessions"].end(call.deps["authkey"])
    return {"_cookies": {"authkey": ""}}


async def account_status(call: Call) -> dict:
    """
    The account's status: ``status`` 0 (active) or 2 (deactivated) with its
    ``status_reason`` -- a debtor's session answers 2 and DEBT, and lives on
    (apps such as tvcom_iOS drop the session only on 1, "not authorized",
    which an unknown or ended authkey answers).  ``message``: the newest
    message for the TV screen (the Billing API's ``account/message/create``)
    this session has not been shown -- shown once per session
    (``has_new_messages`` 1 then); smartyd sends no ``command``.
    """
    from smartyd.tvmw.live import channels_digest

    session = call.session
    live = call.deps["live"]
    row = await call.db.run_statement(_status, session.account_id, live.message_seen)
    if row is None:
        raise TvmwError(-1, "authorization required", status=1)
    active, reason, message_id, subject, text = row
    current = await channels_digest(call)
    message = {}
    if message_id is not None:
        message = {"subject": subject, "text": text, "no_confirmation": "0"}
        call.deps["sessions"].note_message(call.deps["authkey"], live, message_id)
    return {
        "status": 0 if active else 2,
        "status_reason": reason,
        "utc_time": int(call.reactor.seconds()),
        "has_new_messages": 1 if message_id is not None else 0,
        "message": message,
        "command": {},
        "channel_list_changed": 1 if live.digest != current else 0,
    }


async def _status(tx, account_id: int, seen: int):
    """The account's status and its newest TV-screen message this session has not been shown."""
    return await tx.fetchone(
        "SELECT a.active, a.status_reason, m.id, m.subject, m.text FROM accounts a"
        " LEFT JOIN LATERAL (SELECT id, subject, text FROM account_messages"
        "  WHERE account_id = a.id AND send_message_to_tv_screen AND id > %s"
        "  ORDER BY id DESC LIMIT 1) m ON true"
        " WHERE a.id = %s", (seen, account_id))


METHODS = {
    "login": login,
    "logout": logout,
    "account/status": account_status,
}
NO_SESSION = {"login"}
