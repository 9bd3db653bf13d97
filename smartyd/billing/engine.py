"""
The charging engine: subscriptions charged from the customers' virtual
accounts, debt, reactivation, promised payments.  The SQL of the billing
lives here (a repository module, like L{smartyd.ledger}).

Everything about one customer happens in L{settle}, inside the caller's
transaction, with the customer row locked FOR UPDATE first (the lock every
writer of a customer's money takes first: pays, runs, admin commands):

  1. an open promised payment that has come due is taken back;
  2. every charge due up to ``at`` is taken in time order -- the whole price
     at each period's start (``charge = "period"``) or price / days every day
     (``"daily"``) -- each a ledger row whose idempotency key names the
     subscription and the period (and day), so a period is charged once
     however many runs, instances or crashes race for it;
  3. a charge that would take the balance below ``-credit_limit`` is not
     taken: the subscription is suspended, and so is every other charge due
     (stopping at debt); the customer's active accounts are deactivated with
     ``status_reason = DEBT``;
  4. a suspended subscription is retried: it resumes with a new period
     starting at ``at`` (no charge for the days it was off), and when no
     subscription is suspended any more the DEBT accounts are reactivated.

A run (L{run}) settles every customer with something due, in batches of
customers, each batch one transaction with set-based statements, so that a
large operator's run neither holds long locks nor stalls the reactor.  A
payment settles its customer in its own transaction (L{after_payment}, a
payment hook), so a viewer who pays is watching again at once.

Subscriptions and accounts changing state fire the entitlement NOTIFY
(statement triggers); charging alone (paid_until moving) does not.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from attrs import define, frozen

from smartyd import catalog, ledger
from smartyd.billing.periods import DAY, Period, daily_amount, unused_share
from smartyd.config import Billing as BillingConfig
from smartyd.db import Database, Tx

ZERO = Decimal("0.00")


class BillingError(ledger.LedgerError):
    """A billing operation was refused; the message says why."""


@frozen
class RunResult:
    """
    What a run (or a settlement) did: ``charged`` charge rows, ``amount``
    charged in total (charges and activations), ``suspended`` subscriptions
    suspended for debt, ``reactivated`` subscriptions resumed.
    """

    charged: int = 0
    amount: Decimal = ZERO
    suspended: int = 0
    reactivated: int = 0
    customers: int = 0

    def __add__(self, other: "RunResult") -> "RunResult":
        return RunResult(self.charged + other.charged, self.amount + other.amount,
                         self.suspended + other.suspended, self.reactivated + other.reactivated,
                         self.customers + other.customers)

    def to_json(self) -> dict:
        return {"charged": self.charged, "amount": str(self.amount.quantize(Decimal("0.01"))),
                "suspended": self.suspended, "reactivated": self.reactivated}


def utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


def epoch(moment: datetime) -> int:
    """Microseconds since the epoch: the anchor's part of an idempotency key."""
    return (moment - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1)


@define
class _Sub:
    id: int
    customer_id: int
    account_id: int | None
    tariff_id: int
    anchor: datetime
    periods: int
    days: int
    paid_until: datetime
    state: str
    activation_due: Decimal
    price: Decimal
    period: Period
    was: tuple = ()
    was_state: str = ""

    def __attrs_post_init__(self) -> None:
        self.was = (self.anchor, self.periods, self.days, self.paid_until, self.activation_due)
        self.was_state = self.state

    @property
    def moved(self) -> bool:
        return self.was != (self.anchor, self.periods, self.days, self.paid_until,
                            self.activation_due)

    def next_unit(self, daily: bool) -> tuple[Decimal, str, datetime, int, int]:
        """The next charge: (amount, key suffix, new paid_until, new periods, new days)."""
        k = self.periods
        if not daily:
            return (self.price, f"{epoch(self.anchor)}:{k}", self.period.start(self.anchor, k + 1),
                    k + 1, 0)
        n = self.period.length_days(self.anchor, k)
        d = self.days
        amount = daily_amount(self.price, n, d)
        key = f"{epoch(self.anchor)}:{k}:{d}"
        if d >= n - 1:
            return amount, key, self.period.start(self.anchor, k + 1), k + 1, 0
        return amount, key, self.period.start(self.anchor, k) + (d + 1) * DAY, k, d + 1

    def last_paid(self, daily: bool) -> tuple[Decimal, datetime, datetime] | None:
        """The last charge taken: (amount, start, end of what it paid for)."""
        if not daily:
            if self.periods == 0:
                return None
            k = self.periods - 1
            return self.price, self.period.start(self.anchor, k), self.paid_until
        k, d = self.periods, self.days - 1
        if d < 0:
            if k == 0:
                return None
            k -= 1
            d = self.period.length_days(self.anchor, k) - 1
        n = self.period.length_days(self.anchor, k)
        start = self.period.start(self.anchor, k) + d * DAY
        return daily_amount(self.price, n, d), start, self.paid_until


