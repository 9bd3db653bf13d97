"""
Payture (InPay): order sessions, and notifications verified before crediting.

Wire format: form-encoded POSTs, answers are one XML element named after the
command with attributes (``<GetState Success="True" OrderId=".." State="Charged"
Amount="12480" .../>``); amounts in kopecks.

  - ``/apim/Init`` (``Key``, ``Data="SessionType=Pay;OrderId=..;Amount=..;IP=.."``)
    -> ``SessionId``; the payer goes to ``/apim/Pay?SessionId=..``.
  - ``/apim/GetState`` (``Key``, ``OrderId``; the older ``/apim/PayStatus``
    answers the same attributes) -> ``State``: New, PreAuthorized3DS,
    Authorized, Voided, Charged, Refunded, Rejected, Error, ...

A notification (``Notification=EngineChargeSuccess&OrderId=..&Amount=..&Success=True...``)
is unsigned: anybody can post one.  So it only tells us which order to look
at.  An order is credited when, and only when, GetState for our Key says
``Success="True"``, the same OrderId, ``State="Charged"`` and exactly the
order's amount.  Payture repeats a notification until it gets ``200 OK``
(when the merchant asked for retries): we answer 200 once the notification is
dealt with for good (credited, duplicate, forged, not ours) and 503 while
the answer depends on something that may recover (Payture or our database
unreachable, the payment still in progress).
"""

from __future__ import annotations

import re
from urllib.parse import urlencode
from typing import Any

from attrs import define, field, frozen
from twisted.logger import Logger

from smartyd.db import Database, DatabaseUnavailable, Tx
from smartyd.gateways import events, orders
from smartyd.gateways.untrusted_xml import parse_untrusted_xml
from smartyd.ledger import kopecks
from smartyd.partners import PartnerError, PartnerHTTP, PartnerProtocolError, PartnerRefused

log = Logger()

PARTNER = "payture"

# Notifications that claim money was charged: these are verified and may credit.
PAY_NOTIFICATIONS = frozenset({
    "EnginePaySuccess", "EngineChargeSuccess", "CustomerPaySuccess", "CustomerChargeSuccess",
})
CHARGED = "Charged"
# States after which a "paid" notification may still come true: answer 503.
IN_PROGRESS = frozenset({"New", "PreAuthorized3DS", "Authorized"})
DECLINED = frozenset({"Rejected", "Error", "Obsolete", "AuthorizationClosed"})
REVERSED = frozenset({"Voided", "Refunded", "Chargeback"})
# The one GetState refusal that speaks of the order: Payture has no such order
# (a forged or stale notification).  Any other Success="False" -- ACCESS_DENIED
# (our Key), API_NOT_ALLOWED (our IP is not on Payture's list), INTERNAL_ERROR,
# no ErrCode at all (https://payture.com/docs/error-codes) -- says nothing about
# the order: the notification may be genuine, so it is retried, never dropped.
ORDER_NOT_FOUND = "ORDER_NOT_FOUND"

_ORDER_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,50}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_]{1,64}$")


# -- wire format ---------------------------------------------------------------------------------
@frozen
class PaytureAnswer:
    """A Payture answer: the element's name and its attributes."""

    command: str
    attrs: dict

    @classmethod
    def of(cls, root) -> "PaytureAnswer":
        """The answer element's name and attributes (each value capped)."""
        return cls(root.tag, {str(k): str(v)[:256] for k, v in root.attrib.items()})

    @property
    def success(self) -> bool:
        return self.attrs.get("Success", "").strip().lower() == "true"

    def get(self, name: str) -> str | None:
        v = self.attrs.get(name)
        return v.strip() if isinstance(v, str) else None


def answer_element(body: bytes, commands: tuple[str, ...]):
    """
    The answer's root element, checked: HTML, garbage, another element or no
    ``Success`` -> L{PartnerProtocolError}.  (InPay and eWallet answer alike.)
    """
    root = parse_untrusted_xml(body)
    if root is None:
        raise PartnerProtocolError(PARTNER, f"{commands[0]}: not XML (or XML with a DTD)")
    if not isinstance(root.tag, str) or root.tag not in commands:
        raise PartnerProtocolError(PARTNER, f"{commands[0]}: unexpected answer element")
    if root.get("Success") is None:
        raise PartnerProtocolError(PARTNER, f"{commands[0]}: answer without Success")
    return root


