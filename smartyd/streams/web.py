"""
``POST /streams/url`` and ``GET /streams/check`` on the main HTTP listener.

Minting authenticates an account (abonement login and password, or a
registered device UID), reads its status and entitlement from the database --
the truth, not the snapshot -- and returns the channel's URL mask filled in.
Every refusal is the same 403 body, so the answer is no oracle for which logins
exist, which are blocked or which channels they have; the reason goes to the
debug log only.  An unknown login costs the same scrypt verification as a
wrong password.
"""

from __future__ import annotations

from string import Template
from typing import Any

from attrs import frozen
from klein import Klein
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.web.server import Request

from smartyd import catalog, ledger
from smartyd.db import Database, DatabaseUnavailable, Tx
from smartyd.streams.check import NOT_READY, Checker
from smartyd.streams.tokens import TokenCodec, pack_ip
from smartyd.web import BadJSON, client_ip, json_body, read_json

log = Logger()

# A valid scrypt hash of a random password nobody knows: verified against when
# the login does not exist or has no password, so that those answers take as
# long as a wrong password does.
_DUMMY_HASH = (
    "scrypt$16384$8$1$VzwVKsqlrv69tCflfAw9NQ==$QCT2B1uyw2/3m/dNF6wPsHpifRsWCiZbaBZnSbXLOZk="
)
_MAX_FIELD = 256
_MAX_ID = 2**63 - 1
_FORBIDDEN = {"error": "forbidden"}


class BadRequest(Exception):
    """The request is malformed (400); the message says how."""


@frozen
class MintRequest:
    """A validated ``POST /streams/url`` body."""

    channel: str
    login: str | None = None
    password: str | None = None
    uid: str | None = None
    ip: str | None = None


def parse_mint_request(fields: dict[str, Any]) -> MintRequest:
    """Validate the fields of a mint request; raise L{BadRequest}."""

    def text(name: str, allow_int: bool = False) -> str | None:
        value = fields.get(name)
        if value is None or value == "":
            return None
        if allow_int and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise BadRequest(f"{name} must be a string")
        if len(value) > _MAX_FIELD or "\x00" in value:
            raise BadRequest(f"{name} is too long or contains NUL")
        return value

    channel = text("channel", allow_int=True)
    login, password, uid, ip = text("login"), text("password"), text("uid"), text("ip")
    if channel is None:
        raise BadRequest("channel is required")
    if channel.isascii() and channel.isdigit():
        if int(channel) > _MAX_ID:
            raise BadRequest("channel id out of range")
    elif not catalog.NAME_RE.match(channel):
        raise BadRequest("channel must be a channel id or name")
    if uid is not None and (login is not None or password is not None):
        raise BadRequest("give login and password, or uid, not both")
    if uid is None and (login is None or password is None):
        raise BadRequest("login and password, or uid, are required")
    if ip is not None and pack_ip(ip) is None:
        raise BadRequest("ip is not an IP address")
    return MintRequest(channel=channel, login=login, password=password, uid=uid, ip=ip)


# -- database ------------------------------------------------------------------------------
async def account_by_device(tx: Tx, uid: str) -> ledger.Account | None:
    account_id = await tx.fetchval("SELECT account_id FROM devices WHERE uid = %s", (uid,))
    return None if account_id is None else await ledger.get_account(tx, account_id)


async def grant(tx: Tx, account_id: int, channel_ref: str) -> tuple[str, dict | None]:
    """
    The channel if the account may watch it now: C{("ok", channel)}, or
    C{(reason, None)} with reason C{blocked}, C{unknown_channel} or
    C{not_entitled}.
    """
    status = await tx.fetchval("SELECT status FROM accounts WHERE id = %s", (account_id,))
    if status != "active":
        return "blocked", None
    channel = await catalog.get_channel(tx, channel_ref)
    if channel is None:
        return "unknown_channel", None
    entitled = await tx.fetchval(
        "SELECT 1 FROM subscriptions s"
        " JOIN tariff_channels tc ON tc.tariff_id = s.tariff_id"
        " WHERE s.account_id = %s AND tc.channel_id = %s LIMIT 1",
        (account_id, channel["id"]),
    )
    return ("ok", channel) if entitled else ("not_entitled", None)


def stream_url(mask: str, token: str, account: int, channel: str, ip: str, expires: int) -> str:
    """The URL mask with C{$token $account $channel $ip $expires} substituted."""
    return Template(mask).safe_substitute(
        token=token, account=str(account), channel=channel, ip=ip, expires=str(expires)
    )


