"""
Payment gateways: ASSIST (forms, results polling, two-stage) and Payture
(sessions, verified notifications).

Both follow the partner-client pattern (L{smartyd.partners}): a client per
partner on a L{PartnerHTTP} (treq client + clock, a time-out and a body cap
on every request, typed errors, secrets in requests only), a service holding
our side (orders, crediting through L{smartyd.payments.accept} exactly once),
Klein apps for the endpoints and, for ASSIST, a L{Poller} for the results.

L{install} adds them for the enabled gateways; L{build} is the same wiring
with the HTTP client and clock given, which is how the tests drive it
(``StubTreq`` against the fake gateways, ``task.Clock``).
"""

from __future__ import annotations

from typing import Any

from attrs import define

from smartyd.gateways import assist, payture
from smartyd.gateways.assist_service import POLLER_JOB, AssistService
from smartyd.gateways.payture import PaytureClient, PaytureService
from smartyd.partners import HTTPClientService

__all__ = ["Gateways", "admin_commands", "build", "install"]

ASSIST_TIMEOUT = 30.0
ASSIST_MAX_BODY = 16 * 1024 * 1024  # three days of a busy shop's report
PAYTURE_TIMEOUT = 15.0
PAYTURE_MAX_BODY = 64 * 1024


@define
class Gateways:
    assist: AssistService | None = None
    assist_poller: Any = None
    payture: PaytureService | None = None


def check_config(cfg) -> None:
    """Refuse an enabled gateway without what it needs (one line naming the key)."""
    from smartyd.config import ConfigError

    a, p = cfg.assist, cfg.payture
    if a.enabled:
        for key in ("shop_id", "login", "password"):
            if not getattr(a, key):
                raise ConfigError(f"[assist] {key}: required when enabled = true")
    if p.enabled:
        if not p.host:
            raise ConfigError("[payture] host: required when enabled = true")
        if not p.merchant_pay_key:
            raise ConfigError("[payture] merchant_pay_key: required when enabled = true")


def assist_service(cfg, db, client, clock, metrics, hooks) -> AssistService:
    from smartyd.partners import PartnerHTTP

    http = PartnerHTTP(assist.PARTNER, client, clock, metrics=metrics,
                       timeout=ASSIST_TIMEOUT, max_body=ASSIST_MAX_BODY)
    return AssistService(db, assist.make_client(http, cfg.assist), cfg.assist,
                         metrics=metrics, hooks=hooks)


def payture_service(cfg, db, client, clock, metrics, hooks) -> PaytureService:
    from smartyd.partners import PartnerHTTP

    http = PartnerHTTP(payture.PARTNER, client, clock, metrics=metrics,
                       timeout=PAYTURE_TIMEOUT, max_body=PAYTURE_MAX_BODY)
    return PaytureService(
        db, PaytureClient(http, cfg.payture.host.rstrip("/"), cfg.payture.merchant_pay_key),
        metrics=metrics, hooks=hooks,
    )


def build(parts, client, clock) -> Gateways:
    """Wire the enabled gateways on ``client`` (a treq HTTPClient) and ``clock``."""
    from smartyd.gateways.web import AssistWeb, PaytureWeb
    from smartyd.poller import Poller

    cfg = parts.cfg
    check_config(cfg)
    out = Gateways()
    if cfg.assist.enabled:
        service = assist_service(cfg, parts.db, client, clock, parts.metrics,
                                 parts.payment_hooks)
        poller = Poller(POLLER_JOB, cfg.assist.poll_interval, service.poll, clock,
                        db=parts.db, metrics=parts.metrics)
        service.poller = poller
        parts.services.append(poller)
        parts.mounts.append(("/payments/assist",
                             AssistWeb(service, parts.db, parts.metrics).resource()))
        out.assist, out.assist_poller = service, poller
    if cfg.payture.enabled:
        service = payture_service(cfg, parts.db, client, clock, parts.metrics,
                                  parts.payment_hooks)
        resource = PaytureWeb(service, parts.db, parts.metrics,
                              cfg.http.trusted_proxies).resource()
        parts.mounts.append(("/payments/payture", resource))
        parts.mounts.append(("/billing/payment/payture", resource))
        out.payture = service
    return out


def install(parts) -> None:
    cfg = parts.cfg
    if not (cfg.assist.enabled or cfg.payture.enabled):
        return
    check_config(cfg)
    http = HTTPClientService(parts.reactor)
    parts.services.append(http)
    build(parts, http.client, parts.reactor)


def admin_commands(subparsers) -> dict:
    from smartyd.gateways.admin import register

    return register(subparsers)