_SUB_COLUMNS = (
    "s.id, s.customer_id, s.account_id, s.tariff_id, s.anchor, s.periods, s.days, s.paid_until,"
    " s.state, s.activation_due, t.price, t.period_days, t.period_months"
)


def _sub(row: tuple) -> _Sub:
    *head, price, days, months = row
    return _Sub(*head, price=price, period=Period(days, months))


# -- settling customers --------------------------------------------------------------------
async def settle(tx: Tx, cfg: BillingConfig, customer_ids: list[int], at: datetime,
                 shortfalls: dict | None = None) -> RunResult:
    """
    Bring the customers' billing up to ``at`` (see the module docstring), in
    the caller's transaction.  Nothing is charged in the full/reduced modes.

    With ``shortfalls`` (a dict) nothing is written: a dry run that fills it
    with ``customer id -> Shortfall`` for each customer whose charges would
    be refused for debt (what autopayment must bring in first).
    """
    if not cfg.charges or not customer_ids:
        return RunResult()
    ids = sorted(set(customer_ids))
    balances = dict(await tx.fetchall(
        "SELECT id, balance FROM customers WHERE id = ANY(%s) ORDER BY id FOR UPDATE", (ids,)))
    subs: dict[int, list[_Sub]] = defaultdict(list)
    for row in await tx.fetchall(
            f"SELECT {_SUB_COLUMNS} FROM subscriptions s JOIN tariffs t ON t.id = s.tariff_id"
            " WHERE s.customer_id = ANY(%s) AND (s.state = 'suspended' OR s.paid_until <= %s)"
            " ORDER BY s.customer_id, s.paid_until, s.id FOR UPDATE OF s",
            (ids, at)):
        sub = _sub(row)
        subs[sub.customer_id].append(sub)
    promises: dict[int, list[tuple]] = defaultdict(list)
    for pid, cid, amount in await tx.fetchall(
            "SELECT id, customer_id, amount FROM promises WHERE customer_id = ANY(%s)"
            " AND returned_at IS NULL AND due <= %s ORDER BY id", (ids, at)):
        promises[cid].append((pid, amount))

    daily = cfg.charge == "daily"
    floor = -cfg.credit_limit
    entries: list[tuple] = []
    charged, total, suspended, resumed = 0, ZERO, 0, 0
    debtors, clear, returned = [], [], []
    for cid in ids:
        if cid not in balances:
            continue
        balance = balances[cid]

        def book(amount: Decimal, kind: str, cause: str, key: str, sub: _Sub | None = None,
                 moment: datetime = at) -> None:
            nonlocal balance
            balance -= amount
            entries.append((cid, sub.account_id if sub else None, -amount, kind, cause, key,
                            balance, sub.tariff_id if sub else None, sub.id if sub else None,
                            moment))

        for pid, amount in promises.get(cid, ()):
            book(amount, "promise_return", f"promise {pid}", f"promise_return:{pid}")
            returned.append(pid)

        mine = subs.get(cid, [])
        resuming = {s.id for s in mine if s.state == "suspended"}
        pending = {s.id for s in mine}
        debt = False
        while True:
            due = [s for s in mine if s.id in pending and
                   (s.id in resuming or s.paid_until <= at)]
            if not due:
                break
            sub = min(due, key=lambda s: (at if s.id in resuming else s.paid_until, s.id))
            if sub.id in resuming:
                # Resumed: a new period starts now (no charge for the days off).
                candidate = _Sub(sub.id, cid, sub.account_id, sub.tariff_id, at, 0, 0, at,
                                 "active", sub.activation_due, sub.price, sub.period)
            else:
                candidate = sub
            amount, suffix, paid_until, periods, days = candidate.next_unit(daily)
            cost = amount + candidate.activation_due
            if debt or balance - cost < floor:
                # Debt: this charge and whatever else is due are not taken.
                if shortfalls is not None:
                    _short(shortfalls, cid, sub, cost, None if debt else balance - floor)
                debt = True
                pending.discard(sub.id)
                if sub.state == "active":
                    sub.state, suspended = "suspended", suspended + 1
                continue
            if candidate.activation_due:
                book(candidate.activation_due, "activation", f"tariff {sub.tariff_id}",
                     f"activation:{sub.id}", sub, candidate.paid_until)
                total += candidate.activation_due
            if amount:
                book(amount, "charge", f"tariff {sub.tariff_id}", f"charge:{sub.id}:{suffix}",
                     sub, candidate.paid_until)
                total += amount
                charged += 1
            if sub.id in resuming:
                resuming.discard(sub.id)
                resumed += 1
                sub.state = "active"
            sub.anchor, sub.periods, sub.days = candidate.anchor, periods, days
            sub.paid_until, sub.activation_due = paid_until, ZERO
        in_debt = debt or any(s.state == "suspended" for s in subs.get(cid, ()))
        (debtors if in_debt else clear).append(cid)

    if shortfalls is not None:
        return RunResult()
    await _write(tx, entries, [s for c in ids for s in subs.get(c, ())], returned, at)
    await _account_states(tx, debtors, clear)
    return RunResult(charged, total, suspended, resumed, len(balances))


