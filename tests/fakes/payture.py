"""
A fake Payture InPay gateway (Klein, in-process) in its wire format.

  POST /apim/Init       Key, Data="SessionType=Pay;OrderId=..;Amount=..;IP=.."
                        -> <Init Success="True" OrderId Amount SessionId/>;
                        ErrCode ACCESS_DENIED (wrong Key), DUPLICATE_ORDER_ID, WRONG_PARAMS
  POST /apim/GetState   Key, OrderId -> <GetState Success="True" OrderId State Forwarded
  POST /apim/PayStatus    MerchantContract Amount RRN/>; unknown order ->
  POST /api/GetState      Success="False" ErrCode="ORDER_NOT_FOUND"

eWallet (``/vwapi/<Command>``, form ``VWID`` + ``DATA="k=v;k=v"``; users and
cards on the Add terminal, payments on the Pay terminal):

  Register / Check      VWUserLgn, VWUserPsw -> <Register Success VWUserLgn/>
                        (DUPLICATE_USER) / <Check Success/> (USER_NOT_FOUND)
  Init                  SessionType=Pay;VWUserLgn;VWUserPsw;OrderId;Amount;IP[;TemplateTag]
                        -> <Init Success SessionId/>; the page binds the card paid with
  GetList               -> <GetList Success VWUserLgn><Item CardName CardId CardHolder
                        Status NoCVV Expired/>...</GetList>
  Remove                CardId -> <Remove Success VWUserLgn CardId/> (WRONG_CARD_INFO)
  Pay (recurring)       VWUserLgn;VWUserPsw;CardId;OrderId;Amount -> <Pay Success OrderId
                        Amount/>; declined -> Success="False" ErrCode, the order Rejected;
                        a known OrderId -> DUPLICATE_ORDER_ID (never charged twice)

Knobs: ``modes`` (a queue: "500", "hang", "html", "garbage", "wrong-element"),
``gets`` (GetState calls per order), ``state_errors`` (GetState refusals to answer
first, a queue of ErrCodes), ``answers_for`` (GetState asked about one order
answers about another), ``declines`` (Pay ErrCodes to answer, a
queue).  L{notification} builds the form Payture posts; L{pay_on_page} is
the customer paying on the page of a session.
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

    def __init__(self, key: str = "MerchantPay", contract: str = "Merchant",
                 add_key: str = "MerchantAdd"):
        self.key = key
        self.add_key = add_key
        self.users: dict[str, dict] = {}  # login -> {"password", "cards": {id: item}}
        self.inits: list[dict] = []  # every Init's Data / DATA, with "path"
        self.charges: list[dict] = []  # recurring Pays that charged a card
        self.declines: list[str] = []
        # GetState refusals to answer first, a queue: an ErrCode (API_NOT_ALLOWED: our IP is
        # not on Payture's list; INTERNAL_ERROR; ...) or None for Success="False" without one.
        self.state_errors: list[str | None] = []
        self.wallet_sessions: dict[str, tuple[str, str]] = {}  # session -> (order, login)
        self.contract = contract
        self.payments: dict[str, dict] = {}
        self.sessions: dict[str, str] = {}
        self.modes: list[str] = []
        self.gets: Counter = Counter()
        # GetState for the key's order answered about the value's (mixed up).
        self.answers_for: dict[str, str] = {}
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
        self.inits.append({"path": "/apim/Init", **data})
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
        if self.state_errors:
            code = self.state_errors.pop(0)
            extra = {} if code is None else {"ErrCode": code}
            return _element(element, Success="False", OrderId=order_id, **extra)
        if _arg(request, "Key") != self.key:
            return _element(element, Success="False", OrderId=order_id, State="",
                            Forwarded="False", ErrCode="ACCESS_DENIED")
        order_id = self.answers_for.get(order_id, order_id)
        payment = self.payments.get(order_id)
        if payment is None:
            return _element(element, Success="False", OrderId=order_id, State="",
                            Forwarded="False", ErrCode="ORDER_NOT_FOUND")
        return _element(element, Success="True", OrderId=order_id, State=payment["state"],
                        Forwarded="False", MerchantContract=self.contract,
                        Amount=str(payment["amount"]), RRN="003770024290")

    # -- eWallet ---------------------------------------------------------------------------------
    def add_card(self, login: str, number: str = "4111111111111112", holder: str = "IVAN IVANOV",
                 expired: bool = False) -> str:
        """A card bound to ``login`` (as the page does); its CardId."""
        card_id = str(uuid.uuid4())
        self.users[login]["cards"][card_id] = {
            "CardName": number[:6] + "x" * (len(number) - 10) + number[-4:],
            "CardId": card_id, "CardHolder": holder, "Status": "IsActive",
            "NoCVV": "false", "Expired": "true" if expired else "false"}
        return card_id

    def pay_on_page(self, session_id: str, number: str = "4111111111111112") -> str:
        """The customer pays on the page of ``session_id``; the order id."""
        if session_id in self.wallet_sessions:
            order_id, login = self.wallet_sessions[session_id]
            self.add_card(login, number)
        else:
            order_id = self.sessions[session_id]
        self.payments[order_id]["state"] = "Charged"
        return order_id

    @staticmethod
    def _data(request) -> dict:
        return dict(p.split("=", 1) for p in _arg(request, "DATA").split(";") if "=" in p)

    def _wallet(self, request, command: str, terminal: str):
        fault = self._fault(request, self._arrived(f"/vwapi/{command}"))
        if fault is not None:
            return None, None, fault
        request.setHeader(b"content-type", b"text/xml")
        if _arg(request, "VWID") != terminal:
            return None, None, _element(command, Success="False", ErrCode="ACCESS_DENIED")
        data = self._data(request)
        return data, self.users.get(data.get("VWUserLgn", "")), None

    def _authorised(self, user, data) -> bool:
        return user is not None and user["password"] == data.get("VWUserPsw")

    @app.route("/vwapi/Register", methods=["POST"])
    @sized
    def vw_register(self, request):
        data, user, fault = self._wallet(request, "Register", self.add_key)
        if fault is not None:
            return fault
        login = data.get("VWUserLgn", "")
        if user is not None:
            return _element("Register", Success="False", VWUserLgn=login,
                            ErrCode="DUPLICATE_USER")
        if not login or not data.get("VWUserPsw"):
            return _element("Register", Success="False", ErrCode="WRONG_PARAMS")
        self.users[login] = {"password": data["VWUserPsw"], "cards": {}}
        return _element("Register", Success="True", VWUserLgn=login)

    @app.route("/vwapi/Check", methods=["POST"])
    @sized
    def vw_check(self, request):
        data, user, fault = self._wallet(request, "Check", self.add_key)
        if fault is not None:
            return fault
        if not self._authorised(user, data):
            return _element("Check", Success="False", ErrCode="USER_NOT_FOUND")
        return _element("Check", Success="True", VWUserLgn=data["VWUserLgn"])

    @app.route("/vwapi/Init", methods=["POST"])
    @sized
    def vw_init(self, request):
        data, user, fault = self._wallet(request, "Init", self.key)
        if fault is not None:
            return fault
        self.inits.append({"path": "/vwapi/Init", **data})
        order_id, amount = data.get("OrderId", ""), data.get("Amount", "")
        if not self._authorised(user, data):
            return _element("Init", Success="False", ErrCode="USER_NOT_FOUND")
        if data.get("SessionType") != "Pay" or not order_id or not amount.isdigit() \
                or not data.get("IP"):
            return _element("Init", Success="False", ErrCode="WRONG_PARAMS")
        if order_id in self.payments:
            return _element("Init", Success="False", ErrCode="DUPLICATE_ORDER_ID")
        self.register(order_id, int(amount))
        session = str(uuid.uuid4())
        self.wallet_sessions[session] = (order_id, data["VWUserLgn"])
        return _element("Init", Success="True", OrderId=order_id, Amount=amount,
                        SessionId=session)

    @app.route("/vwapi/GetList", methods=["POST"])
    @sized
    def vw_get_list(self, request):
        data, user, fault = self._wallet(request, "GetList", self.add_key)
        if fault is not None:
            return fault
        if not self._authorised(user, data):
            return _element("GetList", Success="False", ErrCode="USER_NOT_FOUND")
        items = b"".join(_element("Item", **card) for card in user["cards"].values()
                         if card["Expired"] == "false")
        head = _element("GetList", Success="True", VWUserLgn=data["VWUserLgn"])[:-2] + b">"
        return head + items + b"</GetList>"

    @app.route("/vwapi/Remove", methods=["POST"])
    @sized
    def vw_remove(self, request):
        data, user, fault = self._wallet(request, "Remove", self.add_key)
        if fault is not None:
            return fault
        card_id = data.get("CardId", "")
        if not self._authorised(user, data) or card_id not in user["cards"]:
            return _element("Remove", Success="False", ErrCode="WRONG_CARD_INFO")
        del user["cards"][card_id]
        return _element("Remove", Success="True", VWUserLgn=data["VWUserLgn"], CardId=card_id)

    @app.route("/vwapi/Pay", methods=["POST"])
    @sized
    def vw_pay(self, request):
        data, user, fault = self._wallet(request, "Pay", self.key)
        if fault is not None:
            return fault
        order_id, amount = data.get("OrderId", ""), data.get("Amount", "")
        if not self._authorised(user, data) or data.get("CardId") not in user["cards"]:
            return _element("Pay", Success="False", OrderId=order_id, ErrCode="WRONG_CARD_INFO")
        if not order_id or not amount.isdigit():
            return _element("Pay", Success="False", OrderId=order_id, ErrCode="WRONG_PARAMS")
        if order_id in self.payments:
            return _element("Pay", Success="False", OrderId=order_id,
                            ErrCode="DUPLICATE_ORDER_ID")
        if self.declines:
            self.register(order_id, int(amount), "Rejected")
            return _element("Pay", Success="False", OrderId=order_id,
                            ErrCode=self.declines.pop(0))
        self.register(order_id, int(amount), "Charged")
        self.charges.append({"order": order_id, "amount": int(amount),
                             "card": data["CardId"], "login": data["VWUserLgn"]})
        return _element("Pay", Success="True", OrderId=order_id, Amount=amount)
