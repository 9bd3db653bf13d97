"""
The OSMP service: a request's parameters in, an answer out, the database in
between (DESIGN §4).  No HTTP: L{smartyd.osmp.web} puts it on the wire.

L{OSMPService.check} and L{OSMPService.pay} never raise.  Whatever the
database or a payment hook raises becomes a result code in one place,
L{OSMPService._failed}; its choices are the table in L{smartyd.osmp}.
"""

from __future__ import annotations

from datetime import timezone
from typing import Callable, Sequence

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from attrs import frozen
from twisted.logger import Logger

from smartyd import ledger, payments
from smartyd.config import OSMP as OSMPConfig
from smartyd.db import Database, DatabaseUnavailable, Tx
from smartyd.osmp.protocol import (
    ACCOUNT_INACTIVE,
    ACCOUNT_NOT_FOUND,
    CANNOT_CHECK,
    MOSCOW,
    NOT_COMPLETED,
    OK,
    OTHER_ERROR,
    PAYMENT_FORBIDDEN,
    PROVIDER,
    SUM_TOO_LARGE,
    SUM_TOO_SMALL,
    TECHNICAL_REFUSAL,
    TEMPORARY_ERROR,
    Answer,
    OSMPRequest,
    Refused,
    answer,
    command_label,
    parse_request,
    raw_account,
)

# The namespace of every OSMP event since before the package was split:
# admins filter the JSON log on ``"ns": "smartyd.osmp"``.
log = Logger(namespace="smartyd.osmp")


# -- the database side ---------------------------------------------------------------------
async def find_account(tx: Tx, ref: int | str, lock: bool = False) -> ledger.Payee | None:
    """
    Whom an OSMP account field names: a customer (an id or payment code, the
    customer's virtual account) or an account by its login (its customer).

    With ``lock``, the customer row is locked FOR UPDATE before anything else
    in the transaction: inserting the payment first would take a FOR KEY
    SHARE lock on it (the foreign key), and two pays to one customer holding
    that lock would deadlock when the ledger then locks the row FOR UPDATE.
    """
    return await ledger.find_payee(tx, ref, lock=lock)