@frozen
class Shortfall:
    """
    What a customer lacks to be charged (a dry run of L{settle}): ``amount``;
    ``period`` is the due moment (``paid_until``) of the first charge refused
    and ``subscription_id`` its subscription -- stable until that charge is
    taken, so it names "this period" for autopayment.
    """

    amount: Decimal
    period: datetime
    subscription_id: int


def _short(shortfalls: dict, cid: int, sub: _Sub, cost: Decimal, room: Decimal | None) -> None:
    known = shortfalls.get(cid)
    if known is None:  # the first refused charge: what it needs beyond the room left
        shortfalls[cid] = Shortfall(cost - room, sub.paid_until, sub.id)
    else:
        shortfalls[cid] = Shortfall(known.amount + cost, known.period, known.subscription_id)


async def _write(tx: Tx, entries: list[tuple], subs: list[_Sub], returned: list[int],
                 at: datetime) -> None:
    """The batch's ledger rows, balances, subscriptions and promises: a few statements."""
    if entries:
        cols = list(zip(*entries))
        # Every customer here is locked and its subscriptions were read after
        # the lock, so no key can exist already; should one (a bug), the row
        # is skipped and its amount is not applied: balance == sum of ledger.
        await tx.execute(
            "WITH ins AS ("
            " INSERT INTO ledger (customer_id, account_id, amount, kind, cause, idem_key,"
            "  balance_after, tariff_id, subscription_id, at)"
            " SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::numeric[], %s::text[],"
            "  %s::text[], %s::text[], %s::numeric[], %s::bigint[], %s::bigint[],"
            "  %s::timestamptz[])"
            " ON CONFLICT (idem_key) DO NOTHING RETURNING customer_id, amount)"
            " UPDATE customers c SET balance = c.balance + s.total, updated = now()"
            " FROM (SELECT customer_id, sum(amount) AS total FROM ins GROUP BY 1) s"
            " WHERE c.id = s.customer_id",
            [list(c) for c in cols],
        )
    moved = [s for s in subs if s.moved]
    if moved:
        await tx.execute(
            "UPDATE subscriptions s SET anchor = u.anchor, periods = u.periods, days = u.days,"
            " paid_until = u.paid_until, activation_due = u.activation_due"
            " FROM unnest(%s::bigint[], %s::timestamptz[], %s::int[], %s::int[],"
            "  %s::timestamptz[], %s::numeric[]) AS u(id, anchor, periods, days, paid_until,"
            "  activation_due) WHERE s.id = u.id",
            ([s.id for s in moved], [s.anchor for s in moved], [s.periods for s in moved],
             [s.days for s in moved], [s.paid_until for s in moved],
             [s.activation_due for s in moved]),
        )
    # State changes on their own statement: they are what the entitlement
    # trigger announces.
    for state in ("active", "suspended"):
        changed = [s.id for s in subs if s.state == state and s.was_state != state]
        if changed:
            await tx.execute("UPDATE subscriptions SET state = %s WHERE id = ANY(%s)",
                             (state, changed))
    if returned:
        await tx.execute("UPDATE promises SET returned_at = %s WHERE id = ANY(%s)",
                         (at, returned))


