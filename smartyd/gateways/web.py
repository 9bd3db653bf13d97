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
    Payture payment page URL; optional ``remember_card`` (the box's tick:
    true/false, absent = the ``[payture] remember_card`` default; ignored
    when the box is hidden) and ``template`` / ``template_of_payment_page``
    ("Payture", "" or "Orsay": overrides ``[payture] template``); ``ip`` (the
    payer's address, else the request's) must be an IP address: it travels
    inside Payture's ``Data="k=v;k=v"``, where a ``;`` would add fields.

Money-moving work runs shielded: a client that disconnects does not cancel it.
"""

from __future__ import annotations

import ipaddress
import re
from decimal import Decimal
from typing import Any
from xml.sax.saxutils import escape

from klein import Klein
from twisted.logger import Logger
from twisted.web.server import Request

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
from smartyd.config import PAYTURE_TEMPLATES
from smartyd.gateways.payture import BadNotification, CardsUnavailable, PaytureService, \
    parse_notification
from smartyd.partners import PartnerError, PartnerRefused
from smartyd.http.addresses import client_ip
from smartyd.http.auth import password_login
from smartyd.http.fields import BadRequest, request_fields
from smartyd.http.handlers import endpoint, json_body, shielded

log = Logger()

_MAX_FIELD = 256
_FORBIDDEN = {"error": "forbidden"}


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


def _flag(fields: dict, name: str) -> bool | None:
    """A tick box: absent -> None (the default stands); 1/true/on or 0/false/off."""
    value = fields.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "on", "yes"):
        return True
    if text in ("0", "false", "off", "no"):
        return False
    raise BadRequest(f"{name} must be true or false")


def _ip(fields: dict) -> str | None:
    """The payer's address a portal passes (``ip``), as an address: 400 for anything else."""
    raw = _text(fields, "ip", required=False)
    if raw is None:
        return None
    try:
        return str(ipaddress.ip_address(raw.strip()))
    except ValueError:
        raise BadRequest("ip must be an IP address")


def _template(fields: dict) -> str | None:
    """The page template override (``template``, or the TV portal's ``template_of_payment_page``)."""
    for name in ("template", "template_of_payment_page"):
        if name in fields and fields[name] is not None:
            value = fields[name]
            if value not in PAYTURE_TEMPLATES:
                raise BadRequest(f"{name} must be one of Payture, '' (TV), Orsay")
            return value
    return None


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


class AssistWeb:
    app = Klein()

    def __init__(self, service: AssistService, db: Database, metrics: Any):
        self.service = service
        self.db = db
        self.metrics = metrics

    def resource(self):
        return self.app.resource()

    @app.route("/payments/assist/order", methods=["POST"])
    @endpoint("assist_order")
    def order(self, request: Request):
        return shielded(self._order(request), "ASSIST order request failed")

    async def _order(self, request: Request) -> bytes:
        fields = request_fields(request)
        login, password = _text(fields, "login"), _text(fields, "password")
        amount = _amount(fields)
        comment = _text(fields, "comment", required=False) or ""
        account = await password_login(self.db, login, password)
        if account is None:
            log.debug("ASSIST order refused: bad credentials", provider="assist")
            return json_body(request, 403, _FORBIDDEN)
        try:
            order, form = await self.service.create_order(account.id, amount, comment=comment)
        except ValueError as e:  # a comment the gateway cannot show
            raise BadRequest(str(e))
        except orders.OrderError:
            return json_body(request, 403, _FORBIDDEN)
        return json_body(request, 200, {"order": order.to_json(), "form": form.to_json()})

    # -- the push ---------------------------------------------------------------------------
    @app.route("/payments/assist/result", methods=["POST"])
    @endpoint("assist_result")
    def result(self, request: Request):
        return shielded(self._result(request), "ASSIST push failed")

    async def _result(self, request: Request) -> bytes:
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
            return self._push_answer(request, PUSH_WRONG_SHOP)

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
            return self._push_answer(request, PUSH_BAD_CHECK_VALUE)
        pushed = push_result(text, GENERATIONS[cfg.generation])
        try:
            await self.service.on_push(number, pushed)
        except DatabaseUnavailable:
            return self._push_answer(request, PUSH_TRY_AGAIN)
        except Exception:
            log.failure("ASSIST push for order {order} failed", order=number,
                        provider="assist")
            return self._push_answer(request, PUSH_TRY_AGAIN)
        return self._push_answer(request, PUSH_OK, bill, packet)

    def _push_answer(self, request: Request, codes: tuple[int, int],
                     bill: str = "", packet: str = "") -> bytes:
        """
        The reference answer: HTTP 200 and ``<pushpaymentresult firstcode
        secondcode>``, with the ``<order>`` echo only when accepted; in the
        generation's charset (the legacy gateway speaks cp1251).
        """
        first, second = codes
        charset = "windows-1251" if self.service.cfg.generation == LEGACY.name else "utf-8"
        request.setResponseCode(200)
        request.setHeader(b"content-type", f"text/xml; charset={charset}".encode("ascii"))
        order = ""
        if first == 0:
            order = (f"<order><billnumber>{escape(bill[:64])}</billnumber>"
                     f"<packetdate>{escape(packet[:64])}</packetdate></order>")
        return (f'<?xml version="1.0" encoding="{charset}"?>'
                f'<pushpaymentresult firstcode="{first}" secondcode="{second}">'
                f"{order}</pushpaymentresult>").encode(charset, "replace")


class PaytureWeb:
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
    @endpoint("payture_notify")
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
            return self._plain(request, 400, b"BAD REQUEST")
        handled = await self.service.handle(n)
        return self._plain(request, handled.code, handled.body)

    def _plain(self, request: Request, status: int, body: bytes) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return body

    @app.route("/payments/payture/order", methods=["POST"])
    @endpoint("payture_order")
    def order(self, request: Request):
        return shielded(self._order(request), "Payture order request failed")

    async def _order(self, request: Request) -> bytes:
        fields = request_fields(request)
        login, password = _text(fields, "login"), _text(fields, "password")
        amount = _amount(fields)
        ip = _ip(fields) or client_ip(request, self.trusted_proxies)
        remember = _flag(fields, "remember_card")
        template = _template(fields)
        account = await password_login(self.db, login, password)
        if account is None:
            return json_body(request, 403, _FORBIDDEN)
        try:
            order, url = await self.service.create_order(account.id, amount, ip,
                                                         remember=remember, template=template)
        except CardsUnavailable as e:
            raise BadRequest(str(e))
        except orders.OrderError:
            return json_body(request, 403, _FORBIDDEN)
        except PartnerRefused as e:
            return json_body(request, 502, {"error": f"Payture refused: {e.code}"})
        except PartnerError:
            return json_body(request, 503, {"error": "temporarily unavailable, retry"})
        return json_body(request, 200, {"order": order.to_json(), "url": url})
