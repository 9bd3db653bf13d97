"""
The changes an operator makes in the console.  Each runs the function the
CLI, the billing and the Billing API run (L{ledger.set_active},
L{ledger.post} then L{engine.settle}, L{engine.promise}, L{engine.assign} /
L{engine.remove}, the account password and device deletion of the cabinet
and the Billing API, L{journals.retry_receipt}) and writes its audit row in
the same transaction through L{operators.audited} (as ``smartyd-admin``
does with actor ``cli``): the change and its record commit together or not
at all.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal

from smartyd import catalog, journals, ledger, operators
from smartyd.billing import engine
from smartyd.billing_api.repo import delete_device
from smartyd.gateways import cards
from smartyd.tvmw import devices as tvmw_devices
from smartyd.config import Billing as BillingConfig
from smartyd.db import Tx
from smartyd.widgets.repo import set_account_password, set_xmltv_id

MANUAL = "manual"  # the ledger kind of a hand-made credit or debit
MAX_REASON = 500
KEY_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


class ActionError(ledger.LedgerError):
    """The action was refused; the message (a text key of the console) says why."""


ACCOUNT_STATE = ("login", "active", "status_reason")  # what a block's audit row records


async def _value(value):
    """``value`` as a state read before a change (L{operators.audited}'s ``before``)."""
    return value


async def _balance(tx: Tx, customer_id: int) -> str:
    return str((await ledger.get_customer(tx, customer_id)).balance)


async def _balance_before(tx: Tx, customer_id: int) -> dict:
    """The customer's balance before a change, its row locked; ``no_customer``."""
    customer = await ledger.get_customer(tx, customer_id, lock=True)
    if customer is None:
        raise ActionError("no_customer")
    return {"balance": str(customer.balance)}


async def _channel(tx: Tx, channel_id: int) -> dict | None:
    return next((c for c in await catalog.list_channels(tx) if c["id"] == channel_id), None)


def _reason(reason: str) -> str:
    reason = (reason or "").strip()
    if not reason or len(reason) > MAX_REASON or not reason.isprintable():
        raise ActionError("need_reason")
    return reason


async def set_account_state(tx: Tx, op: operators.Operator, customer_id: int, account_id: int,
                            active: bool, reason: str, at: datetime) -> ledger.Account:
    """Block or unblock an account (the CLI's ``account block|unblock``), audited."""
    reason = _reason(reason)
    account = await ledger.get_account(tx, account_id, lock=True)
    if account is None or account.customer_id != customer_id:
        raise ActionError("no_account")

    def state(a: ledger.Account) -> dict:
        return {"account": account_id, **{k: a.to_json()[k] for k in ACCOUNT_STATE}}

    return await operators.audited(
        tx, op.login, "account.unblock" if active else "account.block",
        lambda tx: ledger.set_active(tx, account_id, active,
                                     ledger.ACTIVE if active else ledger.BLOCK),
        at=at, operator_id=op.id, customer_id=customer_id, before=lambda tx: _value(state(account)),
        after=state, reason=reason)


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


async def promise(tx: Tx, cfg: BillingConfig, op: operators.Operator, customer_id: int,
                  amount: Decimal, days: int, reason: str, at: datetime) -> dict:
    """A promised payment (the CLI's ``customer promise``), audited."""
    reason = _reason(reason)

    async def grant(tx):
        out = await engine.promise(tx, cfg, customer_id, amount, days, at)
        return {"balance": await _balance(tx, customer_id), **out}

    return await operators.audited(tx, op.login, "promise.grant", grant, at=at,
                                   operator_id=op.id, customer_id=customer_id,
                                   before=lambda tx: _balance_before(tx, customer_id),
                                   reason=reason)


async def tariff(tx: Tx, cfg: BillingConfig, op: operators.Operator, customer_id: int,
                 account_id: int | None, tariff_id: int, assign: bool, reason: str,
                 at: datetime) -> dict:
    """
    Assign or remove a tariff of the customer (``account_id`` None) or of one
    of its accounts (the CLI's ``tariff assign|remove``), audited.
    """
    reason = _reason(reason)
    if account_id is not None:
        account = await ledger.get_account(tx, account_id)
        if account is None or account.customer_id != customer_id:
            raise ActionError("no_account")
    op_ = engine.assign if assign else engine.remove

    async def change(tx):
        out = await op_(tx, cfg, account_id, tariff_id,
                        customer_id=customer_id if account_id is None else None, at=at)
        return {"account": account_id, "tariff": tariff_id,
                "balance": await _balance(tx, customer_id), **out}

    return await operators.audited(
        tx, op.login, "tariff.assign" if assign else "tariff.remove", change, at=at,
        operator_id=op.id, customer_id=customer_id,
        before=lambda tx: _balance_before(tx, customer_id), reason=reason)


async def account_password(tx: Tx, op: operators.Operator, customer_id: int, account_id: int,
                           password_hash: str, reason: str, at: datetime) -> str:
    """
    A new password of the customer's account (the widgets' cabinet's setter),
    audited; the account's login.
    """
    reason = _reason(reason)

    async def change(tx):
        login = await set_account_password(tx, customer_id, account_id, password_hash)
        if login is None:
            raise ActionError("no_account")
        return login

    return await operators.audited(tx, op.login, "account.password", change, at=at,
                                   operator_id=op.id, customer_id=customer_id,
                                   # The row records the account, never the password.
                                   after=lambda login: {"account": account_id},
                                   reason=reason)


async def unbind_device(tx: Tx, op: operators.Operator, customer_id: int, device_id: int,
                        reason: str, at: datetime) -> dict:
    """Unbind a device from the customer's account (the Billing API's delete), audited."""
    reason = _reason(reason)
    device = await tx.fetchdict(
        "SELECT d.id, d.uid, d.account_id, d.model, d.serial FROM devices d"
        " JOIN accounts a ON a.id = d.account_id WHERE d.id = %s AND a.customer_id = %s",
        (device_id, customer_id))
    if device is None:
        raise ActionError("no_device")

    async def unbind(tx):  # its TV sessions end with it (migration 0023's trigger)
        ended = await tx.fetchval(
            "SELECT count(*) FROM tvmw_sessions WHERE account_id = %s AND device_uid = %s",
            (device["account_id"], device["uid"]))
        await delete_device(tx, device_id)
        return {"sessions_ended": ended}

    out = await operators.audited(tx, op.login, "device.unbind", unbind, at=at,
                                  operator_id=op.id, customer_id=customer_id,
                                  before=lambda tx: _value(device), reason=reason)
    return {**device, **out}


async def account_limits(tx: Tx, op: operators.Operator, customer_id: int, account_id: int,
                         sessions: int, devices: int, reason: str, at: datetime) -> dict:
    """
    The account's own limits of concurrent sessions and of devices in
    session, 0 clearing either (the tariffs decide): the CLI's ``account
    limit`` (L{catalog.set_account_sessions},
    L{smartyd.tvmw.devices.set_account_devices}), audited.
    """
    reason = _reason(reason)
    account = await ledger.get_account(tx, account_id, lock=True)
    if account is None or account.customer_id != customer_id:
        raise ActionError("no_account")

    async def limits(tx) -> dict:
        row = await tx.fetchdict("SELECT max_sessions, max_devices FROM accounts WHERE id = %s",
                                 (account_id,))
        return {"account": account_id, **row}

    async def change(tx):
        await catalog.set_account_sessions(tx, account_id, sessions)
        await tvmw_devices.set_account_devices(tx, account_id, devices)
        return await limits(tx)

    return await operators.audited(tx, op.login, "account.limit", change, at=at,
                                   operator_id=op.id, customer_id=customer_id, before=limits,
                                   reason=reason)


async def autopay(tx: Tx, op: operators.Operator, customer_id: int, on: bool, reason: str,
                  at: datetime) -> dict:
    """Autopayment from the bound Payture card on or off (the CLI's ``customer autopay``)."""
    reason = _reason(reason)

    async def before(tx):
        return {"autopay": await cards.autopay_enabled(tx, customer_id)}

    return await operators.audited(
        tx, op.login, "customer.autopay", lambda tx: cards.set_autopay(tx, customer_id, on),
        at=at, operator_id=op.id, customer_id=customer_id, before=before,
        after=lambda out: {"autopay": out["autopay"]}, reason=reason)


# -- the catalog (admin) ---------------------------------------------------------------------------
async def create_tariff(tx: Tx, op: operators.Operator, fields: dict, channel_ids: list[int],
                        at: datetime) -> dict:
    """A tariff, as ``smartyd-admin tariff create`` makes it, audited."""
    return await operators.audited(
        tx, op.login, "tariff.create", lambda tx: catalog.create_tariff(
            tx, fields["name"], fields["price"], channel_ids, "tv", fields["period_days"],
            fields["hidden"], period_months=fields["period_months"],
            activation_price=fields["activation_price"], sessions=fields["sessions"],
            devices=fields["devices"]),
        at=at, operator_id=op.id)


async def edit_tariff(tx: Tx, op: operators.Operator, tariff_id: int, fields: dict,
                      channel_ids: list[int], at: datetime) -> dict:
    before = next((t for t in await catalog.list_tariffs(tx) if t["id"] == tariff_id), None)
    if before is None:
        raise ActionError("not_found")
    return await operators.audited(
        tx, op.login, "tariff.edit",
        lambda tx: catalog.update_tariff(tx, tariff_id, channel_ids=channel_ids, **fields),
        at=at, operator_id=op.id, before=lambda tx: _value(before))


async def _set_xmltv(tx: Tx, channel_id: int, xmltv_id: str) -> None:
    if xmltv_id:
        await set_xmltv_id(tx, channel_id, xmltv_id)
    else:
        await tx.execute("UPDATE channels SET xmltv_id = NULL WHERE id = %s", (channel_id,))


async def create_channel(tx: Tx, op: operators.Operator, name: str, url_mask: str,
                         streamer_id: str, xmltv_id: str, at: datetime) -> dict:
    """A channel, as ``smartyd-admin channel create`` makes it, audited."""
    async def create(tx):
        channel = await catalog.create_channel(tx, name, url_mask,
                                               streamer_id=streamer_id or None)
        await _set_xmltv(tx, channel["id"], xmltv_id)
        return await _channel(tx, channel["id"])

    return await operators.audited(tx, op.login, "channel.create", create, at=at,
                                   operator_id=op.id)


async def edit_channel(tx: Tx, op: operators.Operator, channel_id: int, url_mask: str,
                       streamer_id: str, xmltv_id: str, at: datetime) -> dict:
    if await _channel(tx, channel_id) is None:
        raise ActionError("not_found")

    async def edit(tx):
        await catalog.update_channel(tx, channel_id, url_mask=url_mask,
                                     streamer_id=streamer_id or None)
        await _set_xmltv(tx, channel_id, xmltv_id)
        return await _channel(tx, channel_id)

    return await operators.audited(tx, op.login, "channel.edit", edit, at=at,
                                   operator_id=op.id,
                                   before=lambda tx: _channel(tx, channel_id))


# -- the journals (support) ----------------------------------------------------------------------
async def retry_receipt(tx: Tx, op: operators.Operator, job_id: int, at: datetime) -> dict:
    """
    A failed receipt handed back to the worker (the CLI's ``receipts retry``,
    L{journals.retry_receipt}), audited; L{journals.ReceiptNotRetryable}.
    """
    return await operators.audited(
        tx, op.login, "receipt.retry", lambda tx: journals.retry_receipt(tx, job_id), at=at,
        operator_id=op.id, before=lambda tx: journals.receipt_job(tx, job_id))


# -- operators (admin) ---------------------------------------------------------------------------
async def create_operator(tx: Tx, op: operators.Operator, login: str, role: str,
                          password_hash: str, at: datetime) -> operators.Operator:
    """An operator, as ``smartyd-admin operator create`` makes it, audited."""
    return await operators.audited(
        tx, op.login, "operator.create",
        lambda tx: operators.create(tx, login, role, password_hash), at=at, operator_id=op.id)


async def disable_operator(tx: Tx, op: operators.Operator, login: str,
                           at: datetime) -> operators.Operator:
    """Disable an operator and end its sessions (``operator disable``), audited."""
    return await operators.audited(
        tx, op.login, "operator.disable", lambda tx: operators.disable(tx, login), at=at,
        operator_id=op.id, before=lambda tx: operators.get(tx, login))