# -- the app --------------------------------------------------------------------------------
class StreamsApp:
    """The Klein app of ``/streams/*``."""

    app = Klein()

    def __init__(
        self,
        db: Database,
        codec: TokenCodec,
        checker: Checker,
        clock: Any,
        metrics: Any,
        ttl: int,
        trusted_proxies: tuple = (),
        verify_password=ledger.verify_password,
    ):
        self.db = db
        self.codec = codec
        self.checker = checker
        self.clock = clock
        self.metrics = metrics
        self.ttl = ttl
        self.trusted_proxies = trusted_proxies
        self._verify_password = verify_password

    def resource(self):
        return self.app.resource()

    # -- POST /streams/url -------------------------------------------------------------
    @app.route("/streams/url", methods=["POST"])
    async def url(self, request: Request) -> bytes:
        try:
            mint = parse_mint_request(_fields(request))
        except BadRequest as e:
            return self._answer(request, 400, {"error": str(e)})
        try:
            return await self._mint(request, mint)
        except DatabaseUnavailable as e:
            log.warn("stream URL not minted: database unavailable ({error})", error=str(e))
            return self._answer(request, 503, {"error": "temporarily unavailable, retry"})

    async def _mint(self, request: Request, mint: MintRequest) -> bytes:
        account = await self._authenticate(mint)
        if account is None:
            return self._refuse(request, "bad_credentials", None, mint.channel)
        reason, channel = await self.db.run(grant, account.id, mint.channel)
        if channel is None:
            return self._refuse(request, reason, account.id, mint.channel)
        ip = mint.ip or client_ip(request, self.trusted_proxies)
        expires = int(self.clock.seconds()) + self.ttl
        try:
            token = self.codec.mint(account.id, channel["id"], expires, ip=ip)
        except ValueError:
            # The caller's own address is not an IP (a Unix socket peer).
            return self._answer(request, 400, {"error": "ip is required"})
        self.metrics.tokens_minted.inc()
        log.debug(
            "stream URL minted for account {account} channel {channel}",
            account=account.id,
            channel=channel["name"],
        )
        url = stream_url(channel["url_mask"], token, account.id, channel["name"], ip, expires)
        return self._answer(request, 200, {"url": url, "token": token, "expires": expires})

    async def _authenticate(self, mint: MintRequest) -> ledger.Account | None:
        if mint.uid is not None:
            return await self.db.run(account_by_device, mint.uid)
        account = await self.db.run(ledger.find_account_by_login, mint.login)
        stored = account.password_hash if account is not None else ""
        ok = await deferToThread(self._verify_password, mint.password, stored or _DUMMY_HASH)
        return account if ok and stored else None

    def _refuse(self, request: Request, reason: str, account: int | None, channel: str) -> bytes:
        log.debug(
            "stream URL refused: {reason}", reason=reason, account=account, channel=channel
        )
        return self._answer(request, 403, _FORBIDDEN)

    def _answer(self, request: Request, status: int, payload: dict) -> bytes:
        self.metrics.http_requests.labels("streams_url", str(status)).inc()
        return json_body(request, status, payload)

    # -- GET /streams/check --------------------------------------------------------------
    @app.route("/streams/check", methods=["GET", "HEAD"])
    def check(self, request: Request) -> bytes:
        params = {
            name.decode("latin-1"): values[0].decode("utf-8", "replace")
            for name, values in request.args.items()
            if values
        }
        headers = {}
        for name in (b"x-original-uri", b"x-real-ip"):
            value = request.getHeader(name)
            if value is not None:
                headers[name.decode()] = value.decode("latin-1")
        verdict = self.checker.check(
            params, headers, peer=client_ip(request, self.trusted_proxies)
        )
        if verdict.allowed:
            status = 200
        elif verdict.reason == NOT_READY:
            status = 503
            request.setHeader(b"retry-after", b"1")
        else:
            status = 403
        request.setResponseCode(status)
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"X-AuthDuration", str(verdict.duration).encode())
        if verdict.account_id is not None:
            request.setHeader(b"X-UserId", str(verdict.account_id).encode())
        self.metrics.http_requests.labels("streams_check", str(status)).inc()
        return b""


def _fields(request: Request) -> dict[str, Any]:
    """The request's fields: a JSON object body, or form/query parameters."""
    content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if content_type == b"application/json":
        try:
            body = read_json(request)
        except BadJSON as e:
            raise BadRequest(str(e))
        if not isinstance(body, dict):
            raise BadRequest("the JSON body must be an object")
        return body
    fields: dict[str, Any] = {}
    for name, values in (request.args or {}).items():
        try:
            fields[name.decode("utf-8")] = values[0].decode("utf-8") if values else ""
        except UnicodeDecodeError:
            raise BadRequest("form fields must be UTF-8")
    return fields