def parse_answer(body: bytes, commands: tuple[str, ...]) -> PaytureAnswer:
    """The answer element as a L{PaytureAnswer}."""
    return PaytureAnswer.of(answer_element(body, commands))


@frozen
class State:
    """What GetState says about an order."""

    success: bool
    order_id: str | None
    state: str | None
    amount_kop: int | None
    err_code: str | None

    @classmethod
    def from_answer(cls, answer: PaytureAnswer) -> "State":
        amount = answer.get("Amount")
        return cls(
            success=answer.success,
            order_id=answer.get("OrderId"),
            state=answer.get("State"),
            amount_kop=int(amount) if amount is not None and amount.isdigit() else None,
            err_code=answer.get("ErrCode"),
        )


@frozen
class Notification:
    notification: str
    order_id: str
    success: bool
    amount_kop: int | None
    err_code: str | None
    merchant_contract: str | None

    @property
    def claims_payment(self) -> bool:
        return self.success and self.notification in PAY_NOTIFICATIONS


class BadNotification(ValueError):
    pass


def parse_notification(form: dict[str, str]) -> Notification:
    """A notification from its form fields; L{BadNotification} when it is not one."""
    kind = (form.get("Notification") or "").strip()
    order_id = (form.get("OrderId") or "").strip()
    if not _NAME_RE.match(kind):
        raise BadNotification("Notification is missing or malformed")
    if not _ORDER_ID_RE.match(order_id):
        raise BadNotification("OrderId is missing or malformed")
    amount = (form.get("Amount") or "").strip()
    if amount and not (amount.isdigit() and len(amount) <= 15):
        raise BadNotification("Amount is not a number of kopecks")
    err = (form.get("ErrCode") or "").strip()[:64] or None
    contract = (form.get("MerchantContract") or "").strip()[:64] or None
    return Notification(
        notification=kind,
        order_id=order_id,
        success=(form.get("Success") or "").strip().lower() == "true",
        amount_kop=int(amount) if amount else None,
        err_code=err,
        merchant_contract=contract,
    )


# -- the client -------------------------------------------------------------------------------------
@define
class PaytureClient:
    http: PartnerHTTP
    host: str
    key: str = field(repr=False)
    status_path: str = "/apim/GetState"

    async def get_state(self, order_id: str) -> State:
        response = await self.http.request(
            "POST", self.host + self.status_path,
            data=[("Key", self.key), ("OrderId", order_id)],
        )
        return State.from_answer(parse_answer(response.body, ("GetState", "PayStatus")))

    async def init(self, order_id: str, amount_kop: int, ip: str, url: str | None = None,
                   session_type: str = "Pay", template: str = "") -> str:
        """
        Open a payment session; its SessionId (L{PartnerRefused} with Payture's
        ErrCode).  ``template``: the page's TemplateTag ("" -- Payture's
        default template -- sends none).
        """
        data = [f"SessionType={session_type}", f"OrderId={order_id}",
                f"Amount={amount_kop}", f"IP={ip}"]
        if template:
            data.append(f"TemplateTag={template}")
        if url:
            data.append(f"Url={url}")
        response = await self.http.request(
            "POST", self.host + "/apim/Init",
            data=[("Key", self.key), ("Data", ";".join(data))],
        )
        answer = parse_answer(response.body, ("Init",))
        if not answer.success:
            code = answer.get("ErrCode") or "UNKNOWN"
            raise PartnerRefused(PARTNER, f"Init refused: {code}", code=code)
        session = answer.get("SessionId")
        if not session:
            raise PartnerProtocolError(PARTNER, "Init: no SessionId")
        return session

    def pay_url(self, session_id: str) -> str:
        return f"{self.host}/apim/Pay?{urlencode({'SessionId': session_id})}"


# -- our side -----------------------------------------------------------------------------------------
@frozen
class Handled:
    """What became of a notification: the HTTP answer and the outcome recorded."""

    code: int
    outcome: str
    body: bytes = b"OK"


