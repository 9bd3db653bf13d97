"""
A fake Payture InPay gateway (Klein, in-process) in its wire format.

  POST /apim/Init       Key, Data="SessionType=Pay;OrderId=..;Amount=..;IP=.."
                        -> <Init Success="True" OrderId Amount SessionId/>;
                        ErrCode ACCESS_DENIED (wrong Key), DUPLICATE_ORDER_ID, WRONG_PARAMS
  POST /apim/GetState   Key, OrderId -> <GetState Success="True" OrderId State Forwarded
  POST /apim/PayStatus    MerchantContract Amount RRN/>; unknown order ->
  POST /api/GetState      Success="False" ErrCode="ORDER_NOT_FOUND"

Knobs: ``modes`` (a queue: "500", "hang", "html", "garbage", "wrong-element"),
``gets`` (GetState calls per order).  L{notification} builds the form Payture posts.
"""

from __future__ import annotations

import uuid
from collections import Counter
from xml.sax.saxutils import quoteattr

from klein import Klein
from treq.testing import StubTreq
from twisted.internet import defer, reactor

from fakes.assist import HTML_PAGE, in_memory_client, sized


def _arg(request, name: str) -> str:
    values = request.args.get(name.encode())
    return values[0].decode("utf-8") if values else ""


def _element(name: str, **attrs) -> bytes:
    text = " ".join(f"{k}={quoteattr(str(v))}" for k, v in attrs.items())
    return f"<{name} {text}/>".encode("utf-8")


class FakePayture:
    app = Klein()

    def __init__(self, key: str = "MerchantPay", contract: str = "Merchant"):
        self.key = key
        self.contract = contract
        self.payments: dict[str, dict] = {}
        self.sessions: dict[str, str] = {}
        self.modes: list[str] = []
        self.gets: Counter = Counter()
        self.requests: list[str] = []
        self.hung: list[defer.Deferred] = []
        self._arrivals: list[defer.Deferred] = []

    def client(self) -> StubTreq:
        return in_memory_client(self.app.resource())

    # -- for the tests ------------------------------------------------------------------------
    def register(self, order_id: str, amount_kop: int, state: str = "New") -> None:
        self.payments[order_id] = {"amount": amount_kop, "state": state}

    def set_state(self, order_id: str, state: str, amount_kop: int | None = None) -> None:
        payment = self.payments.setdefault(order_id, {"amount": amount_kop or 0})
        payment["state"] = state
        if amount_kop is not None:
            payment["amount"] = amount_kop

    def notification(self, order_id: str, amount_kop: int | None = None,
                     kind: str = "EngineChargeSuccess", success: bool = True) -> dict:
        """The form Payture posts to the merchant's notification URL."""
        payment = self.payments.get(order_id, {"amount": 0})
        return {
            "Notification": kind, "MerchantContract": self.contract,
            "Success": "True" if success else "False",
            "TransactionDate": "08.05.2019 15:36:27", "ErrCode": "NONE" if success
            else "ISSUER_FAIL", "OrderId": order_id,
            "Amount": str(payment["amount"] if amount_kop is None else amount_kop),
            "MerchantId": "1", "Is3DS": "False", "ForwardedTo": "NotForwarded",
        }

    def arrival(self) -> defer.Deferred:
        d = defer.Deferred()
        self._arrivals.append(d)
        return d

    def _arrived(self, path: str) -> str:
        self.requests.append(path)
        waiters, self._arrivals = self._arrivals, []
        for d in waiters:
            reactor.callLater(0, d.callback, path)
        return self.modes.pop(0) if self.modes else "ok"

    def _fault(self, request, mode: str):
        if mode == "500":
            request.setResponseCode(503)
            return b"<html><body>503 Service Unavailable</body></html>"
        if mode == "hang":
            d = defer.Deferred(lambda _: None)
            self.hung.append(d)
            return d
        if mode == "html":
            request.setHeader(b"content-type", b"text/html")
            return HTML_PAGE
        if mode == "garbage":
            return b"\x00\x01<GetState Success=\"True\" State=\"Charged\""
        if mode == "wrong-element":
            return _element("Pay", Success="True", OrderId="x", State="Charged")
        return None

    # -- the API ---------------------------------------------------------------------------------
    @app.route("/apim/Init", methods=["POST"])
    @sized
    def init(self, request):
        fault = self._fault(request, self._arrived("/apim/Init"))
        if fault is not None:
            return fault
        request.setHeader(b"content-type", b"text/xml")
        if _arg(request, "Key") != self.key:
            return _element("Init", Success="False", ErrCode="ACCESS_DENIED")
        data = dict(p.split("=", 1) for p in _arg(request, "Data").split(";") if "=" in p)
        order_id, amount = data.get("OrderId", ""), data.get("Amount", "")
        if data.get("SessionType") not in ("Pay", "Block") or not order_id \
                or not amount.isdigit() or not data.get("IP"):
            return _element("Init", Success="False", OrderId=order_id, ErrCode="WRONG_PARAMS")
        if order_id in self.payments:
            return _element("Init", Success="False", OrderId=order_id,
                            ErrCode="DUPLICATE_ORDER_ID")
        self.register(order_id, int(amount))
        session = str(uuid.uuid4())
        self.sessions[session] = order_id
        return _element("Init", Success="True", OrderId=order_id, Amount=amount,
                        SessionId=session)

    @app.route("/apim/GetState", methods=["POST"], endpoint="get_state")
    @app.route("/api/GetState", methods=["POST"], endpoint="get_state_api")
    @sized
    def get_state(self, request):
        return self._state(request, "GetState")

    @app.route("/apim/PayStatus", methods=["POST"])
    @sized
    def pay_status(self, request):
        return self._state(request, "PayStatus")

    def _state(self, request, element: str):
        fault = self._fault(request, self._arrived(request.path.decode()))
        if fault is not None:
            return fault
        request.setHeader(b"content-type", b"text/xml")
        order_id = _arg(request, "OrderId")
        self.gets[order_id] += 1
        if _arg(request, "Key") != self.key:
            return _element(element, Success="False", OrderId=order_id, State="",
                            Forwarded="False", ErrCode="ACCESS_DENIED")
        payment = self.payments.get(order_id)
        if payment is None:
            return _element(element, Success="False", OrderId=order_id, State="",
                            Forwarded="False", ErrCode="ORDER_NOT_FOUND")
        return _element(element, Success="True", OrderId=order_id, State=payment["state"],
                        Forwarded="False", MerchantContract=self.contract,
                        Amount=str(payment["amount"]), RRN="003770024290")
