"""
The ASSIST wire protocol and its client: pure parsing and formatting plus one
client per gateway generation behind L{IAssistGateway}.

Two generations (``[assist] generation``):

  - ``legacy`` (``test.assist.ru`` / ``secure.assist.ru``): payment form
    ``/shops/purchase.cfm`` (cp1251 pages); results report ``POST
    /results/results.cfm`` with ``Shop_ID, Login, PASSWORD, Header1=1`` ->
    ``;``-separated CSV with a header row covering about the last three days;
    charge ``/postauths/postauth.cfm`` and void/refund ``/rvr/rvr.cfm``
    (``Billnumber``, ``Format=1``) answering one ``name:value;...`` line,
    ``ERROR:...`` on failure.
  - ``current`` (``test.paysecure.ru`` / ``payments.paysecure.ru``): form
    ``/pay/order.cfm``; order state ``POST /orderstate/orderstate.cfm``
    (``Ordernumber, Merchant_ID, Login, Password, Format=3``) per order, charge
    ``/charge/charge.cfm``, cancel ``/cancel/wscancel.cfm``, all answering
    ``<result firstcode secondcode><order>...</order></result>``.

Either way a poll yields L{BillResult}s, one per bill number (ASSIST's
payment number), and L{actual_result} derives an order's actual status from
its bills: newest first, "in process" dropped, a positive status hides its
negative pair, the first left wins.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import hmac
import html
import io
import re
from decimal import Decimal, InvalidOperation
from typing import Iterable, Sequence
from urllib.parse import urlencode

from attrs import define, field, frozen
from twisted.logger import Logger
from zope.interface import Interface, implementer

from smartyd.gateways.untrusted_xml import parse_untrusted_xml
from smartyd.partners import PartnerHTTP, PartnerProtocolError, PartnerRefused

log = Logger()

PARTNER = "assist"


# -- generations -----------------------------------------------------------------------------
@frozen
class Generation:
    name: str
    test_server: str
    production_server: str
    form_path: str
    form_charset: str
    report_path: str
    charge_path: str
    cancel_path: str
    # Casefolded statuses: "in process" ones are ignored; a positive status
    # hides its negative pair(s); paid/blocked/reversed/declined classify the
    # actual status for our order.
    in_process: frozenset
    pairs: dict
    paid_single: frozenset
    paid_two_stage: frozenset
    blocked: frozenset
    held: frozenset  # the bill states that hold the amount: the bill to charge or void
    reversed: frozenset
    declined: frozenset
    keep: frozenset  # failed undo attempts etc.: record, change nothing


LEGACY = Generation(
    name="legacy",
    test_server="https://test.assist.ru",
    production_server="https://secure.assist.ru",
    form_path="/shops/purchase.cfm",
    form_charset="windows-1251",
    report_path="/results/results.cfm",
    charge_path="/postauths/postauth.cfm",
    cancel_path="/rvr/rvr.cfm",
    in_process=frozenset({"in process"}),
    pairs={
        "authorized": frozenset({"not authorized"}),
        "preauthorized": frozenset({"not preauthorized"}),
        "captured": frozenset({"not captured"}),
        "voided": frozenset({"not voided"}),
        "refunded": frozenset({"not refunded"}),
        "reversaled": frozenset({"not reversaled"}),
    },
    paid_single=frozenset({"authorized"}),
    paid_two_stage=frozenset({"captured"}),
    blocked=frozenset({"preauthorized", "not captured"}),
    held=frozenset({"preauthorized"}),
    reversed=frozenset({"voided", "refunded", "reversaled"}),
    declined=frozenset({"not authorized", "not preauthorized"}),
    keep=frozenset({"not voided", "not refunded", "not reversaled"}),
)

CURRENT = Generation(
    name="current",
    test_server="https://test.paysecure.ru",
    production_server="https://payments.paysecure.ru",
    form_path="/pay/order.cfm",
    form_charset="utf-8",
    report_path="/orderstate/orderstate.cfm",
    charge_path="/charge/charge.cfm",
    cancel_path="/cancel/wscancel.cfm",
    in_process=frozenset({"in process"}),
    # The current gateway keeps one state per order; when an order number has
    # several attempts, a success hides the failed or expired ones.
    pairs={
        "approved": frozenset({"declined", "timeout"}),
        "delayed": frozenset({"declined", "timeout"}),
    },
    paid_single=frozenset({"approved"}),
    paid_two_stage=frozenset({"approved"}),
    blocked=frozenset({"delayed"}),
    held=frozenset({"delayed"}),
    reversed=frozenset({"canceled"}),
    declined=frozenset({"declined", "timeout"}),
    keep=frozenset(),
)

GENERATIONS = {"legacy": LEGACY, "current": CURRENT}


def server_url(cfg) -> str:
    """The gateway's base URL: ``[assist] server`` when set, else test or production."""
    if cfg.server:
        return cfg.server.rstrip("/")
    gen = GENERATIONS[cfg.generation]
    return gen.test_server if cfg.test_mode else gen.production_server


