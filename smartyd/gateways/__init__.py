"""
Payment gateways: ASSIST (forms, results polling, two-stage) and Payture
(sessions, verified notifications).

Both follow the partner-client pattern (L{smartyd.partners}): a client per
partner on a L{PartnerHTTP} (treq client + clock, a time-out and a body cap
on every request, typed errors, secrets in requests only), a service holding
our side (orders, crediting through L{smartyd.payments.accept} exactly once),
Klein apps for the endpoints and, for ASSIST, a L{Poller} for the results.

L{make_assist} and L{make_payture} are the factories the composition root
(L{smartyd.wiring}) calls with the shared HTTP client and the clock; the tests
call it with ``StubTreq`` against the fake gateways and a ``task.Clock``.
"""

from __future__ import annotations

from smartyd.config import Assist as AssistConfig, Billing as BillingConfig, \
    Payture as PaytureConfig
from smartyd.feature import Feature
from smartyd.gateways import assist, payture
from smartyd.gateways.assist_service import POLLER_JOB, AssistService
from smartyd.gateways.autopay import Autopay
from smartyd.gateways.ewallet import EWalletClient
from smartyd.gateways.payture import PaytureClient, PaytureService
from smartyd.gateways.wallet import Wallet
from smartyd.gateways.web import AssistWeb, PaytureWeb
from smartyd.partners import PartnerHTTP
from smartyd.payments import Payments
from smartyd.poller import Poller

__all__ = ["assist_service", "make_assist", "make_payture", "payture_service"]

ASSIST_TIMEOUT = 30.0
ASSIST_MAX_BODY = 16 * 1024 * 1024  # three days of a busy shop's report
PAYTURE_TIMEOUT = 15.0
PAYTURE_MAX_BODY = 64 * 1024


def assist_service(cfg: AssistConfig, *, db, client, clock, payments: Payments,
                   metrics) -> AssistService:
    """Our side of ASSIST (orders, results, crediting) on a partner client."""
    http = PartnerHTTP(assist.PARTNER, client, clock, metrics=metrics,
                       timeout=ASSIST_TIMEOUT, max_body=ASSIST_MAX_BODY)
    return AssistService(db, assist.make_client(http, cfg), cfg, metrics=metrics,
                         hooks=list(payments.accept_hooks))


def payture_service(cfg: PaytureConfig, *, db, client, clock, payments: Payments,
                    metrics, billing: BillingConfig | None = None) -> PaytureService:
    """
    Our side of Payture (orders, verified notifications) on a partner client;
    with the Add merchant, card binding (``service.wallet``) and, given the
    billing's config, autopayment (``service.autopay``, the charging job's hook).
    """
    http = PartnerHTTP(payture.PARTNER, client, clock, metrics=metrics,
                       timeout=PAYTURE_TIMEOUT, max_body=PAYTURE_MAX_BODY)
    host = cfg.host.rstrip("/")
    inpay = PaytureClient(http, host, cfg.merchant_pay_key)
    service = PaytureService(db, inpay, metrics=metrics, hooks=list(payments.accept_hooks),
                             template=cfg.template, remember_card=cfg.remember_card)
    if cfg.cards:
        service.wallet = Wallet(db, EWalletClient(http, host, cfg.merchant_pay_key,
                                                  cfg.merchant_add_key), cfg, metrics)
        if billing is not None:
            # The other hooks as for any payment; the billing's settlement is
            # the charging run's own, right after the hook (Autopay._credit).
            service.autopay = Autopay(db, service.wallet, inpay, cfg, billing,
                                      payments=Payments(hooks=payments.hooks), metrics=metrics)
    return service


def make_assist(cfg: AssistConfig, *, db, client, clock, payments: Payments,
                metrics) -> Feature:
    """``/payments/assist/*`` and the results poller (its ``handle`` is the service)."""
    service = assist_service(cfg, db=db, client=client, clock=clock, payments=payments,
                             metrics=metrics)
    poller = Poller(POLLER_JOB, cfg.poll_interval, service.poll, clock, db=db, metrics=metrics)
    service.poller = poller
    return Feature(mounts=(("/payments/assist", AssistWeb(service, db, metrics).resource()),),
                   services=(poller,), handle=service)


def make_payture(cfg: PaytureConfig, *, db, client, clock, payments: Payments, metrics,
                 trusted_proxies: tuple = (), billing: BillingConfig | None = None) -> Feature:
    """
    The Payture notification endpoints (both paths) and order creation; its
    ``handle`` is the service (``handle.autopay``: the charging job's hook).
    """
    service = payture_service(cfg, db=db, client=client, clock=clock, payments=payments,
                              metrics=metrics, billing=billing)
    resource = PaytureWeb(service, db, metrics, trusted_proxies).resource()
    return Feature(mounts=(("/payments/payture", resource),
                           ("/billing/payment/payture", resource)), handle=service)
