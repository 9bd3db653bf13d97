"""
The changes an operator makes in the console.  Each runs the function the
CLI and the billing run (L{ledger.set_active}, L{ledger.post} then
L{engine.settle}) and writes its audit row in the same transaction: the
change and its record commit together or not at all.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal

from smartyd import ledger, operators
from smartyd.billing import engine
from smartyd.config import Billing as BillingConfig
from smartyd.db import Tx

MANUAL = "manual"  # the ledger kind of a hand-made credit or debit
MAX_REASON = 500
KEY_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


class ActionError(ledger.LedgerError):
    """The action was refused; the message (a text key of the console) says why."""


def _reason(reason: str) -> str:
    reason = (reason or "").strip()
    if not reason or len(reason) > MAX_REASON or not reason.isprintable():
        raise ActionError("need_reason")
    return reason


async def set_account_state(tx: Tx, op: operators.Operator, customer_id: int, account_id: int,
                            active: bool, reason: str, at: datetime) -> ledger.Account:
    """Block or unblock an account (the CLI's ``account block|unblock``), audited."""
    reason = _reason(reason)
    before = await ledger.get_account(tx, account_id, lock=True)
    if before is None or before.customer_id != customer_id:
        raise ActionError("no_account")
    after = await ledger.set_active(tx, account_id, active,
                                    ledger.ACTIVE if active else ledger.BLOCK)
    keep = ("login", "active", "status_reason")
    await operators.audit(
        tx, op.login, "account.unblock" if active else "account.block", at=at,
        operator_id=op.id, customer_id=customer_id,
        before={"account": account_id, **{k: before.to_json()[k] for k in keep}},
        after={"account": account_id, **{k: after.to_json()[k] for k in keep}}, reason=reason)
    return after


async def adjust(tx: Tx, cfg: BillingConfig, op: operators.Operator, customer_id: int,
                 amount: Decimal, reason: str, key: str, at: datetime) -> tuple[ledger.Entry, bool]:
    """
    Credit (positive) or debit (negative) the customer by hand: a ledger row
    of kind ``manual`` naming the operator, once per form ``key`` (a repeated
    submit changes nothing), then the customer settled as after a payment
    (suspended charges taken, DEBT accounts reactivated).
    """
    reason = _reason(reason)
    if not KEY_RE.match(key or ""):
        raise ActionError("bad_csrf")
    amount = ledger.money(amount)
    if amount == 0:
        raise ActionError("bad_amount")
    before = await ledger.get_customer(tx, customer_id, lock=True)
    if before is None:
        raise ActionError("no_customer")
    entry, created = await ledger.post(tx, customer_id, amount, MANUAL,
                                       f"operator {op.login}: {reason}"[:MAX_REASON],
                                       f"manual:{key}", at=at)
    if not created:
        return entry, False
    await engine.settle(tx, cfg, [customer_id], at)
    after = await ledger.get_customer(tx, customer_id)
    await operators.audit(
        tx, op.login, "money.credit" if amount > 0 else "money.debit", at=at, operator_id=op.id,
        customer_id=customer_id, before={"balance": str(before.balance)},
        after={"balance": str(after.balance), "amount": str(amount), "ledger_id": entry.id},
        reason=reason)
    return entry, True