# -- results -------------------------------------------------------------------------------
def norm_status(status: str) -> str:
    return " ".join(status.split()).casefold()


# The currency our orders are made in when they name none (the shop's).
DEFAULT_CURRENCY = "RUB"
# The legacy gateway (and many shops' forms for it) spell the rouble with its
# pre-1998 code RUR; both name the same money in ASSIST's answers.
_CURRENCY_ALIASES = {"RUR": "RUB"}


def norm_currency(currency: str | None) -> str | None:
    """``" rur "`` -> ``"RUB"``; None/empty -> None."""
    if currency is None:
        return None
    c = currency.strip().upper()
    return _CURRENCY_ALIASES.get(c, c) or None


@frozen
class BillResult:
    """One bill (ASSIST's payment number) of an order, as a poll reported it."""

    bill_number: str
    order_number: str
    status: str
    amount: Decimal | None = None
    currency: str | None = None
    order_date: datetime.datetime | None = None
    packet_date: datetime.datetime | None = None
    result_code: str | None = None
    details: dict = field(factory=dict)

    @property
    def state(self) -> str:
        return norm_status(self.status)


@frozen
class Report:
    rows: tuple[BillResult, ...]
    skipped: int = 0  # rows without a usable bill, order or state
    refused: int = 0  # orders the gateway gave no state for (current generation)


_BILL_RE = re.compile(r"^[0-9A-Za-z._-]{1,64}$")
_PRINTABLE_RE = re.compile(r"^[^\x00-\x1f\x7f]+$")
_AMOUNT_RE = re.compile(r"^\d{1,12}(\.\d{1,2})?$")
_DATE_FORMATS = ("%d.%m.%Y %H:%M:%S", "%d.%m.%Y %H:%M", "%d.%m.%Y", "%Y-%m-%d %H:%M:%S",
                 "%Y-%m-%dT%H:%M:%S")
_UNKNOWN = ("", "unknown")


def _value(v: str | None) -> str | None:
    if v is None:
        return None
    v = v.strip()
    return None if v.casefold() in _UNKNOWN else v


def parse_amount(v: str | None) -> Decimal | None:
    """``"100.00"``, ``"100,5"``, ``"1 000.00"`` -> Decimal; anything else -> None."""
    v = _value(v)
    if v is None:
        return None
    v = v.replace("\u00a0", "").replace(" ", "").replace(",", ".")
    if not _AMOUNT_RE.match(v):
        return None
    try:
        return Decimal(v).quantize(Decimal("0.01"))
    except InvalidOperation:  # pragma: no cover - the regex admits only numbers
        return None


def parse_date(v: str | None) -> datetime.datetime | None:
    """ASSIST's ``DD.MM.YYYY HH:MM:SS`` (and a few kin); ``UNKNOWN``/garbage -> None."""
    v = _value(v)
    if v is None:
        return None
    for fmt in _DATE_FORMATS:
        try:
            return datetime.datetime.strptime(v, fmt)
        except ValueError:
            continue
    return None


def _text(v: str | None, limit: int) -> str | None:
    v = _value(v)
    if v is None or len(v) > limit or not _PRINTABLE_RE.match(v):
        return None
    return v


