"""
The Smarty Billing API: external billings (Hydra, ABillS/AXbills, scripts
on the vendor's Python/Node/PHP clients) drive customers, accounts,
tariffs and transactions at ``/billing/api/<method>`` exactly as they drive
Smarty, so an operator changes one base URL and nothing else.  The wire
contract: ../shared/BILLING_API.md.

- L{signature}: the signature (pure).
- L{params}: the parameter shapes the clients send (pure).
- L{repo}: the SQL (customers scoped by client, accounts, devices, messages,
  tariffs, transactions); money through L{smartyd.ledger} only.
- L{service}: the methods and the one place a failure becomes a code.
- L{web}: the Klein resource.

Where the contract is silent (its open questions), the choices made:

1. ``processed=0`` counts in the balance (Hydra and the Node client send 0);
   ``payments_count`` counts processed, non-deleted transactions and payments.
2. ``ext_id`` wins over ``id`` (an alias); a repeated transaction id answers 1
   and credits nothing, whatever its customer or amount; a deleted id is spent.
3. Assigning an assigned tariff, or removing an absent one: 0, nothing changes.
4. ``customer/info`` returns ``id`` (and ext_id, names, phone, e-mail).
5. No ``client_id`` -> -3; no or a repeated ``signature`` -> -2.  Checked in
   this order: client, allow-list, signature, method, readiness.
6. Booleans ``0/1/True/False/true/false``; lists as repeated keys, ``key[]`` or
   the ``[1, 2, 3]`` literal.
7. ``customer/delete`` cascades as a soft delete (the ledger keeps its
   references): accounts inactive with DELETED, logins and ext_id freed.
8. Amounts carry at most 2 decimals (never rounded); negative is a debit; in
   ``transactional`` mode a transaction settles the customer, in ``full`` it
   is bookkeeping only.
9. Customers (their ext_ids and transaction ids) belong to the client that
   created them unless it is ``shared``; tariffs are the operator's.
Also: a caller outside ``allow`` gets 200 with -3 (the clients raise on any
other status); validation in ``transaction/create`` is 6; ``last_active`` is
the last granted ``POST /streams/url`` (written at most hourly, never by a
token check); API transactions are not ``payments`` (no fiscal receipt: the
external billing fiscalizes its own).
"""

from __future__ import annotations

from typing import Callable

from smartyd.billing_api.service import METHODS, BillingAPIService
from smartyd.billing_api.web import PREFIX, BillingAPIWeb
from smartyd.config import Billing as BillingConfig, BillingAPI as BillingAPIConfig
from smartyd.feature import Feature

__all__ = ["METHODS", "PREFIX", "BillingAPIService", "BillingAPIWeb", "make_billing_api"]


def make_billing_api(cfg: BillingAPIConfig, billing: BillingConfig, *, db, clock, metrics,
                     readiness: Callable[[], bool], trusted_proxies: tuple = ()) -> Feature:
    """``/billing/api/...`` (the composition root builds it when ``[billing_api] enabled``)."""
    service = BillingAPIService(cfg, billing, db, clock, metrics, ready=readiness)
    web = BillingAPIWeb(service, metrics, trusted_proxies=trusted_proxies)
    return Feature(mounts=((PREFIX, web.resource()),), handle=service)
