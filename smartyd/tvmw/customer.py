"""
The spec's customer methods: what the account has and owes, its tariffs
(subscribed through the built-in billing), the ledger, its password.

Choices where the spec is silent (kept; the tests hold them):

- Money: where the spec says String, a string with two places (``"300.00"``);
  where it says Number, a JSON number (as the Billing API answers money,
  L{smartyd.billing_api.service}).  Dates: ``YYYY-MM-DD HH:MM:SS``, UTC.
- Tariffs shown: every tariff that is not hidden (the spec: "except hidden,
  disabled and unavailable"), with the account's subscription to it, its own
  or its customer's.  ``period`` is in days (a calendar-month tariff: 30 per
  month); ``is_periodical`` is 1 (a subscription renews every period until
  removed); no tariff is virtual, none has a basic priority (0).  A tariff
  is basic unless created ``--additional`` (``tariffs.additional``).
- ``CustomerTariffSubscribe``: ``tariff_id`` (several, comma-separated, all
  or none) through L{smartyd.billing.engine.subscribe} (the subscriber's own
  connection, as the widgets' cabinet's: L{engine.assign}), which charges the
  activation price and the first period at once.  Refusals, checked in this
  order, change nothing: no id given (120); an id that is not a number, not
  a tariff, hidden, or a ``virtual_tariff_id`` (there are none) (1); already
  assigned to the account or its customer, suspended or not (3); a second
  basic tariff (5; hidden tariffs, e.g. a cinema's catalog tariff, do not
  count); the money does not cover it down to ``-credit_limit``
  (2, the assignment rolled back: the engine would leave it suspended for
  debt); tariffs are the external billing's in the ``full``/``reduced``
  billing modes (4, "internal api not configured": nothing charges here).
- ``CustomerTariffUnsubscribe`` through L{smartyd.billing.engine.unsubscribe}
  (a refund of the unused part with ``[billing] refund_unused``): not
  assigned (1); basic (2); assigned to the customer, not to this account
  (5: the operator's, ``available_to_unsubscribe`` 0); modes as above (4).
- ``CustomerInfo``: ``payments`` of the period ``date_from``..``date_to``
  (``YYYY-MM-DD``, both days included; default the last 30 days up to
  today), ledger rows by service: ``btv`` (rows of a ``tv`` tariff), ``vod``
  (TVOD purchases and rows of ``svod``/``tvod`` tariffs), ``other`` (payments
  and the rest).  ``payment_sum`` is what the active subscriptions cost per
  period, ``current_debt_amount`` what a payment must bring for the charges
  due now to be taken (a debtor's suspended tariff: the billing's dry run,
  L{smartyd.billing.engine.settle} with ``shortfalls``), at least the balance
  below zero, ``activation_days_left`` the whole days until the first active
  subscription's paid period ends.  Not kept here, not answered:
  ``payment_period`` (tariffs have periods of their own).
- ``PaymentList``: the ledger, newest first (``limit`` 0-100, default 100 as the spec's,
  ``page`` from 1); a bad ``limit``/``page`` answers 1 with ``error_messages``.
- ``AccountPasswordChange``: a new password of 6-128 printable characters
  (1 otherwise, as for a missing old one); a wrong old password is 2 ("error
  changing the password"), checked in constant time
  (L{smartyd.http.auth.password_login}) and counted with Login's failures
  (L{smartyd.tvmw.ratelimit}: checked after the same growing delay); the
  hash is the accounts' scrypt
  (L{smartyd.ledger.hash_password}), made off the reactor.  The sessions of
  the account end in the database when its password changes.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta, timezone
from decimal import Decimal

from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from smartyd import ledger
from smartyd.billing import engine
from smartyd.http.auth import password_login
from smartyd.tvmw import content_repo as repo
from smartyd.tvmw.call import Call
from smartyd.tvmw.errors import TvmwError
from smartyd.tvmw.ratelimit import held
from smartyd.tvmw import params as P
from smartyd.widgets.repo import set_account_password

log = Logger()

DEFAULT_PERIOD = timedelta(days=30)
PASSWORD_MIN, PASSWORD_MAX = 6, 128
CENT = Decimal("0.01")


def money(v: Decimal | None) -> str:
    return str((v or Decimal(0)).quantize(CENT))


def number(v: Decimal | None) -> float:
    """Money as a JSON number (two places survive a float exactly)."""
    return float((v or Decimal(0)).quantize(CENT))


def moment(v: datetime | None) -> str:
    return "" if v is None else v.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _period_days(t: dict) -> int:
    return 30 * t["period_months"] if t.get("period_months") else t["period_days"]


def _session(call: Call):
    if call.session is None:  # the web layer answers sessionless calls before this
        raise TvmwError(-1, "authorization required")
    return call.session


def _tariff(t: dict, account_id: int, money_as=number) -> dict:
    assigned = t["sub_id"] is not None
    return {
        "id": t["id"],
        "name": t["name"],
        "description": "",
        "price": money_as(t["price"]),
        "price_after_activation": number(t["price"]),
        "period": _period_days(t),
        "is_assigned": 1 if assigned else 0,
        "subscription_end_date": moment(t["sub_paid_until"]) if assigned else "",
        "is_virtual": 0,
        "available_to_unsubscribe": 1 if assigned and t["additional"]
        and t["sub_account_id"] == account_id else 0,
        "channels_count": t["channels_count"],
        "basic_tariff_priority": 0,
        "is_periodical": 1,
    }


# -- CustomerTariffList, CustomerTariffSubscriptionList ----------------------------------------
async def tariff_list(call: Call) -> dict:
    s = _session(call)
    rows = await call.db.run(repo.offered_tariffs, s.customer_id, s.account_id)
    out = []
    for t in rows:
        item = _tariff(t, s.account_id)
        item["is_assigned"] = bool(item["is_assigned"])  # the spec: Boolean here
        out.append(item)
    return {"tariffs": out}


async def subscription_list(call: Call) -> dict:
    s = _session(call)
    rows = await call.db.run(repo.subscriptions, s.customer_id, s.account_id)
    return {"subscriptions": [{
        "tariff_id": r["tariff_id"], "tariff_name": r["tariff_name"],
        "start_date": moment(r["anchor"]), "end_date": moment(r["paid_until"]),
        "price": money(r["price"]), "is_periodical": "1", "api_name": "",
    } for r in rows]}


# -- CustomerTariffSubscribe / Unsubscribe -----------------------------------------------------
def _tariff_ids(call: Call) -> tuple[int, ...]:
    if not call.params.get("tariff_id") and not call.params.get("virtual_tariff_id"):
        raise TvmwError(120, "neither tariff_id nor virtual_tariff_id given")
    if call.params.get("virtual_tariff_id"):
        raise P.bad("virtual_tariff_id", "there are no virtual tariffs")
    return P.integer_list(call.params, "tariff_id")


def _billing_charges(call: Call) -> None:
    try:
        engine.self_service(call.cfg.billing)
    except engine.TariffsExternal as e:
        raise TvmwError(4, str(e))


async def subscribe(call: Call) -> dict:
    s = _session(call)
    ids = _tariff_ids(call)
    channel = P.integer(call.params, "channel_id", default=0)  # where the app offered it
    _billing_charges(call)
    cfg = call.cfg.billing
    at = call.now

    async def work(tx):
        await ledger.get_customer(tx, s.customer_id, lock=True)  # the billing's lock order
        mine = await repo.subscriptions(tx, s.customer_id, s.account_id)
        have = {r["tariff_id"] for r in mine}
        kinds = await repo.tariffs_by_id(tx, list(have | set(ids)))  # one read for both checks
        for tid in ids:
            if tid not in kinds or kinds[tid]["hidden"]:
                raise TvmwError(1, f"no tariff {tid} to subscribe to")
        for tid in ids:
            if tid in have:
                raise TvmwError(3, f"tariff {tid} is subscribed already")
        # Hidden tariffs (a cinema's catalog tariff) are the operator's plumbing, not a
        # device's choice: they count neither way.
        basic = {tid for tid in have | set(ids)
                 if not kinds[tid]["additional"] and not kinds[tid]["hidden"]}
        if len(basic) > 1:
            raise TvmwError(5, "at most one basic tariff")
        for tid in ids:
            try:  # the subscriber's own connection: refused unpaid (rolled back), as the cabinet's
                await engine.subscribe(tx, cfg, s.account_id, tid, at=at)
            except engine.NotCovered as e:
                raise TvmwError(2, str(e))

    await call.db.run(work)
    log.info("tvmw: account {account} subscribed to tariffs {tariffs} (channel {channel})",
             account=s.account_id, tariffs=list(ids),
             channel=channel)
    return {}


async def unsubscribe(call: Call) -> dict:
    s = _session(call)
    ids = _tariff_ids(call)
    _billing_charges(call)
    cfg = call.cfg.billing
    at = call.now

    async def work(tx):
        await ledger.get_customer(tx, s.customer_id, lock=True)
        mine = {r["tariff_id"]: r for r in await repo.subscriptions(tx, s.customer_id,
                                                                    s.account_id)}
        known = await repo.tariffs_by_id(tx, list(ids))
        for tid in ids:
            if tid not in mine:
                raise TvmwError(1, f"tariff {tid} is not subscribed")
        for tid in ids:
            if not known[tid]["additional"]:
                raise TvmwError(2, f"tariff {tid} is basic: it is not unsubscribed here")
        for tid in ids:
            if mine[tid]["account_id"] != s.account_id:
                raise TvmwError(5, f"tariff {tid} is the customer's, not the account's")
        for tid in ids:
            await engine.unsubscribe(tx, cfg, s.account_id, tid, at=at)

    await call.db.run(work)
    log.info("tvmw: account {account} unsubscribed from tariffs {tariffs}",
             account=s.account_id, tariffs=list(ids))
    return {}


# -- CustomerInfo, PaymentList ----------------------------------------------------------------
def _comment(r: dict) -> str:
    if r["tariff_name"]:
        return f"{r['kind']}: {r['tariff_name']}"
    return f"{r['kind']}: {r['cause']}" if r["cause"] else r["kind"]


def _payment(r: dict) -> dict:
    return {"comment": _comment(r), "datetime": moment(r["moment"]),
            "amount": money(r["amount"])}


def _service(r: dict) -> str:
    if r["kind"] == "tvod" or r["tariff_kind"] in ("svod", "tvod"):
        return "vod"
    return "btv" if r["tariff_kind"] == "tv" else "other"


def _day(call: Call, name: str):
    v = P.text(call.params, name, max_len=10)
    if not v:
        return None
    try:
        day = datetime.strptime(v, "%Y-%m-%d").date()
    except ValueError:
        raise P.bad(name, "must be a date YYYY-MM-DD")
    return P.in_calendar(day, name)


async def info(call: Call) -> dict:
    s = _session(call)
    first, last = _day(call, "date_from"), _day(call, "date_to")
    today = call.now.astimezone(timezone.utc).date()
    last = last or today
    first = first or (last - DEFAULT_PERIOD + timedelta(days=1))
    if first > last:
        raise P.bad("date_from", "must not be after date_to")
    start = datetime.combine(first, time(0), timezone.utc)
    end = datetime.combine(last + timedelta(days=1), time(0), timezone.utc)

    async def look(tx):
        # What the charges due now lack (a suspended tariff's period: a debtor's
        # debt): the billing's dry run, under its lock order (customer row first).
        short: dict = {}
        await engine.settle(tx, call.cfg.billing, [s.customer_id], call.now, shortfalls=short)
        account = await ledger.get_account(tx, s.account_id)
        customer = await ledger.get_customer(tx, s.customer_id)
        tariffs = await repo.offered_tariffs(tx, s.customer_id, s.account_id)
        subs = await repo.subscriptions(tx, s.customer_id, s.account_id)
        rows = await repo.ledger_between(tx, s.customer_id, start, end)
        return account, customer, tariffs, subs, rows, short.get(s.customer_id)

    account, customer, tariffs, subs, rows, shortfall = await call.db.run(look)
    payments: dict[str, list] = {"btv": [], "vod": [], "other": []}
    for r in rows:
        payments[_service(r)].append(_payment(r))
    active = [x for x in subs if x["state"] == "active"]
    due = sum((x["price"] for x in active), Decimal(0))
    left = min((x["paid_until"] for x in active), default=None)
    days_left = max(0, (left - call.now) // timedelta(days=1)) if left else 0
    return {
        "firstname": customer.firstname,
        "lastname": customer.lastname,
        "balance": money(customer.balance),
        "email": customer.email or "",
        "mobile_phone_number": customer.phone or "",
        "abonement": account.login if account else s.abonement,
        "payments": payments,
        "tariffs": [_tariff(t, s.account_id, money_as=money) for t in tariffs],
        "subscriptions": [{
            "tariff_id": x["tariff_id"], "start_date": moment(x["anchor"]),
            "end_date": moment(x["paid_until"]), "is_periodical": 1,
            "price": number(x["price"]),
        } for x in subs],
        "payment_sum": money(due),
        "payment_sum_no_discount": money(due),
        "current_debt_amount": money(max(Decimal(0), -customer.balance,
                                         shortfall.amount if shortfall else Decimal(0))),
        "activation_days_left": days_left,
    }


async def payment_list(call: Call) -> dict:
    s = _session(call)
    limit, offset = P.paging(call.params, default_limit=100)  # the spec's default here
    rows = await call.db.run(repo.ledger_page, s.customer_id, limit, offset)
    return {"payments": [_payment(r) for r in rows]}


# -- AccountPasswordChange --------------------------------------------------------------------
async def password_change(call: Call) -> dict:
    s = _session(call)
    old = call.params.get("old_password") or ""
    new = call.params.get("new_password") or ""
    if not old or len(old) > 256:
        raise P.bad("old_password", "is required")
    if not PASSWORD_MIN <= len(new) <= PASSWORD_MAX or not new.isprintable():
        raise P.bad("new_password", f"must be {PASSWORD_MIN}-{PASSWORD_MAX} printable characters")
    # Guessing the password here counts with Login's failures (the same keys) and
    # waits the same growing delay before the check (L{ratelimit}).
    limiter = call.deps.get("limiter")
    keys = limiter.keys(call.ip, s.abonement) if limiter is not None else ()
    if limiter is not None and not await held(call, keys):
        raise TvmwError(2, "too many password attempts; try again later")
    now = call.reactor.seconds()
    account = await call.db.run(ledger.get_account, s.account_id)
    checked = None if account is None else await password_login(call.db, account.login, old)
    if checked is None or checked.id != s.account_id:
        if limiter is not None:
            limiter.failed(keys, now)
        raise TvmwError(2, "the current password is not the account's")
    if limiter is not None:
        limiter.succeeded(keys)
    pw_hash = await deferToThread(ledger.hash_password, new)
    if not await call.db.run(set_account_password, s.customer_id, s.account_id, pw_hash):
        raise TvmwError(2, "the account is gone")
    log.info("tvmw: account {account} changed its password", account=s.account_id)
    return {}


METHODS = {
    "customer/info": info,
    "customer/tariff/list": tariff_list,
    "customer/tariff/subscribe": subscribe,
    "customer/tariff/unsubscribe": unsubscribe,
    "customer/tariff/subscription/list": subscription_list,
    "payment/list": payment_list,
    "account/password/change": password_change,
}