def make_result(fields: dict, details: dict) -> BillResult | None:
    """A L{BillResult} from raw fields, or None when it lacks a usable bill, order or status."""
    bill = _value(fields.get("bill_number"))
    order = _text(fields.get("order_number"), 128)
    status = _text(fields.get("status"), 64)
    if bill is None or not _BILL_RE.match(bill) or order is None or status is None:
        return None
    return BillResult(
        bill_number=bill,
        order_number=order,
        status=status,
        amount=parse_amount(fields.get("amount")),
        currency=_text(fields.get("currency"), 8),
        order_date=parse_date(fields.get("order_date")),
        packet_date=parse_date(fields.get("packet_date")),
        result_code=_text(fields.get("result_code"), 16),
        details={k: v for k, v in ((k, _text(v, 255)) for k, v in details.items())
                 if v is not None},
    )


# Report columns we keep (header names casefolded, spaces collapsed).
REPORT_COLUMNS = {
    "order number": "order_number",
    "payment no.": "bill_number",
    "order state": "status",
    "result code": "result_code",
    "order total": "amount",
    "currency code": "currency",
    "order date": "order_date",
    "paket date": "packet_date",  # sic, as the gateway spells it
    "packet date": "packet_date",
}
REQUIRED_COLUMNS = ("order_number", "bill_number", "status")
# Kept for an operator; names, e-mails, card numbers and addresses are not.
DETAIL_COLUMNS = {
    "recommendation": "recommendation",
    "message": "message",
    "comment": "comment",
    "payment type": "payment_type",
    "approval code": "approval_code",
    "card type": "card_type",
    "processing system response code": "processing_code",
    "processing system response code description": "processing_message",
    "processing system name": "processing_name",
    "protocol type": "protocol_type",
}


def decode(body: bytes, content_type_header: str | None = None) -> str:
    """
    The report's text: the charset the answer names, else UTF-8 when the
    bytes are valid UTF-8 (ASCII included), else cp1251 -- the legacy
    gateway's encoding.  Cyrillic cp1251 text is practically never valid UTF-8.
    """
    charset = None
    if content_type_header:
        m = re.search(r"charset=\"?([A-Za-z0-9_.:-]+)", content_type_header)
        if m:
            charset = m.group(1)
    if charset:
        try:
            return body.decode(charset).lstrip("\ufeff")
        except (LookupError, UnicodeDecodeError):
            pass
    try:
        return body.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError:
        return body.decode("cp1251", errors="replace")


def _looks_like_markup(text: str) -> bool:
    return text.lstrip().startswith("<")


def _error_line(text: str) -> str | None:
    first = text.strip().splitlines()[0] if text.strip() else ""
    if first.upper().startswith("ERROR"):
        return first
    return None


def _refusal(line: str) -> PartnerRefused:
    """``ERROR:AS400;...`` / ``ERROR: wrong password`` -> PartnerRefused with the code."""
    rest = line[5:].lstrip(" :=\t")
    value = rest.split(";", 1)[0].strip()
    m = re.match(r"^([A-Z]{2}\d{3})\b", value)
    code = m.group(1) if m else (value[:64] or "ERROR")
    return PartnerRefused(PARTNER, f"gateway answered ERROR: {value[:200]}", code=code)


def parse_csv_report(text: str) -> Report:
    """
    The legacy results report: a header row, then one row per bill.

    An empty answer is an empty report; HTML or a header without the
    order/bill/state columns is a L{PartnerProtocolError}; an ``ERROR`` line
    is a L{PartnerRefused}.  Rows without a usable bill number, order number
    or state are skipped (counted in L{Report.skipped}).
    """
    if not text.strip():
        return Report(())
    if _looks_like_markup(text):
        raise PartnerProtocolError(PARTNER, "results report: HTML/XML instead of CSV")
    error = _error_line(text)
    if error is not None:
        raise _refusal(error)
    try:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=";")
        header = next(reader)
        names = [" ".join(h.split()).casefold() for h in header]
        columns = {i: REPORT_COLUMNS[n] for i, n in enumerate(names) if n in REPORT_COLUMNS}
        details = {i: DETAIL_COLUMNS[n] for i, n in enumerate(names) if n in DETAIL_COLUMNS}
        if not set(REQUIRED_COLUMNS) <= set(columns.values()):
            raise PartnerProtocolError(
                PARTNER, "results report: no Order Number / Payment No. / Order State columns"
            )
        rows, skipped = [], 0
        for raw in reader:
            if not any(cell.strip() for cell in raw):
                continue
            fields = {columns[i]: v for i, v in enumerate(raw) if i in columns}
            extra = {details[i]: v for i, v in enumerate(raw) if i in details}
            result = make_result(fields, extra)
            if result is None:
                skipped += 1
            else:
                rows.append(result)
    except csv.Error as e:
        raise PartnerProtocolError(PARTNER, f"results report: not CSV ({e})")
    return Report(tuple(rows), skipped)