async def _account_states(tx: Tx, debtors: list[int], clear: list[int]) -> None:
    """
    DEBT for the debtors' active accounts; DEBT lifted for the others' --
    only the DEBT this billing declared (``debt_by_billing``, migration
    0013): a DEBT an external billing set through the Billing API
    (transactional mode) is its decision, lifted by it.
    """
    if debtors:
        ids = [r[0] for r in await tx.fetchall(
            "SELECT id FROM accounts WHERE customer_id = ANY(%s) AND active", (debtors,))]
        if ids:
            await tx.execute(
                "UPDATE accounts SET active = false, status_reason = %s, debt_by_billing = true,"
                " updated = now() WHERE id = ANY(%s)", (ledger.DEBT, ids))
    if clear:
        ids = [r[0] for r in await tx.fetchall(
            "SELECT id FROM accounts WHERE customer_id = ANY(%s) AND NOT active"
            " AND status_reason = %s AND debt_by_billing", (clear, ledger.DEBT))]
        if ids:
            await tx.execute(
                "UPDATE accounts SET active = true, status_reason = %s, debt_by_billing = false,"
                " updated = now() WHERE id = ANY(%s)", (ledger.ACTIVE, ids))


# -- the run --------------------------------------------------------------------------------
async def due_customers(tx: Tx, at: datetime, after: int, limit: int) -> list[int]:
    """The next customers (ids above ``after``) with a charge, retry or promise due at ``at``."""
    rows = await tx.fetchall(
        "SELECT customer_id FROM ("
        " SELECT customer_id FROM subscriptions WHERE paid_until <= %(at)s"
        "  AND customer_id > %(after)s"
        " UNION SELECT customer_id FROM subscriptions WHERE state = 'suspended'"
        "  AND customer_id > %(after)s"
        " UNION SELECT customer_id FROM promises WHERE returned_at IS NULL AND due <= %(at)s"
        "  AND customer_id > %(after)s) c"
        " ORDER BY customer_id LIMIT %(limit)s",
        {"at": at, "after": after, "limit": limit},
    )
    return [r[0] for r in rows]


async def run(db: Database, cfg: BillingConfig, at: datetime, batch: int = 500,
              metrics: Any = None, before_settle: Any = None) -> RunResult:
    """
    One charging run as of ``at``: every customer with something due, in
    batches of ``batch`` customers, each batch its own transaction.

    ``before_settle(customer_ids, at)``, when given, runs before each batch
    is settled, outside its transaction: the hook where autopayment brings
    money in (Payture's card charge) before a charge would be refused.
    """
    result = RunResult()
    if not cfg.charges:
        return result
    after = 0
    while True:
        ids = await db.run(due_customers, at, after, batch)
        if not ids:
            break
        if before_settle is not None:
            await before_settle(ids, at)
        result += await db.run(settle, cfg, ids, at)
        after = ids[-1]
        if len(ids) < batch:
            break
    if metrics is not None:
        metrics.billing_charges.inc(result.charged)
        metrics.billing_amount.inc(float(result.amount))
        metrics.billing_suspended.inc(result.suspended)
        metrics.billing_reactivated.inc(result.reactivated)
    return result


