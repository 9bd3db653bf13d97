"""
OSMP (QIWI) terminal payments: ``GET``/``POST /payments/osmp`` (DESIGN §4).

Terminals in the field speak this protocol and will not adapt to us, so the
answer to *every* request that passes the access checks -- garbage included --
is ``200 text/xml; charset=utf-8``, a well-formed ``<response>`` with a
result code from the specification.  The terminal repeats a request answered
1 or 90 for up to a day and treats every other code as final; the mapping
below is built around that::

    0    check: the account may be paid; pay: accepted, or a repeat of an
         accepted txn_id (same prv_txn and sum, nothing credited again)
    1    temporary error: the database is unreachable or timed out, smartyd
         is still starting (pay), or an unexpected error rolled a pay back
    4    the account is not in the configured format (a wrong check digit
         of a personal payment code, not digits, not a login)
    5    no such account
    7    the account does not take payments (``payments_allowed`` off), or
         it is blocked and ``[osmp] forbid_blocked`` is set
    8    pay: the ledger cannot book the amount (the balance would leave
         the range of a money column) -- retrying will not help
    79   the account is blocked
    90   pay: PostgreSQL rolled the payment back for concurrency (deadlock,
         serialization failure, a lock not granted in time): retry
    241  sum below ``min_sum`` (a pay of 0.00 too)
    242  sum above ``max_sum``
    243  check: the account cannot be checked now (smartyd is starting)
    300  anything else: a missing, repeated or malformed parameter, an
         unknown command, a txn_date further than ``max_txn_age`` from now,
         a txn_id accepted before with another account or sum (a conflict),
         an unexpected error in a check

Money safety:

- A pay is L{smartyd.payments.accept} (payment row + ledger credit in one
  transaction, idempotent on ``("osmp", txn_id)`` through a unique index), so
  twenty copies of one pay on twenty connections or several instances credit
  once, and every copy answers with the same ``prv_txn`` (the payment id).
- Conditions on *new* money (txn_date age, sum limits, account status) are
  checked only when the txn_id is not accepted yet: a retry of an accepted
  pay is answered from the stored payment even if the account was blocked or
  the txn_date aged past ``max_txn_age`` in between (a commit whose
  acknowledgement was lost answers 1, and QIWI retries for up to 24 h).
- The work is shielded from the client's disconnect (Klein cancels the
  handler's Deferred when the connection drops): the transaction commits or
  rolls back as a whole and its outcome is logged either way.

Access comes first: a source address outside ``[osmp] allow`` gets a
body-less 403, wrong or missing HTTP Basic credentials (when ``username`` is
set) a body-less 401; neither reaches the protocol, both are counted in
``smartyd_osmp_refused_requests``.

``txn_date`` is read as Moscow time (UTC+3, no DST since 2014): the public
descriptions of the protocol give it as the date of the payment in the
payment system's own time zone, and QIWI runs on Moscow time.  The zone is a
constructor argument (L{OSMP.txn_tz}).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Callable, Sequence

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from attrs import frozen
from klein import Klein
from lxml import etree
from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.web.server import Request

from smartyd import ledger, payments, ppc
from smartyd.config import OSMP as OSMPConfig
from smartyd.db import Database, DatabaseUnavailable, Tx
from smartyd.feature import Feature
from smartyd.web import client_ip, in_networks, shielded

log = Logger()

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

_CONTENT_TYPE = b"text/xml; charset=utf-8"
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
    return Answer(result, comment or _COMMENTS[result], txn_id, **kw)


# -- the database side ---------------------------------------------------------------------
async def find_account(tx: Tx, ref: int | str, lock: bool = False) -> ledger.Account | None:
    """
    The account an OSMP account field names (an id, or a login).

    With ``lock``, the account row is locked FOR UPDATE before anything else
    in the transaction: inserting the payment first would take a FOR KEY
    SHARE lock on it (the foreign key), and two pays to one account holding
    that lock would deadlock when the ledger then locks the row FOR UPDATE.
    """
    if isinstance(ref, int):
        return await ledger.get_account(tx, ref, lock=lock)
    account = await ledger.find_account_by_login(tx, ref)
    if account is None or not lock:
        return account
    return await ledger.get_account(tx, account.id, lock=True)


@frozen
class PayOutcome:
    """
    What a pay transaction did.

    @ivar refusal: why new money was refused (None when accepted).
    @ivar payment: the payment accepted now, or the one accepted earlier
        under this txn_id (possibly with another account or sum).
    @ivar created: True when this transaction accepted the payment.
    @ivar account_id: the account the request names, if it exists.
    """

    refusal: Answer | None
    payment: payments.Payment | None
    created: bool
    account_id: int | None


def _is_concurrency_rollback(e: BaseException) -> bool:
    """PostgreSQL rolled the transaction back for a concurrency reason."""
    cause = e.__cause__
    return isinstance(cause, (psycopg2.extensions.TransactionRollbackError,
                              psycopg2.errors.LockNotAvailable))


# -- the Klein app ---------------------------------------------------------------------------
class OSMP:
    """
    The OSMP endpoint: ``GET``/``POST /payments/osmp``.

    @param cfg: the ``[osmp]`` section.
    @param clock: provides ``seconds()``; "now" for the txn_date window.
    @param trusted_proxies: ``[http] trusted_proxies``, whose X-Forwarded-For
        names the client.
    @param hooks: run inside each accepting transaction (pass the list of
        C{Parts.payment_hooks} itself: features installed later add theirs).
    @param ready: False while the daemon is starting (schema not in place).
    @param txn_tz: the time zone txn_date is written in.
    """

    app = Klein()

    def __init__(
        self,
        cfg: OSMPConfig,
        db: Database,
        metrics,
        clock,
        trusted_proxies: tuple = (),
        hooks: Sequence[payments.AcceptHook] = (),
        ready: Callable[[], bool] | None = None,
        txn_tz: timezone = MOSCOW,
    ):
        self.cfg = cfg
        self.db = db
        self.metrics = metrics
        self.clock = clock
        self.trusted_proxies = trusted_proxies
        self.hooks = hooks
        self.ready = ready or (lambda: True)
        self.txn_tz = txn_tz
        # Digests, so that the comparison takes the same time whatever the
        # lengths of the expected and the offered credentials.
        self._credentials = (
            (_digest(cfg.username.encode("utf-8")), _digest(cfg.password.encode("utf-8")))
            if cfg.username else None
        )

    def resource(self):
        return self.app.resource()

    # -- HTTP -------------------------------------------------------------------------------
    @app.route("/payments/osmp", methods=["GET", "POST"])
    async def endpoint(self, request: Request) -> bytes:
        ip = _client_ip(request, self.trusted_proxies)
        if not in_networks(ip, self.cfg.allow):
            return self._refuse_access(request, 403, "address", ip)
        if self._credentials is not None and not self._authorized(request):
            request.setHeader(b"www-authenticate", b'Basic realm="osmp", charset="UTF-8"')
            return self._refuse_access(request, 401, "credentials", ip)
        # From here on the work must finish (or roll back) as a whole even if
        # the terminal hangs up: only the answer is lost then.  (On a hang-up
        # Klein cancels this handler: the CancelledError ends it quietly.)
        try:
            label, reply = await shielded(self.handle(request.args),
                                          "OSMP request failed after the client left")
        except CancelledError:
            raise
        except Exception:
            log.failure("OSMP request failed unexpectedly; answered 1", provider=PROVIDER)
            label, reply = "other", answer(TEMPORARY_ERROR, None)
        self.metrics.osmp_answers.labels(label, str(reply.result)).inc()
        self.metrics.http_requests.labels("osmp", "200").inc()
        request.setHeader(b"content-type", _CONTENT_TYPE)
        request.setHeader(b"cache-control", b"no-store")
        return reply.to_xml()

    def _authorized(self, request: Request) -> bool:
        user_ok = hmac.compare_digest(_digest(request.getUser()), self._credentials[0])
        password_ok = hmac.compare_digest(_digest(request.getPassword()), self._credentials[1])
        return user_ok & password_ok

    def _refuse_access(self, request: Request, code: int, reason: str, ip: str) -> bytes:
        log.info("OSMP request from {client} refused ({code}): {reason}",
                 provider=PROVIDER, client=ip, code=code, reason=reason)
        self.metrics.osmp_refused.labels(reason).inc()
        self.metrics.http_requests.labels("osmp", str(code)).inc()
        request.setResponseCode(code)
        return b""

    # -- the protocol --------------------------------------------------------------------
    async def handle(self, args: dict[bytes, list[bytes]]) -> tuple[str, Answer]:
        """
        Answer one request's parameters: ``(command label, answer)``.

        Never raises: every outcome is an answer with a specification code.
        """
        label = _command_label(args)
        try:
            req = parse_request(args, self.cfg.account, self.txn_tz)
        except Refused as r:
            self._log_refusal(label, r.txn_id, _raw_account(args), r.result, r.comment)
            return label, answer(r.result, r.txn_id, r.comment)
        try:
            if req.command == "check":
                return label, await self._check(req)
            return label, await self._pay(req)
        except DatabaseUnavailable as e:
            result = NOT_COMPLETED if req.command == "pay" and _is_concurrency_rollback(e) \
                else TEMPORARY_ERROR
            log.warn("OSMP {command} {txn_id} answered {result}: {error}",
                     provider=PROVIDER, command=req.command, txn_id=req.external_id,
                     account_field=req.account, result=result, error=str(e))
            return label, answer(result, req.txn_id)
        except Exception:
            # A bug or an unforeseen database error.  A pay was rolled back, so
            # asking the terminal to retry is safe; a check is simply refused.
            result = TEMPORARY_ERROR if req.command == "pay" else OTHER_ERROR
            log.failure("OSMP {command} {txn_id} failed unexpectedly; answered {result}",
                        provider=PROVIDER, command=req.command, txn_id=req.external_id,
                        account_field=req.account, result=result)
            return label, answer(result, req.txn_id)

    async def _check(self, req: OSMPRequest) -> Answer:
        if not self.ready():
            return self._refused(req, CANNOT_CHECK, "smartyd is starting")
        if req.sum is not None and req.sum > 0:
            # A sum of 0.00 (or none) means the terminal does not know it yet.
            refusal = self._sum_refusal(req)
            if refusal is not None:
                return refusal
        account = await self.db.run(find_account, req.account_ref)
        refusal = self._account_refusal(req, account)
        if refusal is not None:
            return refusal
        log.debug("OSMP check {txn_id}: account {account} may be paid",
                  provider=PROVIDER, txn_id=req.external_id, account=account.id)
        return answer(OK, req.txn_id, fields=(("balance", f"{account.balance:.2f}"),))

    async def _pay(self, req: OSMPRequest) -> Answer:
        if not self.ready():
            return self._refused(req, TEMPORARY_ERROR, "smartyd is starting")
        # Refusals of new money that need no database; they apply only if the
        # txn_id turns out not to be accepted yet.
        early = self._age_refusal(req) or self._sum_refusal(req)
        try:
            out = await self.db.run(self._pay_tx, req, early)
        except payments.PaymentConflict as e:
            return self._conflict(req, e.existing)
        except ledger.AccountNotFound:
            return self._refused(req, ACCOUNT_NOT_FOUND)
        except (ledger.LedgerError, psycopg2.DataError) as e:
            # The amount cannot be booked (e.g. the balance would overflow
            # numeric(14,2)); a retry would fail the same way.
            log.error("OSMP pay {txn_id} of {amount} cannot be booked: {error}",
                      provider=PROVIDER, txn_id=req.external_id, account_field=req.account,
                      requested_amount=req.sum, result=TECHNICAL_REFUSAL,
                      error=str(e).strip())
            return answer(TECHNICAL_REFUSAL, req.txn_id)
        payment = out.payment
        if payment is None:
            r = out.refusal
            self._log_refusal(req.command, req.external_id, req.account, r.result, r.comment)
            return r
        if payment.account_id != out.account_id or payment.amount != req.sum:
            return self._conflict(req, payment)
        if out.created:
            self.metrics.payments.labels(PROVIDER).inc()
            self.metrics.payment_amount.labels(PROVIDER).inc(float(payment.amount))
            log.info("OSMP payment {txn_id}: {amount} credited to account {account}"
                     " (prv_txn {prv_txn})",
                     provider=PROVIDER, txn_id=req.external_id, account=payment.account_id,
                     amount=payment.amount, prv_txn=payment.id)
        else:
            log.info("OSMP pay {txn_id} repeated: answered with prv_txn {prv_txn},"
                     " nothing credited",
                     provider=PROVIDER, txn_id=req.external_id, prv_txn=payment.id,
                     account=payment.account_id, repeat=True)
        return answer(OK, req.txn_id, prv_txn=payment.id, sum=payment.amount)

    async def _pay_tx(self, tx: Tx, req: OSMPRequest, early: Answer | None) -> PayOutcome:
        """One transaction: accept the payment, or find why not."""
        account = await find_account(tx, req.account_ref, lock=True)
        account_id = account.id if account is not None else None
        refusal = early or self._account_refusal(req, account, log_it=False)
        if refusal is not None:
            existing = await payments.get(tx, PROVIDER, req.external_id)
            return PayOutcome(refusal, existing, False, account_id)
        payment, created = await payments.accept(
            tx,
            PROVIDER,
            req.external_id,
            account.id,
            req.sum,
            details={"account": req.account, "txn_date": req.txn_date_text},
            external_date=req.txn_date,
            hooks=self.hooks,
        )
        return PayOutcome(None, payment, created, account_id)

    # -- refusals ---------------------------------------------------------------------------
    def _age_refusal(self, req: OSMPRequest) -> Answer | None:
        age = self.clock.seconds() - req.txn_date.timestamp()
        if abs(age) > self.cfg.max_txn_age:
            return answer(OTHER_ERROR, req.txn_id,
                          "txn_date is too old" if age > 0 else "txn_date is in the future")
        return None

    def _sum_refusal(self, req: OSMPRequest) -> Answer | None:
        if req.sum <= 0 or req.sum < self.cfg.min_sum:
            return answer(SUM_TOO_SMALL, req.txn_id)
        if req.sum > self.cfg.max_sum:
            return answer(SUM_TOO_LARGE, req.txn_id)
        return None

    def _account_refusal(self, req: OSMPRequest, account: ledger.Account | None,
                         log_it: bool = True) -> Answer | None:
        if account is None:
            result = ACCOUNT_NOT_FOUND
        elif not account.payments_allowed:
            result = PAYMENT_FORBIDDEN
        elif not account.active:
            result = PAYMENT_FORBIDDEN if self.cfg.forbid_blocked else ACCOUNT_INACTIVE
        else:
            return None
        if log_it:
            return self._refused(req, result)
        return answer(result, req.txn_id)

    def _refused(self, req: OSMPRequest, result: int, comment: str | None = None) -> Answer:
        a = answer(result, req.txn_id, comment)
        self._log_refusal(req.command, req.external_id, req.account, a.result, a.comment)
        return a

    def _conflict(self, req: OSMPRequest, existing: payments.Payment) -> Answer:
        log.warn(
            "OSMP pay {txn_id} conflicts with the accepted payment {prv_txn}"
            " (account {stored_account}, sum {stored_amount}): refused",
            provider=PROVIDER, txn_id=req.external_id, account_field=req.account,
            requested_amount=req.sum, prv_txn=existing.id, stored_account=existing.account_id,
            stored_amount=existing.amount, result=OTHER_ERROR, reason="conflict",
        )
        return answer(OTHER_ERROR, req.txn_id,
                      "txn_id was accepted with another account or sum")

    def _log_refusal(self, command: str, txn_id: str | None, account_field: str | None,
                     result: int, comment: str) -> None:
        # ``account_field`` is the terminal's text (a payment code, number or
        # login); ``account`` in the log always means an account id.
        log.info("OSMP {command} {txn_id} refused with {result}: {comment}",
                 provider=PROVIDER, command=command, txn_id=txn_id,
                 account_field=account_field, result=result, comment=comment)


def _client_ip(request: Request, trusted_proxies: tuple) -> str:
    """
    L{smartyd.web.client_ip}, with the X-Forwarded-For header decoded first.

    ``web.client_ip`` splits the raw header (bytes) with a str separator and
    raises TypeError whenever a trusted proxy sends the header.  Until it
    decodes the header itself, hand it a request whose header is text: the
    address logic stays in one place.
    """
    return client_ip(_DecodedForwardedFor(request), trusted_proxies)


class _DecodedForwardedFor:
    """A request view whose X-Forwarded-For is text (non-ASCII: treated as absent)."""

    def __init__(self, request: Request):
        self._request = request

    def getClientAddress(self):
        return self._request.getClientAddress()

    def getHeader(self, name: bytes) -> str | None:
        value = self._request.getHeader(name)
        if value is None:
            return None
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            return None


def _digest(value: bytes | None) -> bytes:
    return hashlib.sha256(value or b"").digest()


def _command_label(args: dict[bytes, list[bytes]]) -> str:
    """The command as a metrics label: never raw input (bounded cardinality)."""
    values = args.get(b"command")
    if values and len(values) == 1 and values[0] in (b"check", b"pay"):
        return values[0].decode("ascii")
    return "other"


def _raw_account(args: dict[bytes, list[bytes]]) -> str | None:
    """The account field of a refused request, shortened, for the log."""
    values = args.get(b"account")
    if not values:
        return None
    return values[0][:_LOGGED_ACCOUNT].decode("utf-8", "replace")


def make_osmp(cfg: OSMPConfig, *, db: Database, clock, payments: payments.Payments, metrics,
              readiness: Callable[[], bool], trusted_proxies: tuple = ()) -> Feature:
    """``/payments/osmp`` (the composition root builds it when ``[osmp] enabled``)."""
    if cfg.username and not cfg.password:
        log.warn("[osmp] username is set but password is empty: terminals authenticate"
                 " with an empty password")
    osmp = OSMP(cfg, db, metrics, clock, trusted_proxies=trusted_proxies,
                hooks=payments.hooks, ready=readiness)
    return Feature(mounts=(("/payments/osmp", osmp.resource()),), handle=osmp)