XML_FIELDS = {
    "billnumber": "bill_number",
    "ordernumber": "order_number",
    "orderstate": "status",
    "responsecode": "result_code",
    "orderamount": "amount",
    "ordercurrency": "currency",
    "orderdate": "order_date",
    "packetdate": "packet_date",
}
XML_DETAILS = {"message": "message", "ordercomment": "comment", "approvalcode": "approval_code",
               "meantypename": "card_type", "operationtype": "payment_type",
               "customermessage": "customer_message"}


def parse_xml_result(body: bytes, what: str = "orderstate") -> Report:
    """
    A current-generation answer ``<result firstcode secondcode><order>...``:
    firstcode 0 -> the orders; another code -> L{PartnerRefused} with
    ``"first/second"``; anything but that XML -> L{PartnerProtocolError}.
    """
    root = parse_untrusted_xml(body)
    if root is None:
        raise PartnerProtocolError(PARTNER, f"{what}: not XML (or XML with a DTD)")
    if not isinstance(root.tag, str) or root.tag.lower() != "result":
        raise PartnerProtocolError(PARTNER, f"{what}: unexpected XML")
    first = (root.get("firstcode") or "").strip()
    second = (root.get("secondcode") or "").strip()
    if not first.isdigit():
        raise PartnerProtocolError(PARTNER, f"{what}: result without firstcode")
    if first != "0":
        raise PartnerRefused(PARTNER, f"{what}: gateway answered code {first}/{second}",
                             code=f"{first}/{second or '0'}")
    rows, skipped = [], 0
    for order in root.iter("order"):
        fields, extra = {}, {}
        for child in order:
            if not isinstance(child.tag, str):
                continue
            tag = child.tag.lower()
            if tag in XML_FIELDS:
                fields[XML_FIELDS[tag]] = child.text or ""
            elif tag in XML_DETAILS:
                extra[XML_DETAILS[tag]] = child.text or ""
        result = make_result(fields, extra)
        if result is None:
            skipped += 1
        else:
            rows.append(result)
    return Report(tuple(rows), skipped)


def parse_action_answer(text: str, what: str) -> dict:
    """
    A legacy charge/refund answer: one ``name:value;name:value`` line.
    ``ERROR`` -> L{PartnerRefused} with the gateway's code; HTML -> protocol error.
    """
    if _looks_like_markup(text):
        raise PartnerProtocolError(PARTNER, f"{what}: HTML instead of an answer line")
    stripped = text.strip()
    if not stripped:
        return {}
    error = _error_line(stripped)
    if error is not None:
        raise _refusal(error)
    line = stripped.splitlines()[0]
    out = {}
    for part in line.split(";"):
        name, sep, value = part.partition(":")
        if sep and name.strip():
            out[name.strip()[:64]] = value.strip()[:255]
    for name, value in out.items():
        if name.upper() == "ERROR" and value:
            raise _refusal(f"ERROR:{value}")
    if not out:
        out["answer"] = line[:255]
    return out


# -- the actual status of an order ---------------------------------------------------------------
def _bill_key(bill: str):
    parts = bill.split(".")
    if all(p.isdigit() for p in parts):
        return (1, tuple(int(p) for p in parts), bill)
    return (0, (), bill)


def newest_first(results: Iterable[BillResult]) -> list[BillResult]:
    """Bills newest first: by order date (unknown dates last), then by bill number."""
    epoch = datetime.datetime.min
    return sorted(results, key=lambda r: (r.order_date or epoch, _bill_key(r.bill_number)),
                  reverse=True)


def actual_result(results: Iterable[BillResult], gen: Generation) -> BillResult | None:
    """
    The bill that gives an order its actual status: newest bill first, drop
    "in process", a positive status hides its negative pair, the first left.
    None when only "in process" bills (or none) are known.
    """
    rows = [r for r in newest_first(results) if r.state not in gen.in_process]
    present = {r.state for r in rows}
    hidden: set = set()
    for state in present:
        hidden |= gen.pairs.get(state, frozenset())
    for r in rows:
        if r.state not in hidden:
            return r
    return None


