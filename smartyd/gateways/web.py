"""
The gateways' HTTP endpoints, one Klein app per gateway.

ASSIST (``/payments/assist``):
  - ``POST /payments/assist/order`` -- a portal creates an order for the
    payer's own account: JSON or form ``login``, ``password``, ``amount``
    (``"150.00"``), optional ``comment`` -> ``200 {"order": {...}, "form":
    {"url", "method", "charset", "fields", "html"}}``; ``403`` for wrong
    credentials (one body for every refusal), ``400`` for a bad amount.
    Creating an order moves no money, so the payer's credentials are the
    authorisation, as for ``POST /streams/url``.
  - ``POST /payments/assist/result`` -- ASSIST's result push.  A push whose
    shop (``Shop_IDP`` / ``merchant_id``, when present) is ours and whose
    CheckValue verifies (constant-time, over the bytes as sent) is the
    gateway's signed word about that order: it is settled at once
    (L{AssistService.on_push}: credited through L{smartyd.payments.accept},
    idempotently; the report poll later confirms).

    How we answer -- our reading of the public record (the legacy "send
    result" protocol as django-assist-ru's ``views.result`` and shop plug-ins
    implement it; ASSIST's own manual is not public):
      * always HTTP 200 with ``<?xml ...?><pushpaymentresult firstcode=".."
        secondcode="..">``; the gateway reads the codes, not the HTTP status;
      * accepted: ``0/0`` with ``<order><billnumber>..</billnumber>
        <packetdate>..</packetdate></order>`` echoing the push (the element
        appears only on success);
      * another shop's ``Shop_IDP``: ``5/100`` (firstcode 5 = "wrong
        parameter", secondcode 100 = Shop_IDP); a bad or missing CheckValue:
        ``5/158`` (CheckValue) -- nothing is stored, nothing changes;
      * our own failure (database down ...): ``1/0`` (generic error), so
        the gateway sends the push again;
      * a genuine push about an order that is not ours is acknowledged
        (``0/0``) and logged: it is the gateway's correct word, just not
        for us.
    The answer is in the generation's charset (legacy: windows-1251, as the
    reference answers; current: UTF-8).  The push form itself is decoded with
    the charset the request declares, else UTF-8 when valid, else cp1251 --
    the legacy gateway posts cp1251, and a Cyrillic name must not empty the
    form.

Payture (``/payments/payture``, ``/billing/payment/payture``):
  - ``POST /payments/payture/notify`` = ``POST
    /billing/payment/payture/validate_notify/``: a notification, verified with
    GetState before anything is credited; ``200 OK`` when dealt with, ``503``
    when Payture should repeat it later.
  - ``POST /payments/payture/order``: as the ASSIST order, answering the
    Payture payment page URL.

Money-moving work runs shielded: a client that disconnects does not cancel it.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any
from xml.sax.saxutils import escape

from klein import Klein
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.web.server import Request

from smartyd import ledger
from smartyd.db import Database, DatabaseUnavailable
from smartyd.gateways import events, orders
from smartyd.gateways.assist import (
    GENERATIONS,
    LEGACY,
    check_value_matches,
    current_check_value,
    legacy_check_value,
    push_result,
)
from smartyd.gateways.assist_service import AssistService
from smartyd.gateways.payture import BadNotification, PaytureService, parse_notification
from smartyd.partners import PartnerError, PartnerRefused
from smartyd.web import BadJSON, client_ip, json_body, read_json, shielded

log = Logger()

# A valid scrypt hash of a password nobody knows: checked when the login does
# not exist, so that answer takes as long as a wrong password.
_DUMMY_HASH = (
    "scrypt$16384$8$1$VzwVKsqlrv69tCflfAw9NQ==$QCT2B1uyw2/3m/dNF6wPsHpifRsWCiZbaBZnSbXLOZk="
)
_MAX_FIELD = 256
_FORBIDDEN = {"error": "forbidden"}


class BadRequest(Exception):
    pass


def request_fields(request: Request) -> dict[str, Any]:
    """A JSON object body (numbers kept exact), or form / query fields."""
    content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if content_type == b"application/json":
        try:
            body = read_json(request, parse_float=Decimal)
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


def _text(fields: dict, name: str, required: bool = True) -> str | None:
    value = fields.get(name)
    if value is None or value == "":
        if required:
            raise BadRequest(f"{name} is required")
        return None
    if isinstance(value, (int, Decimal)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or len(value) > _MAX_FIELD or "\x00" in value:
        raise BadRequest(f"{name} must be a string of at most {_MAX_FIELD} characters")
    return value


def _amount(fields: dict) -> Decimal:
    raw = _text(fields, "amount")
    try:
        amount = Decimal(raw)
    except ArithmeticError:
        raise BadRequest("amount must be a number like 150.00")
    if not amount.is_finite() or amount <= 0 or amount.as_tuple().exponent < -2 \
            or amount > Decimal("1000000"):
        raise BadRequest("amount must be positive, at most 1000000, with at most 2 decimals")
    return amount


# Answers to an ASSIST push: (firstcode, secondcode) of the legacy protocol.
PUSH_OK = (0, 0)
PUSH_TRY_AGAIN = (1, 0)  # our fault (database down...): the gateway sends it again
PUSH_WRONG_SHOP = (5, 100)  # parameter Shop_IDP
PUSH_BAD_CHECK_VALUE = (5, 158)  # parameter CheckValue

_CHARSET_RE = re.compile(rb"charset=\"?([A-Za-z0-9_.:-]+)", re.IGNORECASE)


def push_fields(request: Request) -> tuple[dict[str, str], dict[str, bytes]]:
    """
    An ASSIST push's form fields by lower-cased name: as text, and as the
    raw bytes the gateway sent (CheckValues are verified over those).

    Text is decoded with the charset the request declares, else UTF-8 when
    every value is valid UTF-8, else cp1251 -- the legacy gateway's encoding
    (a Cyrillic name in cp1251 is practically never valid UTF-8).  Nothing
    here refuses a form: one odd byte must not empty a genuine push.
    """
    raw: dict[str, bytes] = {}
    for name, values in (request.args or {}).items():
        key = name.decode("latin-1").lower()
        if values and key not in raw:
            raw[key] = values[0]
    m = _CHARSET_RE.search(request.getHeader(b"content-type") or b"")
    charsets = [m.group(1).decode("ascii")] if m else []
    charsets += ["utf-8", "cp1251"]
    for charset in charsets:
        try:
            return {k: v.decode(charset) for k, v in raw.items()}, raw
        except (LookupError, UnicodeDecodeError):
            continue
    return {k: v.decode("cp1251", "replace") for k, v in raw.items()}, raw  # pragma: no cover


class _Portal:
    """Order creation for a payer who proves who they are (login + password)."""

    db: Database
    metrics: Any
    route_prefix: str

    async def _authenticate(self, login: str, password: str) -> ledger.Account | None:
        account = await self.db.run(ledger.find_account_by_login, login)
        stored = account.password_hash if account is not None else ""
        ok = await deferToThread(ledger.verify_password, password, stored or _DUMMY_HASH)
        return account if ok and stored else None

    def _answer(self, request: Request, route: str, status: int, payload: dict) -> bytes:
        self.metrics.http_requests.labels(route, str(status)).inc()
        return json_body(request, status, payload)


class AssistWeb(_Portal):
    app = Klein()

    def __init__(self, service: AssistService, db: Database, metrics: Any):
        self.service = service
        self.db = db
        self.metrics = metrics

    def resource(self):
        return self.app.resource()

    @app.route("/payments/assist/order", methods=["POST"])
    def order(self, request: Request):
        return shielded(self._order(request), "ASSIST order request failed")

    async def _order(self, request: Request) -> bytes:
        route = "assist_order"
        try:
            fields = request_fields(request)
            login, password = _text(fields, "login"), _text(fields, "password")
            amount = _amount(fields)
            comment = _text(fields, "comment", required=False) or ""
        except BadRequest as e:
            return self._answer(request, route, 400, {"error": str(e)})
        try:
            account = await self._authenticate(login, password)
            if account is None:
                log.debug("ASSIST order refused: bad credentials", provider="assist")
                return self._answer(request, route, 403, _FORBIDDEN)
            order, form = await self.service.create_order(account.id, amount, comment=comment)
        except ValueError as e:  # a comment the gateway cannot show
            return self._answer(request, route, 400, {"error": str(e)})
        except orders.OrderError:
            return self._answer(request, route, 403, _FORBIDDEN)
        except DatabaseUnavailable:
            return self._answer(request, route, 503, {"error": "temporarily unavailable"})
        return self._answer(request, route, 200,
                            {"order": order.to_json(), "form": form.to_json()})

    # -- the push ---------------------------------------------------------------------------
    @app.route("/payments/assist/result", methods=["POST"])
    def result(self, request: Request):
        return shielded(self._result(request), "ASSIST push failed")

    async def _result(self, request: Request) -> bytes:
        route = "assist_result"
        cfg = self.service.cfg
        legacy = cfg.generation == LEGACY.name
        text, raw = push_fields(request)
        bill, packet = text.get("billnumber", ""), text.get("packetdate", "")
        number = text.get("ordernumber") or text.get("order_idp") or ""
        shop = text.get("shop_idp" if legacy else "merchant_id")
        if shop is not None and shop.strip() != cfg.shop_id:
            events.count(self.metrics, "assist", "wrong_shop")
            log.warn("ASSIST push for order {order} refused: it names shop {shop}, not ours",
                     order=number[:64], shop=shop[:64], provider="assist", reason="wrong_shop")
            return self._push_answer(request, route, PUSH_WRONG_SHOP)

        def rawf(*names: str) -> bytes:
            return next((raw[n] for n in names if raw.get(n)), b"")

        order_raw = rawf("ordernumber", "order_idp")
        if legacy:
            expected = legacy_check_value(cfg.shop_id, order_raw,
                                          rawf("total", "subtotal_p", "orderamount"),
                                          rawf("currency", "ordercurrency"), cfg.secret)
        else:
            expected = current_check_value(cfg.secret, cfg.shop_id, order_raw,
                                           rawf("orderamount"), rawf("ordercurrency"),
                                           rawf("orderstate"))
        if not number or not cfg.secret or not check_value_matches(expected,
                                                                   text.get("checkvalue")):
            events.count(self.metrics, "assist", "bad_check_value")
            log.warn("ASSIST push for order {order} refused: bad or missing CheckValue",
                     order=number[:64], provider="assist", reason="bad_check_value")
            return self._push_answer(request, route, PUSH_BAD_CHECK_VALUE)
        pushed = push_result(text, GENERATIONS[cfg.generation])
        try:
            await self.service.on_push(number, pushed)
        except DatabaseUnavailable:
            return self._push_answer(request, route, PUSH_TRY_AGAIN)
        except Exception:
            log.failure("ASSIST push for order {order} failed", order=number,
                        provider="assist")
            return self._push_answer(request, route, PUSH_TRY_AGAIN)
        return self._push_answer(request, route, PUSH_OK, bill, packet)

    def _push_answer(self, request: Request, route: str, codes: tuple[int, int],
                     bill: str = "", packet: str = "") -> bytes:
        """
        The reference answer: HTTP 200 and ``<pushpaymentresult firstcode
        secondcode>``, with the ``<order>`` echo only when accepted; in the
        generation's charset (the legacy gateway speaks cp1251).
        """
        first, second = codes
        charset = "windows-1251" if self.service.cfg.generation == LEGACY.name else "utf-8"
        self.metrics.http_requests.labels(route, "200").inc()
        request.setResponseCode(200)
        request.setHeader(b"content-type", f"text/xml; charset={charset}".encode("ascii"))
        order = ""
        if first == 0:
            order = (f"<order><billnumber>{escape(bill[:64])}</billnumber>"
                     f"<packetdate>{escape(packet[:64])}</packetdate></order>")
        return (f'<?xml version="1.0" encoding="{charset}"?>'
                f'<pushpaymentresult firstcode="{first}" secondcode="{second}">'
                f"{order}</pushpaymentresult>").encode(charset, "replace")


class PaytureWeb(_Portal):
    app = Klein()

    def __init__(self, service: PaytureService, db: Database, metrics: Any,
                 trusted_proxies: tuple = ()):
        self.service = service
        self.db = db
        self.metrics = metrics
        self.trusted_proxies = trusted_proxies

    def resource(self):
        return self.app.resource()

    @app.route("/payments/payture/notify", methods=["POST"], endpoint="notify")
    @app.route("/billing/payment/payture/validate_notify/", methods=["POST"],
               endpoint="notify_billing")
    @app.route("/billing/payment/payture/validate_notify", methods=["POST"],
               endpoint="notify_billing_noslash")
    def notify(self, request: Request):
        return shielded(self._notify(request), "Payture notification failed")

    async def _notify(self, request: Request) -> bytes:
        form = {}
        for name, values in (request.args or {}).items():
            if values:
                form[name.decode("utf-8", "replace")] = values[0].decode("utf-8", "replace")
        try:
            n = parse_notification(form)
        except BadNotification as e:
            log.warn("Payture notification refused: {error}", error=str(e),
                     provider="payture", reason="malformed")
            return self._plain(request, 400, b"BAD REQUEST", "malformed")
        handled = await self.service.handle(n)
        return self._plain(request, handled.code, handled.body, handled.outcome)

    def _plain(self, request: Request, status: int, body: bytes, outcome: str) -> bytes:
        self.metrics.http_requests.labels("payture_notify", str(status)).inc()
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return body

    @app.route("/payments/payture/order", methods=["POST"])
    def order(self, request: Request):
        return shielded(self._order(request), "Payture order request failed")

    async def _order(self, request: Request) -> bytes:
        route = "payture_order"
        try:
            fields = request_fields(request)
            login, password = _text(fields, "login"), _text(fields, "password")
            amount = _amount(fields)
        except BadRequest as e:
            return self._answer(request, route, 400, {"error": str(e)})
        try:
            account = await self._authenticate(login, password)
            if account is None:
                return self._answer(request, route, 403, _FORBIDDEN)
            ip = _text(fields, "ip", required=False) or client_ip(request, self.trusted_proxies)
            order, url = await self.service.create_order(account.id, amount, ip)
        except orders.OrderError:
            return self._answer(request, route, 403, _FORBIDDEN)
        except BadRequest as e:
            return self._answer(request, route, 400, {"error": str(e)})
        except PartnerRefused as e:
            return self._answer(request, route, 502, {"error": f"Payture refused: {e.code}"})
        except (PartnerError, DatabaseUnavailable):
            return self._answer(request, route, 503, {"error": "temporarily unavailable"})
        return self._answer(request, route, 200, {"order": order.to_json(), "url": url})
