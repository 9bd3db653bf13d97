"""
Our side of Payture's eWallet: each customer's wallet user, card binding on
the payment page, our copy of the bound cards, removal.

Binding (``[payture] remember_card``, L{smartyd.gateways.payture.binds_card}): the "remember card" box is shown
unticked (``not_checked``: bound only when the customer ticks it), shown
ticked (``checked``: bound unless the customer unticks it) or hidden and
always on (``disable``: every payment binds the card; the request's wish is
ignored).  A payment that binds goes through an eWallet session
(``/vwapi/Init`` SessionType=Pay for the customer's wallet user, registered
first if new), one that does not through the plain InPay session; both with
the page template (``[payture] template`` or the request's override).  Once
such an order is credited, GetList tells us the card: we keep its id, masked
number and expiry, nothing else.
"""

from __future__ import annotations

from typing import Any

from attrs import define
from twisted.logger import Logger

from smartyd.config import Payture as PaytureConfig
from smartyd.db import Database
from smartyd.gateways import cards
from smartyd.gateways.ewallet import EWalletClient
from smartyd.gateways.payture import PARTNER
from smartyd.ledger import CustomerNotFound, LedgerError
from smartyd.partners import PartnerError

log = Logger()


class CardNotFound(LedgerError):
    """No such card bound for the customer."""


@define
class Wallet:
    db: Database
    client: EWalletClient
    cfg: PaytureConfig
    metrics: Any = None

    async def user(self, customer_id: int) -> cards.WalletUser:
        """The customer's wallet user, registered at Payture (Check, then Register if new)."""
        user = await self.db.run(cards.wallet_user, customer_id)
        if not user.registered:
            if not await self.client.check(user.login, user.password):
                await self.client.register(user.login, user.password)
            await self.db.run(cards.mark_registered, customer_id)
        return user

    async def pay_session(self, account_id: int, order_number: str, amount_kop: int, ip: str,
                          template: str, url: str | None) -> str:
        """An eWallet payment page for the order (to the account's customer); the card is bound."""
        customer_id = await self.db.run(cards.customer_of_account, account_id)
        user = await self.user(customer_id)
        await self.db.run(cards.record_binding, order_number, customer_id, template)
        session = await self.client.init_pay(user.login, user.password, order_number,
                                             amount_kop, ip, template, url)
        return self.client.pay_url(session)

    async def after_credit(self, order_number: str) -> None:
        """An order was credited: if it bound a card, learn the card (never raises)."""
        try:
            customer_id = await self.db.run(cards.binding_customer, order_number)
            if customer_id is None:
                return
            bound = await self.sync(customer_id)
            log.info("Payture order {order} paid on an eWallet page: customer {customer}"
                     " has {count} bound card(s)", order=order_number, customer=customer_id,
                     count=len(bound), provider=PARTNER)
        except Exception as e:
            log.warn("Payture cards of order {order} not refreshed: {error}; `smartyd-admin"
                     " payture cards` refreshes them", order=order_number, error=str(e),
                     provider=PARTNER, reason="cards_sync_failed")

    async def sync(self, customer_id: int) -> list[dict]:
        """Our copy of the customer's cards made what GetList says; the cards."""
        user = await self.user(customer_id)
        listed = await self.client.get_list(user.login, user.password)
        return await self.db.run(cards.sync_cards, customer_id, listed)

    async def cards(self, customer_id: int, refresh: bool = True) -> dict:
        """The customer's cards (asking Payture first when ``refresh``; stored ones if down)."""
        if not await self.db.run(cards.customer_exists, customer_id):
            raise CustomerNotFound(f"no customer {customer_id}")
        out: dict = {"customer_id": customer_id,
                     "autopay": await self.db.run(cards.autopay_enabled, customer_id)}
        if refresh:
            try:
                out["cards"] = await self.sync(customer_id)
                out["source"] = "payture"
                return out
            except PartnerError as e:
                out["note"] = f"Payture unavailable ({e.message}): the stored list"
        out["cards"] = await self.db.run(cards.list_cards, customer_id)
        out["source"] = "stored"
        return out

    async def remove(self, customer_id: int, card_id: str) -> dict:
        """Unbind a card at Payture, then forget it (PartnerError: nothing forgotten)."""
        if not await self.db.run(cards.has_card, customer_id, card_id):
            raise CardNotFound(f"customer {customer_id} has no card {card_id}")
        user = await self.user(customer_id)
        await self.client.remove(user.login, user.password, card_id)
        await self.db.run(cards.delete_card, customer_id, card_id)
        log.info("Payture card {card} of customer {customer} removed", card=card_id,
                 customer=customer_id, provider=PARTNER)
        return {"customer_id": customer_id, "removed": card_id,
                "cards": await self.db.run(cards.list_cards, customer_id)}