# -- payments, promises, assignments -----------------------------------------------------------
def payment_hook(cfg: BillingConfig):
    """
    A payment hook: settles the paid customer in the payment's transaction
    (its row is locked already), so suspended charges are taken and DEBT
    accounts reactivated before the payment commits.
    """

    async def after_payment(tx: Tx, payment) -> None:
        await settle(tx, cfg, [payment.customer_id], payment.created)

    # The one-statement accept (migration 0011, payments.accept_in_sql) hands
    # the payment to this Python path whenever settle would write anything.
    after_payment.in_sql = ("settle",)
    return after_payment


async def promise(tx: Tx, cfg: BillingConfig, customer_id: int, amount: object, days: int,
                  at: datetime) -> dict:
    """Credit a promised payment now, to be taken back ``days`` × 24 h later."""
    amount = ledger.money(amount)
    if amount <= 0:
        raise BillingError("a promised payment is positive")
    if amount > cfg.promise_max:
        raise BillingError(f"a promised payment is at most {cfg.promise_max}")
    if not 1 <= days <= 365:
        raise BillingError("a promise lasts 1-365 days")
    if await ledger.get_customer(tx, customer_id, lock=True) is None:
        raise ledger.CustomerNotFound(f"no customer {customer_id}")
    if await tx.fetchval("SELECT 1 FROM promises WHERE customer_id = %s AND returned_at IS NULL",
                         (customer_id,)):
        raise BillingError(f"customer {customer_id} has an open promise already")
    row = await tx.fetchdict(
        "INSERT INTO promises (customer_id, amount, created_at, due) VALUES (%s, %s, %s, %s)"
        " RETURNING id, customer_id, amount, created_at, due",
        (customer_id, amount, at, at + days * DAY),
    )
    await ledger.credit(tx, customer_id, amount, "promise", f"promise {row['id']}",
                        f"promise:{row['id']}", at=at)
    await settle(tx, cfg, [customer_id], at)
    return {"id": row["id"], "customer_id": customer_id, "amount": str(row["amount"]),
            "due": row["due"].isoformat()}


async def create_account(tx: Tx, cfg: BillingConfig, login: str, password_hash: str = "", *,
                         account_id: int | None = None, customer_id: int | None = None,
                         at: datetime) -> ledger.Account:
    """
    A new account (L{ledger.create_account}) of every entry point (the CLI,
    the Billing API, the widgets' sign-up and cabinet): its customer is
    settled as of ``at``, so the customer's tariffs cover it at once and a
    customer in debt gets it in DEBT like its other accounts.
    """
    account = await ledger.create_account(tx, login, password_hash, account_id=account_id,
                                          customer_id=customer_id)
    if customer_id is not None:
        await settle(tx, cfg, [customer_id], at)
        account = await ledger.get_account(tx, account.id)
    return account


async def _holder(tx: Tx, account_id: int | None, customer_id: int | None) -> int:
    if account_id is not None:
        account = await ledger.get_account(tx, account_id)
        if account is None:
            raise ledger.AccountNotFound(f"no account {account_id}")
        customer_id = account.customer_id
    if customer_id is None or await ledger.get_customer(tx, customer_id, lock=True) is None:
        raise ledger.CustomerNotFound(f"no customer {customer_id}")
    return customer_id


async def assign(tx: Tx, cfg: BillingConfig, account_id: int | None, tariff_id: int, *,
                 customer_id: int | None = None, at: datetime) -> dict:
    """
    Assign a tariff (to an account, or with ``account_id`` None to the
    customer) as of ``at``: the activation price and the first period (or
    day) are charged at once; too little money leaves it suspended (debt).
    """
    customer_id = await _holder(tx, account_id, customer_id)
    tariff = await catalog.get_tariff(tx, tariff_id)
    if tariff is None:
        raise catalog.CatalogError(f"no tariff {tariff_id}")
    sub_id = await catalog.assign_tariff(tx, account_id, tariff_id, customer_id=customer_id,
                                         at=at)
    result = RunResult()
    if sub_id is not None:
        if tariff["activation_price"] and cfg.charges:
            await tx.execute("UPDATE subscriptions SET activation_due = %s WHERE id = %s",
                             (tariff["activation_price"], sub_id))
        result = await settle(tx, cfg, [customer_id], at)
    sub = await catalog.get_assignment(tx, account_id, tariff_id, customer_id=customer_id)
    return {"changed": sub_id is not None, "subscription": _sub_json(sub),
            "charged": result.to_json()}


