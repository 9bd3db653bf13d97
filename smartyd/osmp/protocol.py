"""
The OSMP protocol itself (DESIGN §4), without I/O: result codes, the syntax
of a request's parameters, and the XML answer.

Everything here is a pure function of its arguments, so that the parsers can
be driven by Hypothesis and the answers compared byte for byte.  What the
codes mean to a terminal, and why, is written down in L{smartyd.osmp}.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from attrs import frozen
from lxml import etree

from smartyd import ledger, ppc

PROVIDER = "osmp"

# -- result codes (DESIGN §4) ----------------------------------------------------------
OK = 0
TEMPORARY_ERROR = 1
BAD_ACCOUNT_FORMAT = 4
ACCOUNT_NOT_FOUND = 5
PAYMENT_FORBIDDEN = 7
TECHNICAL_REFUSAL = 8
ACCOUNT_INACTIVE = 79
NOT_COMPLETED = 90
SUM_TOO_SMALL = 241
SUM_TOO_LARGE = 242
CANNOT_CHECK = 243
OTHER_ERROR = 300

RESULT_CODES = frozenset(
    {OK, TEMPORARY_ERROR, BAD_ACCOUNT_FORMAT, ACCOUNT_NOT_FOUND, PAYMENT_FORBIDDEN,
     TECHNICAL_REFUSAL, ACCOUNT_INACTIVE, NOT_COMPLETED, SUM_TOO_SMALL, SUM_TOO_LARGE,
     CANNOT_CHECK, OTHER_ERROR}
)
# QIWI's clock: Moscow, UTC+3 all year since October 2014.
MOSCOW = timezone(timedelta(hours=3), "MSK")

# -- request syntax --------------------------------------------------------------------
_TXN_ID = re.compile(rb"[0-9]{1,20}")
_SUM = re.compile(rb"[0-9]{1,9}\.[0-9]{1,2}")
_TXN_DATE = re.compile(rb"[0-9]{14}")
_DIGITS = re.compile(rb"[0-9]+")
_MAX_ACCOUNT = 64        # bytes of an account field worth looking at
_MAX_ACCOUNT_ID = 2**63 - 1
_LOGGED_ACCOUNT = 64     # characters of a refused account field kept in a log event

# Every answer, whatever its result code, is sent as this.
CONTENT_TYPE = b"text/xml; charset=utf-8"
_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'


class Refused(Exception):
    """A request refused before the database: its result code and comment."""

    def __init__(self, result: int, comment: str, txn_id: str | None = None):
        super().__init__(comment)
        self.result = result
        self.comment = comment
        self.txn_id = txn_id


@frozen
class OSMPRequest:
    """
    A syntactically valid OSMP request.

    @ivar txn_id: QIWI's transaction number as received (echoed back).
    @ivar external_id: the same number without leading zeros: the payment's
        idempotency key, so ``007`` and ``7`` cannot credit twice.
    @ivar account: the account as the terminal sent it (for logs and details).
    @ivar account_ref: an account id (``ppc`` and ``id`` modes) or a login.
    @ivar sum: the amount; None on a check that names none.
    @ivar txn_date: when QIWI took the payment (pay only), timezone-aware.
    """

    command: str
    txn_id: str
    external_id: str
    account: str
    account_ref: int | str
    sum: Decimal | None
    txn_date: datetime | None
    txn_date_text: str | None


def parse_request(
    args: dict[bytes, list[bytes]], account_mode: str, tz: timezone = MOSCOW
) -> OSMPRequest:
    """
    Validate the parameters of an OSMP request (the query and form fields).

    Raises L{Refused} with 300 for a missing, repeated or malformed parameter
    or an unknown command, and with 4 for an account not in ``account_mode``
    format.  ``txn_id`` is validated first so that every later refusal can
    echo it.
    """
    echo = _valid_txn_id(args)
    command = _param(args, b"command", echo)
    if command not in (b"check", b"pay"):
        raise Refused(OTHER_ERROR, "unknown command" if command else "command is missing", echo)
    raw_txn_id = _param(args, b"txn_id", None)
    if raw_txn_id is None or not _TXN_ID.fullmatch(raw_txn_id):
        raise Refused(OTHER_ERROR, "txn_id is missing or not 1-20 digits")
    txn_id = raw_txn_id.decode("ascii")
    pay = command == b"pay"

    raw_account = _param(args, b"account", txn_id)
    if raw_account is None:
        raise Refused(OTHER_ERROR, "account is missing", txn_id)

    raw_sum = _param(args, b"sum", txn_id)
    if raw_sum is None:
        if pay:
            raise Refused(OTHER_ERROR, "sum is missing", txn_id)
        amount = None
    elif not _SUM.fullmatch(raw_sum):
        raise Refused(OTHER_ERROR, "sum is not digits with a dot and 1-2 decimals", txn_id)
    else:
        amount = ledger.money(raw_sum.decode("ascii"))

    txn_date = txn_date_text = None
    if pay:
        raw_date = _param(args, b"txn_date", txn_id)
        if raw_date is None:
            raise Refused(OTHER_ERROR, "txn_date is missing", txn_id)
        txn_date = parse_txn_date(raw_date, tz)
        if txn_date is None:
            raise Refused(OTHER_ERROR, "txn_date is not a YYYYMMDDHHMMSS date", txn_id)
        txn_date_text = raw_date.decode("ascii")

    account, account_ref = parse_account(raw_account, account_mode, txn_id)
    return OSMPRequest(
        command=command.decode("ascii"),
        txn_id=txn_id,
        external_id=str(int(txn_id)),
        account=account,
        account_ref=account_ref,
        sum=amount,
        txn_date=txn_date,
        txn_date_text=txn_date_text,
    )


def _param(args: dict[bytes, list[bytes]], name: bytes, txn_id: str | None) -> bytes | None:
    values = args.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise Refused(OTHER_ERROR, f"{name.decode()} is given more than once", txn_id)
    return values[0]


def _valid_txn_id(args: dict[bytes, list[bytes]]) -> str | None:
    """The request's txn_id if it is one, for echoing in an early refusal."""
    values = args.get(b"txn_id")
    if values and len(values) == 1 and _TXN_ID.fullmatch(values[0]):
        return values[0].decode("ascii")
    return None