def held_bill(results: Iterable[BillResult], gen: Generation) -> BillResult | None:
    """The newest bill holding a two-stage amount (legacy Preauthorized, current Delayed)."""
    for r in newest_first(results):
        if r.state in gen.held:
            return r
    return None


def classify(state: str, gen: Generation, two_stage: bool) -> str:
    """What an actual status means for our order: paid, blocked, declined, reversed, keep, unknown."""
    paid = gen.paid_two_stage if two_stage else gen.paid_single
    if state in paid:
        return "paid"
    if state in gen.blocked and two_stage:
        return "blocked"
    if state in gen.reversed:
        return "reversed"
    if state in gen.declined:
        return "declined"
    if state in gen.keep:
        return "keep"
    return "unknown"


@frozen
class Decision:
    """What one order's bills call for (pure; L{AssistGateway} applies it)."""

    kind: str  # credit | mismatch | set | keep | pending
    status: str | None = None  # our order status for "set"
    result: BillResult | None = None
    why: str | None = None  # a mismatch's reason: "amount" | "currency"


def decide(results: Sequence[BillResult], gen: Generation, amount: Decimal,
           two_stage: bool, currency: str = DEFAULT_CURRENCY) -> Decision:
    """
    Credit only when the actual status is paid for the order's mode AND the
    bill's amount AND currency equal the order's; a paid bill of another (or
    an unknown) amount or currency is a mismatch: 160.00 USD is not 160.00 RUB.
    """
    actual = actual_result(results, gen)
    if actual is None:
        return Decision("pending")
    kind = classify(actual.state, gen, two_stage)
    if kind == "paid":
        if actual.amount is None or actual.amount != amount:
            return Decision("mismatch", "mismatch", actual, "amount")
        paid_in = norm_currency(actual.currency)
        if paid_in is None or paid_in != norm_currency(currency):
            return Decision("mismatch", "mismatch", actual, "currency")
        return Decision("credit", "paid", actual)
    if kind == "keep":
        return Decision("keep", None, actual)
    return Decision("set", kind, actual)


# -- check values ----------------------------------------------------------------------------------
def _md5(*parts: str | bytes) -> str:
    """
    MD5 hex of the parts glued together.  Text is UTF-8; bytes are taken as
    they are, so that a check value is verified over the very bytes the
    gateway signed (the legacy gateway signs cp1251).
    """
    return hashlib.md5(b"".join(
        p if isinstance(p, bytes) else p.encode("utf-8") for p in parts
    )).hexdigest()


def legacy_check_value(shop_id: str | bytes, order_number: str | bytes, total: str | bytes,
                       currency: str | bytes, secret: str) -> str:
    """Legacy push: ``MD5(Shop_IDP + OrderNumber + Total + Currency + secret)``, upper-case hex."""
    return _md5(shop_id, order_number, total, currency, secret).upper()


def current_check_value(salt: str, merchant_id: str | bytes, order_number: str | bytes,
                        amount: str | bytes, currency: str | bytes, state: str | bytes) -> str:
    """Current push: ``UPPER(MD5(UPPER(MD5(salt) + MD5(id+number+amount+currency+state))))``."""
    inner = (_md5(salt) + _md5(merchant_id, order_number, amount, currency, state)).upper()
    return _md5(inner).upper()


def check_value_matches(expected: str, given: str | None) -> bool:
    if not given:
        return False
    return hmac.compare_digest(expected.upper().encode("ascii"),
                               given.strip().upper().encode("ascii", "replace"))