async def _record(tx: Tx, n: Notification, outcome: str, state: State | None) -> None:
    await tx.execute(
        "INSERT INTO payture_notifications (order_number, notification, success, amount_kop,"
        " err_code, outcome, gateway_state) VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (n.order_id, n.notification, n.success, n.amount_kop, n.err_code, outcome,
         state.state if state else None),
    )


class CardsUnavailable(ValueError):
    """Card binding asked for, but the eWallet Add merchant is not configured."""


def binds_card(mode: str, requested: bool | None) -> bool:
    """
    Whether a payment binds its card: ``[payture] remember_card`` and the
    customer's tick (None: not given, the box's default stands).
    """
    if mode == "disable":  # hidden and always on
        return True
    if requested is None:
        return mode == "checked"
    return requested


@define
class PaytureService:
    db: Database
    client: PaytureClient
    metrics: Any = None
    hooks: list = field(factory=list)
    template: str = "Payture"
    remember_card: str = "not_checked"
    # smartyd.gateways.wallet.Wallet (card binding; None without the Add
    # merchant) and smartyd.gateways.autopay.Autopay (the charging job's hook).
    wallet: Any = None
    autopay: Any = None

    async def create_order(self, account_id: int, amount: object, ip: str,
                           return_url: str | None = None, *, remember: bool | None = None,
                           template: str | None = None) -> tuple[orders.Order, str]:
        """
        An order and its payment page: an eWallet page that binds the card
        when L{binds_card} says so, else the InPay page; in ``template`` (or
        the configured one).
        """
        template = self.template if template is None else template
        bind = binds_card(self.remember_card, remember)
        if bind and self.wallet is None:
            raise CardsUnavailable("card binding is not configured ([payture] merchant_add_key)")
        order = await self.db.run(orders.create, PARTNER, account_id, amount)
        if bind:
            url = await self.wallet.pay_session(account_id, order.order_number,
                                                kopecks(order.amount), ip, template, return_url)
        else:
            session = await self.client.init(order.order_number, kopecks(order.amount), ip,
                                             return_url, template=template)
            url = self.client.pay_url(session)
        log.info("Payture order {order} for {amount} to account {account}",
                 order=order.order_number, amount=order.amount, account=account_id,
                 provider=PARTNER, binds_card=bind, template=template)
        return order, url

    async def handle(self, n: Notification) -> Handled:
        """Deal with one notification; never raises (503 when it should be retried)."""
        try:
            return await self._handle(n)
        except DatabaseUnavailable as e:
            log.warn("Payture notification for order {order} not processed: database"
                     " unavailable ({error})", order=n.order_id, error=str(e),
                     provider=PARTNER, reason="db_unavailable")
            return Handled(503, "db_unavailable", b"RETRY")

    async def _handle(self, n: Notification) -> Handled:
        order = await self.db.run(orders.get, PARTNER, n.order_id)
        if order is None:
            events.count(self.metrics, PARTNER, "unknown_order")
            log.warn("Payture notification {notification} for order {order}, which is not"
                     " ours: ignored", notification=n.notification, order=n.order_id,
                     provider=PARTNER, reason="unknown_order")
            return Handled(200, "unknown_order")
        if not n.claims_payment:
            await self.db.run(_record, n, "noted", None)
            log.info("Payture notification {notification} (Success={success}) for order"
                     " {order}: noted", notification=n.notification, success=n.success,
                     order=n.order_id, err_code=n.err_code, provider=PARTNER)
            return Handled(200, "noted")
        if order.credited:
            await self.db.run(_record, n, "duplicate", None)
            return Handled(200, "duplicate")
        want = kopecks(order.amount)
        if n.amount_kop is not None and n.amount_kop != want:
            await self.db.run(_record, n, "amount_mismatch", None)
            events.count(self.metrics, PARTNER, "amount_mismatch")
            log.error("Payture notification for order {order} claims {claimed} kopecks, the"
                      " order is {want}: NOT credited", order=n.order_id,
                      claimed=n.amount_kop, want=want, account=order.account_id,
                      provider=PARTNER, reason="amount_mismatch")
            return Handled(200, "amount_mismatch")
        return await self.verify_and_credit(order.order_number, n)

    async def verify_and_credit(self, number: str, n: Notification | None = None) -> Handled:
        """Ask GetState; credit the order if Payture says Charged for exactly its amount."""
        try:
            state = await self.client.get_state(number)
        except PartnerError as e:
            events.count(self.metrics, PARTNER, "gateway_error")
            log.warn("Payture GetState for order {order} failed: {error}; not credited, the"
                     " notification should be retried", order=number, error=e.message,
                     provider=PARTNER, reason="gateway_error")
            return Handled(503, "gateway_error", b"RETRY")
        handled, credited = await self.db.run(self._apply, number, state, n)
        if credited is not None:
            events.credited(self.metrics, PARTNER, credited)
            if self.wallet is not None:
                await self.wallet.after_credit(number)
        return handled

    async def _apply(self, tx: Tx, number: str, state: State, n: Notification | None):
        order = await orders.get(tx, PARTNER, number, lock=True)
        outcome, handled = self._judge(order, state)
        credited = None
        if outcome == "credited":
            order, payment, created = await orders.credit(
                tx, order, self.hooks,
                details={"state": state.state, "notification": n.notification if n else None},
                gateway_status=state.state,
            )
            if created:
                log.info("credited {amount} to account {account}: Payture order {order}"
                         " Charged", amount=order.amount, account=order.account_id,
                         order=number, provider=PARTNER, payment=payment.id)
                credited = order.amount
            else:
                outcome, handled = "duplicate", Handled(200, "duplicate")
        elif not order.credited:
            status = ("declined" if state.state in DECLINED else
                      "reversed" if state.state in REVERSED else
                      "mismatch" if outcome == "amount_mismatch" else None)
            if status is not None and (order.status, order.gateway_status) != (status,
                                                                                state.state):
                await orders.set_state(tx, order, status, state.state)
        if n is not None:
            await _record(tx, n, outcome, state)
        return handled, credited

    def _judge(self, order: orders.Order, state: State) -> tuple[str, Handled]:
        number = order.order_number
        if order.credited:
            return "duplicate", Handled(200, "duplicate")
        if not state.success and state.err_code != ORDER_NOT_FOUND:
            events.count(self.metrics, PARTNER, "gateway_error")
            log.error("Payture GetState for order {order} refused with ErrCode {err_code}:"
                      " not credited, the notification should be retried; check [payture]"
                      " keys and that Payture admits our address", order=number,
                      err_code=state.err_code, provider=PARTNER, reason="state_refused")
            return "gateway_error", Handled(503, "gateway_error", b"RETRY")
        if state.success and state.order_id != number:
            # Payture's answer is about another order (a mixed-up answer, a
            # proxy's cache): it confirms nothing about ours.
            events.count(self.metrics, PARTNER, "forged")
            log.error("Payture answered GetState for order {order} with order"
                      " {answered_order}: NOT credited, an operator must look", order=number,
                      answered_order=state.order_id, provider=PARTNER, reason="forged")
            return "forged", Handled(200, "forged")
        if not state.success:
            events.count(self.metrics, PARTNER, "forged")
            log.warn("Payture does not confirm order {order} (ErrCode {err_code}): a forged"
                     " or stale notification, not credited", order=number,
                     err_code=state.err_code, provider=PARTNER, reason="forged")
            return "forged", Handled(200, "forged")
        if state.state != CHARGED:
            events.count(self.metrics, PARTNER, "not_charged")
            retry = state.state in IN_PROGRESS
            log.warn("Payture says order {order} is {state}, not Charged: not credited",
                     order=number, state=state.state, provider=PARTNER,
                     reason="not_charged", retry=retry)
            if retry:
                return "in_progress", Handled(503, "in_progress", b"RETRY")
            return "not_charged", Handled(200, "not_charged")
        if state.amount_kop != kopecks(order.amount):
            events.count(self.metrics, PARTNER, "amount_mismatch")
            log.error("Payture charged {charged} kopecks for order {order} of {want}: NOT"
                      " credited, an operator must look", charged=state.amount_kop,
                      order=number, want=kopecks(order.amount), account=order.account_id,
                      provider=PARTNER, reason="amount_mismatch")
            return "amount_mismatch", Handled(200, "amount_mismatch")
        return "credited", Handled(200, "credited")