def parse_txn_date(raw: bytes, tz: timezone = MOSCOW) -> datetime | None:
    """``YYYYMMDDHHMMSS`` in ``tz`` as an aware datetime; None if not a date."""
    if not _TXN_DATE.fullmatch(raw):
        return None
    s = raw.decode("ascii")
    try:
        return datetime(int(s[0:4]), int(s[4:6]), int(s[6:8]), int(s[8:10]), int(s[10:12]),
                        int(s[12:14]), tzinfo=tz)
    except ValueError:
        return None


def format_txn_date(seconds: float, tz: timezone = MOSCOW) -> str:
    """A POSIX time as QIWI writes txn_date (for tests, tools and the benchmark)."""
    return datetime.fromtimestamp(seconds, tz).strftime("%Y%m%d%H%M%S")


def parse_account(raw: bytes, mode: str, txn_id: str | None = None) -> tuple[str, int | str]:
    """
    ``(account as text, account id or login)`` for the configured mode.

    ``ppc`` and ``id`` accept leading zeros (terminals pad short numbers);
    anything else that is not the mode's format raises L{Refused} with 4.
    """
    bad = Refused(BAD_ACCOUNT_FORMAT, f"account is not a valid {_MODE_NAMES[mode]}", txn_id)
    if len(raw) > _MAX_ACCOUNT:
        raise bad
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise bad from None
    if mode == "login":
        if not ledger.LOGIN_RE.fullmatch(text):
            raise bad
        return text, text
    if not _DIGITS.fullmatch(raw):
        raise bad
    digits = text.lstrip("0")
    if mode == "ppc":
        try:
            account_id = ppc.decode(digits)
        except ppc.BadPaymentCode:
            raise bad from None
    else:
        account_id = int(digits) if digits else 0
    if not 0 < account_id <= _MAX_ACCOUNT_ID:
        raise bad
    return text, account_id


_MODE_NAMES = {"ppc": "personal payment code", "id": "account number", "login": "login"}


# -- answers ----------------------------------------------------------------------------
@frozen
class Answer:
    """One OSMP ``<response>``."""

    result: int
    comment: str
    txn_id: str | None = None
    prv_txn: int | None = None
    sum: Decimal | None = None
    fields: tuple[tuple[str, str], ...] = ()

    def to_xml(self) -> bytes:
        """The answer document; built by lxml, so well-formed whatever it holds."""
        root = etree.Element("response")
        if self.txn_id is not None:
            etree.SubElement(root, "osmp_txn_id").text = self.txn_id
        if self.prv_txn is not None:
            etree.SubElement(root, "prv_txn").text = str(self.prv_txn)
        if self.sum is not None:
            etree.SubElement(root, "sum").text = f"{self.sum:.2f}"
        etree.SubElement(root, "result").text = str(self.result)
        etree.SubElement(root, "comment").text = self.comment
        if self.fields:
            fields = etree.SubElement(root, "fields")
            for i, (name, value) in enumerate(self.fields, 1):
                etree.SubElement(fields, f"field{i}", name=name).text = value
        return _DECLARATION + etree.tostring(root, encoding="UTF-8")


_COMMENTS = {
    OK: "OK",
    TEMPORARY_ERROR: "temporary error, retry later",
    BAD_ACCOUNT_FORMAT: "bad account format",
    ACCOUNT_NOT_FOUND: "account not found",
    PAYMENT_FORBIDDEN: "payments to this account are forbidden",
    TECHNICAL_REFUSAL: "payment refused for technical reasons",
    ACCOUNT_INACTIVE: "account is not active",
    NOT_COMPLETED: "payment not completed, retry later",
    SUM_TOO_SMALL: "sum too small",
    SUM_TOO_LARGE: "sum too large",
    CANNOT_CHECK: "cannot check the account now",
    OTHER_ERROR: "other error",
}


def answer(result: int, txn_id: str | None, comment: str | None = None, **kw: Any) -> Answer:
    """An answer with ``result``'s standard comment unless ``comment`` is given."""
    return Answer(result, comment or _COMMENTS[result], txn_id, **kw)


# -- what may be taken from a request that was not parsed ----------------------------------
def command_label(args: dict[bytes, list[bytes]]) -> str:
    """The command as a metrics label: never raw input (bounded cardinality)."""
    values = args.get(b"command")
    if values and len(values) == 1 and values[0] in (b"check", b"pay"):
        return values[0].decode("ascii")
    return "other"


def raw_account(args: dict[bytes, list[bytes]]) -> str | None:
    """The account field of a refused request, shortened, for the log."""
    values = args.get(b"account")
    if not values:
        return None
    return values[0][:_LOGGED_ACCOUNT].decode("utf-8", "replace")