# -- the result push ---------------------------------------------------------------------------------
# Push field names (lower-cased) -> BillResult fields.  The legacy push
# carries ``Status`` and ``Response_Code``; the current one ``orderstate``
# and ``responsecode``.  Names, e-mails and card numbers are not kept.
LEGACY_PUSH_FIELDS = {
    "billnumber": "bill_number", "ordernumber": "order_number", "order_idp": "order_number",
    "status": "status", "total": "amount", "currency": "currency", "date": "order_date",
    "packetdate": "packet_date", "response_code": "result_code",
}
CURRENT_PUSH_FIELDS = {
    "billnumber": "bill_number", "ordernumber": "order_number", "orderstate": "status",
    "orderamount": "amount", "ordercurrency": "currency", "orderdate": "order_date",
    "packetdate": "packet_date", "responsecode": "result_code",
}
PUSH_DETAILS = {
    "message": "message", "recommendation": "recommendation", "comment": "comment",
    "ordercomment": "comment", "approvalcode": "approval_code",
    "cardtype": "card_type", "meantypename": "card_type", "processingname": "processing_name",
    "error_code": "processing_code", "error_comment": "processing_message",
    "customermessage": "customer_message", "operationtype": "payment_type",
}


def push_result(fields: dict[str, str], gen: Generation) -> BillResult | None:
    """
    The bill a push (``fields`` by lower-cased name) reports, or None when it
    lacks a usable bill number, order number or status.
    """
    names = LEGACY_PUSH_FIELDS if gen is LEGACY else CURRENT_PUSH_FIELDS
    wanted: dict[str, str] = {}
    for name, target in names.items():
        if fields.get(name) and target not in wanted:
            wanted[target] = fields[name]
    extra = {PUSH_DETAILS[k]: v for k, v in fields.items() if k in PUSH_DETAILS}
    return make_result(wanted, extra)


# -- the payment form --------------------------------------------------------------------------------
@frozen
class PaymentForm:
    """The fields a portal posts (in ``charset``) to ``url`` to send the payer to ASSIST."""

    url: str
    charset: str
    fields: tuple[tuple[str, str], ...]

    def body(self) -> bytes:
        """The form as the browser submits it (``application/x-www-form-urlencoded``)."""
        return urlencode(self.fields, encoding=self.charset).encode("ascii")

    def html(self) -> str:
        inputs = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
            for k, v in self.fields
        )
        return (f'<form method="POST" action="{html.escape(self.url)}"'
                f' accept-charset="{self.charset}">{inputs}'
                f'<button type="submit">Pay</button></form>')

    def to_json(self) -> dict:
        return {"url": self.url, "method": "POST", "charset": self.charset,
                "fields": dict(self.fields), "html": self.html()}


def payment_form(cfg, order_number: str, amount: Decimal, two_stage: bool,
                 comment: str = "") -> PaymentForm:
    """The payment form of an order for ``[assist]`` ``cfg`` (its generation and mode)."""
    gen = GENERATIONS[cfg.generation]
    total = f"{amount:.2f}"
    if comment:
        if len(comment) > 255 or not _PRINTABLE_RE.match(comment):
            raise ValueError("comment: at most 255 printable characters")
        try:
            comment.encode(gen.form_charset)
        except UnicodeEncodeError:
            raise ValueError(f"comment: characters the gateway cannot show ({gen.form_charset})")
    if gen is LEGACY:
        fields = [("Shop_IDP", cfg.shop_id), ("Order_IDP", order_number),
                  ("Subtotal_P", total), ("Delay", "1" if two_stage else "0"),
                  ("Language", "0")]
        if comment:
            fields.append(("Comment", comment))
    else:
        fields = [("Merchant_ID", cfg.shop_id), ("OrderNumber", order_number),
                  ("OrderAmount", total), ("Delay", "1" if two_stage else "0"),
                  ("Language", "RU")]
        if comment:
            fields.append(("OrderComment", comment))
    if cfg.return_url:
        fields += [("URL_RETURN_OK", cfg.return_url), ("URL_RETURN_NO", cfg.return_url)]
    return PaymentForm(server_url(cfg) + gen.form_path, gen.form_charset, tuple(fields))


# -- the clients -------------------------------------------------------------------------------------
class IAssistGateway(Interface):
    """What smartyd asks of ASSIST, whichever generation answers."""

    def results(queries):
        """
        Deferred/awaitable L{Report}: the bills of recent orders.  ``queries``
        are ``(order_number, created)`` pairs of the orders still open (the
        legacy report ignores them and returns every bill of ~3 days).
        """

    def charge(bill_number, amount):
        """Charge a two-stage (blocked) bill; a dict of what the gateway answered."""

    def cancel(bill_number, amount):
        """Void a block or refund a payment; a dict of what the gateway answered."""