@frozen
class PayOutcome:
    """
    What a pay transaction did.

    @ivar refusal: why new money was refused (None when accepted).
    @ivar payment: the payment accepted now, or the one accepted earlier
        under this txn_id (possibly with another account or sum).
    @ivar created: True when this transaction accepted the payment.
    @ivar account_id: the customer the request names, if it exists.
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


# -- the service -----------------------------------------------------------------------------
class OSMPService:
    """
    Checks and pays of OSMP requests against the ledger.

    @param cfg: the ``[osmp]`` section.
    @param clock: provides ``seconds()``; "now" for the txn_date window.
    @param metrics: counts credited payments.  Counted here, not at the
        HTTP edge, because a credit stands (and must be counted) even when
        the terminal hung up before its answer.
    @param hooks: run inside each accepting transaction (pass the list of
        C{Parts.payment_hooks} itself: features installed later add theirs).
    @param ready: False while the daemon is starting (schema not in place).
    @param txn_tz: the time zone txn_date is written in.
    """

    def __init__(
        self,
        cfg: OSMPConfig,
        db: Database,
        clock,
        metrics,
        hooks: Sequence[payments.AcceptHook] = (),
        ready: Callable[[], bool] | None = None,
        txn_tz: timezone = MOSCOW,
    ):
        self.cfg = cfg
        self.db = db
        self.clock = clock
        self.metrics = metrics
        self.hooks = hooks
        self.ready = ready or (lambda: True)
        self.txn_tz = txn_tz

    async def handle(self, args: dict[bytes, list[bytes]]) -> tuple[str, Answer]:
        """
        Answer one request's parameters: ``(command label, answer)``.

        Never raises: every outcome is an answer with a specification code.
        """
        try:
            label = command_label(args)
            try:
                req = parse_request(args, self.cfg.account, self.txn_tz)
            except Refused as r:
                self._log_refusal(label, r.txn_id, raw_account(args), r.result, r.comment)
                return label, answer(r.result, r.txn_id, r.comment)
        except Exception as e:
            return "other", self._failed(None, e)
        if req.command == "check":
            return label, await self.check(req)
        return label, await self.pay(req)

    async def check(self, req: OSMPRequest) -> Answer:
        """May ``req``'s account be paid?  Never raises; never credits."""
        try:
            return await self._check(req)
        except Exception as e:
            return self._failed(req, e)

    async def pay(self, req: OSMPRequest) -> Answer:
        """
        Accept ``req``'s payment once (a repeat is answered from the stored
        payment).  Never raises; whatever fails rolls the payment back whole.
        """
        try:
            return await self._pay(req)
        except Exception as e:
            return self._failed(req, e)

    # -- failures become result codes here, and only here --------------------------------------
    def _failed(self, req: OSMPRequest | None, e: Exception) -> Answer:
        """
        The answer to a request whose handling raised ``e`` (call it from the
        ``except`` block: an unexpected error is logged with its traceback).

        ``req`` is None when the parameters could not even be parsed.
        """
        if req is None:
            log.failure("OSMP request failed unexpectedly; answered 1", provider=PROVIDER)
            return answer(TEMPORARY_ERROR, None)
        pay = req.command == "pay"
        if pay and isinstance(e, payments.PaymentConflict):
            return self._conflict(req, e.existing)
        if pay and isinstance(e, ledger.AccountNotFound):
            return self._refused(req, ACCOUNT_NOT_FOUND)
        if pay and isinstance(e, (ledger.LedgerError, psycopg2.DataError)):
            # The amount cannot be booked (e.g. the balance would overflow
            # numeric(14,2)); a retry would fail the same way.
            log.error("OSMP pay {txn_id} of {amount} cannot be booked: {error}",
                      provider=PROVIDER, txn_id=req.external_id, account_field=req.account,
                      requested_amount=req.sum, result=TECHNICAL_REFUSAL,
                      error=str(e).strip())
            return answer(TECHNICAL_REFUSAL, req.txn_id)
        if isinstance(e, DatabaseUnavailable):
            result = NOT_COMPLETED if pay and _is_concurrency_rollback(e) else TEMPORARY_ERROR
            log.warn("OSMP {command} {txn_id} answered {result}: {error}",
                     provider=PROVIDER, command=req.command, txn_id=req.external_id,
                     account_field=req.account, result=result, error=str(e))
            return answer(result, req.txn_id)
        # A bug or an unforeseen database error.  A pay was rolled back, so
        # asking the terminal to retry is safe; a check is simply refused.
        result = TEMPORARY_ERROR if pay else OTHER_ERROR
        log.failure("OSMP {command} {txn_id} failed unexpectedly; answered {result}",
                    provider=PROVIDER, command=req.command, txn_id=req.external_id,
                    account_field=req.account, result=result)
        return answer(result, req.txn_id)

    # -- check and pay ---------------------------------------------------------------------------
    async def _check(self, req: OSMPRequest) -> Answer:
        if not self.ready():
            return self._refused(req, CANNOT_CHECK, "smartyd is starting")
        if req.sum is not None and req.sum > 0:
            # A sum of 0.00 (or none) means the terminal does not know it yet.
            refusal = self._sum_refusal(req)
            if refusal is not None:
                return refusal
        # One statement, no BEGIN/COMMIT: one round trip.
        account = await self.db.run_statement(find_account, req.account_ref)
        refusal = self._account_refusal(req, account)
        if refusal is not None:
            return refusal
        log.debug("OSMP check {txn_id}: customer {customer} may be paid",
                  provider=PROVIDER, txn_id=req.external_id, customer=account.customer_id)
        return answer(OK, req.txn_id, fields=(("balance", f"{account.balance:.2f}"),))

    async def _pay(self, req: OSMPRequest) -> Answer:
        if not self.ready():
            return self._refused(req, TEMPORARY_ERROR, "smartyd is starting")
        # Refusals of new money that need no database; they apply only if the
        # txn_id turns out not to be accepted yet.
        early = self._age_refusal(req) or self._sum_refusal(req)
        out = None
        flags = payments.sql_plan(self.hooks)
        if flags is not None:
            # The common case: the whole transaction is one statement.
            out = await self.db.run_statement(self._pay_statement, req, early, flags)
        if out is None:
            out = await self.db.run(self._pay_tx, req, early)
        payment = out.payment
        if payment is None:
            r = out.refusal
            self._log_refusal(req.command, req.external_id, req.account, r.result, r.comment)
            return r
        if payment.customer_id != out.account_id or payment.amount != req.sum:
            return self._conflict(req, payment)
        if out.created:
            self.metrics.payments.labels(PROVIDER).inc()
            self.metrics.payment_amount.labels(PROVIDER).inc(float(payment.amount))
            log.info("OSMP payment {txn_id}: {amount} credited to account {account}"
                     " (prv_txn {prv_txn})",
                     provider=PROVIDER, txn_id=req.external_id, account=payment.account_id,
                     customer=payment.customer_id,
                     amount=payment.amount, prv_txn=payment.id)
        else:
            log.info("OSMP pay {txn_id} repeated: answered with prv_txn {prv_txn},"
                     " nothing credited",
                     provider=PROVIDER, txn_id=req.external_id, prv_txn=payment.id,
                     account=payment.account_id, customer=payment.customer_id,
                     repeat=True)
        return answer(OK, req.txn_id, prv_txn=payment.id, sum=payment.amount)

    async def _pay_tx(self, tx: Tx, req: OSMPRequest, early: Answer | None) -> PayOutcome:
        """One transaction: accept the payment, or find why not."""
        account = await find_account(tx, req.account_ref, lock=True)
        account_id = account.customer_id if account is not None else None
        refusal = early or self._account_refusal(req, account, log_it=False)
        if refusal is not None:
            existing = await payments.get(tx, PROVIDER, req.external_id)
            return PayOutcome(refusal, existing, False, account_id)
        payment, created = await payments.accept(
            tx,
            PROVIDER,
            req.external_id,
            account.account_id,
            req.sum,
            details={"account": req.account, "txn_date": req.txn_date_text},
            external_date=req.txn_date,
            hooks=self.hooks,
            customer_id=account.customer_id,
        )
        return PayOutcome(None, payment, created, account_id)

    async def _pay_statement(self, tx: Tx, req: OSMPRequest, early: Answer | None,
                             flags: frozenset[str]) -> PayOutcome | None:
        """
        L{_pay_tx} as one statement (C{payment_accept}, migration 0011) when
        every hook has its SQL form (``flags``).  None: nothing was written,
        take the Python path (e.g. the billing has something to settle).
        """
        done = await payments.accept_in_sql(
            tx,
            PROVIDER,
            req.external_id,
            req.account_ref,
            req.sum,
            details={"account": req.account, "txn_date": req.txn_date_text},
            external_date=req.txn_date,
            accept=early is None,
            flags=flags,
        )
        account = done.payee
        account_id = account.customer_id if account is not None else None
        if done.outcome in ("no_payee", "refused"):
            refusal = early or self._account_refusal(req, account, log_it=False)
            if refusal is None:  # the function's rule and ours disagree: ours decides
                return None
            return PayOutcome(refusal, done.payment, False, account_id)
        if done.outcome == "exists":
            payment = done.payment
            if payment.customer_id != account_id or payment.amount != req.sum:
                raise payments.PaymentConflict(payment)
            return PayOutcome(None, payment, False, account_id)
        if done.outcome == "created":
            return PayOutcome(None, done.payment, True, account_id)
        return None

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

    def _account_refusal(self, req: OSMPRequest, account: ledger.Payee | None,
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
            stored_customer=existing.customer_id,
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
