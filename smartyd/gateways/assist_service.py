"""
ASSIST, our side: orders and their forms, the results poll that credits paid
orders once, and two-stage charge / cancel.

The poll (L{AssistService.poll}, run by a L{smartyd.poller.Poller} at most
every ``[assist] poll_interval`` seconds, cluster-wide once) is the source of
truth:

  1. fetch the bills (legacy: the whole ~3-day report; current: the state of
     each open order);
  2. store them, one row per bill number (insert or update);
  3. for each of our orders named there (unknown order numbers are logged
     once, when their bill first appears, and never credited), lock the
     order, derive its actual status from all its stored bills
     (L{smartyd.gateways.assist.decide}) and apply it: a paid order whose
     bill carries exactly the order's amount is credited through
     L{smartyd.payments.accept} in the same transaction that marks it paid.

Each order settles in its own transaction, so one bad order never holds back
the others, and a repeat (next poll, another instance) finds the order paid
and the payment there: nothing is credited twice.

A result push with a valid CheckValue (L{AssistService.on_push}) settles its
order at once through the same path -- waiting for the paced report would
leave a paid order uncredited for up to ``poll_interval``.  The legacy
gateway has no per-order query, so its pushed bill is stored (``source =
'push'``, never overwriting a report row) and settled on; the current one is
asked for that order's state.  The legacy CheckValue signs the shop, order,
amount and currency but not the status, so the report has the last word: it
overwrites the pushed row, and a credited order the report then calls
refused or mismatched raises the ``unconfirmed_credit`` alarm.

An order credits only when the paid bill's amount AND currency are the
order's (``gateway_orders.currency``, RUB unless the order says otherwise);
any other paid bill is a mismatch: nothing credited, an error log and a
``amount_mismatch`` / ``currency_mismatch`` event for an operator.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from attrs import define, field, frozen
from twisted.logger import Logger

from smartyd.db import Database, Tx
from smartyd.gateways import events, orders
from smartyd.gateways.assist import (
    CURRENT,
    GENERATIONS,
    PARTNER,
    BillResult,
    Generation,
    IAssistGateway,
    PaymentForm,
    decide,
    held_bill,
    payment_form,
)
from smartyd.partners import PartnerError

log = Logger()

POLLER_JOB = "assist-results"
# Open orders asked about (current generation): new ones for the report's
# three days (plus a day), blocked ones through the 14-day charge window.
NEW_DAYS = 4
BLOCKED_DAYS = 15
CHARGE_WINDOW_DAYS = 14
_BATCH = 500


@frozen
class PollSummary:
    bills: int = 0
    skipped: int = 0
    changed: int = 0
    unknown_orders: tuple = ()
    credited: tuple = ()
    mismatched: tuple = ()

    def to_json(self) -> dict:
        return {"bills": self.bills, "skipped": self.skipped, "changed": self.changed,
                "unknown_orders": list(self.unknown_orders), "credited": list(self.credited),
                "mismatched": list(self.mismatched)}


@frozen
class Settled:
    order_number: str
    outcome: str  # credited | already | mismatch | changed | unchanged | missing
    amount: Decimal | None = None


def _result_row(r: BillResult) -> tuple:
    return (r.bill_number, r.order_number, r.status, r.result_code, r.amount, r.currency,
            r.order_date, r.packet_date, json.dumps(r.details, ensure_ascii=False))


_RESULT_COLUMNS = ("bill_number, order_number, status, result_code, amount, currency,"
                   " order_date, packet_date, details")


async def store_results(tx: Tx, rows: list[BillResult]) -> set[str]:
    """Insert or update one row per bill; return the bill numbers new or changed."""
    changed: set[str] = set()
    for i in range(0, len(rows), _BATCH):
        batch = [_result_row(r) for r in rows[i:i + _BATCH]]
        cols = list(zip(*batch))
        got = await tx.fetchall(
            f"INSERT INTO assist_results AS a ({_RESULT_COLUMNS})"
            f" SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[],"
            f"   %s::numeric[], %s::text[], %s::timestamp[], %s::timestamp[], %s::jsonb[])"
            f" ON CONFLICT (bill_number) DO UPDATE SET"
            f"   order_number = EXCLUDED.order_number, status = EXCLUDED.status,"
            f"   result_code = EXCLUDED.result_code, amount = EXCLUDED.amount,"
            f"   currency = EXCLUDED.currency, order_date = EXCLUDED.order_date,"
            f"   packet_date = EXCLUDED.packet_date, details = EXCLUDED.details,"
            f"   source = 'report', updated = now()"
            f" WHERE (a.order_number, a.status, a.result_code, a.amount, a.currency,"
            f"        a.order_date, a.packet_date, a.details, a.source)"
            f"   IS DISTINCT FROM (EXCLUDED.order_number, EXCLUDED.status,"
            f"        EXCLUDED.result_code, EXCLUDED.amount, EXCLUDED.currency,"
            f"        EXCLUDED.order_date, EXCLUDED.packet_date, EXCLUDED.details, 'report')"
            f" RETURNING bill_number",
            tuple(list(c) for c in cols),
        )
        changed.update(r[0] for r in got)
    return changed


async def store_pushed(tx: Tx, r: BillResult) -> bool:
    """
    Store the bill a genuine push reports (``source = 'push'``); True when
    new or changed.  It never overwrites a row the report gave: the report is
    the gateway's own word and a push may arrive late or repeated.
    """
    row = await tx.fetchone(
        f"INSERT INTO assist_results AS a ({_RESULT_COLUMNS}, source)"
        f" VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, 'push')"
        f" ON CONFLICT (bill_number) DO UPDATE SET"
        f"   order_number = EXCLUDED.order_number, status = EXCLUDED.status,"
        f"   result_code = EXCLUDED.result_code, amount = EXCLUDED.amount,"
        f"   currency = EXCLUDED.currency, order_date = EXCLUDED.order_date,"
        f"   packet_date = EXCLUDED.packet_date, details = EXCLUDED.details, updated = now()"
        f" WHERE a.source = 'push'"
        f"   AND (a.order_number, a.status, a.result_code, a.amount, a.currency,"
        f"        a.order_date, a.packet_date, a.details)"
        f"   IS DISTINCT FROM (EXCLUDED.order_number, EXCLUDED.status,"
        f"        EXCLUDED.result_code, EXCLUDED.amount, EXCLUDED.currency,"
        f"        EXCLUDED.order_date, EXCLUDED.packet_date, EXCLUDED.details)"
        f" RETURNING bill_number",
        _result_row(r),
    )
    return row is not None


async def results_for(tx: Tx, order_number: str) -> list[BillResult]:
    rows = await tx.fetchall(
        "SELECT bill_number, order_number, status, amount, currency, order_date, packet_date,"
        " result_code, details FROM assist_results WHERE order_number = %s",
        (order_number,),
    )
    return [BillResult(*r) for r in rows]


def _dedupe(rows) -> list[BillResult]:
    by_bill: dict[str, BillResult] = {}
    for r in rows:
        by_bill[r.bill_number] = r  # a bill listed twice: the later line wins
    return list(by_bill.values())


@define
class AssistService:
    """ASSIST orders, results polling and two-stage operations for one ``[assist]`` config."""

    db: Database
    client: IAssistGateway
    cfg: Any
    metrics: Any = None
    hooks: list = field(factory=list)
    poller: Any = None  # set by install: the push forces it

    @property
    def generation(self) -> Generation:
        return GENERATIONS[self.cfg.generation]

    # -- orders ------------------------------------------------------------------------------
    async def create_order(self, account_id: int, amount: object, two_stage: bool = False,
                           comment: str = "") -> tuple[orders.Order, PaymentForm]:
        # Validate the form first, so that a bad comment leaves no order behind.
        payment_form(self.cfg, "0", Decimal("1.00"), two_stage, comment)
        order = await self.db.run(orders.create, PARTNER, account_id, amount, two_stage)
        form = payment_form(self.cfg, order.order_number, order.amount, two_stage, comment)
        log.info("ASSIST order {order} for {amount} to account {account}",
                 order=order.order_number, amount=order.amount, account=account_id,
                 provider=PARTNER, two_stage=two_stage)
        return order, form

    # -- the poll -----------------------------------------------------------------------------
    async def poll(self) -> PollSummary:
        """One poll: fetch, store, settle.  Raises on a gateway or database failure."""
        queries = []
        if self.generation.name == "current":
            open_orders = await self.db.run(orders.open_orders, PARTNER, NEW_DAYS, BLOCKED_DAYS)
            queries = [(o.order_number, o.created) for o in open_orders]
            if not queries:
                return PollSummary()
        report = await self.client.results(queries)
        rows = _dedupe(report.rows)
        if report.skipped:
            events.count(self.metrics, PARTNER, "bad_row", report.skipped)
            log.warn("ASSIST results: skipped {count} unusable rows", count=report.skipped,
                     provider=PARTNER, reason="bad_row")
        if report.refused:
            events.count(self.metrics, PARTNER, "state_refused", report.refused)
        changed, statuses = await self.db.run(self._store, rows)
        by_order: dict[str, set[str]] = {}
        for r in rows:
            by_order.setdefault(r.order_number, set()).add(r.bill_number)
        unknown = []
        credited, mismatched = [], []
        for number, bills in sorted(by_order.items()):
            if number not in statuses:
                if bills & changed:  # log an unknown order once, when its bill is new
                    unknown.append(number)
                continue
            if not (bills & changed) and statuses[number] in orders.FINAL:
                continue
            settled = self._counted(await self.db.run(self._settle, number))
            if settled.outcome == "credited":
                credited.append(number)
            elif settled.outcome == "mismatch":
                mismatched.append(number)
        for number in unknown:
            events.count(self.metrics, PARTNER, "unknown_order")
            log.warn("ASSIST reports order {order}, which is not ours: ignored",
                     order=number, provider=PARTNER, reason="unknown_order")
        return PollSummary(len(rows), report.skipped, len(changed), tuple(unknown),
                           tuple(credited), tuple(mismatched))

    def _counted(self, settled: Settled) -> Settled:
        """Count a credit once its transaction has committed."""
        if settled.outcome == "credited":
            events.credited(self.metrics, PARTNER, settled.amount)
        return settled

    # -- the push -------------------------------------------------------------------------------
    async def on_push(self, number: str, pushed: BillResult | None) -> Settled:
        """
        A push with a valid CheckValue about order ``number`` (``pushed``: the
        bill it reports, if it names one): settle the order now, not at the
        next report poll, which is paced to ``poll_interval`` and may be
        minutes away.

          - current generation: ask the gateway for that one order's state
            (orderstate) and settle on its answer; only when the gateway
            cannot answer, settle on the push, whose CheckValue signs the
            order's state, amount and currency;
          - legacy generation: there is no per-order query, so the pushed
            bill itself is stored (``source = 'push'``) and settled on.

        Either way the credit goes through L{_settle} -> L{orders.credit} ->
        L{smartyd.payments.accept} under the order's row lock, exactly as the
        poll credits: a repeated push, a poll racing with it, or the report
        confirming it later credit nothing twice.  Then the poll is asked to
        run soon (the poller refuses it without moving its schedule when it
        ran less than ``poll_interval`` ago); the report overwrites the pushed
        row, confirming it or raising the ``unconfirmed_credit`` alarm.
        """
        order = await self.db.run(orders.get, PARTNER, number)
        if order is None:
            log.warn("ASSIST push about order {order}, which is not ours: ignored",
                     order=number, provider=PARTNER, reason="unknown_order")
            return Settled(number, "missing")
        if order.status in orders.FINAL:  # settled already: the report tells the rest
            return Settled(number, "unchanged")
        use_push = pushed is not None and pushed.order_number == number
        if self.generation is CURRENT:
            try:
                report = await self.client.results([(number, order.created)])
            except PartnerError as e:
                log.warn("ASSIST state of order {order} unavailable ({error}): settling on"
                         " the push", order=number, error=str(e), provider=PARTNER)
            else:
                rows = _dedupe(r for r in report.rows if r.order_number == number)
                if rows:
                    await self.db.run(self._store, rows)
                    use_push = False
        if use_push:
            await self.db.run(store_pushed, pushed)
        settled = self._counted(await self.db.run(self._settle, number))
        log.info("ASSIST push for order {order}: {outcome}", order=number,
                 outcome=settled.outcome, bill=pushed.bill_number if pushed else None,
                 provider=PARTNER)
        self.poll_soon()
        return settled

    async def _store(self, tx: Tx, rows: list[BillResult]):
        changed = await store_results(tx, rows)
        numbers = sorted({r.order_number for r in rows})
        statuses = {}
        if numbers:
            for number, status in await tx.fetchall(
                "SELECT order_number, status FROM gateway_orders"
                " WHERE provider = %s AND order_number = ANY(%s)", (PARTNER, numbers),
            ):
                statuses[number] = status
        return changed, statuses

    async def _settle(self, tx: Tx, number: str) -> Settled:
        order = await orders.get(tx, PARTNER, number, lock=True)
        if order is None:
            return Settled(number, "missing")
        decision = decide(await results_for(tx, number), self.generation, order.amount,
                          order.two_stage, order.currency)
        actual = decision.result
        if decision.kind == "pending":
            return Settled(number, "unchanged")
        if order.credited:
            return await self._after_credit(tx, order, decision)
        if decision.kind == "credit":
            order, payment, created = await orders.credit(
                tx, order, self.hooks,
                details={"bill_number": actual.bill_number, "status": actual.status,
                         "currency": actual.currency, "result_code": actual.result_code},
                gateway_status=actual.status, bill_number=actual.bill_number,
            )
            if created:
                log.info("credited {amount} to account {account}: ASSIST order {order}"
                         " bill {bill} {status}", amount=order.amount,
                         account=order.account_id, order=number, bill=actual.bill_number,
                         status=actual.status, provider=PARTNER, payment=payment.id)
            return Settled(number, "credited" if created else "already", order.amount)
        if decision.kind == "mismatch":
            if order.status != "mismatch" or order.bill_number != actual.bill_number:
                await orders.set_state(tx, order, "mismatch", actual.status, actual.bill_number)
                reason = f"{decision.why}_mismatch"  # amount_mismatch | currency_mismatch
                events.count(self.metrics, PARTNER, reason)
                log.error(
                    "ASSIST order {order} is {status} for {paid} {paid_currency} but we asked"
                    " {amount} {currency}: NOT credited, an operator must look", order=number,
                    status=actual.status, paid=str(actual.amount),
                    paid_currency=actual.currency or "(no currency)", amount=order.amount,
                    currency=order.currency, account=order.account_id,
                    bill=actual.bill_number, provider=PARTNER, reason=reason,
                )
                return Settled(number, "mismatch")
            return Settled(number, "unchanged")
        if decision.kind == "keep":
            if order.gateway_status != actual.status:
                await orders.set_state(tx, order, order.status, actual.status)
                return Settled(number, "changed")
            return Settled(number, "unchanged")
        if (order.status, order.gateway_status, order.bill_number) != (
                decision.status, actual.status, actual.bill_number):
            await orders.set_state(tx, order, decision.status, actual.status, actual.bill_number)
            if decision.status == "unknown":
                # A state we cannot read (a new or partial one): the payer may have
                # paid, and the order stays open uncredited -- an operator must know.
                events.count(self.metrics, PARTNER, "unknown_status")
                log.warn("ASSIST order {order} is in a state we do not know: {gateway_status}"
                         " (bill {bill}); NOT credited, the order stays open -- an operator"
                         " must look", order=number, gateway_status=actual.status,
                         bill=actual.bill_number, account=order.account_id,
                         provider=PARTNER, reason="unknown_status")
                return Settled(number, "changed")
            log.info("ASSIST order {order} is {status} ({gateway_status})", order=number,
                     status=decision.status, gateway_status=actual.status,
                     bill=actual.bill_number, provider=PARTNER)
            return Settled(number, "changed")
        return Settled(number, "unchanged")

    async def _after_credit(self, tx: Tx, order: orders.Order, decision) -> Settled:
        """
        A credited order stays credited; a reversal at the gateway is an
        operator's alarm, and so is a report that contradicts the credit (a
        refusal or a mismatch: a push credited what the gateway now denies).
        """
        actual = decision.result
        if decision.status in ("declined", "mismatch"):
            if order.gateway_status != actual.status:
                await orders.set_state(tx, order, order.status, actual.status)
                events.count(self.metrics, PARTNER, "unconfirmed_credit")
                log.error(
                    "ASSIST order {order} was credited to account {account} but the gateway"
                    " now reports {status} for {paid} {paid_currency}: the account keeps the"
                    " credit until an operator decides", order=order.order_number,
                    account=order.account_id, status=actual.status, paid=str(actual.amount),
                    paid_currency=actual.currency or "(no currency)", amount=order.amount,
                    bill=actual.bill_number, provider=PARTNER, reason="unconfirmed_credit",
                )
                return Settled(order.order_number, "changed")
            return Settled(order.order_number, "unchanged")
        if decision.kind == "set" and decision.status == "reversed":
            if order.status != "reversed":
                await orders.set_state(tx, order, "reversed", actual.status)
                events.count(self.metrics, PARTNER, "reversed_after_credit")
                log.error(
                    "ASSIST order {order} was credited to account {account} and is now"
                    " {status} at the gateway: the account keeps the credit until an"
                    " operator debits it", order=order.order_number,
                    account=order.account_id, status=actual.status, amount=order.amount,
                    provider=PARTNER, reason="reversed_after_credit",
                )
                return Settled(order.order_number, "changed")
            return Settled(order.order_number, "unchanged")
        if order.gateway_status != actual.status:
            await orders.set_state(tx, order, order.status, actual.status)
            return Settled(order.order_number, "changed")
        return Settled(order.order_number, "already")

    # -- two-stage ------------------------------------------------------------------------------
    async def _operable(self, number: str, allowed: tuple[str, ...], what: str):
        """The order, the bill to act on, and whether the 14-day window has closed."""
        async def look(tx: Tx):
            order = await orders.get(tx, PARTNER, number)
            if order is None:
                raise orders.OrderError(f"no ASSIST order {number}")
            expired = await tx.fetchval(
                "SELECT now() > %s + make_interval(days => %s)",
                (order.created, CHARGE_WINDOW_DAYS),
            )
            return order, await results_for(tx, number), expired

        order, bills, expired = await self.db.run(look)
        if order.status not in allowed:
            raise orders.OrderError(
                f"ASSIST order {number} is {order.status}"
                f"{' (' + order.gateway_status + ')' if order.gateway_status else ''}:"
                f" cannot {what} it"
            )
        if order.status == "blocked":
            # the bill holding the amount, not a later failed capture attempt
            held = held_bill(bills, self.generation)
            bill = held.bill_number if held is not None else None
        else:
            bill = order.bill_number  # the bill that paid it
        if not bill:
            raise orders.OrderError(f"ASSIST order {number} has no bill to {what}")
        return order, bill, expired

    async def charge(self, number: str) -> dict:
        """Charge a blocked two-stage order (within 14 days of its creation)."""
        order, bill, expired = await self._operable(number, ("blocked",), "charge")
        if not order.two_stage:
            raise orders.OrderError(f"ASSIST order {number} is single-stage: nothing to charge")
        if expired:
            raise orders.OrderError(
                f"ASSIST order {number}: the {CHARGE_WINDOW_DAYS}-day charge window has closed"
            )
        answer = await self.client.charge(bill, order.amount)
        log.info("ASSIST charge of order {order} bill {bill} accepted", order=number,
                 bill=bill, amount=order.amount, provider=PARTNER)
        self.poll_soon()
        return {"order": order.to_json(), "action": "charge", "answer": answer}

    async def cancel(self, number: str) -> dict:
        """Void a blocked order, or refund a paid one (the whole amount)."""
        order, bill, _ = await self._operable(number, ("blocked", "paid"), "cancel")
        answer = await self.client.cancel(bill, order.amount)
        if order.credited:
            log.warn("ASSIST refund of credited order {order} accepted: account {account}"
                     " keeps the credit of {amount} until an operator debits it",
                     order=number, account=order.account_id, amount=order.amount,
                     bill=bill, provider=PARTNER)
        else:
            log.info("ASSIST cancel of order {order} bill {bill} accepted", order=number,
                     bill=bill, provider=PARTNER)
        self.poll_soon()
        return {"order": order.to_json(), "action": "cancel", "answer": answer}

    def poll_soon(self) -> None:
        if self.poller is not None and self.poller.running:
            self.poller.force()

    async def show(self, number: str) -> dict:
        async def look(tx: Tx):
            order = await orders.get(tx, PARTNER, number)
            if order is None:
                raise orders.OrderError(f"no ASSIST order {number}")
            bills = await results_for(tx, number)
            return order, bills

        order, bills = await self.db.run(look)
        out = order.to_json()
        out["bills"] = [
            {"bill_number": b.bill_number, "status": b.status,
             "amount": None if b.amount is None else str(b.amount), "currency": b.currency,
             "order_date": b.order_date.isoformat() if b.order_date else None,
             "result_code": b.result_code}
            for b in bills
        ]
        return out