def make_client(http: PartnerHTTP, cfg) -> "LegacyAssistClient | CurrentAssistClient":
    cls = LegacyAssistClient if cfg.generation == "legacy" else CurrentAssistClient
    return cls(http, server_url(cfg), cfg.shop_id, cfg.login, cfg.password)


@implementer(IAssistGateway)
@define
class LegacyAssistClient:
    http: PartnerHTTP
    server: str
    shop_id: str
    login: str = field(repr=False)
    password: str = field(repr=False)
    generation = LEGACY
    report_timeout: float = 60.0

    def _auth(self) -> list[tuple[str, str]]:
        return [("Shop_ID", self.shop_id), ("Login", self.login), ("PASSWORD", self.password)]

    async def results(self, queries=()) -> Report:
        response = await self.http.request(
            "POST", self.server + LEGACY.report_path,
            data=self._auth() + [("Header1", "1")], timeout=self.report_timeout,
        )
        return parse_csv_report(decode(response.body, response.header("content-type")))

    async def _action(self, path: str, what: str, extra: list) -> dict:
        response = await self.http.request(
            "POST", self.server + path,
            data=self._auth() + extra + [("Language", "1"), ("Format", "1")],
        )
        return parse_action_answer(decode(response.body, response.header("content-type")), what)

    async def charge(self, bill_number: str, amount: Decimal) -> dict:
        return await self._action(LEGACY.charge_path, "charge",
                                  [("Billnumber", bill_number), ("Subtotal_P", f"{amount:.2f}")])

    async def cancel(self, bill_number: str, amount: Decimal | None = None) -> dict:
        return await self._action(LEGACY.cancel_path, "cancel", [("Billnumber", bill_number)])


@implementer(IAssistGateway)
@define
class CurrentAssistClient:
    http: PartnerHTTP
    server: str
    shop_id: str
    login: str = field(repr=False)
    password: str = field(repr=False)
    generation = CURRENT

    def _auth(self) -> list[tuple[str, str]]:
        return [("Merchant_ID", self.shop_id), ("Login", self.login), ("Password", self.password)]

    async def results(self, queries=()) -> Report:
        """
        One orderstate call per open order.  A refused order (an order the
        payer never opened has no state at the gateway; the public docs list
        no codes that tell "no such order" from "bad login") is logged with
        the gateway's code and skipped: it never fails the run for the others.
        """
        rows: list[BillResult] = []
        skipped = refused = 0
        for number, since in queries:
            data = [("Ordernumber", number)] + self._auth() + [("Format", "3")]
            if since is not None:
                start = since.astimezone(datetime.timezone.utc) - datetime.timedelta(days=1)
                data += [("StartYear", str(start.year)), ("StartMonth", str(start.month)),
                         ("StartDay", str(start.day))]
            response = await self.http.request("POST", self.server + CURRENT.report_path,
                                               data=data)
            try:
                report = parse_xml_result(response.body, "orderstate")
            except PartnerRefused as e:
                refused += 1
                log.warn("ASSIST gives no state for order {order}: code {code}",
                         order=number, code=e.code, provider=PARTNER, reason="state_refused")
                continue
            rows.extend(r for r in report.rows if r.order_number == number)
            skipped += report.skipped + sum(1 for r in report.rows if r.order_number != number)
        return Report(tuple(rows), skipped, refused)

    async def _action(self, path: str, what: str, extra: list) -> dict:
        response = await self.http.request(
            "POST", self.server + path, data=extra + self._auth() + [("Format", "3")],
        )
        report = parse_xml_result(response.body, what)
        out: dict = {"orders": [
            {"bill_number": r.bill_number, "order_number": r.order_number, "status": r.status}
            for r in report.rows
        ]}
        return out

    async def charge(self, bill_number: str, amount: Decimal) -> dict:
        return await self._action(CURRENT.charge_path, "charge",
                                  [("Billnumber", bill_number), ("Amount", f"{amount:.2f}"),
                                   ("Language", "EN")])

    async def cancel(self, bill_number: str, amount: Decimal | None = None) -> dict:
        extra = [("Billnumber", bill_number), ("Language", "EN")]
        if amount is not None:
            extra.append(("Amount", f"{amount:.2f}"))
        return await self._action(CURRENT.cancel_path, "cancel", extra)
