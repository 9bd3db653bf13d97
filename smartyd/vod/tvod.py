"""
TVOD: a title sold individually, bought by an account (a repository module:
SQL only here and in L{smartyd.ledger}).

One purchase is one transaction: the customer row locked first (the lock
order of L{smartyd.payments.accept} and the charging engine), the purchase
looked up by (account, title, purchase id) -- a repeat, or a concurrent copy
that waited on the lock, finds it and changes nothing -- then the price
debited through L{smartyd.ledger.post} (``idem_key`` ``tvod:<account>:<title>
:<purchase id>``, so the balance stays the ledger's sum), the purchase row
(our access grant) and the partner's grant queued in the partner outbox
(L{smartyd.vod.outbox}), all committed together.  A refusal (unknown or
hidden title, not sold individually, partner not enabled, too little money)
raises before anything is written.

The partner side sits behind L{TvodPartner}: the partner's ``tvod_calls``
says which outbox calls grant the title, its ``send``/``in_effect`` carry
them out.  MEGOGO's public record shows no TVOD method, so its calls are our
assumed shape (L{smartyd.vod.megogo}), kept honest by tests/fakes/megogo.py.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Protocol

from attrs import define, frozen

from smartyd import ledger
from smartyd.db import Database, Tx
from smartyd.vod import outbox
from smartyd.vod.catalog_sync import VodError

PURCHASE_ID_MAX = 64


class InsufficientFunds(VodError):
    """The customer's balance does not cover the price; nothing was written."""


class TvodPartner(Protocol):
    """What a partner that sells titles individually offers the purchase."""

    def tvod_calls(self, customer_id: int, external_id: str, purchase_id: str,
                   known: dict) -> list[tuple]:
        """``(user_key, op, args, marks)`` outbox calls that grant the title, in order."""

    def tvod_user(self, customer_id: int) -> str:
        """The partner's user key for the customer."""


@frozen
class Purchase:
    id: int
    account_id: int
    customer_id: int
    provider: str
    external_id: str
    purchase_id: str
    amount: Decimal
    ledger_id: int | None
    created: Any

    def to_json(self) -> dict:
        return {"id": self.id, "account_id": self.account_id, "customer_id": self.customer_id,
                "provider": self.provider, "title": self.external_id,
                "purchase_id": self.purchase_id, "amount": str(self.amount),
                "ledger_id": self.ledger_id, "access": True,
                "created": self.created.isoformat() if self.created else None}


_PURCHASE = (
    "SELECT p.id, p.account_id, a.customer_id, v.provider, v.external_id, p.purchase_id,"
    " p.amount, p.ledger_id, p.created FROM vod_purchases p"
    " JOIN accounts a ON a.id = p.account_id JOIN vod_titles v ON v.id = p.title_id"
)


async def get_purchase(tx: Tx, account_id: int, title_id: int,
                       purchase_id: str) -> Purchase | None:
    row = await tx.fetchone(
        f"{_PURCHASE} WHERE p.account_id = %s AND p.title_id = %s AND p.purchase_id = %s",
        (account_id, title_id, purchase_id))
    return None if row is None else Purchase(*row)


async def purchases(tx: Tx, account_id: int) -> list[Purchase]:
    rows = await tx.fetchall(f"{_PURCHASE} WHERE p.account_id = %s ORDER BY p.id",
                             (account_id,))
    return [Purchase(*r) for r in rows]


async def has_access(tx: Tx, account_id: int, provider: str, external_id: str) -> bool:
    """True when the account bought the title (any purchase id)."""
    return bool(await tx.fetchval(
        "SELECT 1 FROM vod_purchases p JOIN vod_titles v ON v.id = p.title_id"
        " WHERE p.account_id = %s AND v.provider = %s AND v.external_id = %s LIMIT 1",
        (account_id, provider, external_id)))


async def buy(tx: Tx, partner: TvodPartner | None, provider: str, account_id: int,
              external_id: str, purchase_id: str,
              credit_limit: Decimal = Decimal("0.00")) -> tuple[Purchase, bool]:
    """
    The account buys the title once per ``purchase_id``: ``(purchase, created)``;
    ``created`` is False for a repeat (nothing changed then).  The balance may
    not end below ``-credit_limit`` (the billing's floor for charges).
    """
    purchase_id = (purchase_id or "").strip()
    if not 1 <= len(purchase_id) <= PURCHASE_ID_MAX:
        raise VodError(f"a purchase id is 1-{PURCHASE_ID_MAX} characters")
    account = await ledger.get_account(tx, account_id)
    if account is None:
        raise ledger.AccountNotFound(f"no account {account_id}")
    # The customer row first: every ledger writer of this customer waits here,
    # so a concurrent copy of this purchase sees ours committed (or rolled back).
    balance = await tx.fetchval(
        "SELECT balance FROM customers WHERE id = %s FOR UPDATE", (account.customer_id,))
    title = await tx.fetchone(
        "SELECT id, tvod, price, hidden FROM vod_titles WHERE provider = %s AND external_id = %s",
        (provider, external_id))
    if title is None:
        raise VodError(f"no {provider} title {external_id}")
    title_id, tvod, price, hidden = title
    done = await get_purchase(tx, account_id, title_id, purchase_id)
    if done is not None:
        return done, False
    if hidden or not tvod or price is None:
        raise VodError(f"{provider} title {external_id} is not sold individually")
    if partner is None:
        raise VodError(f"[{provider}] is not enabled: the title cannot be granted there")
    price = ledger.money(price)
    if balance - price < -credit_limit:
        raise InsufficientFunds(
            f"balance {balance} does not cover {price} for {provider} title {external_id}")
    ledger_id = None
    if price > 0:
        entry, _ = await ledger.post(
            tx, account.customer_id, -price, "tvod", f"tvod {provider}:{external_id}",
            f"tvod:{account_id}:{title_id}:{purchase_id}", account_id=account_id)
        ledger_id = entry.id
    row = await tx.fetchone(
        "INSERT INTO vod_purchases (account_id, title_id, purchase_id, amount, ledger_id)"
        " VALUES (%s, %s, %s, %s, %s) RETURNING id",
        (account_id, title_id, purchase_id, price, ledger_id))
    user = partner.tvod_user(account.customer_id)
    known = await outbox.user_state(tx, provider, user)
    for user_key, op, args, marks in partner.tvod_calls(account.customer_id, external_id,
                                                        purchase_id, known):
        await outbox.enqueue(tx, provider, user_key, account.customer_id, op, args)
        if marks:
            await outbox.set_state(tx, provider, user_key, marks, True, account.customer_id)
    return await get_purchase(tx, account_id, title_id, purchase_id), row is not None


@define(eq=False)
class Tvod:
    """Purchases on the daemon's (or the CLI's) database, with the enabled partners."""

    db: Database
    partners: dict
    credit_limit: Decimal = Decimal("0.00")

    async def buy(self, provider: str, account_id: int, external_id: str,
                  purchase_id: str) -> tuple[Purchase, bool]:
        partner = self.partners.get(provider)
        if partner is not None and not hasattr(partner, "tvod_calls"):
            raise VodError(f"{provider} has no TVOD interface: titles are not sold individually")
        return await self.db.run(buy, partner, provider, account_id, external_id, purchase_id,
                                 self.credit_limit)