async def remove(tx: Tx, cfg: BillingConfig, account_id: int | None, tariff_id: int, *,
                 customer_id: int | None = None, at: datetime) -> dict:
    """Unassign a tariff: its charges stop; with ``refund_unused`` the unused part comes back."""
    customer_id = await _holder(tx, account_id, customer_id)
    row = await tx.fetchone(
        f"SELECT {_SUB_COLUMNS} FROM subscriptions s JOIN tariffs t ON t.id = s.tariff_id"
        " WHERE s.customer_id = %s AND s.account_id IS NOT DISTINCT FROM %s AND s.tariff_id = %s"
        " FOR UPDATE OF s", (customer_id, account_id, tariff_id))
    if row is None:
        return {"changed": False, "refund": "0.00"}
    sub = _sub(row)
    refund = ZERO
    if cfg.charges and cfg.refund_unused and sub.state == "active":
        last = sub.last_paid(cfg.charge == "daily")
        if last is not None:
            refund = unused_share(last[0], last[1], last[2], at)
    if refund > 0:
        await ledger.credit(tx, customer_id, refund, "refund", f"tariff {tariff_id} removed",
                            f"refund:{sub.id}:{epoch(sub.anchor)}:{sub.periods}:{sub.days}",
                            account_id=account_id, tariff_id=tariff_id, subscription_id=sub.id,
                            at=at)
    await catalog.remove_tariff(tx, account_id, tariff_id, customer_id=customer_id)
    await settle(tx, cfg, [customer_id], at)
    return {"changed": True, "refund": str(refund)}


class TariffsExternal(BillingError):
    """The subscriber may not change tariffs: they are the external billing's (full/reduced)."""


class NotCovered(BillingError):
    """The balance (down to ``-credit_limit``) does not cover the tariff's first charge."""


def self_service(cfg: BillingConfig) -> None:
    """
    Refuse a subscriber's own tariff change when the daemon does not charge
    (``full``/``reduced``: the external billing assigns and bills tariffs,
    a tariff taken here would be free): L{TariffsExternal}.
    """
    if not cfg.charges:
        raise TariffsExternal(f"tariffs are the external billing's ([billing] mode ="
                              f" {cfg.mode!r})")


async def subscribe(tx: Tx, cfg: BillingConfig, account_id: int, tariff_id: int, *,
                    at: datetime) -> dict:
    """
    A subscriber's own tariff connection (the device API's
    CustomerTariffSubscribe, the widgets' cabinet): L{assign}, refused in
    the modes that do not charge (L{self_service}) and when the money does
    not cover it (L{NotCovered}: raised inside the caller's transaction, so
    the assignment and any charge roll back).  An operator's or a billing's
    assignment (L{assign}) leaves an unpaid tariff suspended instead: debt
    is theirs to decide, not the subscriber's click.
    """
    self_service(cfg)
    done = await assign(tx, cfg, account_id, tariff_id, at=at)
    if done["subscription"]["state"] != "active":
        raise NotCovered("the balance does not cover the tariff")
    return done


async def unsubscribe(tx: Tx, cfg: BillingConfig, account_id: int, tariff_id: int, *,
                      at: datetime) -> dict:
    """A subscriber's own tariff removal: L{remove}, refused where L{self_service} says so."""
    self_service(cfg)
    return await remove(tx, cfg, account_id, tariff_id, at=at)


def _sub_json(sub: dict | None) -> dict | None:
    if sub is None:
        return None
    return {"id": sub["id"], "tariff": sub["tariff_id"], "account_id": sub["account_id"],
            "paid_until": sub["paid_until"].isoformat(), "state": sub["state"]}


async def debtor_count(tx: Tx) -> int:
    """Customers with a subscription suspended for debt."""
    return await tx.fetchval(
        "SELECT count(DISTINCT customer_id) FROM subscriptions WHERE state = 'suspended'")
