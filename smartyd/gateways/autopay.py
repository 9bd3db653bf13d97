"""
Autopayment: before the charging job refuses a charge for lack of money, the
customer's bound card is charged for what is missing.

L{Autopay.before_settle} is the billing engine's ``before_settle`` hook: it
runs before each batch of due customers is settled, outside the batch's
transaction (no lock is held while Payture is asked).  For each customer of
the batch with autopay on and a bound card:

  1. an attempt still ``pending`` (a crash, Payture down, another run's
     charge in flight) is resolved first: GetState decides, as for a
     notification -- Charged for exactly the attempt's amount credits it,
     Rejected/Error/... declines it, anything else leaves it pending (a
     pending attempt blocks any new one: a card is never charged twice for
     one shortfall).  An order Payture has never heard of, older than
     L{RESEND_AFTER}, is sent again under the same OrderId (Payture refuses a
     duplicate OrderId, so this cannot charge twice);
  2. a dry run of the settlement (L{engine.settle} with ``shortfalls``) under
     the customer's row lock says what is missing; an attempt row
     (customer, period, attempt) is claimed and committed *before* Pay is
     sent, for the missing amount raised to ``[payture] autopay_min``; a
     period whose ``autopay_attempts`` attempts were declined is not tried
     again (the period is the due moment of the refused charge);
  3. the recurring ``/vwapi/Pay``; its answer is only a hint: GetState is
     asked, and a Charged order is credited through L{smartyd.payments.accept}
     (provider ``payture``, external id = the OrderId: once, whoever gets
     there first) with the daemon's payment hooks (the fiscal receipt...);
     then the batch settles as of the run's moment and takes the charge
     with the money that came for it (the run's result counts it).

A declined card, or Payture down, changes nothing: the batch settles as it
would have, under the normal debt rule.  Every attempt outcome is a log event
(``provider=payture``, ``reason=autopay_<outcome>``) and
``smartyd_payture_autopay{outcome}``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from attrs import define, field
from twisted.logger import Logger

from smartyd.billing import engine
from smartyd.config import Billing as BillingConfig, Payture as PaytureConfig
from smartyd.db import Database, Tx
from smartyd.gateways import cards, events
from smartyd.gateways.ewallet import DUPLICATE_ORDER_ID
from smartyd.gateways.payture import (
    CHARGED,
    DECLINED,
    ORDER_NOT_FOUND,
    PARTNER,
    REVERSED,
    PaytureClient,
    State,
)
from smartyd.gateways.wallet import Wallet
from smartyd.ledger import kopecks
from smartyd.partners import PartnerError
from smartyd.payments import Payments

log = Logger()

# A pending attempt whose order Payture does not know is sent again (same
# OrderId) once it is this old: the first Pay may simply not have arrived yet.
RESEND_AFTER = timedelta(minutes=10)


def autopay_amount(missing: Decimal, minimum: Decimal) -> Decimal:
    """What to charge: the missing amount, to the kopeck up, at least ``minimum``."""
    return max(missing.quantize(Decimal("0.01"), rounding="ROUND_CEILING"), minimum)


@define(eq=False)
class Autopay:
    db: Database
    wallet: Wallet
    client: PaytureClient
    cfg: PaytureConfig
    billing: BillingConfig
    # The daemon's payment hooks but not the billing's settlement: the
    # batch is settled right after this hook, as of the run's moment.
    payments: Payments = field(factory=Payments)
    metrics: Any = None

    async def before_settle(self, customer_ids: list[int], at: datetime) -> None:
        """The billing hook: never raises (the batch is charged as usual whatever happens)."""
        try:
            chosen = await self.db.run(cards.autopay_cards, customer_ids)
            for customer_id, card_id in chosen.items():
                await self.customer(customer_id, card_id, at)
        except Exception:
            log.failure("autopayment before charging failed; charging goes on without it",
                        provider=PARTNER, reason="autopay_failed")

    async def customer(self, customer_id: int, card_id: str, at: datetime) -> str:
        """One customer's autopayment as of ``at``; the last outcome."""
        for attempt in await self.db.run(cards.pending_attempts, [customer_id]):
            outcome = await self.resolve(attempt, at)
            if outcome == "pending":
                return outcome  # still open: no second charge
        attempt, why = await self.db.run(self._claim, customer_id, card_id, at)
        if attempt is None:
            if why == "exhausted":
                log.info("autopayment for customer {customer}: {limit} attempts declined this"
                         " period, not tried again", customer=customer_id,
                         limit=self.cfg.autopay_attempts, provider=PARTNER,
                         reason="autopay_exhausted")
                self._count("exhausted")
            return why
        log.info("autopayment {attempt} for customer {customer}: charging card {card} for"
                 " {amount} (order {order})", attempt=attempt.attempt, customer=customer_id,
                 card=card_id, amount=attempt.amount, order=attempt.order_number,
                 provider=PARTNER)
        return await self.charge(attempt, at)

    async def _claim(self, tx: Tx, customer_id: int, card_id: str, at: datetime):
        short: dict = {}
        await engine.settle(tx, self.billing, [customer_id], at, shortfalls=short)
        need = short.get(customer_id)
        if need is None or need.amount <= 0:
            return None, "covered"
        return await cards.new_attempt(
            tx, customer_id, need.period, need.subscription_id, card_id,
            autopay_amount(need.amount, self.cfg.autopay_min), self.cfg.autopay_attempts, at)

    async def charge(self, attempt: cards.Attempt, at: datetime) -> str:
        """Send the recurring Pay for a claimed attempt, then let GetState decide."""
        user = await self.db.run(cards.wallet_user, attempt.customer_id)
        try:
            answer = await self.wallet.client.pay(user.login, user.password, attempt.card_id,
                                                  attempt.order_number,
                                                  kopecks(attempt.amount))
        except PartnerError as e:
            # Sent or not, we cannot tell: the attempt stays pending and
            # GetState settles it on a later run.
            return self._outcome(attempt, "pending", error=e.message)
        if not answer.success and answer.err_code != DUPLICATE_ORDER_ID:
            await self.db.run(cards.finish_attempt, attempt.id, "declined",
                              err_code=answer.err_code)
            return self._outcome(attempt, "declined", err_code=answer.err_code)
        return await self.resolve(attempt, at, sent=True)

    async def resolve(self, attempt: cards.Attempt, at: datetime, sent: bool = False) -> str:
        """GetState decides a pending attempt: credited, declined or still pending."""
        try:
            state = await self.client.get_state(attempt.order_number)
        except PartnerError as e:
            return self._outcome(attempt, "pending", error=e.message)
        if state.success and state.order_id != attempt.order_number:
            # An answer about another order confirms nothing about ours.
            events.count(self.metrics, PARTNER, "forged")
            log.error("Payture answered GetState for autopayment order {order} with order"
                      " {answered_order}: NOT credited, an operator must look",
                      order=attempt.order_number, answered_order=state.order_id,
                      customer=attempt.customer_id, provider=PARTNER, reason="forged")
            return self._outcome(attempt, "pending", answered_order=state.order_id)
        if not state.success:
            if (not sent and state.err_code == ORDER_NOT_FOUND
                    and at - attempt.created_at >= RESEND_AFTER):
                return await self.charge(attempt, at)  # the same OrderId: never twice
            return self._outcome(attempt, "pending", err_code=state.err_code)
        if state.state == CHARGED:
            if state.amount_kop != kopecks(attempt.amount):
                await self.db.run(cards.finish_attempt, attempt.id, "declined",
                                  err_code="AMOUNT_MISMATCH", gateway_state=state.state)
                events.count(self.metrics, PARTNER, "amount_mismatch")
                log.error("Payture charged {charged} kopecks for autopayment order {order} of"
                          " {amount}: NOT credited, an operator must look",
                          charged=state.amount_kop, order=attempt.order_number,
                          amount=attempt.amount, provider=PARTNER, reason="amount_mismatch")
                return self._outcome(attempt, "amount_mismatch")
            created = await self.db.run(self._credit, attempt.id, state)
            if created:
                events.credited(self.metrics, PARTNER, attempt.amount)
            return self._outcome(attempt, "credited" if created else "duplicate")
        if state.state in DECLINED or state.state in REVERSED:
            await self.db.run(cards.finish_attempt, attempt.id, "declined",
                              gateway_state=state.state)
            return self._outcome(attempt, "declined", gateway_state=state.state)
        # New, PreAuthorized3DS, Authorized (IN_PROGRESS) or a state we do not know.
        return self._outcome(attempt, "pending", gateway_state=state.state)

    async def _credit(self, tx: Tx, attempt_id: int, state: State) -> bool:
        """
        Credit a Charged attempt once (its row locked; the payment's key does
        the rest).  The charge that lacked the money is taken by the batch's
        settlement, which follows this hook as of the run's moment.
        """
        attempt = await cards.get_attempt(tx, attempt_id, lock=True)
        if attempt.state == "credited":
            return False
        payment, created = await self.payments.accept(
            tx, PARTNER, attempt.order_number, None, attempt.amount,
            details={"autopay": attempt.attempt, "state": state.state,
                     "card_id": attempt.card_id},
            customer_id=attempt.customer_id)
        await cards.finish_attempt(tx, attempt_id, "credited", gateway_state=state.state,
                                   payment_id=payment.id)
        return created

    def _outcome(self, attempt: cards.Attempt, outcome: str, **fields) -> str:
        log_fields = dict(customer=attempt.customer_id, order=attempt.order_number,
                          attempt=attempt.attempt, amount=attempt.amount, outcome=outcome,
                          provider=PARTNER, reason=f"autopay_{outcome}", **fields)
        if outcome in ("credited", "duplicate"):
            log.info("autopayment {attempt} for customer {customer}: {amount} credited"
                     " (order {order})", **log_fields)
        elif outcome == "declined":
            log.warn("autopayment {attempt} for customer {customer} declined (order {order});"
                     " the normal debt rule applies", **log_fields)
        elif outcome == "pending":
            log.warn("autopayment {attempt} for customer {customer}: outcome not known yet"
                     " (order {order}); GetState will tell on the next run", **log_fields)
        self._count(outcome)
        return outcome

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.payture_autopay.labels(outcome).inc()
