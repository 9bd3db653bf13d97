"""
``POST /streams/url`` and ``GET /streams/check`` on the main HTTP listener;
the check also answers on Smarty's ``/tvmiddleware/api/streamservice/token/check/``
(with or without the trailing slash).

Minting authenticates an account (abonement login and password, or a
registered device UID), reads its status and entitlement from the database --
the truth, not the snapshot -- and returns the channel's URL mask filled in;
a granted mint is the account's ``last_active`` (at most one write an hour).
Every refusal is the same 403 body, so the answer is no oracle for which logins
exist, which are blocked or which channels they have; the reason goes to the
debug log only.  An unknown login costs the same scrypt verification as a
wrong password.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from string import Template
from typing import Any

from attrs import frozen
from klein import Klein
from twisted.logger import Logger
from twisted.web.server import Request

from smartyd import catalog, ledger
from smartyd.db import Database, Tx
from smartyd.streams.check import Checker
from smartyd.streams.tokens import TokenCodec, pack_ip
from smartyd.http.addresses import client_ip
from smartyd.http.auth import password_login
from smartyd.http.fields import BadRequest, request_fields
from smartyd.http.handlers import endpoint, json_body

log = Logger()

_MAX_FIELD = 256
_MAX_ID = 2**63 - 1
_FORBIDDEN = {"error": "forbidden"}
#: How stale ``accounts.last_active`` may get before a mint writes it again.
LAST_ACTIVE_EVERY = timedelta(hours=1)
SMARTY_CHECK = "/tvmiddleware/api/streamservice/token/check"
#: The request headers the checker reads (nginx auth_request and Cesbo Astra).
_CHECK_HEADERS = (b"x-original-uri", b"x-real-ip", b"x-session-id", b"x-channel-id",
                  b"x-real-path")


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


async def grant(tx: Tx, account_id: int, channel_ref: str,
                at: datetime | None = None) -> tuple[str, dict | None]:
    """
    The channel if the account may watch it now: C{("ok", channel)}, or
    C{(reason, None)} with reason C{blocked}, C{unknown_channel} or
    C{not_entitled}.  Granted at ``at``, the account's ``last_active``
    (the Billing API's ``account/info``) moves there.
    """
    active = await tx.fetchval("SELECT active FROM accounts WHERE id = %s", (account_id,))
    if not active:
        return "blocked", None
    channel = await catalog.get_channel(tx, channel_ref)
    if channel is None:
        return "unknown_channel", None
    entitled = await tx.fetchval(
        "SELECT 1 FROM accounts a"
        " JOIN subscriptions s ON s.customer_id = a.customer_id"
        "  AND (s.account_id IS NULL OR s.account_id = a.id) AND s.state = 'active'"
        " JOIN tariff_channels tc ON tc.tariff_id = s.tariff_id"
        " WHERE a.id = %s AND tc.channel_id = %s LIMIT 1",
        (account_id, channel["id"]),
    )
    if not entitled:
        return "not_entitled", None
    if at is not None:
        await touch_last_active(tx, account_id, at)
    return "ok", channel


async def touch_last_active(tx: Tx, account_id: int, at: datetime) -> None:
    """
    ``accounts.last_active = at``, written at most once an hour per account
    (the Billing API shows the day): a viewer zapping through channels costs
    one row write an hour, not one per mint.  Token checks never write.
    """
    await tx.execute(
        "UPDATE accounts SET last_active = %s WHERE id = %s"
        " AND (last_active IS NULL OR last_active <= %s)",
        (at, account_id, at - LAST_ACTIVE_EVERY))


def stream_url(mask: str, token: str, account: int, channel: str, ip: str, expires: int) -> str:
    """The URL mask with C{$token $account $channel $ip $expires} substituted."""
    return Template(mask).safe_substitute(
        token=token, account=str(account), channel=channel, ip=ip, expires=str(expires)
    )


@frozen
class Minted:
    url: str
    token: str
    expires: int


def mint_stream(codec: TokenCodec, channel: dict, account_id: int, ip: str, now: float,
                ttl: int, metrics: Any = None) -> Minted:
    """
    A stream URL for a granted ``channel`` (id, name, url_mask): a fresh
    token valid ``ttl`` seconds from ``now``, bound to ``ip`` when the codec
    binds.  The one way a stream URL is made (``POST /streams/url`` and the
    device API's ChannelUrl).  Raises ValueError when ``ip`` is not an address.
    """
    expires = int(now) + ttl
    token = codec.mint(account_id, channel["id"], expires, ip=ip)
    if metrics is not None:
        metrics.tokens_minted.inc()
    log.debug("stream URL minted for account {account} channel {channel}",
              account=account_id, channel=channel["name"])
    url = stream_url(channel["url_mask"], token, account_id, channel["name"], ip, expires)
    return Minted(url, token, expires)


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
    @endpoint("streams_url")
    async def url(self, request: Request) -> bytes:
        mint = parse_mint_request(request_fields(request))
        account = await self._authenticate(mint)
        if account is None:
            return self._refuse(request, "bad_credentials", None, mint.channel)
        now = datetime.fromtimestamp(self.clock.seconds(), timezone.utc)
        reason, channel = await self.db.run(grant, account.id, mint.channel, now)
        if channel is None:
            return self._refuse(request, reason, account.id, mint.channel)
        ip = mint.ip or client_ip(request, self.trusted_proxies)
        try:
            minted = mint_stream(self.codec, channel, account.id, ip, self.clock.seconds(),
                                 self.ttl, self.metrics)
        except ValueError:
            # The caller's own address is not an IP (a Unix socket peer).
            raise BadRequest("ip is required")
        return json_body(request, 200, {"url": minted.url, "token": minted.token,
                                        "expires": minted.expires})

    async def _authenticate(self, mint: MintRequest) -> ledger.Account | None:
        if mint.uid is not None:
            return await self.db.run(account_by_device, mint.uid)
        return await password_login(self.db, mint.login, mint.password,
                                    verify=self._verify_password)

    def _refuse(self, request: Request, reason: str, account: int | None, channel: str) -> bytes:
        log.debug(
            "stream URL refused: {reason}", reason=reason, account=account, channel=channel
        )
        return json_body(request, 403, _FORBIDDEN)

    # -- GET /streams/check --------------------------------------------------------------
    @app.route("/streams/check", methods=["GET", "HEAD"])
    @app.route(SMARTY_CHECK, methods=["GET", "HEAD"])
    @app.route(SMARTY_CHECK + "/", methods=["GET", "HEAD"])
    @endpoint("streams_check")
    def check(self, request: Request) -> bytes:
        params = {
            name.decode("latin-1"): values[0].decode("utf-8", "replace")
            for name, values in request.args.items()
            if values
        }
        headers = {}
        for name in _CHECK_HEADERS:
            value = request.getHeader(name)
            if value is not None:
                headers[name.decode()] = value.decode("latin-1")
        verdict = self.checker.check(
            params, headers, peer=client_ip(request, self.trusted_proxies)
        )
        request.setResponseCode(200 if verdict.allowed else 403)
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"X-AuthDuration", str(verdict.duration).encode())
        if verdict.account_id is not None:
            request.setHeader(b"X-UserId", str(verdict.account_id).encode())
        if verdict.max_sessions is not None:
            request.setHeader(b"X-Max-Sessions", str(verdict.max_sessions).encode())
        if verdict.session_name is not None:
            request.setHeader(b"X-Session-Name", verdict.session_name.encode("latin-1", "replace"))
        return b""
