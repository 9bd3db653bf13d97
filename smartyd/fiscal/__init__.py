"""
Dreamkas fiscalization: every accepted payment gets its fiscal receipt exactly once.

Operators under 54-FZ print a receipt on their cash device for each payment;
a missed receipt is a fine, a double receipt a tax error.  When
``[dreamkas] enabled``:

  - each accepted payment (with ``always_fiscalize = false``: each payment an
    admin marks, ``smartyd-admin receipts fiscalize --payment ID``) gets a
    job in ``receipt_jobs``, inserted by a payment hook inside the payment's
    own transaction (L{jobs});
  - a L{Poller} runs the L{ReceiptWorker} every ``poll_interval`` seconds:
    it POSTs receipts and follows their operations to SUCCESS or ERROR;
  - ``POST /webhooks/dreamkas/<webhook_secret>`` applies operation updates
    as they happen (L{DreamkasWebhook}); the webhook URL is registered in the
    Dreamkas Kabinet (or ``POST /api/webhooks``) with ``operations`` on;
  - devices and positions are cached for ``cache_lifetime`` seconds
    (L{Catalog}); ``smartyd-admin receipts refresh-cache`` refetches them.
"""

from __future__ import annotations

from smartyd.fiscal import jobs
from smartyd.fiscal.api import PARTNER, DreamkasAPI, Operation
from smartyd.fiscal.catalog import Catalog
from smartyd.fiscal.webhook import DreamkasWebhook
from smartyd.fiscal.worker import ReceiptWorker
from smartyd.partners import HTTPClientService

__all__ = [
    "Catalog", "DreamkasAPI", "DreamkasWebhook", "Operation", "ReceiptWorker",
    "admin_commands", "enqueue_receipt", "install",
]

POLLER_JOB = "dreamkas-receipts"

async def enqueue_receipt(tx, payment) -> None:
    """The payment hook: queue the payment's receipt in its own transaction."""
    await jobs.enqueue(tx, payment.id, payment.provider, payment.external_id)

def install(parts) -> None:
    cfg = parts.cfg.dreamkas
    if not cfg.enabled:
        return
    from smartyd.config import ConfigError
    from smartyd.partners import PartnerHTTP
    from smartyd.poller import Poller

    if not cfg.token:
        raise ConfigError("[dreamkas] token: required when enabled = true")
    http = HTTPClientService(parts.reactor)
    api = DreamkasAPI(
        PartnerHTTP(PARTNER, http.client, parts.reactor, metrics=parts.metrics),
        cfg.api_url, cfg.token,
    )
    worker = ReceiptWorker(
        parts.db, api, Catalog(parts.db, api, parts.reactor, cfg.cache_lifetime),
        parts.reactor, device_id=cfg.device_id, tax_mode=cfg.tax_mode,
        poll_interval=cfg.poll_interval, metrics=parts.metrics,
    )
    # No cluster-wide lock: the queue is safe for every instance to work at
    # once (claims skip each other's rows).
    poller = Poller(POLLER_JOB, cfg.poll_interval, worker.run, parts.reactor,
                    metrics=parts.metrics)
    parts.services.extend([http, poller])
    webhook = DreamkasWebhook(parts.db, cfg.webhook_secret, parts.reactor,
                              cfg.poll_interval, parts.metrics)
    parts.mounts.append(("/webhooks/dreamkas", webhook.resource()))
    if cfg.always_fiscalize:
        parts.payment_hooks.append(enqueue_receipt)

def admin_commands(subparsers) -> dict:
    from smartyd.fiscal.admin import register

    return register(subparsers)
