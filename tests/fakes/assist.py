"""
A fake ASSIST gateway (Klein, in-process), both generations, in their wire formats.

Legacy (``secure.assist.ru``):
  POST /results/results.cfm     Shop_ID, Login, PASSWORD, Header1=1 -> ``;``-separated
                                CSV, cp1251, CRLF, header row, every bill; ``UNKNOWN``
                                for unknown values; wrong credentials -> an ERROR line
  POST /postauths/postauth.cfm  Billnumber of a Preauthorized bill -> a new Captured bill,
                                one ``name:value;`` line; else ``ERROR:AS400;``
  POST /rvr/rvr.cfm             Billnumber -> a new Voided (of Preauthorized) or Refunded
                                bill; else ``ERROR:AS400;``
Current (``payments.paysecure.ru``):
  POST /orderstate/orderstate.cfm  Ordernumber, Merchant_ID, Login, Password, Format=3 ->
                                ``<result firstcode="0" secondcode="0" count=".."><order>..``;
                                no such order -> firstcode 5 / secondcode 104 (the fake's pick:
                                the public docs do not list the codes); bad login -> 5/103
  POST /charge/charge.cfm       Billnumber of a Delayed bill -> it becomes Approved
  POST /cancel/wscancel.cfm     Billnumber -> Canceled

Result pushes (what the gateway POSTs to the shop): L{FakeAssist.legacy_push} -- the
urlencoded form in cp1251 with ``Shop_IDP, OrderNumber, Total, Currency, Status, BillNumber,
PacketDate, ..., CheckValue = MD5(Shop_IDP+OrderNumber+Total+Currency+secret)`` upper-case
hex --, L{FakeAssist.current_push} -- lower-case names in UTF-8, ``checkvalue =
UPPER(MD5(UPPER(MD5(secret)+MD5(merchant_id+ordernumber+orderamount+ordercurrency+orderstate))))``.

Knobs: ``declares_dtd`` (True: every XML answer opens with the internal DTD subset of
element and attribute declarations that the real paysecure gateway sends -- public
clients' recorded answers, e.g. chumakoff/assist-ecommerce-sdk-ruby
spec/fixtures/order_status_ok.xml), ``modes`` (a queue of "500", "hang" -- never answers --, "html", "garbage",
"empty"; each request takes one), ``credentials``.  ``requests`` lists the paths asked.
L{in_memory_client} is a StubTreq that pumps answers given later.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import itertools
from decimal import Decimal
from urllib.parse import urlencode
from xml.sax.saxutils import escape

from klein import Klein
from treq.testing import StubTreq
from twisted.internet import defer, reactor

from fakes import in_memory_client  # noqa: F401  (re-exported for the tests)

LEGACY_COLUMNS = (
    "Order Number", "Result Code", "Recommendation", "Message", "Comment", "Order Date",
    "Order Total", "Currency Code", "Card Type", "Card Number", "Lastname", "Firstname",
    "Middlename", "Address", "E-mail", "Country Code", "Currency rate", "Approval Code",
    "Mean Subtype", "CVC2 Exist", "Cardholder", "IP-address", "Protocol Type", "Payment No.",
    "Bank issuer", "Order State", "Processing System Response Code",
    "Processing System Response Code Description", "Paket date", "Processing System Name",
    "Payment Type",
)

HTML_PAGE = (b"<!DOCTYPE html><html><head><title>Service temporarily unavailable</title>"
             b"</head><body><h1>\xd0\xe0\xe1\xee\xf2\xfb</h1></body></html>")

# What the real gateway puts before every XML answer: declarations only, no entities.
ORDERSTATE_DTD = (
    "\n<!DOCTYPE result [\n<!ATTLIST result\n firstcode CDATA #REQUIRED\n"
    " secondcode CDATA #REQUIRED\n count CDATA #REQUIRED>\n"
    "<!ELEMENT result (orders?)>\n<!ELEMENT orders (order*)>\n"
    "<!ELEMENT order (ordernumber?,billnumber?,orderstate?,orderamount?,ordercurrency?,"
    "orderdate?,packetdate?,responsecode?,message?,ordercomment?,meantypename?,"
    "meannumber?)>\n<!ELEMENT ordernumber (#PCDATA)>\n<!ELEMENT billnumber (#PCDATA)>\n"
    "<!ELEMENT orderstate (#PCDATA)>\n<!ELEMENT orderamount (#PCDATA)>]>\n"
)


def sized(handler):
    """
    Answer with a Content-Length, as the real gateways do.  (PartnerHTTP reads
    chunked answers as well: tests/test_partners.py.)
    """
    @functools.wraps(handler)
    def wrapper(self, request, *args, **kwargs):
        result = handler(self, request, *args, **kwargs)
        if isinstance(result, bytes):
            request.setHeader(b"content-length", str(len(result)).encode())
        return result

    return wrapper


def _arg(request, name: str) -> str:
    values = request.args.get(name.encode())
    return values[0].decode("utf-8") if values else ""


class FakeAssist:
    app = Klein()

    def __init__(self, shop_id="111111", login="shoplogin", password="shoppass1"):
        self.credentials = (shop_id, login, password)
        self.declares_dtd = False
        self.bills: list[dict] = []
        self.modes: list[str] = []
        self.requests: list[str] = []
        self.hung: list[defer.Deferred] = []
        self._arrivals: list[defer.Deferred] = []
        self._bill_numbers = itertools.count(5431001)
        self.now = datetime.datetime(2026, 11, 20, 12, 0, 0)

    def client(self) -> StubTreq:
        return in_memory_client(self.app.resource())

    # -- what tests set up and look at ---------------------------------------------------------
    def pay(self, order_number: str, amount, state: str = "Authorized",
            currency: str = "RUB", date="now", comment: str = "") -> dict:
        """A payer's attempt on ``order_number``: a new bill in ``state`` (date None: UNKNOWN)."""
        self.now += datetime.timedelta(minutes=1)
        bill = {
            "bill": str(next(self._bill_numbers)), "order": order_number, "state": state,
            "amount": Decimal(str(amount)), "currency": currency,
            "date": self.now if date == "now" else date, "comment": comment,
            "type": "2" if state.lower().endswith("preauthorized") else "1",
        }
        self.bills.append(bill)
        return bill

    def bills_of(self, order_number: str) -> list[dict]:
        return [b for b in self.bills if b["order"] == order_number]

    def arrival(self) -> defer.Deferred:
        """Fires (next reactor turn) when the next request arrives."""
        d = defer.Deferred()
        self._arrivals.append(d)
        return d

    def release_hung(self) -> None:
        hung, self.hung = self.hung, []
        for d in hung:
            if not d.called:
                d.callback(b"")

    def _arrived(self, path: str) -> str:
        self.requests.append(path)
        waiters, self._arrivals = self._arrivals, []
        for d in waiters:
            reactor.callLater(0, d.callback, path)
        return self.modes.pop(0) if self.modes else "ok"

    def _fault(self, request, mode: str):
        """The answer for a fault mode, or None to answer normally."""
        if mode == "500":
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"text/html")
            return b"<html><body>500 Internal Server Error</body></html>"
        if mode == "hang":
            d = defer.Deferred(lambda _: None)
            self.hung.append(d)
            return d
        if mode == "html":
            request.setHeader(b"content-type", b"text/html; charset=windows-1251")
            return HTML_PAGE
        if mode == "garbage":
            request.setHeader(b"content-type", b"text/plain")
            return b"\x00\xff\xfe garbage \x00;;;\r\n\x00"
        if mode == "empty":
            return b""
        return None

    # -- result pushes ------------------------------------------------------------------------------
    @staticmethod
    def _md5(data: bytes) -> str:
        return hashlib.md5(data).hexdigest().upper()

    def legacy_push(self, bill: dict, secret: str, shop_id: str | None = None,
                    **over) -> bytes:
        """The legacy gateway's push about ``bill``: a urlencoded form body in cp1251."""
        shop = self.credentials[0] if shop_id is None else shop_id
        fields = {
            "Shop_IDP": shop, "OrderNumber": bill["order"],
            "Response_Code": "AS100" if bill["state"].lower().startswith("not") else "AS000",
            "Recommendation": "", "Message": "", "Comment": bill["comment"],
            "Date": self._fmt_date(bill["date"]), "Total": f"{bill['amount']:.2f}",
            "Currency": bill["currency"], "CardType": "VISA", "CardNumber": "411111******1111",
            "LastName": "Иванов", "FirstName": "Иван", "MiddleName": "Иванович",
            "Email": "ivan@example.ru", "Country": "RU", "ApprovalCode": "123456",
            "CardHolder": "IVAN IVANOV", "IPAddress": "192.0.2.7", "ProtocolTypeName": "NET",
            "BillNumber": bill["bill"], "BankName": "Сбербанк", "Status": bill["state"],
            "Error_Code": "", "Error_Comment": "", "ProcessingName": "Test",
            "PacketDate": self._fmt_date(self.now), "PaymentTransactionType_id": bill["type"],
        }
        fields.update(over)
        signed = "".join(fields[k] for k in ("Shop_IDP", "OrderNumber", "Total", "Currency"))
        fields.setdefault("CheckValue", self._md5((signed + secret).encode("cp1251")))
        return urlencode(fields, encoding="cp1251").encode("ascii")

    def current_push(self, bill: dict, secret: str, **over) -> bytes:
        """The current gateway's push about ``bill``: a urlencoded form body in UTF-8."""
        fields = {
            "merchant_id": self.credentials[0], "ordernumber": bill["order"],
            "billnumber": bill["bill"], "orderamount": f"{bill['amount']:.2f}",
            "ordercurrency": bill["currency"], "orderstate": bill["state"],
            "orderdate": self._fmt_date(bill["date"]), "packetdate": self._fmt_date(self.now),
            "responsecode": "AS000", "firstname": "Иван", "lastname": "Иванов",
        }
        fields.update(over)
        signed = "".join(fields[k] for k in ("merchant_id", "ordernumber", "orderamount",
                                             "ordercurrency", "orderstate"))
        inner = self._md5(secret.encode()) + self._md5(signed.encode("utf-8"))
        fields.setdefault("checkvalue", self._md5(inner.encode()))
        return urlencode(fields, encoding="utf-8").encode("ascii")

    # -- legacy --------------------------------------------------------------------------------------
    def _legacy_auth(self, request) -> bool:
        return (_arg(request, "Shop_ID"), _arg(request, "Login"),
                _arg(request, "PASSWORD")) == self.credentials

    @staticmethod
    def _fmt_date(d) -> str:
        return d.strftime("%d.%m.%Y %H:%M:%S") if d else "UNKNOWN"

    def legacy_report(self, header: bool = True) -> bytes:
        lines = [";".join(LEGACY_COLUMNS)] if header else []
        for b in self.bills:
            values = dict.fromkeys(LEGACY_COLUMNS, "UNKNOWN")
            values.update({
                "Order Number": b["order"], "Payment No.": b["bill"], "Order State": b["state"],
                "Order Total": f"{b['amount']:.2f}", "Currency Code": b["currency"],
                "Order Date": self._fmt_date(b["date"]),
                "Paket date": self._fmt_date(self.now),
                "Result Code": "AS000" if not b["state"].lower().startswith("not")
                else "AS100",
                "Comment": b["comment"] or "UNKNOWN", "Card Type": "VISA",
                "Card Number": "411111******1111", "Lastname": "Иванов",
                "Firstname": "Иван", "Payment Type": b["type"],
            })
            lines.append(";".join(values[c] for c in LEGACY_COLUMNS))
        return ("\r\n".join(lines) + "\r\n").encode("cp1251")

    @app.route("/results/results.cfm", methods=["POST"])
    @sized
    def results(self, request):
        fault = self._fault(request, self._arrived("/results/results.cfm"))
        if fault is not None:
            return fault
        request.setHeader(b"content-type", b"text/plain")
        if not self._legacy_auth(request):
            return b"ERROR:Authorization failed;"
        return self.legacy_report(header=_arg(request, "Header1") == "1")

    def _new_bill(self, of: dict, state: str, kind: str) -> dict:
        self.now += datetime.timedelta(minutes=1)
        bill = dict(of, bill=str(next(self._bill_numbers)), state=state, date=self.now,
                    type=kind)
        self.bills.append(bill)
        return bill

    def _bill(self, number: str) -> dict | None:
        for b in self.bills:
            if b["bill"] == number:
                return b
        return None

    @app.route("/postauths/postauth.cfm", methods=["POST"])
    @sized
    def postauth(self, request):
        fault = self._fault(request, self._arrived("/postauths/postauth.cfm"))
        if fault is not None:
            return fault
        request.setHeader(b"content-type", b"text/plain")
        if not self._legacy_auth(request):
            return b"ERROR:Authorization failed;"
        bill = self._bill(_arg(request, "Billnumber"))
        if bill is None or bill["state"] != "Preauthorized":
            return b"ERROR:AS400;"
        amount = Decimal(_arg(request, "Subtotal_P") or "0")
        if amount <= 0 or amount > bill["amount"]:
            return b"ERROR:AS101;"
        new = self._new_bill(dict(bill, amount=amount), "Captured", "3")
        return (f"Order Number:{new['order']};Payment No.:{new['bill']};"
                f"Order State:Captured;Result Code:AS000;").encode("cp1251")

    @app.route("/rvr/rvr.cfm", methods=["POST"])
    @sized
    def rvr(self, request):
        fault = self._fault(request, self._arrived("/rvr/rvr.cfm"))
        if fault is not None:
            return fault
        request.setHeader(b"content-type", b"text/plain")
        if not self._legacy_auth(request):
            return b"ERROR:Authorization failed;"
        bill = self._bill(_arg(request, "Billnumber"))
        if bill is None or bill["state"] not in ("Preauthorized", "Authorized", "Captured"):
            return b"ERROR:AS400;"
        if bill["state"] == "Preauthorized":
            new = self._new_bill(bill, "Voided", "7")
        else:
            new = self._new_bill(bill, "Refunded", "4")
        return (f"Order Number:{new['order']};Payment No.:{new['bill']};"
                f"Order State:{new['state']};Result Code:AS000;").encode("cp1251")

    # -- current ---------------------------------------------------------------------------------
    def _current_auth(self, request) -> bool:
        return (_arg(request, "Merchant_ID"), _arg(request, "Login"),
                _arg(request, "Password")) == self.credentials

    def _xml(self, request, bills: list[dict], first: str = "0", second: str = "0") -> bytes:
        request.setHeader(b"content-type", b"text/xml; charset=utf-8")
        orders = "".join(
            "<order>"
            f"<ordernumber>{escape(b['order'])}</ordernumber>"
            f"<billnumber>{escape(b['bill'])}</billnumber>"
            f"<orderstate>{escape(b['state'])}</orderstate>"
            f"<orderamount>{b['amount']:.2f}</orderamount>"
            f"<ordercurrency>{escape(b['currency'])}</ordercurrency>"
            f"<orderdate>{self._fmt_date(b['date'])}</orderdate>"
            f"<packetdate>{self._fmt_date(self.now)}</packetdate>"
            f"<responsecode>AS000</responsecode><message>ok</message>"
            f"<ordercomment>{escape(b['comment'])}</ordercomment>"
            "<meantypename>VISA</meantypename><meannumber>411111******1111</meannumber>"
            "</order>"
            for b in bills
        )
        dtd = ORDERSTATE_DTD if self.declares_dtd else ""
        return (f"<?xml version='1.0' encoding='utf-8' standalone='yes'?>{dtd}"
                f'<result firstcode="{first}" secondcode="{second}" count="{len(bills)}">'
                f"<orders>{orders}</orders></result>").encode("utf-8")

    @app.route("/orderstate/orderstate.cfm", methods=["POST"])
    @sized
    def orderstate(self, request):
        fault = self._fault(request, self._arrived("/orderstate/orderstate.cfm"))
        if fault is not None:
            return fault
        if not self._current_auth(request):
            return self._xml(request, [], "5", "103")
        bills = self.bills_of(_arg(request, "Ordernumber"))
        if not bills:
            return self._xml(request, [], "5", "104")
        return self._xml(request, bills)

    @app.route("/charge/charge.cfm", methods=["POST"])
    @sized
    def charge(self, request):
        fault = self._fault(request, self._arrived("/charge/charge.cfm"))
        if fault is not None:
            return fault
        if not self._current_auth(request):
            return self._xml(request, [], "5", "103")
        bill = self._bill(_arg(request, "Billnumber"))
        if bill is None or bill["state"] != "Delayed":
            return self._xml(request, [], "5", "104")
        bill["state"] = "Approved"
        self.now += datetime.timedelta(minutes=1)
        return self._xml(request, [bill])

    @app.route("/cancel/wscancel.cfm", methods=["POST"])
    @sized
    def cancel(self, request):
        fault = self._fault(request, self._arrived("/cancel/wscancel.cfm"))
        if fault is not None:
            return fault
        if not self._current_auth(request):
            return self._xml(request, [], "5", "103")
        bill = self._bill(_arg(request, "Billnumber"))
        if bill is None or bill["state"] not in ("Delayed", "Approved"):
            return self._xml(request, [], "5", "104")
        bill["state"] = "Canceled"
        return self._xml(request, [bill])
