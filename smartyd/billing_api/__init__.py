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
